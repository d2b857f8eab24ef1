"""A run that dies costs only the step it was in (w2s_jax/preemption.py, train/loop.py, train/hooks.py).

SIGTERM and SIGINT stop training at the next step boundary, with that step's checkpoint written, in
one line; a full disk while a checkpoint saves is one line and keeps the previous checkpoint; a
SIGKILL at any moment (inside a step, inside a checkpoint write, inside a stage save, between
stages) resumes to results bitwise equal to a run that never stopped. The last two are shown on
real processes: children of a fork server that has imported the sweep once
(tests/preemption_worker.py), and launch/main.py itself.
"""

import errno
import hashlib
import json
import logging
import multiprocessing
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from absl import logging as absl_logging
from orbax.checkpoint._src.path import atomicity

from tests import preemption_worker, tiny_models
from tests.test_loop import Interrupt, add_batch, one_device
from w2s_jax import artifacts, offline, preemption, sharding
from w2s_jax.errors import UserError
from w2s_jax.models import checkpoints
from w2s_jax.train import fit, hooks, loop
from w2s_jax.train.state import TrainState

REPO = Path(__file__).resolve().parents[1]
CHILD_TIMEOUT_S = 300


# ---------------------------------------------------------------------------------------------
# The loop's stop, on real signals in this process: a step that adds its batch to one parameter.

def counting_state() -> TrainState:
  return TrainState(jnp.asarray(0, jnp.int32), {"w": jnp.asarray(0.0, jnp.float32)}, {"count": jnp.zeros(())})


def epoch_batches(epoch: int):
  for i in range(4):
    yield {"x": np.array([10.0 * epoch + i], np.float32)}


class SignalAfter(hooks.Hook):
  """Sends this process `signum` while the hooks of step `step` run (the loop is between two steps)."""

  def __init__(self, step: int, signum: int = signal.SIGTERM):
    self.step, self.signum = step, signum

  def after_step(self, step, state, metrics, last):
    if step == self.step:
      signal.raise_signal(self.signum)


def saved_steps(directory: Path) -> list[int]:
  return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit())


def test_sigterm_in_training_saves_the_next_step_stops_in_one_line_and_a_rerun_resumes_there(tmp_path):
  straight = loop.run(add_batch, counting_state(), epoch_batches, 10, one_device())
  with preemption.installed():
    with pytest.raises(preemption.Stopped) as e:
      loop.run(add_batch, counting_state(), epoch_batches, 10, one_device(), desc="ground_truth:weak:seed0",
               hooks=(SignalAfter(3), hooks.Checkpointing(tmp_path, every=4)))
  # The signal came after step 3; step 4, already under way, is the one saved (it is also a save step:
  # a stop never saves twice).
  assert str(e.value) == ("stopped by SIGTERM at step 4 of 'ground_truth:weak:seed0': its checkpoint at step 4 "
                          "and every finished stage are kept; rerun the same command to resume")
  assert e.value.exit_code == 143 and isinstance(e.value, KeyboardInterrupt)
  assert saved_steps(tmp_path) == [4]

  calls = []
  with preemption.installed():
    with pytest.raises(preemption.Stopped, match=r"^stopped by SIGINT at step 6 of 'train': its checkpoint at step 6 "):
      loop.run(add_batch, counting_state(), epoch_batches, 10, one_device(),
               hooks=(SignalAfter(5, signal.SIGINT), hooks.MetricLog(lambda s, m: calls.append(s), every=100),
                      hooks.Checkpointing(tmp_path, every=4)))
  assert saved_steps(tmp_path) == [6]  # resumed at 4, stopped at 6 (not a save step: saved for the stop)
  assert calls == []  # no log step came, and a stop is not one

  resumed = loop.run(add_batch, counting_state(), epoch_batches, 10, one_device(),
                     hooks=(hooks.Checkpointing(tmp_path, every=4),))
  assert float(resumed["w"]) == float(straight["w"])


