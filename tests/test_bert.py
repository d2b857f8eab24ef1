"""BERT-style encoders: exact parity with transformers' PyTorch BERT on the same weights, pooling,
checkpoints saved from task models, FSDP, and the real sizes."""

import json
import shutil

import jax
import numpy as np
import pytest
import safetensors.torch
import torch
import transformers

from tests import parity
from w2s_jax import models, sharding
from w2s_jax.errors import UserError
from w2s_jax.models import bert, checkpoints

TINY = dict(vocab_size=97, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
            intermediate_size=64, max_position_embeddings=32, type_vocab_size=2, hidden_act="gelu")


def randomise(model: torch.nn.Module) -> torch.nn.Module:
  """HF starts biases at 0 and LayerNorms at 1; perturb every tensor so each one's map is tested."""
  torch.manual_seed(1)
  with torch.no_grad():
    for p in model.parameters():
      p.add_(0.1 * torch.randn_like(p))
  return model.eval()


def save(model: torch.nn.Module, directory):
  model.save_pretrained(directory)
  return directory


@pytest.fixture(scope="module")
def tiny_bert_dir(tmp_path_factory):
  torch.manual_seed(0)
  model = randomise(transformers.BertModel(transformers.BertConfig(**TINY)))  # with its pooler
  return save(model, tmp_path_factory.mktemp("bert")), model


def hf_hidden(torch_bert, ids, mask) -> np.ndarray:
  return parity.torch_forward(torch_bert, ids, mask).last_hidden_state.numpy()


def our_hidden(loaded, ids, mask) -> np.ndarray:
  """Final hidden states [B, T, D]; jitted, since op-by-op dispatch is the slow part on CPU."""
  backbone = lambda params, i, m: loaded.module.apply({"params": params}, i, m,
                                                      method=lambda mod, i, a: mod.backbone(i, a))
  return np.asarray(jax.jit(backbone)(loaded.params, ids, mask))


def our_features(loaded, ids, mask) -> np.ndarray:
  """Pooled features [B, D] of the classifier, jitted."""
  features = lambda params, i, m: loaded.module.apply({"params": params}, i, m, method="features")
  return np.asarray(jax.jit(features)(loaded.params, ids, mask))


def test_bert_parity_hidden_states_with_right_padding(tiny_bert_dir):
  directory, torch_model = tiny_bert_dir
  ids, mask = parity.padded_batch(TINY["vocab_size"])
  ours = parity.load_ours(directory, parity.one_device_mesh(), task="classify")
  hidden = our_hidden(ours, ids, mask)
  assert parity.max_abs_diff_on_real_tokens(hidden, hf_hidden(torch_model, ids, mask), mask) <= 1e-4


@pytest.mark.parametrize("task_model", ["BertForSequenceClassification", "BertForMaskedLM"])
def test_bert_parity_checkpoint_saved_from_a_task_model(task_model, tmp_path):
  # These store the encoder under "bert." next to heads (classifier.*, cls.*) that we ignore.
  torch.manual_seed(0)
  model = randomise(getattr(transformers, task_model)(transformers.BertConfig(**TINY)))
  ours = parity.load_ours(save(model, tmp_path), parity.one_device_mesh(), task="classify")
  ids, mask = parity.padded_batch(TINY["vocab_size"])
  hidden = our_hidden(ours, ids, mask)
  assert parity.max_abs_diff_on_real_tokens(hidden, hf_hidden(model.bert, ids, mask), mask) <= 1e-4


def test_bert_parity_checkpoint_with_2019_gamma_beta_layernorm_names(tmp_path):
  # bert-base-uncased on the hub stores "bert.embeddings.LayerNorm.gamma", not ".weight".
  torch.manual_seed(0)
  model = randomise(transformers.BertForPreTraining(transformers.BertConfig(**TINY)))
  model.config.save_pretrained(tmp_path)
  renames = {".LayerNorm.weight": ".LayerNorm.gamma", ".LayerNorm.bias": ".LayerNorm.beta"}
  old_names = {}
  for name, tensor in model.state_dict().items():
    for new, old in renames.items():
      name = name.removesuffix(new) + old if name.endswith(new) else name
    old_names[name] = tensor.clone()  # clone: tied tensors share memory, which safetensors refuses
  assert "bert.embeddings.LayerNorm.gamma" in old_names
  safetensors.torch.save_file(old_names, tmp_path / "model.safetensors")
  ours = parity.load_ours(tmp_path, parity.one_device_mesh(), task="classify")
  ids, mask = parity.padded_batch(TINY["vocab_size"])
  hidden = our_hidden(ours, ids, mask)
  assert parity.max_abs_diff_on_real_tokens(hidden, hf_hidden(model.bert, ids, mask), mask) <= 1e-4


