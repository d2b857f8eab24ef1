"""Gemma 3 (text): parity with transformers' Gemma3ForCausalLM, its config layouts, the real sizes."""

import dataclasses

import jax
import numpy as np
import pytest
import torch
import transformers

from tests import parity
from w2s_jax import models
from w2s_jax.errors import UserError
from w2s_jax.models import checkpoints, gemma3
from w2s_jax.models.gemma3 import FULL, SLIDING

# Every Gemma-3 detail is set off its default, so reading it wrong (or not at all) shows:
# head_dim (16) != D / N (8) and != query_pre_attn_scalar (24); 2 kv heads for 4 query heads;
# a window (4) shorter than the batch's longest row (12); global layers at positions that no
# "every 6th layer" rule would give; local and global RoPE bases that differ, the global one
# linearly scaled.
SMALL = dict(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=4,
             num_attention_heads=4, num_key_value_heads=2, head_dim=16, query_pre_attn_scalar=24,
             sliding_window=4, max_position_embeddings=64, layer_types=[SLIDING, FULL, SLIDING, FULL],
             rope_parameters={SLIDING: dict(rope_type="default", rope_theta=100.0),
                              FULL: dict(rope_type="linear", factor=4.0, rope_theta=10000.0)})
TINY = {
    "gemma3": {},
    # Gemma 3 ships without caps. A final cap of 0.5 bends these logits; the attention cap is
    # stored but never applied by transformers' Gemma 3 (its Gemma 2 applies it), nor by us.
    "gemma3_softcap": dict(attn_logit_softcapping=1.0, final_logit_softcapping=0.5),
}


def _perturbed(model):
  # HF initialises norm weights to 0 (scale 1 + 0): perturb every tensor, so a norm read
  # from the wrong place (or not at all) shows in the outputs.
  torch.manual_seed(1)
  with torch.no_grad():
    for p in model.parameters():
      p.add_(0.05 * torch.randn_like(p))
  return model.eval()


def _text_config(**extra):
  # eager: the plain reference implementation of attention.
  return transformers.Gemma3TextConfig(**(SMALL | extra), attn_implementation="eager")


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory):
  made = {}

  def get(name):
    if name not in made:
      torch.manual_seed(0)
      model = _perturbed(transformers.Gemma3ForCausalLM(_text_config(**TINY[name])))
      directory = tmp_path_factory.mktemp(name)
      model.save_pretrained(directory)
      made[name] = directory, model
    return made[name]
  return get


def _jit_apply(loaded, ids, mask, method=None):
  """module.apply, jitted: op-by-op dispatch costs seconds on this CPU."""
  return jax.jit(lambda p: loaded.module.apply({"params": p}, ids, mask, method=method))(loaded.params)


def _expected(torch_model, ids, mask):
  logits = parity.torch_forward(torch_model, ids, mask).logits.numpy()
  hidden = parity.torch_forward(torch_model.model, ids, mask).last_hidden_state.numpy()
  return hidden, logits


def _last_real(hidden, mask):
  return hidden[np.arange(len(mask)), mask.sum(1) - 1]  # [B, D]


@pytest.mark.parametrize("scan_layers", [False, True])
@pytest.mark.parametrize("name", sorted(TINY))
def test_gemma3_parity_hidden_logits_and_pooled_features(tiny_dirs, name, scan_layers):
  directory, torch_model = tiny_dirs(name)
  ids, mask = parity.padded_batch(SMALL["vocab_size"])
  hidden_hf, logits_hf = _expected(torch_model, ids, mask)
  mesh = parity.one_device_mesh()

  lm = checkpoints.load_pretrained(directory, mesh, task="lm", scan_layers=scan_layers)
  assert lm.config.sliding == (True, False, True, False)
  logits = _jit_apply(lm, ids, mask)
  assert parity.max_abs_diff_on_real_tokens(logits, logits_hf, mask) <= 1e-4
  hidden = _jit_apply(lm, ids, mask, method=lambda m, i, a: m.backbone(i, a))
  assert parity.max_abs_diff_on_real_tokens(hidden, hidden_hf, mask) <= 1e-4

  clf = checkpoints.load_pretrained(directory, mesh, task="classify", scan_layers=scan_layers)
  features = _jit_apply(clf, ids, mask, method="features")  # pooled at the last real token
  np.testing.assert_allclose(np.asarray(features), _last_real(hidden_hf, mask), atol=1e-4, rtol=0)


