"""What runs between training steps: checkpoints, metric logs, the NaN stop, checkpoint selection.

`loop.run` calls every hook, in the order given, at these points:

    state = hook.on_start(state, abstract_state)   # before the first step (resume: return a restored state)
    hook.needs_metrics(step, last) -> bool         # after each step: must its metrics be on the host now?
    hook.after_step(step, state, metrics, last)    # after each step
    hook.on_end(step, state)                       # after the last step (also when a rerun had none left)
    params = hook.final_params(params)             # what the loop returns (starts as the last params)

or, when a signal stops the run after step `step` (`w2s_jax.preemption`), after that step's `after_step`:

    kept = hook.on_stop(step, state) -> str | None # save what a rerun needs; say what (for the message)

and then the loop raises `preemption.Stopped` (no `on_end`, no `final_params`). Before a stop the
loop fetches the metrics, so the NaN stop checks them first.

Metrics stay on the device until some hook needs them: only then does the loop fetch the queued
metrics of every step since the previous fetch, and `after_step` receives them as `metrics` (a list of
dicts of numpy scalars, the last one step `step`'s); at every other step `metrics` is []. So the
loop waits on the device only where a hook asks it to.

`StopOnNaN` is always the first hook (the loop adds it): it checks every fetched loss, and a hook
that saves asks for the metrics at its save steps, so no NaN state is ever saved.

Checkpoints (`Checkpointing`) survive a kill at any moment: orbax writes each save into a temporary
directory (`<step>.orbax-checkpoint-tmp`) and renames it when complete, and deletes the previous save
only after that, so a rerun finds the last complete one (temporary directories a kill left are
removed when the next run opens the directory). A save that fails for want of space is a one-line
UserError, and the previous save stays the one a rerun resumes from.

Checkpoint selection (`BestCheckpoint`): every `every` steps and at the last one it scores the
parameters (`score_fn(params) -> float`, higher is better) and keeps a copy of the best; its
`final_params` returns them instead of the last ones. EleutherAI/w2s's default selection is of this
kind: AUROC against a validation split labelled by the *weak* supervisor (legitimate: it uses no
ground truth); scored against ground truth instead, it is an oracle, for analysis only.
Preemption-safe: with a `directory`, the best parameters (`best_params_<step>/`) and the history of
scores (`best.json`, naming that directory) are saved there whenever the best improves, and a resumed
run reloads them, so a run interrupted after its best evaluation selects the same parameters as one
that never stopped. The parameters are written before the record that names them and the old ones
removed after, so a kill at any moment leaves a record and the parameters it names; a run resumed at
an evaluation step that the interrupted run had not scored yet scores it first. Ties keep the earlier step.
"""

import dataclasses
import errno
import json
import logging
import math
import os
import re
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from w2s_jax import artifacts
from w2s_jax.errors import UserError
from w2s_jax.train.state import TrainState

Metrics = list[dict[str, np.ndarray]]  # host metrics of consecutive steps, the last one the current step's


class Hook:
  """A hook that does nothing: subclasses override what they need (see the module docstring)."""

  def on_start(self, state: TrainState, abstract_state: TrainState) -> TrainState:
    """Before the first step; `abstract_state` has the state's shapes, dtypes and shardings.

    The loop resumes at the returned state's `step`, skipping the batches before it.
    """
    del abstract_state
    return state

  def needs_metrics(self, step: int, last: bool) -> bool:
    """Whether `after_step(step, …)` needs the metrics on the host (a sync; they are checked finite first)."""
    del step, last
    return False

  def after_step(self, step: int, state: TrainState, metrics: Metrics, last: bool) -> None:
    """After step `step` (1-based; `last` at the final one). `metrics`: see the module docstring."""
    del step, state, metrics, last

  def on_end(self, step: int, state: TrainState) -> None:
    """After the last step, `step` == state.step."""
    del step, state

  def on_stop(self, step: int, state: TrainState) -> str | None:
    """A signal stops the run after step `step`: persist what a rerun needs; return what was kept, if anything
    ("its checkpoint at step 37"), for the stop's one-line message."""
    del step, state
    return None

  def final_params(self, params: Any) -> Any:
    """The parameters the loop returns, given those of the previous hook (first: the last step's)."""
    return params


