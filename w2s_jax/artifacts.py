"""Artifacts: every file a run writes lands whole or not at all, with a checksum that its reader verifies.

Writing. `write_atomic(path, data)` writes a temporary file beside `path` (`.NAME.tmp-PID-RANDOM`: the same
directory, so the rename never crosses a filesystem), flushes and fsyncs it, and renames it onto `path`
(`os.replace`: a reader sees the old file or the new one, never a part of one). An OSError on the way (a full
disk, a read-only directory) removes the temporary file, leaves the previous `path` as it was, and becomes a
one-line `UserError` naming the file, the cause and the fix (`write_error`). `write_file`, `write_json` and
`save_figure` do the same and then record the file's SHA-256 and size in its directory's `checksums.json`:
`report.write` writes results.json, results.md and the plots this way, the sweep its config.json.

Verifying. `verify(directory)` checks every file that `directory/checksums.json` records and gives one line per
file that is missing or not the bytes recorded. `python -m w2s_jax.artifacts verify WORKDIR` does it for the
workdir and each of its stages, prints those lines and exits 1 if there is any. A workdir's files are rewritten
by every run, so the fix for a bad one is to rerun. (A crash between writing a file and recording it shows as a
mismatch too: the check errs on the side of rerunning.)

The stage cache. A stage (a ground-truth fine-tune, a weak-to-strong fine-tune, a feature cache) is described
by a JSON-able `spec`: the model checkpoint, data settings, hyperparameters, seed, and the keys of the stages it
consumes. Its directory `WORKDIR/stages/<kind>-<hash of spec>/` holds `spec.json`, `result.json` (metrics),
`arrays.npz` (logits, features), any file the stage put there itself before saving (a generative stage's
backbone) and, while it trains, `checkpoints/` and `selection/` (orbax's, which commits each step atomically
itself). Changing any field of the spec changes the hash, so stale results are never reused.

`Stage.save` writes `checksums.json` last, recording the SHA-256 and size of every other file at the top of the
directory: it is the stage's commit mark. A stage is finished when it has one, and is then loaded, never
recomputed (unless forced). `Stage.load_if_intact` hashes each recorded file in full before using it (the loader
reads them whole anyway, so this costs CPU time: under a second per GB where the CPU has SHA instructions,
~4 s on this project's VM; a feature cache or logits are megabytes, a 7B generative backbone 28 GB). A
finished stage whose files do not match their record (truncated, edited, missing) is said in one warning line on
stderr, its files are removed and it is computed again. A stage with a result.json but no checksums.json (saved by
a version before checksums, or interrupted between the two) is used, and its checksums recorded, if its result
parses and its arrays read back whole (`Stage._adopt`); otherwise it is discarded the same way. Its
`checkpoints/` stay, so the recomputation resumes from the last checkpoint as an interrupted stage would. A full
disk while saving leaves the stage unfinished, with its checkpoints, and is one line: free space and rerun.

Other filesystems. Every path derived from a workdir is an etils `epath.Path` (`as_path`), so a workdir may be
`gs://bucket/path` (epath reads it through fsspec's gcsfs, or tf.io.gfile where TensorFlow is installed); a
`pathlib.Path` would turn `gs://b/x` into the local directory `gs:/b/x`. Local files are written as above. On an
object store there is no rename and no fsync: the file's bytes are built in memory and uploaded in one write, and
an object appears whole or not at all (a failed upload leaves the previous object), so the guarantee is the same.

Several hosts (docs/multihost.md). Process 0 alone writes a stage and decides whether a stage is finished; the
others follow its decision (`decided_by_process_0`) and read the stage's files after it has saved them
(`on_process_0` is the barrier), so that no host recomputes a stage that the others load, which would leave them
waiting in each other's collectives. The hosts must share the workdir (`workdir.check_shared`).
"""

import dataclasses
import errno
import hashlib
import io
import json
import os
import re
import secrets
import shutil
import sys
import zipfile
from collections.abc import Callable
from typing import Any, BinaryIO, TypeVar

