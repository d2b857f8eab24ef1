"""Gemma 3 (text): a decoder that interleaves local (sliding-window) and global attention layers.

What differs from the Llama family (models.llama), as transformers' modeling_gemma3 computes it:
  - token embeddings are multiplied by sqrt(d_model), and the LM head is the tied embedding;
  - RMSNorm scales by (1 + weight), so a zero weight is the identity;
  - "sandwich" norms: each sublayer's output is normed again before the residual add
    (input / post_attention / pre_feedforward / post_feedforward layernorms);
  - queries and keys are RMS-normed per head (q_norm, k_norm) before RoPE;
  - attention scores are scaled by query_pre_attn_scalar ** -0.5, not head_dim ** -0.5;
  - each layer is sliding (local) or full (global) by `layer_types`; local layers rotate by the
    base rope_local_theta, global ones by rope_theta with the config's rope_scaling;
  - the MLP gates with gelu (tanh approximation); the LM logits are soft-capped
    (cap * tanh(x / cap)) when the config sets final_logit_softcapping (Gemma 3's do not).
The blocks run as a Python loop or as one nn.scan; a layer's type only changes two arrays
(its key window and its RoPE frequencies), which the scan feeds in per layer.
"""

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from w2s_jax import sharding
from w2s_jax.errors import UserError
from w2s_jax.models import layers, llama
from w2s_jax.models.layers import Einsum

SLIDING, FULL = "sliding_attention", "full_attention"
# A global layer's key window: wider than any sequence.
NO_WINDOW = jnp.iinfo(jnp.int32).max

# Gemma3TextConfig's defaults: the text_config of the hub's multimodal config.json files lists
# only the sizes that differ from them (gemma-3-4b's has no head counts, for one).
HF_TEXT_DEFAULTS = dict(
    vocab_size=262208, hidden_size=2304, intermediate_size=9216, num_hidden_layers=26,
    num_attention_heads=8, num_key_value_heads=4, head_dim=256, rms_norm_eps=1e-6,
    query_pre_attn_scalar=256, sliding_window=4096, max_position_embeddings=131072,
    tie_word_embeddings=True)


