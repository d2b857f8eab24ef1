"""The whole weak-to-strong sweep (w2s_jax/protocol/) end to end, on tiny real checkpoints and a small jsonl task."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

import numpy as np

from tests import tiny_models
from w2s_jax import artifacts
from w2s_jax.protocol import context, pgr, sweep
from w2s_jax.data import tasks
from w2s_jax.errors import UserError
from w2s_jax.config_base import base, finalize, model

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
  return tiny_models.gpt2_pair(tmp_path_factory.mktemp("assets"), strong_embd=32, strong_layers=2, n_examples=400)


def tiny_config(assets, **overrides):
  c = base()
  c.task = f"jsonl:{assets['task']}"
  c.n_train, c.n_test, c.max_length = None, None, 32
  # The weak model is small and trained with a small learning rate, so that it stays weak.
  c.models.update(dict(weak=model(str(assets["weak"]), 3e-4), strong=model(str(assets["strong"]), 3e-3)))
  c.model_order = ("weak", "strong")
  c.methods = ("xent", "logconf")
  c.seeds = (0,)
  c.train.batch_size, c.train.epochs, c.train.log_every = 16, 3.0, 4
  c.head_init = "normal"
  c.wandb.mode = "disabled"
  override(c, overrides)
  return finalize(c)


def override(c, overrides: dict) -> None:
  """Set dotted fields ('train.epochs': 2.0) of an unlocked config."""
  for key, value in overrides.items():
    node = c
    *parents, last = key.split(".")
    for p in parents:
      node = node[p]
    node[last] = value


RUN_FIELDS = {"weak", "strong", "method", "seed", "oracle", "supervisor", "n_fit", "weak_acc", "strong_acc", "w2s_acc", "pgr", "weak_auroc",
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
  results = sweep.run(config, tmp_path)
  check_outputs(tmp_path, n_runs=2)
  assert results["trained_stages"] == 4  # 2 ground-truth + 2 weak-to-strong
  # The strong model learns this task from ground truth (a sanity check that training works).
  assert results["runs"][0]["strong_acc"] >= 0.9
  again = sweep.run(config, tmp_path)
  assert again["trained_stages"] == 0  # every stage loaded from the cache
  assert json.dumps(again["runs"]) == json.dumps(results["runs"])  # (NaN-safe comparison)
  # Changing a hyperparameter of the student retrains only what depends on it.
  changed = sweep.run(tiny_config(assets, **{**eight, "methods": ("xent",),
                                                "method_options.logconf.alpha_max": 0.75}), tmp_path)
  assert changed["trained_stages"] == 0
  relogconf = sweep.run(tiny_config(assets, **{**eight, "methods": ("logconf",),
                                                  "method_options.logconf.alpha_max": 0.75}), tmp_path)
  assert relogconf["trained_stages"] == 1
  # A runtime-only field (stage_keys.RUNTIME_ONLY) retrains nothing...
  relogged = sweep.run(tiny_config(assets, **{**eight, "train.log_every": 7, "train.checkpoint_every": 3,
                                                 "report.min_gap_examples": 0.0}), tmp_path)
  assert relogged["trained_stages"] == 0
  # ...and every other field reaches the keys of the stages it affects: the head's init changes
  # every fit (2 ground truths, 2 students), not a cached result.
  reinit = sweep.run(tiny_config(assets, **{**eight, "head_init": "zeros"}), tmp_path)
  assert reinit["trained_stages"] == 4


def test_pipeline_on_one_device_linear_probe_with_cached_features(assets, tmp_path):
  config = tiny_config(assets, **{"mesh.data": 1, "mesh.fsdp": 1, "train.linear_probe": True,
                                  "train.epochs": 4.0, "methods": ("xent", "logconf", "product")})
  results = sweep.run(config, tmp_path)
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
  config = tiny_config(assets, **{"mesh.data": 1, "mesh.fsdp": 1, "train.linear_probe": True, "methods": ("xent",)})
  sweep.run(config, tmp_path)
  (weak_stage,) = [d for d in (tmp_path / "stages").glob("ground_truth-*")
                   if json.loads((d / "result.json").read_text())["model"] == "weak"]
  # Saved through the stage, so its checksums match: intact files whose rows are for other examples
  # (an edit by hand would be caught as corruption and recomputed first; tests/test_artifacts.py).
  stage = artifacts.Stage("ground_truth", json.loads((weak_stage / "spec.json").read_text()), weak_stage)
  result, arrays = stage.load()
  arrays["half_b_uids"] = arrays["half_b_uids"][::-1].copy()  # the same examples, in another order
  stage.save(result, arrays)
  with pytest.raises(UserError, match=f"stage {weak_stage.name}: its half B rows are for other examples"):
    sweep.run(config, tmp_path)


def test_two_heads_of_equal_width_do_not_start_identical(assets, tmp_path):
  """One seed per purpose: the head init stream differs per model, so the same checkpoint under two
  names (equal width, same data, same batch order) does not give the same ground-truth model."""
  config = tiny_config(assets, **{"mesh.data": 1, "mesh.fsdp": 1, "train.linear_probe": True, "methods": ("xent",),
                                  "train.epochs": 1.0})
  with config.unlocked():
    config.models.twin = model(str(assets["weak"]), 3e-4)
    config.model_order = ("weak", "twin")
  sweep.run(config, tmp_path)
  logits = {}
  for d in (tmp_path / "stages").glob("ground_truth-*"):
    logits[json.loads((d / "result.json").read_text())["model"]] = np.load(d / "arrays.npz")["test_logits"]
  assert not np.allclose(logits["weak"], logits["twin"], atol=1e-6)


def test_auroc_ranks_by_the_logit_margin_not_saturated_probabilities():
  # Margins of 20 and 30 both give p(class 1) == 1.0 in float32: ranked by probabilities they tie.
  logits = np.array([[0.0, 30.0], [0.0, 20.0], [0.0, 25.0], [0.0, -1.0]], np.float32)
  examples = [tasks.Example(uid=i, text="", label=y) for i, y in enumerate([1, 0, 1, 0])]
  metrics = pgr.test_metrics(logits, examples)
  assert metrics["auroc"] == 1.0 and metrics["acc"] == 0.75


def test_main_lists_methods_and_plans_without_training(assets, tmp_path):
  """(Bad input on the command line: tests/test_bad_input.py.)"""
  def main(*args):
    return subprocess.run([sys.executable, str(REPO / "launch" / "main.py"), *args], capture_output=True,
                          text=True, cwd=REPO, timeout=300, env={**__import__("os").environ,
                                                                 "WANDB_MODE": "disabled"})
  listed = main("--list_methods")
  assert listed.returncode == 0
  assert {line.split()[1] for line in listed.stdout.splitlines()} >= {
      "xent", "logconf", "entropy", "window", "weak_auroc", "ensemble", "drop_least_confident", "strong_to_strong"}
  planned = main("--config=configs/methods.py", "--plan")  # checks the config, trains nothing
  assert planned.returncode == 0, planned.stderr
  assert "students minilm_l3 -> mpnet: xent, xent_hard" in planned.stdout
  assert "chain minilm_l3>minilm_l6>mpnet (in_sample, held_out)" in planned.stdout


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
    sweep.run(config, tmp_path / "work")


def test_unknown_method_and_bad_pairs_fail_before_any_work(assets, tmp_path):
  with pytest.raises(UserError, match="unknown method 'nope'"):
    sweep.run(tiny_config(assets, methods=("nope",)), tmp_path)
  with pytest.raises(UserError, match="names two loss methods"):
    sweep.run(tiny_config(assets, methods=("xent+logconf",)), tmp_path)
  with pytest.raises(UserError, match="method_options.drop_least_confident.frac=1.0 must lie in"):
    sweep.run(tiny_config(assets, **{"methods": ("xent+drop_least_confident",),
                                     "method_options.drop_least_confident.frac": 1.0}), tmp_path)
  with pytest.raises(UserError, match="pairs entry"):
    sweep.run(tiny_config(assets, pairs="weak:giant"), tmp_path)
  with pytest.raises(UserError, match="config.models.strong.remat='everything' is not a policy"):
    sweep.run(tiny_config(assets, **{"models.strong.remat": "everything"}), tmp_path)
  assert not (tmp_path / "stages").exists()


def test_bootstrapping_chain_reuses_stages_and_reports_against_direct(assets, tmp_path):
  mid = tiny_models.save_gpt2(tmp_path / "mid", n_embd=16, n_layer=1, seed=2)
  config = tiny_config(assets, **{"mesh.data": 1, "mesh.fsdp": 1, "train.linear_probe": True,
                                  "methods": ("xent",), "pairs": "weak:strong"})
  with config.unlocked():
    config.models.mid = model(str(mid), 1e-2)
    config.model_order = ("weak", "mid", "strong")
    config.chains = ("weak>mid>strong",)
  results = sweep.run(config, tmp_path / "work")
  # 3 feature caches, 3 ground truths, and 5 students: weak->strong (shared with the chain's
  # direct comparison); in-sample, weak->mid and mid->strong trained on mid's labels of all of
  # half B; held-out, the same two links on disjoint halves of half B.
  assert results["trained_stages"] == 3 + 3 + 5
  in_sample, held_out = results["chains"]
  assert (in_sample["relabel"], held_out["relabel"]) == ("in_sample", "held_out")
  assert in_sample["chain"] == "weak>mid>strong" and [s["student"] for s in in_sample["steps"]] == ["mid", "strong"]
  assert in_sample["direct_w2s_acc"] == held_out["direct_w2s_acc"] == results["runs"][0]["w2s_acc"]
  n_half_b = in_sample["steps"][0]["n_fit"]
  assert [s["n_fit"] for s in held_out["steps"]] in ([n_half_b // 2, n_half_b - n_half_b // 2],
                                                     [n_half_b - n_half_b // 2, n_half_b // 2])
  # Held out: each link's student trained on a part of half B that the other never saw.
  parts = []
  for d in (tmp_path / "work" / "stages").glob("weak_to_strong-*"):
    spec = json.loads((d / "spec.json").read_text())
    if spec["trained_on"] != "half_b":
      parts.append(spec["trained_on"])
  assert sorted(parts) == ["half_b_part_0_of_2", "half_b_part_1_of_2"]
  assert "Bootstrapping chains" in (tmp_path / "work" / "results.md").read_text()


def test_early_stopping_on_weak_labels_and_the_oracle_marked_in_every_table(assets, tmp_path):
  probe = {"mesh.data": 1, "mesh.fsdp": 1, "train.linear_probe": True}
  config = tiny_config(assets, **{**probe, "methods": ("xent+weak_auroc",), "method_options.weak_auroc.eval_every": 3})
  results = sweep.run(config, tmp_path)
  (run,) = results["runs"]
  assert run["method"] == "xent+weak_auroc" and run["selected_step"] > 0 and not run["oracle"]
  (stage,) = (tmp_path / "stages").glob("weak_to_strong-*")
  stored = json.loads((stage / "result.json").read_text())
  n_half_b = stored["n_fit"] + stored["n_val"]
  assert stored["n_val"] == round(0.2 * n_half_b)  # the student trains on the other 80% of half B
  assert stored["selected_step"] in [s for s, _ in stored["selection_history"]]
  assert stored["selection_val_auroc"] == max(score for _, score in stored["selection_history"])
  assert not (stage / "selection").exists()  # the selection's working copy goes with the finished stage
  # The oracle reuses every ground-truth stage and is marked in each table.
  oracle = sweep.run(tiny_config(assets, **{**probe, "methods": ("xent+oracle_auroc",),
                                            "method_options.oracle_auroc.eval_every": 3}), tmp_path)
  assert oracle["trained_stages"] == 1 and oracle["runs"][0]["oracle"]
  markdown = (tmp_path / "results.md").read_text()
  rows = [l for l in markdown.splitlines() if "xent+oracle_auroc" in l and l.startswith("|")]
  assert rows and all("ORACLE" in l for l in rows)
  with pytest.raises(UserError, match="unknown method 'best'"):
    sweep.run(tiny_config(assets, **{"methods": ("xent+best",)}), tmp_path)


def test_supervisor_ensemble_confidence_weights_and_strong_to_strong(assets, tmp_path):
  probe = {"mesh.data": 1, "mesh.fsdp": 1, "train.linear_probe": True}
  config = tiny_config(assets, **{**probe, "methods": (
      "xent", "ensemble+xent", "xent+downweight_least_confident", "xent+drop_least_confident",
      "xent+strong_to_strong", "xent+strong_to_strong_held_out")})
  results = sweep.run(config, tmp_path)
  runs = {r["method"]: r for r in results["runs"]}
  # 2 features, 2 ground truths + 2 more members of the weak ensemble; students: xent, ensemble,
  # down-weighted, dropped, one more round in-sample (its first round is the xent student), and
  # two held-out rounds on the halves of half B.
  assert results["trained_stages"] == 2 + 2 + 2 + 4 + 1 + 2
  # The ensemble's PGR is measured against the ensemble, the supervisor the student had.
  ensemble = runs["ensemble+xent"]
  assert ensemble["supervisor"] == "ensemble(weak x3)" and ensemble["single_weak_acc"] == runs["xent"]["weak_acc"]
  members = []
  for d in (tmp_path / "stages").glob("ground_truth-*"):
    result = json.loads((d / "result.json").read_text())
    if result["model"] == "weak":
      members.append(np.load(d / "arrays.npz")["test_logits"])
  assert len(members) == 3
  probs = np.mean([np.exp(m - m.max(-1, keepdims=True)) / np.exp(m - m.max(-1, keepdims=True)).sum(-1, keepdims=True)
                   for m in members], 0)
  labels = np.array([json.loads(l)["label"] for l in open(assets["task"]) if json.loads(l)["split"] == "test"])
  assert ensemble["weak_acc"] == pytest.approx(float(np.mean(probs.argmax(-1) == labels)))
  # Confidence weights: 20% of half B dropped, or kept at weight 0.5.
  stored = {json.loads((d / "spec.json").read_text())["recipe"]["examples"]: json.loads((d / "result.json").read_text())
            for d in (tmp_path / "stages").glob("weak_to_strong-*")}
  n_half_b = runs["xent"]["n_fit"]
  assert stored["drop_least_confident"]["n_fit"] == n_half_b - round(0.2 * n_half_b)
  assert stored["downweight_least_confident"]["n_downweighted"] == round(0.2 * n_half_b)
  assert stored["downweight_least_confident"]["n_fit"] == n_half_b
  # Strong-to-strong: the second student learns from the first, whose numbers are the xent student's.
  in_sample, held_out = runs["xent+strong_to_strong"], runs["xent+strong_to_strong_held_out"]
  assert len(in_sample["rounds"]) == 2 and in_sample["rounds"][0]["acc"] == runs["xent"]["w2s_acc"]
  assert in_sample["w2s_acc"] == in_sample["rounds"][1]["acc"]
  # Imitation is measured against the weak supervisor in every round's row, as for one student:
  # the first round's own supervisor is the weak model.
  assert in_sample["rounds"][0]["agreement"] == runs["xent"]["agreement"]
  assert {"agreement", "misfit"} <= set(in_sample["rounds"][1])
  assert sum(r["n_fit"] for r in held_out["rounds"]) == n_half_b
  assert results["comparison"] and results["comparison_baseline"] == "xent"
  assert (tmp_path / "methods.png").exists()


def test_a_checkpoint_retrained_into_the_same_directory_gets_a_new_key(tmp_path):
  directory = tmp_path / "model"
  tiny_models.save_gpt2(directory, n_embd=128, n_layer=2, seed=0)  # ~1.6 MB: hashed by sampled regions
  first = context.checkpoint_fingerprint(str(directory))
  assert context.checkpoint_fingerprint(str(directory)) == first
  tiny_models.save_gpt2(directory, n_embd=128, n_layer=2, seed=1)  # same shapes and size, other weights
  assert context.checkpoint_fingerprint(str(directory)) != first
  assert context.checkpoint_fingerprint("openai-community/gpt2") == "openai-community/gpt2"


def test_force_retrains_each_shared_stage_once(assets, tmp_path):
  """Recipes share stages (the weak ground truth; a strong-to-strong's first student is the xent
  student): --force redoes each once per run, not once per recipe that reads it."""
  config = tiny_config(assets, **{"mesh.data": 1, "mesh.fsdp": 1, "train.linear_probe": True, "train.epochs": 1.0,
                                  "methods": ("xent", "xent+strong_to_strong")})
  first = sweep.run(config, tmp_path)
  assert first["trained_stages"] == 2 + 2 + 2  # features, ground truths, two students
  forced = sweep.run(config, tmp_path, force=True)
  assert forced["trained_stages"] == first["trained_stages"]
  assert json.dumps(forced["runs"]) == json.dumps(first["runs"])
