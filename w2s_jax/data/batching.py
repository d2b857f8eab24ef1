"""Tokenization and batching: examples become fixed-shape numpy batches.

Each model tokenizes with its own tokenizer (the weak and the strong model may differ),
so a task is tokenized once per model, not once per run.

Batches have a fixed global batch size: the last, partial batch of an epoch is filled
with padding rows of weight 0, so every batch has the same leading dimension. Their
length T is the batch's longest sequence rounded up to the next of a few boundaries
fitted to the split's lengths (`length_boundaries`), so a jitted step compiles at most
`length_buckets` shapes per split, and they sit where the data needs them: with short
texts, rounding T up to a fixed multiple wastes more than the mix of lengths does
(21% of a tweet epoch at a multiple of 16, 8-9% with 16 fitted boundaries).

Length bucketing keeps padding small: the shuffled examples are cut into chunks of
`bucket_chunk` batches, each chunk is sorted by length and cut into batches, and the
batches are shuffled (the "megabatch" recipe of Hugging Face's LengthGroupedSampler).
A batch then holds examples of similar length, while which examples meet in a batch,
and the batch order, still change every epoch. `padding_waste` measures the effect.
"""

import dataclasses
from collections.abc import Iterator, Sequence

import numpy as np

from w2s_jax.data.tasks import Example, PreferenceExample
from w2s_jax.errors import UserError

TOKENIZE_CHUNK = 1024  # texts per tokenizer call: the fast tokenizer batches in Rust


@dataclasses.dataclass(frozen=True)
class TokenizedSet:
  """A split tokenized for one model.

  Attributes:
    ids: one int32 array per example, already truncated to max_length; for preference
      pairs a tuple of two (prompt + each response), batched as [B, 2, T].
    labels: [N] int32 ground truth.
    uids: [N] int64, the examples' uids (to key weak labels).
    n_truncated: how many examples were longer than max_length and lost their end.
  """
  ids: list[np.ndarray]
  labels: np.ndarray
  uids: np.ndarray
  n_truncated: int = 0

  def __len__(self) -> int:
    return len(self.ids)

  @property
  def rows_per_example(self) -> int:
    """1, or 2 for preference pairs: the sequences of one example."""
    return len(self.ids[0]) if self.ids and isinstance(self.ids[0], tuple) else 1

  @property
  def lengths(self) -> np.ndarray:
    """[N] int64 token counts (of a pair: its longer sequence, which sets its batch's T)."""
    if self.rows_per_example > 1:
      return np.array([max(len(seq) for seq in ids) for ids in self.ids], dtype=np.int64)
    return np.array([len(ids) for ids in self.ids], dtype=np.int64)


