"""Users' own data: jsonl:PATH and csv:PATH, good files and bad ones."""

import json

import pytest

from w2s_jax.data import files
from w2s_jax.data.tasks import Example, load_task
from w2s_jax.errors import UserError


def _write_jsonl(path, records) -> str:
  path.write_text("".join(json.dumps(record) + "\n" for record in records))
  return str(path)


def test_jsonl_with_splits(tmp_path):
  path = tmp_path / "data.jsonl"
  path.write_text('{"text": "good", "label": 1, "split": "train"}\n'
                  '\n'  # blank lines are skipped and do not count as records
                  '{"text": "bad", "label": "0", "split": "test"}\n'
                  '{"text": "fine", "label": 1, "split": "train"}\n')
  train, test = files.read_jsonl(str(path))
  assert train == [Example("good", 1, 0), Example("fine", 1, 2)]
  assert test == [Example("bad", 0, 1)]


def test_jsonl_without_splits_gets_a_fixed_seeded_test_split(tmp_path):
  path = _write_jsonl(tmp_path / "data.jsonl",
                      [{"text": f"example {i}", "label": i % 2} for i in range(100)])
  train, test = files.read_jsonl(path)
  assert len(test) == 20 and len(train) == 80
  assert sorted(e.uid for e in train + test) == list(range(100))
  assert all(e.text == f"example {e.uid}" and e.label == e.uid % 2 for e in train + test)
  test_uids = [e.uid for e in test]
  assert test_uids != list(range(80, 100))  # drawn at random, not the file's tail
  # The run's seed selects and flips, but never moves an example into the test set.
  for seed in (0, 1, 2):
    task = load_task(f"jsonl:{path}", seed=seed)
    assert [e.uid for e in task.test] == test_uids


@pytest.mark.parametrize("line, problem", [
    ('{"text": "a", "label": 2}', "label must be 0 or 1, got 2"),
    ('{"text": "a", "label": true}', "label must be 0 or 1, got True"),
    ('{"text": "a", "label": 1.0}', "label must be 0 or 1, got 1.0"),
    ('{"text": "a", "label": "yes"}', "label must be 0 or 1, got 'yes'"),
    ('{"text": "   ", "label": 1}', "must be a non-empty string"),
    ('{"text": 5, "label": 1}', "must be a non-empty string"),
    ('{"text": "a", "label": 1', "not valid JSON"),
    ('{"label": 1}', "missing field 'text'"),
    ('{"text": "a"}', "missing field 'label'"),
    ('["a", 1]', "expected a JSON object"),
    ('{"text": "a", "label": 1, "split": "dev"}', "split must be \"train\" or \"test\""),
])
def test_bad_jsonl_line_is_rejected_with_its_line_number(tmp_path, line, problem):
  path = tmp_path / "bad.jsonl"
  good = '{"text": "fine", "label": 0}\n'
  path.write_text(good + good + "\n" + line + "\n" + good)
  with pytest.raises(UserError) as error:
    files.read_jsonl(str(path))
  message = str(error.value)
  assert message.startswith(f"{path}, line 4: ")
  assert problem in message
  assert "\n" not in message


def test_jsonl_mixing_lines_with_and_without_split_is_rejected(tmp_path):
  path = tmp_path / "mixed.jsonl"
  path.write_text('{"text": "a", "label": 0, "split": "train"}\n'
                  '{"text": "b", "label": 1, "split": "test"}\n'
                  '{"text": "c", "label": 1}\n')
  with pytest.raises(UserError, match=r"line 3: no split, while line 1 has one"):
    files.read_jsonl(str(path))


def test_jsonl_with_splits_but_no_test_lines_is_rejected(tmp_path):
  path = _write_jsonl(tmp_path / "d.jsonl", [{"text": "a", "label": 0, "split": "train"},
                                             {"text": "b", "label": 1, "split": "train"}])
  with pytest.raises(UserError, match='no record has split "test"'):
    files.read_jsonl(path)


def test_non_utf8_file_is_rejected_with_the_line_number(tmp_path):
  path = tmp_path / "latin1.jsonl"
  path.write_bytes(b'{"text": "ok", "label": 0}\n{"text": "caf\xe9", "label": 1}\n')
  with pytest.raises(UserError, match=r"line 2: not UTF-8"):
    files.read_jsonl(str(path))


def test_missing_and_empty_files(tmp_path):
  with pytest.raises(UserError, match="no such file"):
    load_task(f"jsonl:{tmp_path / 'nope.jsonl'}")
  (tmp_path / "empty.jsonl").write_text("\n\n")
  with pytest.raises(UserError, match="no examples"):
    files.read_jsonl(str(tmp_path / "empty.jsonl"))


def test_csv_with_named_columns_quotes_and_splits(tmp_path):
  path = tmp_path / "data.csv"
  path.write_text('review,stars,split\n'
                  '"great, really",1,train\n'
                  '"two\nlines",0,test\n'
                  'meh, 0 ,train\n')
  task = load_task(f"csv:{path}", csv_text_column="review", csv_label_column="stars")
  assert task.train == [Example("great, really", 1, 0), Example("meh", 0, 2)]
  assert task.test == [Example("two\nlines", 0, 1)]


@pytest.mark.parametrize("row, line, problem", [
    ("a,2", 5, "label must be 0 or 1, got '2'"),
    (",1", 5, "must be a non-empty string"),
    ("a", 5, "fewer fields than the header's 2"),
    ("a,1,extra", 5, "more fields than the header's 2"),
])
def test_bad_csv_row_is_rejected_with_its_line_number(tmp_path, row, line, problem):
  path = tmp_path / "bad.csv"
  # The quoted newline makes row 2 span lines 3-4, so the bad row starts on line 5.
  path.write_text('text,label\nok,0\n"multi\nline",1\n' + row + "\n")
  with pytest.raises(UserError) as error:
    files.read_csv(str(path))
  assert str(error.value).startswith(f"{path}, line {line}: ")
  assert problem in str(error.value)


def test_csv_without_the_named_column_lists_the_columns(tmp_path):
  path = tmp_path / "data.csv"
  path.write_text("sentence,label\nhello,1\n")
  with pytest.raises(UserError, match=r"line 1: no column 'text' .*columns: sentence, label"
                                      r".*csv_text_column"):
    load_task(f"csv:{path}")
