"""MPNet (all-mpnet-base-v2): BERT's post-LayerNorm layers plus a relative position bias.

Differences from BERT, as transformers' modeling_mpnet.py computes them:
  * no token types; learned absolute positions start at padding_idx + 1 = 2 and
    count only real tokens (pads sit at position padding_idx = 1);
  * a table [buckets, N] of relative position biases, shared by all layers, added
    to the scaled attention scores; relative distances are bucketed T5-style
    (exact up to 8, logarithmic up to 128, in each direction).
"""

import dataclasses
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from w2s_jax.errors import UserError
from w2s_jax.models import bert, layers

# HF hard-codes both: MPNetEmbeddings.padding_idx = 1 (not config.pad_token_id), and
# compute_position_bias buckets with its default num_buckets=32, max_distance=128
# whatever config.relative_attention_num_buckets says (that only sizes the table).
PADDING_IDX = 1
# Positions 0 and 1 are never a token's (pads sit at 1, the first token at 2): the models read
# max_positions - 2 tokens (models.max_input_tokens).
POSITIONS_RESERVED = PADDING_IDX + 1
BUCKETS_USED = 32
MAX_DISTANCE = 128


@dataclasses.dataclass(frozen=True)
class MPNetConfig:
  vocab_size: int = 30527
  max_positions: int = 514
  d_model: int = 768
  n_layers: int = 12
  n_heads: int = 12
  d_ff: int = 3072
  relative_buckets: int = 32
  layer_norm_eps: float = 1e-5
  activation: str = "gelu"
  # Runtime choices, not architecture: compute dtype and per-layer activation checkpointing.
  dtype: str = "float32"
  remat: bool | str = False  # False | True (= "full") | a name in layers.REMAT_POLICIES
  scan_layers: bool = False  # one nn.scan over the blocks (params stacked [L, ...]): fast compiles

  kind = "encoder"
  # We build no LM head for encoders (see `MPNet.lm_logits`), so nothing is tied.
  tie_embeddings = False

  @property
  def head_dim(self) -> int:
    return self.d_model // self.n_heads

  @classmethod
  def from_hf(cls, hf: dict[str, Any]) -> "MPNetConfig":
    buckets = hf.get("relative_attention_num_buckets", 32)
    if buckets < BUCKETS_USED:
      raise UserError(f"MPNet relative_attention_num_buckets={buckets} is below the {BUCKETS_USED} "
                      "buckets HF's MPNet always indexes; this checkpoint cannot run as HF runs it")
    return cls(vocab_size=hf["vocab_size"], max_positions=hf.get("max_position_embeddings", 514),
               d_model=hf["hidden_size"], n_layers=hf["num_hidden_layers"],
               n_heads=hf["num_attention_heads"], d_ff=hf["intermediate_size"],
               relative_buckets=buckets, layer_norm_eps=hf.get("layer_norm_eps", 1e-5),
               activation=hf.get("hidden_act", "gelu"))


# The model card's size; `jax.eval_shape` of it checks our parameter count.
PRESETS = {
    "all-mpnet-base-v2": MPNetConfig(),
}


def relative_position_bucket(relative_position: np.ndarray, num_buckets: int = BUCKETS_USED,
                             max_distance: int = MAX_DISTANCE) -> np.ndarray:
  """Bucket of each (key - query) distance, as HF's MPNetEncoder.relative_position_bucket.

  Half the buckets for keys before the query, half for keys after; within each half,
  distances below half of it are exact and the rest are logarithmic up to max_distance.
  Computed in numpy float32 like torch, so bucket boundaries round the same way.
  """
  n = -np.asarray(relative_position, dtype=np.int64)
  half = num_buckets // 2
  bucket = (n < 0).astype(np.int64) * half
  n = np.abs(n)
  max_exact = half // 2
  with np.errstate(divide="ignore"):  # log(0) at n == 0, where the exact branch is taken
    log_ratio = np.log(n.astype(np.float32) / np.float32(max_exact))
  scaled = log_ratio / np.float32(math.log(max_distance / max_exact)) * np.float32(half - max_exact)
  large = max_exact + np.where(n < max_exact, 0, scaled).astype(np.int64)
  large = np.minimum(large, half - 1)
  return bucket + np.where(n < max_exact, n, large)


