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

Stopping on a signal (`w2s_jax.preemption`, once installed): the loop runs inside
`preemption.deferring()`, so SIGTERM or SIGINT only sets a flag; after each step it asks
`preemption.stop_after(step, last)`. On several processes that is an all-gather of the flag every
`preemption.SYNC_EVERY` steps (a wait on the device, as a metrics fetch is), so that every process
stops after the same step. On yes, the loop fetches the pending metrics (the NaN stop checks them:
no NaN state is saved), runs the step's `after_step`s, lets every hook save through `on_stop`
(Checkpointing writes that step's state) and raises `preemption.Stopped`, whose one line says
where it stopped and what is kept. A rerun resumes at that step: the stop costs only the step
that was running.
"""

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh
from tqdm.auto import tqdm

from w2s_jax import preemption, sharding
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
  desc: names the progress bar, the NaN stop's message and a signal stop's (`preemption.Stopped`).
  """
  hooks = (StopOnNaN(desc), *hooks)
  with preemption.deferring():
    params, step = _run(step_fn, state, epoch_batches, n_steps, mesh, hooks, desc)
  preemption.stop_if_received(step, desc)  # a signal while the hooks ended: stop before the caller goes on
  return params


def _run(step_fn: StepFn, state: TrainState, epoch_batches: EpochBatches, n_steps: int, mesh: Mesh,
         hooks: Sequence[Hook], desc: str) -> tuple[Any, int]:
  """`run`'s body, inside `preemption.deferring()`: (the parameters the hooks choose, the last step)."""
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
    stop = preemption.stop_after(step, last)
    pending.append(metrics)
    bar.update(1)
    fetched = []
    if stop or any(hook.needs_metrics(step, last) for hook in hooks):
      fetched, pending = jax.device_get(pending), []  # the loop's one wait on the device (and stop_after's gather)
    for hook in hooks:
      hook.after_step(step, state, fetched, last)
    if stop:
      bar.close()
      kept = [what for hook in hooks if (what := hook.on_stop(step, state))]
      raise preemption.stopped_at(step, desc, kept)
  bar.close()
  for hook in hooks:
    hook.on_end(step, state)
  params = state.params
  for hook in hooks:
    params = hook.final_params(params)
  return params, step
