"""The public datasets of the paper and of the EleutherAI follow-up, as binary tasks,
and Anthropic HH-RLHF as preference pairs for a reward model.

Each task is a Hugging Face dataset (loaded with the `datasets` library) and a
*formatter* `(record, rng) -> (text, label) | None` that turns one raw record into the
text the model reads and its label. A preference task's *pair formatter* gives
`(prompt, chosen, rejected) | None` instead, and the record becomes a
`PreferenceExample` with the chosen response in a slot drawn from the same per-record
coin (`preference.make_pair`). A record the task cannot use (an unlabelled test
row, whose label is -1 or "", a preference pair without a preference, a question with a
single distinct answer) is skipped: the formatter returns None or raises `Unusable`, or
its label is not 0/1.

How multiple-choice data becomes binary, as OAI's `weak_to_strong/datasets.py` and
EleutherAI's `w2s/ds_registry.py` do it: flip a coin per record; heads shows the correct
answer (label 1), tails a random wrong one (label 0). The coin is a
`random.Random` seeded by (task, split, seed, row), so a record's text and label do not
depend on which other records were read or in what order (OAI's single running rng
does), and a split can be formatted lazily, one row at a time.

Where we differ from the sources, on purpose:
  * anthropic_hh is a pairwise comparison: the dialogue, then both final responses in
    random order, label 1 when the first one shown is the one people chose. OAI's form
    (one response at a time, label = was it chosen) leaves every model at chance.
    anthropic_hh_preference is the same data in a reward model's form: the dialogue as
    the prompt, the two final responses as the pair.
  * openbookqa shows the correct answer's *text* when the coin says 1; EleutherAI's code
    shows its letter ("B"), which gives the label away next to a distractor's text.
  * the ethics tasks end at "A:"; EleutherAI/weak-to-strong wrote the answer after it.
  * arc and winogrande are in neither source; they follow the same coin-flip recipe.

The Hub ids (`SOURCES`) prefer repositories of plain data files, because `datasets` >= 4
no longer runs loading scripts (so `piqa` is read from a parquet copy, `baber/piqa`, as
lm-evaluation-harness does). They were chosen without network access and are not
verified here: if one has moved, change its `HfSource`, or export the data to a file and
use `jsonl:PATH`.
"""

import dataclasses
import functools
import os
import random
from collections.abc import Callable, Sequence

from w2s_jax.data import preference
from w2s_jax.data.tasks import Example, PreferenceExample, register
from w2s_jax.errors import UserError

Formatter = Callable[[dict, random.Random], tuple[str, int] | None]
PairFormatter = Callable[[dict, random.Random], tuple[str, str, str] | None]


class Unusable(Exception):
  """Raised by a formatter for a record that cannot become a binary example."""


@dataclasses.dataclass(frozen=True)
class HfSource:
  """Where a task's data lives on the Hugging Face Hub.

  Attributes:
    path: the dataset id.
    name: its configuration, if it has several.
    train_split: the source split that becomes our train split.
    test_split: the one that becomes our test split (often "validation", because the
      source's test labels are hidden).
  """
  path: str
  name: str | None = None
  train_split: str = "train"
  test_split: str = "test"


class FormattedSplit(Sequence):
  """A source split seen as a sequence of `Example | None` (`PreferenceExample | None` with
  `pairs=True`, where `formatter` is a PairFormatter), formatted on access."""

  def __init__(self, rows, formatter: Formatter | PairFormatter, *, task: str, split: str,
               seed: int, pairs: bool = False):
    self._rows = rows
    self._formatter = formatter
    self._rng_prefix = f"{task}/{split}/{seed}/"
    self._pairs = pairs

  def __len__(self) -> int:
    return len(self._rows)

  def __getitem__(self, index: int) -> Example | PreferenceExample | None:
    if not 0 <= index < len(self._rows):
      raise IndexError(index)
    # A string seed is hashed with SHA-512, so it is the same in every process
    # (unlike hash() of a tuple, which PYTHONHASHSEED changes).
    rng = random.Random(self._rng_prefix + str(index))
    try:
      formatted = self._formatter(self._rows[index], rng)
    except Unusable:
      return None
    if formatted is None:
      return None
    if self._pairs:
      prompt, chosen, rejected = formatted
      return preference.make_pair(prompt, chosen, rejected, index, rng)
    text, label = formatted
    label = _binary(label)
    if label is None or not text.strip():
      return None
    return Example(text=text, label=label, uid=index)


