"""The reward-model setting end to end: a preference jsonl, weak and strong reward models fine-tuned on
ground truth, the strong one on the weak model's preferences (xent = soft Bradley-Terry, logconf), with
and without generative finetuning, and linear probes on cached pair features."""

import json

import numpy as np
import pytest

from tests import tiny_models
from tests.test_finetune import main as run_main
from tests.test_pipeline import tiny_config
from w2s_jax.config_base import model
from w2s_jax.errors import UserError
from w2s_jax.protocol import context, sweep


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
  root = tmp_path_factory.mktemp("reward_assets")
  return {"weak": tiny_models.save_gpt2(root / "weak", n_embd=8, n_layer=1),
          "strong": tiny_models.save_gpt2(root / "strong", n_embd=32, n_layer=2, seed=1),
          "task": tiny_models.preference_jsonl(root / "pairs.jsonl", 160)}


def reward_config(assets, **overrides):
  """The sweep tests' tiny config on the pair task: GPT-2s of 8 and 32 wide."""
  return tiny_config(assets, **{"train.epochs": 2.0, "max_length": 16, **overrides})


def test_reward_models_weak_to_strong_with_and_without_generative_finetuning(assets, tmp_path):
  c = reward_config(assets, **{"pairs": "weak:strong,weak:strong_gft", "mesh.data": 4, "mesh.fsdp": 2})
  with c.unlocked():
    c.models.strong_gft = model(str(assets["strong"]), 3e-3, generative_finetune=True)
    c.model_order = ("weak", "strong", "strong_gft")
  results = sweep.run(c, tmp_path)
  runs = results["runs"]
  assert {(r["strong"], r["method"]) for r in runs} == {(s, m) for s in ("strong", "strong_gft")
                                                        for m in ("xent", "logconf")}
  for r in runs:
    # Accuracy is pairs ranked right, AUROC is on the reward margin: both defined for pairs.
    assert 0.0 <= r["w2s_acc"] <= 1.0 and r["w2s_auroc"] is not None and r["n_test"] == 40
  ceiling = {r["strong"]: r["strong_acc"] for r in runs}
  assert ceiling["strong"] > 0.8  # the strong reward model learns the task from ground truth
  (gen_dir,) = tmp_path.glob("stages/generative-*")
  gen = json.loads((gen_dir / "result.json").read_text())
  assert gen["n_texts"] == 2 * (60 + 40)  # half B's and the test pairs' two texts each, no labels
  assert gen["nll_per_token_after"] < gen["nll_per_token_before"]
  assert sweep.run(c, tmp_path)["trained_stages"] == 0  # every stage cached


def test_reward_probes_on_cached_pair_features(assets, tmp_path):
  # Other kinds of method on pairs: hard weak labels with early stopping, and a filter on the weak
  # model's confidence in its preference.
  c = reward_config(assets, **{"train.linear_probe": True, "train.epochs": 20.0,
                               "methods": ("xent", "hard+weak_auroc", "drop_least_confident")})
  with c.unlocked():
    c.models.weak.lr = c.models.strong.lr = 1e-2
  results = sweep.run(c, tmp_path)
  assert {r["method"] for r in results["runs"]} == {"xent", "hard+weak_auroc", "drop_least_confident"}
  run = next(r for r in results["runs"] if r["method"] == "xent")
  shapes = {np.load(d / "arrays.npz")["train_features"].shape[1:] for d in tmp_path.glob("stages/features-*")}
  assert shapes == {(2, 8), (2, 32)}  # each pair's two sequences, pooled: [N, 2, D] per model
  assert run["strong_acc"] > 0.7 and run["w2s_auroc"] is not None


def test_prompting_a_preference_task_is_refused(assets, tmp_path):
  c = reward_config(assets, **{"prompting.shots": (0,)})
  with pytest.raises(UserError, match="preference task"):
    sweep.run(c, tmp_path)


def test_preference_pairs_are_not_split_by_their_slot_order(assets, tmp_path):
  data = context.Context(reward_config(assets), tmp_path).load_data(0)
  labels = [e.label for e in (*data.half_a, *data.half_b, *data.task.test)]
  assert 0.3 < np.mean(labels) < 0.7  # the chosen response sits in either slot


@pytest.mark.slow
def test_reward_runlocal_on_the_offline_models(tmp_path):
  run_main("--config=configs/reward.py:runlocal", f"--workdir={tmp_path}")
  (run,) = json.loads((tmp_path / "results.json").read_text())["runs"]
  assert (run["weak"], run["strong"], run["method"]) == ("minilm_l3", "smollm2_gft", "logconf")
  assert 0.0 <= run["w2s_acc"] <= 1.0 and run["w2s_auroc"] is not None and run["n_test"] == 16
  (gen_dir,) = tmp_path.glob("stages/generative-*")
  gen = json.loads((gen_dir / "result.json").read_text())
  assert gen["nll_per_token_after"] < gen["nll_per_token_before"]
