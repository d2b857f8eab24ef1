"""artifacts.py: files land whole or not at all, carry checksums, and a damaged one is recomputed, never used.

A full disk is simulated by a file that takes `room` bytes and then fails as a full disk does, after writing
the part that fits (`FullDisk`).
"""

import errno
import io
import json

import numpy as np
import pytest

from tests import tiny_models
from tests.test_pipeline import tiny_config
from tests.test_report import results_for, three_seed_runs
from w2s_jax import artifacts, report
from w2s_jax.errors import UserError
from w2s_jax.protocol import sweep


class FullDisk(io.FileIO):
  """A file on a disk with `room` bytes free."""
  room = 0

  def write(self, data):
    data = memoryview(data).cast("B")
    fits = max(0, self.room - self.tell())
    if len(data) > fits:
      super().write(data[:fits])
      raise OSError(errno.ENOSPC, "No space left on device")
    return super().write(data)


def fill_disk(monkeypatch, *, room: int, only: str = "") -> None:
  """From now on, temporary files whose name contains `only` run out of space after `room` bytes."""
  real = artifacts._open_temp

  def open_temp(path):
    if only not in path.name:
      return real(path)
    f = FullDisk(path, "x")
    f.room = room
    return f

  monkeypatch.setattr(artifacts, "_open_temp", open_temp)


def temp_files(directory):
  return [p for p in directory.rglob("*") if artifacts.is_temp(p)]


def one_line(text: str) -> str:
  lines = text.strip().splitlines()
  assert len(lines) == 1, text
  return lines[0]


def test_write_atomic_replaces_a_file_whole_and_returns_its_checksum(tmp_path):
  path = tmp_path / "sub" / "a.txt"
  record = artifacts.write_atomic(path, "first")
  assert path.read_text() == "first" and record == artifacts.file_record(path) and record["bytes"] == 5
  artifacts.write_atomic(path, b"second")
  assert path.read_bytes() == b"second"
  assert not temp_files(tmp_path)


def test_a_full_disk_while_writing_is_one_line_and_keeps_the_previous_file(tmp_path, monkeypatch):
  path = tmp_path / "results.md"
  artifacts.write_file(path, "old and complete")
  fill_disk(monkeypatch, room=4)
  with pytest.raises(UserError) as error:
    artifacts.write_file(path, "new, and longer than the room left")
  message = one_line(str(error.value))
  assert str(path) in message and "No space left on device" in message and "free space" in message
  assert "finished stages and checkpoints are kept" in message
  assert path.read_text() == "old and complete"
  assert artifacts.verify(tmp_path) == []  # the record still describes the file that is there
  assert not temp_files(tmp_path)


def save_stage(tmp_path, **files):
  stage = artifacts.StageStore(tmp_path).stage("ground_truth", {"model": "weak", "seed": 0})
  arrays = {"test_logits": np.arange(12, dtype=np.float32).reshape(6, 2), "test_uids": np.arange(6)}
  stage.save({"acc": 0.75, "model": "weak"}, arrays)
  return stage, arrays


def test_a_saved_stage_loads_back_with_every_file_recorded(tmp_path):
  stage, arrays = save_stage(tmp_path)
  (stage.directory / "backbone.safetensors").write_bytes(b"weights")  # a file the stage wrote itself
  stage.save({"acc": 0.75, "model": "weak"}, arrays)
  assert stage.done()
  recorded = artifacts.read_checksums(stage.directory)
  assert set(recorded) == {"spec.json", "result.json", "arrays.npz", "backbone.safetensors"}
  result, loaded = stage.load_if_intact()
  assert result == {"acc": 0.75, "model": "weak"}
  np.testing.assert_array_equal(loaded["test_logits"], arrays["test_logits"])
  assert artifacts.verify(stage.directory) == [] and not temp_files(tmp_path)


