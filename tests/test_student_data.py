"""What a student trains on: label form, confidence filtering, the validation part for selection."""

import numpy as np
import pytest

from w2s_jax import stage_keys
from w2s_jax.config_base import base, finalize, model
from w2s_jax.data.tasks import Example
from w2s_jax.errors import UserError
from w2s_jax.student_data import student_data

HALF_B = [Example(text=str(i), label=i % 2, uid=100 + i) for i in range(10)]
# p(class 1) per example: confidence |p - 0.5| is smallest for uids 103 (0.05), 107 (0.1) and 101 (0.2).
P1 = np.array([0.95, 0.3, 0.9, 0.55, 0.0, 0.8, 0.99, 0.6, 0.1, 0.85])
WEAK = np.stack([1 - P1, P1], -1).astype(np.float32)


def view(**overrides):
  c = base()
  c.models.m = model("some/checkpoint", 1e-3)
  for key, value in overrides.items():
    section, field = key.split(".") if "." in key else (None, key)
    (c[section] if section else c)[field] = value
  return stage_keys.StageConfig("weak_to_strong", stage_keys.config_values(finalize(c), "weak_to_strong",
                                                                             model="m", loss="xent"))


def test_defaults_train_on_all_of_half_b_with_soft_labels():
  data = student_data(view(), HALF_B, WEAK, seed=0)
  assert data.examples == HALF_B and data.validation is None and data.n_dropped == 0
  np.testing.assert_array_equal(data.targets, WEAK)


def test_confidence_filter_drops_the_least_confident_weak_labels_and_keeps_order():
  data = student_data(view(**{"label_filter.drop_frac": 0.3}), HALF_B, WEAK, seed=0)
  assert data.n_dropped == 3
  assert [e.uid for e in data.examples] == [100, 102, 104, 105, 106, 108, 109]
  np.testing.assert_array_equal(data.targets, WEAK[[0, 2, 4, 5, 6, 8, 9]])
  hard = student_data(view(**{"label_filter.drop_frac": 0.3, "hard_labels": True}), HALF_B, WEAK, seed=0)
  assert hard.examples == data.examples  # ranked by the soft labels whatever the label form
  np.testing.assert_array_equal(hard.targets, np.eye(2)[WEAK[[0, 2, 4, 5, 6, 8, 9]].argmax(-1)])
  with pytest.raises(UserError, match="label_filter.drop_frac=1.0 must lie in"):
    student_data(view(**{"label_filter.drop_frac": 1.0}), HALF_B, WEAK, seed=0)


def test_validation_part_is_labelled_by_the_supervisor_or_by_the_truth_for_the_oracle():
  weak = student_data(view(**{"selection.method": "weak_auroc", "selection.val_frac": 0.2}), HALF_B, WEAK, seed=0)
  val, labels, every = weak.validation
  assert len(val) == 2 and len(weak.examples) == 8 and every == 25
  assert not {e.uid for e in val} & {e.uid for e in weak.examples}
  np.testing.assert_array_equal(labels, [int(P1[e.uid - 100] > 0.5) for e in val])
  oracle = student_data(view(**{"selection.method": "oracle_auroc", "selection.val_frac": 0.2}), HALF_B, WEAK, seed=0)
  assert oracle.validation[0] == val  # the same held-out part
  np.testing.assert_array_equal(oracle.validation[1], [e.label for e in val])
