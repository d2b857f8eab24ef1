"""Checkpoint selection: evaluate every N steps and keep the parameters that score best.

The training loop calls `BestCheckpoint.observe(step, params)` after each step; every
`every` steps and at the last one it scores the parameters (`score_fn(params) -> float`,
higher is better) and keeps a copy of the best. The loop then returns the best parameters
instead of the last ones. EleutherAI/w2s's default selection is of this kind: AUROC against a
validation split labelled by the *weak* supervisor (legitimate: it uses no ground truth);
scored against ground truth instead, it is an oracle, for analysis only.

Preemption-safe: with a `directory`, the best parameters and the history of scores are saved
there whenever the best improves, and a resumed run reloads them, so a run interrupted after
its best evaluation selects the same parameters as one that never stopped. Ties keep the
earlier step.
"""

import dataclasses
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp


# config.selection.method: how a student's parameters are chosen (one line each for --list_methods).
METHODS = {
    "final": "the parameters after the last step (the paper)",
    "weak_auroc": "early stopping on weak labels: best AUROC against the supervisor on a held-out part of half B",
    "oracle_auroc": "ORACLE, for analysis only: best AUROC against the ground truth of a held-out part of half B",
}
ORACLES = ("oracle_auroc",)


@dataclasses.dataclass
class BestCheckpoint:
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

  def restore(self, abstract_params: Any) -> None:
    """Reload what a previous, interrupted run of the same stage had selected (if anything)."""
    if self.directory is None or not self._paths()[1].exists():
      return
    params_dir, record_file = self._paths()
    record = json.loads(record_file.read_text())
    self.best_step, self.best_score = record["best_step"], record["best_score"]
    self.history = [tuple(h) for h in record["history"]]
    with ocp.StandardCheckpointer() as checkpointer:
      self.best_params = checkpointer.restore(params_dir, abstract_params)

  def observe(self, step: int, params: Any, *, last: bool) -> None:
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
