"""Tokenization and batching with a real (tiny, locally built) tokenizer."""

import numpy as np
import pytest
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

import itertools

from w2s_jax.data.batching import (TokenizedSet, batch_order, batches, length_boundaries, padded_length,
                                   padding_waste, split_boundaries, steps_per_epoch, tokenize)
from w2s_jax.data.tasks import Example
from w2s_jax.errors import UserError

BOS, EOS = 2, 3


@pytest.fixture(scope="module")
def tokenizer() -> PreTrainedTokenizerFast:
  """A word-level tokenizer over w0..w99 that wraps every text in [BOS] ... [EOS]."""
  words = ["[PAD]", "[UNK]", "[BOS]", "[EOS]"] + [f"w{i}" for i in range(100)]
  backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
  backend.pre_tokenizer = pre_tokenizers.Whitespace()
  backend.post_processor = processors.TemplateProcessing(
      single="[BOS] $A [EOS]", special_tokens=[("[BOS]", BOS), ("[EOS]", EOS)])
  return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="[PAD]",
                                 unk_token="[UNK]", bos_token="[BOS]", eos_token="[EOS]")


def _examples(n_words: list[int]) -> list[Example]:
  """Example i has n_words[i] words w0 w1 ... and label i % 2."""
  return [Example(text=" ".join(f"w{j % 100}" for j in range(n)), label=i % 2, uid=100 + i)
          for i, n in enumerate(n_words)]


def _tokenized(n: int, seed: int = 0) -> TokenizedSet:
  """n examples of 1..60 tokens, ids that say which example and position they are."""
  lengths = np.random.default_rng(seed).integers(1, 61, size=n)
  return TokenizedSet(ids=[np.arange(length, dtype=np.int32) + 1000 * i
                           for i, length in enumerate(lengths)],
                      labels=(np.arange(n) % 2).astype(np.int32),
                      uids=np.arange(n, dtype=np.int64) + 500)


def test_tokenize_adds_special_tokens_and_truncates_keeping_the_start(tokenizer):
  data = tokenize(_examples([3, 10, 1]), tokenizer, max_length=6)
  assert [ids.tolist() for ids in data.ids] == [
      [BOS, 4, 5, 6, EOS],  # w0 w1 w2
      [BOS, 4, 5, 6, 7, EOS],  # the first 4 of 10 words, and the end token kept
      [BOS, 4, EOS]]
  assert all(ids.dtype == np.int32 for ids in data.ids)
  assert data.labels.tolist() == [0, 1, 0] and data.labels.dtype == np.int32
  assert data.uids.tolist() == [100, 101, 102] and data.uids.dtype == np.int64
  assert data.n_truncated == 1 and len(data) == 3


def test_tokenize_keeps_the_start_even_when_the_tokenizer_truncates_on_the_left(tokenizer):
  tokenizer.truncation_side = "left"
  try:
    data = tokenize(_examples([10]), tokenizer, max_length=4)
    assert data.ids[0].tolist() == [BOS, 4, 5, EOS]
    assert tokenizer.truncation_side == "left"  # the caller's tokenizer is left as it was
  finally:
    tokenizer.truncation_side = "right"


def test_tokenize_rejects_a_max_length_that_cannot_hold_a_text(tokenizer):
  with pytest.raises(UserError, match="max_length"):
    tokenize(_examples([3]), tokenizer, max_length=1)


def test_batches_have_fixed_shapes_and_padding_rows_of_weight_zero():
  data = _tokenized(70)
  all_batches = list(batches(data, 16, shuffle=True, seed=0, length_multiple=8))
  boundaries = split_boundaries(data.lengths, 16, 16, 8)
  assert len(all_batches) == steps_per_epoch(70, 16) == 5
  for batch in all_batches:
    seq_len = batch["input_ids"].shape[1]
    assert seq_len % 8 == 0
    assert batch["input_ids"].shape == batch["attention_mask"].shape == (16, seq_len)
    assert batch["targets"].shape == (16, 2) and batch["targets"].dtype == np.float32
    assert batch["input_ids"].dtype == batch["attention_mask"].dtype == np.int32
    assert batch["labels"].dtype == batch["index"].dtype == np.int32
    real = batch["index"] >= 0
    assert np.array_equal(batch["weight"], real.astype(np.float32))
    lengths = batch["attention_mask"][real].sum(axis=1)
    # The longest row, rounded up to the next boundary.
    assert seq_len == boundaries[np.searchsorted(boundaries, lengths.max())]
    assert np.all(batch["attention_mask"][~real].sum(axis=1) == 1)  # never all-masked
    assert np.all(batch["targets"][~real] == 0)
  assert sum(batch["weight"].sum() for batch in all_batches) == 70


