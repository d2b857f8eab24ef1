"""The training loop and the batched inference that every stage of the protocol is made of.

`train` fine-tunes a Classifier on (tokenized examples, soft targets); `predict_logits`
gives class logits in data order (weak labels are their softmax; test AUROC ranks by their
margin, which float32 probabilities would tie once a model is confident); `features` gives
pooled features (the cached linear probe trains its head on them).
The loop never waits on the device between steps: metrics are fetched every
`log_every` steps, batches are prefetched onto the devices one step ahead.
"""

import dataclasses
import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.sharding import Mesh
from tqdm.auto import tqdm

from w2s_jax import sharding
from w2s_jax.data.batching import TokenizedSet, batch_order, batches, split_boundaries
from w2s_jax.errors import UserError
from w2s_jax.models.checkpoints import LoadedModel
from w2s_jax.train import losses, optim, state as state_lib, steps
from w2s_jax.train.selection import BestCheckpoint


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  batch_size: int = 32          # global batch (the paper code's 32)
  microbatches: int = 1         # gradient accumulation inside the step
  epochs: float = 2.0
  lr: float = 5e-5
  optimizer: str = "adam"       # adam | adamw | adafactor
  schedule: str = "cosine"      # cosine (to 0) | constant
  warmup_steps: int = 0
  weight_decay: float = 0.0
  clip_norm: float | None = None
  loss: str = "xent"
  loss_kwargs: tuple[tuple[str, Any], ...] = ()
  linear_probe: bool = False    # train only the head
  cache_features: bool = True   # linear probe: compute pooled features once, train the head on them
  bucket: bool = False          # group examples of similar length into batches (config_base: why off)
  length_buckets: int = 16      # at most this many padded lengths (compiles) per split, fitted to it
  length_multiple: int = 1      # padded lengths are multiples of this
  log_every: int = 10
  checkpoint_every: int = 0     # 0: only at the end
  seed: int = 0


def total_steps(n_examples: int, cfg: TrainConfig) -> int:
  return max(1, math.ceil(cfg.epochs * math.ceil(n_examples / cfg.batch_size)))


def _prefetch(iterator: Iterator[dict[str, np.ndarray]], mesh: Mesh, size: int = 2) -> Iterator[dict[str, jax.Array]]:
  """Put batches on the devices `size` steps ahead (transfers overlap the running step)."""
  queue: list[dict[str, jax.Array]] = []
  for batch in iterator:
    queue.append(sharding.global_batch(batch, mesh))
    if len(queue) >= size:
      yield queue.pop(0)
  yield from queue


def _feature_batches(features: np.ndarray, labels: np.ndarray, targets: np.ndarray, batch_size: int, *,
                     seed: int, epoch: int, lengths: np.ndarray | None = None,
                     bucket: bool = False) -> Iterator[dict[str, np.ndarray]]:
  """Shuffled fixed-size batches of cached features; the last one padded with weight-0 rows.

  With `bucket` and the examples' token `lengths`, rows meet in batches exactly as the
  fine-tuning path's length-bucketed batches would group them (`batch_order`): features
  need no padding, but which rows share a batch changes batch-level losses (logconf's
  threshold), so `train.bucket` means the same on both paths.
  """
  n = len(features)
  if lengths is None:
    lengths, bucket = np.zeros(n, np.int64), False
  process, count = jax.process_index(), jax.process_count()
  for rows in batch_order(np.asarray(lengths), batch_size, shuffle=True, seed=seed, epoch=epoch, bucket=bucket):
    pad = batch_size - len(rows)
    idx = np.concatenate([rows, np.zeros(pad, np.int64)])
    weight = np.concatenate([np.ones(len(rows), np.float32), np.zeros(pad, np.float32)])
    batch = {"features": features[idx].astype(np.float32), "labels": labels[idx].astype(np.int32),
             "targets": targets[idx].astype(np.float32), "weight": weight,
             "index": np.where(weight > 0, idx, -1).astype(np.int32)}
    block = batch_size // count
    yield {k: v[process * block:(process + 1) * block] for k, v in batch.items()}


def _checkpoint_manager(directory: Path | None, cfg: TrainConfig) -> ocp.CheckpointManager | None:
  if directory is None:
    return None
  options = ocp.CheckpointManagerOptions(max_to_keep=1, save_interval_steps=max(cfg.checkpoint_every, 1),
                                         enable_async_checkpointing=False)
  return ocp.CheckpointManager(Path(directory).absolute(), options=options)


