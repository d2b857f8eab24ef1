"""The jitted train step: it learns, it is the same on 1 and 8 devices, accumulation is exact,
and a linear probe never touches the backbone."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from w2s_jax import sharding
from w2s_jax.models import checkpoints
from w2s_jax.models.checkpoints import LoadedModel
from w2s_jax.models.gpt2 import GPT2Config
from w2s_jax.train import losses, optim, state as state_lib, steps

TINY = GPT2Config(vocab_size=32, max_positions=16, d_model=16, n_layers=2, n_heads=2, d_ff=32)


def toy_batch(n: int, seed: int, T: int = 8):
  """Label 1 iff the last real token is in the upper half of the vocabulary: separable from the
  pooled last-token state. Rows have random lengths (right padding with id 0, a real token)."""
  rng = np.random.default_rng(seed)
  lengths = rng.integers(2, T + 1, size=n)
  ids = rng.integers(1, TINY.vocab_size, size=(n, T)).astype(np.int32)
  mask = (np.arange(T)[None] < lengths[:, None]).astype(np.int32)
  ids = np.where(mask == 1, ids, 0).astype(np.int32)
  labels = (ids[np.arange(n), lengths - 1] >= TINY.vocab_size // 2).astype(np.int32)
  return {"input_ids": ids, "attention_mask": mask, "labels": labels,
          "targets": np.eye(2, dtype=np.float32)[labels], "weight": np.ones(n, np.float32)}


def make(mesh, *, lr=3e-3, total=100, microbatches=1, linear_probe=False, loss="xent", head_init="normal"):
  module = checkpoints.build_model(TINY, head_init=head_init)
  params = checkpoints.init_params(module, jax.random.key(0), mesh)
  tx = optim.make_optimizer(name="adam", lr=lr, total_steps=total, schedule="constant")
  state, shardings, keys = state_lib.create(params, tx, mesh, linear_probe=linear_probe)
  step = steps.jit_train_step(
      steps.make_train_step(module, tx, losses.get_loss(loss), total_steps=total, trainable=keys,
                            microbatches=microbatches, mesh=mesh), shardings, mesh)
  return module, state, step


def run(mesh, batches, **kw):
  _, state, step = make(mesh, **kw)
  curve = []
  for b in batches:
    state, m = step(state, sharding.global_batch(b, mesh))
    curve.append(float(m["loss"]))
  return state, np.array(curve)


def one_device():
  return sharding.make_mesh(1, 1, devices=jax.devices()[:1])


def test_tiny_model_learns_separable_task():
  mesh = one_device()
  module, state, step = make(mesh, lr=1e-2, total=150)
  for i in range(150):
    state, m = step(state, sharding.global_batch(toy_batch(32, seed=i), mesh))
  test = toy_batch(256, seed=10_000)
  logits = module.apply({"params": state.params}, test["input_ids"], test["attention_mask"])
  acc = float((np.argmax(logits, -1) == test["labels"]).mean())
  assert acc >= 0.97, acc


def test_loss_curve_same_on_1_and_8_devices(monkeypatch):
  monkeypatch.setattr(sharding, "MIN_SHARDED_SIZE", 0)  # really shard the tiny parameters
  data = [toy_batch(16, seed=i) for i in range(6)]
  _, curve1 = run(one_device(), data, loss="logconf")
  _, curve8 = run(sharding.make_mesh(data=2, fsdp=4), data, loss="logconf")
  np.testing.assert_allclose(curve8, curve1, atol=1e-5, rtol=0)
  assert np.ptp(curve1) > 1e-3  # the parameters really moved between steps


def test_gradient_accumulation_equals_full_batch():
  mesh = sharding.make_mesh(data=8, fsdp=1)
  data = [toy_batch(32, seed=i) for i in range(3)]
  data[1]["weight"][-5:] = 0.0  # padding rows must not change anything either
  full, curve_full = run(mesh, data)
  accum, curve_accum = run(mesh, data, microbatches=4)
  np.testing.assert_allclose(curve_accum, curve_full, atol=1e-6)
  for a, b in zip(jax.tree.leaves(accum.params), jax.tree.leaves(full.params)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=2e-5)  # Adam divides by tiny moments


def test_linear_probe_leaves_backbone_bit_identical():
  mesh = one_device()
  _, state0, step = make(mesh, linear_probe=True)
  before = jax.tree.map(np.array, state0.params)
  state = state0
  for i in range(3):
    state, m = step(state, sharding.global_batch(toy_batch(8, seed=i), mesh))
  after = jax.tree.map(np.asarray, state.params)
  for a, b in zip(jax.tree.leaves(after["backbone"]), jax.tree.leaves(before["backbone"])):
    np.testing.assert_array_equal(a, b)
  assert not np.array_equal(after["head"]["kernel"], before["head"]["kernel"])
  # No optimizer state for the backbone: Adam's moments cover the head's parameters only.
  n_opt = sum(x.size for x in jax.tree.leaves(state.opt_state))
  n_head = sum(x.size for x in jax.tree.leaves(before["head"]))
  assert n_opt <= 2 * n_head + 2


def test_eval_step_returns_logits_and_index():
  mesh = sharding.make_mesh(data=8, fsdp=1)
  module, state, _ = make(mesh)
  b = toy_batch(16, seed=3)
  b["index"] = np.arange(16, dtype=np.int32)
  shardings = jax.tree.map(lambda x: x.sharding, state.params)
  eval_step = steps.make_eval_step(module, mesh, shardings)
  logits, index = eval_step(state.params, sharding.global_batch(b, mesh))
  assert logits.dtype == jnp.float32 and logits.shape == (16, 2)
  expected = module.apply({"params": state.params}, b["input_ids"], b["attention_mask"])
  np.testing.assert_allclose(np.asarray(logits), np.asarray(expected, np.float32), atol=1e-5)
  assert not np.allclose(np.asarray(logits).sum(-1), 1.0)  # logits, not probabilities
  np.testing.assert_array_equal(index, np.arange(16))


def record_gradient() -> optax.GradientTransformation:
  """An 'optimizer' that leaves the parameters alone and keeps the step's gradient as its state, exactly."""
  def update(grads, state, params=None):
    del state, params
    return jax.tree.map(jnp.zeros_like, grads), grads
  return optax.GradientTransformation(lambda params: jax.tree.map(jnp.zeros_like, params), update)


