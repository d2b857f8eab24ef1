"""Tasks from tensorflow-datasets: `task="tfds:NAME[:CONFIG]"` (`tfds:super_glue:boolq`, `tfds:piqa`).

A tfds task reads a dataset that `tfds build` has prepared as array_record files in a data_dir
(`config.tfds_data_dir`, else `$TFDS_DATA_DIR`, else `~/tensorflow_datasets`) through tfds's
random-access data source, so `n_train` examples out of a large split read `n_train` records.
The dataset is opened from its files alone (`read_only_builder.builder_from_files`), not
through the catalog's builder code that `tfds.data_source` would construct first: the older
catalog builders (glue, super_glue) name `tf.int32` in their feature specs, so their code needs
TensorFlow, while reading array_record files does not. Nothing here imports TensorFlow, and
tensorflow_datasets itself is imported only when a tfds task loads.

Each supported dataset maps onto one of the `datasets` route's tasks (`public.py`): an adapter
renames the tfds features to the Hugging Face names that task's formatter reads (tfds's
hellaswag says `context` where the Hub's says `ctx`; ClassLabel indices become the letters or
"1"/"2" strings the Hub's records hold), and the formatter makes the record binary in the same
way, with the same coin flip for multiple choice. The coin is seeded by the tfds task's own
name, split and row, so a record's text and label do not depend on what else was read.

A uid is the row of the prepared split. tfds shuffles records when it writes them, so the rows
(and hence which examples a seed selects) differ from the Hub copy of the same dataset.
"""

import dataclasses
import hashlib
import os
from collections.abc import Callable, Sequence

import numpy as np

from w2s_jax.data import public
from w2s_jax.errors import UserError

PREFIX = "tfds:"


def _same(record: dict) -> dict:
  return record


def _letter_choices(choices: dict) -> dict:
  """A tfds Sequence of {text, label: ClassLabel A-E} as the Hub's {label: letters, text}."""
  return {"label": ["ABCDE"[index] for index in choices["label"]], "text": list(choices["text"])}


def _boolq_record(record: dict) -> dict:
  return {"question": record["question"], "passage": record["passage"], "answer": record["label"]}


def _hellaswag_record(record: dict) -> dict:
  return {"ctx": record["context"], "endings": record["endings"], "label": record["label"]}


def _openbookqa_record(record: dict) -> dict:
  question = record["question"]
  return {"question_stem": question["stem"],
          "choices": {"label": list("ABCD"), "text": [question[f"choice_{letter}"] for letter in "ABCD"]},
          "answerKey": "ABCD"[record["answerKey"]]}


def _arc_record(record: dict) -> dict:
  return {"question": record["question"], "choices": _letter_choices(record["choices"]),
          "answerKey": "ABCDE"[record["answerKey"]]}


def _winogrande_record(record: dict) -> dict:
  # tfds stores the answer as ClassLabel(["1", "2"]), i.e. 0 for option1; -1 on the hidden test split.
  label = record["label"]
  return {"sentence": record["sentence"], "option1": record["option1"], "option2": record["option2"],
          "answer": str(label + 1) if label in (0, 1) else ""}


def _anli_record(record: dict) -> dict:
  # ClassLabel(["e", "n", "c"]): 0 is entailment, as on the Hub.
  return {"premise": record["context"], "hypothesis": record["hypothesis"], "label": record["label"]}


@dataclasses.dataclass(frozen=True)
class TfdsSource:
  """How one tfds dataset (with its config) becomes a task.

  Attributes:
    public_task: the `datasets` task whose formatter makes a record binary (`public.FORMATTERS`).
    features: the tfds features `to_record` reads; a prepared dataset without them is refused.
    train_split: the tfds split that becomes our train split.
    test_split: the one that becomes our test split (often "validation": test labels are hidden).
    to_record: a decoded tfds record -> the record in the Hub's schema that the formatter reads.
  """
  public_task: str
  features: tuple[str, ...]
  train_split: str = "train"
  test_split: str = "test"
  to_record: Callable[[dict], dict] = _same


_PAWS = TfdsSource("paws", ("sentence1", "sentence2", "label"))
_ANLI = TfdsSource("anli", ("context", "hypothesis", "label"), to_record=_anli_record)