class MPNet(nn.Module):
  """input_ids [B, T], attention_mask [B, T] -> final hidden states [B, T, D]."""
  config: MPNetConfig

  def setup(self):
    c = self.config
    embed = lambda n, d, name: nn.Embed(n, d, embedding_init=layers.default_init,
                                        param_dtype=jnp.float32, name=name)
    self.word_embeddings = embed(c.vocab_size, c.d_model, "word_embeddings")
    self.position_embeddings = embed(c.max_positions, c.d_model, "position_embeddings")
    self.embeddings_ln = layers.LayerNorm(c.layer_norm_eps, jnp.dtype(c.dtype))
    self.relative_attention_bias = embed(c.relative_buckets, c.n_heads, "relative_attention_bias")
    self.layers = layers.make_blocks(bert.EncoderLayer, c, "layer")

  def position_bias(self, length: int) -> jax.Array:
    """Relative position bias [1, N, T, T] in float32, the same for every example and layer.

    HF measures distances between indices 0..T-1, pads included; a distance does not
    change when padding shifts both tokens, so left and right padding agree.
    """
    t = np.arange(length)
    buckets = relative_position_bucket(t[None, :] - t[:, None])  # [T(query), S(key)], static
    bias = self.relative_attention_bias(jnp.asarray(buckets, jnp.int32))  # [T, S, N]
    return jnp.einsum("TSN->NTS", bias)[None].astype(jnp.float32)

  def __call__(self, input_ids: jax.Array, attention_mask: jax.Array) -> jax.Array:
    # HF: cumsum(ids != pad) * (ids != pad) + padding_idx. We read "real" from the mask,
    # not the ids, so a real token that happens to equal the pad id keeps its position.
    real = attention_mask.astype(bool)
    positions = jnp.where(real, layers.positions_from_mask(attention_mask) + PADDING_IDX + 1,
                          PADDING_IDX)  # [B, T]
    x = self.word_embeddings(input_ids) + self.position_embeddings(positions)
    x = self.embeddings_ln(x)  # [B, T, D] in the compute dtype
    bias = self.position_bias(input_ids.shape[1])
    x = layers.run_blocks(self.layers, x, attention_mask, bias)
    return x

  def lm_logits(self, hidden: jax.Array) -> jax.Array:
    raise NotImplementedError("generative finetuning needs a decoder; MPNet encoders have no "
                              "next-token head: use task='classify'")


HF_LAYER_NAMES = {"q": "attention.attn.q", "k": "attention.attn.k", "v": "attention.attn.v",
                  "out": "attention.attn.o", "attn_ln": "attention.LayerNorm",
                  "mlp_ln": "output.LayerNorm"}


def hf_tensor_map(c: MPNetConfig) -> dict[str, tuple[str, Any]]:
  """Our parameter path (inside the backbone) -> (HF tensor name, transform to our layout)."""
  same = None
  table = {
      "word_embeddings/embedding": ("embeddings.word_embeddings.weight", same),
      "position_embeddings/embedding": ("embeddings.position_embeddings.weight", same),
      "embeddings_ln/scale": ("embeddings.LayerNorm.weight", same),
      "embeddings_ln/bias": ("embeddings.LayerNorm.bias", same),
      "relative_attention_bias/embedding": ("encoder.relative_attention_bias.weight", same),
  }
  for i in range(c.n_layers):
    table |= bert.encoder_layer_tensor_map(c, f"layer_{i}", f"encoder.layer.{i}", HF_LAYER_NAMES)
  return table


# Tensors an MPNet checkpoint may hold that are not parameters of ours: the position-id
# buffer of old checkpoints, the pooler (we pool ourselves), MPNetForMaskedLM's lm_head and
# the task heads of MPNetFor{SequenceClassification,…} (outside the "mpnet." prefix).
HF_IGNORED = (r"^embeddings\.position_ids$", r"^pooler\.", r"^lm_head\.", r"^classifier\.",
              r"^qa_outputs\.")
HF_PREFIXES = ("mpnet.", "")
HF_MODEL_TYPES = ("mpnet",)