def test_a_nan_loss_at_the_stop_step_is_reported_and_not_saved(tmp_path):
  def batches_with_nan(epoch):
    for i in range(4):
      yield {"x": np.array([np.nan if (epoch, i) == (1, 0) else 1.0], np.float32)}  # step 5
  with preemption.installed():
    with pytest.raises(UserError, match=r"loss became nan at step 5"):
      loop.run(add_batch, counting_state(), batches_with_nan, 10, one_device(),
               hooks=(SignalAfter(4), hooks.Checkpointing(tmp_path, every=4)))
  assert saved_steps(tmp_path) == [4]


def test_a_signal_outside_training_stops_at_once_and_without_install_python_keeps_its_own():
  # Python's own SIGINT handling, whatever an earlier test's library left installed (restored after).
  before = {signum: signal.signal(signum, handler)
            for signum, handler in ((signal.SIGINT, signal.default_int_handler), (signal.SIGTERM, signal.SIG_DFL))}
  try:
    with preemption.installed():
      with pytest.raises(preemption.Stopped) as e:
        signal.raise_signal(signal.SIGINT)
        time.sleep(1)  # (the handler runs between two bytecodes, at once)
    assert str(e.value) == ("stopped by SIGINT while no stage was training: every finished stage and every "
                            "checkpoint saved so far are kept; rerun the same command to resume")
    assert e.value.exit_code == 130
    # Uninstalled: the handlers that were there are back, and SIGINT is a plain KeyboardInterrupt again.
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == (signal.default_int_handler,
                                                                                  signal.SIG_DFL)
    with pytest.raises(KeyboardInterrupt) as plain:
      signal.raise_signal(signal.SIGINT)
    assert not isinstance(plain.value, preemption.Stopped)
  finally:
    for signum, handler in before.items():
      if handler is not None:  # (None: installed outside Python; cannot be put back)
        signal.signal(signum, handler)


def test_a_second_signal_while_stopping_ends_the_process_at_once():
  code = ("import signal, time\n"
          "from w2s_jax import preemption\n"
          "preemption.install()\n"
          "with preemption.deferring():\n"
          "  signal.raise_signal(signal.SIGTERM)\n"
          "  print(preemption.received(), flush=True)\n"
          "  signal.raise_signal(signal.SIGTERM)\n"
          "  time.sleep(30)\n"
          "  print('still running')\n")
  done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
  assert (done.returncode, done.stdout, done.stderr) == (-signal.SIGTERM, "15\n", "")


MULTIHOST_PROCESS = """
import json, signal, sys
import jax, jax.numpy as jnp, numpy as np
process_id, port = int(sys.argv[1]), int(sys.argv[2])
jax.config.update("jax_cpu_collectives_implementation", "gloo")
jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}", num_processes=2, process_id=process_id,
                           coordinator_bind_address=f"127.0.0.1:{port}", initialization_timeout=60)
from jax.sharding import NamedSharding, PartitionSpec
from w2s_jax import preemption, sharding
from w2s_jax.train import hooks, loop
from w2s_jax.train.state import TrainState
preemption.install()
preemption.SYNC_EVERY = 3
mesh = sharding.make_mesh(data=2, fsdp=1)
state = jax.device_put(TrainState(jnp.asarray(0, jnp.int32), {"w": jnp.asarray(0.0)}, ()),
                       NamedSharding(mesh, PartitionSpec()))

@jax.jit
def add_batch(state, batch):
  total = batch["x"].sum()  # over both processes' rows: a collective
  return TrainState(state.step + 1, {"w": state.params["w"] + total}, state.opt_state), {"loss": total}

def epoch_batches(epoch):
  for i in range(4):
    yield {"x": np.array([float(i)], np.float32)}

class SignalOnProcess0(hooks.Hook):
  def after_step(self, step, state, metrics, last):
    if process_id == 0 and step == 4:
      signal.raise_signal(signal.SIGTERM)
try:
  loop.run(add_batch, state, epoch_batches, 20, mesh, hooks=(SignalOnProcess0(),))
  print(json.dumps(None))
except preemption.Stopped as e:
  print(json.dumps([str(e), e.exit_code]))
jax.distributed.shutdown()
"""


