"""GPT-2: exact parity with transformers' PyTorch model on the same weights, and the real sizes."""

import jax
import numpy as np
import pytest
import torch
import transformers

from tests import parity
from w2s_jax import models, sharding
from w2s_jax.errors import UserError
from w2s_jax.models import checkpoints

TINY = dict(vocab_size=97, n_positions=32, n_embd=32, n_layer=2, n_head=4)


@pytest.fixture(scope="module")
def tiny_gpt2_dir(tmp_path_factory):
  torch.manual_seed(0)
  model = transformers.GPT2LMHeadModel(transformers.GPT2Config(**TINY))
  directory = tmp_path_factory.mktemp("gpt2")
  model.save_pretrained(directory)
  return directory, model.eval()


def test_gpt2_parity_hidden_and_lm_logits(tiny_gpt2_dir):
  directory, torch_model = tiny_gpt2_dir
  ids, mask = parity.padded_batch(TINY["vocab_size"])
  expected = parity.torch_forward(torch_model, ids, mask)
  expected_hidden = parity.torch_forward(torch_model.transformer, ids, mask).last_hidden_state

  lm = parity.load_ours(directory, parity.one_device_mesh(), task="lm")
  logits = lm.module.apply({"params": lm.params}, ids, mask)
  assert parity.max_abs_diff_on_real_tokens(logits, expected.logits.numpy(), mask) <= 1e-4
  hidden = parity.our_hidden(lm, ids, mask)
  assert parity.max_abs_diff_on_real_tokens(hidden, expected_hidden.numpy(), mask) <= 1e-4


def test_gpt2_classifier_pools_last_real_token_from_mask(tiny_gpt2_dir):
  directory, torch_model = tiny_gpt2_dir
  ids, mask = parity.padded_batch(TINY["vocab_size"])
  clf = parity.load_ours(directory, parity.one_device_mesh(), task="classify")
  features = clf.module.apply({"params": clf.params}, ids, mask, method="features")
  hidden = parity.torch_forward(torch_model.transformer, ids, mask).last_hidden_state.numpy()
  last = mask.sum(1) - 1
  np.testing.assert_allclose(features, hidden[np.arange(len(ids)), last], atol=1e-4)
  # The zero-initialised head (the paper's choice) starts at uniform predictions.
  logits = clf.module.apply({"params": clf.params}, ids, mask)
  np.testing.assert_array_equal(logits, np.zeros((len(ids), 2)))


def test_gpt2_same_outputs_on_1_and_8_devices_with_fsdp(tiny_gpt2_dir, monkeypatch):
  monkeypatch.setattr(sharding, "MIN_SHARDED_SIZE", 0)  # shard even the tiny model's tensors
  directory, _ = tiny_gpt2_dir
  ids, mask = parity.padded_batch(TINY["vocab_size"], lengths=(5, 9, 2, 9, 9, 1, 4, 7))
  one = parity.load_ours(directory, parity.one_device_mesh(), task="lm")
  mesh8 = sharding.make_mesh(data=2, fsdp=4)
  eight = parity.load_ours(directory, mesh8, task="lm")
  wte = eight.params["backbone"]["wte"]["embedding"]
  assert wte.sharding.spec == jax.sharding.PartitionSpec(None, "fsdp")  # 32 columns split 4 ways
  assert {s.data.shape for s in wte.addressable_shards} == {(97, 8)}  # no device holds it all
  batch = sharding.global_batch({"ids": ids, "mask": mask}, mesh8)
  out8 = jax.jit(eight.module.apply)({"params": eight.params}, batch["ids"], batch["mask"])
  out1 = one.module.apply({"params": one.params}, ids, mask)
  np.testing.assert_allclose(np.asarray(out8), np.asarray(out1), atol=1e-5)


def test_gpt2_xl_parameter_count_without_memory():
  # gpt2-xl's model card: 1.5B parameters (1,557,611,200 with the tied LM head counted once).
  module = checkpoints.build_model(models.preset("gpt2-xl"), task="lm")
  abstract = checkpoints.abstract_params(module)
  n = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(abstract))
  assert n == 1_557_611_200


def test_wrong_directory_is_one_clear_line(tmp_path):
  with pytest.raises(UserError, match="no config.json"):
    checkpoints.resolve_checkpoint(tmp_path)
  with pytest.raises(UserError, match="not a directory"):
    checkpoints.resolve_checkpoint(tmp_path / "nowhere")


def test_checkpoint_of_another_architecture_names_the_tensor(tiny_gpt2_dir, tmp_path):
  # A BERT checkpoint whose config.json claims to be GPT-2.
  torch.manual_seed(0)
  bert = transformers.BertModel(transformers.BertConfig(
      vocab_size=97, hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64))
  bert.save_pretrained(tmp_path)
  directory, _ = tiny_gpt2_dir
  (tmp_path / "config.json").write_text((directory / "config.json").read_text())
  with pytest.raises(UserError, match=r"does not match architecture gpt2.*missing tensor 'h\.0\.") as e:
    checkpoints.load_pretrained(tmp_path, parity.one_device_mesh())
  assert "\n" not in str(e.value)


@pytest.mark.parametrize("remat", ["full", "dots_no_batch", "dots"])
def test_remat_policies_leave_the_gradients_unchanged(tiny_gpt2_dir, remat):
  """Activation checkpointing changes what the backward pass keeps, never what it computes."""
  directory, _ = tiny_gpt2_dir
  ids, mask = parity.padded_batch(TINY["vocab_size"])
  mesh = parity.one_device_mesh()

  def grads(remat):
    model = checkpoints.load_pretrained(directory, mesh, remat=remat, head_init="normal")
    loss = lambda params: model.module.apply({"params": params}, ids, mask).astype(np.float32).sum()
    return jax.grad(loss)(model.params)

  reference, checkpointed = grads(False), grads(remat)
  for path, a in jax.tree_util.tree_leaves_with_path(reference):
    b = checkpointed
    for key in path:
      b = b[key.key]
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-5, atol=1e-6, err_msg=str(path))


def test_unknown_remat_policy_is_one_clear_line(tiny_gpt2_dir):
  directory, _ = tiny_gpt2_dir
  with pytest.raises(UserError, match="remat='dotz' is not a policy"):
    model = checkpoints.load_pretrained(directory, parity.one_device_mesh(), remat="dotz")
    model.module.apply({"params": model.params}, *parity.padded_batch(TINY["vocab_size"]))
