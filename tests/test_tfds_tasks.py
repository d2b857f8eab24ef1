"""tfds:NAME[:CONFIG] tasks, on real tfds datasets that small builders here prepare as array_record.

The builders use the catalog datasets' own names, configs, versions, feature names and split
names (super_glue/boolq, ai2_arc/ARC-Easy), so what reads them is the formatter of the real
dataset. Writing array_record needs no TensorFlow; the loading path is checked to import none
with a stand-in `tensorflow` package that records being imported.
"""

import json
import os
import random
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow_datasets as tfds

from w2s_jax.data import public, tfds_tasks
from w2s_jax.data.tasks import load_task
from w2s_jax.errors import UserError

BOOLQ_TRAIN = [{"question": f"is {i} even", "passage": f"The number {i} is {'even' if i % 2 == 0 else 'odd'}.",
                "idx": i, "label": int(i % 2 == 0)} for i in range(10)]
BOOLQ_VALIDATION = [{"question": f"is {i} small", "passage": f"{i} is a number.", "idx": i, "label": int(i < 3)}
                    for i in range(6)]
# The catalog's hidden test labels are -1.
BOOLQ_TEST = [{"question": f"is {i} odd", "passage": "Hidden.", "idx": i, "label": -1} for i in range(3)]


class SuperGlue(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """super_glue/boolq's layout (tensorflow_datasets/text/super_glue.py), with records written here."""
  VERSION = tfds.core.Version("1.0.2")
  BUILDER_CONFIGS = [tfds.core.BuilderConfig(name="boolq", version="1.0.2")]

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
        "question": tfds.features.Text(), "passage": tfds.features.Text(), "idx": np.int32,
        "label": tfds.features.ClassLabel(names=["False", "True"])}))

  def _split_generators(self, dl_manager):
    return {"train": self._generate_examples(BOOLQ_TRAIN), "validation": self._generate_examples(BOOLQ_VALIDATION),
            "test": self._generate_examples(BOOLQ_TEST)}

  def _generate_examples(self, records):
    for record in records:
      yield record["idx"], record


def _arc_rows(split: str, n: int) -> list[dict]:
  # Three or four choices, the answer at any of them: the shapes ARC's Sequence feature holds.
  rng = random.Random(split)
  rows = []
  for i in range(n):
    texts = [f"{split} answer {i}.{k}" for k in range(3 + i % 2)]
    rows.append({"id": f"{split}-{i}", "question": f"{split} question {i}?",
                 "choices": {"text": texts, "label": list(range(len(texts)))},
                 "answerKey": rng.randrange(len(texts))})
  return rows


ARC_TRAIN, ARC_TEST = _arc_rows("train", 24), _arc_rows("test", 8)


class Ai2Arc(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """ai2_arc/ARC-Easy's layout (tensorflow_datasets/datasets/ai2_arc)."""
  name = "ai2_arc"
  VERSION = tfds.core.Version("1.0.0")
  BUILDER_CONFIGS = [tfds.core.BuilderConfig(name="ARC-Easy", version="1.0.0")]

  def _info(self):
    options = list("ABCDE")
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
        "id": tfds.features.Text(), "question": tfds.features.Text(),
        "choices": tfds.features.Sequence({"text": tfds.features.Text(),
                                           "label": tfds.features.ClassLabel(names=options)}),
        "answerKey": tfds.features.ClassLabel(names=options)}))

  def _split_generators(self, dl_manager):
    return {"train": self._generate_examples(ARC_TRAIN), "validation": self._generate_examples(ARC_TEST[:2]),
            "test": self._generate_examples(ARC_TEST)}

  def _generate_examples(self, records):
    for record in records:
      yield record["id"], record


class Piqa(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """A dataset named piqa without piqa's `sol2`: not the catalog's layout."""
  VERSION = tfds.core.Version("1.0.0")

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
        "goal": tfds.features.Text(), "sol1": tfds.features.Text(), "label": tfds.features.ClassLabel(num_classes=2)}))

  def _split_generators(self, dl_manager):
    return {"train": self._generate_examples(), "validation": self._generate_examples()}

  def _generate_examples(self):
    yield 0, {"goal": "Open a jar", "sol1": "Twist the lid", "label": 0}


def _prepare(builder_class, data_dir, **kwargs) -> None:
  # Nothing is downloaded, so there are no checksums to look up: without this, tfds 4.9.10 looks for
  # them beside the builder's module through importlib_resources, which it does not install, when
  # that module is imported as part of a package (tests.test_tfds_tasks).
  builder_class.url_infos = None
  builder_class(data_dir=str(data_dir), file_format="array_record", **kwargs).download_and_prepare()


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  directory = tmp_path_factory.mktemp("tfds")
  _prepare(SuperGlue, directory, config="boolq")
  _prepare(Ai2Arc, directory, config="ARC-Easy")
  return str(directory)


