"""The whole weak-to-strong pipeline end to end, on tiny real checkpoints and a small jsonl task."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

import numpy as np

from tests import tiny_models
from w2s_jax import pipeline
from w2s_jax.data import tasks
from w2s_jax.errors import UserError
from w2s_jax.config_base import base, finalize, model

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
  root = tmp_path_factory.mktemp("assets")
  return {"weak": tiny_models.save_gpt2(root / "weak", n_embd=8, n_layer=1),
          "strong": tiny_models.save_gpt2(root / "strong", n_embd=32, n_layer=2, seed=1),
          "task": tiny_models.sentiment_jsonl(root / "task.jsonl", 400)}


def tiny_config(assets, **overrides):
  c = base()
  c.task = f"jsonl:{assets['task']}"
  c.n_train, c.n_test, c.max_length = None, None, 32
  # The weak model is small and trained with a small learning rate, so that it stays weak.
  c.models.update(dict(weak=model(str(assets["weak"]), 3e-4), strong=model(str(assets["strong"]), 3e-3)))
  c.model_order = ("weak", "strong")
  c.losses = ("xent", "logconf")
  c.seeds = (0,)
  c.train.batch_size, c.train.epochs, c.train.log_every = 16, 3.0, 4
  c.head_init = "normal"
  c.wandb.mode = "disabled"
  for key, value in overrides.items():
    node = c
    *parents, last = key.split(".")
    for p in parents:
      node = node[p]
    node[last] = value
  return finalize(c)


RUN_FIELDS = {"weak", "strong", "loss", "seed", "weak_acc", "strong_acc", "w2s_acc", "pgr", "weak_auroc",
              "strong_auroc", "w2s_auroc", "pgr_auroc", "agreement", "agreement_supervisor_right",
              "agreement_supervisor_wrong", "misfit", "misfit_kl"}


def check_outputs(workdir: Path, n_runs: int):
  results = json.loads((workdir / "results.json").read_text())
  assert len(results["runs"]) == n_runs
  for run in results["runs"]:
    assert RUN_FIELDS <= set(run)
    assert 0.0 <= run["w2s_acc"] <= 1.0
  assert results["summary"] and "median" in results["summary"][0]["pgr"]
  assert results["wall_s"] > 0
  assert "## Imitation and misfit" in (workdir / "results.md").read_text()
  for name in ("results.md", "accuracy.png", "pgr.png", "metrics.jsonl", "config.json"):
    assert (workdir / name).exists(), name
  lines = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert any("loss" in l for l in lines)
  return results


def test_pipeline_end_to_end_on_8_devices_and_stage_cache(assets, tmp_path):
  # The strong model runs its blocks as one scan (stacked params, FSDP inside each layer).
  eight = {"mesh.data": 4, "mesh.fsdp": 2, "models.strong.scan_layers": True}
  config = tiny_config(assets, **eight)
  results = pipeline.run(config, tmp_path)
  check_outputs(tmp_path, n_runs=2)
  assert results["trained_stages"] == 4  # 2 ground-truth + 2 weak-to-strong
  # The strong model learns this task from ground truth (a sanity check that training works).
  assert results["runs"][0]["strong_acc"] >= 0.9
  again = pipeline.run(config, tmp_path)
  assert again["trained_stages"] == 0  # every stage loaded from the cache
  assert json.dumps(again["runs"]) == json.dumps(results["runs"])  # (NaN-safe comparison)
  # Changing a hyperparameter of the student retrains only what depends on it.
  changed = pipeline.run(tiny_config(assets, **{**eight, "losses": ("xent",),
                                                "loss_options.logconf.alpha_max": 0.75}), tmp_path)
  assert changed["trained_stages"] == 0
  relogconf = pipeline.run(tiny_config(assets, **{**eight, "losses": ("logconf",),
                                                  "loss_options.logconf.alpha_max": 0.75}), tmp_path)
  assert relogconf["trained_stages"] == 1
  # A runtime-only field (stage_keys.RUNTIME_ONLY) retrains nothing...
  relogged = pipeline.run(tiny_config(assets, **{**eight, "train.log_every": 7, "train.checkpoint_every": 3,
                                                 "report.min_gap_examples": 0.0}), tmp_path)
  assert relogged["trained_stages"] == 0
  # ...and every other field reaches the keys of the stages it affects: the head's init changes
  # every fit (2 ground truths, 2 students), not a cached result.
  reinit = pipeline.run(tiny_config(assets, **{**eight, "head_init": "zeros"}), tmp_path)
  assert reinit["trained_stages"] == 4


def test_pipeline_on_one_device_linear_probe_with_cached_features(assets, tmp_path):
  config = tiny_config(assets, **{"mesh.data": 1, "mesh.fsdp": 1, "train.linear_probe": True,
                                  "train.epochs": 4.0, "losses": ("xent", "logconf", "product")})
  results = pipeline.run(config, tmp_path)
  check_outputs(tmp_path, n_runs=3)
  assert results["trained_stages"] == 2 + 2 + 3  # 2 feature caches, 2 ground truth, 3 students
  assert len(list((tmp_path / "stages").glob("features-*"))) == 2
  # Every stage stores logits with the uids of their examples; metrics come from the logits.
  for stage in (tmp_path / "stages").glob("weak_to_strong-*"):
    with np.load(stage / "arrays.npz") as arrays:
      assert {"test_logits", "test_uids", "half_b_logits", "half_b_uids"} <= set(arrays)
      result = json.loads((stage / "result.json").read_text())
      labels = np.array([json.loads(l)["label"] for l in open(assets["task"]) if json.loads(l)["split"] == "test"])
      assert result["acc"] == pytest.approx(float(np.mean(arrays["test_logits"].argmax(-1) == labels)))


def test_stage_arrays_are_joined_by_uid_and_a_mismatch_names_the_stage(assets, tmp_path):
  config = tiny_config(assets, **{"mesh.data": 1, "mesh.fsdp": 1, "train.linear_probe": True, "losses": ("xent",)})
  pipeline.run(config, tmp_path)
  (weak_stage,) = [d for d in (tmp_path / "stages").glob("ground_truth-*")
                   if json.loads((d / "result.json").read_text())["model"] == "weak"]
  arrays = dict(np.load(weak_stage / "arrays.npz"))
  arrays["half_b_uids"] = arrays["half_b_uids"][::-1].copy()  # the same examples, in another order
  np.savez(weak_stage / "arrays.npz", **arrays)
  with pytest.raises(UserError, match=f"stage {weak_stage.name}: its half B rows are for other examples"):
    pipeline.run(config, tmp_path)


def test_two_heads_of_equal_width_do_not_start_identical(assets, tmp_path):
  """One seed per purpose: the head init stream differs per model, so the same checkpoint under two
  names (equal width, same data, same batch order) does not give the same ground-truth model."""
  config = tiny_config(assets, **{"mesh.data": 1, "mesh.fsdp": 1, "train.linear_probe": True, "losses": ("xent",),
                                  "train.epochs": 1.0})
  with config.unlocked():
    config.models.twin = model(str(assets["weak"]), 3e-4)
    config.model_order = ("weak", "twin")
  pipeline.run(config, tmp_path)
  logits = {}
  for d in (tmp_path / "stages").glob("ground_truth-*"):
    logits[json.loads((d / "result.json").read_text())["model"]] = np.load(d / "arrays.npz")["test_logits"]
  assert not np.allclose(logits["weak"], logits["twin"], atol=1e-6)


def test_auroc_ranks_by_the_logit_margin_not_saturated_probabilities():
  # Margins of 20 and 30 both give p(class 1) == 1.0 in float32: ranked by probabilities they tie.
  logits = np.array([[0.0, 30.0], [0.0, 20.0], [0.0, 25.0], [0.0, -1.0]], np.float32)
  examples = [tasks.Example(uid=i, text="", label=y) for i, y in enumerate([1, 0, 1, 0])]
  metrics = pipeline.Experiment.test_metrics(logits, examples)
  assert metrics["auroc"] == 1.0 and metrics["acc"] == 0.75


def test_main_reports_bad_input_in_one_line(assets, tmp_path):
  def main(*args):
    return subprocess.run([sys.executable, str(REPO / "launch" / "main.py"), *args], capture_output=True,
                          text=True, cwd=REPO, timeout=300, env={**__import__("os").environ,
                                                                 "WANDB_MODE": "disabled"})
  bad_task = main("--config=configs/nlp.py:runlocal", f"--workdir={tmp_path}", "--config.task=no_such_task")
  assert bad_task.returncode != 0
  assert "no_such_task" in bad_task.stderr and "Traceback" not in bad_task.stderr
  assert len(bad_task.stderr.strip().splitlines()) == 1, bad_task.stderr
  listed = main("--list_methods")
  assert listed.returncode == 0
  assert {line.split()[1] for line in listed.stdout.splitlines()} >= {"xent", "logconf", "entropy", "window"}
  bad_key = main("--config=configs/nlp.py:runlocal", f"--workdir={tmp_path}", "--config.no_such_key=1")
  assert bad_key.returncode != 0 and "no_such_key" in bad_key.stderr and "Traceback" not in bad_key.stderr


def test_tokenizer_that_does_not_match_the_model_is_one_clear_error(assets, tmp_path):
  import transformers
  small_vocab = tmp_path / "small_vocab"
  transformers.GPT2LMHeadModel(transformers.GPT2Config(vocab_size=8, n_positions=32, n_embd=8, n_layer=1,
                                                       n_head=2)).save_pretrained(small_vocab)
  tiny_models.word_tokenizer().save_pretrained(small_vocab)  # 21 tokens for a vocabulary of 8
  config = tiny_config(assets, **{"mesh.data": 1, "mesh.fsdp": 1})
  with config.unlocked():
    config.models.weak.checkpoint = str(small_vocab)
  with pytest.raises(UserError, match="tokenizer of weak has 21 tokens but the model's vocabulary has 8"):
    pipeline.run(config, tmp_path / "work")


def test_unknown_loss_and_bad_pairs_fail_before_any_work(assets, tmp_path):
  with pytest.raises(UserError, match="unknown loss 'nope'"):
    pipeline.run(tiny_config(assets, losses=("nope",)), tmp_path)
  with pytest.raises(UserError, match="pairs entry"):
    pipeline.run(tiny_config(assets, pairs="weak:giant"), tmp_path)
  with pytest.raises(UserError, match="config.models.strong.remat='everything' is not a policy"):
    pipeline.run(tiny_config(assets, **{"models.strong.remat": "everything"}), tmp_path)
  assert not (tmp_path / "stages").exists()


def test_bootstrapping_chain_reuses_stages_and_reports_against_direct(assets, tmp_path):
  mid = tiny_models.save_gpt2(tmp_path / "mid", n_embd=16, n_layer=1, seed=2)
  config = tiny_config(assets, **{"mesh.data": 1, "mesh.fsdp": 1, "train.linear_probe": True,
                                  "losses": ("xent",), "pairs": "weak:strong"})
  with config.unlocked():
    config.models.mid = model(str(mid), 1e-2)
    config.model_order = ("weak", "mid", "strong")
    config.chains = ("weak>mid>strong",)
  results = pipeline.run(config, tmp_path / "work")
  # 3 feature caches, 3 ground truths, and 3 students: weak->strong (shared with the chain's
  # direct comparison), weak->mid, and mid->strong trained on mid's labels.
  assert results["trained_stages"] == 3 + 3 + 3
  (chain,) = results["chains"]
  assert chain["chain"] == "weak>mid>strong" and [s["student"] for s in chain["steps"]] == ["mid", "strong"]
  assert chain["direct_w2s_acc"] == results["runs"][0]["w2s_acc"]
  assert "Bootstrapping chains" in (tmp_path / "work" / "results.md").read_text()


def test_early_stopping_on_weak_labels_and_the_oracle_marked_in_every_table(assets, tmp_path):
  config = tiny_config(assets, **{"mesh.data": 1, "mesh.fsdp": 1, "train.linear_probe": True, "losses": ("xent",),
                                  "selection.method": "weak_auroc", "selection.eval_every": 3})
  results = pipeline.run(config, tmp_path)
  (run,) = results["runs"]
  assert run["selection"] == "weak_auroc" and run["selected_step"] > 0
  (stage,) = (tmp_path / "stages").glob("weak_to_strong-*")
  stored = json.loads((stage / "result.json").read_text())
  n_half_b = stored["n_fit"] + stored["n_val"]
  assert stored["n_val"] == round(0.2 * n_half_b)  # the student trains on the other 80% of half B
  assert stored["selected_step"] in [s for s, _ in stored["selection_history"]]
  assert stored["selection_val_auroc"] == max(score for _, score in stored["selection_history"])
  assert not (stage / "selection").exists()  # the selection's working copy goes with the finished stage
  assert "Selection: students' checkpoints selected by AUROC against the supervisor" in (
      tmp_path / "results.md").read_text()
  # The oracle reuses every ground-truth stage and is marked in each table.
  oracle = pipeline.run(tiny_config(assets, **{"mesh.data": 1, "mesh.fsdp": 1, "train.linear_probe": True,
                                               "losses": ("xent",), "selection.method": "oracle_auroc",
                                               "selection.eval_every": 3}), tmp_path)
  assert oracle["trained_stages"] == 1 and oracle["oracle"]
  markdown = (tmp_path / "results.md").read_text()
  assert "**ORACLE**" in markdown
  table_rows = [l for l in markdown.splitlines() if l.startswith("| weak | strong | xent")]
  assert table_rows and all("xent (ORACLE)" in l for l in table_rows)
  with pytest.raises(UserError, match="selection.method='best' is not one of"):
    pipeline.run(tiny_config(assets, **{"selection.method": "best"}), tmp_path)


def test_a_checkpoint_retrained_into_the_same_directory_gets_a_new_key(tmp_path):
  directory = tmp_path / "model"
  tiny_models.save_gpt2(directory, n_embd=128, n_layer=2, seed=0)  # ~1.6 MB: hashed by sampled regions
  first = pipeline.checkpoint_fingerprint(str(directory))
  assert pipeline.checkpoint_fingerprint(str(directory)) == first
  tiny_models.save_gpt2(directory, n_embd=128, n_layer=2, seed=1)  # same shapes and size, other weights
  assert pipeline.checkpoint_fingerprint(str(directory)) != first
  assert pipeline.checkpoint_fingerprint("openai-community/gpt2") == "openai-community/gpt2"