@dataclasses.dataclass(frozen=True)
class Gemma3Config:
  vocab_size: int = 262144
  d_model: int = 640
  n_layers: int = 18
  n_heads: int = 4
  n_kv_heads: int = 1
  head_dim: int = 256
  d_ff: int = 2048
  rms_eps: float = 1e-6
  query_pre_attn_scalar: float = 256.0
  rope_theta: float = 1e6  # global layers
  # Global layers' rope_scaling as sorted (key, value) items (hashable; see llama.LlamaConfig).
  rope_scaling: tuple[tuple[str, Any], ...] | None = None
  rope_local_theta: float = 10000.0  # sliding layers, never scaled
  # A sliding layer's token sees itself and the sliding_window - 1 tokens before it.
  sliding_window: int | None = 512
  # One of SLIDING / FULL per layer (from_hf always lists them); None: every
  # `sliding_window_pattern`-th layer is global (the presets).
  layer_types: tuple[str, ...] | None = None
  sliding_window_pattern: int = 6
  final_softcap: float | None = None  # on the LM logits
  max_positions: int = 32768
  activation: str = "gelu_pytorch_tanh"
  # Runtime choices, as in LlamaConfig.
  dtype: str = "float32"
  remat: bool | str = False
  scan_layers: bool = False

  kind = "decoder"
  tie_embeddings = True  # every Gemma 3 checkpoint ties its LM head to the embedding
  mlp_bias = False  # read by llama.MLP, which Gemma shares

  def __post_init__(self):
    if self.n_heads % self.n_kv_heads:
      raise UserError(f"n_heads={self.n_heads} is not a multiple of n_kv_heads={self.n_kv_heads}; "
                      "each key/value head must serve a whole group of query heads")
    if self.head_dim % 2:
      raise UserError(f"head_dim={self.head_dim} is odd; rotary embeddings rotate pairs")
    if self.layer_types is not None:
      unknown = sorted(set(self.layer_types) - {SLIDING, FULL})
      if unknown or len(self.layer_types) != self.n_layers:
        raise UserError(f"layer_types must name {SLIDING!r} or {FULL!r} for each of the {self.n_layers} "
                        f"layers; got {len(self.layer_types)} entries" + (f", unknown {unknown}" if unknown else ""))
    kind = dict(self.rope_scaling or ()).get("rope_type", "default")
    if kind not in llama.SUPPORTED_ROPE_TYPES:
      raise UserError(f"rope_scaling type {kind!r} is not supported (supported: {llama.SUPPORTED_ROPE_TYPES})")

  @property
  def sliding(self) -> tuple[bool, ...]:
    """Per layer: True for a local (sliding-window) layer, False for a global one."""
    types = self.layer_types or pattern_layer_types(self.n_layers, self.sliding_window_pattern)
    return tuple(t == SLIDING for t in types)

  @property
  def rope_scaling_dict(self) -> dict[str, Any] | None:
    return dict(self.rope_scaling) if self.rope_scaling else None

  @classmethod
  def from_hf(cls, hf: dict[str, Any]) -> "Gemma3Config":
    """From a gemma3_text config.json, or a multimodal gemma3 one (its text_config; vision is dropped)."""
    if hf.get("model_type") == "gemma3":
      hf = {"tie_word_embeddings": hf.get("tie_word_embeddings", True)} | hf.get("text_config", {})
    hf = HF_TEXT_DEFAULTS | hf
    if hf.get("use_bidirectional_attention"):
      raise UserError("this Gemma 3 config sets use_bidirectional_attention (EmbeddingGemma), which is "
                      "not supported; only causal Gemma 3 decoders are")
    if hf.get("attention_bias"):
      raise UserError("this Gemma 3 config sets attention_bias=true, which no Gemma 3 checkpoint uses "
                      "and is not supported")
    if not hf["tie_word_embeddings"]:
      raise UserError("this Gemma 3 config unties the LM head (tie_word_embeddings=false), which is not "
                      "supported; Gemma 3 checkpoints tie it to the embedding")
    # attn_logit_softcapping is read by transformers' Gemma3Attention but never applied (its
    # Gemma 2 applies it); ignoring it too keeps these checkpoints' outputs those of HF.
    theta, scaling, local_theta = _rope_from_hf(hf)
    # Spelled out per layer, as transformers 5 does from the older `sliding_window_pattern`.
    layer_types = hf.get("layer_types") or pattern_layer_types(hf["num_hidden_layers"],
                                                               hf.get("sliding_window_pattern", 6))
    return cls(vocab_size=hf["vocab_size"], d_model=hf["hidden_size"], n_layers=hf["num_hidden_layers"],
               n_heads=hf["num_attention_heads"], n_kv_heads=hf["num_key_value_heads"],
               head_dim=hf["head_dim"], d_ff=hf["intermediate_size"], rms_eps=hf["rms_norm_eps"],
               query_pre_attn_scalar=float(hf["query_pre_attn_scalar"]), rope_theta=theta,
               rope_scaling=scaling, rope_local_theta=local_theta, sliding_window=hf["sliding_window"],
               layer_types=tuple(layer_types),
               final_softcap=hf.get("final_logit_softcapping"),
               max_positions=hf["max_position_embeddings"],
               activation=hf.get("hidden_activation") or hf.get("hidden_act", "gelu_pytorch_tanh"))


def pattern_layer_types(n_layers: int, pattern: int) -> tuple[str, ...]:
  """Every `pattern`-th layer global, the rest sliding (transformers' reading of sliding_window_pattern)."""
  return tuple(SLIDING if (i + 1) % pattern else FULL for i in range(n_layers))


def _rope_from_hf(hf: dict[str, Any]) -> tuple[float, tuple[tuple[str, Any], ...] | None, float]:
  """(global theta, global scaling items, local theta) from either config layout.

  transformers 5 writes rope_parameters = {full_attention: {...}, sliding_attention: {...}};
  transformers 4 wrote rope_theta and rope_scaling (global) and rope_local_base_freq (local).
  """
  per_type = hf.get("rope_parameters") or {}
  if FULL in per_type or SLIDING in per_type:
    full = {"rope_theta": 1e6} | dict(per_type.get(FULL) or {})
    local = {"rope_theta": 1e4} | dict(per_type.get(SLIDING) or {})
  else:
    full = {"rope_theta": hf.get("rope_theta", 1e6)} | dict(hf.get("rope_scaling") or {})
    local = {"rope_theta": hf.get("rope_local_base_freq", 1e4)}
  theta, scaling = llama._rope_from_hf({"rope_parameters": full})
  local_theta, local_scaling = llama._rope_from_hf({"rope_parameters": local})
  if local_scaling is not None:
    raise UserError(f"rope scaling on the sliding layers ({dict(local_scaling)}) is not supported; "
                    "Gemma 3 scales only its global layers")
  return theta, scaling, local_theta


# The official config.json sizes; `jax.eval_shape` of these checks our parameter counts.
PRESETS = {
    "gemma-3-270m": Gemma3Config(),
    "gemma-3-1b": Gemma3Config(d_model=1152, n_layers=26, d_ff=6912),
}


def RMSNorm(epsilon: float, dtype: jnp.dtype, *, name: str | None = None) -> layers.RMSNorm:
  """Gemma's RMSNorm: x / rms(x) * (1 + scale) in float32 (the scale is stored zero-centred, as in HF)."""
  return layers.RMSNorm(epsilon, dtype, zero_centered=True, name=name)