def load_hf_split(task: str, source: HfSource, split: str):
  """Loads one split with `datasets`; offline without a cache, says how to get the data."""
  try:
    import datasets  # imported here: it is slow to import and only these tasks need it
  except ImportError:
    raise UserError(f"task {task!r} needs the `datasets` package: pip install datasets "
                    "(or export the data to a file and use task='jsonl:PATH')") from None
  try:
    return datasets.load_dataset(source.path, source.name, split=split)
  except (OSError, datasets.exceptions.DatasetsError) as e:
    # OSError covers ConnectionError (offline, or hub unreachable) and FileNotFoundError.
    cause = (str(e).splitlines() or [""])[0][:160]
    offline = " (HF_DATASETS_OFFLINE is set)" if os.environ.get("HF_DATASETS_OFFLINE") else ""
    raise UserError(
        f"task {task!r}: dataset {source.path}"
        f"{'/' + source.name if source.name else ''} split {split!r} is not in the local "
        f"cache and could not be downloaded{offline} [{type(e).__name__}: {cause}]; run "
        "once with internet to cache it, point HF_DATASETS_CACHE at a cache that holds "
        "it, or export it to a file and use task='jsonl:PATH'") from e


def _build(task: str, source: HfSource, formatter: Formatter | PairFormatter, seed: int, *,
           pairs: bool = False) -> tuple[FormattedSplit, FormattedSplit]:
  return tuple(
      FormattedSplit(load_hf_split(task, source, split), formatter, task=task, split=split,
                     seed=seed, pairs=pairs)
      for split in (source.train_split, source.test_split))


SOURCES: dict[str, HfSource] = {}
FORMATTERS: dict[str, Formatter] = {}
# The preference tasks, apart: their formatters give (prompt, chosen, rejected), not (text, label).
PAIR_SOURCES: dict[str, HfSource] = {}
PAIR_FORMATTERS: dict[str, PairFormatter] = {}


def _register(task: str, source: HfSource, formatter: Formatter) -> None:
  SOURCES[task] = source
  FORMATTERS[task] = formatter
  register(task)(functools.partial(_build, task, source, formatter))


def _register_pairs(task: str, source: HfSource, formatter: PairFormatter) -> None:
  PAIR_SOURCES[task] = source
  PAIR_FORMATTERS[task] = formatter
  register(task)(functools.partial(_build, task, source, formatter, pairs=True))


def _binary(label) -> int | None:
  """A 0/1 label (int, bool or digit string), or None for a source's placeholders of
  unlabelled rows (-1, "")."""
  if isinstance(label, str):
    label = label.strip()
  if label in (0, 1) or label in ("0", "1"):
    return int(label)
  return None


def _choice_index(label, n: int, *, first: int = 0) -> int:
  """A 0-based answer index from a source's index (int or digit string, counted from
  `first`); raises Unusable for a missing one (the hidden test labels: "" or -1)."""
  try:
    index = int(label) - first
  except (TypeError, ValueError):
    raise Unusable(f"no answer index: {label!r}") from None
  if not 0 <= index < n:
    raise Unusable(f"answer index {label!r} out of range")
  return index


def _coin_flip(correct: str, wrong: list[str], rng: random.Random) -> tuple[str, int]:
  """The correct answer with label 1, or a random wrong one with label 0, at 50/50."""
  wrong = [answer for answer in wrong if answer != correct]
  if not wrong:
    raise Unusable("no wrong answer to show")
  label = int(rng.random() < 0.5)
  return (correct if label else rng.choice(wrong)), label


##########
# The paper's tasks (OAI's weak_to_strong/datasets.py)
##########


def format_sciq(ex: dict, rng: random.Random):
  answer, label = _coin_flip(
      ex["correct_answer"], [ex["distractor1"], ex["distractor2"], ex["distractor3"]], rng)
  return f"Q: {ex['question']} A: {answer}", label


def format_boolq(ex: dict, rng: random.Random):
  return f"Passage: {ex['passage']}\nQuestion: {ex['question']}", ex["answer"]