def test_on_two_processes_a_signal_to_one_stops_both_after_the_same_step():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"} | {"JAX_PLATFORMS": "cpu"}
  processes = [subprocess.Popen([sys.executable, "-c", MULTIHOST_PROCESS, str(i), str(port)], cwd=REPO, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True) for i in range(2)]
  # (gloo says on stdout that it connected: the answer is the last line)
  outputs = [json.loads(p.communicate(timeout=CHILD_TIMEOUT_S)[0].splitlines()[-1]) for p in processes]
  # Signalled after step 4, process 0 goes on to the next all-gather (every 3 steps): step 6, on both.
  kept = "every finished stage is kept (nothing of this one was saved); rerun the same command to resume"
  assert outputs == [[f"stopped by SIGTERM at step 6 of 'train': {kept}", 143],
                     [f"stopped by SIGTERM (received by another process) at step 6 of 'train': {kept}", 143]]


# ---------------------------------------------------------------------------------------------
# Real saves of a real (head-only) model: a full disk, and selection cut between its two writes.

@pytest.fixture(scope="module")
def probe(tmp_path_factory):
  directory = tiny_models.save_gpt2(tmp_path_factory.mktemp("probe") / "gpt2", n_embd=4, n_layer=1)
  features = np.random.default_rng(0).normal(size=(64, 4)).astype(np.float32)
  return directory, features, (features[:, 0] > 0).astype(np.int32)


def train_probe(probe, cfg, hook_list=()):
  directory, features, labels = probe
  mesh = sharding.make_mesh(data=1, fsdp=1)
  head = checkpoints.head_only(directory, mesh, d_model=4, head_init="normal", seed=1)
  return fit.train_head(head, features, labels, mesh, cfg, hooks=hook_list)


def assert_bitwise_equal(a, b):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    assert np.array_equal(np.asarray(x), np.asarray(y))


FULL_DISK_ERRORS = {
    "OSError": OSError(errno.ENOSPC, "No space left on device"),
    # What orbax raises when tensorstore's array write meets a full disk (measured on a 256 kB tmpfs).
    "tensorstore": ValueError("RESOURCE_EXHAUSTED: Error writing \"w/0\" in OCDBT database at local file \"...\": "
                              "Failed to write 340471 bytes to file 14: No space left on device [os_error_code='28']"),
}


@pytest.mark.parametrize("error", FULL_DISK_ERRORS, ids=list(FULL_DISK_ERRORS))
def test_a_full_disk_while_a_checkpoint_saves_is_one_line_and_a_rerun_resumes_from_the_previous_one(
    probe, tmp_path, monkeypatch, caplog, error):
  cfg = fit.TrainConfig(batch_size=8, epochs=1.0, lr=0.1, seed=0)  # 8 steps
  straight = train_probe(probe, cfg)
  # The 2nd save (step 4) fails once orbax has written its temporary directory, before the rename.
  finalize, seen = atomicity.AtomicRenameTemporaryPath.finalize, []

  async def full_disk(self, *args, **kwargs):
    if self._final_path.name.isdigit():
      seen.append(self._final_path.name)
      if len(seen) == 2:
        # What orbax's save thread logs on a real full disk (measured on a full tmpfs), then the error.
        absl_logging.error(f"[process=0] Failed to run 1 Handler Commit operations, directory: {self._final_path}")
        raise FULL_DISK_ERRORS[error]
    return await finalize(self, *args, **kwargs)
  monkeypatch.setattr(atomicity.AtomicRenameTemporaryPath, "finalize", full_disk)
  ckpt = tmp_path / "ckpt"
  with pytest.raises(UserError) as e:
    train_probe(probe, cfg, (hooks.Checkpointing(ckpt, every=2),))
  assert str(e.value) == (f"could not write the checkpoint of step 4 to {ckpt} (no space left on device); free "
                          "space on that disk and rerun the same command to resume from its checkpoint at step 2")
  assert sorted(p.name for p in ckpt.iterdir()) == ["2", "4.orbax-checkpoint-tmp"]
  # orbax logs the failed save's tracebacks (absl, ERROR); the one line replaces them.
  assert not [r for r in caplog.records if r.levelno >= logging.ERROR], [r.getMessage() for r in caplog.records]

  monkeypatch.undo()
  resumed_from = []
  resumed = train_probe(probe, cfg, (hooks.MetricLog(lambda step, m: resumed_from.append(step), every=1),
                                     hooks.Checkpointing(ckpt, every=2)))
  assert resumed_from[0] == 3  # from the step-2 checkpoint
  assert_bitwise_equal(resumed, straight)
  assert sorted(p.name for p in ckpt.iterdir()) == ["8"]  # the partial save is gone


