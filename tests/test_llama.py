"""Llama / Qwen2 / Mistral: parity with transformers' PyTorch models; the real sizes."""

import dataclasses

import jax
import numpy as np
import pytest
import torch
import transformers

from tests import parity
from w2s_jax import models, sharding
from w2s_jax.errors import UserError
from w2s_jax.models import checkpoints, llama

SMALL = dict(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
             num_attention_heads=4, max_position_embeddings=64)
# Each tiny model exercises one thing the real families differ in.
TINY = {
    # Qwen2: q/k/v bias, grouped-query attention (2 key/value heads for 4 query heads), untied head.
    "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM,
              dict(num_key_value_heads=2, tie_word_embeddings=False, rope_theta=1e6)),
    # Llama 3.1/3.2: tied embeddings, no bias, llama3 RoPE scaling. With head_dim 8 and an
    # original context of 16, the wavelengths (6.3, 63, 628, 6283) hit the kept-as-is, smoothed
    # *and* divided-by-factor branches even in a 12-token batch.
    "llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM,
              dict(num_key_value_heads=2, tie_word_embeddings=True,
                   rope_scaling=dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0,
                                     high_freq_factor=4.0, original_max_position_embeddings=16))),
    # Llama with attention_bias + mlp_bias (every projection biased) and a head_dim that is not D/N.
    "llama_biases": (transformers.LlamaConfig, transformers.LlamaForCausalLM,
                     dict(num_key_value_heads=1, head_dim=16, attention_bias=True, mlp_bias=True,
                          tie_word_embeddings=False)),
    # Mistral: a sliding window (4) shorter than the longest sequence (12).
    "mistral": (transformers.MistralConfig, transformers.MistralForCausalLM,
                dict(num_key_value_heads=2, head_dim=8, sliding_window=4,
                     tie_word_embeddings=False)),
}


def _save_tiny(name: str, directory):
  config_cls, model_cls, extra = TINY[name]
  torch.manual_seed(0)
  model = model_cls(config_cls(**SMALL, **extra))
  # HF initialises biases to 0 and norm scales to 1: perturb every tensor, so a bias or
  # norm read from the wrong place (or not at all) shows in the outputs.
  with torch.no_grad():
    for p in model.parameters():
      p.add_(0.05 * torch.randn_like(p))
  model.save_pretrained(directory)
  return model.eval()


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory):
  made = {}

  def get(name):
    if name not in made:
      directory = tmp_path_factory.mktemp(name)
      made[name] = directory, _save_tiny(name, directory)
    return made[name]
  return get


def _hidden(loaded, ids, mask):
  """parity.our_hidden, jitted: op-by-op dispatch costs seconds on this CPU."""
  hidden = lambda params: parity.our_hidden(dataclasses.replace(loaded, params=params), ids, mask)
  return jax.jit(hidden)(loaded.params)


@pytest.mark.parametrize("name", sorted(TINY))
def test_llama_family_parity_hidden_and_lm_logits(tiny_dirs, name):
  directory, torch_model = tiny_dirs(name)
  ids, mask = parity.padded_batch(SMALL["vocab_size"])
  expected = parity.torch_forward(torch_model, ids, mask)
  expected_hidden = parity.torch_forward(torch_model.model, ids, mask).last_hidden_state

  lm = parity.load_ours(directory, parity.one_device_mesh(), task="lm")
  logits = jax.jit(lm.module.apply)({"params": lm.params}, ids, mask)
  assert parity.max_abs_diff_on_real_tokens(logits, expected.logits.numpy(), mask) <= 1e-4
  hidden = _hidden(lm, ids, mask)
  assert parity.max_abs_diff_on_real_tokens(hidden, expected_hidden.numpy(), mask) <= 1e-4


