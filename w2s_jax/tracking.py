"""Experiment tracking: `metrics.jsonl` in the workdir, and a W&B run per stage.

W&B is offline unless the user configures otherwise: runs land in WORKDIR/wandb and
`wandb sync WORKDIR/wandb/offline-run-*` uploads them later. `config.wandb.mode`:
  "offline" (default; "online" if WANDB_API_KEY is set and mode is "auto"),
  "online", or "disabled" (no W&B at all).
Every run records the experiment config, the stage's spec, and the git commit, with the
environment's secrets redacted (w2s_jax/redaction.py).
Only process 0 writes.

On a gs:// workdir an object cannot be appended to: metrics.jsonl is kept in memory, beside the lines an
earlier run left, and uploaded whole at the end of every stage, at each summary and at most every
`UPLOAD_EVERY_S` seconds in between (so a killed run loses at most that much of its log). W&B writes
its files locally, under the cache (`$W2S_JAX_CACHE/wandb/<bucket path>`): use mode "online" on pods,
or `wandb sync` those offline runs from that host.
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
from etils import epath

from w2s_jax import artifacts
from w2s_jax.redaction import redact

UPLOAD_EVERY_S = 60.0


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


class _ObjectLog:
  """A text file on an object store, appended to by rewriting it whole (see the module docstring)."""

  def __init__(self, path: epath.Path):
    self.path = path
    try:
      self._text = [path.read_text()]  # an earlier run's lines stay, as in a local file opened to append
    except FileNotFoundError:
      self._text = []
    self._uploaded = time.monotonic()

  def write(self, text: str) -> None:
    self._text.append(text)
    if time.monotonic() - self._uploaded >= UPLOAD_EVERY_S:
      self.flush()

  def flush(self) -> None:
    self._text = ["".join(self._text)]
    artifacts.write_atomic(self.path, self._text[0])
    self._uploaded = time.monotonic()

  def close(self) -> None:
    self.flush()


def wandb_dir(workdir: epath.Path) -> Path:
  """Where W&B writes: the workdir, or a local directory for a gs:// one (W&B writes local files only)."""
  if artifacts.is_local(workdir):
    return Path(workdir)
  from w2s_jax import offline
  return offline.cache_root() / "wandb" / os.fspath(workdir).replace("://", "/", 1)


class Tracker:
  """Writes metrics.jsonl and (optionally) one W&B run per stage, grouped per sweep."""

  def __init__(self, workdir: artifacts.PathLike, experiment_config: dict[str, Any], *, mode: str = "offline",
               project: str = "w2s_jax", entity: str | None = None, group: str | None = None):
    self.workdir = artifacts.as_path(workdir)
    self.experiment_config = experiment_config
    self.mode = wandb_mode(mode)
    self.project, self.entity = project, entity
    self.group = group or self.workdir.name
    self.commit = git_commit()
    self.is_writer = jax.process_index() == 0
    if self.is_writer:
      self.workdir.mkdir(parents=True, exist_ok=True)
      path = self.workdir / "metrics.jsonl"
      self._jsonl = open(path, "a", buffering=1) if artifacts.is_local(path) else _ObjectLog(path)

  @contextlib.contextmanager
  def stage(self, name: str, spec: dict[str, Any]) -> Iterator[Callable[[int, dict[str, float]], None]]:
    """A context for one stage; yields `log(step, metrics)`."""
    run = None
    if self.is_writer and self.mode != "disabled":
      import wandb
      run = wandb.init(project=self.project, entity=self.entity, group=redact(self.group), name=redact(name),
                       job_type=name.split(":")[0], dir=str(self._wandb_dir()), mode=self.mode,
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
      if self.is_writer:
        self._jsonl.flush()

  def _wandb_dir(self) -> Path:
    directory = wandb_dir(self.workdir)
    directory.mkdir(parents=True, exist_ok=True)
    return directory

  def summary(self, name: str, values: dict[str, Any]) -> None:
    if self.is_writer:
      self._jsonl.write(json.dumps(redact({"stage": name, "summary": values, "time": time.time()})) + "\n")
      self._jsonl.flush()

  def close(self) -> None:
    if self.is_writer:
      self._jsonl.close()
