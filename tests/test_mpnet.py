"""MPNet: exact parity with transformers' PyTorch MPNet on the same weights (relative position
bias and pad-aware positions included), and the real size."""

import jax
import numpy as np
import pytest
import torch
import transformers
from transformers.models.mpnet.modeling_mpnet import MPNetEncoder

from tests import parity
from w2s_jax import models
from w2s_jax.models import checkpoints, mpnet

TINY = dict(vocab_size=97, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
            intermediate_size=64, max_position_embeddings=40, relative_attention_num_buckets=32,
            hidden_act="gelu")


def randomise(model: torch.nn.Module) -> torch.nn.Module:
  """Perturb every tensor (HF starts biases at 0, LayerNorms at 1) and make the relative
  position bias large, so a wrong bucket or a missing bias shows in the hidden states."""
  torch.manual_seed(1)
  with torch.no_grad():
    for name, p in model.named_parameters():
      p.add_((2.0 if "relative_attention_bias" in name else 0.1) * torch.randn_like(p))
  return model.eval()


def mpnet_batch(lengths=(7, 12, 3, 12)):
  """Right padded with MPNet's pad id 1; real tokens avoid id 1, which HF would take for padding."""
  ids, mask = parity.padded_batch(TINY["vocab_size"], lengths=lengths, pad_id=mpnet.PADDING_IDX)
  return np.where((mask == 1) & (ids == mpnet.PADDING_IDX), 2, ids).astype(np.int32), mask


def hf_hidden(torch_mpnet, ids, mask) -> np.ndarray:
  return parity.torch_forward(torch_mpnet, ids, mask).last_hidden_state.numpy()


def our_hidden(loaded, ids, mask) -> np.ndarray:
  """Final hidden states [B, T, D]; jitted, since op-by-op dispatch is the slow part on CPU."""
  backbone = lambda params, i, m: loaded.module.apply({"params": params}, i, m,
                                                      method=lambda mod, i, a: mod.backbone(i, a))
  return np.asarray(jax.jit(backbone)(loaded.params, ids, mask))


@pytest.mark.parametrize("hf_class", ["MPNetModel", "MPNetForMaskedLM"])
def test_mpnet_parity_hidden_states_with_right_padding(hf_class, tmp_path):
  torch.manual_seed(0)
  model = randomise(getattr(transformers, hf_class)(transformers.MPNetConfig(**TINY)))
  model.save_pretrained(tmp_path)
  torch_mpnet = model if hf_class == "MPNetModel" else model.mpnet  # "mpnet." prefix + lm_head
  # Sequences longer than 8 reach the logarithmic relative-distance buckets.
  ids, mask = mpnet_batch(lengths=(7, 20, 3, 12))
  ours = parity.load_ours(tmp_path, parity.one_device_mesh(), task="classify")
  hidden = our_hidden(ours, ids, mask)
  # Pads too: their positions (padding_idx) follow HF's, so every row matches.
  np.testing.assert_allclose(hidden, hf_hidden(torch_mpnet, ids, mask), atol=1e-4)


def test_mpnet_relative_position_buckets_match_hf():
  distances = np.arange(-1000, 1001)
  expected = MPNetEncoder.relative_position_bucket(torch.tensor(distances)).numpy()
  np.testing.assert_array_equal(mpnet.relative_position_bucket(distances), expected)
  assert len(np.unique(expected)) == 31  # both directions and both regimes are exercised


def test_mpnet_positions_come_from_the_mask_not_the_pad_id(tmp_path):
  # A real token equal to the pad id keeps its position (HF would give it padding_idx).
  torch.manual_seed(0)
  model = randomise(transformers.MPNetModel(transformers.MPNetConfig(**TINY)))
  model.save_pretrained(tmp_path)
  ids, mask = mpnet_batch()
  ours = parity.load_ours(tmp_path, parity.one_device_mesh(), task="classify")
  with_pad_id = ids.copy()
  with_pad_id[0, 2] = mpnet.PADDING_IDX  # a real token
  positions = np.where(mask == 1, np.cumsum(mask, 1) + mpnet.PADDING_IDX, mpnet.PADDING_IDX)
  as_torch = lambda a: torch.tensor(a, dtype=torch.long)
  with torch.no_grad():
    expected = model(input_ids=as_torch(with_pad_id), attention_mask=as_torch(mask),
                     position_ids=as_torch(positions)).last_hidden_state.numpy()
  hidden = our_hidden(ours, with_pad_id, mask)
  assert parity.max_abs_diff_on_real_tokens(hidden, expected, mask) <= 1e-4


def test_mpnet_preset_parameter_count_without_memory():
  # all-mpnet-base-v2: embeddings 30527*768 + 514*768 + LN 2*768, relative bias 32*12,
  # 12 layers of 4(D²+D) + 2·2D + 2DF + F + D; the card's 109.5M adds the pooler (D² + D).
  config = models.preset("all-mpnet-base-v2")
  abstract = checkpoints.abstract_params(checkpoints.build_model(config, task="classify"))
  n = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(abstract)) - config.d_model * 2
  assert n == 108_895_872
  assert f"{(n + 768 * 768 + 768) / 1e6:.1f}" == "109.5"
