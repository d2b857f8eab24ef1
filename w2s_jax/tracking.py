"""Experiment tracking: `metrics.jsonl` in the workdir, and a W&B run per stage.

W&B is offline unless the user configures otherwise: runs land in WORKDIR/wandb and
`wandb sync WORKDIR/wandb/offline-run-*` uploads them later. `config.wandb.mode`:
  "offline" (default; "online" if WANDB_API_KEY is set and mode is "auto"),
  "online", or "disabled" (no W&B at all).
Every run records the experiment config, the stage's spec, and the git commit, with the
environment's secrets redacted (w2s_jax/redaction.py).
Only process 0 writes.
"""

import contextlib
import json
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jax

from w2s_jax.redaction import redact


def git_commit() -> str | None:
  try:
    out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                         text=True, timeout=5)
    return out.stdout.strip() or None
  except (OSError, subprocess.SubprocessError):
    return None


def wandb_mode(mode: str) -> str:
  if mode == "auto":
    return "online" if os.environ.get("WANDB_API_KEY") else "offline"
  if mode not in ("offline", "online", "disabled"):
    from w2s_jax.errors import UserError
    raise UserError(f"wandb.mode {mode!r} is not one of auto, offline, online, disabled")
  return mode


class Tracker:
  """Writes metrics.jsonl and (optionally) one W&B run per stage, grouped per sweep."""

  def __init__(self, workdir: Path, experiment_config: dict[str, Any], *, mode: str = "offline",
               project: str = "w2s_jax", entity: str | None = None, group: str | None = None):
    self.workdir = Path(workdir)
    self.experiment_config = experiment_config
    self.mode = wandb_mode(mode)
    self.project, self.entity = project, entity
    self.group = group or self.workdir.name
    self.commit = git_commit()
    self.is_writer = jax.process_index() == 0
    if self.is_writer:
      self.workdir.mkdir(parents=True, exist_ok=True)
      self._jsonl = open(self.workdir / "metrics.jsonl", "a", buffering=1)

  @contextlib.contextmanager
  def stage(self, name: str, spec: dict[str, Any]) -> Iterator[Callable[[int, dict[str, float]], None]]:
    """A context for one stage; yields `log(step, metrics)`."""
    run = None
    if self.is_writer and self.mode != "disabled":
      import wandb
      run = wandb.init(project=self.project, entity=self.entity, group=redact(self.group), name=redact(name),
                       job_type=name.split(":")[0], dir=str(self.workdir), mode=self.mode,
                       config=redact({"experiment": self.experiment_config, "stage": spec,
                                      "git_commit": self.commit}),
                       reinit="create_new")

    def log(step: int, metrics: dict[str, float]) -> None:
      if not self.is_writer:
        return
      self._jsonl.write(json.dumps(redact({"stage": name, "step": step, "time": time.time(), **metrics})) + "\n")
      if run is not None:
        run.log(metrics, step=step)

    try:
      yield log
    finally:
      if run is not None:
        run.finish()

  def summary(self, name: str, values: dict[str, Any]) -> None:
    if self.is_writer:
      self._jsonl.write(json.dumps(redact({"stage": name, "summary": values, "time": time.time()})) + "\n")

  def close(self) -> None:
    if self.is_writer:
      self._jsonl.close()
