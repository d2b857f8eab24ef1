"""Tokenization and batching of multiple-choice examples (a prompt and candidate completions).

A `ChoiceExample` (w2s_jax/data/tasks.py) is scored by a language model: candidate k's logit
is the summed log-probability of its tokens after the prompt. A batch row packs one example:
its prompt once, then each of its K *slots* (candidates) one after another, and a mask that
lets a candidate's tokens see the prompt and their own earlier tokens, never another
candidate's; positions restart after the prompt for every candidate. One pass over
P + sum_k |c_k| tokens so scores all K candidates, where K separate sequences would cost
K * P + sum_k |c_k| (a chess position of ~60 tokens with ~35 legal moves of 4 tokens: 200
tokens instead of 2,200).

  input_ids [B, T] int32, positions [B, T] int32: the packed row, right padded;
  attention_mask [B, T, T] int32: 1 where query t may attend to key s (causal, within the
    prompt and its own candidate); a padding position sees the first token only;
  at [B, K, L] int32: the index whose next-token prediction is the candidate's j-th token
    (the prompt's last token for j = 0, the candidate's own token j - 1 after);
  next_ids [B, K, L] int32: those candidate tokens;
  next_mask [B, K, L] float32: 1 on real candidate tokens (the only ones with a loss: the
    prompt's tokens never enter it);
  choice_mask [B, K] int32: 1 where the slot holds a candidate;
  targets [B, K] float32: the soft label of each slot's candidate;
  labels [B] int32: the slot of the right candidate, -1 if it is not among the slots;
  weight [B] float32, index [B] int32: as for classification batches (0 / -1 on padding rows).

Which candidates fill the slots depends on the loss: cross-entropy over the candidates needs
all of them (`slots="all"`), while the language-modelling loss reads only the candidates a
target puts mass on (`slots="targets"`): with hard labels that is one slot per example.

K and L are fixed per split and T comes from length boundaries, as for classification, so
the step compiles a few shapes, not one per batch.
"""

import dataclasses
from collections.abc import Iterator, Sequence

import numpy as np

from w2s_jax.data.batching import TOKENIZE_CHUNK, batch_order, example_weights, padded_length, split_boundaries
from w2s_jax.data.tasks import ChoiceExample
from w2s_jax.errors import UserError

SLOTS = ("all", "targets")


@dataclasses.dataclass(frozen=True)
class ChoiceSet:
  """A multiple-choice split tokenized for one model.

  Attributes:
    prompts: one int32 array per example (left-truncated if it had to be; never empty).
    candidates: per example, one int32 array per candidate (never empty).
    labels: [N] int32, the right candidate's index.
    uids: [N] int64.
    n_truncated: how many examples lost prompt (or completion) tokens to max_length.
  """
  prompts: list[np.ndarray]
  candidates: list[tuple[np.ndarray, ...]]
  labels: np.ndarray
  uids: np.ndarray
  n_truncated: int = 0

  def __len__(self) -> int:
    return len(self.prompts)

  @property
  def num_choices(self) -> np.ndarray:
    """[N] int64 candidates per example."""
    return np.array([len(c) for c in self.candidates], np.int64)

  @property
  def max_choices(self) -> int:
    return int(self.num_choices.max())

  def lengths(self, slots: Sequence[np.ndarray] | None = None) -> np.ndarray:
    """[N] int64: each example's packed length, its prompt + the candidates of `slots[i]` (default all)."""
    out = np.zeros(len(self), np.int64)
    for i, (prompt, cands) in enumerate(zip(self.prompts, self.candidates)):
      ks = range(len(cands)) if slots is None else slots[i]
      out[i] = len(prompt) + sum(len(cands[k]) for k in ks)
    return out


def _tokenize(tokenizer, texts: list[str], **kw) -> list[list[int]]:
  ids: list[list[int]] = []
  for start in range(0, len(texts), TOKENIZE_CHUNK):
    ids.extend(tokenizer(texts[start:start + TOKENIZE_CHUNK], verbose=False, **kw)["input_ids"])
  return ids


