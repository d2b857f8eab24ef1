"""GPT-2 (gpt2 … gpt2-xl), the paper's weak and strong family.

Pre-LayerNorm decoder with learned positions, fused-in-HF q/k/v (split here into
three named projections), tanh-GELU MLP, LM head tied to the token embedding.
"""

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from w2s_jax.models import layers
from w2s_jax.models.layers import Einsum


@dataclasses.dataclass(frozen=True)
class GPT2Config:
  vocab_size: int = 50257
  max_positions: int = 1024
  d_model: int = 768
  n_layers: int = 12
  n_heads: int = 12
  d_ff: int = 3072
  layer_norm_eps: float = 1e-5
  activation: str = "gelu_new"
  # Runtime choices, not architecture: compute dtype and per-block activation checkpointing.
  dtype: str = "float32"
  remat: bool | str = False  # False | True (= "full") | a name in layers.REMAT_POLICIES
  scan_layers: bool = False  # one nn.scan over the blocks (params stacked [L, ...]): fast compiles

  kind = "decoder"
  tie_embeddings = True

  @property
  def head_dim(self) -> int:
    return self.d_model // self.n_heads

  @classmethod
  def from_hf(cls, hf: dict[str, Any]) -> "GPT2Config":
    d = hf["n_embd"]
    return cls(vocab_size=hf["vocab_size"], max_positions=hf["n_positions"], d_model=d,
               n_layers=hf["n_layer"], n_heads=hf["n_head"], d_ff=hf.get("n_inner") or 4 * d,
               layer_norm_eps=hf.get("layer_norm_epsilon", 1e-5),
               activation=hf.get("activation_function", "gelu_new"))


# The model cards' sizes; `jax.eval_shape` of these checks our parameter counts.
PRESETS = {
    "gpt2": GPT2Config(),
    "gpt2-medium": GPT2Config(d_model=1024, n_layers=24, n_heads=16, d_ff=4096),
    "gpt2-large": GPT2Config(d_model=1280, n_layers=36, n_heads=20, d_ff=5120),
    "gpt2-xl": GPT2Config(d_model=1600, n_layers=48, n_heads=25, d_ff=6400),
}


class Attention(nn.Module):
  config: GPT2Config

  @nn.compact
  def __call__(self, x: jax.Array, attention_mask: jax.Array) -> jax.Array:
    c, dtype = self.config, jnp.dtype(self.config.dtype)
    D, N, H = c.d_model, c.n_heads, c.head_dim
    q = Einsum((D, N, H), (N, H), dtype, name="q")("BTD,DNH->BTNH", x)
    k = Einsum((D, N, H), (N, H), dtype, name="k")("BSD,DNH->BSNH", x)
    v = Einsum((D, N, H), (N, H), dtype, name="v")("BSD,DNH->BSNH", x)
    out = layers.attention(q, k, v, attention_mask, causal=True)  # [B, T, N, H]
    return Einsum((N, H, D), (D,), dtype, name="out")("BTNH,NHD->BTD", out)


class Block(nn.Module):
  config: GPT2Config

  @nn.compact
  def __call__(self, x: jax.Array, attention_mask: jax.Array) -> jax.Array:
    c, dtype = self.config, jnp.dtype(self.config.dtype)
    h = layers.LayerNorm(c.layer_norm_eps, dtype, name="ln_1")(x)
    x = x + Attention(c, name="attn")(h, attention_mask)
    h = layers.LayerNorm(c.layer_norm_eps, dtype, name="ln_2")(x)
    h = Einsum((c.d_model, c.d_ff), (c.d_ff,), dtype, name="fc")("BTD,DF->BTF", h)
    h = layers.activation(c.activation)(h)
    return x + Einsum((c.d_ff, c.d_model), (c.d_model,), dtype, name="proj")("BTF,FD->BTD", h)


