"""The task registry and the public datasets' formatting, on hand-written raw records.

The machine that runs the tests is offline, so the public datasets are exercised in two
parts: each task's formatter on records written here in the source's own schema, and
the loading path's offline error.
"""

import os
import subprocess
import sys

import pytest

from w2s_jax.data import public
from w2s_jax.data.tasks import Example, TaskData, load_task, register, task_names
from w2s_jax.errors import UserError

REQUIRED = ["sciq", "boolq", "cosmos_qa", "amazon_polarity", "anthropic_hh", "hellaswag",
            "piqa", "openbookqa", "arc_easy", "arc_challenge", "sst2", "social_i_qa",
            "winogrande", "quail", "dream", "anli", "paws"]

ARC_RECORD = {"question": "Which is a mammal?", "answerKey": "B",
              "choices": {"label": ["A", "B", "C"], "text": ["trout", "whale", "crab"]}}

# One raw record per task, in the schema of its Hub dataset, with a piece of text that
# the example shows exactly when its label is 1 (None for tasks with a native label: the
# record's label is then 1).
RECORDS = {
    "sciq": ({"question": "What do plants make?", "correct_answer": "glucose",
              "distractor1": "salt", "distractor2": "iron", "distractor3": "gold",
              "support": "Plants make glucose."}, "glucose"),
    "sciq_with_support": ({"question": "What do plants make?", "correct_answer": "glucose",
                           "distractor1": "salt", "distractor2": "iron",
                           "distractor3": "gold", "support": "Plants make glucose."},
                          'Is the answer "glucose"'),
    "boolq": ({"question": "is water wet", "passage": "Water is wet.", "answer": True}, None),
    "cosmos_qa": ({"context": "I missed the bus.", "question": "Why was I late?",
                   "answer0": "I missed the bus", "answer1": "It rained",
                   "answer2": "I was sick", "answer3": "No reason", "label": 0},
                  "Answer: I missed the bus"),
    "amazon_polarity": ({"title": "Great", "content": "Works well.", "label": 1}, None),
    "anthropic_hh": ({"chosen": "\n\nHuman: Hi?\n\nAssistant: Hello, how can I help?",
                      "rejected": "\n\nHuman: Hi?\n\nAssistant: Go away."}, None),
    "hellaswag": ({"ctx": "He picks up the ball", "label": "2",
                   "endings": ["and eats it.", "and sings.", "and throws it.", "and naps."]},
                  'Is "and throws it."'),
    "piqa": ({"goal": "Open a jar", "sol1": "Twist the lid", "sol2": "Bite the jar",
              "label": 0}, "Twist the lid"),
    "openbookqa": ({"question_stem": "Which is a mammal?", "answerKey": "B",
                    "choices": {"label": ["A", "B", "C"],
                                "text": ["trout", "whale", "crab"]}}, "Answer: whale"),
    "arc_easy": (ARC_RECORD, "Answer: whale"),
    "arc_challenge": (ARC_RECORD, "Answer: whale"),
    "sst2": ({"sentence": "a lovely film", "label": 1, "idx": 0}, None),
    "cola": ({"sentence": "The cat sat.", "label": 1, "idx": 0}, None),
    "social_i_qa": ({"context": "Sam gave a gift.", "question": "How does Sam feel?",
                     "answerA": "generous", "answerB": "angry", "answerC": "bored",
                     "label": "1"}, 'Is the answer "generous"'),
    "winogrande": ({"sentence": "The trophy did not fit in the case because _ was big.",
                    "option1": "the trophy", "option2": "the case", "answer": "1"},
                   "the trophy was big"),
    "quail": ({"context": "Ann ran home.", "question": "Who ran?", "correct_answer_id": 2,
               "answers": ["Bob", "Cy", "Ann", "not enough information"]}, '"Ann"'),
    "dream": ({"dialogue": ["M: Tea?", "W: Coffee, please."], "question": "What does she want?",
               "choice": ["Tea", "Coffee", "Water"], "answer": "Coffee"}, "A: Coffee"),
    "anli": ({"premise": "A dog runs.", "hypothesis": "An animal moves.", "label": 0}, None),
    "paws": ({"sentence1": "A is B.", "sentence2": "B is A.", "label": 1}, None),
    "quartz": ({"para": "More heat, faster melting.", "question": "Hotter ice melts?",
                "answerKey": "A", "choices": {"label": ["A", "B"], "text": ["faster", "slower"]}},
               '"faster"'),
    "wic": ({"sentence1": "Bank of a river.", "sentence2": "Bank of the river.",
             "word": "bank", "label": 1}, None),
    "multirc": ({"paragraph": "Sky is blue.", "question": "Color?", "answer": "blue",
                 "label": 1}, None),
    "mc_taco": ({"sentence": "He slept.", "question": "How long?", "answer": "8 hours",
                 "label": 1}, None),
    "twitter_sentiment": ({"text": "love it", "label": 1}, None),
    "ethics_deontology": ({"scenario": "I should feed my dog.", "excuse": "I have a dog.",
                           "label": 1}, None),
    "ethics_justice": ({"scenario": "I paid him because he worked.", "label": 1}, None),
    "ethics_virtue": ({"scenario": "She gave away her lunch. [SEP] generous", "label": 1},
                      None),
    "ethics_utilitarianism": ({"baseline": "I won a prize.", "less_pleasant": "I lost a bet."},
                              None),
}