@dataclasses.dataclass
class StopOnNaN(Hook):
  """Stops with a one-line UserError at the first fetched loss that is NaN or inf.

  Always on (the loop puts it first); it asks for the metrics at the last step, so a run's losses
  are checked at least once, and checks whatever any other hook had fetched.
  """
  desc: str = "train"

  def needs_metrics(self, step: int, last: bool) -> bool:
    return last

  def after_step(self, step: int, state: TrainState, metrics: Metrics, last: bool) -> None:
    first_step = step - len(metrics) + 1
    for i, m in enumerate(metrics):
      loss = m["loss"]
      if not np.isfinite(loss):
        raise UserError(f"{self.desc}: the loss became {loss} at step {first_step + i}; lower the learning "
                        "rate or use dtype=float32 (checkpoints saved before this step are kept)")


@dataclasses.dataclass
class MetricLog(Hook):
  """Calls `log_fn(step, mean metrics of the steps since the last call)` every `every` steps and at the last.

  The means are plain means over steps (each step's metrics are already means over its batch's rows,
  weighted by `weight`).
  """
  log_fn: Callable[[int, dict[str, float]], None]
  every: int
  _since_last: Metrics = dataclasses.field(default_factory=list, init=False, repr=False)

  def __post_init__(self):
    if self.every <= 0:
      raise ValueError(f"log every {self.every} steps: must be positive")

  def on_start(self, state: TrainState, abstract_state: TrainState) -> TrainState:
    self._since_last = []  # nothing left from a run that stopped
    return state

  def needs_metrics(self, step: int, last: bool) -> bool:
    return last or step % self.every == 0

  def after_step(self, step: int, state: TrainState, metrics: Metrics, last: bool) -> None:
    self._since_last.extend(metrics)
    if self.needs_metrics(step, last) and self._since_last:
      mean = {k: float(np.mean([m[k] for m in self._since_last])) for k in self._since_last[-1]}
      self._since_last = []
      self.log_fn(step, mean)


class _HeldLogRecords(logging.Filter):
  """Holds back what orbax logs (through absl) while it saves: on a full disk it logs its own tracebacks,
  which the one-line error replaces; otherwise `release()` lets them through as they came."""

  def __init__(self):
    super().__init__()
    self.records: list[logging.LogRecord] = []
    self.logger = logging.getLogger("absl")

  def filter(self, record: logging.LogRecord) -> bool:
    self.records.append(record)
    return False

  def __enter__(self):
    self.logger.addFilter(self)
    return self

  def __exit__(self, *exc):
    self.logger.removeFilter(self)

  def release(self) -> None:
    for record in self.records:
      self.logger.handle(record)
    self.records = []


def orbax_directory(directory: artifacts.PathLike) -> epath.Path:
  """The directory as orbax takes it: an epath.Path (orbax writes gs:// itself, through tensorstore), made absolute
  if local (orbax refuses a relative one)."""
  directory = artifacts.as_path(directory)
  return directory.absolute() if artifacts.is_local(directory) else directory