def tokenize(examples: Sequence[Example | PreferenceExample], tokenizer, max_length: int) -> TokenizedSet:
  """Tokenizes examples, truncating long ones to `max_length` tokens.

  Special tokens are added the way the model expects (the tokenizer's default,
  add_special_tokens=True) and survive truncation. Examples are never dropped: OAI drops
  texts longer than its context, which silently changes the task's distribution;
  truncation keeps them (as EleutherAI does) and `n_truncated` reports how many.

  A binary example keeps its first `max_length` tokens. A preference pair becomes a pair of
  sequences (`TokenizedSet.ids[i]` is a tuple: prompt + each response), and a long one keeps
  its *end*: the reward is read at the last token, and the response is what is judged, so
  the dialogue's start is what goes.

  Args:
    examples: the examples (all binary, or all preference pairs).
    tokenizer: a transformers tokenizer (PreTrainedTokenizerBase).
    max_length: the most tokens a sequence keeps.
  """
  if max_length < 2:
    raise UserError(f"max_length must be at least 2, got {max_length}")
  if not examples:
    raise UserError("no examples to tokenize")
  pairs = isinstance(examples[0], PreferenceExample)
  if pairs:
    texts = [text for example in examples for text in example.texts]  # pair i: rows 2i, 2i + 1
  else:
    texts = [example.text for example in examples]
  ids, too_long = _tokenize_texts(texts, tokenizer, max_length, keep="end" if pairs else "start")
  empty = [examples[i // (2 if pairs else 1)].uid for i, row in enumerate(ids) if not row]
  if empty:
    raise UserError(f"the tokenizer turned {len(empty)} texts into no tokens (uids "
                    f"{empty[:5]}); check that the tokenizer matches the data")
  rows = [np.asarray(row, dtype=np.int32) for row in ids]
  if pairs:
    rows = [(rows[2 * i], rows[2 * i + 1]) for i in range(len(examples))]
    n_truncated = len({i // 2 for i in too_long})
  else:
    n_truncated = len(too_long)
  return TokenizedSet(
      ids=rows,
      labels=np.array([example.label for example in examples], dtype=np.int32),
      uids=np.array([example.uid for example in examples], dtype=np.int64),
      n_truncated=n_truncated)


def _tokenize_texts(texts: list[str], tokenizer, max_length: int, *, keep: str) -> tuple[list[list[int]], list[int]]:
  """Token ids of each text, at most `max_length` keeping its start or end; and which were truncated."""
  ids: list[list[int]] = []
  for start in range(0, len(texts), TOKENIZE_CHUNK):
    # verbose=False: the "longer than the model's maximum" warning is about texts that
    # we are about to truncate ourselves.
    ids.extend(tokenizer(texts[start:start + TOKENIZE_CHUNK], verbose=False)["input_ids"])
  too_long = [i for i, row in enumerate(ids) if len(row) > max_length]
  if too_long:
    # Tokenize only the long ones again, with the tokenizer's own truncation, so special
    # tokens (BERT's [CLS] and [SEP], a BOS) are kept. The side is set explicitly: tokenizers
    # differ in their default.
    side = tokenizer.truncation_side
    tokenizer.truncation_side = "right" if keep == "start" else "left"
    try:
      truncated = tokenizer([texts[i] for i in too_long], truncation=True,
                            max_length=max_length, verbose=False)["input_ids"]
    finally:
      tokenizer.truncation_side = side
    for i, row in zip(too_long, truncated):
      ids[i] = row
  return ids, too_long


def steps_per_epoch(num_examples: int, batch_size: int, drop_remainder: bool = False) -> int:
  """How many batches `batches` yields per epoch."""
  if drop_remainder:
    return num_examples // batch_size
  return -(-num_examples // batch_size)


def batch_order(lengths: np.ndarray, batch_size: int, *, shuffle: bool, seed: int,
                epoch: int = 0, bucket: bool = True, bucket_chunk: int = 50,
                drop_remainder: bool = False) -> list[np.ndarray]:
  """Which examples go in each global batch, in order: a list of index arrays.

  Every example appears exactly once per epoch (except the remainder when
  `drop_remainder`). The order is a function of (seed, epoch) only, so every process
  of a multi-host run computes the same one. Only the last batch may be partial.

  Args:
    lengths: [N] token counts.
    batch_size: the global batch size.
    shuffle: shuffle per (seed, epoch); False keeps the data order, except that
      bucketing then sorts the whole set by length (the fastest order for evaluation).
    seed, epoch: what the shuffle depends on.
    bucket: group examples of similar length into the same batches.
    bucket_chunk: how many batches' worth of shuffled examples are sorted together.
      Larger wastes less padding but makes batches less random.
    drop_remainder: drop the last partial batch.
  """
  n = len(lengths)
  rng = np.random.default_rng([seed, epoch])
  order = rng.permutation(n) if shuffle else np.arange(n)
  chunk = batch_size * bucket_chunk if shuffle else max(n, 1)
  if bucket:
    # A stable sort keeps the random order among equal lengths.
    order = np.concatenate([
        part[np.argsort(lengths[part], kind="stable")]
        for part in np.split(order, np.arange(chunk, n, chunk))]) if n else order
  batches = [order[start:start + batch_size] for start in range(0, n, batch_size)]
  if drop_remainder and batches and len(batches[-1]) < batch_size:
    batches.pop()
  if bucket and shuffle:
    # Sorted chunks would otherwise feed short batches first and long ones last.
    batches = [batches[i] for i in rng.permutation(len(batches))]
  return batches


MAX_BOUNDARY_CANDIDATES = 1024  # the fit is O(length_buckets · candidates²) time, O(candidates²) memory
# A padded length costs a compile; one that a few batches use would cost more than the padding
# it saves. So a split gets at most one padded length per this many batches of an epoch.
BATCHES_PER_LENGTH = 8


def length_boundaries(lengths: np.ndarray, length_buckets: int = 16, length_multiple: int = 1) -> np.ndarray:
  """The padded lengths a split's batches round up to: [k] int64, increasing, k <= length_buckets.

  Chosen to minimise the padding of examples padded one by one to their bucket,
  sum_i (b(l_i) - l_i) with b(l) the smallest boundary >= l, exactly, by dynamic
  programming over the distinct lengths. Every boundary is a multiple of `length_multiple`
  and the last one covers the longest example, so every batch fits. A function of the
  lengths alone: every process of a multi-host run, and every epoch, gets the same shapes.
  `length_buckets=0` gives every multiple of `length_multiple` up to the longest (no fit).

  Args:
    lengths: [N] token counts (N >= 1).
    length_buckets: the most boundaries, i.e. compiled shapes per split; 0 for no limit.
    length_multiple: the boundaries' granularity (8 or 128 can suit an accelerator's tiles).
  """
  if length_multiple <= 0:
    raise UserError(f"length_multiple must be positive, got {length_multiple}")
  if length_buckets < 0:
    raise UserError(f"length_buckets must be >= 0 (0: no limit), got {length_buckets}")
  lengths = np.asarray(lengths, dtype=np.int64)
  longest = int(lengths.max())
  if length_buckets == 0:
    return np.arange(length_multiple, longest + length_multiple, length_multiple, dtype=np.int64)
  # Candidates: the lengths present, rounded up to the granularity (coarser if there are very
  # many distinct lengths, to bound the fit's cost).
  grain = length_multiple * max(1, -(-longest // (length_multiple * MAX_BOUNDARY_CANDIDATES)))
  rounded = -(-lengths // grain) * grain
  candidates, group = np.unique(rounded, return_inverse=True)  # [U], [N]
  if len(candidates) <= length_buckets:
    return candidates
  count = np.concatenate([[0], np.cumsum(np.bincount(group))])                         # [U+1]
  tokens = np.concatenate([[0], np.cumsum(np.bincount(group, weights=lengths))])        # [U+1]
  # pad[i, j]: padding of candidate groups i..j when they all pad to candidates[j].
  i, j = np.meshgrid(np.arange(len(candidates)), np.arange(len(candidates)), indexing="ij")
  pad = np.where(i <= j, (count[j + 1] - count[i]) * candidates[j] - (tokens[j + 1] - tokens[i]), np.inf)
  # best[j]: least padding of groups 0..j with boundaries so far, the last at candidates[j];
  # starts[k][j]: where the segment ending at j begins in that solution (0: it is the first).
  best = pad[0].copy()
  starts = [np.zeros(len(candidates), dtype=np.int64)]
  for _ in range(length_buckets - 1):
    total = np.concatenate([[0.0], best[:-1]])[:, None] + pad  # a last segment i..j after best[i-1]
    start = np.argmin(total, axis=0)
    best = total[start, np.arange(len(candidates))]
    starts.append(start)
  chosen, end = [], len(candidates) - 1
  for start in reversed(starts):
    chosen.append(candidates[end])
    if start[end] == 0:
      break
    end = start[end] - 1
  return np.array(sorted(chosen), dtype=np.int64)


def split_boundaries(lengths: np.ndarray, batch_size: int, length_buckets: int = 16,
                     length_multiple: int = 1) -> np.ndarray:
  """`length_boundaries` for a split batched `batch_size` at a time: the number of padded
  lengths is also capped at one per BATCHES_PER_LENGTH batches of an epoch (small splits
  compile fewer shapes)."""
  if length_buckets:
    n_batches = steps_per_epoch(len(lengths), batch_size)
    length_buckets = min(length_buckets, max(1, n_batches // BATCHES_PER_LENGTH))
  return length_boundaries(lengths, length_buckets, length_multiple)


def padded_length(longest: int, boundaries: np.ndarray) -> int:
  """T of a batch whose longest sequence is `longest`: the next boundary up."""
  at = int(np.searchsorted(boundaries, longest))
  if at == len(boundaries):
    raise ValueError(f"a sequence of {longest} tokens is longer than the last boundary {boundaries[-1]}")
  return int(boundaries[at])


def example_weights(weights: np.ndarray | None, n: int) -> np.ndarray:
  """[N] float32 per-example loss weights in [0, 1], checked; None: all 1.

  A row of weight w counts w times in the losses' weighted means (0: as if absent).
  """
  if weights is None:
    return np.ones(n, np.float32)
  weights = np.asarray(weights, dtype=np.float32)
  if weights.shape != (n,):
    raise UserError(f"weights have shape {weights.shape}, expected ({n},): one weight per example")
  if not np.all((weights >= 0) & (weights <= 1)):  # NaN fails both
    raise UserError("weights must lie in [0, 1] (and not be NaN): a row of weight w counts w times")
  return weights


def batches(data: TokenizedSet, batch_size: int, *, targets: np.ndarray | None = None,
            weights: np.ndarray | None = None, shuffle: bool, seed: int, epoch: int = 0,
            bucket: bool = True, pad_id: int = 0,
            length_buckets: int = 16, length_multiple: int = 1, boundaries: np.ndarray | None = None,
            drop_remainder: bool = False, process_index: int = 0, process_count: int = 1,
            bucket_chunk: int = 50) -> Iterator[dict[str, np.ndarray]]:
  """Yields one epoch of numpy batches of a fixed global size (this process's rows).

  Each batch is a dict:
    input_ids [B, T] int32: right padded with pad_id ([B, 2, T] for preference pairs: both
      sequences of a pair in one row, so a pair is never split over devices).
    attention_mask [B, T] int32 ([B, 2, T] for pairs): 1 = real token.
    labels [B] int32: ground truth.
    targets [B, 2] float32: soft targets, the `targets` rows if given, else one-hot
      labels.
    weight [B] float32: a real row's entry of `weights` (default 1), 0 for a padding row.
    index [B] int32: the row's position in `data`; -1 for a padding row.
  B is batch_size // process_count: every process computes the same global order and
  yields its own contiguous block of rows of each global batch. T is the global batch's
  longest sequence rounded up to the next of `split_boundaries(data.lengths, ...)`, the
  same on every process.

  Padding rows (the end of the last batch) have weight 0, labels 0 and zero targets, and
  attend to one token: a row that attends to nothing can make attention's softmax NaN,
  and NaN times weight 0 is still NaN in a summed loss.

  Args:
    data: the tokenized split.
    batch_size: the global batch size.
    targets: [N, 2] soft targets (weak labels) aligned with `data`; default one-hot labels.
    weights: [N] per-example loss weights in [0, 1] aligned with `data` (`example_weights`);
      default 1.
    shuffle, seed, epoch, bucket, bucket_chunk, drop_remainder: see `batch_order`.
    pad_id: the token id of padding positions (masked out; any id in the vocabulary).
    length_buckets, length_multiple: see `split_boundaries`.
    boundaries: padded lengths to use instead of fitting them to `data` (e.g. those of the
      whole split when `data` is a part of it); the last must cover the longest example.
    process_index, process_count: this process and how many share each global batch.
  """
  if batch_size <= 0:
    raise UserError(f"batch_size must be positive, got {batch_size}")
  if not 0 <= process_index < process_count:
    raise UserError(f"process_index {process_index} is not in [0, {process_count})")
  if batch_size % process_count:
    raise UserError(f"global batch size {batch_size} does not divide evenly over "
                    f"{process_count} processes; make it a multiple of {process_count}")
  n = len(data)
  if targets is None:
    targets = np.eye(2, dtype=np.float32)[data.labels]
  else:
    targets = np.asarray(targets, dtype=np.float32)
    if targets.shape != (n, 2):
      raise UserError(f"targets have shape {targets.shape}, expected ({n}, 2): one row "
                      "of class probabilities per example")
    if not np.all(np.isfinite(targets)):
      raise UserError("targets contain NaN or inf; check the weak labels")
  weights = example_weights(weights, n)
  lengths = data.lengths
  per_example = data.rows_per_example
  if boundaries is None:
    boundaries = split_boundaries(lengths, batch_size, length_buckets, length_multiple)
  local = batch_size // process_count
  rows = slice(process_index * local, (process_index + 1) * local)
  for members in batch_order(lengths, batch_size, shuffle=shuffle, seed=seed, epoch=epoch,
                             bucket=bucket, bucket_chunk=bucket_chunk,
                             drop_remainder=drop_remainder):
    seq_len = padded_length(int(lengths[members].max()), boundaries)
    index = np.full(batch_size, -1, dtype=np.int32)
    index[:len(members)] = members
    index = index[rows]
    real = index >= 0
    input_ids = np.full((local, per_example, seq_len), pad_id, dtype=np.int32)
    attention_mask = np.zeros((local, per_example, seq_len), dtype=np.int32)
    for row, i in enumerate(index[real]):
      for r, seq in enumerate(data.ids[i] if per_example > 1 else (data.ids[i],)):
        input_ids[row, r, :len(seq)] = seq
        attention_mask[row, r, :len(seq)] = 1
    attention_mask[~real, :, 0] = 1  # see the docstring: no row attends to nothing
    if per_example == 1:
      input_ids, attention_mask = input_ids[:, 0], attention_mask[:, 0]
    labels = np.zeros(local, dtype=np.int32)
    labels[real] = data.labels[index[real]]
    batch_targets = np.zeros((local, 2), dtype=np.float32)
    batch_targets[real] = targets[index[real]]
    weight = np.zeros(local, dtype=np.float32)
    weight[real] = weights[index[real]]
    yield dict(input_ids=input_ids, attention_mask=attention_mask, labels=labels,
               targets=batch_targets, weight=weight, index=index)


def padding_waste(data: TokenizedSet, batch_size: int, *, bucket: bool, length_buckets: int = 16,
                  length_multiple: int = 1, seed: int = 0, bucket_chunk: int = 50) -> float:
  """The fraction of token slots in one shuffled epoch's batches that are padding.

  Counts every slot the model computes, [batch_size, T] per batch, the padding rows of
  the last batch included.
  """
  lengths = data.lengths
  boundaries = split_boundaries(lengths, batch_size, length_buckets, length_multiple)
  slots = 0
  for members in batch_order(lengths, batch_size, shuffle=True, seed=seed, bucket=bucket,
                             bucket_chunk=bucket_chunk):
    slots += batch_size * padded_length(int(lengths[members].max()), boundaries)
  return 1.0 - float(lengths.sum()) / slots if slots else 0.0
