"""Training and batched inference on data: what every stage of the protocol is made of.

`train` fine-tunes a Classifier on (tokenized examples, soft targets); `train_head` trains only its
head on cached pooled features. Both build the optimizer, the sharded state and the jitted step
from a `TrainConfig`, and hand them with their batches to `loop.run`; what runs between steps
(checkpoints, logs, selection) is the `hooks` they are given (`w2s_jax.train.hooks`).

`weights` [N] in [0, 1] weigh each example's share of the loss: a row of weight w counts w times
(the losses are means weighted by the batch's `weight` column, and accumulated microbatches are
scaled by their sum of weights). The step's logged metrics (accuracy, agreement) are weighted
means too.

With `cfg.lora` (rank > 0) only low-rank adapters on the backbone's kernels and the head train
(`w2s_jax.train.lora`); what `train` returns has the same form as full fine-tuning's (the
adapters merged into the backbone), and the checkpoints written meanwhile hold the adapters only.

`predict_logits` gives class logits in data order (weak labels are their softmax; test AUROC ranks
by their margin, which float32 probabilities would tie once a model is confident); `features` gives
pooled features (the cached linear probe trains its head on them).
"""

import dataclasses
import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh
from tqdm.auto import tqdm

from w2s_jax import sharding
from w2s_jax.data.batching import TokenizedSet, batch_order, batches, example_weights, split_boundaries
from w2s_jax.errors import UserError
from w2s_jax.models.checkpoints import LoadedModel
from w2s_jax.train import lora as lora_lib, loop, losses, optim, state as state_lib, steps
from w2s_jax.train.hooks import Hook


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  batch_size: int = 32          # global batch (the paper code's 32)
  microbatches: int = 1         # gradient accumulation inside the step
  epochs: float = 2.0
  lr: float = 5e-5
  optimizer: str = "adam"       # adam | adamw | adafactor | sgd
  schedule: str = "cosine"      # cosine (to 0) | constant
  warmup_steps: int = 0
  weight_decay: float = 0.0
  clip_norm: float | None = None
  loss: str = "xent"
  loss_kwargs: tuple[tuple[str, Any], ...] = ()
  linear_probe: bool = False    # train only the head
  lora: lora_lib.LoraConfig = lora_lib.LoraConfig()  # rank > 0: adapters + head train, the backbone is frozen
  cache_features: bool = True   # linear probe: compute pooled features once, train the head on them
  bucket: bool = False          # group examples of similar length into batches (config_base: why off)
  length_buckets: int = 16      # at most this many padded lengths (compiles) per split, fitted to it
  length_multiple: int = 1      # padded lengths are multiples of this
  seed: int = 0


def total_steps(n_examples: int, cfg: TrainConfig) -> int:
  """Steps of `cfg.epochs` epochs over `n_examples` (a partial last batch is a step)."""
  return max(1, math.ceil(cfg.epochs * math.ceil(n_examples / cfg.batch_size)))


def _without_index(stream: Iterator[dict[str, np.ndarray]]) -> Iterator[dict[str, np.ndarray]]:
  """The batches without `index`: the step does not take it, so it is not sent to the devices."""
  for batch in stream:
    batch.pop("index", None)
    yield batch


def _feature_batches(features: np.ndarray, labels: np.ndarray, targets: np.ndarray, batch_size: int, *,
                     seed: int, epoch: int, lengths: np.ndarray | None = None, bucket: bool = False,
                     weights: np.ndarray | None = None) -> Iterator[dict[str, np.ndarray]]:
  """Shuffled fixed-size batches of cached features; the last one padded with weight-0 rows.

  With `bucket` and the examples' token `lengths`, rows meet in batches exactly as the
  fine-tuning path's length-bucketed batches would group them (`batch_order`): features
  need no padding, but which rows share a batch changes batch-level losses (logconf's
  threshold), so `train.bucket` means the same on both paths. A real row's `weight` is its
  entry of `weights` (default 1).
  """
  n = len(features)
  weights = example_weights(weights, n)
  if lengths is None:
    lengths, bucket = np.zeros(n, np.int64), False
  process, count = jax.process_index(), jax.process_count()
  for rows in batch_order(np.asarray(lengths), batch_size, shuffle=True, seed=seed, epoch=epoch, bucket=bucket):
    pad = batch_size - len(rows)
    idx = np.concatenate([rows, np.zeros(pad, np.int64)])
    real = np.arange(batch_size) < len(rows)
    batch = {"features": features[idx].astype(np.float32), "labels": labels[idx].astype(np.int32),
             "targets": targets[idx].astype(np.float32), "weight": np.where(real, weights[idx], 0.0).astype(np.float32),
             "index": np.where(real, idx, -1).astype(np.int32)}
    block = batch_size // count
    yield {k: v[process * block:(process + 1) * block] for k, v in batch.items()}