import jax
import numpy as np
from etils import epath

from w2s_jax.errors import UserError

CHECKSUMS_FILE = "checksums.json"
SPEC_FILE, RESULT_FILE, ARRAYS_FILE = "spec.json", "result.json", "arrays.npz"
_TEMP_MARK = ".tmp-"
_BLOCK = 1 << 24  # hashing reads 16 MiB at a time
_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


class CorruptArtifact(Exception):
  """A recorded artifact that is missing or not the bytes recorded; the message is one line."""


# --- paths ---------------------------------------------------------------------------------------

PathLike = str | os.PathLike
# 'gs:/bucket/x': a URL that lost a slash, as pathlib.Path('gs://bucket/x') writes it
_ONE_SLASH_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+:/(?!/)")


def as_path(path: PathLike) -> epath.Path:
  """`path` as an epath.Path, or a one-line UserError for a URL epath cannot open (or one pathlib mangled)."""
  if isinstance(path, epath.Path):
    return path
  text = os.fspath(path)
  if _ONE_SLASH_URL.match(text):
    raise UserError(f"{text!r} looks like a URL with one slash after its scheme (as pathlib.Path writes "
                    f"'gs://bucket/x'); give it as {text.replace(':/', '://', 1)!r}")
  try:
    return epath.Path(text)
  except KeyError:  # epath knows gs://, s3://, az://, hf:// only
    raise UserError(f"{text!r}: its scheme is not one this project can write to; give a local directory or "
                    "gs://bucket/path") from None


def is_local(path: PathLike) -> bool:
  """A path on a local (or mounted) filesystem, with rename and fsync; False for gs:// and other object stores."""
  return "://" not in os.fspath(path)


def _size(path: PathLike) -> int:
  # os.stat locally: epath's local stat also looks up the owner's name, which fails for a uid without one
  return os.stat(path).st_size if is_local(path) else as_path(path).stat().length


def _is_entry_file(path: epath.Path) -> bool:
  """A file of a directory listing (locally a symlink counts too: `discard` removes it, not what it names)."""
  return path.is_file() or (is_local(path) and os.path.islink(path))


def remove_tree(path: PathLike) -> None:
  """Remove a directory and everything under it, if it is there (`shutil.rmtree(ignore_errors=True)` locally)."""
  if is_local(path):
    shutil.rmtree(path, ignore_errors=True)
  else:
    as_path(path).rmtree(missing_ok=True)


def _listing(directory: epath.Path) -> list[epath.Path]:
  """The directory's entries; [] where it is not there (an object store has no empty directories)."""
  try:
    return list(directory.iterdir())
  except FileNotFoundError:
    return []


# --- on several hosts -----------------------------------------------------------------------------

T = TypeVar("T")
_OK, _FAILED = 0, -1


def _broadcast_from_process_0(value: int) -> int:
  """Process 0's `value` on every process. A collective: no process returns before process 0 has called it."""
  from jax.experimental import multihost_utils
  return int(multihost_utils.broadcast_one_to_all(np.int32(value)))


def processes_failing(ok: bool) -> list[int]:
  """Every process passes its own `ok`; all get the indices of the processes that passed False (a collective)."""
  if jax.process_count() == 1:
    return [] if ok else [0]
  from jax.experimental import multihost_utils
  answers = np.asarray(multihost_utils.process_allgather(np.int32(bool(ok)))).reshape(-1)
  return [i for i, answer in enumerate(answers) if not answer]


def _on_process_0(action: Callable[[], T], what: str, share: Callable[[T], int]) -> tuple[T | None, int]:
  """(`action()` on process 0, None elsewhere; `share(result)`, a non-negative int, on every process)."""
  if jax.process_count() == 1:
    result = action()
    return result, share(result)
  result, failure, code = None, None, _OK
  if jax.process_index() == 0:
    try:
      result = action()
      code = share(result)
    except Exception as e:  # told to every process below, then raised here
      failure, code = e, _FAILED
  code = _broadcast_from_process_0(code)
  if failure is not None:
    raise failure
  if code == _FAILED:
    raise UserError(f"process 0 could not {what} (its log says why); fix that and rerun the same command on "
                    "every host")
  return result, code


