"""Each loss against a numpy value computed by hand, on tiny batches."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from w2s_jax.errors import UserError
from w2s_jax.train import losses


def np_log_softmax(z):
  z = np.asarray(z, np.float64)
  m = z.max(-1, keepdims=True)
  return z - m - np.log(np.exp(z - m).sum(-1, keepdims=True))


def np_xent_mean(z, target):
  """mean_i -sum_c target_ic log softmax(z_i)_c, in float64."""
  return float(np.mean(-(target * np_log_softmax(z)).sum(-1)))


def soft_binary(p1):
  p1 = np.asarray(p1, np.float32)
  return np.stack([1 - p1, p1], axis=-1)


@pytest.fixture
def batch():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(6, 2)).astype(np.float32) * 2
  targets = soft_binary(rng.uniform(size=6))
  weight = np.ones(6, np.float32)
  return logits, targets, weight


def test_xent_matches_numpy(batch):
  logits, targets, weight = batch
  loss, aux = losses.xent(logits, targets, weight)
  assert aux == {}
  np.testing.assert_allclose(loss, np_xent_mean(logits, targets), rtol=1e-6)


def test_xent_hard_matches_numpy():
  logits = np.array([[0.3, -1.0, 2.0], [1.0, 1.0, 0.0], [-2.0, 0.5, 0.1]], np.float32)
  targets = np.array([[0.2, 0.5, 0.3], [0.6, 0.3, 0.1], [0.1, 0.1, 0.8]], np.float32)
  hard = np.array([1, 0, 2])
  expected = float(np.mean(-np_log_softmax(logits)[np.arange(3), hard]))
  loss, _ = losses.xent_hard(logits, targets, np.ones(3, np.float32))
  np.testing.assert_allclose(loss, expected, rtol=1e-6)


def test_xent_hard_equals_xent_on_one_hot_targets(batch):
  logits, targets, weight = batch
  one_hot = np.eye(2, dtype=np.float32)[targets.argmax(-1)]
  np.testing.assert_allclose(losses.xent_hard(logits, targets, weight)[0],
                             losses.xent(logits, one_hot, weight)[0], rtol=1e-6)


def test_xent_is_float32_for_bfloat16_logits(batch):
  logits, targets, weight = batch
  loss, _ = losses.xent(jnp.asarray(logits, jnp.bfloat16), targets, weight)
  assert loss.dtype == jnp.float32
  np.testing.assert_allclose(loss, np_xent_mean(logits, targets), rtol=2e-2)


def np_logconf(logits, targets, alpha):
  """OAI's recipe, written independently: threshold = np.quantile(p0, mean weak class-1 mass)."""
  probs = np.exp(np_log_softmax(logits))
  threshold = np.quantile(probs[:, 0], targets[:, 1].mean())  # linear interpolation
  is_class1 = probs[:, 0] < threshold
  hardened = np.stack([~is_class1, is_class1], -1).astype(np.float64)
  target = (1 - alpha) * targets + alpha * hardened
  return np_xent_mean(logits, target), hardened


@pytest.mark.parametrize("progress, alpha", [(0.0, 0.0), (0.05, 0.25), (0.5, 0.5)])
def test_logconf_matches_numpy(batch, progress, alpha):
  logits, targets, weight = batch
  expected, hardened = np_logconf(logits, targets, alpha)
  loss, aux = losses.logconf(logits, targets, weight, progress)
  np.testing.assert_allclose(loss, expected, rtol=1e-6)
  np.testing.assert_allclose(aux["alpha"], alpha, rtol=1e-6)
  np.testing.assert_allclose(aux["hardened_class1_frac"], hardened[:, 1].mean(), rtol=1e-6)
  np.testing.assert_allclose(aux["weak_class1_mean"], targets[:, 1].mean(), rtol=1e-6)


def test_logconf_oai_jump_matches_numpy(batch):
  logits, targets, weight = batch
  # OAI's code at 5% of training: alpha = 0.5 * 0.05, not 0.5 * 0.05 / 0.1.
  expected, _ = np_logconf(logits, targets, 0.025)
  loss, aux = losses.logconf(logits, targets, weight, 0.05, schedule="oai_jump")
  np.testing.assert_allclose(aux["alpha"], 0.025, rtol=1e-6)
  np.testing.assert_allclose(loss, expected, rtol=1e-6)