def test_configs_read_what_makes_each_family_different(tiny_dirs):
  qwen = checkpoints.load_pretrained(tiny_dirs("qwen2")[0], parity.one_device_mesh(), task="lm")
  c = qwen.config
  assert (c.qkv_bias, c.out_bias, c.tie_embeddings) == (True, False, False)
  assert (qwen.config.n_heads, qwen.config.n_kv_heads, qwen.config.rope_theta) == (4, 2, 1e6)
  assert qwen.params["backbone"]["lm_head"]["kernel"].shape == (32, 97)
  tied = checkpoints.load_pretrained(tiny_dirs("llama")[0], parity.one_device_mesh(), task="lm")
  assert tied.config.tie_embeddings and "lm_head" not in tied.params["backbone"]
  assert tied.config.rope_scaling_dict["rope_type"] == "llama3"
  assert checkpoints.read_hf_config(tiny_dirs("mistral")[0])["model_type"] == "mistral"


def test_llama3_rope_scaling_changes_the_output(tiny_dirs):
  # Guards the parity test above: without the scaling our model must disagree with HF's.
  directory, torch_model = tiny_dirs("llama")
  ids, mask = parity.padded_batch(SMALL["vocab_size"])
  expected = parity.torch_forward(torch_model, ids, mask).logits.numpy()
  lm = parity.load_ours(directory, parity.one_device_mesh(), task="lm")
  unscaled = checkpoints.build_model(dataclasses.replace(lm.config, rope_scaling=None), task="lm")
  logits = jax.jit(unscaled.apply)({"params": lm.params}, ids, mask)
  assert parity.max_abs_diff_on_real_tokens(logits, expected, mask) > 1e-2


def test_qwen2_same_outputs_on_1_and_8_devices_with_fsdp(tiny_dirs, monkeypatch):
  monkeypatch.setattr(sharding, "MIN_SHARDED_SIZE", 0)  # shard even the tiny model's tensors
  directory, _ = tiny_dirs("qwen2")
  ids, mask = parity.padded_batch(SMALL["vocab_size"], lengths=(5, 9, 2, 9, 9, 1, 4, 7))
  one = parity.load_ours(directory, parity.one_device_mesh(), task="lm")
  mesh8 = sharding.make_mesh(data=2, fsdp=4)
  eight = parity.load_ours(directory, mesh8, task="lm")
  embed = eight.params["backbone"]["embed"]["embedding"]
  assert embed.sharding.spec == jax.sharding.PartitionSpec(None, "fsdp")  # 32 columns split 4 ways
  assert {s.data.shape for s in embed.addressable_shards} == {(97, 8)}  # no device holds it all
  q = eight.params["backbone"]["block_0"]["attn"]["q"]["kernel"]  # [D=32, N=4, H=8]
  assert q.sharding.spec == jax.sharding.PartitionSpec("fsdp", None, None)
  batch = sharding.global_batch({"ids": ids, "mask": mask}, mesh8)
  out8 = jax.jit(eight.module.apply)({"params": eight.params}, batch["ids"], batch["mask"])
  out1 = jax.jit(one.module.apply)({"params": one.params}, ids, mask)
  np.testing.assert_allclose(np.asarray(out8), np.asarray(out1), atol=1e-5)


def test_remat_and_bfloat16_forward_stays_close(tiny_dirs):
  # Forward only: a backward pass costs ~10 s of XLA compile on this CPU; the train-step
  # tests differentiate through the models.
  directory, torch_model = tiny_dirs("qwen2")
  ids, mask = parity.padded_batch(SMALL["vocab_size"])
  expected = parity.torch_forward(torch_model, ids, mask).logits.numpy()
  fast = checkpoints.load_pretrained(directory, parity.one_device_mesh(), task="lm",
                                     dtype="bfloat16", remat=True)
  logits = jax.jit(fast.module.apply)({"params": fast.params}, ids, mask)
  hidden = _hidden(fast, ids, mask)
  assert hidden.dtype == np.dtype("bfloat16")  # the blocks really ran in bfloat16
  assert logits.dtype == np.float32  # the LM head runs in float32 whatever the compute dtype
  assert 1e-4 < parity.max_abs_diff_on_real_tokens(logits, expected, mask) < 0.1


def _n_params_of(config: llama.LlamaConfig) -> int:
  abstract = checkpoints.abstract_params(checkpoints.build_model(config, task="lm"))
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(abstract))


def _n_params(preset: str) -> int:
  return _n_params_of(models.preset(preset))