def params_digest(params) -> str:
  return hashlib.sha256(b"".join(np.asarray(x).tobytes() for x in jax.tree.leaves(params))).hexdigest()


def test_selection_cut_between_its_parameters_and_its_record_selects_as_a_run_that_never_stopped(
    probe, tmp_path, monkeypatch):
  cfg = fit.TrainConfig(batch_size=8, epochs=2.0, lr=0.1, seed=0)  # 16 steps
  # Each step's parameters, told apart by their bytes, so that a score can be a function of the
  # parameters alone (as a validation score is) and still peak at a chosen step: step 6.
  step_of = {}

  class Record(hooks.Hook):
    def after_step(self, step, state, metrics, last):
      step_of[params_digest(state.params)] = step
  train_probe(probe, cfg, (Record(),))
  scores = {2: 0.1, 4: 0.2, 6: 0.9, 8: 0.5, 10: 0.3, 12: 0.3, 14: 0.3, 16: 0.3}

  def score(params):
    return scores[step_of[params_digest(params)]]
  straight = hooks.BestCheckpoint(score, every=2)
  chosen = train_probe(probe, cfg, (straight,))
  assert straight.best_step == 6

  # A kill after the step-6 parameters are written, before the record that names them: the
  # Checkpointing hook (before selection in the list, as the protocol orders them) has saved step 6.
  save = ocp.StandardCheckpointer.save

  def cut_after_best_params_6(self, directory, *args, **kwargs):
    save(self, directory, *args, **kwargs)
    if Path(directory).name == "best_params_6":
      raise Interrupt
  monkeypatch.setattr(ocp.StandardCheckpointer, "save", cut_after_best_params_6)
  with pytest.raises(Interrupt):
    train_probe(probe, cfg, (hooks.Checkpointing(tmp_path / "ckpt", every=2),
                             hooks.BestCheckpoint(score, every=2, directory=tmp_path / "selection")))
  monkeypatch.undo()
  record = json.loads((tmp_path / "selection" / "best.json").read_text())
  assert (record["best_step"], record["params"]) == (4, "best_params_4")
  assert saved_steps(tmp_path / "ckpt") == [6]

  resumed = hooks.BestCheckpoint(score, every=2, directory=tmp_path / "selection")
  rerun = train_probe(probe, cfg, (hooks.Checkpointing(tmp_path / "ckpt", every=2), resumed))
  # Step 6, restored, is scored before training goes on; without that, step 8 (0.5 > 0.2) would win.
  assert (resumed.best_step, resumed.history) == (straight.best_step, straight.history)
  assert_bitwise_equal(rerun, chosen)
  assert sorted(p.name for p in (tmp_path / "selection").iterdir()) == ["best.json", "best_params_6"]


# ---------------------------------------------------------------------------------------------
# Real processes: a tiny sweep (3 fine-tunes of 10 steps, a checkpoint every 2) killed at every
# kind of moment, and launch/main.py stopped by SIGTERM.