# The student's p(class 0) is 1 - sigmoid(z1 - z0); distinct values, in shuffled order.
STUDENT_LOGITS = np.stack(
    [np.zeros(8), np.array([0.3, -1.2, 2.0, -0.1, 0.9, -2.5, 1.4, -0.6])], -1).astype(np.float32)


@pytest.mark.parametrize("n_class1", [0, 2, 4, 6, 7])
def test_logconf_threshold_matches_weak_class_balance(n_class1):
  """Hardened class-1 fraction == the weak labels' mean class-1 mass, balanced or not."""
  weak = np.zeros(8, np.float32)
  weak[:n_class1] = 1.0
  targets = soft_binary(weak)
  _, aux = losses.logconf(STUDENT_LOGITS, targets, np.ones(8, np.float32), 1.0)
  assert float(aux["hardened_class1_frac"]) == pytest.approx(n_class1 / 8)
  # The rows hardened to class 1 are those the student finds most likely class 1.
  p0 = 1 / (1 + np.exp(STUDENT_LOGITS[:, 1] - STUDENT_LOGITS[:, 0]))
  expected_class1 = np.argsort(p0)[:n_class1]
  assert np.all(p0[expected_class1] < float(aux["threshold"]))
  assert np.sum(p0 < float(aux["threshold"])) == n_class1


def test_logconf_threshold_with_soft_weak_labels():
  # Mean class-1 mass 3/8 spread over soft labels: 3 of 8 rows hardened to class 1.
  weak = np.array([0.9, 0.1, 0.6, 0.2, 0.5, 0.4, 0.3, 0.0], np.float32)
  assert weak.mean() == pytest.approx(3 / 8)
  _, aux = losses.logconf(STUDENT_LOGITS, soft_binary(weak), np.ones(8, np.float32), 1.0)
  assert float(aux["hardened_class1_frac"]) == pytest.approx(3 / 8)


def test_logconf_multiclass_hardens_to_argmax():
  logits = np.array([[0.3, -1.0, 2.0], [1.0, 0.2, 0.0], [-2.0, 0.5, 0.1]], np.float32)
  targets = np.array([[0.2, 0.5, 0.3], [0.6, 0.3, 0.1], [0.1, 0.1, 0.8]], np.float32)
  hardened = np.eye(3)[[2, 0, 1]]
  expected = np_xent_mean(logits, 0.6 * targets + 0.4 * hardened)
  loss, aux = losses.logconf(logits, targets, np.ones(3, np.float32), 1.0, alpha_max=0.4)
  np.testing.assert_allclose(loss, expected, rtol=1e-6)
  assert set(aux) == {"alpha"}


def np_product_target(logits, targets, alpha, beta):
  p = np.exp(np_log_softmax(logits))
  t = p**beta * targets.astype(np.float64)**alpha
  return t / t.sum(-1, keepdims=True)


@pytest.mark.parametrize("alpha, beta", [(1.0, 1.0), (0.5, 2.0)])
def test_product_matches_numpy(batch, alpha, beta):
  logits, targets, weight = batch
  expected = np_xent_mean(logits, np_product_target(logits, targets, alpha, beta))
  loss, _ = losses.product(logits, targets, weight, alpha=alpha, beta=beta)
  np.testing.assert_allclose(loss, expected, rtol=1e-5)


def test_product_with_hard_weak_labels_is_xent_on_them(batch):
  logits, targets, weight = batch
  hard = np.eye(2, dtype=np.float32)[targets.argmax(-1)]
  np.testing.assert_allclose(losses.product(logits, hard, weight)[0],
                             losses.xent(logits, hard, weight)[0], rtol=1e-5)


def expected_grad(logits, target):
  """d/dz of mean_i H(target_i, softmax(z_i)) with the target held constant."""
  return (np.exp(np_log_softmax(logits)) - target) / len(logits)


