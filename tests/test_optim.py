"""The optimizer builder: schedules, freezing by regex, clipping, the update rules' wiring."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from w2s_jax.errors import UserError
from w2s_jax.train import optim


def tiny_params():
  rng = np.random.default_rng(0)
  return {
      "backbone": {"wte": jnp.asarray(rng.normal(size=(5, 3)), jnp.float32),
                   "h": [{"kernel": jnp.asarray(rng.normal(size=(3, 3)), jnp.float32)}]},
      "head": {"kernel": jnp.asarray(rng.normal(size=(3, 2)), jnp.float32)},
  }


def ones_like(tree, scale=1.0):
  return jax.tree_util.tree_map(lambda x: scale * jnp.ones_like(x), tree)


def apply_updates(tx, params, grads, steps):
  state = tx.init(params)
  step = jax.jit(tx.update)
  for _ in range(steps):
    updates, state = step(grads, state, params)
    params = optax.apply_updates(params, updates)
  return params, state


def global_norm(tree):
  return float(optax.global_norm(tree))


def test_param_paths_name_every_leaf():
  paths = optim.param_paths(tiny_params())
  assert paths == {"backbone": {"wte": "backbone/wte", "h": [{"kernel": "backbone/h/0/kernel"}]},
                   "head": {"kernel": "head/kernel"}}


def test_param_paths_of_nnx_state_match_its_pure_dict():

  class Model(nnx.Module):

    def __init__(self, rngs):
      self.body = nnx.Linear(3, 4, rngs=rngs)
      self.head = nnx.Linear(4, 2, use_bias=False, rngs=rngs)

  state = nnx.state(Model(nnx.Rngs(0)), nnx.Param)
  names = sorted(jax.tree_util.tree_leaves(optim.param_paths(state)))
  assert names == ["body/bias", "body/kernel", "head/kernel"]
  assert names == sorted(jax.tree_util.tree_leaves(optim.param_paths(nnx.to_pure_dict(state))))


def test_cosine_schedule_hits_zero_at_the_end():
  lr, total = 1e-3, 10
  schedule = optim.make_schedule(lr=lr, total_steps=total)
  for t in range(total + 1):  # OAI: torch CosineAnnealingLR(T_max=total)
    np.testing.assert_allclose(schedule(t), lr * (1 + math.cos(math.pi * t / total)) / 2,
                               atol=1e-9)
  assert float(schedule(total)) == 0.0


def test_cosine_schedule_with_warmup_ramps_then_decays():
  schedule = optim.make_schedule(lr=1.0, total_steps=20, warmup_steps=4)
  np.testing.assert_allclose([schedule(t) for t in range(5)], [0, 0.25, 0.5, 0.75, 1.0], atol=1e-6)
  decay = [float(schedule(t)) for t in range(4, 21)]
  assert all(a > b for a, b in zip(decay, decay[1:]))
  np.testing.assert_allclose(schedule(12), 0.5, atol=1e-6)  # half way through the decay
  assert float(schedule(20)) == 0.0


def test_constant_schedule_with_and_without_warmup():
  flat = optim.make_schedule(lr=0.1, total_steps=10, schedule="constant")
  np.testing.assert_allclose([flat(t) for t in (0, 5, 10)], 0.1, rtol=1e-6)
  ramp = optim.make_schedule(lr=0.1, total_steps=10, schedule="constant", warmup_steps=2)
  np.testing.assert_allclose([ramp(t) for t in (0, 1, 2, 3, 10)], [0, 0.05, 0.1, 0.1, 0.1],
                             rtol=1e-6)


@pytest.mark.parametrize("kwargs, match", [
    ({"schedule": "linear"}, "unknown lr schedule"),
    ({"warmup_steps": 10}, "warmup_steps=10"),
    ({"total_steps": 0}, "total_steps=0"),
    ({"name": "lion"}, "unknown optimizer 'lion'"),
    ({"name": "adam", "weight_decay": 0.1}, "use name='adamw'"),
    ({"clip_norm": 0.0}, "clip_norm"),
    ({"trainable": "head/("}, "not a valid regex"),
])
def test_bad_options_raise_user_errors(kwargs, match):
  with pytest.raises(UserError, match=match):
    optim.make_optimizer(**{"lr": 0.1, "total_steps": 10, **kwargs})


def test_trainable_regex_matching_nothing_fails_at_init():
  tx = optim.make_optimizer(lr=0.1, total_steps=10, trainable="^heads/")
  with pytest.raises(UserError, match="matches no parameter.*head/kernel"):
    tx.init(tiny_params())


@pytest.mark.parametrize("name", optim.OPTIMIZERS)
def test_frozen_params_stay_put_while_trainable_ones_move(name):
  params = tiny_params()
  tx = optim.make_optimizer(name=name, lr=0.1, total_steps=10, schedule="constant",
                            trainable="^head/")
  new_params, state = apply_updates(tx, params, ones_like(params), steps=3)
  np.testing.assert_array_equal(new_params["backbone"]["wte"], params["backbone"]["wte"])
  np.testing.assert_array_equal(new_params["backbone"]["h"][0]["kernel"],
                                params["backbone"]["h"][0]["kernel"])
  assert np.all(np.abs(new_params["head"]["kernel"] - params["head"]["kernel"]) > 1e-3)
  # No optimizer state for the frozen body: every array in the state is scalar or head-sized.
  assert all(x.size <= params["head"]["kernel"].size for x in jax.tree_util.tree_leaves(state))


def test_frozen_adam_keeps_moments_for_the_head_only():
  params = tiny_params()
  frozen = optim.make_optimizer(lr=0.1, total_steps=10, trainable="^head/")
  full = optim.make_optimizer(lr=0.1, total_steps=10)
  size = lambda tree: sum(x.size for x in jax.tree_util.tree_leaves(tree))
  head_size = params["head"]["kernel"].size
  # Adam: first and second moments (2 x params) plus scalar step counts.
  assert size(frozen.init(params)) - size(full.init(params)) == 2 * (head_size - size(params))


def test_adam_update_matches_numpy():
  params = {"w": jnp.array([1.0, -2.0, 0.5])}
  grads = [np.array([0.1, -0.4, 2.0]), np.array([0.3, 0.2, -1.0])]
  lr, b1, b2, eps = 0.01, 0.5, 0.9, 1e-8
  tx = optim.make_optimizer(lr=lr, total_steps=100, schedule="constant", b1=b1, b2=b2)
  state = tx.init(params)
  w, m, v = np.array([1.0, -2.0, 0.5]), 0.0, 0.0
  for t, g in enumerate(grads, start=1):
    updates, state = tx.update({"w": jnp.asarray(g, jnp.float32)}, state, params)
    params = optax.apply_updates(params, updates)
    m, v = b1 * m + (1 - b1) * g, b2 * v + (1 - b2) * g**2
    w = w - lr * (m / (1 - b1**t)) / (np.sqrt(v / (1 - b2**t)) + eps)
  np.testing.assert_allclose(params["w"], w, rtol=1e-5)


def test_adamw_decays_weights_without_gradient():
  params = {"w": jnp.array([1.0, -2.0])}
  tx = optim.make_optimizer(name="adamw", lr=0.1, total_steps=10, schedule="constant",
                            weight_decay=0.5)
  new_params, _ = apply_updates(tx, params, ones_like(params, 0.0), steps=1)
  np.testing.assert_allclose(new_params["w"], params["w"] * (1 - 0.1 * 0.5), rtol=1e-6)


def test_clipping_bounds_the_update_norm():
  params = tiny_params()
  lr, clip = 0.1, 0.5
  tx = optim.make_optimizer(name="sgd", lr=lr, total_steps=10, schedule="constant",
                            clip_norm=clip)
  huge = ones_like(params, 100.0)
  updates, _ = tx.update(huge, tx.init(params), params)
  np.testing.assert_allclose(global_norm(updates), lr * clip, rtol=1e-5)
  small = ones_like(params, 1e-3)  # below the bound: untouched
  updates, _ = tx.update(small, tx.init(params), params)
  np.testing.assert_allclose(global_norm(updates), lr * global_norm(small), rtol=1e-5)


def test_adam_with_clipping_sees_clipped_gradients():
  params = tiny_params()
  grads = [ones_like(params, 0.01), ones_like(params, 50.0)]
  clipped = optim.make_optimizer(lr=0.1, total_steps=10, schedule="constant", clip_norm=1.0)
  plain = optim.make_optimizer(lr=0.1, total_steps=10, schedule="constant")
  clipped_state, plain_state = clipped.init(params), plain.init(params)
  for g in grads:
    updates, clipped_state = clipped.update(g, clipped_state, params)
    scale = min(1.0, 1.0 / global_norm(g))
    scaled = jax.tree_util.tree_map(lambda x: x * scale, g)
    expected, plain_state = plain.update(scaled, plain_state, params)
  for a, b in zip(jax.tree_util.tree_leaves(updates), jax.tree_util.tree_leaves(expected)):
    np.testing.assert_allclose(a, b, rtol=1e-5)


def test_clipping_norm_counts_trainable_params_only():
  params = tiny_params()
  tx = optim.make_optimizer(name="sgd", lr=1.0, total_steps=10, schedule="constant",
                            clip_norm=1.0, trainable="^head/")
  grads = ones_like(params, 1000.0)
  grads["head"]["kernel"] = jnp.full((3, 2), 0.1)  # norm ~0.245 < 1: not clipped
  updates, _ = tx.update(grads, tx.init(params), params)
  np.testing.assert_allclose(updates["head"]["kernel"], -0.1, rtol=1e-6)
