"""The child side of tests/test_preemption.py: a tiny sweep that a real SIGKILL stops at a chosen moment.

`run_sweep(assets, workdir, cache_dir, kill)` runs `protocol.sweep.run` on `config(assets)` and,
with `kill`, SIGKILLs its own process at that moment (a kill point, below). The test starts it in
a child forked from a server that has imported this module (and with it jax, orbax, transformers
and the protocol: ~15 s a process here), so that many children cost little. A config file for
launch/main.py builds the same sweep with `config` (the test writes one).

Kill points, `KIND:N` (the N-th such moment of this process):
  step:N                the N-th training step, just dispatched: the device is still running it
  checkpoint:N          the N-th orbax train-state save, written to its temporary directory, not yet renamed
  replace:NAME:N        the N-th atomic rename onto a file called NAME (arrays.npz, result.json, ...): the
                        stage's temporary file is written, the rename has not happened
  stage:N               the N-th stage's fit starts: every stage before it has finished saving
A kill point that is never reached lets the sweep finish (exit 0), which the test reports.
"""

import os
import signal
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
  sys.path.insert(0, str(REPO))

import jax  # noqa: E402
import orbax.checkpoint as ocp  # noqa: E402
import transformers  # noqa: E402
from orbax.checkpoint._src.path import atomicity  # noqa: E402

from w2s_jax import tracking  # noqa: E402
from w2s_jax.config_base import base, finalize, model  # noqa: E402
from w2s_jax.protocol import sweep  # noqa: E402
from w2s_jax.train import steps  # noqa: E402

# Loaded here, so in the fork server before any child: a tokenizer's first load imports torch (~10 s).
_PRELOADED = (ocp, transformers.AutoTokenizer)

EPOCHS = 2.0           # 5 steps an epoch (75 examples, batch 16): 10 steps a stage
CHECKPOINT_EVERY = 2   # 5 saves a stage: many moments to be killed inside one


def config(assets: dict[str, str]):
  """Ground truth for a weak and a strong tiny GPT-2, and one xent student: 3 fine-tunes of 20 steps."""
  c = base()
  c.task = f"jsonl:{assets['task']}"
  c.n_train, c.n_test, c.max_length = None, None, 32
  c.models.update(dict(weak=model(str(assets["weak"]), 3e-4), strong=model(str(assets["strong"]), 3e-3)))
  c.model_order = ("weak", "strong")
  c.methods = ("xent",)
  c.seeds = (0,)
  c.train.batch_size, c.train.epochs, c.train.log_every = 16, EPOCHS, 4
  c.train.checkpoint_every = CHECKPOINT_EVERY
  c.train.length_buckets = 1  # one padded length: one compile per step
  c.head_init = "normal"
  c.mesh.data = 1
  c.wandb.mode = "disabled"
  return finalize(c)


def _die() -> None:
  os.kill(os.getpid(), signal.SIGKILL)


def arm(kill: str) -> None:
  """Make this process SIGKILL itself at the kill point `kill` (see the module docstring)."""
  kind, *names, n = kill.split(":")
  seen = [0]

  def reached() -> bool:
    seen[0] += 1
    return seen[0] == int(n)

  if kind == "step":
    jit_train_step = steps.jit_train_step

    def killing_jit(*args, **kwargs):
      step = jit_train_step(*args, **kwargs)

      def killing_step(state, batch):
        out = step(state, batch)  # dispatched, not finished
        if reached():
          _die()
        return out
      return killing_step
    steps.jit_train_step = killing_jit
  elif kind == "checkpoint":
    finalize_path = atomicity.AtomicRenameTemporaryPath.finalize

    async def killing_finalize(self, *args, **kwargs):
      if self._final_path.name.isdigit() and reached():  # a train-state step directory, not one of its items
        _die()
      return await finalize_path(self, *args, **kwargs)
    atomicity.AtomicRenameTemporaryPath.finalize = killing_finalize
  elif kind == "replace":
    replace, (name,) = os.replace, names

    def killing_replace(src, dst, *args, **kwargs):
      if os.path.basename(dst) == name and reached():
        _die()
      return replace(src, dst, *args, **kwargs)
    os.replace = killing_replace
  elif kind == "stage":
    stage = tracking.Tracker.stage

    def killing_stage(self, *args, **kwargs):
      if reached():
        _die()
      return stage(self, *args, **kwargs)
    tracking.Tracker.stage = killing_stage
  else:
    raise ValueError(f"unknown kill point {kill!r}")


def run_sweep(assets: dict[str, str], workdir: str, cache_dir: str, kill: str | None = None) -> None:
  # Compiled steps are shared by every child of a test (and are the same programs).
  jax.config.update("jax_compilation_cache_dir", cache_dir)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  if kill:
    arm(kill)
  sweep.run(config(assets), workdir)
