"""gs:// workdirs: every workdir-derived path stays gs://, and files land whole without a rename.

This machine has no network, so GCS itself is replaced: `fake_gcs` registers an in-memory filesystem for
fsspec's "gcs"/"gs" protocols, where gcsfs would be. Everything above it is the real code path that a gs://
workdir takes: `epath.Path("gs://...")`, epath's fsspec backend (the one it picks without TensorFlow), and
this project's non-local branches. The fake behaves as GCS does where it matters here: an object appears
only when its upload closes, there are no directories (mkdir does nothing; a prefix exists once an object is
under it), and there is no rename or append (both raise, so a test fails if the code relied on them).
What it cannot show: gcsfs's own HTTP behaviour, and orbax's checkpoints (tensorstore has its own GCS
driver); for those we check that orbax is handed the gs:// path unmangled.
"""

import importlib
import io
import json
import pathlib
import threading

import numpy as np
import pytest
from etils import epath
from etils.epath import backend as epath_backend
from fsspec.implementations.memory import MemoryFile, MemoryFileSystem

from tests.test_report import results_for, three_seed_runs
from w2s_jax import artifacts, report, tracking, workdir as workdir_lib
from w2s_jax.errors import UserError
from w2s_jax.train import hooks


class _Upload(io.BytesIO):
  """An object being uploaded: it exists only once closed, whole."""

  def __init__(self, fs, path):
    super().__init__()
    self.fs, self.path = fs, path

  def close(self):
    if not self.closed:
      self.fs.store[self.path] = MemoryFile(self.fs, self.path, self.getvalue())
      self.fs.uploads.append(self.path)
    super().close()


class FakeGCS(MemoryFileSystem):
  protocol = ("gcs", "gs")
  store: dict = {}
  pseudo_dirs = [""]
  uploads: list = []  # every object path uploaded, in order

  def __init__(self, *args, **kwargs):
    kwargs.pop("finalize_on_close", None)  # epath passes gcsfs's option
    super().__init__(*args, **kwargs)

  @classmethod
  def _strip_protocol(cls, path):
    path = str(path)
    for prefix in ("gs://", "gcs://"):
      path = path.removeprefix(prefix)
    return "/" + path.strip("/")

  def mkdir(self, path, create_parents=True, **kwargs):
    pass  # GCS has no directories

  def makedirs(self, path, exist_ok=False):
    pass

  def mv(self, *args, **kwargs):
    raise NotImplementedError("the fake GCS has no rename (gcsfs's is a copy and a delete, not atomic)")

  def _open(self, path, mode="rb", **kwargs):
    if "a" in mode:
      raise NotImplementedError("a GCS object cannot be appended to")
    if "w" in mode or "x" in mode:
      return _Upload(self, self._strip_protocol(path))
    return super()._open(path, mode, **kwargs)


@pytest.fixture
def fake_gcs(monkeypatch):
  registry = importlib.import_module("fsspec.registry")._registry  # fsspec's implementations by protocol
  for protocol in FakeGCS.protocol:  # restored after the test
    monkeypatch.setitem(registry, protocol, FakeGCS)
  FakeGCS.store.clear()
  FakeGCS.uploads.clear()
  FakeGCS.pseudo_dirs[:] = [""]
  epath_backend.fsspec_backend._get_filesystem.cache_clear()
  yield FakeGCS
  epath_backend.fsspec_backend._get_filesystem.cache_clear()


def objects(fs) -> list[str]:
  return sorted(fs.store)


def test_workdir_paths_stay_gs_urls():
  assert str(artifacts.as_path("gs://bucket/run") / "stages") == "gs://bucket/run/stages"
  assert str(artifacts.StageStore("gs://bucket/run").stage("features", {"a": 1}).checkpoint_dir).startswith(
      "gs://bucket/run/stages/features-")
  assert str(hooks.orbax_directory("gs://bucket/run/stages/x/checkpoints")) == "gs://bucket/run/stages/x/checkpoints"
  assert not artifacts.is_local("gs://bucket/run") and artifacts.is_local("runs/demo")
  local = hooks.orbax_directory("runs/demo")
  assert local.is_absolute() and str(local).endswith("runs/demo")


@pytest.mark.parametrize("given, match", [
    (str(pathlib.Path("gs://bucket/run")), "one slash after its scheme.*'gs://bucket/run'"),
    ("memory://bucket/run", "scheme is not one"),
])
def test_a_mangled_or_unknown_url_is_one_line(given, match):
  with pytest.raises(UserError, match=match) as e:
    artifacts.as_path(given)
  assert "\n" not in str(e.value)


def test_write_atomic_on_gcs_is_one_upload_and_a_failed_write_uploads_nothing(fake_gcs):
  path = "gs://bucket/run/results.json"
  record = artifacts.write_atomic(path, "first")
  assert fake_gcs.uploads == ["/bucket/run/results.json"] and epath.Path(path).read_text() == "first"
  assert record == artifacts.file_record(path)

  def cut_short(f):
    f.write(b"half of it")
    raise RuntimeError("killed mid-write")

  with pytest.raises(RuntimeError):
    artifacts._write_with(epath.Path(path), cut_short)
  assert epath.Path(path).read_text() == "first" and objects(fake_gcs) == ["/bucket/run/results.json"]
  assert len(fake_gcs.uploads) == 1  # no temporary object, no second upload