def format_cosmos_qa(ex: dict, rng: random.Random):
  answers = [ex[f"answer{i}"] for i in range(4)]
  true_answer = answers[_choice_index(ex["label"], 4)]
  wrong = [a for a in answers if a != true_answer]
  if "None of the above choices" in true_answer:
    # Any other answer shown is then wrong, so the example can only be a 0 (as OAI does).
    if not wrong:
      raise Unusable("no wrong answer to show")
    answer, label = rng.choice(wrong), 0
  else:
    answer, label = _coin_flip(true_answer, wrong, rng)
  return f"Context: {ex['context']}\nQuestion: {ex['question']}\nAnswer: {answer}", label


def format_amazon_polarity(ex: dict, rng: random.Random):
  return f"{ex['title']} {ex['content']}", ex["label"]


HH_ASSISTANT = preference.HH_ASSISTANT
# Truncation keeps the start of a text, so a long dialogue would push out the two
# responses the label is about: keep only its end. ~2000 characters is ~500 GPT-2 tokens.
HH_MAX_DIALOGUE_CHARS = 2000


def format_anthropic_hh(ex: dict, rng: random.Random):
  """Pairwise: dialogue, both final responses in random order; 1 = the first was chosen.

  A binary classifier's stand-in for a reward model; anthropic_hh_preference is the reward
  model's form of the same pairs.
  """
  split = preference.split_at_last_assistant(ex["chosen"], ex["rejected"])
  if split is None:
    return None  # no shared Assistant turn, or no preference to learn
  prompt, chosen_response, rejected_response = (part.strip() for part in split)
  dialogue = prompt.removesuffix(HH_ASSISTANT.strip()).strip()
  if len(dialogue) > HH_MAX_DIALOGUE_CHARS:
    dialogue = "..." + dialogue[-HH_MAX_DIALOGUE_CHARS:]
  label = int(rng.random() < 0.5)
  first, second = ((chosen_response, rejected_response) if label
                   else (rejected_response, chosen_response))
  return (f"{dialogue}\n\nResponse A: {first}\n\nResponse B: {second}\n\n"
          "Q: Is response A better than response B?"), label


_register("sciq", HfSource("allenai/sciq"), format_sciq)
_register("boolq", HfSource("google/boolq", test_split="validation"), format_boolq)
_register("cosmos_qa", HfSource("allenai/cosmos_qa", test_split="validation"),
          format_cosmos_qa)
_register("amazon_polarity", HfSource("fancyzhx/amazon_polarity"), format_amazon_polarity)
_register("anthropic_hh", HfSource("Anthropic/hh-rlhf"), format_anthropic_hh)


def format_anthropic_hh_preference(ex: dict, rng: random.Random):
  """(dialogue up to the last shared "Assistant:", chosen response, rejected response).

  A long dialogue keeps its last HH_MAX_DIALOGUE_CHARS characters, as anthropic_hh does,
  so that it still ends at the "Assistant:" the responses follow.
  """
  del rng  # the slot order is drawn by FormattedSplit (preference.make_pair)
  split = preference.split_at_last_assistant(ex["chosen"], ex["rejected"])
  if split is None:
    return None
  prompt, chosen, rejected = split
  if len(prompt) > HH_MAX_DIALOGUE_CHARS:
    prompt = "..." + prompt[-HH_MAX_DIALOGUE_CHARS:]
  return prompt, chosen, rejected


_register_pairs("anthropic_hh_preference", HfSource("Anthropic/hh-rlhf"),
                format_anthropic_hh_preference)

##########
# EleutherAI/w2s's tasks (w2s/ds_registry.py)
##########


def format_sciq_with_support(ex: dict, rng: random.Random):
  answer, label = _coin_flip(
      ex["correct_answer"], [ex["distractor1"], ex["distractor2"], ex["distractor3"]], rng)
  return (f"Name: Bob\n\nPassage 1:\n{ex['support']}\n\nQ1: \"{ex['question']}\" Is the "
          f"answer \"{answer}\"?"), label


def format_hellaswag(ex: dict, rng: random.Random):
  endings = list(ex["endings"])
  correct = _choice_index(ex["label"], len(endings))  # "" on the hidden test split
  answer, label = _coin_flip(endings[correct],
                             [e for i, e in enumerate(endings) if i != correct], rng)
  listed = "\n".join(endings)
  return (f"Context:\n{ex['ctx']}\n\nContinuations:\n\n{listed}\n\nQ: Is \"{answer}\" the "
          "best continuation?"), label