def attention(q: jax.Array, k: jax.Array, v: jax.Array, attention_mask: jax.Array, window: jax.Array,
              scale: float, positions: jax.Array) -> jax.Array:
  """Causal grouped-query attention over the `window` most recent keys (the key itself included).

  q: [B, T, N, H]; k, v: [B, S, K, H]; attention_mask: [B, S]; returns [B, T, N, H]. `window` is
  a scalar that is traced inside the scan, so the window goes in as a mask, not as
  dot_product_attention's static local_window_size.
  """
  if attention_mask.ndim == 3:  # a packed sequence (causal already): the window counts positions
    near = positions[:, :, None] - positions[:, None, :] < window  # [B, T, S]
    return jax.nn.dot_product_attention(q, k, v, mask=(attention_mask.astype(bool) & near)[:, None], scale=scale)
  T, S = q.shape[1], k.shape[1]
  t, s = jnp.arange(T)[:, None], jnp.arange(S)[None, :]
  allowed = (s <= t) & (t - s < window)  # [T, S]
  allowed = allowed[None, None] & attention_mask.astype(bool)[:, None, None, :]  # [B, 1, T, S]
  return jax.nn.dot_product_attention(q, k, v, mask=allowed, scale=scale)


class Attention(nn.Module):
  config: Gemma3Config

  @nn.compact
  def __call__(self, x: jax.Array, attention_mask: jax.Array, positions: jax.Array, window: jax.Array,
               inv_freq: jax.Array) -> jax.Array:
    c, dtype = self.config, jnp.dtype(self.config.dtype)
    D, N, K, H = c.d_model, c.n_heads, c.n_kv_heads, c.head_dim
    q = Einsum((D, N, H), None, dtype, name="q")("BTD,DNH->BTNH", x)
    k = Einsum((D, K, H), None, dtype, name="k")("BSD,DKH->BSKH", x)
    v = Einsum((D, K, H), None, dtype, name="v")("BSD,DKH->BSKH", x)
    q = RMSNorm(c.rms_eps, dtype, name="q_norm")(q)  # over H, each head alone
    k = RMSNorm(c.rms_eps, dtype, name="k_norm")(k)
    q = layers.apply_rope(q, positions, inv_freq)
    k = layers.apply_rope(k, positions, inv_freq)
    out = attention(q, k, v, attention_mask, window, c.query_pre_attn_scalar ** -0.5, positions)  # [B, T, N, H]
    return Einsum((N, H, D), None, dtype, name="out")("BTNH,NHD->BTD", out)


class Block(nn.Module):
  """x + post_norm(attn(norm(x))), then the same sandwich around the MLP."""
  config: Gemma3Config

  @nn.compact
  def __call__(self, x: jax.Array, attention_mask: jax.Array, positions: jax.Array, window: jax.Array,
               inv_freq: jax.Array) -> jax.Array:
    c, dtype = self.config, jnp.dtype(self.config.dtype)
    norm = lambda name: RMSNorm(c.rms_eps, dtype, name=name)
    h = Attention(c, name="attn")(norm("attn_norm")(x), attention_mask, positions, window, inv_freq)
    x = x + norm("post_attn_norm")(h)
    h = llama.MLP(c, name="mlp")(norm("mlp_norm")(x))
    return x + norm("post_mlp_norm")(h)


class ScannedBlocks(nn.Module):
  """The L blocks as one nn.scan, like layers.Scanned, with each layer's window and RoPE
  frequencies scanned over (the per-layer inputs) and mask / positions broadcast."""
  block: type[nn.Module]
  config: Gemma3Config

  @nn.compact
  def __call__(self, x: jax.Array, attention_mask: jax.Array, positions: jax.Array, windows: jax.Array,
               inv_freqs: jax.Array) -> jax.Array:
    def body(block, carry, window, inv_freq, attention_mask, positions):
      return block(carry, attention_mask, positions, window, inv_freq), None
    scan = nn.scan(body, variable_axes={"params": 0}, split_rngs={"params": True},
                   in_axes=(0, 0, nn.broadcast, nn.broadcast), length=self.config.n_layers)
    x, _ = scan(self.block(self.config, name=sharding.STACKED), x, windows, inv_freqs, attention_mask,
                positions)
    return x


