"""Building blocks shared by the architectures: einsum projections, norms, attention, RoPE.

Dimension letters used in every einsum string of the models:
  B batch, T query length, S key length, D model width, N query heads,
  K key/value heads, H head width, F feed-forward width, V vocabulary.
Parameters are stored in float32 (`param_dtype`); activations and matmuls run in
the compute dtype (`dtype`, float32 or bfloat16). Norms and softmax run in float32.
"""

import math
from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from w2s_jax import sharding
from w2s_jax.errors import UserError

Initializer = Callable[..., jax.Array]
default_init = nn.initializers.normal(stddev=0.02)

# Activation checkpointing of each block, by name: what the backward pass keeps versus recomputes.
REMAT_POLICIES = {
    # Keep only each block's input; recompute the whole block (least memory, ~1/3 more FLOPs).
    "full": None,
    # Keep the outputs of the weight matmuls (no batch dimension in their contraction) and
    # recompute attention's matmuls, the softmax and elementwise ops: fewer extra FLOPs than
    # 'full', and most of its saving (Qwen2.5-7B at 32 x 1024, scanned: 31 GB of planned
    # activations per device, against 10 GB with 'full' and 107 GB without remat).
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    # Keep every matmul output, attention's included; recompute only elementwise ops.
    "dots": jax.checkpoint_policies.checkpoint_dots,
}


def remat_policy_name(remat: bool | str) -> str | None:
  """The REMAT_POLICIES key `remat` names (True means 'full'), or None for False / 'none'."""
  if remat is False or remat == "none":
    return None
  name = "full" if remat is True else remat
  if name not in REMAT_POLICIES:
    raise UserError(f"remat={remat!r} is not a policy; use 'none', {', '.join(map(repr, REMAT_POLICIES))}")
  return name


def checkpointed(block: type[nn.Module], remat: bool | str, prevent_cse: bool = True) -> type[nn.Module]:
  """`block` with activation checkpointing by policy name (`remat_policy_name`); as is for 'none'.

  Inside a scan, `prevent_cse=False` is safe and lets XLA optimise more (jax.checkpoint's
  documentation).
  """
  name = remat_policy_name(remat)
  if name is None:
    return block
  return nn.remat(block, policy=REMAT_POLICIES[name], prevent_cse=prevent_cse)


class Scanned(nn.Module):
  """`length` blocks applied in turn as one `nn.scan`: XLA compiles the block once, not L times.

  `block(config)` is called as block(x, *shared) -> x, where `shared` (mask, positions,
  bias) is the same for every layer. The blocks' parameters are stacked on a leading [L]
  axis under `sharding.STACKED` ('stacked'). Compile time then barely grows with depth; a
  Python loop over L blocks (scan_layers=False) lets XLA schedule across layers instead.
  """
  block: type[nn.Module]
  config: object
  length: int

  @nn.compact
  def __call__(self, x: jax.Array, *shared: jax.Array | None) -> jax.Array:
    def body(block, carry, *shared):
      return block(carry, *shared), None
    scan = nn.scan(body, variable_axes={"params": 0}, split_rngs={"params": True},
                   in_axes=(nn.broadcast,) * len(shared), length=self.length)
    x, _ = scan(self.block(self.config, name=sharding.STACKED), x, *shared)
    return x


def make_blocks(block: type[nn.Module], config, prefix: str) -> "Scanned | list[nn.Module]":
  """The backbone's L blocks: one `Scanned` stack (config.scan_layers) or `prefix`_0 … `prefix`_{L-1}.

  Assign the result to an attribute named `prefix`s in setup, and run it with `run_blocks`.
  Checkpoint name tables list the per-layer paths; the loader stacks them (models.checkpoints).
  """
  block = checkpointed(block, config.remat, prevent_cse=not config.scan_layers)
  if config.scan_layers:
    return Scanned(block, config, config.n_layers)
  return [block(config, name=f"{prefix}_{i}") for i in range(config.n_layers)]