def _boolq_text(record: dict) -> str:
  return public.format_boolq({"passage": record["passage"], "question": record["question"], "answer": None},
                             random.Random(0))[0]


def test_boolq_loads_every_labelled_row_with_the_datasets_route_formatting(data_dir):
  task = load_task("tfds:super_glue:boolq", seed=0, tfds_data_dir=data_dir)
  assert task.name == "tfds:super_glue:boolq"
  # train is tfds's train split and test its validation split; the -1 rows of its test split are not used.
  assert sorted((e.text, e.label) for e in task.train) == sorted((_boolq_text(r), r["label"]) for r in BOOLQ_TRAIN)
  assert sorted((e.text, e.label) for e in task.test) == sorted((_boolq_text(r), r["label"])
                                                                for r in BOOLQ_VALIDATION)
  # uids are the rows of the prepared split (tfds shuffled the records as it wrote them).
  assert [e.uid for e in task.train] == list(range(len(BOOLQ_TRAIN)))
  assert [e.uid for e in task.test] == list(range(len(BOOLQ_VALIDATION)))


def test_tfds_spelling_and_selection(data_dir):
  whole = load_task("tfds:super_glue:boolq", seed=0, tfds_data_dir=data_dir)
  tfds_spelling = load_task("tfds:super_glue/boolq", seed=0, tfds_data_dir=data_dir)
  assert (tfds_spelling.train, tfds_spelling.test) == (whole.train, whole.test)
  picked = load_task("tfds:super_glue:boolq", n_train=4, n_test=2, balance=True, seed=3, tfds_data_dir=data_dir)
  assert sorted(e.label for e in picked.train) == [0, 0, 1, 1]
  assert sorted(e.label for e in picked.test) == [0, 1]
  by_uid = {e.uid: e for e in whole.train}
  assert all(by_uid[e.uid] == e for e in picked.train)  # a selected example is the whole split's row


def test_data_dir_from_the_environment(data_dir, monkeypatch):
  monkeypatch.setenv("TFDS_DATA_DIR", data_dir)
  assert len(load_task("tfds:super_glue:boolq", seed=0).train) == len(BOOLQ_TRAIN)


def test_arc_is_a_seeded_coin_flip_over_its_nested_choices(data_dir):
  task = load_task("tfds:ai2_arc:ARC-Easy", seed=0, tfds_data_dir=data_dir)
  assert len(task.train) == len(ARC_TRAIN) and len(task.test) == len(ARC_TEST)
  rows = {row["question"]: row for row in ARC_TRAIN}
  for example in task.train:
    row = rows[example.text.split("\n")[0].removeprefix("Q: ")]
    correct = row["choices"]["text"][row["answerKey"]]
    listed = "\n".join(f"{'ABCDE'[k]}) {text}" for k, text in enumerate(row["choices"]["text"]))
    assert listed in example.text  # the ClassLabel indices came back as the Hub's letters
    assert example.label == int(example.text.endswith(f"Answer: {correct}"))
  assert {e.label for e in task.train} == {0, 1}
  assert load_task("tfds:ai2_arc:ARC-Easy", seed=0, tfds_data_dir=data_dir) == task
  other_seed = load_task("tfds:ai2_arc:ARC-Easy", seed=1, tfds_data_dir=data_dir)
  assert [e.label for e in other_seed.train] != [e.label for e in task.train]


FAKE_TENSORFLOW = """\
import os, traceback
with open(os.environ["TENSORFLOW_IMPORTED"], "a") as f:
  f.write("".join(traceback.format_stack()))
raise ImportError("a stand-in: the code under test imported tensorflow")
"""


def test_loading_imports_no_tensorflow(data_dir, tmp_path):
  # A stand-in package named tensorflow comes first on the path, so the check fails whether or
  # not TensorFlow is installed: any import of it on the loading path writes the marker.
  (tmp_path / "fake" / "tensorflow").mkdir(parents=True)
  (tmp_path / "fake" / "tensorflow" / "__init__.py").write_text(FAKE_TENSORFLOW)
  marker = tmp_path / "imported.txt"
  env = dict(os.environ, PYTHONPATH=str(tmp_path / "fake"), TENSORFLOW_IMPORTED=str(marker))
  script = textwrap.dedent(f"""\
      import sys
      from w2s_jax.data.tasks import load_task
      task = load_task("tfds:super_glue:boolq", seed=0, tfds_data_dir={data_dir!r})
      print(len(task.train), len(task.test), "tensorflow" in sys.modules)
      """)
  run = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
  assert run.returncode == 0, run.stderr[-2000:]
  assert run.stdout.split() == [str(len(BOOLQ_TRAIN)), str(len(BOOLQ_VALIDATION)), "False"]
  assert not marker.exists(), marker.read_text()
  # The stand-in does catch an import.
  subprocess.run([sys.executable, "-c", "import tensorflow"], env=env, capture_output=True, timeout=60)
  assert marker.exists()