@pytest.fixture(scope="module")
def assets(tmp_path_factory) -> dict[str, str]:
  made = tiny_models.gpt2_pair(tmp_path_factory.mktemp("assets"), strong_embd=16, strong_layers=1, n_examples=200)
  return {k: str(v) for k, v in made.items()}


@pytest.fixture(scope="module")
def xla_cache() -> Path:
  """launch/main.py's compilation cache (W2S_JAX_CACHE/xla), which every child shares: the tiny sweep's
  two train steps take ~25 s to compile here, once."""
  return offline.cache_root() / "xla"


@pytest.fixture(scope="module")
def forks():
  """Start children from a fork server that imported the sweep once (~15 s saved per child)."""
  context = multiprocessing.get_context("forkserver")
  context.set_forkserver_preload(["tests.preemption_worker"])
  return context


def run_child(forks, assets, workdir: Path, xla_cache: Path, kill: str | None = None, *,
              killed_when=None) -> int:
  """The sweep in a child process, to its end or its kill point; its exit code (-9: SIGKILLed).

  `killed_when(workdir)`: SIGKILL the child from here as soon as it returns True (polled every 10 ms).
  """
  child = forks.Process(target=preemption_worker.run_sweep, args=(assets, str(workdir), str(xla_cache), kill))
  child.start()
  deadline = time.monotonic() + CHILD_TIMEOUT_S
  while child.is_alive() and time.monotonic() < deadline:
    if killed_when is not None and killed_when(workdir):
      child.kill()
    child.join(0.01)
  if child.is_alive():
    child.kill()
    child.join()
    pytest.fail(f"the sweep (kill point {kill}) did not end within {CHILD_TIMEOUT_S} s")
  return child.exitcode


@pytest.fixture(scope="module")
def reference(forks, assets, xla_cache, tmp_path_factory) -> Path:
  workdir = tmp_path_factory.mktemp("uninterrupted")
  assert run_child(forks, assets, workdir, xla_cache) == 0
  return workdir


RUN_FIELDS_THAT_VARY = ("wall_s", "trained_stages", "workdir")


def assert_same_results(workdir: Path, reference: Path) -> None:
  """Every stage's arrays bitwise equal, its result and the results' runs equal."""
  names = sorted(p.name for p in (reference / "stages").iterdir())
  assert sorted(p.name for p in (workdir / "stages").iterdir()) == names
  for name in names:
    with np.load(workdir / "stages" / name / "arrays.npz") as got, \
        np.load(reference / "stages" / name / "arrays.npz") as want:
      assert sorted(got.files) == sorted(want.files), name
      for key in want.files:
        assert np.array_equal(got[key], want[key]), (name, key)
    assert (workdir / "stages" / name / "result.json").read_text() == \
        (reference / "stages" / name / "result.json").read_text(), name
    assert not (workdir / "stages" / name / "checkpoints").exists(), name
    assert not [p.name for p in (workdir / "stages" / name).iterdir() if artifacts.is_temp(p)], name  # a kill's leftovers
  got, want = (json.loads((d / "results.json").read_text()) for d in (workdir, reference))
  for field in RUN_FIELDS_THAT_VARY:
    got.pop(field), want.pop(field)
  assert json.dumps(got, sort_keys=True) == json.dumps(want, sort_keys=True)


def stage_dirs(workdir: Path, kind: str) -> list[Path]:
  return sorted((workdir / "stages").glob(f"{kind}-*"))