def on_process_0(action: Callable[[], T], what: str) -> T | None:
  """`action()` on process 0 only (its result there, None elsewhere), with every process waiting until it is done.

  So no host reads what process 0 is still writing, and a failure on process 0 (`what` names the action) stops
  every host with one line instead of leaving the others waiting in their next collective.
  """
  return _on_process_0(action, what, lambda _: _OK)[0]


def decided_by_process_0(decide: Callable[[], bool], what: str) -> bool:
  """`decide()` evaluated on process 0 only, and its answer on every process (a barrier, as `on_process_0`)."""
  return bool(_on_process_0(decide, what, lambda answer: int(bool(answer)))[1])


# --- writing -------------------------------------------------------------------------------------

def write_error(path: PathLike, error: OSError) -> UserError:
  """The one-line error for an OSError while writing `path`: the file, the cause, the fix."""
  cause = error.strerror or str(error)
  where = as_path(path).parent
  if error.errno in _DISK_FULL:
    fix = f"free space on the disk that holds {where} and rerun"
  else:
    fix = f"check that {where} exists and is writable, and rerun"
  return UserError(f"could not write {path} ({cause}); {fix}: finished stages and checkpoints are kept")


def _open_temp(path: epath.Path) -> BinaryIO:
  """The temporary file's handle. A seam: tests swap in a file that runs out of space."""
  return open(path, "xb")


def _temp_path(path: epath.Path) -> epath.Path:
  """Hidden, beside `path`, unique per process and call, so concurrent writers never share one."""
  return path.with_name(f".{path.name}{_TEMP_MARK}{os.getpid()}-{secrets.token_hex(4)}")


def is_temp(path: PathLike) -> bool:
  name = os.path.basename(os.fspath(path))
  return name.startswith(".") and _TEMP_MARK in name


def _fsync_directory(directory: epath.Path) -> None:
  """Make the rename itself durable; some filesystems refuse fsync on a directory, which is then moot."""
  try:
    fd = os.open(directory, os.O_RDONLY)
  except OSError:
    return
  try:
    os.fsync(fd)
  except OSError:
    pass
  finally:
    os.close(fd)


def _write_with(path: PathLike, write: Callable[[BinaryIO], Any]) -> dict[str, Any]:
  """`write(file)` into a temporary file, renamed onto `path` once complete and on disk; returns its record.

  On an object store (gs://): into memory, then uploaded in one write (`_upload`)."""
  path = as_path(path)
  if not is_local(path):
    return _upload(path, write)
  temp = _temp_path(path)
  try:
    path.parent.mkdir(parents=True, exist_ok=True)
    with _open_temp(temp) as f:
      write(f)
      f.flush()
      os.fsync(f.fileno())
    record = file_record(temp)  # the bytes that reached the disk, read back
    os.replace(temp, path)
    _fsync_directory(path.parent)
  except OSError as e:
    temp.unlink(missing_ok=True)
    raise write_error(path, e) from None
  except BaseException:
    temp.unlink(missing_ok=True)
    raise
  return record


def _upload(path: epath.Path, write: Callable[[BinaryIO], Any]) -> dict[str, Any]:
  """An object store has no rename, but an object appears whole or not at all: every byte is in memory before
  the upload starts, so a write cut short (an exception inside `write`, a kill) uploads nothing, and a failed
  upload leaves the previous object. The record is of the bytes sent (reading them back would cost a download)."""
  buffer = io.BytesIO()
  write(buffer)
  data = buffer.getvalue()
  try:
    path.parent.mkdir(parents=True, exist_ok=True)  # a no-op on GCS (no directories), kept for other stores
    with path.open("wb") as f:
      f.write(data)
  except OSError as e:
    raise write_error(path, e) from None
  return {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}


