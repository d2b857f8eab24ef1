"""The pure, jitted steps: `train_step(state, batch) -> (state, metrics)` and `eval_step(params, batch)`.

A batch is a dict of global arrays split over every device along the batch axis:
  input_ids [B, T] int32, attention_mask [B, T] int32, labels [B] int32 (ground truth),
  targets [B, C] float32 (the supervisor's soft labels), weight [B] float32 (the row's share of
  the loss: 0 = padding row, 1 = a full example, fractions down-weight it).
For the cached-feature linear probe, `features` [B, D] replaces input_ids/attention_mask.

Gradient accumulation runs *inside* the step with `lax.scan` over microbatches, so a
batch of 32 fits models whose activations for 32 sequences do not. Microbatch m takes
rows m, m + M, m + 2M, … so every microbatch stays spread over all devices. A loss that
needs statistics of the whole batch (`losses.Loss.needs_batch_statistics`: logconf's
threshold) gets them from a first scan without gradients over the same microbatches,
so that accumulation changes nothing but memory: one extra forward pass per step, only
for such a loss and only when microbatches > 1.
"""

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from w2s_jax import sharding
from w2s_jax.train import lora as lora_lib, metrics as metrics_lib
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
                    mesh: Mesh | None = None, on_features: bool = False,
                    logits_fn: Callable | None = None, lora: bool = False) -> Callable:
  """A pure train step for a Classifier; jit it with `jit_train_step`.

  loss_fn: loss_fn(logits, targets, weight, progress) -> (loss, aux), e.g. `losses.get_loss(...)`.
    If it declares `needs_batch_statistics` (a `losses.Loss`) and microbatches > 1, its
    `batch_statistics` are computed once on the whole batch by a forward pass without
    gradients and passed to each microbatch's call as `stats=`; the reported `loss/…`
    metrics are then whole-batch values.
  trainable: top-level parameter groups that receive gradients (("head",) for a linear
    probe: the backbone is closed over as a constant, so no backbone gradient exists).
  on_features: the batch carries cached pooled `features` and only the head runs.
  logits_fn: logits_fn(module, params, microbatch) -> logits [B, C], for a module that is not a
    Classifier: a language model scoring candidate completions (`w2s_jax.train.choices`),
    whose [B, K] candidate log-likelihoods every loss above reads as class logits.
  lora: the state's params are LoRA train params (`lora.adapt`: head, adapters, scale) and the step is
    `train_step(state, batch, backbone)`: the adapters are merged into the frozen `backbone` inside the
    loss (W + alpha/r · A·B), so gradients reach the adapters and the head only.
  """

  def model_params(params, backbone):
    """The params the module takes: with LoRA, the adapters merged into the frozen backbone."""
    return lora_lib.merged(params, backbone) if lora else params

  def logits_of(params, mb):
    if logits_fn is not None:
      return logits_fn(module, params, mb)
    if on_features:
      return module.apply({"params": params}, mb["features"], method="classify")
    return module.apply({"params": params}, mb["input_ids"], mb["attention_mask"])

  def weighted_loss(train_params, frozen_params, backbone, mb, progress, stats):
    logits = logits_of(model_params({**frozen_params, **train_params}, backbone), mb)
    if stats is None:
      loss, aux = loss_fn(logits, mb["targets"], mb["weight"], progress)
    else:
      loss, aux = loss_fn(logits, mb["targets"], mb["weight"], progress, stats=stats)
    n = jnp.sum(mb["weight"])
    # Scaled by the microbatch's sum of weights, so that the sum over microbatches / the batch's
    # sum of weights equals the loss of the whole batch (padding-only microbatches add nothing).
    return loss * n, (logits, aux)

  grad_fn = jax.value_and_grad(weighted_loss, has_aux=True)
  needs_stats = getattr(loss_fn, "needs_batch_statistics", False)

  def whole_batch_statistics(params, mbs, rows, progress):
    """The loss's statistics of the whole batch, from a forward pass without gradients; None if it has none."""
    targets, weight = rows["targets"], rows["weight"]  # [B, C], [B]
    # Whether this loss has statistics for these shapes (logconf: binary only), known at trace time.
    abstract = lambda x: jax.ShapeDtypeStruct(jnp.shape(x), jnp.result_type(x))
    shapes = jax.eval_shape(loss_fn.batch_statistics, jax.ShapeDtypeStruct(targets.shape, jnp.float32),
                            abstract(targets), abstract(weight), abstract(progress))
    if not shapes:
      return None
    params = jax.lax.stop_gradient(params)
    # A scan, like the gradient pass, so that only one microbatch's activations are live.
    _, logits = jax.lax.scan(lambda carry, mb: (carry, logits_of(params, mb)), None, mbs)  # [M, B/M, C]
    # Rows in the order of `rows` (microbatch-major), which is all the statistics need to agree on.
    logits = logits.reshape(-1, logits.shape[-1])  # [B, C]
    return loss_fn.batch_statistics(logits, targets, weight, progress)

  def train_step(state: TrainState, batch: dict[str, jax.Array],
                 backbone: Any = None) -> tuple[TrainState, dict[str, jax.Array]]:
    train_params, frozen_params = split_params(state.params, trainable)
    progress = state.step.astype(jnp.float32) / max(total_steps, 1)
    # The batch's sum of weights; 1 for padding only (then every sum is 0). Not max(sum, 1): rows
    # of fractional weight may sum to less than 1, and their loss is still their weighted mean.
    total_weight = jnp.sum(batch["weight"])
    n_total = jnp.where(total_weight > 0, total_weight, 1.0)

    def accumulate(stats):
      def body(grads_sum, mb):
        (loss_times_rows, (logits, aux)), grads = grad_fn(train_params, frozen_params, backbone, mb, progress,
                                                          stats)
        return jax.tree.map(jnp.add, grads_sum, grads), (logits, loss_times_rows, aux)
      return body

    zeros = jax.tree.map(jnp.zeros_like, train_params)
    if microbatches == 1:
      # One call on the whole batch: the loss computes its own statistics, no extra pass.
      grads_sum, (logits, loss_sum, aux) = accumulate(None)(zeros, batch)
      rows = batch
    else:
      mbs = _microbatches(batch, microbatches, mesh)
      rows = jax.tree.map(lambda x: x.reshape(-1, *x.shape[2:]), mbs)  # [B, …], microbatch-major
      stats = (whole_batch_statistics(model_params(state.params, backbone), mbs, rows, progress)
               if needs_stats else None)
      grads_sum, (logits, loss_sums, auxes) = jax.lax.scan(accumulate(stats), zeros, mbs)
      loss_sum = loss_sums.sum()
      # Each aux is a mean over its microbatch's real rows (or the same whole-batch value in all of
      # them), so their mean weighted by real rows is the whole batch's; uniform for a padding-only batch.
      rows_per_mb = jnp.sum(mbs["weight"], axis=1)  # [M]
      total = jnp.sum(rows_per_mb)
      share = jnp.where(total > 0, rows_per_mb / jnp.maximum(total, jnp.finfo(jnp.float32).tiny),
                        1.0 / microbatches)  # [M]
      aux = jax.tree.map(lambda v: jnp.einsum("m,m...->...", share, v.astype(jnp.float32)), auxes)
      logits = logits.reshape(-1, logits.shape[-1])
    # Keep each gradient in its parameter's dtype: an fp32 divisor would promote bf16 gradients, and with
    # them the updated bf16 parameters and moments, so the donated state could not be written in place.
    grads = jax.tree.map(lambda g: (g / n_total).astype(g.dtype), grads_sum)
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