def test_sigkill_at_any_moment_resumes_to_the_results_of_a_run_that_never_stopped(
    forks, assets, xla_cache, reference, tmp_path):
  workdir = tmp_path / "killed"

  def kill(point):
    assert run_child(forks, assets, workdir, xla_cache, point) == -signal.SIGKILL, f"kill point {point} not reached"

  kill("step:5")  # the weak model's ground truth, while its 5th step runs (checkpoint at 4)
  first = stage_dirs(workdir, "ground_truth")
  assert len(first) == 1 and saved_steps(first[0] / "checkpoints") == [4]
  first = first[0]

  kill("checkpoint:2")  # resumed at 4; saved 6, killed inside the save of 8
  assert sorted(p.name for p in (first / "checkpoints").iterdir()) == ["6", "8.orbax-checkpoint-tmp"]

  kill("replace:arrays.npz:1")  # resumed at 6, trained to 10, predicted; killed before its arrays landed
  assert saved_steps(first / "checkpoints") == [10]
  assert not (first / "checkpoints" / "8.orbax-checkpoint-tmp").exists()  # cleared on opening
  assert not (first / "arrays.npz").exists() and not (first / "result.json").exists()

  kill("replace:result.json:1")  # resumed at 10 (no step left), predicted; arrays written, result not
  assert (first / "arrays.npz").exists() and not (first / "result.json").exists()

  kill("stage:2")  # the weak model's stage saved; killed as the strong model's fit begins
  assert (first / "result.json").exists() and not (first / "checkpoints").exists()

  kill("step:7")  # the strong model's ground truth, inside its 7th step
  second = [d for d in stage_dirs(workdir, "ground_truth") if d != first]
  assert len(second) == 1 and saved_steps(second[0] / "checkpoints") == [6]

  # And a kill from outside, at whatever moment the student is in once its first checkpoint exists.
  def student_checkpointed(w):
    return any(p.name.isdigit() for d in stage_dirs(w, "weak_to_strong") if (d / "checkpoints").exists()
               for p in (d / "checkpoints").iterdir())
  assert run_child(forks, assets, workdir, xla_cache, killed_when=student_checkpointed) == -signal.SIGKILL

  assert run_child(forks, assets, workdir, xla_cache) == 0
  assert json.loads((first / "spec.json").read_text())["model_name"] == "weak"
  assert_same_results(workdir, reference)


def write_config_file(path: Path, assets: dict[str, str]) -> Path:
  path.write_text("from tests import preemption_worker\n\n\n"
                  f"def get_config():\n  return preemption_worker.config({assets!r})\n")
  return path


def test_sigterm_stops_launch_main_in_one_line_with_a_checkpoint_and_a_rerun_finishes_identically(
    forks, assets, xla_cache, reference, tmp_path):
  config = write_config_file(tmp_path / "tiny_config.py", assets)
  workdir = tmp_path / "workdir"
  command = [sys.executable, "launch/main.py", f"--config={config}", f"--workdir={workdir}"]
  env = {**os.environ, "WANDB_MODE": "disabled", "TRANSFORMERS_VERBOSITY": "error", "JAX_PLATFORMS": "cpu"}
  env.pop("XLA_FLAGS", None)
  with open(tmp_path / "stderr", "w") as stderr:  # a file, not a pipe that could fill
    run = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=stderr)
    deadline = time.monotonic() + CHILD_TIMEOUT_S
    while not any(saved_steps(d / "checkpoints") for d in stage_dirs(workdir, "ground_truth")
                  if (d / "checkpoints").exists()):
      assert run.poll() is None and time.monotonic() < deadline, "no checkpoint appeared"
      time.sleep(0.01)
    run.send_signal(signal.SIGTERM)  # the first stage is training: its first checkpoint is there
    assert run.wait(timeout=CHILD_TIMEOUT_S) == 143
  lines = (tmp_path / "stderr").read_text().splitlines()
  assert len(lines) == 1, lines
  stopped = lines[0]
  prefix = "stopped by SIGTERM at step "
  assert stopped.startswith(prefix), stopped
  step = int(stopped[len(prefix):].split()[0])
  assert stopped == (f"{prefix}{step} of 'ground_truth:weak:seed0': its checkpoint at step {step} and every "
                     "finished stage are kept; rerun the same command to resume")
  (stage,) = stage_dirs(workdir, "ground_truth")
  assert saved_steps(stage / "checkpoints") == [step]

  # The rerun: the same sweep in a fork-server child (a second launch/main.py would cost ~15 s of imports).
  assert run_child(forks, assets, workdir, xla_cache) == 0
  assert_same_results(workdir, reference)