def write_atomic(path: PathLike, data: bytes | str) -> dict[str, Any]:
  """Write `data` to `path` whole or not at all (see the module doc); returns {'sha256', 'bytes'} of it."""
  data = data.encode() if isinstance(data, str) else data
  return _write_with(path, lambda f: f.write(data))


def write_file(path: PathLike, data: bytes | str) -> None:
  """`write_atomic`, then record the file's checksum in its directory's checksums.json."""
  path = as_path(path)
  _record(path, write_atomic(path, data))


def write_json(path: PathLike, value: Any, **dumps_kwargs: Any) -> None:
  """`value` as JSON (`json.dumps` options; indent=1 unless given), written and recorded as `write_file`."""
  write_file(path, json.dumps(value, **{"indent": 1, **dumps_kwargs}))


def save_figure(fig, path: PathLike, **savefig_kwargs: Any) -> epath.Path:
  """A matplotlib figure saved as `write_file` saves bytes (the format from the suffix); returns `path`."""
  path = as_path(path)
  _record(path, _write_with(path, lambda f: fig.savefig(f, format=path.suffix.lstrip("."), **savefig_kwargs)))
  return path


# --- checksums -----------------------------------------------------------------------------------

def sha256_of(path: PathLike) -> str:
  digest = hashlib.sha256()
  with as_path(path).open("rb") as f:
    for block in iter(lambda: f.read(_BLOCK), b""):
      digest.update(block)
  return digest.hexdigest()


def file_record(path: PathLike) -> dict[str, Any]:
  return {"sha256": sha256_of(path), "bytes": _size(path)}


def _checksums_json(files: dict[str, dict[str, Any]]) -> str:
  return json.dumps({"files": dict(sorted(files.items()))}, indent=1) + "\n"


def read_checksums(directory: PathLike) -> dict[str, dict[str, Any]] | None:
  """File name -> {'sha256', 'bytes'} from `directory/checksums.json`; None if there is none.

  Raises CorruptArtifact if it does not parse or names a file outside the directory.
  """
  path = as_path(directory) / CHECKSUMS_FILE
  try:
    text = path.read_text()
  except FileNotFoundError:
    return None
  except (OSError, UnicodeDecodeError) as e:
    raise CorruptArtifact(f"{CHECKSUMS_FILE} is unreadable ({e})") from None
  try:
    files = json.loads(text)["files"]
    for name, record in files.items():
      if name != os.path.basename(name) or not name or name.startswith(".") or name == CHECKSUMS_FILE:
        raise ValueError(f"it names {name!r}, not a file of this directory")
      if not (isinstance(record["sha256"], str) and len(record["sha256"]) == 64 and isinstance(record["bytes"], int)):
        raise ValueError(f"its entry for {name} is malformed")
  except (ValueError, KeyError, TypeError, AttributeError) as e:
    raise CorruptArtifact(f"{CHECKSUMS_FILE} is corrupt ({str(e) or type(e).__name__})") from None
  return files


def check_file(directory: PathLike, name: str, record: dict[str, Any]) -> str | None:
  """Why `directory/name` is not the file recorded (one line, naming it), or None if it is."""
  path = as_path(directory) / name
  try:
    size = _size(path)
  except FileNotFoundError:
    return f"{name} is missing"
  if size != record["bytes"]:
    return f"{name} is {size} bytes, {record['bytes']} recorded (truncated or overwritten)"
  if sha256_of(path) != record["sha256"]:
    return f"{name} does not match its recorded SHA-256 (corrupt or edited)"
  return None


def _record(path: epath.Path, record: dict[str, Any]) -> None:
  """Set `path`'s entry in its directory's checksums.json (rewritten atomically)."""
  try:
    files = read_checksums(path.parent) or {}
  except CorruptArtifact as e:
    print(f"warning: {path.parent / CHECKSUMS_FILE}: {e}; starting a new one", file=sys.stderr)
    files = {}
  files[path.name] = record
  write_atomic(path.parent / CHECKSUMS_FILE, _checksums_json(files))


