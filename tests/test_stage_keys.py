"""Stage keys: every config field enters the key of each stage it can affect, or is runtime-only."""

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

from w2s_jax import stage_keys
from w2s_jax.protocol import context
from w2s_jax.config_base import MODEL_DEFAULTS, base, finalize, model

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted((REPO / "configs").glob("*.py"))


def load_config(path: Path, arg: str | None = None):
  spec = importlib.util.spec_from_file_location(path.stem, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_config_leaf_enters_a_stage_key_or_is_runtime_only(path):
  assert stage_keys.uncovered_fields(load_config(path)) == []


def test_a_new_field_that_no_stage_reads_is_caught():
  c = base()
  c.models.m = model("some/checkpoint", 1e-3)
  c.label_smoothing = 0.1  # a field nobody added to stage_keys: it would silently not enter any key
  assert stage_keys.uncovered_fields(finalize(c)) == ["label_smoothing"]
  c = base()
  c.models.m = model("some/checkpoint", 1e-3)
  c.train.label_smoothing = 0.1  # under a prefix that enters the keys: covered by default
  assert stage_keys.uncovered_fields(finalize(c)) == []


def test_keys_hold_the_fields_a_stage_reads_and_not_the_runtime_ones():
  c = base()
  c.models.m = model("some/checkpoint", 1e-3, dtype="bfloat16")
  c = finalize(c)
  gt = stage_keys.config_values(c, "ground_truth", model="m")
  assert gt["head_init"] == "zeros" and gt["model.lr"] == 1e-3 and gt["train.epochs"] == 2.0
  assert not any(stage_keys.runtime_only(k) or k.startswith(("wandb", "mesh", "report")) for k in gt)
  assert "train.log_every" not in gt and "train.checkpoint_every" not in gt
  w2s = stage_keys.config_values(c, "weak_to_strong", model="m", methods=("single", "logconf", "weak_auroc"))
  assert w2s["method_options.logconf.alpha_max"] == 0.5 and w2s["method_options.weak_auroc.val_frac"] == 0.2
  assert not any(k.startswith("method_options") for k in stage_keys.config_values(c, "weak_to_strong", model="m",
                                                                                     methods=("single", "xent")))
  feats = stage_keys.config_values(c, "features", model="m")
  assert set(feats) == {"task", "n_train", "n_test", "balance", "max_length", "data_seed", "model.checkpoint",
                        "model.pooling", "model.dtype", "train.batch_size", "train.length_buckets",
                        "train.length_multiple"}


def test_a_stage_cannot_read_a_field_outside_its_key():
  c = base()
  c.models.m = model("some/checkpoint", 1e-3)
  view = stage_keys.StageConfig("features", stage_keys.config_values(finalize(c), "features", model="m"))
  assert view["model.dtype"] == "float32"
  with pytest.raises(KeyError, match="'head_init' is not in the key of features stages"):
    view["head_init"]


def test_every_model_field_exists_with_its_default_so_the_command_line_can_set_it():
  overrides = ["--config.models.mpnet.microbatches=4", "--config.models.mpnet.pooling=first",
               "--config.models.minilm_l3.remat=full", "--config.models.mpnet.scan_layers=True"]
  # Without --workdir main.py stops right after parsing: a refused override would say "bad command line".
  done = subprocess.run([sys.executable, str(REPO / "launch" / "main.py"), "--config=configs/demo.py", *overrides],
                        cwd=REPO, capture_output=True, text=True, timeout=120)
  assert done.returncode == 2 and "give --config" in done.stderr, done.stderr
  fields = {f.name for f in context.dataclasses.fields(context.ModelSpec)} - {"name"}
  assert set(MODEL_DEFAULTS) | {"checkpoint", "lr"} == fields
  for path in CONFIGS:
    for name, entry in load_config(path).models.items():
      assert set(entry.keys()) == fields, (path.name, name)


def test_a_code_version_bump_changes_the_stage_key(tmp_path, monkeypatch):
  c = base()
  c.models.m = model("some/checkpoint", 1e-3)
  c.model_order = ("m",)
  c.wandb.mode = "disabled"
  c.mesh.data = 1
  experiment = context.Context(finalize(c), tmp_path)
  before, _ = experiment.stage("ground_truth", model="m", seed=0)
  assert before.spec["version"] == stage_keys.VERSIONS["ground_truth"]
  monkeypatch.setitem(stage_keys.VERSIONS, "ground_truth", stage_keys.VERSIONS["ground_truth"] + 1)
  after, _ = experiment.stage("ground_truth", model="m", seed=0)
  assert after.key != before.key
  again, _ = experiment.stage("ground_truth", model="m", seed=1)
  assert again.key != after.key  # and the seed enters it too