def _formatted(task: str, record: dict, n: int = 64, seed: int = 0) -> list[Example | None]:
  """`n` copies of one record, formatted as the task's loaded split would be."""
  split = public.FormattedSplit([record] * n, public.FORMATTERS[task], task=task,
                                split="train", seed=seed)
  return [split[i] for i in range(n)]


def test_required_tasks_are_registered():
  assert set(REQUIRED) <= set(task_names())


def test_every_public_task_has_a_formatting_test():
  assert set(RECORDS) == set(public.SOURCES)


@pytest.mark.parametrize("task", sorted(RECORDS))
def test_formatter_turns_a_raw_record_into_a_binary_example(task):
  record, correct_answer = RECORDS[task]
  examples = _formatted(task, record)
  assert all(isinstance(example, Example) for example in examples)
  assert [example.uid for example in examples] == list(range(len(examples)))
  labels = [example.label for example in examples]
  if correct_answer is None and task not in ("anthropic_hh", "ethics_utilitarianism"):
    assert set(labels) == {1}  # the record's native label
    return
  # A coin flip per record: both labels appear, about half each.
  assert 16 <= sum(labels) <= 48
  if correct_answer is not None:
    for example in examples:
      assert (correct_answer in example.text) == (example.label == 1), example.text


def test_formatting_is_deterministic_per_seed_and_row_whatever_the_reading_order():
  record, _ = RECORDS["sciq"]
  split = public.FormattedSplit([record] * 50, public.format_sciq, task="sciq",
                                split="train", seed=7)
  forward = [split[i] for i in range(50)]
  backward = [split[i] for i in reversed(range(50))][::-1]
  assert forward == backward
  assert forward != _formatted("sciq", record, n=50, seed=8)


def test_anthropic_hh_is_a_pairwise_comparison():
  record, _ = RECORDS["anthropic_hh"]
  for example in _formatted("anthropic_hh", record):
    first = example.text.index("Response A:")
    chosen, rejected = (example.text.index(response) for response in
                        ("Hello, how can I help?", "Go away."))
    assert example.text.startswith("Human: Hi?")
    assert (first < chosen < rejected) == (example.label == 1)
    assert example.text.count("Assistant:") == 0  # the shared dialogue ends before it


def test_anthropic_hh_keeps_both_responses_of_a_long_dialogue_and_skips_ties():
  long_dialogue = "\n\nHuman: " + "blah " * 5000
  record = {"chosen": long_dialogue + "\n\nAssistant: Sure.",
            "rejected": long_dialogue + "\n\nAssistant: No."}
  text, _ = public.format_anthropic_hh(record, public.random.Random(0))
  assert len(text) < public.HH_MAX_DIALOGUE_CHARS + 200
  assert "Sure." in text and "No." in text
  tie = {"chosen": "\n\nHuman: Hi\n\nAssistant: Yo", "rejected": "\n\nHuman: Hi\n\nAssistant: Yo"}
  assert _formatted("anthropic_hh", tie, n=2) == [None, None]


