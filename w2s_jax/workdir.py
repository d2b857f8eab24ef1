"""A workdir is written by one run at a time, and must be writable before anything trains.

`claim(workdir)` creates the directory, takes an exclusive `fcntl.flock` on `WORKDIR/.lock` and
writes who holds it (pid, host, start time, command). A second run in the same workdir gets one
line naming the first run's pid and host. Two runs in one workdir would each resume the other's
half-written checkpoints and overwrite its results, so the second one is refused, not queued.

A stale lock (its process was killed, its host rebooted) is taken over without a word: the kernel
drops a flock with its process, so the file that stays behind holds no lock. Where the filesystem
has no flock (some network filesystems), the record decides instead: a lock whose pid is alive on
this host, or that another host wrote, is in use; one whose pid is gone is stale.

On several hosts only process 0 claims: the others write only their own checkpoint shards.
"""

import contextlib
import errno
import fcntl
import json
import os
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import jax

from w2s_jax import redaction
from w2s_jax.errors import UserError

LOCK_NAME = ".lock"


def ensure_writable(workdir: Path) -> None:
  """Create `workdir` and check that a file can be written there, or raise a one-line UserError."""
  try:
    workdir.mkdir(parents=True, exist_ok=True)
    probe = workdir / f".write-test-{os.getpid()}"
    probe.write_bytes(b"")
    probe.unlink()
  except OSError as e:
    raise UserError(f"workdir {workdir} is not writable ({e.strerror or type(e).__name__}); "
                    "choose a --workdir you can write to") from None


def _holder(lock_file: Path) -> dict:
  try:
    return json.loads(lock_file.read_text() or "{}")
  except (OSError, ValueError):
    return {}


def _in_use_error(workdir: Path, holder: dict) -> UserError:
  since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder["started"])) if "started" in holder else "?"
  return UserError(f"workdir {workdir} is in use by pid {holder.get('pid', '?')} on host {holder.get('host', '?')} "
                   f"(since {since}); wait for that run to end, or give this one another --workdir")


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True  # someone else's live process
  return True


@contextlib.contextmanager
def claim(workdir: str | Path) -> Iterator[None]:
  """Hold `workdir` for this run (see the module docstring); a no-op on processes other than 0."""
  workdir = Path(workdir)
  if jax.process_index() != 0:
    yield
    return
  ensure_writable(workdir)
  lock_file = workdir / LOCK_NAME
  fd = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o644)
  held = False
  try:
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      raise _in_use_error(workdir, _holder(lock_file)) from None
    except OSError as e:
      if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
        raise
      holder = _holder(lock_file)  # no flock here: the record decides
      here = holder.get("host") == socket.gethostname()
      if holder.get("pid") and (not here or _alive(int(holder["pid"]))) and holder.get("pid") != os.getpid():
        raise _in_use_error(workdir, holder) from None
    record = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time(),
              "command": redaction.redact(" ".join(sys.argv))}
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(record).encode(), 0)
    held = True
    yield
  finally:
    # The file stays, emptied: deleting it would let a third run lock a new inode while a second
    # one still holds the old. An empty record is a free workdir where there is no flock.
    if held:
      with contextlib.suppress(OSError):
        os.ftruncate(fd, 0)
    os.close(fd)