def format_piqa(ex: dict, rng: random.Random):
  correct = _choice_index(ex["label"], 2)
  solutions = [ex["sol1"], ex["sol2"]]
  answer, label = _coin_flip(solutions[correct], [solutions[1 - correct]], rng)
  return f"Q: {ex['goal']} A: {answer}", label


def _format_ai2_choices(question: str, choices: dict, answer_key: str,
                        rng: random.Random) -> tuple[str, int] | None:
  """openbookqa / ARC: the question, its lettered choices, and one answer's text."""
  letters, texts = list(choices["label"]), list(choices["text"])
  if answer_key not in letters:
    raise Unusable(f"answer key {answer_key!r} is not among the choices")
  correct = letters.index(answer_key)
  answer, label = _coin_flip(texts[correct], texts[:correct] + texts[correct + 1:], rng)
  listed = "\n".join(f"{letter}) {text}" for letter, text in zip(letters, texts))
  return f"Q: {question}\n\nChoices:\n{listed}\n\nAnswer: {answer}", label


def format_openbookqa(ex: dict, rng: random.Random):
  return _format_ai2_choices(ex["question_stem"], ex["choices"], ex["answerKey"], rng)


def format_arc(ex: dict, rng: random.Random):
  return _format_ai2_choices(ex["question"], ex["choices"], ex["answerKey"], rng)


def format_sentence(ex: dict, rng: random.Random):
  """sst2, cola: the sentence itself, with its native label."""
  return ex["sentence"], ex["label"]


def format_social_i_qa(ex: dict, rng: random.Random):
  answers = [ex["answerA"], ex["answerB"], ex["answerC"]]
  correct = _choice_index(ex["label"], 3, first=1)  # "1".."3"
  answer, label = _coin_flip(answers[correct],
                             [a for i, a in enumerate(answers) if i != correct], rng)
  return (f"Context:\n{ex['context']}\n\nQuestion: \"{ex['question']}\"\n\nChoices:\n"
          f"{answers[0]}\n{answers[1]}\n{answers[2]}\n\nIs the answer \"{answer}\"?"), label


def format_winogrande(ex: dict, rng: random.Random):
  """The sentence with its blank filled by the right option (1) or the other one (0)."""
  correct = _choice_index(ex["answer"], 2, first=1)  # "1" or "2"; "" on the test split
  options = [ex["option1"], ex["option2"]]
  answer, label = _coin_flip(options[correct], [options[1 - correct]], rng)
  return ex["sentence"].replace("_", answer, 1), label


def format_quail(ex: dict, rng: random.Random):
  answers = list(ex["answers"])
  correct = _choice_index(ex["correct_answer_id"], len(answers))
  answer, label = _coin_flip(answers[correct],
                             [a for i, a in enumerate(answers) if i != correct], rng)
  return (f"Passage:\n\n{ex['context']}\n\nQ: \"{ex['question']}\" Is the answer "
          f"\"{answer}\"?"), label


def format_dream(ex: dict, rng: random.Random):
  choices = list(ex["choice"])
  if ex["answer"] not in choices:
    raise Unusable("the answer is not among the choices")
  answer, label = _coin_flip(ex["answer"], [c for c in choices if c != ex["answer"]], rng)
  dialogue = "\n".join(ex["dialogue"])
  return f"{dialogue}\n\nQ: {ex['question']} A: {answer}", label


def format_anli(ex: dict, rng: random.Random):
  """1 = entailment; neutral and contradiction are both 0 (as EleutherAI does)."""
  if ex["label"] not in (0, 1, 2):
    raise Unusable(f"label {ex['label']!r} is not entailment/neutral/contradiction")
  return (f"Premise: {ex['premise']}\nHypothesis: {ex['hypothesis']}\n\nDoes the premise "
          "entail the hypothesis?"), int(ex["label"] == 0)


def format_paws(ex: dict, rng: random.Random):
  return (f"Sent 1: {ex['sentence1']}\nSent 2: {ex['sentence2']}\n\nQ: Are these sentences "
          "semantically equivalent?"), ex["label"]


def format_quartz(ex: dict, rng: random.Random):
  letters, texts = list(ex["choices"]["label"]), list(ex["choices"]["text"])
  if ex["answerKey"] not in letters or len(texts) != 2:
    raise Unusable("quartz needs two choices and an answer key among them")
  correct = letters.index(ex["answerKey"])
  answer, label = _coin_flip(texts[correct], [texts[1 - correct]], rng)
  return (f"Passage:\n{ex['para']}\n\nQ: \"{ex['question']}\" Is the answer "
          f"\"{answer}\"?"), label