def _write_error(error: BaseException, directory: epath.Path, what: str, resume: str) -> UserError | None:
  """The one-line UserError for a write that failed for a reason the user can fix (a full disk, a read-only
  directory), None for any other failure.

  orbax lets the OSError of a file it writes itself through, but tensorstore's failed array writes come as a
  ValueError that carries the OS error code (measured on a full tmpfs: "RESOURCE_EXHAUSTED: ... No space left on
  device [os_error_code='28']"); both are read here.
  """
  code = None
  for _ in range(8):  # the error and what it was raised from
    if error is None or code is not None:
      break
    if isinstance(error, OSError) and error.errno:
      code = error.errno
    elif match := re.search(r"os_error_code='?(\d+)", str(error)):
      code = int(match.group(1))
    error = error.__cause__ or error.__context__
  if code is None:
    return None
  fix = "free space on that disk" if code in (errno.ENOSPC, errno.EDQUOT) else "make it writable"
  return UserError(f"could not write {what} to {directory} ({os.strerror(code).lower()}); {fix} and rerun the same "
                   f"command to resume from {resume}")


@dataclasses.dataclass
class Checkpointing(Hook):
  """Saves the train state to `directory` (orbax) every `every` steps (0: never), at the end, and at a stop.

  A rerun with the same directory resumes from the latest complete save: deterministic batches and steps
  make its parameters those of a run that never stopped. Only the latest save is kept; saves are
  synchronous, and multi-host: every process writes its own shards. A save that fails for want of space
  (or on a read-only directory) is a one-line UserError naming the directory; the previous save is kept
  and a rerun resumes from it.
  """
  directory: artifacts.PathLike  # local, or gs:// (orbax writes there natively)
  every: int = 0
  _manager: ocp.CheckpointManager | None = dataclasses.field(default=None, init=False, repr=False)

  def __post_init__(self):
    if self.every < 0:
      raise ValueError(f"checkpoint every {self.every} steps: must be >= 0 (0: only at the end)")

  def on_start(self, state: TrainState, abstract_state: TrainState) -> TrainState:
    # cleanup_tmp_directories: a save that a kill cut short left a `<step>.orbax-checkpoint-tmp`
    # directory, which orbax never reads but would otherwise keep on disk (a whole train state).
    options = ocp.CheckpointManagerOptions(max_to_keep=1, save_interval_steps=max(self.every, 1),
                                           enable_async_checkpointing=False, cleanup_tmp_directories=True)
    self._manager = ocp.CheckpointManager(orbax_directory(self.directory), options=options)
    latest = self._manager.latest_step()
    if latest is None:
      return state
    restored = self._manager.restore(latest, args=ocp.args.StandardRestore(abstract_state))
    return restored if isinstance(restored, TrainState) else TrainState(*restored)

  def _saves_at(self, step: int, last: bool) -> bool:
    return last or bool(self.every and step % self.every == 0)

  def needs_metrics(self, step: int, last: bool) -> bool:
    # Before a save the losses since the last fetch are checked (a resumed run would otherwise
    # start from poisoned parameters).
    return self._saves_at(step, last)

  def after_step(self, step: int, state: TrainState, metrics: Metrics, last: bool) -> None:
    if self._saves_at(step, last):
      self._save(step, state)

  def on_stop(self, step: int, state: TrainState) -> str:
    if self._manager.latest_step() != step:  # not saved at this step already
      self._save(step, state)
    self._close()
    return f"its checkpoint at step {step}"

  def on_end(self, step: int, state: TrainState) -> None:
    self._close()

  def _save(self, step: int, state: TrainState) -> None:
    previous = self._manager.latest_step()
    held = _HeldLogRecords()
    try:
      with held:
        self._manager.save(step, args=ocp.args.StandardSave(state), force=True)
    except Exception as e:  # orbax's own errors are of many types: keep those a user can fix, re-raise the rest
      error = _write_error(e, orbax_directory(self.directory), f"the checkpoint of step {step}",
                           "the start of this stage" if previous is None else f"its checkpoint at step {previous}")
      if error is None:
        held.release()
        raise
      raise error from None  # orbax's logged tracebacks of this failure would bury the one line
    held.release()

  def _close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()
    self._manager = None