def test_every_example_appears_once_per_epoch_with_its_own_tokens_and_labels():
  data = _tokenized(70)
  seen = []
  for batch in batches(data, 16, shuffle=True, seed=0, epoch=3, pad_id=7):
    for row in np.flatnonzero(batch["weight"]):
      i = batch["index"][row]
      length = len(data.ids[i])
      assert np.array_equal(batch["input_ids"][row, :length], data.ids[i])
      assert np.all(batch["input_ids"][row, length:] == 7)
      assert batch["attention_mask"][row].sum() == length
      assert batch["labels"][row] == data.labels[i]
      assert np.array_equal(batch["targets"][row], np.eye(2)[data.labels[i]])
      seen.append(int(i))
  assert sorted(seen) == list(range(70))


def test_order_is_deterministic_per_seed_and_changes_between_epochs():
  data = _tokenized(200)

  def order(seed, epoch, bucket=True):
    return np.concatenate([b["index"] for b in batches(data, 16, shuffle=True, seed=seed,
                                                       epoch=epoch, bucket=bucket)])

  assert np.array_equal(order(0, 0), order(0, 0))
  assert not np.array_equal(order(0, 0), order(0, 1))
  assert not np.array_equal(order(0, 0), order(1, 0))
  assert not np.array_equal(order(0, 0, bucket=False), order(0, 1, bucket=False))


def test_bucketing_regroups_examples_differently_every_epoch():
  data = _tokenized(512)
  groups = [{frozenset(b.tolist()) for b in batch_order(data.lengths, 16, shuffle=True,
                                                        seed=0, epoch=epoch, bucket_chunk=4)}
            for epoch in (0, 1)]
  assert len(groups[0] & groups[1]) < len(groups[0]) // 4


def test_without_shuffle_the_data_order_is_kept_or_sorted_by_length():
  data = _tokenized(40)
  in_order = np.concatenate([b["index"] for b in batches(data, 16, shuffle=False, seed=0,
                                                         bucket=False)])
  assert in_order.tolist() == list(range(40)) + [-1] * 8
  by_length = np.concatenate([b["index"] for b in batches(data, 16, shuffle=False, seed=0)])
  real = by_length[by_length >= 0]
  assert sorted(real.tolist()) == list(range(40))
  assert np.all(np.diff(data.lengths[real]) >= 0)


def test_soft_targets_are_passed_through_and_checked():
  data = _tokenized(20)
  targets = np.random.default_rng(0).dirichlet([1, 1], size=20).astype(np.float32)
  for batch in batches(data, 8, targets=targets, shuffle=True, seed=0):
    real = batch["index"] >= 0
    assert np.array_equal(batch["targets"][real], targets[batch["index"][real]])
  with pytest.raises(UserError, match=r"expected \(20, 2\)"):
    next(batches(data, 8, targets=targets[:5], shuffle=True, seed=0))
  with pytest.raises(UserError, match="NaN"):
    next(batches(data, 8, targets=np.full((20, 2), np.nan), shuffle=True, seed=0))


def test_weights_go_in_the_weight_column_of_real_rows_only():
  data = _tokenized(20)
  weights = np.linspace(0.0, 1.0, 20).astype(np.float32)  # example 0 weighs 0 and is still a real row
  seen = 0
  for batch in batches(data, 8, weights=weights, shuffle=True, seed=0):
    real = batch["index"] >= 0
    np.testing.assert_array_equal(batch["weight"][real], weights[batch["index"][real]])
    assert np.all(batch["weight"][~real] == 0) and batch["weight"].dtype == np.float32
    seen += real.sum()
  assert seen == 20
  for bad, match in ((np.ones(19), "shape"), (np.full(20, 1.5), "in \\[0, 1\\]"), (np.full(20, np.nan), "NaN")):
    with pytest.raises(UserError, match=match):
      next(batches(data, 8, weights=bad, shuffle=True, seed=0))


def test_drop_remainder_drops_the_partial_batch():
  data = _tokenized(70)
  kept = list(batches(data, 16, shuffle=True, seed=0, drop_remainder=True))
  assert len(kept) == steps_per_epoch(70, 16, drop_remainder=True) == 4
  assert all(batch["weight"].all() for batch in kept)


def test_multi_host_blocks_concatenate_to_the_global_batch():
  data = _tokenized(90)
  kwargs = dict(shuffle=True, seed=5, epoch=2)
  global_batches = list(batches(data, 24, **kwargs))
  per_process = [list(batches(data, 24, process_index=p, process_count=3, **kwargs))
                 for p in range(3)]
  for step, global_batch in enumerate(global_batches):
    for key, value in global_batch.items():
      blocks = [per_process[p][step][key] for p in range(3)]
      assert all(len(block) == 8 for block in blocks)
      assert np.array_equal(np.concatenate(blocks), value), key


def test_batch_size_must_divide_over_processes():
  with pytest.raises(UserError, match="multiple of 3"):
    next(batches(_tokenized(10), 16, shuffle=True, seed=0, process_count=3))
  with pytest.raises(UserError, match="process_index"):
    next(batches(_tokenized(10), 16, shuffle=True, seed=0, process_index=2, process_count=2))


