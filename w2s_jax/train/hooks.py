"""What runs between training steps: checkpoints, metric logs, the NaN stop, checkpoint selection.

`loop.run` calls every hook, in the order given, at these points:

    state = hook.on_start(state, abstract_state)   # before the first step (resume: return a restored state)
    hook.needs_metrics(step, last) -> bool         # after each step: must its metrics be on the host now?
    hook.after_step(step, state, metrics, last)    # after each step
    hook.on_end(step, state)                       # after the last step (also when a rerun had none left)
    params = hook.final_params(params)             # what the loop returns (starts as the last params)

Metrics stay on the device until some hook needs them: only then does the loop fetch the queued
metrics of every step since the previous fetch, and `after_step` receives them as `metrics` (a list of
dicts of numpy scalars, the last one step `step`'s); at every other step `metrics` is []. So the
loop waits on the device only where a hook asks it to.

`StopOnNaN` is always the first hook (the loop adds it): it checks every fetched loss, and a hook
that saves asks for the metrics at its save steps, so no NaN state is ever saved.

Checkpoint selection (`BestCheckpoint`): every `every` steps and at the last one it scores the
parameters (`score_fn(params) -> float`, higher is better) and keeps a copy of the best; its
`final_params` returns them instead of the last ones. EleutherAI/w2s's default selection is of this
kind: AUROC against a validation split labelled by the *weak* supervisor (legitimate: it uses no
ground truth); scored against ground truth instead, it is an oracle, for analysis only.
Preemption-safe: with a `directory`, the best parameters and the history of scores are saved there
whenever the best improves, and a resumed run reloads them, so a run interrupted after its best
evaluation selects the same parameters as one that never stopped. Ties keep the earlier step.
"""

import dataclasses
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

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


@dataclasses.dataclass
class Checkpointing(Hook):
  """Saves the train state to `directory` (orbax) every `every` steps (0: never) and at the end.

  A rerun with the same directory resumes from the latest save: deterministic batches and steps make
  its parameters those of a run that never stopped. Only the latest save is kept; saves are
  synchronous, and multi-host: every process writes its own shards.
  """
  directory: Path
  every: int = 0
  _manager: ocp.CheckpointManager | None = dataclasses.field(default=None, init=False, repr=False)

  def __post_init__(self):
    if self.every < 0:
      raise ValueError(f"checkpoint every {self.every} steps: must be >= 0 (0: only at the end)")

  def on_start(self, state: TrainState, abstract_state: TrainState) -> TrainState:
    options = ocp.CheckpointManagerOptions(max_to_keep=1, save_interval_steps=max(self.every, 1),
                                           enable_async_checkpointing=False)
    self._manager = ocp.CheckpointManager(Path(self.directory).absolute(), options=options)
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
      self._manager.save(step, args=ocp.args.StandardSave(state), force=True)

  def on_end(self, step: int, state: TrainState) -> None:
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
  directory: Path | None = None
  best_step: int = -1
  best_score: float = -math.inf
  best_params: Any = None
  history: list[tuple[int, float]] = dataclasses.field(default_factory=list)

  def __post_init__(self):
    if self.every <= 0:
      raise ValueError(f"evaluate every {self.every} steps: must be positive")

  def _paths(self) -> tuple[Path, Path]:
    return Path(self.directory).absolute() / "best_params", Path(self.directory).absolute() / "best.json"

  def on_start(self, state: TrainState, abstract_state: TrainState) -> TrainState:
    """Reload what a previous, interrupted run of the same stage had selected (if anything)."""
    if self.directory is None or not self._paths()[1].exists():
      return state
    params_dir, record_file = self._paths()
    record = json.loads(record_file.read_text())
    self.best_step, self.best_score = record["best_step"], record["best_score"]
    self.history = [tuple(h) for h in record["history"]]
    with ocp.StandardCheckpointer() as checkpointer:
      self.best_params = checkpointer.restore(params_dir, abstract_state.params)
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
    if self.directory is None:
      return
    params_dir, record_file = self._paths()
    if params_too:
      with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(params_dir, self.best_params, force=True)
    if jax.process_index() == 0:
      record_file.parent.mkdir(parents=True, exist_ok=True)
      tmp = record_file.with_suffix(".tmp")
      tmp.write_text(json.dumps({"best_step": self.best_step, "best_score": self.best_score,
                                 "history": self.history}))
      tmp.replace(record_file)
