"""Generative finetuning: the LM loss on the task's unlabelled inputs before a model's fine-tunes,
a cached stage whose backbone the ceiling and the student start from, side by side with the same
model without it."""

import json

import jax
import numpy as np
import pytest

from tests import tiny_models
from tests.test_pipeline import tiny_config
from w2s_jax import sharding
from w2s_jax.config_base import model
from w2s_jax.errors import UserError
from w2s_jax.models import checkpoints
from w2s_jax.protocol import context, generative, sweep


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
  return tiny_models.gpt2_pair(tmp_path_factory.mktemp("gen_assets"), strong_embd=32, strong_layers=2, n_examples=240)


def gft_config(assets, **overrides):
  c = tiny_config(assets, **{"methods": ("xent",), "train.epochs": 2.0, "pairs": "weak:strong,weak:strong_gft",
                             **overrides})
  with c.unlocked():
    c.models.strong_gft = model(str(assets["strong"]), 3e-3, generative_finetune=True)
    c.model_order = ("weak", "strong", "strong_gft")
    c.generative.epochs = 3.0
  return c


def test_unlabelled_texts_are_half_b_and_test_inputs_only(assets, tmp_path):
  ctx = context.Context(gft_config(assets), tmp_path)
  data = ctx.load_data(0)
  texts = [e.candidates[0] for e in generative.unlabelled_texts(data)]
  assert texts == [e.text for e in (*data.half_b, *data.task.test)]
  half_a_only = {e.text for e in data.half_a} - {e.text for e in (*data.half_b, *data.task.test)}
  assert half_a_only and not half_a_only & set(texts)  # half A (labelled data) is never modelled
  assert all(e.text == "" and e.label == 0 for e in generative.unlabelled_texts(data))  # no labels, no prompt


def test_saved_backbone_is_read_back_exactly(assets, tmp_path):
  mesh = sharding.make_mesh(data=2, fsdp=4)
  lm = checkpoints.load_pretrained(assets["strong"], mesh, task="lm")
  shifted = jax.tree.map(lambda x: x + 1.0, lm.params["backbone"])
  generative.save_backbone(shifted, tmp_path / "backbone.safetensors")
  classifier = checkpoints.load_pretrained(assets["strong"], mesh, head_init="normal")
  restored = generative.with_backbone(classifier, tmp_path / "backbone.safetensors")
  for a, b in zip(jax.tree.leaves(restored.params["backbone"]), jax.tree.leaves(shifted)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert a.sharding == b.sharding
  np.testing.assert_array_equal(np.asarray(restored.params["head"]["kernel"]),
                                np.asarray(classifier.params["head"]["kernel"]))


def test_generative_finetuning_side_by_side_and_cached(assets, tmp_path):
  results = sweep.run(gft_config(assets), tmp_path)
  (gen_dir,) = tmp_path.glob("stages/generative-*")
  gen = json.loads((gen_dir / "result.json").read_text())
  assert gen["nll_per_token_after"] < gen["nll_per_token_before"]  # it learnt the task's text
  assert (gen_dir / generative.BACKBONE_FILE).exists()
  runs = {r["strong"]: r for r in results["runs"]}
  assert set(runs) == {"strong", "strong_gft"}
  assert runs["strong"]["strong_acc"] != runs["strong_gft"]["strong_acc"] or \
      runs["strong"]["w2s_acc"] != runs["strong_gft"]["w2s_acc"]
  md = (tmp_path / "results.md").read_text()
  assert "| weak | strong | xent |" in md and "| weak | strong_gft | xent |" in md
  # The ceiling and the student of strong_gft hold the generative stage's key; plain strong's do not,
  # nor does its spec name the field (a model without it keeps the key it had before the field existed).
  gen_key = json.loads((gen_dir / "spec.json").read_text())
  for stage_dir in tmp_path.glob("stages/*"):
    kind = stage_dir.name.split("-")[0]
    spec = json.loads((stage_dir / "spec.json").read_text())
    if spec["model_name"] == "strong_gft":
      assert spec["config"]["model.generative_finetune"] is True
      if kind != "generative":
        assert spec["generative"] == gen_dir.name.split("-", 1)[1], kind
    else:
      assert "model.generative_finetune" not in spec["config"] and "generative" not in spec
  assert gen_key["trained_on"] == "half_b_and_test_inputs"
  assert sweep.run(gft_config(assets), tmp_path)["trained_stages"] == 0


def test_generative_finetuning_of_a_linear_probe_is_refused(assets, tmp_path):
  with pytest.raises(UserError, match="linear probe"):
    sweep.run(gft_config(assets, **{"train.linear_probe": True}), tmp_path)