def weak_labelled_batch(n: int = 16, seed: int = 0, num_labels: int = 2):
  """Soft, unbalanced weak labels (so the logconf threshold depends on which rows it sees) and padding
  rows 1, 3, 5, 13: with 2 strided microbatches 8 and 4 real rows, with 8 one microbatch of padding
  only and two with a single real row."""
  b = toy_batch(n, seed)
  rng = np.random.default_rng(seed + 100)
  b["targets"] = rng.dirichlet(np.full(num_labels, 0.7), size=n).astype(np.float32)
  b["weight"][[1, 3, 5, 13]] = 0.0
  return b


def gradient_of_step(loss_fn, microbatches: int, batch, *, num_labels: int = 2, module_wrapper=None,
                     trace_only: bool = False):
  """The gradient (a flat vector) and metrics of one train step, from the same initial parameters.

  trace_only: only trace the step (no compile, no run) and return None.
  """
  mesh = one_device()
  module = checkpoints.build_model(TINY, head_init="normal", num_labels=num_labels)
  params = checkpoints.init_params(module, jax.random.key(0), mesh)
  tx = record_gradient()
  state, shardings, keys = state_lib.create(params, tx, mesh)
  train_step = steps.make_train_step(module if module_wrapper is None else module_wrapper(module), tx, loss_fn,
                                     total_steps=10, trainable=keys, microbatches=microbatches, mesh=mesh)
  if trace_only:
    jax.eval_shape(train_step, state, batch)
    return None
  new_state, m = steps.jit_train_step(train_step, shardings, mesh)(state, sharding.global_batch(batch, mesh))
  grad = np.concatenate([np.asarray(g, np.float64).ravel() for g in jax.tree.leaves(new_state.opt_state)])
  return grad, jax.device_get(m)


def relative(a, b):
  return float(np.linalg.norm(a - b) / np.linalg.norm(b))


# logconf's metrics that must be whole-batch values whatever the microbatching.
LOGCONF_METRICS = ("loss", "loss/alpha", "loss/threshold", "loss/weak_class1_mean", "loss/hardened_class1_frac")


def test_logconf_gradient_same_for_any_microbatching():
  """The threshold and weak mean are the whole batch's (OAI: one loss call on the whole batch), so
  accumulation changes nothing; a per-microbatch threshold moved this gradient by 73% at 2 microbatches."""
  batch = weak_labelled_batch()
  loss_fn = losses.get_loss("logconf", warmup_frac=0.0)  # alpha = 0.5 from step 0
  grad1, m1 = gradient_of_step(loss_fn, 1, batch)
  assert float(m1["loss/alpha"]) == 0.5 and 0 < float(m1["loss/hardened_class1_frac"]) < 1
  for microbatches in (2, 8):
    grad, m = gradient_of_step(loss_fn, microbatches, batch)
    assert relative(grad, grad1) <= 1e-5, (microbatches, relative(grad, grad1))
    for key in LOGCONF_METRICS:
      np.testing.assert_allclose(m[key], m1[key], rtol=1e-5, atol=1e-7, err_msg=f"{key} at {microbatches}")
  # The same loss without its declaration thresholds each microbatch on its own rows: the test can tell.
  undeclared = functools.partial(losses.logconf, warmup_frac=0.0)
  grad, _ = gradient_of_step(undeclared, 2, batch)
  assert relative(grad, grad1) > 1e-2


def test_xent_gradient_same_for_any_microbatching():
  batch = weak_labelled_batch(seed=1)
  grad1, m1 = gradient_of_step(losses.get_loss("xent"), 1, batch)
  for microbatches in (2, 8):
    grad, m = gradient_of_step(losses.get_loss("xent"), microbatches, batch)
    assert relative(grad, grad1) <= 1e-5, (microbatches, relative(grad, grad1))
    np.testing.assert_allclose(m["loss"], m1["loss"], rtol=1e-6)


class CountingModule:
  """Delegates `apply` to a module and counts the calls: each is one forward pass traced into the step."""

  def __init__(self, module):
    self.module, self.calls = module, 0

  def apply(self, *args, **kwargs):
    self.calls += 1
    return self.module.apply(*args, **kwargs)


@pytest.mark.parametrize("loss, microbatches, num_labels, passes", [
    ("xent", 4, 2, 1), ("xent_hard", 4, 2, 1), ("product", 4, 2, 1),
    ("logconf", 1, 2, 1),  # one call on the whole batch computes its own threshold
    ("logconf", 4, 2, 2),  # the forward pass without gradients, then the gradient pass
    ("logconf", 4, 3, 1),  # more than two classes harden by argmax: no batch statistics
])
def test_extra_forward_pass_only_for_batch_statistics(loss, microbatches, num_labels, passes):
  loss_fn = losses.get_loss(loss)
  assert loss_fn.needs_batch_statistics == (loss == "logconf")
  counting = []
  wrapper = lambda module: counting.append(CountingModule(module)) or counting[-1]
  gradient_of_step(loss_fn, microbatches, weak_labelled_batch(num_labels=num_labels), num_labels=num_labels,
                   module_wrapper=wrapper, trace_only=True)
  assert counting[0].calls == passes