def test_product_target_carries_no_gradient(batch):
  logits, targets, weight = batch
  grad = jax.grad(lambda z: losses.product(z, targets, weight)[0])(logits)
  target = np_product_target(logits, targets, 1.0, 1.0)
  np.testing.assert_allclose(grad, expected_grad(logits, target), atol=1e-6)


def test_logconf_target_carries_no_gradient(batch):
  logits, targets, weight = batch
  _, hardened = np_logconf(logits, targets, 0.5)
  grad = jax.grad(lambda z: losses.logconf(z, targets, weight, 1.0)[0])(logits)
  np.testing.assert_allclose(grad, expected_grad(logits, 0.5 * targets + 0.5 * hardened),
                             atol=1e-6)


LOSS_CASES = [
    ("xent", {}), ("xent_hard", {}), ("product", {}), ("product", {"alpha": 0.5}),
    ("logconf", {}), ("logconf", {"schedule": "oai_jump"}), ("entropy", {}), ("window", {}),
    ("window", {"radius": 0.45}),
]


@pytest.mark.parametrize("name, kwargs", LOSS_CASES)
def test_padding_rows_do_not_change_the_loss(name, kwargs):
  rng = np.random.default_rng(1)
  # Unbalanced weak labels, so that padding would move the logconf threshold.
  logits = rng.normal(size=(7, 2)).astype(np.float32)
  targets = soft_binary([0.9, 0.8, 0.1, 0.7, 0.95, 0.6, 0.2])
  loss_fn = losses.get_loss(name, **kwargs)
  loss, aux = loss_fn(logits, targets, np.ones(7, np.float32), 0.5)
  # Padding rows interleaved with real ones, with extreme logits and all-zero targets.
  order = np.array([0, -1, 1, 2, -1, 3, 4, -1, -1, 5, 6])
  pad_logits = np.where(order[:, None] >= 0, logits[order], [[-30.0, 30.0]]).astype(np.float32)
  pad_targets = np.where(order[:, None] >= 0, targets[order], 0.0).astype(np.float32)
  pad_weight = (order >= 0).astype(np.float32)
  pad_loss, pad_aux = loss_fn(pad_logits, pad_targets, pad_weight, 0.5)
  np.testing.assert_allclose(pad_loss, loss, rtol=1e-6)
  for key in aux:
    np.testing.assert_allclose(pad_aux[key], aux[key], rtol=1e-6, err_msg=key)
  grad = jax.grad(lambda z: loss_fn(z, pad_targets, pad_weight, 0.5)[0])(pad_logits)
  assert np.all(grad[order < 0] == 0)


@pytest.mark.parametrize("name", sorted(losses.LOSSES))
def test_batch_of_padding_only_has_zero_loss_and_gradient(name):
  logits = np.ones((3, 2), np.float32)
  targets = soft_binary([0.2, 0.5, 0.9])
  weight = np.zeros(3, np.float32)
  loss_fn = losses.get_loss(name)
  loss, grad = jax.value_and_grad(lambda z: loss_fn(z, targets, weight, 0.5)[0])(logits)
  assert float(loss) == 0.0
  assert np.all(grad == 0)