# Guards the parity test: each Gemma-3 detail, dropped from our config, must break the agreement.
@pytest.mark.parametrize("name, change", [
    ("gemma3", dict(sliding_window=None)),  # no local window
    ("gemma3", dict(layer_types=(FULL,) * 4)),  # every layer global
    ("gemma3", dict(layer_types=(SLIDING, SLIDING, FULL, FULL))),  # types in the wrong layers
    ("gemma3", dict(rope_local_theta=10000.0)),  # one RoPE base for both types
    ("gemma3", dict(rope_scaling=None)),  # the global layers' linear scaling dropped
    ("gemma3", dict(query_pre_attn_scalar=16.0)),  # head_dim ** -0.5 scaling
    ("gemma3_softcap", dict(final_softcap=None)),
])
def test_each_gemma3_detail_changes_the_output(tiny_dirs, name, change):
  directory, torch_model = tiny_dirs(name)
  ids, mask = parity.padded_batch(SMALL["vocab_size"])
  _, logits_hf = _expected(torch_model, ids, mask)
  lm = checkpoints.load_pretrained(directory, parity.one_device_mesh(), task="lm")
  wrong = checkpoints.build_model(dataclasses.replace(lm.config, **change), task="lm")
  logits = jax.jit(wrong.apply)({"params": lm.params}, ids, mask)
  assert parity.max_abs_diff_on_real_tokens(logits, logits_hf, mask) > 1e-3


def test_remat_scan_and_bfloat16_forward_stays_close(tiny_dirs):
  # Forward only, as in test_llama: remat wraps the scanned Gemma block, and bfloat16 compute
  # lands near HF's float32 (the sqrt(D) embedding scale rounded to bfloat16 as HF rounds it).
  directory, torch_model = tiny_dirs("gemma3")
  ids, mask = parity.padded_batch(SMALL["vocab_size"])
  _, logits_hf = _expected(torch_model, ids, mask)
  fast = checkpoints.load_pretrained(directory, parity.one_device_mesh(), task="lm", dtype="bfloat16",
                                     remat="dots_no_batch", scan_layers=True)
  hidden = _jit_apply(fast, ids, mask, method=lambda m, i, a: m.backbone(i, a))
  assert hidden.dtype == np.dtype("bfloat16")
  logits = _jit_apply(fast, ids, mask)
  assert logits.dtype == np.float32
  assert 1e-4 < parity.max_abs_diff_on_real_tokens(logits, logits_hf, mask) < 0.1


def test_multimodal_gemma3_checkpoint_loads_its_language_model(tmp_path):
  torch.manual_seed(0)
  vision = transformers.SiglipVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                           num_attention_heads=2, image_size=28, patch_size=14)
  config = transformers.Gemma3Config(text_config=_text_config().to_dict(), vision_config=vision.to_dict(),
                                     mm_tokens_per_image=4)
  model = _perturbed(transformers.Gemma3ForConditionalGeneration(config))
  model.save_pretrained(tmp_path)  # language_model.model.*, vision_tower.*, multi_modal_projector.*
  ids, mask = parity.padded_batch(SMALL["vocab_size"])
  hidden_hf = parity.torch_forward(model.model.language_model, ids, mask).last_hidden_state.numpy()

  lm = checkpoints.load_pretrained(tmp_path, parity.one_device_mesh(), task="lm")
  assert lm.config == gemma3.Gemma3Config.from_hf(_text_config().to_dict())
  hidden = _jit_apply(lm, ids, mask, method=lambda m, i, a: m.backbone(i, a))
  assert parity.max_abs_diff_on_real_tokens(hidden, hidden_hf, mask) <= 1e-4


