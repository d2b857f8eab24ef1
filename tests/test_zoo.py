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


def load_zoo_config(arg=None):
  import importlib.util
  spec = importlib.util.spec_from_file_location("zoo", REPO / "configs" / "zoo.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


def test_the_zoo_holds_every_offline_model_and_small_leaves_out_only_the_qwens():
  from w2s_jax import offline
  full, small = load_zoo_config(), load_zoo_config("small")
  assert {m.checkpoint for m in full.models.values()} == {f"offline:{name}" for name in offline.MODELS}
  assert sorted(full.model_order) == sorted(full.models.keys())
  left_out = {full.models[n].checkpoint for n in full.model_order if n not in small.model_order}
  assert left_out == {"offline:qwen2.5-coder-0.5b", "offline:qwen2.5-coder-1.5b"}
  with pytest.raises(ValueError, match="unknown variant"):
    load_zoo_config("tiny")