@pytest.mark.parametrize("progress, linear, oai_jump", [
    (0.0, 0.0, 0.0), (0.02, 0.1, 0.01), (0.05, 0.25, 0.025), (0.1, 0.5, 0.05),
    (0.1001, 0.5, 0.5), (0.5, 0.5, 0.5), (1.0, 0.5, 0.5),
])
def test_logconf_alpha_schedules(progress, linear, oai_jump):
  alpha = jax.jit(losses.logconf_alpha, static_argnames=("alpha_max", "warmup_frac", "schedule"))
  np.testing.assert_allclose(alpha(progress, alpha_max=0.5, warmup_frac=0.1, schedule="linear"),
                             linear, rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(alpha(progress, alpha_max=0.5, warmup_frac=0.1, schedule="oai_jump"),
                             oai_jump, rtol=1e-5, atol=1e-7)


def test_logconf_alpha_without_warmup_is_constant():
  for progress in (0.0, 0.3, 1.0):
    assert float(losses.logconf_alpha(progress, alpha_max=0.75, warmup_frac=0.0)) == 0.75


def test_logconf_runs_under_jit_with_traced_progress(batch):
  logits, targets, weight = batch
  loss_fn = jax.jit(losses.get_loss("logconf", alpha_max=0.3, warmup_frac=0.5))
  expected, _ = np_logconf(logits, targets, 0.15)
  loss, aux = loss_fn(logits, targets, weight, jnp.float32(0.25))
  np.testing.assert_allclose(aux["alpha"], 0.15, rtol=1e-6)
  np.testing.assert_allclose(loss, expected, rtol=1e-6)


def test_get_loss_rejects_unknown_names_and_options():
  with pytest.raises(UserError, match="unknown loss 'xnet'.*logconf"):
    losses.get_loss("xnet")
  with pytest.raises(UserError, match="bad options"):
    losses.get_loss("xent", alpha_max=0.5)
  with pytest.raises(UserError, match="unknown alpha schedule"):
    losses.get_loss("logconf", schedule="cosine")
  with pytest.raises(UserError, match="must both lie in"):
    losses.get_loss("logconf", alpha_max=1.5)


def padded_binary_batch():
  """7 real rows with unbalanced weak labels, and the same rows with padding interleaved."""
  rng = np.random.default_rng(1)
  logits = rng.normal(size=(7, 2)).astype(np.float32)
  targets = soft_binary([0.9, 0.8, 0.1, 0.7, 0.95, 0.6, 0.2])
  order = np.array([0, -1, 1, 2, -1, 3, 4, -1, -1, 5, 6])
  pad_logits = np.where(order[:, None] >= 0, logits[order], [[-30.0, 30.0]]).astype(np.float32)
  pad_targets = np.where(order[:, None] >= 0, targets[order], 0.0).astype(np.float32)
  return (logits, targets, np.ones(7, np.float32)), (pad_logits, pad_targets, (order >= 0).astype(np.float32))


def test_logconf_with_whole_batch_stats_on_slices_equals_one_whole_call():
  """What gradient accumulation does: each slice of rows hardened with the whole batch's statistics."""
  loss_fn = losses.get_loss("logconf", warmup_frac=0.0)  # alpha = 0.5 from the start
  _, (logits, targets, weight) = padded_binary_batch()
  whole, whole_aux = loss_fn(logits, targets, weight, 0.5)
  whole_grad = jax.grad(lambda z: loss_fn(z, targets, weight, 0.5)[0])(logits)
  stats = loss_fn.batch_statistics(logits, targets, weight, 0.5)
  assert set(stats) == {"threshold", "weak_class1_mean"}
  n_total = weight.sum()
  parts = [np.arange(0, 4), np.arange(4, 11)]  # 3 and 4 real rows
  total, frac = 0.0, 0.0
  for rows in parts:
    z, t, w = logits[rows], targets[rows], weight[rows]
    loss, aux = loss_fn(z, t, w, 0.5, stats=stats)
    total += float(loss) * w.sum()
    frac += float(aux["hardened_class1_frac"]) * w.sum()
    for key in ("threshold", "weak_class1_mean", "alpha"):
      np.testing.assert_allclose(aux[key], whole_aux[key], rtol=1e-6, err_msg=key)
    grad = jax.grad(lambda z: loss_fn(z, t, w, 0.5, stats=stats)[0] * w.sum() / n_total)(z)
    np.testing.assert_allclose(grad, whole_grad[rows], atol=1e-7)
    # Without the whole batch's statistics a slice thresholds on its own rows: not the same loss.
    assert float(loss_fn(z, t, w, 0.5)[1]["threshold"]) != pytest.approx(float(stats["threshold"]))
  np.testing.assert_allclose(total / n_total, whole, rtol=1e-6)
  np.testing.assert_allclose(frac / n_total, whole_aux["hardened_class1_frac"], rtol=1e-6)


def test_padding_rows_do_not_change_the_batch_statistics():
  loss_fn = losses.get_loss("logconf")
  real, padded = padded_binary_batch()
  stats, pad_stats = loss_fn.batch_statistics(*real, 0.5), loss_fn.batch_statistics(*padded, 0.5)
  assert set(stats) == set(pad_stats) == {"threshold", "weak_class1_mean"}
  for key in stats:
    np.testing.assert_allclose(pad_stats[key], stats[key], rtol=1e-6, err_msg=key)
  # The statistics are a target's: no gradient flows through them.
  grad = jax.grad(lambda z: loss_fn.batch_statistics(z, padded[1], padded[2], 0.5)["threshold"])(padded[0])
  assert np.all(grad == 0)


def test_batch_statistics_declarations():
  assert losses.get_loss("logconf").needs_batch_statistics
  for name in ("xent", "xent_hard", "product"):
    loss_fn = losses.get_loss(name)
    assert not loss_fn.needs_batch_statistics, name
    assert loss_fn.batch_statistics(np.zeros((2, 2), np.float32), soft_binary([0.2, 0.7]),
                                    np.ones(2, np.float32), 0.0) == {}
    with pytest.raises(TypeError, match="takes no batch statistics"):
      loss_fn(np.zeros((2, 2), np.float32), soft_binary([0.2, 0.7]), np.ones(2, np.float32), 0.0,
              stats={"threshold": 0.5})
  # More than two classes harden by argmax, row by row: nothing from the batch.
  assert losses.get_loss("logconf").batch_statistics(np.zeros((2, 3), np.float32), np.full((2, 3), 1 / 3),
                                                     np.ones(2, np.float32), 0.0) == {}
  with pytest.raises(UserError, match="bad options"):
    losses.get_loss("logconf", stats={})


@pytest.mark.parametrize("progress", [0.0, 0.05, 0.5])
def test_entropy_matches_numpy(batch, progress):
  logits, targets, weight = batch
  alpha = 0.5 * min(1.0, progress / 0.1)
  own = np.exp(np_log_softmax(logits))
  expected = np_xent_mean(logits, (1 - alpha) * targets + alpha * own)
  loss, aux = losses.get_loss("entropy")(logits, targets, weight, progress)
  np.testing.assert_allclose(loss, expected, rtol=1e-5)
  np.testing.assert_allclose(aux["alpha"], alpha, rtol=1e-6)


def test_entropy_target_carries_no_gradient(batch):
  """The student's own beliefs are a target: the gradient is xent's against the fixed mixed target."""
  logits, targets, weight = batch
  own = np.exp(np_log_softmax(logits)).astype(np.float32)
  fixed = 0.5 * targets + 0.5 * own
  grad = jax.grad(lambda z: losses.get_loss("entropy")(z, targets, weight, 1.0)[0])(logits)
  grad_fixed = jax.grad(lambda z: losses.xent(z, fixed, weight)[0])(logits)
  np.testing.assert_allclose(grad, grad_fixed, rtol=1e-5, atol=1e-7)


def test_window_trains_only_rows_where_the_student_is_uncertain():
  # p(top class): 0.5, 0.62, 0.73, 0.95 -> with radius 0.15 the first two rows are uncertain.
  p1 = np.array([0.5, 0.62, 0.73, 0.95])
  logits = np.log(np.stack([1 - p1, p1], -1)).astype(np.float32)
  targets = soft_binary([0.9, 0.1, 0.2, 0.3])
  weight = np.ones(4, np.float32)
  loss, aux = losses.get_loss("window", radius=0.15)(logits, targets, weight, 0.0)
  per_row = -(targets * np_log_softmax(logits)).sum(-1)
  np.testing.assert_allclose(loss, per_row[:2].sum() / 4, rtol=1e-5)  # the mean over all real rows
  np.testing.assert_allclose(aux["uncertain_frac"], 0.5)
  grad = jax.grad(lambda z: losses.get_loss("window")(z, targets, weight, 0.0)[0])(logits)
  assert np.all(grad[2:] == 0) and np.all(grad[:2] != 0)


def test_negative_control_options_are_checked():
  with pytest.raises(UserError, match="window: radius=0.7 must lie in"):
    losses.get_loss("window", radius=0.7)
  with pytest.raises(UserError, match="entropy: alpha_max=2"):
    losses.get_loss("entropy", alpha_max=2)
  assert set(losses.describe()) == set(losses.LOSSES) and all(losses.describe().values())