class GPT2(nn.Module):
  """input_ids [B, T], attention_mask [B, T] (right padded) -> final hidden states [B, T, D]."""
  config: GPT2Config

  def setup(self):
    c = self.config
    self.wte = nn.Embed(c.vocab_size, c.d_model, embedding_init=layers.default_init,
                        param_dtype=jnp.float32)
    self.wpe = nn.Embed(c.max_positions, c.d_model, embedding_init=nn.initializers.normal(0.01),
                        param_dtype=jnp.float32)
    self.blocks = layers.make_blocks(Block, c, "block")
    self.ln_f = layers.LayerNorm(c.layer_norm_eps, jnp.dtype(c.dtype))

  def __call__(self, input_ids: jax.Array, attention_mask: jax.Array,
               positions: jax.Array | None = None) -> jax.Array:
    dtype = jnp.dtype(self.config.dtype)
    positions = layers.positions_for(attention_mask, positions)
    x = (self.wte(input_ids) + self.wpe(positions)).astype(dtype)  # [B, T, D]
    x = layers.run_blocks(self.blocks, x, attention_mask)
    return self.ln_f(x)

  def lm_logits(self, hidden: jax.Array) -> jax.Array:
    """Next-token logits [B, T, V] from the tied token embedding, in float32."""
    return self.wte.attend(hidden.astype(jnp.float32))


def _split_qkv(part: int, n_heads: int):
  """HF stores q, k, v fused as c_attn [D, 3D] (Conv1D: x @ W); take one third as [D, N, H]."""
  def transform(w: np.ndarray) -> np.ndarray:
    d = w.shape[-1] // 3
    third = w[..., part * d:(part + 1) * d]
    return third.reshape(*w.shape[:-1], n_heads, d // n_heads)
  return transform


def hf_tensor_map(c: GPT2Config) -> dict[str, tuple[str, Any]]:
  """Our parameter path (inside the backbone) -> (HF tensor name, transform to our layout)."""
  same = None
  heads = lambda w: w.reshape(c.n_heads, c.head_dim, c.d_model)  # c_proj [D(in)=N*H, D]
  table = {"wte/embedding": ("wte.weight", same), "wpe/embedding": ("wpe.weight", same),
           "ln_f/scale": ("ln_f.weight", same), "ln_f/bias": ("ln_f.bias", same)}
  for i in range(c.n_layers):
    ours, hf = f"block_{i}", f"h.{i}"
    for j, name in enumerate("qkv"):
      table[f"{ours}/attn/{name}/kernel"] = (f"{hf}.attn.c_attn.weight", _split_qkv(j, c.n_heads))
      table[f"{ours}/attn/{name}/bias"] = (f"{hf}.attn.c_attn.bias", _split_qkv(j, c.n_heads))
    table |= {
        f"{ours}/attn/out/kernel": (f"{hf}.attn.c_proj.weight", heads),
        f"{ours}/attn/out/bias": (f"{hf}.attn.c_proj.bias", same),
        f"{ours}/ln_1/scale": (f"{hf}.ln_1.weight", same), f"{ours}/ln_1/bias": (f"{hf}.ln_1.bias", same),
        f"{ours}/ln_2/scale": (f"{hf}.ln_2.weight", same), f"{ours}/ln_2/bias": (f"{hf}.ln_2.bias", same),
        f"{ours}/fc/kernel": (f"{hf}.mlp.c_fc.weight", same), f"{ours}/fc/bias": (f"{hf}.mlp.c_fc.bias", same),
        f"{ours}/proj/kernel": (f"{hf}.mlp.c_proj.weight", same),
        f"{ours}/proj/bias": (f"{hf}.mlp.c_proj.bias", same),
    }
  return table


# Tensors a GPT-2 checkpoint may hold that are not parameters of ours: the causal-mask
# buffers of old checkpoints, and the LM head that is tied to wte.
HF_IGNORED = (r"^h\.\d+\.attn\.(bias|masked_bias)$", r"^lm_head\.weight$")
HF_PREFIXES = ("transformer.", "")
HF_MODEL_TYPES = ("gpt2",)
