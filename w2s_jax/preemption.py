"""Stopping on SIGTERM or SIGINT so that a run loses at most the step it was in.

A preemptible TPU VM is sent SIGTERM some seconds before it goes; Ctrl-C is SIGINT. Once
`install()` has run (launch/main.py calls it; library code, tests and notebooks keep Python's own
handling unless they call it), either signal:

* inside a training loop (`loop.run` runs inside `deferring()`) only sets a flag. After each step
  the loop asks `stop_after(step, last)`; on yes, the hooks save what a rerun needs
  (`Hook.on_stop`: `Checkpointing` writes the state of that step, after the NaN check) and the
  loop raises `Stopped`. A signal during a loop's restore or compile stops it after its first step.
* anywhere else (data loading, feature caching, inference, writing a stage, between stages)
  raises `Stopped` at once: finished stages and checkpoints are written atomically, so stopping
  there loses only the unfinished work, as a kill would.
* a second signal while stopping takes the default action (the process ends at once), so a save
  that hangs can still be cut short.

`Stopped` is a KeyboardInterrupt, so no `except Exception` swallows it on the way out;
launch/main.py prints its one-line message and exits with 128 + the signal number (143 for
SIGTERM, 130 for SIGINT).

Several processes (jax.process_count() > 1) must stop after the same step, or those that went on
would wait forever in their next collective. There the flag is all-gathered
(`multihost_utils.process_allgather`) every `SYNC_EVERY` steps and at a loop's last step, and every
process stops if any was signalled; the gather waits for the devices, as a metrics fetch does,
hence not at every step. JAX's own preemption service (`reached_preemption_sync_point`) is not
used: it hears only SIGTERM, through a C++ handler that `jax.distributed.initialize` installs and
that replaces a Python handler installed before it (and is replaced by one installed after: we
checked both on jax 0.10), and its sync step counts the calls of one loop from a common start,
which a sweep of many loops does not give. So `install()` must come after
`jax.distributed.initialize()`. A signal outside a loop on several processes stops the processes
that received it at once (a slice's preemption reaches every host); one that did not would wait
in its next collective until the job is ended, and a rerun resumes as after a kill.
"""

import contextlib
import signal
import threading
from collections.abc import Iterator, Sequence

SIGNALS = (signal.SIGTERM, signal.SIGINT)
SYNC_EVERY = 10  # steps between two all-gathers of the flag when several processes train together

_received: int | None = None   # the first signal's number, once one came
_agreed: int | None = None     # on several processes: the signal the all-gather reported
_deferring = 0                 # how many training loops are running (they can nest)
_previous: dict[int, object] = {}  # the handlers install() replaced


class Stopped(KeyboardInterrupt):
  """The run stopped on a signal; `str()` is the one line to print, `exit_code` is 128 + signal."""

  def __init__(self, signum: int, where: str):
    super().__init__(signum, where)
    self.signum, self.where = signum, where

  @property
  def signal_name(self) -> str:
    return signal.Signals(self.signum).name

  @property
  def exit_code(self) -> int:
    return 128 + self.signum

  def __str__(self) -> str:
    return f"stopped by {self.signal_name} {self.where}"


def install() -> bool:
  """Handle SIGTERM and SIGINT as the module docstring says; False (and nothing done) off the main thread."""
  global _received, _agreed
  if threading.current_thread() is not threading.main_thread():
    return False
  _received = _agreed = None
  for signum in SIGNALS:
    previous = signal.signal(signum, _handle)
    _previous.setdefault(signum, previous)
  return True


def uninstall() -> None:
  """Put back the handlers `install()` replaced and forget any signal received."""
  global _received, _agreed
  for signum, previous in _previous.items():
    if previous is not None:  # None: a handler installed outside Python (C++), which cannot be put back
      signal.signal(signum, previous)
  _previous.clear()
  _received = _agreed = None


@contextlib.contextmanager
def installed() -> Iterator[None]:
  """`install()` for the duration of a block (tests)."""
  install()
  try:
    yield
  finally:
    uninstall()


def _handle(signum: int, frame) -> None:
  global _received
  del frame
  if _received is not None:  # the second signal: stop now, whatever is running
    signal.signal(signum, signal.SIG_DFL)
    signal.raise_signal(signum)
    return
  _received = signum
  if not _deferring:
    raise Stopped(signum, "while no stage was training: every finished stage and every checkpoint saved so far "
                  "are kept; rerun the same command to resume")


def received() -> int | None:
  """The signal this process received (None: none), whether or not it has stopped the run yet."""
  return _received


@contextlib.contextmanager
def deferring() -> Iterator[None]:
  """While inside, a signal only sets the flag: the training loop stops at its next step boundary."""
  global _deferring
  _deferring += 1
  try:
    yield
  finally:
    _deferring -= 1


def stop_after(step: int, last: bool) -> bool:
  """Whether the loop stops after `step`: the same answer on every process (see the module docstring)."""
  global _agreed
  import jax
  if jax.process_count() == 1:
    return _received is not None
  if step % SYNC_EVERY and not last:
    return False
  import numpy as np
  from jax.experimental import multihost_utils
  signals = np.asarray(multihost_utils.process_allgather(np.int32(_received or 0)))
  _agreed = int(signals.max()) or None
  return _agreed is not None


def stopped_at(step: int, desc: str, kept: Sequence[str]) -> Stopped:
  """The exception a loop raises after it stopped at `step`, `kept` saying what its hooks saved."""
  saved = (" and ".join(kept) + " and every finished stage are kept") if kept else \
      "every finished stage is kept (nothing of this one was saved)"
  return Stopped(_received or _agreed, f"{_elsewhere()}at step {step} of {desc!r}: {saved}; rerun the same command "
                 "to resume")


def stop_if_received(step: int, desc: str) -> None:
  """Raise `Stopped` if a signal came while a loop was finishing (after its last stop check).

  On several processes it waits instead for the next loop's all-gather: a process cannot leave alone.
  """
  import jax
  if _received is not None and not _deferring and jax.process_count() == 1:
    raise Stopped(_received, f"at the end of {desc!r} (step {step}): every finished stage and every checkpoint "
                  "saved so far are kept; rerun the same command to resume")


def _elsewhere() -> str:
  return "(received by another process) " if _received is None else ""
