"""Shared pieces of the parity tests: a padded batch, and HF-vs-ours comparison on real tokens."""

import numpy as np
import torch

from w2s_jax import sharding
from w2s_jax.models import checkpoints, heads


def padded_batch(vocab_size: int, lengths=(7, 12, 3, 12), seed: int = 0, pad_id: int = 0):
  """Right-padded ids and mask; the pad id is a real token id on purpose (GPT-2's id 0 is '!')."""
  rng = np.random.default_rng(seed)
  T = max(lengths)
  ids = rng.integers(1, vocab_size, size=(len(lengths), T)).astype(np.int32)
  mask = (np.arange(T)[None, :] < np.array(lengths)[:, None]).astype(np.int32)
  return np.where(mask == 1, ids, pad_id).astype(np.int32), mask


def max_abs_diff_on_real_tokens(ours: np.ndarray, theirs: np.ndarray, mask: np.ndarray) -> float:
  real = mask.astype(bool)
  return float(np.max(np.abs(np.asarray(ours)[real] - np.asarray(theirs)[real])))


def load_ours(directory, mesh, task):
  return checkpoints.load_pretrained(directory, mesh, task=task)


def our_hidden(loaded, ids, mask):
  """Final hidden states [B, T, D] of our backbone."""
  return loaded.module.apply({"params": loaded.params}, ids, mask,
                             method=lambda m, i, a: m.backbone(i, a))


def torch_forward(model, ids, mask):
  with torch.no_grad():
    return model(input_ids=torch.tensor(ids, dtype=torch.long),
                 attention_mask=torch.tensor(mask, dtype=torch.long))


def one_device_mesh():
  import jax
  return sharding.make_mesh(data=1, fsdp=1, devices=jax.devices()[:1])


__all__ = ["padded_batch", "max_abs_diff_on_real_tokens", "load_ours", "our_hidden", "torch_forward",
           "one_device_mesh", "heads"]
