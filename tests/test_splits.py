"""Seeded selection: n_train / n_test subsets, balancing, halves A and B."""

import pytest

from w2s_jax.data.splits import select, split_halves
from w2s_jax.data.tasks import Example
from w2s_jax.errors import UserError


def _examples(n: int, ones_every: int = 2) -> list[Example]:
  return [Example(text=f"text {i}", label=int(i % ones_every == 0), uid=i) for i in range(n)]


def _uids(examples):
  return [example.uid for example in examples]


def test_split_halves_are_disjoint_and_cover_the_examples():
  examples = _examples(101)
  half_a, half_b = split_halves(examples, seed=0)
  assert len(half_a) == 50 and len(half_b) == 51
  assert not set(_uids(half_a)) & set(_uids(half_b))
  assert sorted(_uids(half_a) + _uids(half_b)) == list(range(101))


def test_split_halves_are_reproducible_per_seed_and_differ_between_seeds():
  examples = _examples(200)
  assert split_halves(examples, seed=3) == split_halves(examples, seed=3)
  assert _uids(split_halves(examples, seed=3)[0]) != _uids(split_halves(examples, seed=4)[0])


def test_split_halves_are_random_not_a_cut_in_the_middle():
  half_a, _ = split_halves(_examples(200), seed=0)
  uids = _uids(half_a)
  assert min(uids) < 20 and max(uids) > 180  # drawn from the whole range
  assert uids == sorted(uids)  # each half keeps the input order


def test_split_halves_needs_two_examples():
  with pytest.raises(UserError, match="at least 2"):
    split_halves(_examples(1), seed=0)


def test_select_takes_a_seeded_subset_ordered_by_uid():
  examples = _examples(1000)
  chosen = select(examples, 100, seed=0)
  assert len(chosen) == 100 and _uids(chosen) == sorted(_uids(chosen))
  assert chosen == select(examples, 100, seed=0)
  assert _uids(chosen) != _uids(select(examples, 100, seed=1))
  assert max(_uids(chosen)) > 500  # a random subset, not the first 100


def test_select_without_a_limit_keeps_everything_usable():
  examples: list[Example | None] = _examples(10)
  examples[3] = None  # a record the task could not use
  assert _uids(select(examples, None, seed=0)) == [0, 1, 2, 4, 5, 6, 7, 8, 9]


def test_select_skips_unusable_records_and_still_returns_n():
  examples = [example if example.uid % 3 else None for example in _examples(300)]
  chosen = select(examples, 150, seed=0)
  assert len(chosen) == 150 and all(example.uid % 3 for example in chosen)


def test_select_reads_only_what_it_needs_from_a_lazy_split():
  reads = []

  class Lazy:
    def __len__(self):
      return 100_000

    def __getitem__(self, i):
      reads.append(i)
      return Example(text=f"t{i}", label=i % 2, uid=i)

  assert len(select(Lazy(), 50, seed=0)) == 50
  assert len(reads) == 50


def test_balance_undersamples_the_majority_class():
  examples = _examples(1000, ones_every=5)  # 200 ones, 800 zeros
  balanced = select(examples, None, seed=0, balance=True)
  assert len(balanced) == 400
  assert sum(example.label for example in balanced) == 200
  subset = select(examples, 100, seed=0, balance=True)
  assert len(subset) == 100 and sum(example.label for example in subset) == 50
  odd = select(examples, 11, seed=0, balance=True)
  assert len(odd) == 11 and sum(example.label for example in odd) in (5, 6)
  beyond = select(examples, 1001, seed=0, balance=True)  # more than the 2 x 200 balanced
  assert len(beyond) == 400 and sum(example.label for example in beyond) == 200


def test_balance_of_one_class_and_bad_limits_are_user_errors():
  with pytest.raises(UserError, match="only one class"):
    select(_examples(10, ones_every=1), None, seed=0, balance=True)
  with pytest.raises(UserError, match="must be positive"):
    select(_examples(10), 0, seed=0)
  with pytest.raises(UserError, match="no usable examples"):
    select([None, None], None, seed=0)


def test_split_validation_is_seeded_disjoint_and_keeps_order():
  from w2s_jax.data.splits import split_validation
  examples = [Example(text=str(i), label=i % 2, uid=i) for i in range(50)]
  fit, val = split_validation(examples, 0.2, seed=3)
  assert len(val) == 10 and len(fit) == 40
  assert sorted(e.uid for e in fit + val) == list(range(50))
  assert [e.uid for e in val] == sorted(e.uid for e in val)
  assert split_validation(examples, 0.2, seed=3)[1] == val and split_validation(examples, 0.2, seed=4)[1] != val
  with pytest.raises(UserError, match=r"val_frac=1.0 \(a selection method.s option\) must lie strictly between 0 and 1"):
    split_validation(examples, 1.0, seed=0)


def test_split_parts_are_disjoint_cover_and_are_seeded():
  from w2s_jax.data.splits import split_parts
  examples = [Example(text=str(i), label=i % 2, uid=i) for i in range(11)]
  parts = split_parts(examples, 3, seed=5)
  assert sorted(len(p) for p in parts) == [3, 4, 4]
  assert sorted(e.uid for p in parts for e in p) == list(range(11))
  assert all([e.uid for e in p] == sorted(e.uid for e in p) for p in parts)
  assert split_parts(examples, 3, seed=5) == parts and split_parts(examples, 3, seed=6) != parts
  with pytest.raises(UserError, match="cannot cut 11 examples into 12 parts"):
    split_parts(examples, 12, seed=0)