def train(model: LoadedModel, data: TokenizedSet, mesh: Mesh, cfg: TrainConfig, *,
          targets: np.ndarray | None = None, weights: np.ndarray | None = None, pad_id: int = 0,
          hooks: Sequence[Hook] = (), desc: str = "train") -> Any:
  """Fine-tune `model` on tokenized `data` against soft `targets` [N, C] (default: one-hot ground truth).

  With `cfg.linear_probe` only the head trains (and with `cfg.cache_features` the pooled
  features are computed once and the backbone never runs again). `weights` [N]: see the module
  docstring. Returns the trained params: the last ones, or those a hook picks (`BestCheckpoint`).
  """
  if cfg.linear_probe and cfg.cache_features:
    cached = features(model, model.params, data, mesh, batch_size=cfg.batch_size, pad_id=pad_id,
                      length_buckets=cfg.length_buckets, length_multiple=cfg.length_multiple,
                      desc=f"{desc}: caching features")
    return train_head(model, cached, data.labels, mesh, cfg, targets=targets, weights=weights,
                      lengths=data.lengths, hooks=hooks, desc=desc)

  # The padded lengths depend on the split alone: fitted once, not once per epoch.
  boundaries = split_boundaries(data.lengths, cfg.batch_size, cfg.length_buckets, cfg.length_multiple)

  def epoch_batches(epoch: int):
    return _without_index(batches(
        data, cfg.batch_size, targets=targets, weights=weights, shuffle=True, seed=cfg.seed, epoch=epoch,
        bucket=cfg.bucket, pad_id=pad_id, boundaries=boundaries,
        process_index=jax.process_index(), process_count=jax.process_count()))

  return _fit(model, epoch_batches, len(data), mesh, cfg, on_features=False, hooks=hooks, desc=desc)


def train_head(model: LoadedModel, cached_features: np.ndarray, labels: np.ndarray, mesh: Mesh,
               cfg: TrainConfig, *, targets: np.ndarray | None = None, weights: np.ndarray | None = None,
               lengths: np.ndarray | None = None, hooks: Sequence[Hook] = (), desc: str = "train head") -> Any:
  """Train only the head on cached pooled features [N, D] (the fast linear probe).

  `model.params` needs only the head: the backbone is never run here. `lengths` [N] are the
  examples' token counts: with `cfg.bucket`, batches group similar lengths as in `train`.
  `weights` [N]: see the module docstring.
  """
  if cfg.lora.enabled:
    raise UserError(f"{desc}: LoRA adapts the backbone, and a head on cached features has none; "
                    "set lora.rank=0 or train.linear_probe=False")
  cfg = dataclasses.replace(cfg, linear_probe=True, microbatches=1)
  if targets is None:
    targets = np.eye(model.module.num_labels, dtype=np.float32)[labels]

  def epoch_batches(epoch: int):
    return _without_index(_feature_batches(cached_features, labels, targets, cfg.batch_size, seed=cfg.seed,
                                           epoch=epoch, lengths=lengths, bucket=cfg.bucket, weights=weights))

  return _fit(model, epoch_batches, len(labels), mesh, cfg, on_features=True, hooks=hooks, desc=desc)


def _fit(model: LoadedModel, epoch_batches: Callable[[int], Iterator[dict[str, np.ndarray]]], n_examples: int,
         mesh: Mesh, cfg: TrainConfig, *, on_features: bool, hooks: Sequence[Hook], desc: str,
         logits_fn: Callable | None = None) -> Any:
  """The optimizer, the sharded state and the jitted step of `cfg`, run by `loop.run`.

  With LoRA the state holds the adapters, the head and alpha / r (`lora.adapt`), the frozen backbone is
  the step's third argument, and what returns is merged into it: the form of full fine-tuning's params.
  """
  n_steps = total_steps(n_examples, cfg)
  lora_lib.check(cfg.lora)
  params, backbone = model.params, None
  if cfg.lora.enabled:
    if cfg.linear_probe:
      raise UserError(f"{desc}: lora.rank={cfg.lora.rank} adapts the backbone, but train.linear_probe trains the "
                      "head alone; set one of them off (lora.rank=0 or train.linear_probe=False)")
    # The adapters' init draws from the fit's own seed (the head's init has its own, at load).
    params, backbone = lora_lib.adapt(model.params, cfg.lora, cfg.seed, mesh)
  tx = optim.make_optimizer(name=cfg.optimizer, lr=cfg.lr, total_steps=n_steps, schedule=cfg.schedule,
                            warmup_steps=cfg.warmup_steps, weight_decay=cfg.weight_decay,
                            clip_norm=cfg.clip_norm)
  loss_fn = losses.get_loss(cfg.loss, **dict(cfg.loss_kwargs))
  state, state_shardings, trainable = state_lib.create(params, tx, mesh, linear_probe=cfg.linear_probe)
  step_fn = steps.jit_train_step(
      steps.make_train_step(model.module, tx, loss_fn, total_steps=n_steps, trainable=trainable,
                            microbatches=cfg.microbatches, mesh=mesh, on_features=on_features,
                            logits_fn=logits_fn, lora=backbone is not None),
      state_shardings, mesh, backbone=backbone)
  trained = loop.run(step_fn, state, epoch_batches, n_steps, mesh, hooks=hooks, desc=desc)
  return lora_lib.full_params(model.params, trained)


