"""BERT-style encoders (bert-base-uncased, MiniLM / all-MiniLM-L6-v2): small strong-or-weak models.

Post-LayerNorm encoder: embeddings (word + position + token type) then LayerNorm;
each layer adds attention then the MLP to the residual *before* its LayerNorm.
Attention is bidirectional with a key padding mask. The pooler and the MLM/NSP heads
of HF checkpoints are not ours: the classifier pools the final hidden states itself.

`EncoderLayer` is shared with MPNet (mpnet.py), which is the same layer plus a
relative position bias added to the attention scores.
"""

import dataclasses
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from w2s_jax.errors import UserError
from w2s_jax.models import layers
from w2s_jax.models.layers import Einsum


@dataclasses.dataclass(frozen=True)
class BertConfig:
  vocab_size: int = 30522
  max_positions: int = 512
  type_vocab_size: int = 2
  d_model: int = 768
  n_layers: int = 12
  n_heads: int = 12
  d_ff: int = 3072
  layer_norm_eps: float = 1e-12
  activation: str = "gelu"  # HF's "gelu" is the exact erf GELU
  # Runtime choices, not architecture: compute dtype and per-layer activation checkpointing.
  dtype: str = "float32"
  remat: bool | str = False  # False | True (= "full") | a name in layers.REMAT_POLICIES
  scan_layers: bool = False  # one nn.scan over the blocks (params stacked [L, ...]): fast compiles

  kind = "encoder"
  # We build no LM head for encoders (see `Bert.lm_logits`), so nothing is tied.
  tie_embeddings = False

  @property
  def head_dim(self) -> int:
    return self.d_model // self.n_heads

  @classmethod
  def from_hf(cls, hf: dict[str, Any]) -> "BertConfig":
    # Old config.json files carry position_embedding_type; only absolute positions are ported.
    if hf.get("position_embedding_type", "absolute") != "absolute":
      raise UserError(f"BERT position_embedding_type {hf['position_embedding_type']!r} is not "
                      "supported; use a checkpoint with absolute position embeddings")
    if hf.get("is_decoder"):
      raise UserError("this BERT checkpoint is configured as a decoder (is_decoder=true); "
                      "only bidirectional BERT encoders are supported")
    return cls(vocab_size=hf["vocab_size"], max_positions=hf.get("max_position_embeddings", 512),
               type_vocab_size=hf.get("type_vocab_size", 2), d_model=hf["hidden_size"],
               n_layers=hf["num_hidden_layers"], n_heads=hf["num_attention_heads"],
               d_ff=hf["intermediate_size"], layer_norm_eps=hf.get("layer_norm_eps", 1e-12),
               activation=hf.get("hidden_act", "gelu"))


# The model cards' sizes; `jax.eval_shape` of these checks our parameter counts.
PRESETS = {
    "bert-base-uncased": BertConfig(),
    "all-minilm-l6-v2": BertConfig(d_model=384, n_layers=6, n_heads=12, d_ff=1536),
}


def bidirectional_attention(q: jax.Array, k: jax.Array, v: jax.Array, attention_mask: jax.Array,
                            position_bias: jax.Array | None = None) -> jax.Array:
  """Encoder attention: q, k, v [B, T|S, N, H], attention_mask [B, S] -> [B, T, N, H].

  position_bias [1|B, N, T, S] (float32), if given, is added to the scaled scores before the
  softmax (MPNet's relative positions); layers.attention has no bias argument, hence this.
  """
  if position_bias is None:
    return layers.attention(q, k, v, attention_mask, causal=False)
  key_mask = attention_mask.astype(bool)[:, None, None, :]  # [B, 1, 1, S] broadcast over N, T
  return jax.nn.dot_product_attention(q, k, v, bias=position_bias, mask=key_mask,
                                      scale=1.0 / math.sqrt(q.shape[-1]))


