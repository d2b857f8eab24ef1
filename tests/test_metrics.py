"""On-device metrics against numpy counts on tiny batches."""

import jax
import numpy as np
import pytest

from w2s_jax.train import metrics


def brute_force_auc(scores, labels, weight=None):
  """Every (positive, negative) pair: 1 if the positive scores higher, 1/2 on a tie."""
  weight = np.ones(len(scores)) if weight is None else weight
  wins, pairs = 0.0, 0.0
  for i in range(len(scores)):
    for j in range(len(scores)):
      if labels[i] == 1 and labels[j] == 0 and weight[i] > 0 and weight[j] > 0:
        w = weight[i] * weight[j]
        pairs += w
        wins += w * (1.0 if scores[i] > scores[j] else 0.5 if scores[i] == scores[j] else 0.0)
  return wins / pairs


def test_accuracy_on_logits_and_probs():
  logits = np.array([[2.0, 1.0], [0.0, 3.0], [1.0, -1.0], [0.2, 0.1], [-1.0, 1.0]], np.float32)
  labels = np.array([0, 1, 1, 1, 0])
  probs = np.asarray(jax.nn.softmax(logits))
  weight = np.ones(5, np.float32)
  assert float(metrics.accuracy(logits, labels, weight)) == pytest.approx(2 / 5)
  assert float(metrics.accuracy(probs, labels, weight)) == pytest.approx(2 / 5)
  # Only the real rows count: drop rows 2 and 3 (both wrong).
  weight = np.array([1, 1, 0, 0, 1], np.float32)
  assert float(metrics.accuracy(logits, labels, weight)) == pytest.approx(2 / 3)


def test_agreement_with_supervisor_argmax():
  student = np.array([[2.0, 1.0], [0.0, 3.0], [1.0, -1.0], [0.0, 1.0]], np.float32)
  supervisor = np.array([[0.7, 0.3], [0.4, 0.6], [0.2, 0.8], [0.5, 0.5]], np.float32)
  # Row 3's tie counts as class 0, so the student (class 1) disagrees there.
  agree = np.array([1, 1, 0, 0], np.float32)
  assert float(metrics.agreement(student, supervisor, np.ones(4, np.float32))) == agree.mean()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_roc_auc_matches_pairwise_count_with_ties(seed):
  rng = np.random.default_rng(seed)
  scores = np.round(rng.uniform(size=40), 1).astype(np.float32)  # rounding makes many ties
  labels = (rng.uniform(size=40) < scores).astype(np.int32)
  np.testing.assert_allclose(metrics.roc_auc(scores, labels, np.ones(40, np.float32)),
                             brute_force_auc(scores, labels), rtol=1e-6)


def test_roc_auc_with_weights_and_padding():
  rng = np.random.default_rng(3)
  scores = np.round(rng.normal(size=30), 1).astype(np.float32)
  labels = rng.integers(0, 2, size=30).astype(np.int32)
  weight = rng.choice([0.0, 1.0, 2.5], size=30).astype(np.float32)
  expected = brute_force_auc(scores, labels, weight)
  scores_with_nan_padding = np.where(weight > 0, scores, np.nan).astype(np.float32)
  got = jax.jit(metrics.roc_auc)(scores_with_nan_padding, labels, weight)
  np.testing.assert_allclose(got, expected, rtol=1e-6)


def test_roc_auc_extremes():
  scores = np.array([0.1, 0.2, 0.8, 0.9], np.float32)
  weight = np.ones(4, np.float32)
  assert float(metrics.roc_auc(scores, np.array([0, 0, 1, 1]), weight)) == 1.0
  assert float(metrics.roc_auc(scores, np.array([1, 1, 0, 0]), weight)) == 0.0
  assert float(metrics.roc_auc(np.zeros(4, np.float32), np.array([1, 0, 1, 0]), weight)) == 0.5


def test_undefined_metrics_are_nan():
  scores = np.array([0.1, 0.2, 0.8], np.float32)
  assert np.isnan(metrics.roc_auc(scores, np.array([1, 1, 1]), np.ones(3, np.float32)))
  # The only negative is a padding row.
  assert np.isnan(metrics.roc_auc(scores, np.array([1, 0, 1]), np.array([1, 0, 1], np.float32)))
  logits = np.zeros((3, 2), np.float32)
  assert np.isnan(metrics.accuracy(logits, np.array([0, 1, 0]), np.zeros(3, np.float32)))


def test_classification_metrics_match_numpy():
  rng = np.random.default_rng(4)
  logits = rng.normal(size=(12, 2)).astype(np.float32)
  labels = rng.integers(0, 2, size=12)
  p_weak = rng.uniform(size=12).astype(np.float32)
  targets = np.stack([1 - p_weak, p_weak], -1)
  got = metrics.classification_metrics(logits, labels, targets, np.ones(12, np.float32))

  log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  assert set(got) == {"accuracy", "agreement", "xent_labels", "xent_targets", "auc", "weight_sum"}
  np.testing.assert_allclose(got["accuracy"], np.mean(logits.argmax(-1) == labels), rtol=1e-6)
  np.testing.assert_allclose(got["agreement"], np.mean(logits.argmax(-1) == targets.argmax(-1)),
                             rtol=1e-6)
  np.testing.assert_allclose(got["xent_labels"], -np.mean(log_probs[np.arange(12), labels]),
                             rtol=1e-5)
  np.testing.assert_allclose(got["xent_targets"], -np.mean((targets * log_probs).sum(-1)),
                             rtol=1e-5)
  np.testing.assert_allclose(got["auc"], brute_force_auc(np.exp(log_probs[:, 1]), labels),
                             rtol=1e-6)
  assert float(got["weight_sum"]) == 12


def test_classification_metrics_ignore_padding_rows():
  rng = np.random.default_rng(5)
  logits = rng.normal(size=(9, 2)).astype(np.float32)
  labels = rng.integers(0, 2, size=9)
  targets = np.eye(2, dtype=np.float32)[rng.integers(0, 2, size=9)]
  expected = metrics.classification_metrics(logits, labels, targets, np.ones(9, np.float32))
  order = np.array([-1, 0, 1, -1, 2, 3, 4, 5, -1, 6, 7, 8])
  real = order >= 0
  pad_logits = np.where(real[:, None], logits[order], np.nan).astype(np.float32)
  pad_labels = np.where(real, labels[order], 1)
  pad_targets = np.where(real[:, None], targets[order], 0.0).astype(np.float32)
  got = jax.jit(metrics.classification_metrics)(pad_logits, pad_labels, pad_targets,
                                                real.astype(np.float32))
  for key in expected:
    np.testing.assert_allclose(got[key], expected[key], rtol=1e-6, err_msg=key)


def test_auc_separates_confident_rows_that_saturate_probabilities():
  # p(class 1) is 1.0 in float32 for both positives' and negatives' logits: the margin still ranks.
  logits = np.array([[-40.0, 40.0], [-60.0, 60.0], [-30.0, 30.0], [-50.0, 50.0]], np.float32)
  labels = np.array([0, 1, 0, 1])
  got = metrics.classification_metrics(logits, labels, np.eye(2)[labels], np.ones(4, np.float32))
  assert float(got["auc"]) == 1.0


def test_multiclass_metrics_have_no_auc():
  logits = np.array([[0.3, -1.0, 2.0], [1.0, 0.2, 0.0]], np.float32)
  got = metrics.classification_metrics(logits, np.array([2, 1]), np.eye(3)[[2, 0]],
                                       np.ones(2, np.float32))
  assert "auc" not in got
  assert float(got["accuracy"]) == 0.5
  assert float(got["agreement"]) == 1.0