def run_blocks(blocks, x: jax.Array, *shared: jax.Array | None) -> jax.Array:
  """x through every block of `make_blocks`' result."""
  if isinstance(blocks, Scanned):
    return blocks(x, *shared)
  for block in blocks:
    x = block(x, *shared)
  return x


class Einsum(nn.Module):
  """A projection written as an einsum with named dimensions, plus an optional bias.

  `Einsum((D, N, H), bias_shape=(N, H))('BTD,DNH->BTNH', x)` is a multi-head query projection.
  """
  shape: Sequence[int]
  bias_shape: Sequence[int] | None = None
  dtype: jnp.dtype = jnp.float32
  kernel_init: Initializer = default_init

  @nn.compact
  def __call__(self, eqn: str, x: jax.Array) -> jax.Array:
    kernel = self.param("kernel", self.kernel_init, tuple(self.shape), jnp.float32)
    y = jnp.einsum(eqn, x.astype(self.dtype), kernel.astype(self.dtype))
    if self.bias_shape is not None:
      bias = self.param("bias", nn.initializers.zeros, tuple(self.bias_shape), jnp.float32)
      y = y + bias.astype(self.dtype)
    return y


class LayerNorm(nn.Module):
  """LayerNorm computed in float32 (bf16 statistics drift), returned in the compute dtype."""
  epsilon: float = 1e-5
  dtype: jnp.dtype = jnp.float32
  use_bias: bool = True

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    d = x.shape[-1]
    scale = self.param("scale", nn.initializers.ones, (d,), jnp.float32)
    x = x.astype(jnp.float32)
    mean = x.mean(-1, keepdims=True)
    var = jnp.square(x - mean).mean(-1, keepdims=True)
    y = (x - mean) * jax.lax.rsqrt(var + self.epsilon) * scale
    if self.use_bias:
      y = y + self.param("bias", nn.initializers.zeros, (d,), jnp.float32)
    return y.astype(self.dtype)


class RMSNorm(nn.Module):
  """RMSNorm as Llama/Qwen2 compute it: x / rms(x) * scale, in float32.

  zero_centered: the scale is stored as scale - 1 and applied as (1 + scale), as Gemma stores it.
  """
  epsilon: float = 1e-6
  dtype: jnp.dtype = jnp.float32
  zero_centered: bool = False

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    init = nn.initializers.zeros if self.zero_centered else nn.initializers.ones
    scale = self.param("scale", init, (x.shape[-1],), jnp.float32)
    x = x.astype(jnp.float32)
    y = x * jax.lax.rsqrt(jnp.square(x).mean(-1, keepdims=True) + self.epsilon)
    return (y * (1.0 + scale if self.zero_centered else scale)).astype(self.dtype)


def attention(q: jax.Array, k: jax.Array, v: jax.Array, attention_mask: jax.Array, *,
              causal: bool) -> jax.Array:
  """Softmax attention with a key padding mask (and a causal mask for decoders).

  q: [B, T, N, H]; k, v: [B, S, K, H] with K dividing N (grouped-query attention);
  attention_mask: [B, S], 1 for real tokens; or [B, T, S], 1 where query t may attend to key s
  (a packed sequence's own mask, causal already). Returns [B, T, N, H].
  `jax.nn.dot_product_attention` picks the fused cuDNN kernel on GPUs when it can,
  and computes the softmax in float32 either way.
  """
  scale = 1.0 / math.sqrt(q.shape[-1])
  if attention_mask.ndim == 3:
    # [B, T, S]: which key each query may see, causality included (candidates packed after a shared
    # prompt, w2s_jax/data/choice_batching.py); the mask says everything, so no causal flag.
    return jax.nn.dot_product_attention(q, k, v, mask=attention_mask.astype(bool)[:, None], scale=scale)
  if (jax.default_backend() == "gpu" and q.dtype in (jnp.bfloat16, jnp.float16)
      and q.shape[-1] <= 128 and q.shape[-1] % 8 == 0):
    # The fused cuDNN kernel takes padding as sequence lengths (our batches are right padded);
    # `implementation=None` would always pick the XLA path.
    lengths = attention_mask.sum(-1).astype(jnp.int32)  # [B]
    return jax.nn.dot_product_attention(q, k, v, is_causal=causal, scale=scale, query_seq_lengths=lengths,
                                        key_value_seq_lengths=lengths, implementation="cudnn")
  key_mask = attention_mask.astype(bool)[:, None, None, :]  # [B, 1, 1, S] broadcast over N, T
  return jax.nn.dot_product_attention(q, k, v, mask=key_mask, is_causal=causal, scale=scale)


