"""Users' own data: `task="jsonl:PATH"` and `task="csv:PATH"`.

JSON lines: one object per line with `text` (a non-empty string) and `label` (0 or 1, as
a number or the string "0" / "1"; true/false are refused because a boolean column is
more often a mistake than a label), and optionally `split` ("train" or "test"). Blank
lines are skipped.

A JSON-lines file may instead hold preference pairs, for a reward model: each line has
`chosen` and `rejected` (non-empty strings, not the same text), optionally `prompt` (a
string, "" when absent) and `split`, and no `label`. The model reads prompt + response, so
a response carries its own separator (" yes", "\nAnswer: ..."). The first record decides
the kind of the file; a line of the other kind is an error. Each line becomes a
`PreferenceExample` whose chosen response lies in a slot drawn by a coin seeded by
(`PAIR_ORDER_SEED`, uid): the same in every run, whatever the run's seed.

CSV: a header row, then one row per example; the text and label columns are named by
`text_column` / `label_column`; a column named `split` is used the same way.

Splits: either every record has a split, or none has. With none, a seeded
`TEST_FRACTION` of the records becomes the test set. Its seed is fixed
(`TEST_SPLIT_SEED`), not the run's seed, so every run of a sweep is scored on the same
test set, as with the public datasets' fixed test splits.

Every problem ends with one line that names the file and the line number: a label that
is not 0/1, an empty text, a line that is not JSON, a missing field, a file that is not
UTF-8; for pairs also an empty response, identical responses, a `label` field.

An example's uid is the index of its record in the file (blank lines not counted), so it
does not change when the test split or the selection does.
"""
import csv
import functools
import io
import json
import pathlib
import random

import numpy as np

from w2s_jax.data import preference
from w2s_jax.data.tasks import Example, PreferenceExample
from w2s_jax.errors import UserError

TEST_FRACTION = 0.2
TEST_SPLIT_SEED = 0
PAIR_ORDER_SEED = 0  # fixed, not the run's seed: a pair's slot order is a property of the file
SPLITS = ("train", "test")


def read_jsonl(path: str) -> tuple[list, list]:
  """Reads a JSON-lines file into (train, test): `Example`s, or `PreferenceExample`s when
  the first record has "chosen" / "rejected"."""
  content = _read_text(path)
  records = []
  first_kind = None  # (is a preference row, its line number), set by the first record
  for line_number, line in enumerate(content.split("\n"), start=1):
    if not line.strip():
      continue
    where = f"{path}, line {line_number}"
    try:
      record = json.loads(line)
    except json.JSONDecodeError as e:
      raise UserError(f"{where}: not valid JSON ({e.msg} at column {e.colno}); "
                      "write one JSON object per line") from None
    if not isinstance(record, dict):
      raise UserError(f"{where}: expected a JSON object with fields \"text\" and \"label\", "
                      f"got a {type(record).__name__}")
    is_pair = preference.is_preference_row(record)
    if first_kind is None:
      first_kind = (is_pair, line_number)
    elif is_pair != first_kind[0]:
      kinds = ("a binary row (no \"chosen\" / \"rejected\")",
               "a preference row (\"chosen\" / \"rejected\")")
      raise UserError(f"{where}: {kinds[is_pair]}, while line {first_kind[1]} is "
                      f"{kinds[first_kind[0]]}; a file holds one kind, split it in two")
    if is_pair:
      split = record.get("split")
      _check_split(split, where)
      prompt, chosen, rejected = preference.checked_row(record, where)
      records.append((functools.partial(_pair, prompt, chosen, rejected), split, line_number))
      continue
    for field in ("text", "label"):
      if field not in record:
        raise UserError(f"{where}: missing field {field!r}; every line needs \"text\" and "
                        "\"label\"")
    records.append(_checked(record["text"], record["label"], record.get("split"), where,
                            line_number))
  return _train_test(records, path)