def test_bert_poolings_first_is_cls_and_mean_is_masked_mean(tiny_bert_dir):
  directory, torch_model = tiny_bert_dir
  ids, mask = parity.padded_batch(TINY["vocab_size"])
  expected = hf_hidden(torch_model, ids, mask)
  mesh = parity.one_device_mesh()
  first = checkpoints.load_pretrained(directory, mesh, pooling="first")
  mean = checkpoints.load_pretrained(directory, mesh, pooling="mean")
  np.testing.assert_allclose(our_features(first, ids, mask), expected[:, 0], atol=1e-4)
  masked_mean = (expected * mask[..., None]).sum(1) / mask.sum(1, keepdims=True)
  np.testing.assert_allclose(our_features(mean, ids, mask), masked_mean, atol=1e-4)


def test_bert_default_pooling_is_cls_unless_sentence_transformers_says_mean(tiny_bert_dir,
                                                                            tmp_path):
  directory, _ = tiny_bert_dir
  mesh = parity.one_device_mesh()
  assert checkpoints.load_pretrained(directory, mesh).module.pooling == "first"
  st_dir = shutil.copytree(directory, tmp_path / "sentence_transformer")
  (st_dir / "1_Pooling").mkdir()
  (st_dir / "1_Pooling" / "config.json").write_text(json.dumps(
      {"word_embedding_dimension": TINY["hidden_size"], "pooling_mode_cls_token": False,
       "pooling_mode_mean_tokens": True}))
  assert checkpoints.load_pretrained(st_dir, mesh).module.pooling == "mean"


def test_bert_left_padding_gives_the_same_real_token_states(tiny_bert_dir):
  # Positions count real tokens, so padding on either side leaves real tokens unchanged.
  directory, _ = tiny_bert_dir
  ids, mask = parity.padded_batch(TINY["vocab_size"])
  lengths = mask.sum(1)
  left_ids, left_mask = np.zeros_like(ids), np.zeros_like(mask)
  for b, n in enumerate(lengths):
    left_ids[b, -n:], left_mask[b, -n:] = ids[b, :n], 1
  ours = parity.load_ours(directory, parity.one_device_mesh(), task="classify")
  right = our_hidden(ours, ids, mask)
  left = our_hidden(ours, left_ids, left_mask)
  for b, n in enumerate(lengths):
    np.testing.assert_allclose(left[b, -n:], right[b, :n], atol=1e-5)


def test_bert_same_outputs_on_1_and_8_devices_with_fsdp(tiny_bert_dir, monkeypatch):
  monkeypatch.setattr(sharding, "MIN_SHARDED_SIZE", 0)  # shard even the tiny model's tensors
  directory, _ = tiny_bert_dir
  ids, mask = parity.padded_batch(TINY["vocab_size"], lengths=(5, 9, 2, 9, 9, 1, 4, 7))
  one = checkpoints.load_pretrained(directory, parity.one_device_mesh(), head_init="normal")
  mesh8 = sharding.make_mesh(data=2, fsdp=4)
  eight = checkpoints.load_pretrained(directory, mesh8, head_init="normal")
  words = eight.params["backbone"]["word_embeddings"]["embedding"]
  assert words.sharding.spec == jax.sharding.PartitionSpec(None, "fsdp")  # 32 columns split 4 ways
  assert {s.data.shape for s in words.addressable_shards} == {(97, 8)}  # no device holds it all
  batch = sharding.global_batch({"ids": ids, "mask": mask}, mesh8)
  np.testing.assert_allclose(our_features(eight, batch["ids"], batch["mask"]),
                             our_features(one, ids, mask), atol=1e-5)


def test_bert_has_no_lm_head(tiny_bert_dir):
  directory, _ = tiny_bert_dir
  with pytest.raises(NotImplementedError, match="generative finetuning needs a decoder"):
    checkpoints.load_pretrained(directory, parity.one_device_mesh(), task="lm")


def test_bert_relative_position_checkpoints_are_refused():
  hf = transformers.BertConfig(**TINY).to_dict() | {"position_embedding_type": "relative_key"}
  with pytest.raises(UserError, match="position_embedding_type 'relative_key'"):
    bert.BertConfig.from_hf(hf)


def backbone_parameter_count(preset: str) -> int:
  config = models.preset(preset)
  abstract = checkpoints.abstract_params(checkpoints.build_model(config, task="classify"))
  n = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(abstract))
  return n - config.d_model * 2  # minus the classification head


@pytest.mark.parametrize("preset, without_pooler, model_card_millions", [
    # Embeddings V*D + P*D + 2*D + LN 2*D; per layer 4(D²+D) + 2·2D + 2DF + F + D.
    ("bert-base-uncased", 108_891_648, "109.48"),
    ("all-minilm-l6-v2", 22_565_376, "22.7"),
])
def test_bert_preset_parameter_counts_without_memory(preset, without_pooler, model_card_millions):
  n = backbone_parameter_count(preset)
  assert n == without_pooler
  # The model cards count HF's pooler (D² + D), which we do not load; compare at their precision.
  d = models.preset(preset).d_model
  decimals = len(model_card_millions.split(".")[1])
  assert f"{(n + d * d + d) / 1e6:.{decimals}f}" == model_card_millions