def train(model: LoadedModel, data: TokenizedSet, mesh: Mesh, cfg: TrainConfig, *,
          targets: np.ndarray | None = None, pad_id: int = 0, checkpoint_dir: Path | None = None,
          log: Callable[[int, dict[str, float]], None] | None = None, select: BestCheckpoint | None = None,
          desc: str = "train") -> Any:
  """Fine-tune `model` on tokenized `data` against soft `targets` [N, C] (default: one-hot ground truth).

  With `cfg.linear_probe` only the head trains (and with `cfg.cache_features` the pooled
  features are computed once and the backbone never runs again). Returns the trained
  params (with `select`, the parameters it scored best instead of the last). With `checkpoint_dir`, the
  state is saved every `cfg.checkpoint_every` steps and
  at the end, and a rerun resumes from the latest save.
  """
  if cfg.linear_probe and cfg.cache_features:
    cached = features(model, model.params, data, mesh, batch_size=cfg.batch_size, pad_id=pad_id,
                      length_buckets=cfg.length_buckets, length_multiple=cfg.length_multiple,
                      desc=f"{desc}: caching features")
    return train_head(model, cached, data.labels, mesh, cfg, targets=targets, lengths=data.lengths,
                      checkpoint_dir=checkpoint_dir, log=log, select=select, desc=desc)

  # The padded lengths depend on the split alone: fitted once, not once per epoch.
  boundaries = split_boundaries(data.lengths, cfg.batch_size, cfg.length_buckets, cfg.length_multiple)

  def epoch_batches(epoch: int):
    return batches(data, cfg.batch_size, targets=targets, shuffle=True, seed=cfg.seed, epoch=epoch,
                   bucket=cfg.bucket, pad_id=pad_id, boundaries=boundaries,
                   process_index=jax.process_index(), process_count=jax.process_count())

  return _run(model, epoch_batches, len(data), mesh, cfg, on_features=False, checkpoint_dir=checkpoint_dir,
              log=log, select=select, desc=desc)


def train_head(model: LoadedModel, cached_features: np.ndarray, labels: np.ndarray, mesh: Mesh,
               cfg: TrainConfig, *, targets: np.ndarray | None = None, lengths: np.ndarray | None = None,
               checkpoint_dir: Path | None = None, log: Callable[[int, dict[str, float]], None] | None = None,
               select: BestCheckpoint | None = None, desc: str = "train head") -> Any:
  """Train only the head on cached pooled features [N, D] (the fast linear probe).

  `model.params` needs only the head: the backbone is never run here. `lengths` [N] are the
  examples' token counts: with `cfg.bucket`, batches group similar lengths as in `train`.
  """
  cfg = dataclasses.replace(cfg, linear_probe=True, microbatches=1)
  if targets is None:
    targets = np.eye(model.module.num_labels, dtype=np.float32)[labels]

  def epoch_batches(epoch: int):
    return _feature_batches(cached_features, labels, targets, cfg.batch_size, seed=cfg.seed, epoch=epoch,
                            lengths=lengths, bucket=cfg.bucket)

  return _run(model, epoch_batches, len(labels), mesh, cfg, on_features=True, checkpoint_dir=checkpoint_dir,
              log=log, select=select, desc=desc)