def _one_line_error(task: str, **kwargs) -> str:
  with pytest.raises(UserError) as error:
    load_task(task, seed=0, **kwargs)
  message = str(error.value)
  assert "\n" not in message
  return message


def test_unknown_or_unformatted_names_list_the_supported_ones(data_dir):
  for task in ("tfds:mnist", "tfds:super_glue", "tfds:super_glue:copa", "tfds:"):
    message = _one_line_error(task, tfds_data_dir=data_dir)
    assert "tfds:super_glue:boolq" in message and "tfds:ai2_arc:ARC-Easy" in message and "tfds:piqa" in message


def test_a_dataset_not_prepared_names_the_tfds_build_call(tmp_path):
  message = _one_line_error("tfds:piqa", tfds_data_dir=str(tmp_path))
  assert f"tfds build piqa --data_dir={tmp_path} --file_format=array_record" in message
  message = _one_line_error("tfds:super_glue:wic", tfds_data_dir=str(tmp_path))
  assert "tfds build super_glue/wic" in message


def test_a_dataset_without_array_record_files_names_the_conversion(data_dir, tmp_path):
  # As `tfds build` leaves it by default: the dataset's info says tfrecord.
  shutil.copytree(os.path.join(data_dir, "super_glue"), tmp_path / "super_glue")
  info_path = tmp_path / "super_glue" / "boolq" / "1.0.2" / "dataset_info.json"
  info = json.loads(info_path.read_text())
  info["fileFormat"] = "tfrecord"
  info_path.write_text(json.dumps(info))
  message = _one_line_error("tfds:super_glue:boolq", tfds_data_dir=str(tmp_path))
  assert "tfrecord" in message and "--out_file_format=array_record" in message


def test_a_dataset_of_another_layout_is_refused(tmp_path):
  _prepare(Piqa, tmp_path)
  message = _one_line_error("tfds:piqa", tfds_data_dir=str(tmp_path))
  assert "'sol2'" in message
  # Same layout, but not the split the task trains on.
  shutil.rmtree(tmp_path / "piqa")
  _prepare(Ai2Arc, tmp_path, config="ARC-Easy")
  os.rename(tmp_path / "ai2_arc" / "ARC-Easy", tmp_path / "ai2_arc" / "ARC-Challenge")
  info_path = tmp_path / "ai2_arc" / "ARC-Challenge" / "1.0.0" / "dataset_info.json"
  info = json.loads(info_path.read_text())
  info["splits"] = [split for split in info["splits"] if split["name"] != "train"]
  info_path.write_text(json.dumps(info))
  message = _one_line_error("tfds:ai2_arc:ARC-Challenge", tfds_data_dir=str(tmp_path))
  assert "'train'" in message and "splits" in message


def test_fingerprint_follows_the_prepared_data(data_dir, tmp_path):
  first = tfds_tasks.fingerprint("tfds:super_glue:boolq", data_dir)
  assert first.startswith("tfds:super_glue:boolq@1.0.2#")
  assert tfds_tasks.fingerprint("tfds:super_glue/boolq", data_dir) == first
  assert tfds_tasks.fingerprint("tfds:super_glue:boolq", str(tmp_path)) == "tfds:super_glue:boolq"  # not prepared
  BOOLQ_TRAIN.append({"question": "is 10 even", "passage": "The number 10 is even.", "idx": 10, "label": 1})
  try:
    _prepare(SuperGlue, tmp_path, config="boolq")
  finally:
    BOOLQ_TRAIN.pop()
  assert tfds_tasks.fingerprint("tfds:super_glue:boolq", str(tmp_path)) not in (first, "tfds:super_glue:boolq")