def read_csv(path: str, *, text_column: str = "text",
             label_column: str = "label") -> tuple[list[Example], list[Example]]:
  """Reads a CSV file with a header row into (train, test) examples."""
  content = _read_text(path)
  reader = csv.DictReader(io.StringIO(content, newline=""))
  try:
    columns = reader.fieldnames
  except csv.Error as e:
    raise UserError(f"{path}, line 1: unreadable CSV header ({e})") from None
  if not columns:
    raise UserError(f"{path}: empty file; write a header row naming the text and label columns")
  for option, column in (("csv_text_column", text_column), ("csv_label_column", label_column)):
    if column not in columns:
      raise UserError(f"{path}, line 1: no column {column!r} in the header (columns: "
                      f"{', '.join(columns)}); name the right one with {option}")
  has_split = "split" in columns
  records = []
  row_start = 1  # the line a row starts on; rows with quoted newlines span several lines
  while True:
    row_start = reader.line_num + 1
    try:
      row = next(reader)
    except StopIteration:
      break
    except csv.Error as e:
      raise UserError(f"{path}, line {row_start}: unreadable CSV row ({e})") from None
    where = f"{path}, line {row_start}"
    if None in row:
      raise UserError(f"{where}: more fields than the header's {len(columns)}; quote texts "
                      "that contain commas")
    if any(value is None for value in row.values()):
      raise UserError(f"{where}: fewer fields than the header's {len(columns)}")
    split = row["split"] if has_split else None
    records.append(_checked(row[text_column], row[label_column].strip(), split, where,
                            row_start))
  return _train_test(records, path)


def _read_text(path: str) -> str:
  """The file's text; a missing or non-UTF-8 file is the user's error, with its line."""
  file = pathlib.Path(path).expanduser()
  if not file.is_file():
    raise UserError(f"{path}: no such file; check the path after jsonl: / csv:")
  data = file.read_bytes()
  try:
    return data.decode("utf-8-sig")
  except UnicodeDecodeError as e:
    line_number = data[:e.start].count(b"\n") + 1
    raise UserError(f"{path}, line {line_number}: not UTF-8 text ({e.reason}); "
                    "save the file as UTF-8") from None


def _checked(text, label, split, where: str, line_number: int) -> tuple:
  """Validates one binary record's fields; returns (build, split, line_number), where
  build(uid) makes its Example."""
  if not isinstance(text, str) or not text.strip():
    raise UserError(f"{where}: \"text\" must be a non-empty string, got {text!r}")
  # Exact types: bool is a subclass of int, and 1.0 == 1, yet neither is a 0/1 label.
  if not ((type(label) is int and label in (0, 1)) or label in ("0", "1")):
    raise UserError(f"{where}: label must be 0 or 1, got {label!r}; tasks are binary")
  _check_split(split, where)
  return functools.partial(Example, text, int(label)), split, line_number


def _check_split(split, where: str) -> None:
  if split is not None and split not in SPLITS:
    raise UserError(f"{where}: split must be \"train\" or \"test\", got {split!r}")


def _pair(prompt: str, chosen: str, rejected: str, uid: int) -> PreferenceExample:
  # A string seed is hashed with SHA-512, so the order is the same in every process.
  rng = random.Random(f"jsonl-pair/{PAIR_ORDER_SEED}/{uid}")
  return preference.make_pair(prompt, chosen, rejected, uid, rng)


def _train_test(records: list[tuple], path: str) -> tuple[list, list]:
  """Assigns the records, (build, split, line_number), to train and test (their own split,
  or a seeded test split); build(uid) makes a record's example."""
  if not records:
    raise UserError(f"{path}: no examples in the file")
  with_split = [r for r in records if r[1] is not None]
  if with_split and len(with_split) < len(records):
    without = next(r for r in records if r[1] is None)
    raise UserError(f"{path}, line {without[2]}: no split, while line {with_split[0][2]} "
                    "has one; give every record a split or none")
  if with_split:
    in_test = np.array([r[1] == "test" for r in records])
    for split, members in (("train", ~in_test), ("test", in_test)):
      if not members.any():
        raise UserError(f"{path}: no record has split \"{split}\"; add some, or drop the "
                        f"split field to get a seeded {TEST_FRACTION:.0%} test split")
  else:
    if len(records) < 2:
      raise UserError(f"{path}: one example cannot make both a train and a test split")
    n_test = max(1, round(TEST_FRACTION * len(records)))
    order = np.random.default_rng(TEST_SPLIT_SEED).permutation(len(records))
    in_test = np.zeros(len(records), dtype=bool)
    in_test[order[:n_test]] = True
  train, test = [], []
  for uid, ((build, _, _), is_test) in enumerate(zip(records, in_test)):
    (test if is_test else train).append(build(uid))
  return train, test
