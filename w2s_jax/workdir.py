"""A workdir is written by one run at a time, and must be writable before anything trains.

`claim(workdir)` creates the directory, takes an exclusive `fcntl.flock` on `WORKDIR/.lock` and
writes who holds it (pid, host, start time, command). A second run in the same workdir gets one
line naming the first run's pid and host. Two runs in one workdir would each resume the other's
half-written checkpoints and overwrite its results, so the second one is refused, not queued.

A stale lock (its process was killed, its host rebooted) is taken over without a word: the kernel
drops a flock with its process, so the file that stays behind holds no lock. Where the filesystem
has no flock (some network filesystems), the record decides instead: a lock whose pid is alive on
this host, or that another host wrote, is in use; one whose pid is gone is stale.

On a gs:// workdir (an object store) there is no kernel lock. The lock is an object, `WORKDIR/.lock`, holding
the same record: a run that finds one refuses, writes its own otherwise, reads it back to check that no other
run wrote in between, and deletes it when it ends. Its limits: two runs started within the same moment can both
pass (the check and the write are not one atomic step), and a run that was killed (kill -9, a lost VM) leaves its
lock behind, which then refuses every later run until it is deleted by hand (the refusal says so, and how).

On several hosts only process 0 claims: the others write only their own checkpoint shards. Then every process
checks that it sees the workdir process 0 claimed (`check_shared`): hosts that each have their own local disk
would each see other stages, decide differently which ones are finished, and wait forever in each other's
collectives, so such a run is refused at start-up, on every host, in one line.
"""

import contextlib
import errno
import fcntl
import json
import os
import secrets
import socket
import sys
import time
from collections.abc import Iterator

import jax
import numpy as np
from etils import epath

from w2s_jax import artifacts, redaction
from w2s_jax.errors import UserError

LOCK_NAME = ".lock"
SHARED_TOKEN_PREFIX = ".hosts-"
_READ_TRIES, _READ_PAUSE_S = 3, 0.5  # a network filesystem may show a new file a moment late


def ensure_writable(workdir: artifacts.PathLike) -> None:
  """Create `workdir` and check that a file can be written there, or raise a one-line UserError."""
  workdir = artifacts.as_path(workdir)
  try:
    workdir.mkdir(parents=True, exist_ok=True)
    probe = workdir / f".write-test-{os.getpid()}-{secrets.token_hex(4)}"
    probe.write_bytes(b"")
    probe.unlink()
  except OSError as e:
    raise UserError(f"workdir {workdir} is not writable ({e.strerror or type(e).__name__}); "
                    "choose a --workdir you can write to") from None
  except ImportError as e:  # fsspec's: no gcsfs (or s3fs ...) for this scheme
    raise UserError(f"workdir {workdir} needs a filesystem library that is not installed ({e}); "
                    "pip install gcsfs for gs://") from None
  except Exception as e:  # an object store's own errors (gcsfs's HttpError: no such bucket, no permission)
    if artifacts.is_local(workdir):
      raise
    raise UserError(f"workdir {workdir} is not writable ({type(e).__name__}: {e})".replace("\n", " ") +
                    "; check the bucket exists and your credentials may write it "
                    "(gcloud auth application-default login)") from None


def _holder(lock_file: epath.Path) -> dict:
  try:
    return json.loads(lock_file.read_text() or "{}")
  except (OSError, ValueError):
    return {}


def _in_use_error(workdir: epath.Path, holder: dict) -> UserError:
  since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder["started"])) if "started" in holder else "?"
  stale = ("; a gs:// workdir has no kernel lock, so if that run has ended without removing it (killed, its VM "
           f"gone), delete {workdir / LOCK_NAME} and rerun") if not artifacts.is_local(workdir) else ""
  return UserError(f"workdir {workdir} is in use by pid {holder.get('pid', '?')} on host {holder.get('host', '?')} "
                   f"(since {since}); wait for that run to end, or give this one another --workdir{stale}")


def _record() -> dict:
  return {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time(),
          "command": redaction.redact(" ".join(sys.argv)), "token": secrets.token_hex(8)}


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True  # someone else's live process
  return True


@contextlib.contextmanager
def claim(workdir: artifacts.PathLike) -> Iterator[None]:
  """Hold `workdir` for this run (see the module docstring): process 0 locks it, and on several processes every
  process then checks that it shares it (`check_shared`). A refusal is one line on every process."""
  workdir = artifacts.as_path(workdir)
  with contextlib.ExitStack() as held:
    artifacts.on_process_0(lambda: held.enter_context(_lock(workdir)), f"claim the workdir {workdir}")
    check_shared(workdir)
    yield


def _lock(workdir: epath.Path) -> contextlib.AbstractContextManager[None]:
  return _file_lock(workdir) if artifacts.is_local(workdir) else _object_lock(workdir)


@contextlib.contextmanager
def _file_lock(workdir: epath.Path) -> Iterator[None]:
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
    record = _record()
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


@contextlib.contextmanager
def _object_lock(workdir: epath.Path) -> Iterator[None]:
  """The lock of a workdir on an object store: an object holding the record (see the module docstring)."""
  ensure_writable(workdir)
  lock = workdir / LOCK_NAME
  holder = _holder(lock)
  if holder.get("pid"):
    raise _in_use_error(workdir, holder)
  record = _record()
  artifacts.write_atomic(lock, json.dumps(record))
  holder = _holder(lock)  # another run that wrote between our check and our write: the last writer holds it
  if holder.get("token") != record["token"]:
    raise _in_use_error(workdir, holder)
  try:
    yield
  finally:
    if _holder(lock).get("token") == record["token"]:
      with contextlib.suppress(Exception):  # the run's own outcome matters more than an unremoved lock
        lock.unlink(missing_ok=True)


def check_shared(workdir: artifacts.PathLike) -> None:
  """On several processes: refuse, in one line on every process, a workdir that some of them do not see.

  Process 0 writes `WORKDIR/.hosts-<nonce>` holding a random nonce, which every process receives from it; each
  reads the file it finds under its own --workdir, and the answers are gathered. A no-op on one process.
  """
  if jax.process_count() == 1:
    return
  from jax.experimental import multihost_utils
  workdir = artifacts.as_path(workdir)
  words = np.frombuffer(secrets.token_bytes(8), np.int32)
  nonce = np.asarray(multihost_utils.broadcast_one_to_all(words)).astype(np.int32).tobytes().hex()
  token = workdir / f"{SHARED_TOKEN_PREFIX}{nonce}"
  artifacts.on_process_0(lambda: artifacts.write_atomic(token, nonce), f"write {token}")
  sees = _reads(token, nonce)
  failing = artifacts.processes_failing(sees)
  artifacts.on_process_0(lambda: token.unlink(missing_ok=True), f"remove {token}")
  if failing:
    raise UserError(f"workdir {workdir} is not shared by the hosts: process{'es' if len(failing) > 1 else ''} "
                    f"{', '.join(map(str, failing))} of {jax.process_count()} cannot see the file process 0 wrote "
                    "there (per-host local disks?); give every host the same --workdir on a shared filesystem "
                    "(NFS, a mounted bucket) or a gs://bucket/path")


def _reads(token: epath.Path, nonce: str) -> bool:
  for attempt in range(_READ_TRIES):
    try:
      if token.read_text() == nonce:
        return True
    except (OSError, UnicodeDecodeError):
      pass
    if attempt + 1 < _READ_TRIES:
      time.sleep(_READ_PAUSE_S)
  return False