class Gemma3(nn.Module):
  """input_ids [B, T], attention_mask [B, T] (right padded) -> final hidden states [B, T, D]."""
  config: Gemma3Config

  def setup(self):
    c = self.config
    self.embed = nn.Embed(c.vocab_size, c.d_model, embedding_init=layers.default_init,
                          param_dtype=jnp.float32)
    block = layers.checkpointed(Block, c.remat, prevent_cse=not c.scan_layers)
    # Parameter paths as layers.make_blocks names them, so the loader's stacking applies.
    if c.scan_layers:
      self.blocks = ScannedBlocks(block, c)
    else:
      self.blocks = [block(c, name=f"block_{i}") for i in range(c.n_layers)]
    self.norm = RMSNorm(c.rms_eps, jnp.dtype(c.dtype))

  def per_layer(self) -> tuple[jax.Array, jax.Array]:
    """Each layer's key window [L] and RoPE inverse frequencies [L, H/2], by its type (constants)."""
    c = self.config
    local = layers.rope_frequencies(c.head_dim, c.rope_local_theta)
    full = layers.rope_frequencies(c.head_dim, c.rope_theta, c.rope_scaling_dict)
    window = NO_WINDOW if c.sliding_window is None else c.sliding_window
    windows = jnp.array([window if s else NO_WINDOW for s in c.sliding], jnp.int32)
    return windows, jnp.stack([local if s else full for s in c.sliding])

  def __call__(self, input_ids: jax.Array, attention_mask: jax.Array,
               positions: jax.Array | None = None) -> jax.Array:
    c, dtype = self.config, jnp.dtype(self.config.dtype)
    positions = layers.positions_for(attention_mask, positions)  # [B, T]
    # sqrt(D) rounded to the dtype the embedding is used in, as HF does (55.4256 -> 55.5 in bf16).
    x = self.embed(input_ids).astype(dtype) * jnp.asarray(c.d_model ** 0.5, dtype)  # [B, T, D]
    windows, inv_freqs = self.per_layer()
    if c.scan_layers:
      x = self.blocks(x, attention_mask, positions, windows, inv_freqs)
    else:
      for i, block in enumerate(self.blocks):
        x = block(x, attention_mask, positions, windows[i], inv_freqs[i])
    return self.norm(x)

  def lm_logits(self, hidden: jax.Array) -> jax.Array:
    """Next-token logits [B, T, V] in float32 from the tied embedding, soft-capped if the config caps them."""
    logits = self.embed.attend(hidden.astype(jnp.float32))
    cap = self.config.final_softcap
    return logits if cap is None else cap * jnp.tanh(logits / cap)


def hf_tensor_map(c: Gemma3Config) -> dict[str, tuple[str, Any]]:
  """Our parameter path (inside the backbone) -> (HF tensor name, transform to our layout).

  HF's nn.Linear stores weight [out, in]; our kernels are [in, …, out]. Norm weights are
  zero-centred in both.
  """
  same = None
  D, N, K, H = c.d_model, c.n_heads, c.n_kv_heads, c.head_dim
  transpose = lambda w: w.T
  table = {"embed/embedding": ("embed_tokens.weight", same), "norm/scale": ("norm.weight", same)}
  norms = {"attn_norm": "input_layernorm", "post_attn_norm": "post_attention_layernorm",
           "mlp_norm": "pre_feedforward_layernorm", "post_mlp_norm": "post_feedforward_layernorm"}
  for i in range(c.n_layers):
    ours, hf = f"block_{i}", f"layers.{i}"
    for name, n in {"q": N, "k": K, "v": K}.items():
      # q_proj.weight [n*H, D] -> [D, n, H].
      table[f"{ours}/attn/{name}/kernel"] = (f"{hf}.self_attn.{name}_proj.weight",
                                             lambda w, n=n: w.T.reshape(D, n, H))
    # o_proj.weight [D, N*H] -> [N, H, D].
    table[f"{ours}/attn/out/kernel"] = (f"{hf}.self_attn.o_proj.weight", lambda w: w.T.reshape(N, H, D))
    table[f"{ours}/attn/q_norm/scale"] = (f"{hf}.self_attn.q_norm.weight", same)
    table[f"{ours}/attn/k_norm/scale"] = (f"{hf}.self_attn.k_norm.weight", same)
    for name in ("gate", "up", "down"):
      table[f"{ours}/mlp/{name}/kernel"] = (f"{hf}.mlp.{name}_proj.weight", transpose)
    for name, hf_name in norms.items():
      table[f"{ours}/{name}/scale"] = (f"{hf}.{hf_name}.weight", same)
  return table


# Not parameters of ours: the tied LM head (also under the multimodal language_model.), and a
# multimodal checkpoint's vision tower and projector.
HF_IGNORED = (r"^(language_model\.)?lm_head\.weight$",
              r"^(model\.)?(vision_tower|multi_modal_projector)\.")
# Text checkpoints keep the backbone under model.; multimodal ones under language_model.model.
# (as transformers 4 and 5 save them) or model.language_model. (transformers 5's module paths).
HF_PREFIXES = ("model.", "", "language_model.model.", "model.language_model.")
HF_MODEL_TYPES = ("gemma3_text", "gemma3")