# One decoded record per supported dataset, in tfds's schema (as the data source returns it),
# with a piece of text the example shows exactly when its label is 1 (None: a native label, 1 here).
TFDS_RECORDS = {
    "super_glue:boolq": ({"question": "is water wet", "passage": "Water is wet.", "idx": 0, "label": 1}, None),
    "super_glue:wic": ({"word": "bank", "sentence1": "A river bank.", "sentence2": "The bank of the river.",
                        "start1": 8, "start2": 4, "end1": 12, "end2": 8, "idx": 0, "label": 1}, None),
    "super_glue:multirc": ({"paragraph": "Sam ran.", "question": "Who ran?", "answer": "Sam",
                            "idx": {"paragraph": 0, "question": 0, "answer": 0}, "label": 1}, None),
    "glue:sst2": ({"sentence": "a lovely film", "label": 1, "idx": 0}, None),
    "glue:cola": ({"sentence": "The cat sat.", "label": 1, "idx": 0}, None),
    "cosmos_qa": ({"context": "I missed the bus.", "question": "Why was I late?", "answer0": "It rained",
                   "answer1": "I missed the bus", "answer2": "I was sick", "answer3": "No reason",
                   "label": 1, "id": "x"}, "Answer: I missed the bus"),
    "hellaswag": ({"context": "He picks up the ball", "endings": ["and eats it.", "and sings.", "and throws it."],
                   "activity_label": "ball", "label": 2, "split_type": "indomain", "source_id": "a"},
                  'Is "and throws it."'),
    "piqa": ({"id": "p", "goal": "Open a jar", "sol1": "Bite the jar", "sol2": "Twist the lid", "label": 1},
             "A: Twist the lid"),
    "openbookqa": ({"question": {"stem": "Which is a mammal?", "choice_A": "trout", "choice_B": "whale",
                                 "choice_C": "crab", "choice_D": "newt"},
                    "fact1": "", "humanScore": 1.0, "clarity": 1.0, "turkIdAnonymized": "", "answerKey": 1},
                   "Answer: whale"),
    "ai2_arc:ARC-Easy": ({"id": "a", "question": "Which is a mammal?", "answerKey": 1,
                          "choices": {"text": ["trout", "whale", "crab"], "label": [0, 1, 2]}}, "Answer: whale"),
    "ai2_arc:ARC-Challenge": ({"id": "a", "question": "Which is a mammal?", "answerKey": 2,
                               "choices": {"text": ["trout", "crab", "whale"], "label": [0, 1, 2]}},
                              "Answer: whale"),
    "winogrande": ({"sentence": "The trophy did not fit in the case because _ was big.", "option1": "the case",
                    "option2": "the trophy", "label": 1}, "because the trophy was big"),
    "anli:r1": ({"uid": "u", "context": "A dog runs.", "hypothesis": "An animal moves.", "label": 0}, None),
    "anli:r2": ({"uid": "u", "context": "A dog runs.", "hypothesis": "An animal moves.", "label": 0}, None),
    "anli:r3": ({"uid": "u", "context": "A dog runs.", "hypothesis": "An animal moves.", "label": 0}, None),
    "paws_wiki:labeled_final_tokenized": ({"sentence1": "A is B .", "sentence2": "B is A .", "label": 1}, None),
    "paws_wiki:labeled_final_raw": ({"sentence1": "A is B.", "sentence2": "B is A.", "label": 1}, None),
    "mctaco": ({"sentence": "He slept.", "question": "How long did he sleep?", "answer": "8 hours",
                "label": 1, "category": 0}, None),
}


def test_every_supported_dataset_formats_a_record_of_its_tfds_schema():
  assert set(TFDS_RECORDS) == set(tfds_tasks.SOURCES)
  for key, (record, shown_when_true) in TFDS_RECORDS.items():
    source = tfds_tasks.SOURCES[key]
    assert set(source.features) <= set(record), key
    rows = tfds_tasks._Records([record], source.to_record)
    labels = set()
    for seed in range(12):
      example = public.FormattedSplit(rows, public.FORMATTERS[source.public_task], task=key, split="train",
                                      seed=seed)[0]
      assert example is not None, key
      labels.add(example.label)
      if shown_when_true is None:
        assert example.label == 1, key
      else:
        assert example.label == int(shown_when_true in example.text), (key, example.text)
    assert labels == ({1} if shown_when_true is None else {0, 1}), key


def test_hidden_test_labels_are_skipped():
  unlabelled = {"super_glue:boolq": {"question": "q", "passage": "p", "idx": 0, "label": -1},
                "hellaswag": {"context": "c", "endings": ["a", "b"], "label": -1},
                "winogrande": {"sentence": "_ won.", "option1": "A", "option2": "B", "label": -1}}
  for key, record in unlabelled.items():
    source = tfds_tasks.SOURCES[key]
    split = public.FormattedSplit(tfds_tasks._Records([record], source.to_record),
                                  public.FORMATTERS[source.public_task], task=key, split="test", seed=0)
    assert split[0] is None, key