# Keyed by "NAME:CONFIG" (tfds spells it NAME/CONFIG; both are accepted). The paper's and
# EleutherAI's tasks that tfds 4.9 carries; sciq, amazon_polarity, anthropic_hh, social_i_qa,
# quail, dream, quartz, twitter_sentiment and ethics are not in its catalog.
SOURCES: dict[str, TfdsSource] = {
    "super_glue:boolq": TfdsSource("boolq", ("question", "passage", "label"), test_split="validation",
                                   to_record=_boolq_record),
    "super_glue:wic": TfdsSource("wic", ("word", "sentence1", "sentence2", "label"), test_split="validation"),
    "super_glue:multirc": TfdsSource("multirc", ("paragraph", "question", "answer", "label"),
                                     test_split="validation"),
    "glue:sst2": TfdsSource("sst2", ("sentence", "label"), test_split="validation"),
    "glue:cola": TfdsSource("cola", ("sentence", "label"), test_split="validation"),
    "cosmos_qa": TfdsSource("cosmos_qa", ("context", "question", "answer0", "answer1", "answer2", "answer3",
                                          "label"), test_split="validation"),
    "hellaswag": TfdsSource("hellaswag", ("context", "endings", "label"), test_split="validation",
                            to_record=_hellaswag_record),
    "piqa": TfdsSource("piqa", ("goal", "sol1", "sol2", "label"), test_split="validation"),
    "openbookqa": TfdsSource("openbookqa", ("question", "answerKey"), to_record=_openbookqa_record),
    "ai2_arc:ARC-Easy": TfdsSource("arc_easy", ("question", "choices", "answerKey"), to_record=_arc_record),
    "ai2_arc:ARC-Challenge": TfdsSource("arc_challenge", ("question", "choices", "answerKey"),
                                        to_record=_arc_record),
    # winogrande_xl on the Hub; tfds names the training sizes as splits.
    "winogrande": TfdsSource("winogrande", ("sentence", "option1", "option2", "label"), train_split="train_xl",
                             test_split="validation", to_record=_winogrande_record),
    "anli:r1": _ANLI,
    "anli:r2": _ANLI,  # EleutherAI's round
    "anli:r3": _ANLI,
    "paws_wiki:labeled_final_tokenized": _PAWS,  # the Hub's labeled_final is this tokenized text
    "paws_wiki:labeled_final_raw": _PAWS,
    # tfds has only mctaco's validation and test splits; the larger test one trains, as EleutherAI does.
    "mctaco": TfdsSource("mc_taco", ("sentence", "question", "answer", "label"), train_split="test",
                         test_split="validation"),
}


def task_names() -> list[str]:
  """The supported tfds tasks, as `task` is written (`tfds:super_glue:boolq`)."""
  return [PREFIX + key for key in SOURCES]


def source_key(task: str) -> str:
  """The `SOURCES` key of `tfds:NAME[:CONFIG]` (or tfds's `tfds:NAME/CONFIG`); else one line listing them."""
  spec = task.removeprefix(PREFIX).replace("/", ":", 1)
  by_lower = {key.lower(): key for key in SOURCES}
  if spec.lower() not in by_lower:
    raise UserError(f"task {task!r}: no tfds dataset of that name has a binary formatter here; use one of "
                    f"{', '.join(task_names())} (or export the data to a file and use jsonl:PATH)")
  return by_lower[spec.lower()]


def data_dir_of(data_dir: str | None) -> str:
  """Where prepared datasets are read: `data_dir`, else $TFDS_DATA_DIR, else ~/tensorflow_datasets (tfds's order)."""
  chosen = data_dir or os.environ.get("TFDS_DATA_DIR") or "~/tensorflow_datasets"
  return chosen if "://" in chosen else os.path.expanduser(chosen)


def _import_tfds():
  try:
    import tensorflow_datasets as tfds  # imported here: only tfds tasks need it (and it takes ~0.5 s)
    from tensorflow_datasets.core import read_only_builder
  except ImportError:
    raise UserError("tfds: tasks need tensorflow-datasets and array_record: pip install 'w2s_jax[tfds]' "
                    "(tensorflow-datasets>=4.9 array_record)") from None
  return tfds, read_only_builder