def _lognormal_set(n: int = 16000) -> TokenizedSet:
  # Log-normal lengths, median 100 tokens, a long tail to 1024: like review or QA texts.
  rng = np.random.default_rng(0)
  lengths = np.clip(rng.lognormal(np.log(100), 0.6, size=n).astype(int), 8, 1024)
  return TokenizedSet(ids=[np.ones(length, np.int32) for length in lengths],
                      labels=np.zeros(len(lengths), np.int32), uids=np.arange(len(lengths)))


def test_bucketing_cuts_padding_waste_on_a_realistic_length_distribution():
  data = _lognormal_set()
  assert padding_waste(data, 32, bucket=False) > 0.6
  # 16 fitted padded lengths (the default): what is left is the mix within batches and the
  # coarseness of 16 shapes over 8..1024 (17%); more shapes buy it down.
  assert padding_waste(data, 32, bucket=True) < 0.2
  assert padding_waste(data, 32, bucket=True, length_buckets=48) < 0.11


def test_fitted_boundaries_beat_evenly_spaced_ones_of_the_same_count():
  data = _lognormal_set()
  fitted = padding_waste(data, 32, bucket=True, length_buckets=16)
  even = padding_waste(data, 32, bucket=True, length_buckets=0, length_multiple=64)  # 16 of them
  assert fitted < even - 0.05


def _padding(lengths, boundaries):
  return sum(padded_length(int(length), np.asarray(boundaries)) - length for length in lengths)


@pytest.mark.parametrize("seed", range(6))
def test_length_boundaries_are_the_least_padding_choice(seed):
  rng = np.random.default_rng(seed)
  lengths = rng.integers(1, 40, size=int(rng.integers(5, 60)))
  k = int(rng.integers(1, 5))
  boundaries = length_boundaries(lengths, k)
  assert len(boundaries) <= k and boundaries[-1] == lengths.max()
  assert np.all(np.diff(boundaries) > 0)
  # Exhaustive search: the longest is always a boundary; any k-1 of the other lengths may be.
  others = np.unique(lengths[lengths < lengths.max()])
  best = min(_padding(lengths, [*chosen, lengths.max()])
             for r in range(min(k - 1, len(others)) + 1) for chosen in itertools.combinations(others, r))
  assert _padding(lengths, boundaries) == best


def test_length_boundaries_respect_the_multiple_and_the_limit():
  lengths = np.array([3, 5, 9, 17, 30, 31, 64, 65])
  boundaries = length_boundaries(lengths, 3, 8)
  assert len(boundaries) <= 3 and np.all(boundaries % 8 == 0) and boundaries[-1] == 72
  np.testing.assert_array_equal(length_boundaries(lengths, 0, 16), [16, 32, 48, 64, 80])
  np.testing.assert_array_equal(length_boundaries(lengths, 100), np.unique(lengths))
  # Very many distinct lengths: the candidates are coarsened and the fit stays fast.
  many = np.random.default_rng(0).integers(1, 20000, size=50000)
  boundaries = length_boundaries(many, 16)
  assert len(boundaries) == 16 and boundaries[-1] >= many.max()
  with pytest.raises(UserError, match="length_multiple"):
    length_boundaries(lengths, 4, 0)
  with pytest.raises(UserError, match="length_buckets"):
    length_boundaries(lengths, -1)


def test_batches_compile_at_most_length_buckets_shapes():
  data = _lognormal_set(1000)
  shapes = {batch["input_ids"].shape[1]
            for epoch in range(3)
            for batch in batches(data, 16, shuffle=True, seed=0, epoch=epoch, length_buckets=6)}
  assert shapes <= set(split_boundaries(data.lengths, 16, 6).tolist()) and len(shapes) == 6
  # A small split compiles fewer shapes: one per BATCHES_PER_LENGTH (8) batches of an epoch.
  assert len(split_boundaries(data.lengths, 16, 16)) == 1000 // 16 // 8 == 7
  assert len(split_boundaries(data.lengths[:100], 16, 16)) == 1
  # Given boundaries (a whole split's, for a part of it) are used as they are.
  part = TokenizedSet(ids=data.ids[:5], labels=data.labels[:5], uids=data.uids[:5])
  (batch,) = batches(part, 8, shuffle=False, seed=0, boundaries=np.array([2000]))
  assert batch["input_ids"].shape == (8, 2000)


def test_padding_waste_counts_the_padding_rows_of_the_last_batch():
  data = TokenizedSet(ids=[np.ones(16, np.int32)] * 3, labels=np.zeros(3, np.int32),
                      uids=np.arange(3))
  assert padding_waste(data, 4, bucket=True) == pytest.approx(0.25)
  assert padding_waste(data, 3, bucket=False) == 0.0
