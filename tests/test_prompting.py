"""Prompting baselines: an untrained decoder scored zero- and k-shot on the test set, demonstrations
from half A only, reported beside the same model's fine-tune."""

import json

import pytest

from tests import tiny_models
from tests.test_pipeline import tiny_config
from w2s_jax.data import tasks
from w2s_jax.errors import UserError
from w2s_jax.protocol import context, prompting, sweep

OPTIONS = {"label_words": ("bad", "good"), "instruction": "rate:\n", "answer_prefix": " so"}


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
  return tiny_models.gpt2_pair(tmp_path_factory.mktemp("prompt_assets"), strong_embd=32, strong_layers=2, n_examples=160)


def test_prompts_hold_k_demonstrations_from_half_a(assets, tmp_path):
  data = context.Context(tiny_config(assets), tmp_path).load_data(0)
  zero = prompting.prompted_examples(data, 0, OPTIONS, seed=0)
  test = data.task.test[0]
  assert zero[0] == tasks.ChoiceExample(f"rate:\n{test.text} so", (" bad", " good"), test.label, test.uid)
  three = prompting.prompted_examples(data, 3, OPTIONS, seed=0)
  context_text = three[0].text[:-len(f"{test.text} so")]
  demos = context_text.removeprefix("rate:\n").split("\n\n")[:-1]
  assert len(demos) == 3 and all(p.text.startswith(context_text) for p in three)  # the same demos for all
  half_a = {f"{e.text} so {OPTIONS['label_words'][e.label]}" for e in data.half_a}
  assert set(demos) <= half_a  # labelled demonstrations come from half A only
  assert prompting.prompted_examples(data, 3, OPTIONS, seed=1)[0].text != three[0].text
  with pytest.raises(UserError, match="two different"):
    prompting.prompted_examples(data, 0, {**OPTIONS, "label_words": ("good", "good")}, seed=0)
  # A multiple-choice example keeps its own candidates; a demonstration is its prompt and right answer.
  choice = [tasks.ChoiceExample("q1:", (" a", " b"), 1, 0), tasks.ChoiceExample("q2:", (" c", " d"), 0, 1)]
  chess_like = context.SeedData(0, tasks.TaskData("t", choice, choice), choice[:1], choice[1:])
  (first, _) = prompting.prompted_examples(chess_like, 1, OPTIONS, seed=0)
  assert first == tasks.ChoiceExample("rate:\nq1: b\n\nq1:", (" a", " b"), 1, 0)


def test_prompting_beside_the_fine_tunes_in_results(assets, tmp_path):
  config = tiny_config(assets, **{"methods": ("xent",), "prompting.shots": (0, 2), "prompting.label_words": ("bad", "good")})
  results = sweep.run(config, tmp_path)
  rows = {r["model"]: r for r in results["models"]}
  for name in ("weak", "strong"):
    assert 0.0 <= rows[name]["0_shot_acc"] <= 1.0 and 0.0 <= rows[name]["2_shot_acc"] <= 1.0
    assert rows[name]["0_shot_auroc"] is not None  # a binary task keeps its AUROC
  assert len(list(tmp_path.glob("stages/prompting-*"))) == 4
  md = (tmp_path / "results.md").read_text()
  assert "## Models beside their fine-tunes" in md and "| 0-shot acc | 2-shot acc |" in md
  assert sweep.run(config, tmp_path)["trained_stages"] == 0
  saved = json.loads((tmp_path / "results.json").read_text())
  assert saved["model_summary"][0]["0_shot_acc"]["n"] == 1
