"""What a student trains on: the recipe's label form, example weights and validation part."""

import numpy as np
import pytest

from w2s_jax import methods, stage_keys
from w2s_jax.config_base import base, finalize, model
from w2s_jax.data.tasks import Example
from w2s_jax.errors import UserError
from w2s_jax.methods.supervisors import Supervision
from w2s_jax.protocol.weak_labels import student_data

HALF_B = [Example(text=str(i), label=i % 2, uid=100 + i) for i in range(10)]
# p(class 1) per example: confidence |p - 0.5| is smallest for uids 103 (0.05), 107 (0.1) and 101 (0.2).
P1 = np.array([0.95, 0.3, 0.9, 0.55, 0.0, 0.8, 0.99, 0.6, 0.1, 0.85])
WEAK = np.stack([1 - P1, P1], -1).astype(np.float32)
SUPERVISOR = Supervision("weak", np.log(np.clip(WEAK, 1e-12, 1)), np.zeros((1, 2), np.float32), ("key",))


def prepared(spec: str, **overrides):
  """(view, recipe) of a weak-to-strong stage running `spec`, with `method_options` overrides."""
  c = base()
  c.models.m = model("some/checkpoint", 1e-3)
  for key, value in overrides.items():
    name, option = key.split(".")
    c.method_options[name][option] = value
  c = finalize(c)
  recipe = methods.resolve(spec, c.method_options.to_dict())
  values = stage_keys.config_values(c, "weak_to_strong", model="m", methods=recipe.named)
  return stage_keys.StageConfig("weak_to_strong", values), recipe


def data_for(spec, train_on=HALF_B, **overrides):
  view, recipe = prepared(spec, **overrides)
  return student_data(view, recipe, SUPERVISOR, train_on, HALF_B, seed=0)


def test_defaults_train_on_all_of_half_b_with_soft_labels():
  data = data_for("xent")
  assert data.examples == HALF_B and data.validation is None and data.n_dropped == 0 and data.weights is None
  np.testing.assert_allclose(data.targets, WEAK, atol=1e-6)


def test_a_part_of_half_b_takes_its_own_rows_of_the_supervisor_by_uid():
  part = [HALF_B[7], HALF_B[2]]
  data = data_for("xent", train_on=part)
  assert data.examples == part
  np.testing.assert_allclose(data.targets, WEAK[[7, 2]], atol=1e-6)


def test_confidence_filter_drops_the_least_confident_weak_labels_and_keeps_order():
  data = data_for("xent+drop_least_confident", **{"drop_least_confident.frac": 0.3})
  assert data.n_dropped == 3
  assert [e.uid for e in data.examples] == [100, 102, 104, 105, 106, 108, 109]
  np.testing.assert_allclose(data.targets, WEAK[[0, 2, 4, 5, 6, 8, 9]], atol=1e-6)
  hard = data_for("hard+xent+drop_least_confident", **{"drop_least_confident.frac": 0.3})
  assert hard.examples == data.examples  # ranked by the soft labels whatever the label form
  np.testing.assert_array_equal(hard.targets, np.eye(2)[WEAK[[0, 2, 4, 5, 6, 8, 9]].argmax(-1)])
  weighted = data_for("xent+downweight_least_confident", **{"downweight_least_confident.frac": 0.3})
  assert weighted.examples == HALF_B and weighted.n_downweighted == 3
  np.testing.assert_array_equal(weighted.weights, np.where(np.isin(np.arange(10), [1, 3, 7]), 0.5, 1.0))


def test_validation_part_is_labelled_by_the_supervisor_or_by_the_truth_for_the_oracle():
  weak = data_for("xent+weak_auroc", **{"weak_auroc.val_frac": 0.2})
  val = weak.validation
  assert len(val.examples) == 2 and len(weak.examples) == 8 and val.every == 25
  assert not {e.uid for e in val.examples} & {e.uid for e in weak.examples}
  np.testing.assert_array_equal(val.labels, [int(P1[e.uid - 100] > 0.5) for e in val.examples])
  oracle = data_for("xent+oracle_auroc", **{"oracle_auroc.val_frac": 0.2})
  assert oracle.validation.examples == val.examples  # the same held-out part
  np.testing.assert_array_equal(oracle.validation.labels, [e.label for e in val.examples])
  with pytest.raises(UserError, match="val_frac=1.5 must lie in"):
    data_for("xent+weak_auroc", **{"weak_auroc.val_frac": 1.5})


def test_a_methods_options_enter_the_key_only_of_the_stages_that_use_it():
  plain, _ = prepared("xent")
  filtered, _ = prepared("xent+drop_least_confident")
  assert "method_options.drop_least_confident.frac" not in plain._values
  assert filtered["method_options.drop_least_confident.frac"] == 0.2
  changed, _ = prepared("xent", **{"logconf.alpha_max": 0.9})
  assert changed._values == plain._values