def test_both_config_layouts_and_the_hubs_short_text_config_read_the_same():
  # transformers 4 wrote rope_theta / rope_local_base_freq / rope_scaling and a layer pattern;
  # transformers 5 writes per-layer-type rope_parameters and layer_types.
  old = dict(model_type="gemma3_text", num_hidden_layers=7, rope_theta=5e5, rope_local_base_freq=20.0,
             rope_scaling=dict(rope_type="linear", factor=8.0), sliding_window_pattern=3)
  ours_old = gemma3.Gemma3Config.from_hf(old)
  ours_new = gemma3.Gemma3Config.from_hf(transformers.Gemma3TextConfig(**old).to_dict())
  assert ours_old == ours_new
  assert ours_new.sliding == (True, True, False, True, True, False, True)
  assert (ours_new.rope_theta, ours_new.rope_local_theta) == (5e5, 20.0)
  assert ours_new.rope_scaling_dict == {"rope_type": "linear", "factor": 8.0}
  # gemma-3-4b's config.json lists six text keys; the rest are Gemma3TextConfig's defaults.
  short = dict(model_type="gemma3", text_config=dict(
      hidden_size=2560, intermediate_size=10240, model_type="gemma3_text", num_hidden_layers=34,
      rope_scaling=dict(factor=8.0, rope_type="linear"), sliding_window=1024))
  full = transformers.Gemma3Config(text_config=short["text_config"]).to_dict()
  assert gemma3.Gemma3Config.from_hf(short) == gemma3.Gemma3Config.from_hf(full)
  assert models.config_from_hf(short).sliding.count(False) == 34 // 6
  hash(ours_new)  # configs are static arguments of jit and flax modules


def test_unsupported_gemma3_configs_are_one_clear_line():
  base = dict(model_type="gemma3_text", num_hidden_layers=2)
  with pytest.raises(UserError, match="use_bidirectional_attention"):
    gemma3.Gemma3Config.from_hf(base | dict(use_bidirectional_attention=True))
  with pytest.raises(UserError, match="unties the LM head"):
    gemma3.Gemma3Config.from_hf(base | dict(tie_word_embeddings=False))
  with pytest.raises(UserError, match="layer_types"):
    gemma3.Gemma3Config.from_hf(base | dict(layer_types=[SLIDING]))
  with pytest.raises(UserError, match="'yarn' is not supported"):
    gemma3.Gemma3Config.from_hf(base | dict(rope_scaling=dict(rope_type="yarn", factor=4.0)))


def _n_params(config) -> int:
  abstract = checkpoints.abstract_params(checkpoints.build_model(config, task="lm"))
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(abstract))


def _hf_n_params(config: gemma3.Gemma3Config) -> int:
  """transformers' count for the same sizes, built on the meta device (no memory)."""
  hf = transformers.Gemma3TextConfig(
      vocab_size=config.vocab_size, hidden_size=config.d_model, intermediate_size=config.d_ff,
      num_hidden_layers=config.n_layers, num_attention_heads=config.n_heads,
      num_key_value_heads=config.n_kv_heads, head_dim=config.head_dim, sliding_window=config.sliding_window)
  with torch.device("meta"):
    model = transformers.Gemma3ForCausalLM(hf)
  return sum(p.numel() for p in model.parameters())  # the tied LM head counted once


@pytest.mark.parametrize("preset, exact", [
    # Gemma-3-270M: V=262144, D=640, 18 layers, 4 heads of H=256, 1 kv head, F=2048, tied.
    #   embedding V*D                                       = 167,772,160
    #   per layer: q, o 2*D*4*256; k, v 2*D*256; MLP 3*D*F;
    #              4 block norms 4*D; q/k norms 2*H          =   5,573,632
    #   18 layers                                           = 100,325,376
    #   final norm D                                        =         640
    #   total                                               = 268,098,176  (card: 268M)
    ("gemma-3-270m", 268_098_176),
    # Gemma-3-1B: D=1152, 26 layers, F=6912, otherwise as 270M: card 1B (999,885,952).
    ("gemma-3-1b", 999_885_952),
])
def test_gemma3_parameter_counts_without_memory(preset, exact):
  config = models.preset(preset)
  assert _n_params(config) == exact == _hf_n_params(config)