def tokenize_choices(examples: Sequence[ChoiceExample], tokenizer, max_length: int) -> ChoiceSet:
  """Tokenizes prompts (with the tokenizer's special tokens, e.g. a BOS) and candidates (without).

  Prompt and candidate are tokenized apart and concatenated, the same way for training and
  scoring, so a candidate is the same tokens whichever prompt precedes it. `max_length` bounds
  the prompt with any one candidate (the positions a model sees; a packed row of all the
  candidates is longer, but each candidate's positions restart after the prompt). An example whose
  prompt + longest candidate exceeds `max_length` keeps the *end* of its prompt (the question
  next to the answer) and loses its start; a candidate longer than `max_length - 1` keeps its
  start. An empty prompt (language modelling of a whole text) lends the text's first token as
  context: a first token has nothing to be predicted from.
  """
  if max_length < 2:
    raise UserError(f"max_length must be at least 2, got {max_length}")
  if not examples:
    raise UserError("no examples to tokenize")
  prompts = _tokenize(tokenizer, [e.text for e in examples])
  # Candidates repeat across examples (chess moves, label words): each distinct one once.
  distinct = sorted({c for e in examples for c in e.candidates})
  cand_ids = dict(zip(distinct, _tokenize(tokenizer, distinct, add_special_tokens=False)))
  empty = [c for c, ids in cand_ids.items() if not ids]
  if empty:
    raise UserError(f"the tokenizer turned the candidate {empty[0]!r} into no tokens; "
                    "check that the tokenizer matches the model and the candidates are not empty")
  out_prompts, out_cands, n_truncated = [], [], 0
  for e, prompt in zip(examples, prompts):
    if not 0 <= e.label < len(e.candidates):
      raise UserError(f"example uid {e.uid}: label {e.label} is not the index of one of its "
                      f"{len(e.candidates)} candidates")
    cands = [list(cand_ids[c]) for c in e.candidates]
    if not prompt:
      if len(cands) > 1:
        raise UserError(f"example uid {e.uid}: its prompt has no tokens, so its {len(cands)} candidates "
                        "have no shared context to be scored in; give it a prompt")
      if len(cands[0]) < 2:
        raise UserError(f"example uid {e.uid}: an empty prompt and a one-token completion leave "
                        "nothing to predict")
      prompt, cands = cands[0][:1], [cands[0][1:]]
    longest = max(len(c) for c in cands)
    if len(prompt) + longest > max_length:
      n_truncated += 1
      room = max(max_length - longest, 1)
      prompt = prompt[-room:]
      cands = [c[:max_length - len(prompt)] for c in cands]
    out_prompts.append(np.asarray(prompt, np.int32))
    out_cands.append(tuple(np.asarray(c, np.int32) for c in cands))
  return ChoiceSet(prompts=out_prompts, candidates=out_cands,
                   labels=np.array([e.label for e in examples], np.int32),
                   uids=np.array([e.uid for e in examples], np.int64), n_truncated=n_truncated)


def one_hot_targets(data: ChoiceSet) -> np.ndarray:
  """[N, max_choices] float32: the ground truth as targets over candidates."""
  targets = np.zeros((len(data), data.max_choices), np.float32)
  targets[np.arange(len(data)), data.labels] = 1.0
  return targets


def check_targets(data: ChoiceSet, targets: np.ndarray) -> np.ndarray:
  """Targets [N, >= max_choices] as float32, checked: finite, no mass on a missing candidate."""
  targets = np.asarray(targets, np.float32)
  if targets.ndim != 2 or targets.shape[0] != len(data) or targets.shape[1] < data.max_choices:
    raise UserError(f"targets have shape {targets.shape}, expected ({len(data)}, >= {data.max_choices}): "
                    "one row of candidate probabilities per example")
  if not np.all(np.isfinite(targets)):
    raise UserError("targets contain NaN or inf; check the weak labels")
  beyond = np.arange(targets.shape[1])[None, :] >= data.num_choices[:, None]
  if np.any(targets[beyond] > 0):
    raise UserError("targets put probability on candidates an example does not have")
  return targets


def slots_of(data: ChoiceSet, targets: np.ndarray, slots: str) -> list[np.ndarray]:
  """Per example, the candidate indices that fill its slots: all, or those with target > 0."""
  if slots not in SLOTS:
    raise UserError(f"slots {slots!r} is not one of {SLOTS}")
  if slots == "all":
    return [np.arange(k) for k in data.num_choices]
  chosen = [np.flatnonzero(row[:k] > 0) for row, k in zip(targets, data.num_choices)]
  return [c if len(c) else np.array([int(label)]) for c, label in zip(chosen, data.labels)]


