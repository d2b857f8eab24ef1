"""configs/finetune.py end to end (its runlocal variant): the search on half A, then the sweep at its choice."""

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def main(*args):
  env = {**os.environ, "WANDB_MODE": "disabled"}
  done = subprocess.run([sys.executable, "launch/main.py", *args], cwd=REPO, env=env, capture_output=True, text=True,
                        timeout=1800)
  assert done.returncode == 0, done.stderr[-3000:]
  return done


@pytest.mark.slow
def test_finetune_runlocal_searches_on_half_a_then_fine_tunes_at_the_choice(tmp_path):
  searched = main("--config=configs/finetune.py:runlocal", "--search", f"--workdir={tmp_path}")
  search = json.loads((tmp_path / "search.json").read_text())
  assert {(r["model"], r["lr"]) for r in search["rows"]} == {(m, lr) for m in ("minilm_l3", "minilm_l6")
                                                             for lr in (1e-4, 3e-4)}
  assert search["overrides"] in searched.stdout
  assert not (tmp_path / "results.json").exists()  # the search never runs the sweep (nor reads the test set)

  main("--config=configs/finetune.py:runlocal", f"--workdir={tmp_path}", *shlex.split(search["overrides"]))
  results = json.loads((tmp_path / "results.json").read_text())
  chosen = search["chosen"]["shared"]["lr"]
  config = json.loads((tmp_path / "config.json").read_text())
  assert {m: config["models"][m]["lr"] for m in chosen} == chosen
  assert config["train"]["linear_probe"] is False  # backbone and head
  assert {r["method"] for r in results["runs"]} == {"xent", "xent+weak_auroc"}
  for run in results["runs"]:
    assert (run["weak"], run["strong"]) == ("minilm_l3", "minilm_l6")
    assert 0.0 <= run["w2s_acc"] <= 1.0 and 0.0 <= run["strong_acc"] <= 1.0
  early = next(r for r in results["runs"] if r["method"] == "xent+weak_auroc")
  assert early["selected_step"] is not None and early["n_fit"] < next(
      r for r in results["runs"] if r["method"] == "xent")["n_fit"]
