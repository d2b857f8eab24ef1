"""scan_layers: the blocks as one nn.scan (params stacked [L, ...]) compute what the loop computes."""

import jax
import numpy as np
import pytest
import torch
import transformers

from tests import parity
from w2s_jax import sharding
from w2s_jax.errors import UserError
from w2s_jax.models import checkpoints

VOCAB = 97
# One tiny checkpoint per architecture family, each with 3 layers (a scan of length 3).
TINY = {
    "gpt2": lambda: transformers.GPT2Model(transformers.GPT2Config(
        vocab_size=VOCAB, n_positions=32, n_embd=32, n_layer=3, n_head=4)),
    "qwen2": lambda: transformers.Qwen2ForCausalLM(transformers.Qwen2Config(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
        tie_word_embeddings=False)),
    # Gemma 3: the layer types (sliding, full, sliding) enter the scan as per-layer inputs.
    "gemma3": lambda: transformers.Gemma3ForCausalLM(transformers.Gemma3TextConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
        num_attention_heads=4, num_key_value_heads=2, head_dim=8, sliding_window=4,
        max_position_embeddings=64,
        layer_types=["sliding_attention", "full_attention", "sliding_attention"])),
    "bert": lambda: transformers.BertModel(transformers.BertConfig(
        vocab_size=VOCAB, hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
        intermediate_size=64, max_position_embeddings=40)),
    "mpnet": lambda: transformers.MPNetModel(transformers.MPNetConfig(
        vocab_size=VOCAB, hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
        intermediate_size=64, max_position_embeddings=40, relative_attention_num_buckets=32)),
}


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory):
  made = {}

  def get(name):
    if name not in made:
      torch.manual_seed(0)
      directory = tmp_path_factory.mktemp(name)
      TINY[name]().save_pretrained(directory)
      made[name] = directory
    return made[name]
  return get


def _load(directory, mesh, scan_layers):
  return checkpoints.load_pretrained(directory, mesh, scan_layers=scan_layers, head_init="normal")


def _logits_and_grads(model, ids, mask):
  def loss(params):
    logits = model.module.apply({"params": params}, ids, mask)
    return (logits.astype(np.float32) ** 2).sum(), logits
  return jax.jit(jax.value_and_grad(loss, has_aux=True))(model.params)


def _stacked(loop_params, n_layers, container):
  """The loop's per-layer params rearranged as the scan keeps them: {container}/stacked, [L, ...]."""
  backbone = dict(loop_params["backbone"])
  prefix = container[:-1]  # "blocks" -> block_0, block_1, ...
  per_layer = [backbone.pop(f"{prefix}_{i}") for i in range(n_layers)]
  backbone[container] = {sharding.STACKED: jax.tree.map(lambda *xs: np.stack(xs), *per_layer)}
  return {**loop_params, "backbone": backbone}


@pytest.mark.parametrize("name", sorted(TINY))
def test_scanned_blocks_match_the_loop_outputs_and_gradients(tiny_dirs, name):
  directory = tiny_dirs(name)
  mesh = parity.one_device_mesh()
  ids, mask = parity.padded_batch(VOCAB)
  loop, scanned = _load(directory, mesh, False), _load(directory, mesh, True)
  container = "blocks" if name in ("gpt2", "qwen2", "gemma3") else "layers"
  stacked = scanned.params["backbone"][container][sharding.STACKED]
  assert all(x.shape[0] == 3 for x in jax.tree.leaves(stacked))
  # The loader stacked exactly the per-layer tensors the loop reads.
  expected = _stacked(jax.device_get(loop.params), 3, container)
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(scanned.params), expected)

  (_, loop_logits), loop_grads = _logits_and_grads(loop, ids, mask)
  (_, scan_logits), scan_grads = _logits_and_grads(scanned, ids, mask)
  np.testing.assert_allclose(np.asarray(scan_logits), np.asarray(loop_logits), atol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
               jax.device_get(scan_grads), _stacked(jax.device_get(loop_grads), 3, container))


def test_scanned_blocks_shard_within_each_layer_on_8_devices(tiny_dirs, monkeypatch):
  monkeypatch.setattr(sharding, "MIN_SHARDED_SIZE", 0)  # shard even the tiny model's tensors
  directory = tiny_dirs("qwen2")
  ids, mask = parity.padded_batch(VOCAB, lengths=(5, 9, 2, 9, 9, 1, 4, 7))
  mesh8 = sharding.make_mesh(data=2, fsdp=4)
  eight = _load(directory, mesh8, True)
  up = eight.params["backbone"]["blocks"][sharding.STACKED]["mlp"]["up"]["kernel"]  # [L, D, F]
  assert up.shape == (3, 32, 64)
  assert up.sharding.spec[0] is None and "fsdp" in up.sharding.spec  # every device has every layer
  assert {s.data.shape[0] for s in up.addressable_shards} == {3}
  one = _load(directory, parity.one_device_mesh(), False)
  batch = sharding.global_batch({"ids": ids, "mask": mask}, mesh8)
  out8 = jax.jit(eight.module.apply)({"params": eight.params}, batch["ids"], batch["mask"])
  out1 = one.module.apply({"params": one.params}, ids, mask)
  np.testing.assert_allclose(np.asarray(out8), np.asarray(out1), atol=1e-5)


def test_a_mis_shaped_layer_is_named_when_stacking(tiny_dirs, tmp_path):
  """A config.json that does not describe the weights still fails with the tensor's name."""
  import json
  import shutil
  directory = tmp_path / "wrong"
  shutil.copytree(tiny_dirs("gpt2"), directory)
  config = json.loads((directory / "config.json").read_text())
  config["n_inner"] = 96  # the checkpoint's MLP is 4 * 32 = 128 wide
  (directory / "config.json").write_text(json.dumps(config))
  with pytest.raises(UserError, match=r"h\.0\.mlp\.c_fc\.(weight|bias).*does not fit our blocks/stacked/fc/"):
    _load(directory, parity.one_device_mesh(), True)


def test_scan_with_remat_keeps_the_gradients(tiny_dirs):
  directory = tiny_dirs("gpt2")
  mesh = parity.one_device_mesh()
  ids, mask = parity.padded_batch(VOCAB)
  plain = _load(directory, mesh, True)
  remat = checkpoints.load_pretrained(directory, mesh, scan_layers=True, remat="dots_no_batch",
                                      head_init="normal")
  (_, plain_logits), plain_grads = _logits_and_grads(plain, ids, mask)
  (_, remat_logits), remat_grads = _logits_and_grads(remat, ids, mask)
  np.testing.assert_allclose(np.asarray(remat_logits), np.asarray(plain_logits), atol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7),
               jax.device_get(remat_grads), jax.device_get(plain_grads))