def choice_batches(data: ChoiceSet, batch_size: int, *, targets: np.ndarray | None = None,
                   weights: np.ndarray | None = None, slots: str = "all", shuffle: bool, seed: int,
                   epoch: int = 0, bucket: bool = False, pad_id: int = 0, length_buckets: int = 16,
                   length_multiple: int = 1, process_index: int = 0,
                   process_count: int = 1) -> Iterator[dict[str, np.ndarray]]:
  """One epoch of fixed-shape batches of `data` (the module docstring gives their fields).

  targets: [N, >= max_choices] soft labels over each example's candidates; default one-hot
    labels. weights: [N] per-example loss weights in [0, 1] (default 1). shuffle, seed, epoch,
    bucket: see `batching.batch_order`; the order is a function of them alone, and each process
    yields its own block of rows of every global batch.
  """
  if batch_size <= 0 or batch_size % process_count:
    raise UserError(f"global batch size {batch_size} must be positive and a multiple of "
                    f"{process_count} processes")
  n = len(data)
  targets = one_hot_targets(data) if targets is None else check_targets(data, targets)
  weights = example_weights(weights, n)
  per_example = slots_of(data, targets, slots)
  K = max(len(s) for s in per_example)
  L = max(len(data.candidates[i][k]) for i in range(n) for k in per_example[i])
  lengths = data.lengths(per_example)
  boundaries = split_boundaries(lengths, batch_size, length_buckets, length_multiple)
  local = batch_size // process_count
  rows = slice(process_index * local, (process_index + 1) * local)
  for members in batch_order(lengths, batch_size, shuffle=shuffle, seed=seed, epoch=epoch, bucket=bucket):
    T = padded_length(int(lengths[members].max()), boundaries)
    index = np.full(batch_size, -1, np.int32)
    index[:len(members)] = members
    index = index[rows]
    batch = dict(input_ids=np.full((local, T), pad_id, np.int32), positions=np.zeros((local, T), np.int32),
                 attention_mask=np.zeros((local, T, T), np.int32),
                 at=np.zeros((local, K, L), np.int32), next_ids=np.zeros((local, K, L), np.int32),
                 next_mask=np.zeros((local, K, L), np.float32), choice_mask=np.zeros((local, K), np.int32),
                 targets=np.zeros((local, K), np.float32), labels=np.full(local, -1, np.int32),
                 weight=np.zeros(local, np.float32), index=index)
    for row, i in enumerate(index):
      if i < 0:
        continue
      prompt = data.prompts[i]
      P = len(prompt)
      segment = [np.zeros(P, np.int32)]
      batch["input_ids"][row, :P] = prompt
      batch["positions"][row, :P] = np.arange(P)
      offset = P
      for slot, k in enumerate(per_example[i]):
        cand = data.candidates[i][k]
        C = len(cand)
        batch["input_ids"][row, offset:offset + C] = cand
        batch["positions"][row, offset:offset + C] = np.arange(P, P + C)
        segment.append(np.full(C, slot + 1, np.int32))
        # Token j is predicted from the prompt's last token (j = 0) or from token j - 1 of its own.
        batch["at"][row, slot, :C] = np.concatenate([[P - 1], np.arange(offset, offset + C - 1)])
        batch["next_ids"][row, slot, :C] = cand
        batch["next_mask"][row, slot, :C] = 1.0
        batch["choice_mask"][row, slot] = 1
        batch["targets"][row, slot] = targets[i, k]
        if k == data.labels[i]:
          batch["labels"][row] = slot
        offset += C
      seg = np.concatenate(segment)  # [offset]: 0 for the prompt, slot + 1 for a candidate's tokens
      n = len(seg)
      causal = np.tril(np.ones((n, n), bool))
      same = (seg[None, :] == 0) | (seg[None, :] == seg[:, None])  # the key is prompt, or the query's own
      batch["attention_mask"][row, :n, :n] = causal & same
      batch["weight"][row] = weights[i]
    # No query attends to nothing (an empty softmax row is NaN, and NaN * 0 is NaN).
    batch["attention_mask"][:, :, 0] = 1
    yield batch