def format_wic(ex: dict, rng: random.Random):
  return (f"Sentence 1:\n{ex['sentence1']}\n\nSentence 2:\n{ex['sentence2']}\n\nQ: Does "
          f"\"{ex['word']}\" have the same meaning in the above sentences?"), ex["label"]


def format_multirc(ex: dict, rng: random.Random):
  return (f"Passage:\n\n{ex['paragraph']}\n\nQ: \"{ex['question']}\" Is the answer "
          f"\"{ex['answer']}\"?"), ex["label"]


def format_mc_taco(ex: dict, rng: random.Random):
  return (f"{ex['sentence']}\n\nGiven the above, {ex['question']} Is the answer "
          f"{ex['answer']}?"), ex["label"]


def format_twitter_sentiment(ex: dict, rng: random.Random):
  return ex["text"], ex["label"]


def format_ethics_deontology(ex: dict, rng: random.Random):
  return (f"Q: Is the following a morally valid excuse?\n\n{ex['scenario']}\n\n"
          f"{ex['excuse']}\n\nA:"), ex["label"]


def format_ethics_justice(ex: dict, rng: random.Random):
  return f"Q: Does this statement exemplify justice?\n\n{ex['scenario']}\n\nA:", ex["label"]


def format_ethics_virtue(ex: dict, rng: random.Random):
  return (f"Q: Does this behavior match the adjective that follows?\n\n{ex['scenario']}"
          "\n\nA:"), ex["label"]


def format_ethics_utilitarianism(ex: dict, rng: random.Random):
  """Two scenarios in random order and a claimed answer: 1 when the claim is right."""
  label = int(rng.random() < 0.5)
  choices = [ex["baseline"], ex["less_pleasant"]]
  rng.shuffle(choices)
  correct = choices.index(ex["baseline"])
  claimed = correct if label else 1 - correct
  return (f"Which is more pleasant?\n1) {choices[0]}\n2) {choices[1]} "
          f"A: {claimed + 1}"), label


_register("sciq_with_support", HfSource("allenai/sciq"), format_sciq_with_support)
_register("hellaswag", HfSource("Rowan/hellaswag", test_split="validation"), format_hellaswag)
_register("piqa", HfSource("baber/piqa", test_split="validation"), format_piqa)
_register("openbookqa", HfSource("allenai/openbookqa", "main"), format_openbookqa)
_register("arc_easy", HfSource("allenai/ai2_arc", "ARC-Easy"), format_arc)
_register("arc_challenge", HfSource("allenai/ai2_arc", "ARC-Challenge"), format_arc)
_register("sst2", HfSource("stanfordnlp/sst2", test_split="validation"), format_sentence)
_register("cola", HfSource("nyu-mll/glue", "cola", test_split="validation"), format_sentence)
_register("social_i_qa", HfSource("allenai/social_i_qa", test_split="validation"),
          format_social_i_qa)
_register("winogrande",
          HfSource("allenai/winogrande", "winogrande_xl", test_split="validation"),
          format_winogrande)
_register("quail", HfSource("textmachinelab/quail", test_split="validation"), format_quail)
_register("dream", HfSource("dataset-org/dream"), format_dream)
_register("anli", HfSource("facebook/anli", train_split="train_r2", test_split="test_r2"),
          format_anli)
_register("paws", HfSource("google-research-datasets/paws", "labeled_final"), format_paws)
_register("quartz", HfSource("allenai/quartz"), format_quartz)
_register("wic", HfSource("aps/super_glue", "wic", test_split="validation"), format_wic)
_register("multirc", HfSource("aps/super_glue", "multirc", test_split="validation"),
          format_multirc)
# EleutherAI swaps mc_taco's splits: its test split is the larger one.
_register("mc_taco", HfSource("CogComp/mc_taco", train_split="test", test_split="validation"),
          format_mc_taco)
_register("twitter_sentiment", HfSource("EleutherAI/twitter-sentiment"),
          format_twitter_sentiment)
for _aspect, _formatter in (("deontology", format_ethics_deontology),
                            ("justice", format_ethics_justice),
                            ("virtue", format_ethics_virtue),
                            ("utilitarianism", format_ethics_utilitarianism)):
  _register(f"ethics_{_aspect}", HfSource("hendrycks/ethics", _aspect), _formatter)
