"""The pure, jitted steps: `train_step(state, batch) -> (state, metrics)` and `eval_step(params, batch)`.

A batch is a dict of global arrays split over every device along the batch axis:
  input_ids [B, T] int32, attention_mask [B, T] int32, labels [B] int32 (ground truth),
  targets [B, C] float32 (the supervisor's soft labels), weight [B] float32 (0 = padding row).
For the cached-feature linear probe, `features` [B, D] replaces input_ids/attention_mask.

Gradient accumulation runs *inside* the step with `lax.scan` over microbatches, so a
batch of 32 fits models whose activations for 32 sequences do not. Microbatch m takes
rows m, m + M, m + 2M, … so every microbatch stays spread over all devices.
"""

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from w2s_jax import sharding
from w2s_jax.train import metrics as metrics_lib
from w2s_jax.train.state import TrainState, split_params

LossFn = Callable[..., tuple[jax.Array, dict[str, jax.Array]]]


def _microbatches(batch: dict[str, jax.Array], num: int, mesh: Mesh | None) -> dict[str, jax.Array]:
  """[B, …] -> [M, B/M, …], microbatch m = rows m, m+M, … (strided, so each stays on all devices)."""
  def split(x):
    b = x.shape[0]
    if b % num:
      raise ValueError(f"batch of {b} rows does not split into {num} microbatches")
    x = jnp.swapaxes(x.reshape(b // num, num, *x.shape[1:]), 0, 1)
    if mesh is not None:
      spec = P(None, sharding.BATCH_AXES, *([None] * (x.ndim - 2)))
      x = jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec))
    return x
  return jax.tree.map(split, batch)


def make_train_step(module: nn.Module, tx: optax.GradientTransformation, loss_fn: LossFn, *,
                    total_steps: int, trainable: tuple[str, ...], microbatches: int = 1,
                    mesh: Mesh | None = None, on_features: bool = False) -> Callable:
  """A pure train step for a Classifier; jit it with `jit_train_step`.

  trainable: top-level parameter groups that receive gradients (("head",) for a linear
    probe: the backbone is closed over as a constant, so no backbone gradient exists).
  on_features: the batch carries cached pooled `features` and only the head runs.
  """

  def logits_of(params, mb):
    if on_features:
      return module.apply({"params": params}, mb["features"], method="classify")
    return module.apply({"params": params}, mb["input_ids"], mb["attention_mask"])

  def weighted_loss(train_params, frozen_params, mb, progress):
    logits = logits_of({**frozen_params, **train_params}, mb)
    loss, aux = loss_fn(logits, mb["targets"], mb["weight"], progress)
    n = jnp.sum(mb["weight"])
    # Scaled by the microbatch's real rows, so that the sum over microbatches / all rows
    # equals the loss of the whole batch (padding-only microbatches add nothing).
    return loss * n, (logits, aux)

  grad_fn = jax.value_and_grad(weighted_loss, has_aux=True)

  def train_step(state: TrainState, batch: dict[str, jax.Array]) -> tuple[TrainState, dict[str, jax.Array]]:
    train_params, frozen_params = split_params(state.params, trainable)
    progress = state.step.astype(jnp.float32) / max(total_steps, 1)
    n_total = jnp.maximum(jnp.sum(batch["weight"]), 1.0)

    def accumulate(grads_sum, mb):
      (loss_times_rows, (logits, aux)), grads = grad_fn(train_params, frozen_params, mb, progress)
      return jax.tree.map(jnp.add, grads_sum, grads), (logits, loss_times_rows, aux)

    zeros = jax.tree.map(jnp.zeros_like, train_params)
    if microbatches == 1:
      grads_sum, (logits, loss_sum, aux) = accumulate(zeros, batch)
      rows = batch
    else:
      mbs = _microbatches(batch, microbatches, mesh)
      grads_sum, (logits, loss_sums, auxes) = jax.lax.scan(accumulate, zeros, mbs)
      loss_sum = loss_sums.sum()
      aux = jax.tree.map(jnp.mean, auxes)
      logits = logits.reshape(-1, logits.shape[-1])
      rows = jax.tree.map(lambda x: x.reshape(-1, *x.shape[2:]), mbs)
    grads = jax.tree.map(lambda g: g / n_total, grads_sum)
    updates, opt_state = tx.update(grads, state.opt_state, train_params)
    train_params = optax.apply_updates(train_params, updates)
    new_state = TrainState(state.step + 1, {**frozen_params, **train_params}, opt_state)
    step_metrics = {
        "loss": loss_sum / n_total,
        "accuracy": metrics_lib.accuracy(logits, rows["labels"], rows["weight"]),
        "agreement": metrics_lib.agreement(logits, rows["targets"], rows["weight"]),
        "grad_norm": optax.global_norm(grads),
        "progress": progress,
        **{f"loss/{k}": v for k, v in aux.items()},
    }
    return new_state, step_metrics

  return train_step


def jit_train_step(train_step: Callable, state_shardings: TrainState, mesh: Mesh) -> Callable:
  """jit with the state's shardings in and out, the batch split over devices, the state donated."""
  return jax.jit(train_step, in_shardings=(state_shardings, sharding.batch_sharding(mesh)),
                 out_shardings=(state_shardings, sharding.replicated(mesh)), donate_argnums=0)


def make_eval_step(module: nn.Module, mesh: Mesh, param_shardings: Any, *,
                   features_only: bool = False) -> Callable:
  """eval_step(params, batch) -> (class probabilities [B, C] or pooled features [B, D], batch index [B]).

  Outputs are replicated so every host can read the whole batch; `index` says which
  example each row is (-1 for padding rows).
  """

  def eval_step(params, batch):
    ids, mask = batch["input_ids"], batch["attention_mask"]
    if features_only:
      out = module.apply({"params": params}, ids, mask, method="features")
    else:
      out = jax.nn.softmax(module.apply({"params": params}, ids, mask).astype(jnp.float32), axis=-1)
    return out.astype(jnp.float32), batch["index"]

  return jax.jit(eval_step, in_shardings=(param_shardings, sharding.batch_sharding(mesh)),
                 out_shardings=sharding.replicated(mesh))
