"""Merging one sweep's seeds run in separate workdirs (w2s_jax/merge.py): the same results as one run."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests import tiny_models
from tests.test_pipeline import tiny_config
from w2s_jax import merge, sweep_report
from w2s_jax.errors import UserError
from w2s_jax.protocol import sweep

REPO = Path(__file__).resolve().parents[1]
SUMMARIES = ("runs", "summary", "oai_summary", "comparison", "pair_gaps", "models", "model_summary", "chains",
             "model_sizes", "min_gap_examples", "comparison_baseline", "task", "model_order")


@pytest.fixture(scope="module")
def split_sweep(tmp_path_factory):
  """One sweep over seeds (0, 1), and the same sweep as two workdirs of one seed each."""
  root = tmp_path_factory.mktemp("merge")
  assets = tiny_models.gpt2_pair(root / "assets", strong_embd=32, strong_layers=2, n_examples=400)
  probes = {"mesh.data": 1, "mesh.fsdp": 1, "train.linear_probe": True, "methods": ("xent", "logconf")}
  sweep.run(tiny_config(assets, **probes, seeds=(0, 1)), root / "both")
  for seed in (0, 1):
    # The stages are the ones the two-seed run trained (each is a function of config and seed alone),
    # so the one-seed sweeps load them: what is under test is the merge, not the training again.
    shutil.copytree(root / "both" / "stages", root / f"seed{seed}" / "stages")
    assert sweep.run(tiny_config(assets, **probes, seeds=(seed,)), root / f"seed{seed}")["trained_stages"] == 0
    lines = (root / "both" / "metrics.jsonl").read_text().splitlines(keepends=True)
    with open(root / f"seed{seed}" / "metrics.jsonl", "a") as log:  # the curves the seed's own run would log
      log.writelines(l for l in lines if json.loads(l).get("stage", "").endswith(f":seed{seed}"))
  return root


def test_merged_seeds_summarize_exactly_as_one_run_over_them(split_sweep, tmp_path):
  # Given in the wrong order: the merge orders rows by seed, as one run over seeds (0, 1) does.
  merge.merge([split_sweep / "seed1", split_sweep / "seed0"], tmp_path / "merged")
  merged = json.loads((tmp_path / "merged" / "results.json").read_text())
  both = json.loads((split_sweep / "both" / "results.json").read_text())
  assert len(merged["runs"]) == 4 and [r["seed"] for r in merged["runs"]] == [0, 0, 1, 1]
  for key in SUMMARIES:
    assert merged[key] == both[key], key
  assert merged["plan"][0].startswith("seeds [0, 1] (merged from 2 workdirs); ground truth: weak, strong")
  assert merged["plan"][1:] == both["plan"][1:]
  assert [m["seeds"] for m in merged["merged_from"]] == [[1], [0]]
  assert (tmp_path / "merged" / "results.md").read_text().split("\n## ")[1:] == \
      (split_sweep / "both" / "results.md").read_text().split("\n## ")[1:]
  # launch/report.py reads the merged workdir like any sweep, training curves of both seeds included.
  loaded = sweep_report.load(tmp_path / "merged")
  assert loaded.config["seeds"] == [0, 1]
  assert {c["stage"].rsplit(":", 1)[1] for c in loaded.curves} == {"seed0", "seed1"}


def test_a_seed_twice_another_sweep_or_an_unfinished_workdir_is_one_clear_error(split_sweep, tmp_path):
  with pytest.raises(UserError, match=r"seed 0 is in both .*seed0 and .*seed0"):
    merge.merge([split_sweep / "seed0", split_sweep / "seed0"], tmp_path / "out")
  other = tmp_path / "other"
  shutil.copytree(split_sweep / "seed1", other, ignore=shutil.ignore_patterns("stages"))
  config = json.loads((other / "config.json").read_text())
  config["n_test"], config["train"]["epochs"] = 7, 9.0
  (other / "config.json").write_text(json.dumps(config))
  with pytest.raises(UserError, match=r"ran a different sweep .*config n_test, train.epochs differ;"):
    merge.merge([split_sweep / "seed0", other], tmp_path / "out")
  with pytest.raises(UserError, match=r"results.json does not exist: each workdir to merge must hold a finished"):
    merge.merge([split_sweep / "seed0", tmp_path / "empty"], tmp_path / "out")
  assert not (tmp_path / "out").exists()  # nothing written when the sources do not merge


def test_merge_command_line(split_sweep, tmp_path):
  done = subprocess.run([sys.executable, str(REPO / "launch" / "merge.py"), str(tmp_path / "m"),
                         str(split_sweep / "seed0"), str(split_sweep / "seed1")], capture_output=True, text=True)
  assert done.returncode == 0, done.stderr
  assert "merged 2 workdirs (4 runs, seeds [0, 1])" in done.stdout
  bad = subprocess.run([sys.executable, str(REPO / "launch" / "merge.py"), str(tmp_path / "n"),
                        str(split_sweep / "seed0"), str(split_sweep / "seed0")], capture_output=True, text=True)
  assert bad.returncode == 1 and bad.stderr.strip().splitlines()[-1].startswith("error: seed 0 is in both")
