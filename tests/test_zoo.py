"""configs/zoo.py end to end (its runlocal variant): every offline model probed, pairs ranked, figures."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_zoo_runlocal_lists_pairs_and_writes_the_figures(tmp_path):
  env = {**os.environ, "WANDB_MODE": "disabled"}
  done = subprocess.run([sys.executable, "launch/main.py", "--config=configs/zoo.py:runlocal", f"--workdir={tmp_path}"],
                        cwd=REPO, env=env, capture_output=True, text=True, timeout=1800)
  assert done.returncode == 0, done.stderr[-3000:]
  results = json.loads((tmp_path / "results.json").read_text())
  assert {(r["weak"], r["strong"]) for r in results["runs"]} == {
      ("minilm_l3", "minilm_l6"), ("minilm_l3", "mpnet"), ("minilm_l6", "mpnet")}
  assert len(results["pair_gaps"]) == 3 and all(isinstance(r["clear"], bool) for r in results["pair_gaps"])
  sizes = results["model_sizes"]
  assert sizes["minilm_l3"] < sizes["minilm_l6"] < sizes["mpnet"]  # the order pairs='all' reads
  assert "## Pairs worth a fine-tune" in done.stdout
  for name in ("accuracy_vs_size.png", "pgr_heatmap.png"):
    assert (tmp_path / name).exists(), name