def test_openbookqa_shows_answer_texts_never_the_answer_letter():
  record, _ = RECORDS["openbookqa"]
  for example in _formatted("openbookqa", record):
    shown = example.text.rsplit("Answer: ", 1)[1]
    assert shown in ("trout", "whale", "crab")


def test_cosmos_qa_none_of_the_above_is_always_a_negative():
  record = dict(RECORDS["cosmos_qa"][0], answer2="None of the above choices .", label=2)
  examples = _formatted("cosmos_qa", record)
  assert {example.label for example in examples} == {0}
  assert not any("None of the above" in example.text for example in examples)


def test_anli_entailment_is_the_positive_class():
  record, _ = RECORDS["anli"]
  for label, binary in ((0, 1), (1, 0), (2, 0)):
    assert _formatted("anli", dict(record, label=label), n=1)[0].label == binary


@pytest.mark.parametrize("task, unlabelled", [
    ("sst2", {"label": -1}), ("hellaswag", {"label": ""}), ("winogrande", {"answer": ""}),
    ("piqa", {"label": -1}), ("social_i_qa", {"label": ""}), ("boolq", {"answer": None}),
])
def test_unlabelled_rows_are_skipped(task, unlabelled):
  record = dict(RECORDS[task][0], **unlabelled)
  assert _formatted(task, record, n=3) == [None, None, None]


def test_ethics_texts_do_not_contain_their_answer():
  for task in ("ethics_deontology", "ethics_justice", "ethics_virtue"):
    example = _formatted(task, RECORDS[task][0], n=1)[0]
    assert example.text.endswith("A:")


def test_unknown_task_lists_the_known_ones():
  with pytest.raises(UserError, match=r"unknown task 'nope': use one of .*sciq.*jsonl:PATH"):
    load_task("nope")


def test_offline_public_task_fails_with_one_line_saying_how_to_supply_it(tmp_path):
  # A fresh process with an empty cache, so nothing this machine has cached can answer.
  env = dict(os.environ, HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1",
             HF_HOME=str(tmp_path / "hf"), HF_DATASETS_CACHE=str(tmp_path / "datasets"))
  script = ("from w2s_jax.data import load_task\n"
            "from w2s_jax.errors import UserError\n"
            "try:\n  load_task('sciq')\n"
            "except UserError as e:\n  print(repr(str(e)))\n")
  result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                          text=True, timeout=120, check=True)
  message = eval(result.stdout.strip())  # the repr of one str  # noqa: S307
  assert "\n" not in message
  assert "allenai/sciq" in message and "not in the local cache" in message
  assert "HF_DATASETS_CACHE" in message and "jsonl:PATH" in message


@register("test_lazy_parity")
def _parity_task(seed: int):
  """A registered task built from real examples: label = parity of the number in the text."""
  def split(n, offset):
    return [Example(text=f"number {offset + i}", label=(offset + i) % 2, uid=i)
            if i % 10 else None  # every 10th record is unusable
            for i in range(n)]
  return split(500, 0), split(100, 1000 + seed)


def test_load_task_selects_seeded_subsets_and_skips_unusable_records():
  task = load_task("test_lazy_parity", n_train=40, n_test=10, seed=0)
  assert isinstance(task, TaskData) and task.name == "test_lazy_parity"
  assert len(task.train) == 40 and len(task.test) == 10
  assert all(example.uid % 10 for example in task.train + task.test)
  assert [e.uid for e in task.train] == sorted(e.uid for e in task.train)
  assert task == load_task("test_lazy_parity", n_train=40, n_test=10, seed=0)
  other = load_task("test_lazy_parity", n_train=40, n_test=10, seed=1)
  assert [e.uid for e in other.train] != [e.uid for e in task.train]


def test_load_task_balance():
  task = load_task("test_lazy_parity", n_train=60, seed=0, balance=True)
  assert sum(example.label for example in task.train) == 30
  assert sum(example.label for example in task.test) * 2 == len(task.test)


def test_registering_a_name_twice_or_a_file_prefix_is_refused():
  with pytest.raises(ValueError, match="registered twice"):
    register("test_lazy_parity")(lambda seed: ([], []))
  with pytest.raises(ValueError, match="may not start with"):
    register("jsonl:x")