def _run(model: LoadedModel, epoch_batches: Callable[[int], Iterator[dict[str, np.ndarray]]], n_examples: int,
         mesh: Mesh, cfg: TrainConfig, *, on_features: bool, checkpoint_dir: Path | None,
         log: Callable[[int, dict[str, float]], None] | None, desc: str,
         select: BestCheckpoint | None = None) -> Any:
  """The loop itself: optimizer, sharded state, resume, steps, metrics, checkpoints, selection."""
  n_steps = total_steps(n_examples, cfg)
  tx = optim.make_optimizer(name=cfg.optimizer, lr=cfg.lr, total_steps=n_steps, schedule=cfg.schedule,
                            warmup_steps=cfg.warmup_steps, weight_decay=cfg.weight_decay,
                            clip_norm=cfg.clip_norm)
  loss_fn = losses.get_loss(cfg.loss, **dict(cfg.loss_kwargs))
  state, state_shardings, trainable = state_lib.create(model.params, tx, mesh, linear_probe=cfg.linear_probe)
  step_fn = steps.jit_train_step(
      steps.make_train_step(model.module, tx, loss_fn, total_steps=n_steps, trainable=trainable,
                            microbatches=cfg.microbatches, mesh=mesh, on_features=on_features),
      state_shardings, mesh)

  manager = _checkpoint_manager(checkpoint_dir, cfg)
  start = 0
  if manager is not None and manager.latest_step() is not None:
    start = manager.latest_step()
    abstract = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), state,
                            state_shardings)
    state = manager.restore(start, args=ocp.args.StandardRestore(abstract))
    state = state_lib.TrainState(*state) if not isinstance(state, state_lib.TrainState) else state
  if select is not None:
    select.restore(jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
                                state.params))

  def all_batches():
    step, epoch = 0, 0
    while True:
      for batch in epoch_batches(epoch):
        if step >= n_steps:
          return
        if step >= start:  # resuming: skip what the checkpoint already saw, in the same order
          batch.pop("index", None)
          yield batch
        step += 1
      epoch += 1

  pending: list[dict[str, jax.Array]] = []
  step = start
  bar = tqdm(total=n_steps, initial=start, desc=desc, disable=None, leave=False)
  for batch in _prefetch(all_batches(), mesh):
    state, metrics = step_fn(state, batch)
    step += 1
    pending.append(metrics)
    bar.update(1)
    save = manager is not None and (step == n_steps or (cfg.checkpoint_every and step % cfg.checkpoint_every == 0))
    if step % cfg.log_every == 0 or step == n_steps:
      _flush(pending, step, log, desc)
      pending = []
    elif save:
      # Never checkpoint a NaN state: every loss since the last log is checked before a save
      # (a resumed run would otherwise start from poisoned parameters).
      _check_finite(jax.device_get([m["loss"] for m in pending]), step, desc)
    if save:
      manager.save(step, args=ocp.args.StandardSave(state), force=True)
    if select is not None:
      select.observe(step, state.params, last=step == n_steps)
  bar.close()
  if manager is not None:
    manager.wait_until_finished()
    manager.close()
  if select is not None:
    # The last step is always scored (a no-op if it was, e.g. before an interruption).
    select.observe(step, state.params, last=True)
    return select.best_params
  return state.params


def _check_finite(losses: list[Any], step: int, desc: str) -> None:
  """Stop on the first NaN/inf among the losses of steps step - len(losses) + 1 … step."""
  first_step = step - len(losses) + 1
  for i, loss in enumerate(losses):
    if not np.isfinite(loss):
      raise UserError(f"{desc}: the loss became {loss} at step {first_step + i}; lower the learning "
                      "rate or use dtype=float32 (checkpoints saved before this step are kept)")


def _flush(pending: list[dict[str, jax.Array]], step: int, log, desc: str) -> None:
  """Fetch queued step metrics (the only host sync of the loop besides saves); stop on a NaN loss."""
  fetched = jax.device_get(pending)
  _check_finite([m["loss"] for m in fetched], step, desc)
  if log is not None:
    mean = {k: float(np.mean([m[k] for m in fetched])) for k in fetched[-1]}
    log(step, mean)


# Jitted eval steps by (module, mesh, features_only, param shardings): checkpoint selection scores a
# validation set every few steps, and a fresh jax.jit per call would compile every time.
_EVAL_STEPS: dict[tuple, tuple[Any, Callable]] = {}


def _eval_step(model: LoadedModel, params: Any, mesh: Mesh, features_only: bool) -> Callable:
  param_shardings = jax.tree.map(lambda x: x.sharding, params)
  leaves, treedef = jax.tree.flatten(param_shardings)
  key = (id(model.module), id(mesh), features_only, treedef, tuple(leaves))
  if key not in _EVAL_STEPS:
    if len(_EVAL_STEPS) > 32:  # one sweep touches few models; do not keep old ones alive forever
      _EVAL_STEPS.clear()
    # The module is kept with its step, so that its id cannot be reused while the entry lives.
    _EVAL_STEPS[key] = (model.module, steps.make_eval_step(model.module, mesh, param_shardings,
                                                           features_only=features_only))
  return _EVAL_STEPS[key][1]


def _inference(model: LoadedModel, params: Any, data: TokenizedSet, mesh: Mesh, *, batch_size: int,
               pad_id: int, features_only: bool, desc: str, length_buckets: int = 16,
               length_multiple: int = 1) -> np.ndarray:
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
      out = np.zeros((len(data.labels), values.shape[-1]), np.float32)
    real = index >= 0
    out[index[real]] = values[real]
  return out


def predict_logits(model: LoadedModel, params: Any, data: TokenizedSet, mesh: Mesh, *, batch_size: int = 32,
                   pad_id: int = 0, length_buckets: int = 16, length_multiple: int = 1,
                   desc: str = "predict") -> np.ndarray:
  """Class logits [N, C] float32, in the order of `data` (`softmax` gives the probabilities)."""
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