@dataclasses.dataclass
class BestCheckpoint(Hook):
  """Scores the parameters every `every` steps and at the last; `final_params` returns the best.

  Attributes after training: `best_step`, `best_score`, `best_params`, `history` [(step, score)].
  """
  score_fn: Callable[[Any], float]
  every: int
  directory: artifacts.PathLike | None = None
  best_step: int = -1
  best_score: float = -math.inf
  best_params: Any = None
  history: list[tuple[int, float]] = dataclasses.field(default_factory=list)

  def __post_init__(self):
    if self.every <= 0:
      raise ValueError(f"evaluate every {self.every} steps: must be positive")

  def _root(self) -> epath.Path:
    return orbax_directory(self.directory)

  def on_start(self, state: TrainState, abstract_state: TrainState) -> TrainState:
    """Reload what a previous, interrupted run of the same stage had selected (if anything), and score the
    resumed step if it is an evaluation step that run had not scored (it stopped between its checkpoint and
    its evaluation)."""
    record_file = None if self.directory is None else self._root() / "best.json"
    if record_file is not None and record_file.exists():
      record = json.loads(record_file.read_text())
      self.best_step, self.best_score = record["best_step"], record["best_score"]
      self.history = [tuple(h) for h in record["history"]]
      params_name = record.get("params", "best_params")  # (a record written before the step was in the name)
      with ocp.StandardCheckpointer() as checkpointer:
        self.best_params = checkpointer.restore(self._root() / params_name, abstract_state.params)
      self._remove_others(params_name)
    step = int(jax.device_get(state.step))
    if step > 0:
      self.observe(step, state.params, last=False)
    return state

  def needs_metrics(self, step: int, last: bool) -> bool:
    return last or step % self.every == 0  # an evaluation: never score (and save) a NaN state

  def after_step(self, step: int, state: TrainState, metrics: Metrics, last: bool) -> None:
    self.observe(step, state.params, last=last)

  def on_end(self, step: int, state: TrainState) -> None:
    # The last step is always scored (a no-op if it was; not if a rerun resumed at the end).
    self.observe(step, state.params, last=True)

  def final_params(self, params: Any) -> Any:
    return self.best_params

  def observe(self, step: int, params: Any, *, last: bool) -> None:
    """Score `params` if `step` is an evaluation step (or `last`), keeping them if they are the best."""
    if step % self.every and not last:
      return
    if self.history and step <= self.history[-1][0]:
      return  # resumed before an evaluation that already ran (training is deterministic: same params)
    score = float(self.score_fn(params))
    self.history.append((step, score))
    if score > self.best_score or self.best_params is None:
      self.best_step, self.best_score = step, score
      # A copy: the step donates its input state, so `params` is reused by the next step.
      self.best_params = jax.tree.map(jnp.copy, params)
      self._save()
    elif self.directory is not None:
      self._save(params_too=False)

  def _save(self, params_too: bool = True) -> None:
    """The best parameters (if new), then the record that names them, then the removal of older ones."""
    if self.directory is None:
      return
    root, params_name = self._root(), f"best_params_{self.best_step}"
    try:
      if params_too:
        with ocp.StandardCheckpointer() as checkpointer:
          checkpointer.save(root / params_name, self.best_params, force=True)
      if jax.process_index() == 0:  # whole or not at all, locally (a rename) and on gs:// (one upload)
        artifacts.write_atomic(root / "best.json", json.dumps({"best_step": self.best_step,
                                                               "best_score": self.best_score,
                                                               "history": self.history, "params": params_name}))
    except Exception as e:
      error = _write_error(e, root, "the selected parameters", "its last checkpoint")
      if error is None:
        raise
      raise error from None
    self._remove_others(params_name)

  def _remove_others(self, params_name: str) -> None:
    """Parameters no record names: older bests, and the temporary directory of a save that a kill cut short."""
    if jax.process_index() != 0:
      return
    for path in self._root().iterdir():
      if path.name.startswith("best_params") and path.name != params_name:
        artifacts.remove_tree(path)
