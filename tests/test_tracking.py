"""Tracking: metrics.jsonl lines, and W&B offline runs written into the workdir."""

import json
import os

import pytest

from w2s_jax.errors import UserError
from w2s_jax.tracking import Tracker, wandb_mode


def test_metrics_jsonl_without_wandb(tmp_path):
  tracker = Tracker(tmp_path, {"task": "x"}, mode="disabled")
  with tracker.stage("ground_truth:m:seed0", {"seed": 0}) as log:
    log(1, {"loss": 0.5})
    log(2, {"loss": 0.25})
  tracker.close()
  lines = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert [l["step"] for l in lines] == [1, 2] and lines[1]["loss"] == 0.25
  assert lines[0]["stage"] == "ground_truth:m:seed0"


def test_wandb_offline_run_lands_in_workdir_with_config_and_commit(tmp_path, monkeypatch):
  monkeypatch.delenv("WANDB_MODE", raising=False)
  monkeypatch.setenv("WANDB_SILENT", "true")
  tracker = Tracker(tmp_path, {"task": "x"}, mode="offline", group="sweep")
  with tracker.stage("weak_to_strong:a->b:xent:seed0", {"seed": 0}) as log:
    log(1, {"loss": 0.5})
  tracker.close()
  runs = list((tmp_path / "wandb").glob("offline-run-*"))
  assert len(runs) == 1
  assert any(p.suffix == ".wandb" for p in runs[0].iterdir())


def test_wandb_mode_auto_and_bad(monkeypatch):
  monkeypatch.delenv("WANDB_API_KEY", raising=False)
  assert wandb_mode("auto") == "offline"
  monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
  assert wandb_mode("auto") == "online"
  with pytest.raises(UserError, match="wandb.mode"):
    wandb_mode("sometimes")
