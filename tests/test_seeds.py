"""One seed per purpose: independent, deterministic streams derived from the run's seed."""

import pytest

from w2s_jax import seeds


def test_purposes_get_different_seeds_and_the_same_ones_everywhere():
  derived = {p: seeds.derive(0, p) for p in seeds.PURPOSES}
  assert len(set(derived.values())) == len(seeds.PURPOSES)
  assert seeds.derive(0, "split") == seeds.derive(0, "split")
  assert seeds.derive(0, "split") != seeds.derive(1, "split")
  assert seeds.derive(3, "split") == 754912763  # a hash: the same on every machine and Python version
  assert all(0 <= s < 2 ** 31 for s in derived.values())


def test_head_init_depends_on_stage_kind_and_model():
  a = seeds.derive(0, "head_init", "ground_truth", "weak")
  assert a != seeds.derive(0, "head_init", "ground_truth", "strong")
  assert a != seeds.derive(0, "head_init", "weak_to_strong", "weak")


def test_unknown_purpose_is_an_error():
  with pytest.raises(ValueError, match="unknown seed purpose"):
    seeds.derive(0, "dropout")