class Attention(nn.Module):
  """Multi-head self-attention, q/k/v/out projections with biases (HF: query/key/value/output)."""
  config: Any  # BertConfig or MPNetConfig: d_model, n_heads, head_dim, dtype

  @nn.compact
  def __call__(self, x: jax.Array, attention_mask: jax.Array,
               position_bias: jax.Array | None = None) -> jax.Array:
    c, dtype = self.config, jnp.dtype(self.config.dtype)
    D, N, H = c.d_model, c.n_heads, c.head_dim
    q = Einsum((D, N, H), (N, H), dtype, name="q")("BTD,DNH->BTNH", x)
    k = Einsum((D, N, H), (N, H), dtype, name="k")("BSD,DNH->BSNH", x)
    v = Einsum((D, N, H), (N, H), dtype, name="v")("BSD,DNH->BSNH", x)
    out = bidirectional_attention(q, k, v, attention_mask, position_bias)  # [B, T, N, H]
    return Einsum((N, H, D), (D,), dtype, name="out")("BTNH,NHD->BTD", out)


class EncoderLayer(nn.Module):
  """One post-LayerNorm layer: x = LN(x + attn(x)); x = LN(x + MLP(x))."""
  config: Any  # BertConfig or MPNetConfig: also d_ff, layer_norm_eps, activation

  @nn.compact
  def __call__(self, x: jax.Array, attention_mask: jax.Array,
               position_bias: jax.Array | None = None) -> jax.Array:
    c, dtype = self.config, jnp.dtype(self.config.dtype)
    x = x + Attention(c, name="attn")(x, attention_mask, position_bias)
    x = layers.LayerNorm(c.layer_norm_eps, dtype, name="attn_ln")(x)
    h = Einsum((c.d_model, c.d_ff), (c.d_ff,), dtype, name="fc")("BTD,DF->BTF", x)
    h = layers.activation(c.activation)(h)
    x = x + Einsum((c.d_ff, c.d_model), (c.d_model,), dtype, name="proj")("BTF,FD->BTD", h)
    return layers.LayerNorm(c.layer_norm_eps, dtype, name="mlp_ln")(x)


class Bert(nn.Module):
  """input_ids [B, T], attention_mask [B, T] -> final hidden states [B, T, D]."""
  config: BertConfig

  def setup(self):
    c = self.config
    embed = lambda n, name: nn.Embed(n, c.d_model, embedding_init=layers.default_init,
                                     param_dtype=jnp.float32, name=name)
    self.word_embeddings = embed(c.vocab_size, "word_embeddings")
    self.position_embeddings = embed(c.max_positions, "position_embeddings")
    self.token_type_embeddings = embed(c.type_vocab_size, "token_type_embeddings")
    self.embeddings_ln = layers.LayerNorm(c.layer_norm_eps, jnp.dtype(c.dtype))
    self.layers = layers.make_blocks(EncoderLayer, c, "layer")

  def __call__(self, input_ids: jax.Array, attention_mask: jax.Array) -> jax.Array:
    # Positions count real tokens (HF uses 0..T-1): equal under right padding, and with
    # left padding the real tokens still get the positions they would have unpadded.
    positions = layers.positions_from_mask(attention_mask)  # [B, T]
    # We feed single texts, so every token is of type 0 (HF's default token_type_ids).
    token_type = self.token_type_embeddings.embedding[0]  # [D]
    x = self.word_embeddings(input_ids) + self.position_embeddings(positions) + token_type
    x = self.embeddings_ln(x)  # [B, T, D] in the compute dtype
    x = layers.run_blocks(self.layers, x, attention_mask)
    return x

  def lm_logits(self, hidden: jax.Array) -> jax.Array:
    raise NotImplementedError("generative finetuning needs a decoder; BERT-style encoders have no "
                              "next-token head: use task='classify'")


def linear_kernel(*out_shape: int):
  """HF nn.Linear stores [out, in] (y = x W^T); ours is [in, *out] (heads split out if asked)."""
  return lambda w: w.T.reshape(w.shape[1], *out_shape)