def _verify(directory: PathLike) -> tuple[int, list[str]]:
  """(files checked, one line per bad one) for the files `directory/checksums.json` records."""
  directory = as_path(directory)
  try:
    files = read_checksums(directory)
  except CorruptArtifact as e:
    return 0, [f"{directory}: {e}"]
  if files is None:
    return 0, [f"{directory}: no {CHECKSUMS_FILE} (written before checksums were recorded): nothing to verify"]
  problems = [check_file(directory, name, record) for name, record in files.items()]
  return len(files), [f"{directory}: {p}" for p in problems if p]


def verify(directory: PathLike) -> list[str]:
  """One line per file recorded in `directory/checksums.json` that is missing or not the bytes recorded.

  [] when every recorded file matches; a directory without checksums.json (or with an unreadable one) is one line.
  """
  return _verify(directory)[1]


def verify_workdir(workdir: PathLike) -> tuple[int, list[str]]:
  """(files checked, one line per bad artifact) over a workdir's own files and its stages'.

  A stage still training (no result.json, no checksums.json) is skipped: it has nothing to verify yet.
  """
  workdir = as_path(workdir)
  n, problems = _verify(workdir)
  for directory in sorted((workdir / "stages").glob("*")):
    stage = Stage(directory.name.split("-")[0], {}, directory)
    if stage.done():
      checked, bad = _verify(directory)
      n, problems = n + checked, problems + bad
    elif stage.saved():
      problems.append(f"{directory}: {RESULT_FILE} but no {CHECKSUMS_FILE} (saved by an older version, or "
                      "interrupted while saving): the next run uses it if its files are whole, else recomputes it")
  return n, problems


# --- the stage cache ----------------------------------------------------------------------------

def spec_hash(spec: dict[str, Any]) -> str:
  """A short stable hash of a JSON-able spec (key order does not matter)."""
  canonical = json.dumps(spec, sort_keys=True, separators=(",", ":"), default=str)
  return hashlib.sha256(canonical.encode()).hexdigest()[:16]