def test_qwen25_7b_parameter_count_without_memory():
  # Qwen2.5-7B's config.json: vocab V=152064, hidden D=3584, 28 layers, 28 heads of H=128,
  # 4 kv heads, intermediate F=18944, untied head, q/k/v bias.
  #   embeddings + LM head  2 * V*D                           = 1,089,994,752
  #   per layer: q D*D + D, k and v 2*(D*512 + 512), o D*D,
  #              MLP 3*D*F, 2 norms 2*D                        =   233,057,792
  #   28 layers                                               = 6,525,618,176
  #   final norm D                                            =         3,584
  #   total                                                   = 7,615,616,512
  # The model card's "7.61B" cuts 7.6156B off after two decimals (the hub page rounds: 7.62B).
  n = _n_params("qwen2.5-7b")
  assert n == 7_615_616_512
  assert int(n / 1e7) / 100 == 7.61


@pytest.mark.parametrize("preset, exact", [
    # Llama 3 8B (V=128256, D=4096, 32 layers, 8 kv heads, F=14336, untied): card 8.03B.
    ("llama-3-8b", 8_030_261_248),
    # SmolLM2-135M (V=49152, D=576, 30 layers, 9 heads, 3 kv heads, F=1536, tied): 134.5M.
    ("smollm2-135m", 134_515_008),
    # Qwen2.5-0.5B (V=151936, D=896, 24 layers, 14 heads, 2 kv, F=4864, tied): card 0.49B.
    ("qwen2.5-0.5b", 494_032_768),
    # Qwen2.5-1.5B (V=151936, D=1536, 28 layers, 12 heads, 2 kv, F=8960, tied): card 1.54B.
    ("qwen2.5-1.5b", 1_543_714_304),
    # Qwen2.5-14B (V=152064, D=5120, 48 layers, 40 heads, 8 kv, F=13824, untied): card 14.7B.
    ("qwen2.5-14b", 14_770_033_664),
])
def test_preset_parameter_counts_without_memory(preset, exact):
  assert _n_params(preset) == exact


@pytest.mark.parametrize("preset, billions", [
    ("qwen2.5-3b", 3.09), ("qwen2.5-72b", 72.7), ("llama-3.1-8b", 8.03), ("llama-3.2-1b", 1.24),
    ("llama-3.2-3b", 3.21), ("smollm2-360m", 0.362), ("smollm2-1.7b", 1.71),
    # The Qwen2.5-32B card says 32.5B; its config's sizes give 32.76B, as does the hub (32.8B).
    ("qwen2.5-32b", 32.8),
])
def test_other_presets_match_their_model_cards(preset, billions):
  # Tracing 80 blocks takes seconds; parameters grow linearly with depth, so count a
  # 1- and a 2-layer model and extrapolate (the full-depth path is checked above).
  config = models.preset(preset)
  one, two = (_n_params_of(dataclasses.replace(config, n_layers=n)) for n in (1, 2))
  n = (one + (config.n_layers - 1) * (two - one)) / 1e9
  assert abs(n - billions) / billions < 0.005, n


def test_unsupported_configs_are_one_clear_line():
  base = dict(model_type="qwen2", vocab_size=97, hidden_size=32, intermediate_size=64,
              num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2)
  with pytest.raises(UserError, match="use_sliding_window"):
    llama.LlamaConfig.from_hf(base | dict(use_sliding_window=True, sliding_window=8))
  with pytest.raises(UserError, match="rope_scaling type 'yarn' is not supported"):
    llama.LlamaConfig.from_hf(base | dict(rope_scaling=dict(type="yarn", factor=4.0)))
  with pytest.raises(UserError, match="not a multiple of n_kv_heads"):
    llama.LlamaConfig.from_hf(base | dict(num_key_value_heads=3))
  # transformers < 5 wrote rope_theta / rope_scaling at the top level; both layouts read the same.
  old = llama.LlamaConfig.from_hf(base | dict(model_type="llama", rope_theta=5e5, rope_scaling=dict(
      type="linear", factor=2.0)))
  new = llama.LlamaConfig.from_hf(base | dict(model_type="llama", rope_parameters=dict(
      rope_theta=5e5, rope_type="linear", factor=2.0)))
  assert old == new and old.rope_scaling_dict == {"rope_type": "linear", "factor": 2.0}
  hash(old)  # configs are static arguments of jit and flax modules
