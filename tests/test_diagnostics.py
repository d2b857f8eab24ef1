"""Imitation (agreement split by the supervisor's correctness) and misfit, on hand-made arrays."""

import numpy as np
import pytest

from w2s_jax import diagnostics


def one_hot_logits(classes, margin=3.0):
  return np.eye(2, dtype=np.float32)[classes] * margin


def test_agreement_is_split_by_whether_the_supervisor_was_right():
  labels = np.array([1, 1, 0, 0, 1, 0])
  supervisor = one_hot_logits([1, 1, 0, 1, 0, 1])  # right on rows 0-2, wrong on rows 3-5
  student = one_hot_logits([1, 0, 0, 0, 0, 1])     # agrees on 0, 2 (right) and 4, 5 (wrong)
  out = diagnostics.imitation(student, supervisor, labels)
  assert out["agreement"] == pytest.approx(4 / 6)
  assert out["agreement_supervisor_right"] == pytest.approx(2 / 3)
  assert out["agreement_supervisor_wrong"] == pytest.approx(2 / 3)
  assert out["supervisor_wrong_frac"] == pytest.approx(0.5)


def test_a_supervisor_that_is_never_wrong_leaves_that_split_undefined():
  labels = np.array([0, 1])
  out = diagnostics.imitation(one_hot_logits([0, 1]), one_hot_logits([0, 1]), labels)
  assert out["agreement_supervisor_right"] == 1.0 and np.isnan(out["agreement_supervisor_wrong"])


def test_misfit_counts_disagreement_with_the_training_labels_and_its_kl():
  weak = np.array([[0.9, 0.1], [0.2, 0.8], [1.0, 0.0]])
  student = np.log(np.array([[0.9, 0.1], [0.6, 0.4], [0.5, 0.5]]))  # logits whose softmax is these rows
  out = diagnostics.misfit(student, weak)
  assert out["misfit"] == pytest.approx(1 / 3)  # row 1's argmax differs (row 2: a tie goes to class 0)
  kl = [0.0, 0.2 * np.log(0.2 / 0.6) + 0.8 * np.log(0.8 / 0.4), np.log(1.0 / 0.5)]
  assert out["misfit_kl"] == pytest.approx(np.mean(kl))
  assert diagnostics.misfit(np.log(weak + 1e-30), weak)["misfit_kl"] == pytest.approx(0.0, abs=1e-12)
