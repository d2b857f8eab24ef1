"""What sits on a backbone: the classification head (with its pooling), the scalar reward head
and the LM head.

All wrap the backbone under the name `backbone`, so one checkpoint loader fills
`params["backbone"]` for any of them, and a head's own weights live in `params["head"]`.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

POOLINGS = ("last", "first", "mean")
HEAD_INITS = ("zeros", "normal")


def pool(hidden: jax.Array, attention_mask: jax.Array, pooling: str) -> jax.Array:
  """hidden [B, T, D], attention_mask [B, T] -> pooled [B, D] in float32.

  last:  the hidden state of the last *real* token, found from the attention mask
         (the reference code counts token ids != 0, which is wrong for GPT-2, whose
         id 0 is the real token "!"); the decoders' choice.
  first: the first token ([CLS] for BERT-style encoders).
  mean:  the mean over real tokens (sentence-transformers' pooling).
  """
  hidden = hidden.astype(jnp.float32)
  mask = attention_mask.astype(jnp.float32)
  if pooling == "last":
    # Index of the last 1 in each row; works for right *and* left padding.
    t = jnp.arange(mask.shape[1])
    last = jnp.max(jnp.where(mask > 0, t, -1), axis=1)  # [B]
    last = jnp.maximum(last, 0)
    return jnp.take_along_axis(hidden, last[:, None, None], axis=1)[:, 0]
  if pooling == "first":
    return hidden[:, 0]
  if pooling == "mean":
    summed = jnp.einsum("BTD,BT->BD", hidden, mask)
    return summed / jnp.maximum(mask.sum(1, keepdims=True), 1.0)
  raise ValueError(f"pooling {pooling!r} is not one of {POOLINGS}")


class Classifier(nn.Module):
  """Backbone + linear head hidden -> num_labels, no bias (the paper's model).

  The head is zero-initialised by default, as in the paper's code, so training
  starts from uniform predictions; `head_init="normal"` is EleutherAI's choice.
  """
  backbone: nn.Module
  num_labels: int = 2
  pooling: str = "last"
  head_init: str = "zeros"

  def setup(self):
    init = nn.initializers.zeros if self.head_init == "zeros" else nn.initializers.normal(0.01)
    self.head = nn.Dense(self.num_labels, use_bias=False, kernel_init=init, dtype=jnp.float32,
                         param_dtype=jnp.float32)

  def features(self, input_ids: jax.Array, attention_mask: jax.Array) -> jax.Array:
    """Pooled features [B, D] (float32): what a linear probe trains on."""
    return pool(self.backbone(input_ids, attention_mask), attention_mask, self.pooling)

  def classify(self, features: jax.Array) -> jax.Array:
    """Logits [B, num_labels] (float32) from pooled features."""
    return self.head(features)

  def __call__(self, input_ids: jax.Array, attention_mask: jax.Array) -> jax.Array:
    return self.classify(self.features(input_ids, attention_mask))


class RewardModel(nn.Module):
  """Backbone + a scalar reward per sequence, for preference pairs (the paper's reward models).

  The reward is a linear function (no bias: only reward differences mean anything) of the
  pooled hidden state, for a decoder its last real token's, zero-initialised so training
  starts from indifference. A batch row holds a pair: input_ids [B, 2, T] run as 2B sequences
  of one backbone batch, and the row's two rewards are its class logits [B, 2]:

    softmax(r_0, r_1)_1 = sigma(r_1 - r_0),

  the Bradley-Terry probability that response 1 is preferred. Cross-entropy against a soft
  target t = P(response 1 is better) is then the soft Bradley-Terry loss
  -t log sigma(r_1 - r_0) - (1 - t) log sigma(r_0 - r_1), and every binary loss, metric
  and method reads a pair as a two-class example.
  """
  backbone: nn.Module
  pooling: str = "last"
  head_init: str = "zeros"

  def setup(self):
    init = nn.initializers.zeros if self.head_init == "zeros" else nn.initializers.normal(0.01)
    self.head = nn.Dense(1, use_bias=False, kernel_init=init, dtype=jnp.float32, param_dtype=jnp.float32)

  def features(self, input_ids: jax.Array, attention_mask: jax.Array) -> jax.Array:
    """input_ids, attention_mask [B, R, T] -> pooled features [B, R, D] float32 (R = 2 for a pair)."""
    b, r, t = input_ids.shape
    # The R sequences of a row are rows of one backbone batch: [B, R, T] -> [B*R, T] keeps a
    # pair's two sequences next to each other, on the device that holds the row.
    flat_mask = attention_mask.reshape(b * r, t)
    pooled = pool(self.backbone(input_ids.reshape(b * r, t), flat_mask), flat_mask, self.pooling)  # [B*R, D]
    return pooled.reshape(b, r, -1)

  def classify(self, features: jax.Array) -> jax.Array:
    """Rewards [..., R] (float32) from pooled features [..., R, D]."""
    return self.head(features)[..., 0]

  def __call__(self, input_ids: jax.Array, attention_mask: jax.Array) -> jax.Array:
    return self.classify(self.features(input_ids, attention_mask))


class LanguageModel(nn.Module):
  """Backbone + its LM head (tied where the checkpoint ties): logits [B, T, V] for generative finetuning."""
  backbone: nn.Module

  def __call__(self, input_ids: jax.Array, attention_mask: jax.Array,
               positions: jax.Array | None = None) -> jax.Array:
    return self.backbone.lm_logits(self._hidden(input_ids, attention_mask, positions))

  def _hidden(self, input_ids: jax.Array, attention_mask: jax.Array, positions: jax.Array | None) -> jax.Array:
    # Only decoders take explicit positions (packed rows); an encoder then fails at its LM head, clearly.
    if positions is None:
      return self.backbone(input_ids, attention_mask)
    return self.backbone(input_ids, attention_mask, positions)

  def token_logprobs(self, input_ids: jax.Array, attention_mask: jax.Array, at: jax.Array,
                     next_ids: jax.Array, positions: jax.Array | None = None) -> jax.Array:
    """log p(next_ids[b, l] | what index at[b, l] sees): [B, L] float32.

    `attention_mask` is [B, T] (padding) or [B, T, T] (a packed sequence's own mask, with its
    `positions` [B, T]): candidates packed after one shared prompt are scored in one pass.

    The LM head runs only at the L positions asked for, not at all T: scoring a 5-token chess
    move after an 80-token prompt then computes 5 rows of [V] logits instead of 80 (the head
    is the largest matmul of a small model with a 50k-256k vocabulary).
    """
    log_probs = jax.nn.log_softmax(self.logits_at(input_ids, attention_mask, at, positions), axis=-1)  # [B, L, V]
    return jnp.take_along_axis(log_probs, next_ids[..., None], axis=-1)[..., 0]  # [B, L]

  def logits_at(self, input_ids: jax.Array, attention_mask: jax.Array, at: jax.Array,
                positions: jax.Array | None = None) -> jax.Array:
    """Next-token logits [B, L, V] float32 at the indices `at` [B, L] of the sequence only."""
    hidden = self._hidden(input_ids, attention_mask, positions)  # [B, T, D]
    picked = jnp.take_along_axis(hidden, at[..., None], axis=1)  # [B, L, D]
    return self.backbone.lm_logits(picked)