@dataclasses.dataclass
class Stage:
  kind: str
  spec: dict[str, Any]
  directory: epath.Path

  def __post_init__(self):
    self.directory = as_path(self.directory)

  @property
  def key(self) -> str:
    return spec_hash(self.spec)

  @property
  def checkpoint_dir(self) -> epath.Path:
    return self.directory / "checkpoints"

  @property
  def selection_dir(self) -> epath.Path:
    """Where checkpoint selection keeps its best parameters while the stage trains."""
    return self.directory / "selection"

  def done(self) -> bool:
    """Finished: its checksums.json, written last, exists (`load` checks that its files match it)."""
    return (self.directory / CHECKSUMS_FILE).exists()

  def saved(self) -> bool:
    """Finished, or holding a result without checksums (an older version's stage, or an interrupted save)."""
    return self.done() or (self.directory / RESULT_FILE).exists()

  def load(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """(result, arrays) of a finished stage, each file checked against its checksum first.

    Raises CorruptArtifact (one line, naming the file) if a file is missing, of another size or other bytes.
    """
    files = read_checksums(self.directory)
    if files is None:
      raise CorruptArtifact(f"no {CHECKSUMS_FILE}")
    if RESULT_FILE not in files:
      raise CorruptArtifact(f"{CHECKSUMS_FILE} records no {RESULT_FILE}")
    for name, record in files.items():
      problem = check_file(self.directory, name, record)
      if problem:
        raise CorruptArtifact(problem)
    return self._read(ARRAYS_FILE in files)

  def _read(self, has_arrays: bool) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    name = RESULT_FILE
    try:  # the bytes are the ones recorded, so this fails only if the stage was saved broken
      result = json.loads((self.directory / RESULT_FILE).read_text())
      arrays = {}
      if has_arrays:
        name = ARRAYS_FILE
        arrays = _read_arrays(self.directory / ARRAYS_FILE)
    except (ValueError, OSError, EOFError, KeyError, zipfile.BadZipFile) as e:
      raise CorruptArtifact(f"{name} does not parse ({type(e).__name__}: {e})".replace("\n", " ")) from None
    return result, arrays

  def load_if_intact(self) -> tuple[dict[str, Any], dict[str, np.ndarray]] | None:
    """(result, arrays) of a finished stage whose files match their checksums; None if it is to be computed.

    A saved stage that cannot be used (see the module doc) is said in one warning line on stderr and its files
    are removed (its checkpoints stay); a stage still training is left as it is. On several processes, process 0
    decides (and discards or adopts) and the others read the stage it found finished.
    """
    if jax.process_count() == 1:
      return self._load_if_intact()
    loaded_on_0 = []

    def decide() -> bool:  # on process 0 only
      loaded_on_0.append(self._load_if_intact())
      return loaded_on_0[0] is not None

    if not decided_by_process_0(decide, f"check stage {self.directory.name}"):
      return None
    loaded, problem = (loaded_on_0 or [None])[0], None
    if jax.process_index() != 0:
      try:  # process 0 has just checked every file against its record: these are those bytes
        files = read_checksums(self.directory) or {}
        loaded = self._read(ARRAYS_FILE in files)
      except CorruptArtifact as e:
        problem = str(e)
    failing = processes_failing(problem is None)  # every process, so none goes on alone
    if failing:
      raise UserError(f"stage {self.directory.name}: processes {failing} could not read the files process 0 "
                      f"found whole{f' ({problem})' if problem else ''}; the hosts must share the workdir "
                      "and nothing else may write it while it runs: rerun")
    return loaded

  def _load_if_intact(self) -> tuple[dict[str, Any], dict[str, np.ndarray]] | None:
    if not self.done():
      return self._adopt() if self.saved() else None
    try:
      return self.load()
    except CorruptArtifact as e:
      self.discard(str(e))
      return None

  def _adopt(self) -> tuple[dict[str, Any], dict[str, np.ndarray]] | None:
    """A stage with a result but no checksums: saved by a version before them (which wrote the arrays, then
    the result, each renamed into place), or cut between its result and its record. Its files are used, and
    their checksums recorded, if they are whole: the result parses and every array reads back (a zip's
    CRC-32s are checked on reading). Otherwise it is discarded. Recomputing every stage of every workdir
    on upgrading would throw away hours of finished work for nothing."""
    try:
      result = json.loads((self.directory / RESULT_FILE).read_text())
      arrays = _read_arrays(self.directory / ARRAYS_FILE)
    except (ValueError, OSError, EOFError, KeyError, zipfile.BadZipFile) as e:
      self.discard(f"{RESULT_FILE} but no {CHECKSUMS_FILE}, and its files are not whole "
                   f"({type(e).__name__}: {e})".replace("\n", " "))
      return None
    if jax.process_index() == 0:
      write_atomic(self.directory / SPEC_FILE, json.dumps(self.spec, indent=1, sort_keys=True, default=str))
      files = {p.name: file_record(p) for p in sorted(_listing(self.directory))
               if p.is_file() and p.name != CHECKSUMS_FILE and not p.name.startswith(".")}
      write_atomic(self.directory / CHECKSUMS_FILE, _checksums_json(files))
      print(f"note: stage {self.directory.name} was saved without checksums (an older version, or a save cut "
            "short before them); its files are whole, so it is used and their checksums are now recorded",
            file=sys.stderr)
    return result, arrays

  def discard(self, problem: str) -> None:
    """Say in one line why this stage is recomputed, and remove its files (not its checkpoints)."""
    if jax.process_index() != 0:
      return
    print(f"warning: stage {self.directory.name}: {problem}; it is not used but recomputed", file=sys.stderr)
    (self.directory / CHECKSUMS_FILE).unlink(missing_ok=True)  # uncommitted first
    for path in _listing(self.directory):
      if _is_entry_file(path):
        path.unlink(missing_ok=True)

  def save(self, result: dict[str, Any], arrays: dict[str, np.ndarray] | None = None, *,
           keep_checkpoints: bool = False) -> None:
    """Write the stage's outputs (process 0 only), each atomically; checksums.json last, so that a crash or a
    full disk leaves the stage unfinished (and its checkpoints in place) rather than finished and broken.
    Every process returns once the stage is saved (`on_process_0`)."""
    on_process_0(lambda: self._write(result, arrays, keep_checkpoints), f"save stage {self.directory.name}")

  def _write(self, result: dict[str, Any], arrays: dict[str, np.ndarray] | None, keep_checkpoints: bool) -> None:
    directory = self.directory
    try:
      directory.mkdir(parents=True, exist_ok=True)
      (directory / CHECKSUMS_FILE).unlink(missing_ok=True)  # unfinished until the new record lands
      if not arrays:
        (directory / ARRAYS_FILE).unlink(missing_ok=True)
    except OSError as e:
      raise write_error(directory / CHECKSUMS_FILE, e) from None
    files = {SPEC_FILE: write_atomic(directory / SPEC_FILE, json.dumps(self.spec, indent=1, sort_keys=True,
                                                                       default=str))}
    if arrays:
      files[ARRAYS_FILE] = _write_with(directory / ARRAYS_FILE, lambda f: np.savez(f, **arrays))
    files[RESULT_FILE] = write_atomic(directory / RESULT_FILE, json.dumps(result, indent=1, sort_keys=True,
                                                                         default=float))
    # Files the stage wrote itself before saving (a generative stage's backbone) are part of it too.
    for path in sorted(_listing(directory)):
      if path.is_file() and path.name not in files and path.name != CHECKSUMS_FILE and not path.name.startswith("."):
        files[path.name] = file_record(path)
    write_atomic(directory / CHECKSUMS_FILE, _checksums_json(files))
    # Temporary files of a writer that was killed (this stage's earlier, interrupted save): one run
    # holds the workdir (w2s_jax/workdir.py), so none is still being written. A feature cache's could
    # be gigabytes.
    for path in _listing(directory):
      if is_temp(path) and path.is_file():
        path.unlink(missing_ok=True)
    if not keep_checkpoints:
      # The checkpoints served resumption; a finished stage no longer needs them (a 7B
      # student's train state is ~90 GB), unless the user keeps them to reuse the model.
      remove_tree(self.checkpoint_dir)
      remove_tree(self.selection_dir)

  def clear(self) -> None:
    """Remove the whole stage, checkpoints included (process 0; every process waits for it)."""
    on_process_0(lambda: remove_tree(self.directory), f"remove stage {self.directory.name}")


def _read_arrays(path: epath.Path) -> dict[str, np.ndarray]:
  """Every array of an .npz, read whole (through a file object: np.load cannot open a gs:// name)."""
  with path.open("rb") as f, np.load(f) as stored:
    return {k: stored[k] for k in stored.files}


class StageStore:
  """Stages of one workdir."""

  def __init__(self, workdir: PathLike):
    self.root = as_path(workdir) / "stages"

  def stage(self, kind: str, spec: dict[str, Any]) -> Stage:
    return Stage(kind, spec, self.root / f"{kind}-{spec_hash(spec)}")


def main(argv: list[str]) -> int:
  """`python -m w2s_jax.artifacts verify WORKDIR...`: one line per bad artifact; exit status 1 if any."""
  if len(argv) < 2 or argv[0] != "verify":
    print("usage: python -m w2s_jax.artifacts verify WORKDIR [WORKDIR...]", file=sys.stderr)
    return 2
  bad = False
  for workdir in argv[1:]:
    n, problems = verify_workdir(workdir)
    for line in problems:
      print(line)
    bad = bad or bool(problems)
    if not problems:
      print(f"{workdir}: ok, {n} files match their checksums")
  return 1 if bad else 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