def test_a_stage_on_gcs_saves_loads_and_a_damaged_one_is_recomputed(fake_gcs, capsys):
  stage = artifacts.StageStore("gs://bucket/run").stage("ground_truth", {"model": "weak", "seed": 0})
  arrays = {"test_logits": np.arange(12, dtype=np.float32).reshape(6, 2), "test_uids": np.arange(6)}
  assert stage.load_if_intact() is None  # nothing there yet: no directory to list on GCS
  stage.save({"acc": 0.75}, arrays)
  assert stage.done()
  assert {p.name for p in stage.directory.iterdir()} == {"spec.json", "arrays.npz", "result.json", "checksums.json"}
  result, loaded = stage.load_if_intact()
  assert result == {"acc": 0.75}
  np.testing.assert_array_equal(loaded["test_logits"], arrays["test_logits"])
  artifacts.write_json("gs://bucket/run/config.json", {"task": "x"})
  assert artifacts.verify_workdir("gs://bucket/run") == (4, [])  # config.json and the stage's 3 files

  arrays_file = stage.directory / "arrays.npz"
  arrays_file.write_bytes(arrays_file.read_bytes()[:40])  # truncated behind our back
  assert stage.load_if_intact() is None
  assert "arrays.npz is 40 bytes" in capsys.readouterr().err
  assert not stage.saved() and not arrays_file.exists()


def test_claiming_a_gcs_workdir_writes_a_lock_object_and_refuses_a_second_run(fake_gcs):
  workdir = "gs://bucket/run"
  lock = epath.Path(workdir) / workdir_lib.LOCK_NAME
  with workdir_lib.claim(workdir):
    assert json.loads(lock.read_text())["pid"] > 0
    with pytest.raises(UserError, match=r"in use by pid \d+.*no kernel lock.*delete gs://bucket/run/\.lock") as e:
      with workdir_lib.claim(workdir):
        pass
    assert "\n" not in str(e.value)
    assert lock.exists()  # the refused run leaves the holder's lock alone
  assert not lock.exists()  # released
  with workdir_lib.claim(workdir):  # and free again
    pass


def test_metrics_on_gcs_are_rewritten_whole_and_keep_an_earlier_runs_lines(fake_gcs):
  for run in range(2):
    tracker = tracking.Tracker("gs://bucket/run", {"task": "x"}, mode="disabled")
    with tracker.stage(f"ground_truth:m:seed{run}", {"seed": run}) as log:
      log(1, {"loss": 0.5})
      log(2, {"loss": 0.25})
    tracker.summary("done", {"acc": 0.9})
    tracker.close()
  lines = [json.loads(line) for line in epath.Path("gs://bucket/run/metrics.jsonl").read_text().splitlines()]
  assert [line.get("step") for line in lines] == [1, 2, None] * 2
  assert lines[3]["stage"] == "ground_truth:m:seed1"


def test_report_and_plots_land_on_gcs_with_their_checksums(fake_gcs):
  report.write(results_for(three_seed_runs()), "gs://bucket/run")  # a str: report.write makes it an epath
  names = {p.name for p in epath.Path("gs://bucket/run").iterdir()}
  assert {"results.json", "results.md", "accuracy.png", "pgr.png", "checksums.json"} <= names
  assert artifacts.verify("gs://bucket/run") == []
  assert json.loads(epath.Path("gs://bucket/run/results.json").read_text())["task"] == "toy"


def test_orbax_is_handed_the_gs_url_of_a_stages_checkpoints(fake_gcs):
  """orbax writes gs:// itself (tensorstore's GCS driver, which the fake does not reach): the hook must give it
  the URL whole, not a local path named gs:/bucket/... ."""
  before = set(threading.enumerate())
  hook = hooks.Checkpointing(artifacts.StageStore("gs://bucket/run").stage("features", {"a": 1}).checkpoint_dir)
  state = object()
  assert hook.on_start(state, state) is state  # nothing saved yet: the state as given
  assert str(hook._manager.directory).startswith("gs://bucket/run/stages/features-")
  assert str(hook._manager.directory).endswith("/checkpoints")
  hook.on_end(0, state)
  for thread in set(threading.enumerate()) - before:  # orbax's background work, done before the fake goes
    thread.join(timeout=30)


def test_the_sweep_report_of_a_gcs_workdir_lands_beside_it(fake_gcs, tmp_path, monkeypatch):
  from w2s_jax import sweep_report
  report.write(results_for(three_seed_runs()), "gs://bucket/run")
  epath.Path("gs://bucket/run/metrics.jsonl").write_text(
      "\n".join(json.dumps({"stage": f"ground_truth:a:seed{s}", "step": t, "loss": 1.0 / t})
                for s in range(3) for t in (1, 2, 3)))
  sweep = sweep_report.load("gs://bucket/run")
  assert sweep.group == "run" and sweep.stage_kinds == ["ground_truth"]
  figures = sweep_report.write_figures(sweep)
  page = sweep_report.write_html(sweep, figures)
  assert str(page) == "gs://bucket/run/report/report.html"
  assert {f"/bucket/run/report/{f.key}.png" for f in figures} | {"/bucket/run/report/report.html"} <= set(objects(fake_gcs))
  assert page.read_text().count("data:image/png;base64,") == len(figures) >= 3
  # W&B and wandb.Image write and read local files only: the runs and the figures' copies go to the local cache
  from w2s_jax import offline
  monkeypatch.setattr(offline, "cache_root", lambda: tmp_path)
  monkeypatch.setenv("WANDB_SILENT", "true")
  sweep_report.upload(sweep, figures, mode="offline")
  local = tracking.wandb_dir(sweep.workdir)
  assert local == tmp_path / "wandb" / "gs" / "bucket" / "run"
  assert {p.name for p in (local / sweep_report.REPORT_DIR).iterdir()} == {f"{f.key}.png" for f in figures}
  assert len(list((local / "wandb").glob("offline-run-*"))) == len(sweep.results["runs"]) + 1