def prepared_builder(task: str, data_dir: str | None = None):
  """The read-only tfds builder of a prepared dataset; one line naming the `tfds build` call if there is none."""
  key = source_key(task)
  tfds, read_only_builder = _import_tfds()
  directory = data_dir_of(data_dir)
  name = key.replace(":", "/", 1)
  build = f"tfds build {name} --data_dir={directory} --file_format=array_record"
  try:
    builder = read_only_builder.builder_from_files(name, data_dir=directory)
  except tfds.core.DatasetNotFoundError:
    raise UserError(f"task {task!r}: tfds dataset {name} is not prepared in {directory}; prepare it once "
                    f"where the internet is (the tfds command line needs TensorFlow): `{build}` (or set "
                    "config.tfds_data_dir / $TFDS_DATA_DIR to a data_dir that holds it)") from None
  if tfds.core.FileFormat.ARRAY_RECORD not in builder.info.available_file_formats():
    formats = ", ".join(sorted(f.value for f in builder.info.available_file_formats())) or "no format"
    raise UserError(f"task {task!r}: {builder.data_dir} holds {name} as {formats}, which has no random access "
                    f"and needs TensorFlow to read; convert it: `tfds convert_format --dataset_version_dir="
                    f"{builder.data_dir} --out_file_format=array_record`, or rebuild: `{build}`")
  return builder


def _check_layout(task: str, source: TfdsSource, builder) -> None:
  """The prepared dataset has the features and splits the source reads (a same-named dataset may not)."""
  have = set(builder.info.features.keys())
  missing = [feature for feature in source.features if feature not in have]
  if missing:
    raise UserError(f"task {task!r}: the dataset at {builder.data_dir} has features {sorted(have)}, without "
                    f"{missing} that its formatter reads; prepare it with tfds's catalog builder (tfds build)")
  splits = list(builder.info.splits.keys())
  for split in (source.train_split, source.test_split):
    if split not in splits:
      raise UserError(f"task {task!r}: the dataset at {builder.data_dir} has splits {splits}, not {split!r}; "
                      "prepare it with tfds's catalog builder (tfds build)")


def _plain(value):
  """A decoded tfds value as the Hub's records hold it: str for bytes, lists for arrays, Python scalars."""
  if isinstance(value, dict):
    return {key: _plain(item) for key, item in value.items()}
  if isinstance(value, bytes):
    return value.decode("utf-8")
  if isinstance(value, np.ndarray):
    return _plain(value.tolist())
  if isinstance(value, (list, tuple)):
    return [_plain(item) for item in value]
  if isinstance(value, np.generic):
    return value.item()
  return value


class _Records(Sequence):
  """A tfds data source seen as a sequence of Hub-schema records, each read and converted on access."""

  def __init__(self, data_source, to_record: Callable[[dict], dict]):
    self._data_source = data_source
    self._to_record = to_record

  def __len__(self) -> int:
    return len(self._data_source)

  def __getitem__(self, index: int) -> dict:
    if not 0 <= index < len(self._data_source):
      raise IndexError(index)
    return self._to_record(_plain(self._data_source[index]))


def tfds_task(task: str, seed: int, *, data_dir: str | None = None
              ) -> tuple[public.FormattedSplit, public.FormattedSplit]:
  """(train, test) of `tfds:NAME[:CONFIG]`, lazily formatted like the `datasets` route's task of that data."""
  key = source_key(task)
  source = SOURCES[key]
  builder = prepared_builder(task, data_dir)
  _check_layout(task, source, builder)
  formatter = public.FORMATTERS[source.public_task]
  return tuple(
      public.FormattedSplit(_Records(builder.as_data_source(split=split, file_format="array_record"),
                                     source.to_record),
                            formatter, task=PREFIX + key, split=split, seed=seed)
      for split in (source.train_split, source.test_split))


def fingerprint(task: str, data_dir: str | None = None) -> str:
  """What a tfds task's stages are keyed by: its name, version and a hash of the prepared dataset's
  info (split sizes and byte counts, features), so a rebuilt or other dataset under the same name
  is never served another's results. A dataset that is not prepared gives the bare name (loading
  it then stops with the `tfds build` line)."""
  try:
    builder = prepared_builder(task, data_dir)
  except UserError:
    return task
  directory = builder.data_path
  digest = hashlib.sha256()
  for name in ("dataset_info.json", "features.json"):
    path = directory / name
    if path.exists():
      digest.update(path.read_bytes())
  return f"{PREFIX}{source_key(task)}@{builder.info.version}#{digest.hexdigest()[:16]}"
