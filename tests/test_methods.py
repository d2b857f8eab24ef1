"""The methods registry and each method's own behaviour, on tiny real arrays."""

import numpy as np
import pytest

from w2s_jax import methods
from w2s_jax.config_base import base
from w2s_jax.errors import UserError
from w2s_jax.methods import examples, labels, supervisors
from w2s_jax.methods.supervisors import Supervision

# p(class 1) per example: confidence |p - 0.5| is smallest for rows 3 (0.05), 7 (0.1) and 1 (0.2).
P1 = np.array([0.95, 0.3, 0.9, 0.55, 0.0, 0.8, 0.99, 0.6, 0.1, 0.85])
PROBS = np.stack([1 - P1, P1], -1).astype(np.float32)


def test_a_recipe_takes_one_method_per_kind_and_defaults_for_the_rest():
  recipe = methods.resolve("logconf+weak_auroc", base().method_options.to_dict())
  assert recipe.name == "logconf+weak_auroc"
  assert recipe.named == ("single", "soft", "all", "logconf", "weak_auroc", "one_student")
  assert recipe.options_of("loss") == {"alpha_max": 0.5, "warmup_frac": 0.1, "schedule": "linear"}
  assert recipe.options_of("selection") == {"val_frac": 0.2, "eval_every": 25}
  assert not recipe.oracle and methods.resolve("xent+oracle_auroc").oracle
  assert methods.resolve("xent+strong_to_strong").per_student().named[-1] == "one_student"


def test_bad_recipes_are_one_line_errors_naming_the_fix():
  with pytest.raises(UserError, match="unknown method 'nope'.*--list_methods"):
    methods.resolve("xent+nope")
  with pytest.raises(UserError, match="names two loss methods"):
    methods.resolve("xent+logconf")
  options = base().method_options.to_dict()
  options["logconf"]["alpha"] = 1.0
  with pytest.raises(UserError, match=r"method_options.logconf has unknown options \['alpha'\]"):
    methods.resolve("logconf", options)


def test_every_registered_method_is_listed_and_has_its_options_in_the_config():
  lines = methods.describe()
  assert [line.split()[1] for line in lines] == list(methods.REGISTRY)
  assert {line.split()[0] for line in lines} == set(methods.KINDS)
  config_options = base().method_options.to_dict()
  for name, method in methods.REGISTRY.items():
    assert config_options.get(name, {}) == method.options, name
  for kind, default in methods.DEFAULTS.items():
    assert methods.REGISTRY[default].kind == kind and not methods.REGISTRY[default].options


def test_hard_labels_are_the_argmax_one_hot():
  np.testing.assert_array_equal(labels.hard(PROBS), np.eye(2)[(P1 > 0.5).astype(int)])
  np.testing.assert_array_equal(labels.soft(PROBS), PROBS)


def test_confidence_methods_drop_or_downweight_the_least_confident_rows():
  dropped = examples.drop_least_confident(PROBS, frac=0.3)
  np.testing.assert_array_equal(np.flatnonzero(dropped == 0), [1, 3, 7])
  assert set(np.unique(dropped)) == {0.0, 1.0}
  weighted = examples.downweight_least_confident(PROBS, frac=0.3, weight=0.25)
  np.testing.assert_array_equal(weighted, np.where(np.isin(np.arange(10), [1, 3, 7]), 0.25, 1.0))
  np.testing.assert_array_equal(examples.all_examples(PROBS), np.ones(10))
  # Ties: the earlier row goes first, so a rerun drops the same examples.
  np.testing.assert_array_equal(examples.drop_least_confident(np.full((4, 2), 0.5), frac=0.5), [0, 0, 1, 1])
  with pytest.raises(UserError, match="drop_least_confident.frac=1.0 must lie in"):
    examples.drop_least_confident(PROBS, frac=1.0)
  with pytest.raises(UserError, match="weight=0.0 must lie in"):
    examples.downweight_least_confident(PROBS, weight=0.0)


def test_an_ensemble_averages_probabilities_not_logits():
  a = Supervision("w", np.log(np.array([[0.9, 0.1], [0.5, 0.5]], np.float32)), np.zeros((1, 2), np.float32), ("k0",))
  b = Supervision("w", np.array([[0.0, 40.0], [0.0, 0.0]], np.float32), np.zeros((1, 2), np.float32), ("k1",))
  both = supervisors.combine([a, b])
  probs = np.exp(both.half_b_logits)
  # Row 0: mean of (0.9, 0.1) and (~0, ~1) is (0.45, 0.55); a logit average would give ~(0, 1).
  np.testing.assert_allclose(probs, [[0.45, 0.55], [0.5, 0.5]], atol=1e-6)
  assert both.name == "ensemble(w x2)" and both.stage_keys == ("k0", "k1")
  assert supervisors.combine([a]) is a
  assert supervisors.ensemble("w", members=2, models=("v", "w")) == [("w", 0), ("w", 1), ("v", 0)]


def test_rounds_say_how_many_students_and_how_they_relabel():
  rounds = methods.REGISTRY["strong_to_strong"].impl
  assert rounds.students("strong_to_strong", rounds=2, relabel="held_out") == (3, "held_out")
  assert methods.REGISTRY["one_student"].impl.students("one_student") == (1, "in_sample")
  with pytest.raises(UserError, match="relabel='sideways'"):
    rounds.students("strong_to_strong", rounds=1, relabel="sideways")