def jit_train_step(train_step: Callable, state_shardings: TrainState, mesh: Mesh, *,
                   backbone: Any = None) -> Callable:
  """jit with the state's shardings in and out, the batch split over devices, the state donated.

  backbone: LoRA's frozen backbone (a step made with `lora=True`): passed to every call in its own
    shardings, never donated; the returned step still takes (state, batch).
  """
  out_shardings = (state_shardings, sharding.replicated(mesh))
  if backbone is None:
    return jax.jit(train_step, in_shardings=(state_shardings, sharding.batch_sharding(mesh)),
                   out_shardings=out_shardings, donate_argnums=0)
  backbone_shardings = jax.tree.map(lambda x: x.sharding, backbone)
  jitted = jax.jit(train_step, in_shardings=(state_shardings, sharding.batch_sharding(mesh), backbone_shardings),
                   out_shardings=out_shardings, donate_argnums=0)
  # An argument, not a closed-over constant: a constant would be baked into the compiled program.
  return lambda state, batch: jitted(state, batch, backbone)


def make_eval_step(module: nn.Module, mesh: Mesh, param_shardings: Any, *,
                   features_only: bool = False) -> Callable:
  """eval_step(params, batch) -> (float32 logits [B, C] or pooled features [B, D], batch index [B]).

  Logits, not probabilities: callers take the softmax themselves, and rank-based metrics
  (AUROC) must use logit margins, since float32 probabilities of a confident model
  saturate to ties at 1.0. Outputs are replicated so every host can read the whole
  batch; `index` says which example each row is (-1 for padding rows).
  """

  def eval_step(params, batch):
    ids, mask = batch["input_ids"], batch["attention_mask"]
    if features_only:
      out = module.apply({"params": params}, ids, mask, method="features")
    else:
      out = module.apply({"params": params}, ids, mask)
    return out.astype(jnp.float32), batch["index"]

  return jax.jit(eval_step, in_shardings=(param_shardings, sharding.batch_sharding(mesh)),
                 out_shardings=sharding.replicated(mesh))
