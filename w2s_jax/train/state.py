"""The train state: a plain pytree (step, params, optimizer state), and its shardings.

Only the *trainable* part of the parameters has optimizer state. In linear-probe
mode that is the head alone, so the backbone carries no Adam moments and no
gradient is ever computed for it. With LoRA (`w2s_jax.train.lora`) the state's params
are the head, the adapters and their constant scale, and the frozen backbone is not in
the state at all (the step takes it as an argument), so checkpoints do not hold it.
"""

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from w2s_jax import sharding
from w2s_jax.train import lora


class TrainState(NamedTuple):
  step: jax.Array  # scalar int32, replicated
  params: Any      # {"backbone": …, "head": …}; with LoRA {"head": …, "lora": …, "lora_scale": …}
  opt_state: Any   # optimizer state of the trainable params only


# Top-level groups that are constants of the parametrisation, never trained: LoRA's alpha / rank.
CONSTANTS = (lora.SCALE,)


def trainable_keys(params: Any, linear_probe: bool) -> tuple[str, ...]:
  """Top-level parameter groups that train: the head alone for a linear probe, else all but the constants."""
  if linear_probe:
    if "head" not in params:
      raise ValueError("linear_probe needs a classifier with a 'head'")
    return ("head",)
  return tuple(k for k in params if k not in CONSTANTS)


def split_params(params: Any, keys: tuple[str, ...]) -> tuple[dict, dict]:
  """(trainable, frozen) by top-level key."""
  return ({k: v for k, v in params.items() if k in keys}, {k: v for k, v in params.items() if k not in keys})


def opt_state_shardings(tx: optax.GradientTransformation, trainable: Any, trainable_shardings: Any,
                        mesh: Mesh) -> Any:
  """Derive optimizer-state shardings from the parameters' own (moments follow their parameter;
  scalars such as Adam's count are replicated)."""
  abstract_state = jax.eval_shape(tx.init, trainable)
  return optax.tree_map_params(tx, lambda _, s: s, abstract_state, trainable_shardings,
                               transform_non_params=lambda _: sharding.replicated(mesh))


def create(params: Any, tx: optax.GradientTransformation, mesh: Mesh, *,
           linear_probe: bool = False) -> tuple[TrainState, TrainState, tuple[str, ...]]:
  """A fresh TrainState (optimizer state born sharded) and the TrainState of its shardings."""
  keys = trainable_keys(params, linear_probe)
  trainable, _ = split_params(params, keys)
  param_shardings = jax.tree.map(lambda x: x.sharding, params)
  trainable_shardings, _ = split_params(param_shardings, keys)
  opt_shardings = opt_state_shardings(tx, trainable, trainable_shardings, mesh)
  opt_state = jax.jit(tx.init, out_shardings=opt_shardings)(trainable)
  shardings = TrainState(step=sharding.replicated(mesh), params=param_shardings, opt_state=opt_shardings)
  step = jax.device_put(jnp.zeros((), jnp.int32), sharding.replicated(mesh))
  return TrainState(step, params, opt_state), shardings, keys
