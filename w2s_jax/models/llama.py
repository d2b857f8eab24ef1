"""The Llama / Qwen2 / Mistral decoder family: the modern strong students.

Pre-RMSNorm decoder with rotary positions (RoPE, optionally Llama-3 or linear
scaled), grouped-query attention (K key/value heads shared by N query heads),
a SwiGLU MLP (down(silu(gate(x)) * up(x))), and an LM head that is tied to the
token embedding (Qwen2.5 <= 3B, Llama 3.2, SmolLM2) or separate (the larger ones).
Qwen2 adds a bias to the q/k/v projections; Llama's `attention_bias` adds one to
q/k/v *and* the output projection; Mistral may restrict attention to a sliding
window of recent tokens.
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

# RoPE variants that `layers.rope_frequencies` computes exactly as HF does.
SUPPORTED_ROPE_TYPES = ("default", "linear", "llama3")


@dataclasses.dataclass(frozen=True)
class LlamaConfig:
  vocab_size: int = 128256
  d_model: int = 4096
  n_layers: int = 32
  n_heads: int = 32
  n_kv_heads: int = 8
  head_dim: int = 128
  d_ff: int = 14336
  rms_eps: float = 1e-5
  rope_theta: float = 500000.0
  # HF's rope_scaling dict as sorted (key, value) items, so the config stays hashable
  # (flax modules and jit static arguments hash it); read it with `rope_scaling_dict`.
  rope_scaling: tuple[tuple[str, Any], ...] | None = None
  max_positions: int = 8192
  tie_embeddings: bool = False
  qkv_bias: bool = False  # Qwen2: True
  out_bias: bool = False  # Llama's attention_bias covers the output projection too
  mlp_bias: bool = False
  # Mistral: each token attends to itself and the sliding_window - 1 tokens before it.
  sliding_window: int | None = None
  activation: str = "silu"
  # Runtime choices, not architecture: compute dtype and per-block activation checkpointing.
  dtype: str = "float32"
  remat: bool | str = False  # False | True (= "full") | a name in layers.REMAT_POLICIES
  scan_layers: bool = False  # one nn.scan over the blocks (params stacked [L, ...]): fast compiles

  kind = "decoder"

  def __post_init__(self):
    if self.n_heads % self.n_kv_heads:
      raise UserError(f"n_heads={self.n_heads} is not a multiple of n_kv_heads={self.n_kv_heads}; "
                      "each key/value head must serve a whole group of query heads")
    if self.head_dim % 2:
      raise UserError(f"head_dim={self.head_dim} is odd; rotary embeddings rotate pairs, "
                      "use an even head_dim")
    kind = dict(self.rope_scaling or ()).get("rope_type", "default")
    if kind not in SUPPORTED_ROPE_TYPES:
      raise UserError(f"rope_scaling type {kind!r} is not supported (supported: "
                      f"{SUPPORTED_ROPE_TYPES}); remove rope_scaling from config.json to use "
                      "the model at its native context length")

  @property
  def rope_scaling_dict(self) -> dict[str, Any] | None:
    return dict(self.rope_scaling) if self.rope_scaling else None

  @classmethod
  def from_hf(cls, hf: dict[str, Any]) -> "LlamaConfig":
    model_type = hf.get("model_type")
    d, n_heads = hf["hidden_size"], hf["num_attention_heads"]
    rope_theta, rope_scaling = _rope_from_hf(hf)
    if model_type == "qwen2":
      if hf.get("use_sliding_window"):
        raise UserError("this Qwen2 config sets use_sliding_window=true, which is not supported; "
                        "set it to false in config.json (Qwen2.5 checkpoints ship with it off)")
      qkv_bias, out_bias, mlp_bias, window = True, False, False, None
    elif model_type == "mistral":
      qkv_bias, out_bias, mlp_bias, window = False, False, False, hf.get("sliding_window")
    elif model_type == "llama":
      bias = bool(hf.get("attention_bias", False))
      qkv_bias, out_bias, mlp_bias, window = bias, bias, bool(hf.get("mlp_bias", False)), None
    else:
      raise UserError(f"model_type {model_type!r} is not a Llama-family model; "
                      f"expected one of {HF_MODEL_TYPES}")
    return cls(vocab_size=hf["vocab_size"], d_model=d, n_layers=hf["num_hidden_layers"],
               n_heads=n_heads, n_kv_heads=hf.get("num_key_value_heads") or n_heads,
               head_dim=hf.get("head_dim") or d // n_heads, d_ff=hf["intermediate_size"],
               rms_eps=hf.get("rms_norm_eps", 1e-6), rope_theta=rope_theta,
               rope_scaling=rope_scaling, max_positions=hf.get("max_position_embeddings", 2048),
               tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
               qkv_bias=qkv_bias, out_bias=out_bias, mlp_bias=mlp_bias, sliding_window=window,
               activation=hf.get("hidden_act", "silu"))


def _rope_from_hf(hf: dict[str, Any]) -> tuple[float, tuple[tuple[str, Any], ...] | None]:
  """(rope_theta, rope_scaling items) from either config layout.

  transformers < 5 writes top-level `rope_theta` and `rope_scaling`; transformers 5
  writes one `rope_parameters` dict holding rope_theta, rope_type and the scaling keys.
  """
  params = dict(hf.get("rope_parameters") or {})
  theta = float(params.pop("rope_theta", hf.get("rope_theta", 10000.0)))
  scaling = dict(hf.get("rope_scaling") or params)
  if "type" in scaling and "rope_type" not in scaling:  # the pre-4.45 spelling
    scaling["rope_type"] = scaling.pop("type")
  scaling.pop("type", None)
  if scaling.get("rope_type", "default") == "default":
    return theta, None
  unhashable = [k for k, v in scaling.items() if isinstance(v, (list, dict))]
  if unhashable:
    raise UserError(f"rope_scaling type {scaling.get('rope_type')!r} (with per-dimension "
                    f"{unhashable}) is not supported (supported: {SUPPORTED_ROPE_TYPES}); "
                    "remove rope_scaling from config.json")
  return theta, tuple(sorted(scaling.items()))


def _llama3_scaling(factor: float) -> tuple[tuple[str, Any], ...]:
  scaling = dict(rope_type="llama3", factor=factor, low_freq_factor=1.0, high_freq_factor=4.0,
                 original_max_position_embeddings=8192)
  return tuple(sorted(scaling.items()))


def _qwen25(**sizes: Any) -> LlamaConfig:
  family = dict(vocab_size=151936, head_dim=128, rms_eps=1e-6, rope_theta=1e6, max_positions=32768,
                tie_embeddings=False, qkv_bias=True)
  return LlamaConfig(**(family | sizes))


def _smollm2(**sizes: Any) -> LlamaConfig:
  family = dict(vocab_size=49152, head_dim=64, rms_eps=1e-5, rope_theta=100000.0,
                max_positions=8192, tie_embeddings=True)
  return LlamaConfig(**(family | sizes))


# The official config.json sizes; `jax.eval_shape` of these checks our parameter counts.
PRESETS = {
    "qwen2.5-0.5b": _qwen25(d_model=896, n_layers=24, n_heads=14, n_kv_heads=2, head_dim=64,
                            d_ff=4864, tie_embeddings=True),
    "qwen2.5-1.5b": _qwen25(d_model=1536, n_layers=28, n_heads=12, n_kv_heads=2, d_ff=8960,
                            tie_embeddings=True),
    "qwen2.5-3b": _qwen25(d_model=2048, n_layers=36, n_heads=16, n_kv_heads=2, d_ff=11008,
                          tie_embeddings=True),
    "qwen2.5-7b": _qwen25(vocab_size=152064, d_model=3584, n_layers=28, n_heads=28, n_kv_heads=4,
                          d_ff=18944, max_positions=131072),
    "qwen2.5-14b": _qwen25(vocab_size=152064, d_model=5120, n_layers=48, n_heads=40, n_kv_heads=8,
                           d_ff=13824, rms_eps=1e-5, max_positions=131072),
    "qwen2.5-32b": _qwen25(vocab_size=152064, d_model=5120, n_layers=64, n_heads=40, n_kv_heads=8,
                           d_ff=27648, rms_eps=1e-5, max_positions=131072),
    "qwen2.5-72b": _qwen25(vocab_size=152064, d_model=8192, n_layers=80, n_heads=64, n_kv_heads=8,
                           d_ff=29568, rms_eps=1e-5, max_positions=131072),
    "llama-3-8b": LlamaConfig(),
    "llama-3.1-8b": LlamaConfig(rope_scaling=_llama3_scaling(8.0), max_positions=131072),
    "llama-3.2-1b": LlamaConfig(d_model=2048, n_layers=16, n_heads=32, n_kv_heads=8, head_dim=64,
                                d_ff=8192, tie_embeddings=True, rope_scaling=_llama3_scaling(32.0),
                                max_positions=131072),
    "llama-3.2-3b": LlamaConfig(d_model=3072, n_layers=28, n_heads=24, n_kv_heads=8, head_dim=128,
                                d_ff=8192, tie_embeddings=True, rope_scaling=_llama3_scaling(32.0),
                                max_positions=131072),
    "smollm2-135m": _smollm2(d_model=576, n_layers=30, n_heads=9, n_kv_heads=3, d_ff=1536),
    "smollm2-360m": _smollm2(d_model=960, n_layers=32, n_heads=15, n_kv_heads=5, d_ff=2560),
    "smollm2-1.7b": _smollm2(d_model=2048, n_layers=24, n_heads=32, n_kv_heads=32, d_ff=8192,
                             rope_theta=130000.0),
}


def attention(q: jax.Array, k: jax.Array, v: jax.Array, attention_mask: jax.Array,
              sliding_window: int | None, positions: jax.Array) -> jax.Array:
  """Causal grouped-query attention, restricted to a sliding window of keys when one is set.

  q: [B, T, N, H]; k, v: [B, S, K, H]; returns [B, T, N, H]. HF's window lets a token see
  itself and the `sliding_window - 1` tokens before it, i.e. a left window of that size.
  """
  if sliding_window is None:
    return layers.attention(q, k, v, attention_mask, causal=True)
  if attention_mask.ndim == 3:  # a packed sequence: the window counts positions, not indices
    near = positions[:, :, None] - positions[:, None, :] < sliding_window  # [B, T, S]
    return layers.attention(q, k, v, attention_mask.astype(bool) & near, causal=True)
  key_mask = attention_mask.astype(bool)[:, None, None, :]  # [B, 1, 1, S]
  return jax.nn.dot_product_attention(q, k, v, mask=key_mask, is_causal=True,
                                      local_window_size=(sliding_window - 1, 0),
                                      scale=1.0 / math.sqrt(q.shape[-1]))


class Attention(nn.Module):
  config: LlamaConfig

  @nn.compact
  def __call__(self, x: jax.Array, attention_mask: jax.Array, positions: jax.Array) -> jax.Array:
    c, dtype = self.config, jnp.dtype(self.config.dtype)
    D, N, K, H = c.d_model, c.n_heads, c.n_kv_heads, c.head_dim
    q = Einsum((D, N, H), (N, H) if c.qkv_bias else None, dtype, name="q")("BTD,DNH->BTNH", x)
    k = Einsum((D, K, H), (K, H) if c.qkv_bias else None, dtype, name="k")("BSD,DKH->BSKH", x)
    v = Einsum((D, K, H), (K, H) if c.qkv_bias else None, dtype, name="v")("BSD,DKH->BSKH", x)
    # A constant of the config: XLA folds it, so recomputing it per layer costs nothing.
    inv_freq = layers.rope_frequencies(H, c.rope_theta, c.rope_scaling_dict)  # [H/2]
    q = layers.apply_rope(q, positions, inv_freq)
    k = layers.apply_rope(k, positions, inv_freq)
    out = attention(q, k, v, attention_mask, c.sliding_window, positions)  # [B, T, N, H]
    return Einsum((N, H, D), (D,) if c.out_bias else None, dtype, name="out")("BTNH,NHD->BTD", out)


class MLP(nn.Module):
  """SwiGLU: down(act(gate(x)) * up(x))."""
  config: LlamaConfig

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    c, dtype = self.config, jnp.dtype(self.config.dtype)
    D, F = c.d_model, c.d_ff
    bias = lambda n: (n,) if c.mlp_bias else None
    gate = Einsum((D, F), bias(F), dtype, name="gate")("BTD,DF->BTF", x)
    up = Einsum((D, F), bias(F), dtype, name="up")("BTD,DF->BTF", x)
    h = layers.activation(c.activation)(gate) * up  # [B, T, F]
    return Einsum((F, D), bias(D), dtype, name="down")("BTF,FD->BTD", h)


class Block(nn.Module):
  config: LlamaConfig

  @nn.compact
  def __call__(self, x: jax.Array, attention_mask: jax.Array, positions: jax.Array) -> jax.Array:
    c, dtype = self.config, jnp.dtype(self.config.dtype)
    h = layers.RMSNorm(c.rms_eps, dtype, name="attn_norm")(x)
    x = x + Attention(c, name="attn")(h, attention_mask, positions)
    h = layers.RMSNorm(c.rms_eps, dtype, name="mlp_norm")(x)
    return x + MLP(c, name="mlp")(h)


class Llama(nn.Module):
  """input_ids [B, T], attention_mask [B, T] (right padded) -> final hidden states [B, T, D]."""
  config: LlamaConfig

  def setup(self):
    c = self.config
    self.embed = nn.Embed(c.vocab_size, c.d_model, embedding_init=layers.default_init,
                          param_dtype=jnp.float32)
    self.blocks = layers.make_blocks(Block, c, "block")
    self.norm = layers.RMSNorm(c.rms_eps, jnp.dtype(c.dtype))
    if not c.tie_embeddings:
      self.lm_head = Einsum((c.d_model, c.vocab_size), None, jnp.float32)

  def __call__(self, input_ids: jax.Array, attention_mask: jax.Array,
               positions: jax.Array | None = None) -> jax.Array:
    dtype = jnp.dtype(self.config.dtype)
    # With right padding these are 0..len-1 on real tokens, the positions HF uses.
    positions = layers.positions_for(attention_mask, positions)  # [B, T]
    x = self.embed(input_ids).astype(dtype)  # [B, T, D]
    x = layers.run_blocks(self.blocks, x, attention_mask, positions)
    return self.norm(x)

  def lm_logits(self, hidden: jax.Array) -> jax.Array:
    """Next-token logits [B, T, V] in float32, from the tied embedding or the separate head."""
    hidden = hidden.astype(jnp.float32)
    if self.config.tie_embeddings:
      return self.embed.attend(hidden)
    return self.lm_head("BTD,DV->BTV", hidden)


def hf_tensor_map(c: LlamaConfig) -> dict[str, tuple[str, Any]]:
  """Our parameter path (inside the backbone) -> (HF tensor name, transform to our layout).

  HF's nn.Linear stores weight [out, in] and computes x @ W.T; our kernels are [in, …, out].
  """
  same = None
  D, N, K, H = c.d_model, c.n_heads, c.n_kv_heads, c.head_dim
  transpose = lambda w: w.T
  table = {"embed/embedding": ("embed_tokens.weight", same), "norm/scale": ("norm.weight", same)}
  if not c.tie_embeddings:
    table["lm_head/kernel"] = ("lm_head.weight", transpose)  # [V, D] -> [D, V]
  for i in range(c.n_layers):
    ours, hf = f"block_{i}", f"layers.{i}"
    heads = {"q": N, "k": K, "v": K}
    for name, n in heads.items():
      # q_proj.weight [n*H, D] -> [D, n, H]; bias [n*H] -> [n, H].
      table[f"{ours}/attn/{name}/kernel"] = (f"{hf}.self_attn.{name}_proj.weight",
                                             lambda w, n=n: w.T.reshape(D, n, H))
      if c.qkv_bias:
        table[f"{ours}/attn/{name}/bias"] = (f"{hf}.self_attn.{name}_proj.bias",
                                           lambda b, n=n: b.reshape(n, H))
    # o_proj.weight [D, N*H] -> [N, H, D].
    table[f"{ours}/attn/out/kernel"] = (f"{hf}.self_attn.o_proj.weight",
                                        lambda w: w.T.reshape(N, H, D))
    if c.out_bias:
      table[f"{ours}/attn/out/bias"] = (f"{hf}.self_attn.o_proj.bias", same)
    for name in ("gate", "up", "down"):
      table[f"{ours}/mlp/{name}/kernel"] = (f"{hf}.mlp.{name}_proj.weight", transpose)
      if c.mlp_bias:
        table[f"{ours}/mlp/{name}/bias"] = (f"{hf}.mlp.{name}_proj.bias", same)
    table[f"{ours}/attn_norm/scale"] = (f"{hf}.input_layernorm.weight", same)
    table[f"{ours}/mlp_norm/scale"] = (f"{hf}.post_attention_layernorm.weight", same)
  return table


# Tensors a checkpoint may hold that are not parameters of ours: the rotary inv_freq buffers
# of older checkpoints, and the LM head when it is tied to embed_tokens (an untied head is in
# the table, so it is read, never ignored).
HF_IGNORED = (r"^(layers\.\d+\.self_attn\.)?rotary_emb\.inv_freq$", r"^lm_head\.weight$")
HF_PREFIXES = ("model.", "")
HF_MODEL_TYPES = ("llama", "qwen2", "mistral")

