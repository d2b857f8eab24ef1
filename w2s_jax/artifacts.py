"""The stage cache: every finished stage saved under a hash of everything that determines it.

A stage (a ground-truth fine-tune, a weak-to-strong fine-tune, a feature cache) is
described by a JSON-able `spec`: the model checkpoint, data settings, hyperparameters,
seed, and the keys of the stages it consumes. Its directory is
`WORKDIR/stages/<kind>-<hash>/` holding `spec.json`, `result.json` (metrics),
`arrays.npz` (probabilities, features) and, while it trains, `checkpoints/` (orbax).
A stage with `result.json` is finished: it is loaded, never recomputed (unless forced).
Changing any field of the spec changes the hash, so stale results are never reused.
"""

import dataclasses
import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import jax
import numpy as np


def spec_hash(spec: dict[str, Any]) -> str:
  """A short stable hash of a JSON-able spec (key order does not matter)."""
  canonical = json.dumps(spec, sort_keys=True, separators=(",", ":"), default=str)
  return hashlib.sha256(canonical.encode()).hexdigest()[:16]


@dataclasses.dataclass
class Stage:
  kind: str
  spec: dict[str, Any]
  directory: Path

  @property
  def key(self) -> str:
    return spec_hash(self.spec)

  @property
  def checkpoint_dir(self) -> Path:
    return self.directory / "checkpoints"

  @property
  def selection_dir(self) -> Path:
    """Where checkpoint selection keeps its best parameters while the stage trains."""
    return self.directory / "selection"

  def done(self) -> bool:
    return (self.directory / "result.json").exists()

  def load(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    result = json.loads((self.directory / "result.json").read_text())
    arrays_file = self.directory / "arrays.npz"
    arrays = dict(np.load(arrays_file)) if arrays_file.exists() else {}
    return result, arrays

  def save(self, result: dict[str, Any], arrays: dict[str, np.ndarray] | None = None, *,
           keep_checkpoints: bool = False) -> None:
    """Write the stage's outputs (process 0 only); result.json last, so a crash leaves it unfinished."""
    if jax.process_index() != 0:
      return
    self.directory.mkdir(parents=True, exist_ok=True)
    (self.directory / "spec.json").write_text(json.dumps(self.spec, indent=1, sort_keys=True, default=str))
    if arrays:
      tmp = self.directory / "arrays.tmp.npz"
      np.savez(tmp, **arrays)
      os.replace(tmp, self.directory / "arrays.npz")
    tmp = self.directory / "result.tmp.json"
    tmp.write_text(json.dumps(result, indent=1, sort_keys=True, default=float))
    os.replace(tmp, self.directory / "result.json")
    if not keep_checkpoints:
      # The checkpoints served resumption; a finished stage no longer needs them (a 7B
      # student's train state is ~90 GB), unless the user keeps them to reuse the model.
      shutil.rmtree(self.checkpoint_dir, ignore_errors=True)
      shutil.rmtree(self.selection_dir, ignore_errors=True)

  def clear(self) -> None:
    if jax.process_index() == 0:
      shutil.rmtree(self.directory, ignore_errors=True)


class StageStore:
  """Stages of one workdir."""

  def __init__(self, workdir: str | Path):
    self.root = Path(workdir) / "stages"

  def stage(self, kind: str, spec: dict[str, Any]) -> Stage:
    return Stage(kind, spec, self.root / f"{kind}-{spec_hash(spec)}")