def heads_in_kernel(n_heads: int, head_dim: int):
  """The attention output projection: HF [D(out), D(in)=N*H] -> ours [N, H, D]."""
  return lambda w: w.T.reshape(n_heads, head_dim, w.shape[0])


def encoder_layer_tensor_map(c: Any, ours: str, hf: str,
                             names: dict[str, str]) -> dict[str, tuple[str, Any]]:
  """The map of one EncoderLayer; `names` gives HF's module names (BERT and MPNet differ)."""
  same = None
  N, H = c.n_heads, c.head_dim
  table = {}
  for proj in ("q", "k", "v"):
    table[f"{ours}/attn/{proj}/kernel"] = (f"{hf}.{names[proj]}.weight", linear_kernel(N, H))
    table[f"{ours}/attn/{proj}/bias"] = (f"{hf}.{names[proj]}.bias", lambda b: b.reshape(N, H))
  table |= {
      f"{ours}/attn/out/kernel": (f"{hf}.{names['out']}.weight", heads_in_kernel(N, H)),
      f"{ours}/attn/out/bias": (f"{hf}.{names['out']}.bias", same),
      f"{ours}/fc/kernel": (f"{hf}.intermediate.dense.weight", linear_kernel(c.d_ff)),
      f"{ours}/fc/bias": (f"{hf}.intermediate.dense.bias", same),
      f"{ours}/proj/kernel": (f"{hf}.output.dense.weight", linear_kernel(c.d_model)),
      f"{ours}/proj/bias": (f"{hf}.output.dense.bias", same),
  }
  for ln in ("attn_ln", "mlp_ln"):
    table[f"{ours}/{ln}/scale"] = (f"{hf}.{names[ln]}.weight", same)
    table[f"{ours}/{ln}/bias"] = (f"{hf}.{names[ln]}.bias", same)
  return table


# HF's module names inside encoder.layer.{i}, by the name of our sub-module they fill.
HF_LAYER_NAMES = {"q": "attention.self.query", "k": "attention.self.key",
                  "v": "attention.self.value", "out": "attention.output.dense",
                  "attn_ln": "attention.output.LayerNorm", "mlp_ln": "output.LayerNorm"}


def hf_tensor_map(c: BertConfig) -> dict[str, tuple[str, Any]]:
  """Our parameter path (inside the backbone) -> (HF tensor name, transform to our layout)."""
  same = None
  table = {
      "word_embeddings/embedding": ("embeddings.word_embeddings.weight", same),
      "position_embeddings/embedding": ("embeddings.position_embeddings.weight", same),
      "token_type_embeddings/embedding": ("embeddings.token_type_embeddings.weight", same),
      "embeddings_ln/scale": ("embeddings.LayerNorm.weight", same),
      "embeddings_ln/bias": ("embeddings.LayerNorm.bias", same),
  }
  for i in range(c.n_layers):
    table |= encoder_layer_tensor_map(c, f"layer_{i}", f"encoder.layer.{i}", HF_LAYER_NAMES)
  return table


# Tensors a BERT checkpoint may hold that are not parameters of ours: index buffers of
# old checkpoints, the pooler (we pool ourselves), BertForPreTraining / MaskedLM heads
# (cls.*) and BertForSequenceClassification's classifier (outside the "bert." prefix).
HF_IGNORED = (r"^embeddings\.(position_ids|token_type_ids)$", r"^pooler\.", r"^cls\.",
              r"^classifier\.")
# Checkpoints converted in 2019 (bert-base-uncased's own model.safetensors among them) still
# call LayerNorm parameters gamma/beta; the loader tries these spellings when a name is absent.
HF_LEGACY_NAMES = ((r"LayerNorm\.weight$", "LayerNorm.gamma"), (r"LayerNorm\.bias$", "LayerNorm.beta"))
HF_PREFIXES = ("bert.", "")
HF_MODEL_TYPES = ("bert",)
