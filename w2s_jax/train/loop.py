"""The training loop: a jitted step over batch iterators, with hooks between the steps.

`run(step_fn, state, epoch_batches, n_steps, mesh, hooks=…)` runs `step_fn(state, batch) ->
(state, metrics)` for `n_steps` steps, over the batches of epoch 0, 1, … from `epoch_batches(epoch)`,
and returns the parameters (the last ones, unless a hook's `final_params` picks others). It knows
nothing of the data or the model: `w2s_jax.train.fit` builds the step and the batches.

Everything else that happens between steps — checkpoints and resumption, metric logs, the NaN stop,
checkpoint selection — is a hook (`w2s_jax.train.hooks`, where the calls and their order are
described). The NaN stop (`hooks.StopOnNaN`) is always on: the loop puts it before the given hooks.

The loop never waits on the device between steps: batches are put on the devices a step ahead,
and the step's metrics stay on the device until a hook asks for them (`needs_metrics`: a log
interval, a save, an evaluation), when those of every step since the last fetch come at once.
Resuming (a hook's `on_start` returns a state whose `step` is k > 0) skips the first k batches, in
the same order, so a resumed run sees exactly the batches a run that never stopped would.
"""

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh
from tqdm.auto import tqdm

from w2s_jax import sharding
from w2s_jax.train.hooks import Hook, StopOnNaN
from w2s_jax.train.state import TrainState

StepFn = Callable[[TrainState, dict[str, jax.Array]], tuple[TrainState, dict[str, jax.Array]]]
EpochBatches = Callable[[int], Iterator[dict[str, np.ndarray]]]


def _prefetch(iterator: Iterator[dict[str, np.ndarray]], mesh: Mesh, size: int = 2) -> Iterator[dict[str, jax.Array]]:
  """Put batches on the devices `size` steps ahead (transfers overlap the running step)."""
  queue: list[dict[str, jax.Array]] = []
  for batch in iterator:
    queue.append(sharding.global_batch(batch, mesh))
    if len(queue) >= size:
      yield queue.pop(0)
  yield from queue


def _steps_batches(epoch_batches: EpochBatches, start: int, n_steps: int) -> Iterator[dict[str, np.ndarray]]:
  """The batches of steps start + 1 … n_steps, epoch after epoch."""
  step, epoch = 0, 0
  while True:
    for batch in epoch_batches(epoch):
      if step >= n_steps:
        return
      if step >= start:  # resuming: skip what the restored state already saw, in the same order
        yield batch
      step += 1
    epoch += 1


def run(step_fn: StepFn, state: TrainState, epoch_batches: EpochBatches, n_steps: int, mesh: Mesh, *,
        hooks: Sequence[Hook] = (), desc: str = "train") -> Any:
  """Train for `n_steps` steps from `state` and return the parameters the hooks choose (default: the last).

  step_fn: a jitted, state-donating step (`steps.jit_train_step`); its metrics include "loss".
  state: the initial state; a hook's `on_start` may replace it (a restored checkpoint).
  epoch_batches: epoch -> that epoch's host batches (dicts of numpy arrays: this process's rows of
    each global batch, every key one the step takes); a function of the epoch only, so that a
    resumed run sees the same batches.
  hooks: run in this order, after the NaN stop (see `w2s_jax.train.hooks`).
  desc: names the progress bar and the NaN stop's message.
  """
  hooks = (StopOnNaN(desc), *hooks)
  abstract_state = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)
  for hook in hooks:
    state = hook.on_start(state, abstract_state)
  start = int(jax.device_get(state.step))

  pending: list[dict[str, jax.Array]] = []  # metrics of the steps since the last fetch, still on device
  step = start
  bar = tqdm(total=n_steps, initial=start, desc=desc, disable=None, leave=False)
  for batch in _prefetch(_steps_batches(epoch_batches, start, n_steps), mesh):
    state, metrics = step_fn(state, batch)
    step += 1
    last = step == n_steps
    pending.append(metrics)
    bar.update(1)
    fetched = []
    if any(hook.needs_metrics(step, last) for hook in hooks):
      fetched, pending = jax.device_get(pending), []  # the loop's only wait on the device
    for hook in hooks:
      hook.after_step(step, state, fetched, last)
  bar.close()
  for hook in hooks:
    hook.on_end(step, state)
  params = state.params
  for hook in hooks:
    params = hook.final_params(params)
  return params