def rope_frequencies(head_dim: int, theta: float, scaling: dict | None = None) -> jax.Array:
  """Inverse frequencies of rotary embeddings [H/2], with Llama-3 long-context scaling if asked."""
  inv_freq = 1.0 / (theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))
  if not scaling:
    return inv_freq
  kind = scaling.get("rope_type", scaling.get("type"))
  if kind in (None, "default"):
    return inv_freq
  if kind == "linear":
    return inv_freq / scaling["factor"]
  if kind == "llama3":
    # Llama 3.1: low frequencies divided by `factor`, high ones kept, smooth in between.
    factor, low, high = scaling["factor"], scaling["low_freq_factor"], scaling["high_freq_factor"]
    old_context = scaling["original_max_position_embeddings"]
    wavelen = 2 * math.pi / inv_freq
    smooth = (old_context / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * inv_freq / factor + smooth * inv_freq
    scaled = jnp.where(wavelen > old_context / low, inv_freq / factor, inv_freq)
    is_medium = (wavelen <= old_context / low) & (wavelen >= old_context / high)
    return jnp.where(is_medium, smoothed, scaled)
  raise NotImplementedError(f"rope_scaling type {kind!r} is not supported (supported: linear, llama3)")


def apply_rope(x: jax.Array, positions: jax.Array, inv_freq: jax.Array) -> jax.Array:
  """Rotate x [B, T, N, H] by positions [B, T], HF's 'rotate_half' convention (first half, second half)."""
  angles = positions[..., None].astype(jnp.float32) * inv_freq  # [B, T, H/2]
  cos = jnp.cos(angles)[:, :, None, :]  # [B, T, 1, H/2]
  sin = jnp.sin(angles)[:, :, None, :]
  x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
  rotated = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return rotated.astype(x.dtype)


def positions_for(attention_mask: jax.Array, positions: jax.Array | None) -> jax.Array:
  """The position ids to use: `positions` [B, T] if given (a packed sequence must give its own, since
  its candidates restart after the prompt), else counted from the padding mask [B, T]."""
  if positions is not None:
    return positions.astype(jnp.int32)
  if attention_mask.ndim != 2:
    raise ValueError("a [B, T, S] attention mask needs explicit positions [B, T]")
  return positions_from_mask(attention_mask)


def positions_from_mask(attention_mask: jax.Array) -> jax.Array:
  """Position ids [B, T] that count only real tokens (0, 1, 2, … from the first real token)."""
  return jnp.maximum(jnp.cumsum(attention_mask, axis=-1) - 1, 0).astype(jnp.int32)


def gelu_tanh(x: jax.Array) -> jax.Array:
  """GPT-2's 'gelu_new' (the tanh approximation)."""
  return jax.nn.gelu(x, approximate=True)


ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "gelu_new": gelu_tanh,
    "gelu_pytorch_tanh": gelu_tanh,
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
}


def activation(name: str) -> Callable[[jax.Array], jax.Array]:
  if name not in ACTIVATIONS:
    raise NotImplementedError(f"activation {name!r} is not supported (supported: {sorted(ACTIVATIONS)})")
  return ACTIVATIONS[name]