def truncate(path):
  data = path.read_bytes()
  path.write_bytes(data[: len(data) // 2])


def flip_a_byte(path):
  data = bytearray(path.read_bytes())
  data[len(data) // 2] ^= 0x01
  path.write_bytes(bytes(data))


DAMAGES = {
    "truncated arrays": ("arrays.npz", truncate, "arrays.npz is"),
    "flipped byte in the result": ("result.json", flip_a_byte, "result.json does not match its recorded SHA-256"),
    "arrays missing beside a result": ("arrays.npz", lambda p: p.unlink(), "arrays.npz is missing"),
    "corrupt record": ("checksums.json", truncate, "checksums.json is corrupt"),
    "no checksums and truncated arrays (an older version's broken stage)": (
        "checksums.json", lambda p: (p.unlink(), truncate(p.parent / "arrays.npz")),
        "result.json but no checksums.json, and its files are not whole"),
}


def test_a_whole_stage_without_checksums_is_used_and_its_checksums_recorded(tmp_path, capsys):
  """An older version's stage (or a save cut between its result and its record) is not thrown away."""
  stage, arrays = save_stage(tmp_path)
  (stage.directory / "checksums.json").unlink()
  capsys.readouterr()
  result, loaded = stage.load_if_intact()
  note = one_line(capsys.readouterr().err)
  assert note.startswith(f"note: stage {stage.directory.name} was saved without checksums") and "used" in note
  assert result == {"acc": 0.75, "model": "weak"}
  np.testing.assert_array_equal(loaded["test_logits"], arrays["test_logits"])
  assert stage.done() and artifacts.verify(stage.directory) == []
  assert stage.load_if_intact()[0] == result and capsys.readouterr().err == ""  # recorded: no note again


@pytest.mark.parametrize("damage", list(DAMAGES))
def test_a_damaged_stage_is_said_in_one_line_and_recomputed_not_used(damage, tmp_path, capsys):
  stage, _ = save_stage(tmp_path)
  name, spoil, said = DAMAGES[damage]
  spoil(stage.directory / name)
  (stage.checkpoint_dir / "7").mkdir(parents=True)  # a kept checkpoint: the recomputation resumes from it
  capsys.readouterr()
  assert stage.load_if_intact() is None
  warning = one_line(capsys.readouterr().err)
  assert warning.startswith(f"warning: stage {stage.directory.name}: ") and said in warning
  assert "recomputed" in warning
  assert not stage.saved() and [p.name for p in stage.directory.iterdir()] == ["checkpoints"]
  assert stage.load_if_intact() is None and capsys.readouterr().err == ""  # now merely unfinished


def test_a_full_disk_while_saving_a_stage_leaves_it_unfinished_with_its_checkpoints(tmp_path, monkeypatch, capsys):
  stage = artifacts.StageStore(tmp_path).stage("weak_to_strong", {"seed": 1})
  (stage.checkpoint_dir / "12").mkdir(parents=True)
  (stage.checkpoint_dir / "12" / "state").write_bytes(b"the last complete checkpoint")
  arrays = {"test_logits": np.ones((1000, 2), np.float32)}
  fill_disk(monkeypatch, room=1000, only="arrays.npz")
  with pytest.raises(UserError) as error:
    stage.save({"acc": 0.5}, arrays)
  message = one_line(str(error.value))
  assert str(stage.directory / "arrays.npz") in message and "No space left on device" in message
  assert not stage.done() and not (stage.directory / "arrays.npz").exists() and not temp_files(tmp_path)
  assert (stage.checkpoint_dir / "12" / "state").read_bytes() == b"the last complete checkpoint"
  assert stage.load_if_intact() is None and capsys.readouterr().err == ""  # unfinished: it resumes
  monkeypatch.undo()  # space freed: the rerun saves it
  stage.save({"acc": 0.5}, arrays)
  assert stage.load_if_intact()[0] == {"acc": 0.5} and not stage.checkpoint_dir.exists()


def test_report_files_are_recorded_and_verify_names_a_corrupt_results_json(tmp_path, capsys):
  report.write(results_for(three_seed_runs()), tmp_path)
  recorded = artifacts.read_checksums(tmp_path)
  assert {"results.json", "results.md", "accuracy.png", "pgr.png"} <= set(recorded)
  assert artifacts.verify(tmp_path) == []
  assert artifacts.main(["verify", str(tmp_path)]) == 0
  assert "ok, " in capsys.readouterr().out
  flip_a_byte(tmp_path / "results.json")
  (problem,) = artifacts.verify(tmp_path)
  assert problem == f"{tmp_path}: results.json does not match its recorded SHA-256 (corrupt or edited)"
  assert artifacts.main(["verify", str(tmp_path)]) == 1
  assert one_line(capsys.readouterr().out) == problem


def test_verify_workdir_covers_its_stages(tmp_path):
  stage, _ = save_stage(tmp_path)
  report.write(results_for(three_seed_runs()), tmp_path)
  n, problems = artifacts.verify_workdir(tmp_path)
  assert problems == [] and n >= 3 + 4
  truncate(stage.directory / "arrays.npz")
  (tmp_path / "stages" / "features-0123").mkdir()  # still training: nothing to verify yet
  _, problems = artifacts.verify_workdir(tmp_path)
  assert len(problems) == 1 and f"{stage.directory}: arrays.npz is" in problems[0]


def test_a_full_disk_while_writing_the_report_keeps_the_previous_results(tmp_path, monkeypatch):
  runs = three_seed_runs()
  report.write(results_for(runs), tmp_path)
  before = {name: (tmp_path / name).read_bytes() for name in ("results.json", "results.md", "pgr.png")}
  fill_disk(monkeypatch, room=100, only="results.json")
  with pytest.raises(UserError) as error:
    report.write(results_for(runs[:2]), tmp_path)
  message = one_line(str(error.value))
  assert str(tmp_path / "results.json") in message and "free space" in message
  assert {name: (tmp_path / name).read_bytes() for name in before} == before
  assert artifacts.verify(tmp_path) == [] and not temp_files(tmp_path)


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
  return tiny_models.gpt2_pair(tmp_path_factory.mktemp("assets"), strong_embd=16, strong_layers=1, n_examples=200)


def test_a_damaged_stage_in_a_sweep_is_recomputed_to_the_same_results(assets, tmp_path, capsys):
  config = tiny_config(assets, **{"mesh.data": 1, "mesh.fsdp": 1, "train.linear_probe": True, "methods": ("xent",)})
  first = sweep.run(config, tmp_path)
  assert first["trained_stages"] == 2 + 2 + 1  # 2 feature caches, 2 ground truths, 1 student
  stages = tmp_path / "stages"
  weak = {kind: next(d for d in stages.glob(f"{kind}-*")
                     if json.loads((d / "result.json").read_text())["model"] == "weak")
          for kind in ("ground_truth", "features")}
  weak_gt = weak["ground_truth"]
  truncate(weak_gt / "arrays.npz")
  # The weak model's features: a stage is read only where needed, and the weak ground truth needs these.
  flip_a_byte(weak["features"] / "arrays.npz")
  capsys.readouterr()
  again = sweep.run(config, tmp_path)
  warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning: stage")]
  assert len(warnings) == 2 and any(weak_gt.name in w and "arrays.npz is" in w for w in warnings)
  assert again["trained_stages"] == 2  # those two, nothing else
  assert json.dumps(again["runs"]) == json.dumps(first["runs"])
  assert artifacts.verify_workdir(tmp_path)[1] == []
