"""Classification metrics computed on device: pure jnp, jit-able, weight-masked.

As in the losses, `weight` [N] is 1 for real rows and 0 for padding rows (any
non-negative weight works: metrics are weighted means). A metric that is undefined
on its input — any metric on a batch of padding only, ROC AUC without both classes —
is NaN, never a made-up 0 or 0.5 that would look like a result.

Accuracy, agreement and the cross-entropies are weighted means, so per-batch values
combine into the full-set value by weighting with `weight_sum`. ROC AUC does not
combine across batches: compute it once on the whole evaluation set's scores.
"""

import jax
import jax.numpy as jnp

from w2s_jax.train.losses import soft_cross_entropy


def _weighted_mean(values: jax.Array, weight: jax.Array) -> jax.Array:
  """sum(weight * values) / sum(weight); NaN when all weights are 0."""
  weight = weight.astype(jnp.float32)
  total = jnp.sum(jnp.where(weight > 0, weight * values.astype(jnp.float32), 0.0))
  weight_sum = jnp.sum(weight)
  return jnp.where(weight_sum > 0, total / jnp.where(weight_sum > 0, weight_sum, 1.0), jnp.nan)


def accuracy(logits_or_probs: jax.Array, labels: jax.Array, weight: jax.Array) -> jax.Array:
  """Weighted fraction of rows whose argmax class [N, C] equals the integer label [N]."""
  predicted = jnp.argmax(logits_or_probs, axis=-1)
  return _weighted_mean(predicted == labels, weight)


def agreement(student_logits: jax.Array, supervisor_targets: jax.Array,
              weight: jax.Array) -> jax.Array:
  """Weighted fraction of rows where the student's and the supervisor's argmax classes agree.

  A tie in the supervisor's soft label (exactly 0.5) counts as class 0, as `argmax` does.
  """
  return accuracy(student_logits, jnp.argmax(supervisor_targets, axis=-1), weight)


def roc_auc(scores: jax.Array, labels: jax.Array, weight: jax.Array) -> jax.Array:
  """Area under the ROC curve: P(score of a positive > score of a negative), ties counting 1/2.

    AUC = sum_{i: y_i=1} sum_{j: y_j=0} w_i w_j ([s_i > s_j] + 1/2 [s_i = s_j])
          / (sum_{i: y_i=1} w_i * sum_{j: y_j=0} w_j)

  This is the Mann-Whitney U statistic with average ranks for ties (scikit-learn's
  `roc_auc_score` gives the same value). O(N log N): the negatives are sorted once,
  and for each positive two binary searches count the negatives' weight below and
  equal to its score. Rows whose label is neither 0 nor 1 are ignored. NaN when the
  real rows lack either class (the AUC is undefined there).

  Args:
    scores: [N] float, e.g. the predicted probability (or logit) of class 1.
    labels: [N] int, 1 = positive, 0 = negative.
    weight: [N] float, 0 for padding rows.
  """
  weight = weight.astype(jnp.float32)
  real = weight > 0
  # Padding rows may hold anything (even NaN): give them a harmless score and no weight.
  scores = jnp.where(real, scores.astype(jnp.float32), 0.0)
  pos_weight = jnp.where(real & (labels == 1), weight, 0.0)  # [N]
  neg_weight = jnp.where(real & (labels == 0), weight, 0.0)  # [N]

  order = jnp.argsort(scores)
  sorted_scores = scores[order]  # [N]
  # neg_below[k] = total negative weight among the k smallest scores.
  neg_below = jnp.concatenate([jnp.zeros(1, jnp.float32), jnp.cumsum(neg_weight[order])])
  left = jnp.searchsorted(sorted_scores, scores, side="left")  # [N] scores strictly below
  right = jnp.searchsorted(sorted_scores, scores, side="right")  # [N] scores below or equal
  neg_less = neg_below[left]
  neg_equal = neg_below[right] - neg_below[left]
  wins = jnp.sum(pos_weight * (neg_less + 0.5 * neg_equal))

  pairs = jnp.sum(pos_weight) * jnp.sum(neg_weight)
  return jnp.where(pairs > 0, wins / jnp.where(pairs > 0, pairs, 1.0), jnp.nan)


def classification_metrics(logits: jax.Array, labels: jax.Array, targets: jax.Array,
                           weight: jax.Array) -> dict[str, jax.Array]:
  """Every metric of a batch of predictions, as float32 scalars.

  Args:
    logits: [N, C] the model's logits.
    labels: [N] int ground truth.
    targets: [N, C] the supervisor's soft labels the model was trained on (for a
      ground-truth run: the one-hot labels).
    weight: [N] 1 for real rows, 0 for padding.

  Returns:
    accuracy: against the ground truth.
    agreement: with the supervisor's argmax labels.
    xent_labels: cross-entropy against the ground truth.
    xent_targets: cross-entropy against the supervisor's soft labels.
    auc: ROC AUC of the class-1 score against the ground truth (binary tasks only; see
      `roc_auc` for why it is only meaningful on a whole evaluation set).
    weight_sum: the number of real rows, to combine batches' weighted means.
  """
  logits = logits.astype(jnp.float32)
  num_classes = logits.shape[-1]
  one_hot_labels = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)
  metrics = {
      "accuracy": accuracy(logits, labels, weight),
      "agreement": agreement(logits, targets, weight),
      "xent_labels": _weighted_mean(soft_cross_entropy(logits, one_hot_labels), weight),
      "xent_targets": _weighted_mean(soft_cross_entropy(logits, targets), weight),
      "weight_sum": jnp.sum(weight.astype(jnp.float32)),
  }
  if num_classes == 2:
    # The logit margin ranks rows as p(class 1) does, without float32 saturating
    # confident rows to a tie at p = 1.0.
    metrics["auc"] = roc_auc(logits[:, 1] - logits[:, 0], labels, weight)
  return metrics