# Jitted eval steps by (module, mesh, features_only, param shardings): checkpoint selection scores a
# validation set every few steps, and a fresh jax.jit per call would compile every time.
_EVAL_STEPS: dict[tuple, tuple[Any, Callable]] = {}


def cached_step(model: LoadedModel, params: Any, mesh: Mesh, kind: Any,
                make: Callable[[Any], Callable]) -> Callable:
  """The jitted inference step `make(param_shardings)` of this model, mesh, `kind` and param layout,
  built once and reused (every scoring call of a fit, every validation of checkpoint selection)."""
  param_shardings = jax.tree.map(lambda x: x.sharding, params)
  leaves, treedef = jax.tree.flatten(param_shardings)
  key = (id(model.module), id(mesh), kind, treedef, tuple(leaves))
  if key not in _EVAL_STEPS:
    if len(_EVAL_STEPS) > 32:  # one sweep touches few models; do not keep old ones alive forever
      _EVAL_STEPS.clear()
    # The module is kept with its step, so that its id cannot be reused while the entry lives.
    _EVAL_STEPS[key] = (model.module, make(param_shardings))
  return _EVAL_STEPS[key][1]


def _eval_step(model: LoadedModel, params: Any, mesh: Mesh, features_only: bool) -> Callable:
  return cached_step(model, params, mesh, ("features" if features_only else "logits"),
                     lambda shardings: steps.make_eval_step(model.module, mesh, shardings,
                                                            features_only=features_only))


def _inference(model: LoadedModel, params: Any, data: TokenizedSet, mesh: Mesh, *, batch_size: int,
               pad_id: int, features_only: bool, desc: str, length_buckets: int = 16,
               length_multiple: int = 1) -> np.ndarray:
  # LoRA train params (a selection hook scores them during training) run with their merged backbone.
  params = lora_lib.full_params(model.params, params)
  eval_step = _eval_step(model, params, mesh, features_only)
  out: np.ndarray | None = None
  stream = batches(data, batch_size, shuffle=False, seed=0, bucket=True, pad_id=pad_id,
                   length_buckets=length_buckets, length_multiple=length_multiple,
                   process_index=jax.process_index(), process_count=jax.process_count())
  n_batches = math.ceil(len(data.labels) / batch_size)
  results = []
  for batch in tqdm(stream, total=n_batches, desc=desc, disable=None, leave=False):
    batch = {k: batch[k] for k in ("input_ids", "attention_mask", "index")}
    results.append(eval_step(params, sharding.global_batch(batch, mesh)))
  for values, index in jax.device_get(results):  # fetched once every batch is dispatched
    if out is None:
      out = np.zeros((len(data.labels), *values.shape[1:]), np.float32)  # [N, C], [N, D] or a pair's [N, 2, D]
    real = index >= 0
    out[index[real]] = values[real]
  return out


def predict_logits(model: LoadedModel, params: Any, data: TokenizedSet, mesh: Mesh, *, batch_size: int = 32,
                   pad_id: int = 0, length_buckets: int = 16, length_multiple: int = 1,
                   desc: str = "predict") -> np.ndarray:
  """Class logits [N, C] float32, in the order of `data` (`softmax` gives the probabilities).

  `params`: the model's, or LoRA train params (`lora.adapt`), merged here into `model.params`' backbone."""
  return _inference(model, params, data, mesh, batch_size=batch_size, pad_id=pad_id, features_only=False,
                    length_buckets=length_buckets, length_multiple=length_multiple, desc=desc)


def features(model: LoadedModel, params: Any, data: TokenizedSet, mesh: Mesh, *, batch_size: int = 32,
             pad_id: int = 0, length_buckets: int = 16, length_multiple: int = 1,
             desc: str = "features") -> np.ndarray:
  """Pooled features [N, D] float32, in the order of `data`."""
  return _inference(model, params, data, mesh, batch_size=batch_size, pad_id=pad_id, features_only=True,
                    length_buckets=length_buckets, length_multiple=length_multiple, desc=desc)


def logits_from_features(model: LoadedModel, params: Any, cached: np.ndarray) -> np.ndarray:
  """Class logits [N, C] float32 from cached features (the head alone: cheap, on one host)."""
  return np.asarray(model.module.apply({"params": params}, cached, method="classify"), np.float32)


def softmax(logits: np.ndarray) -> np.ndarray:
  """Class probabilities [N, C] float32 of logits [N, C] (max-subtracted: no overflow)."""
  z = np.asarray(logits, np.float64)
  z = np.exp(z - z.max(-1, keepdims=True))
  return (z / z.sum(-1, keepdims=True)).astype(np.float32)
