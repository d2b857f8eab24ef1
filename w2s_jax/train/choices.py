"""A language model on multiple-choice examples: candidate log-likelihoods as class logits.

Candidate k's logit is s_k = sum_j log p(c_kj | prompt, c_k<j), the summed log-probability of
its tokens after the prompt. Then:
  * the prediction is the likeliest candidate (argmax_k s_k: for chess, the legal move with
    the highest log-likelihood), and a soft label is softmax_k(s_k), the model's distribution
    over the candidates;
  * every classification loss (w2s_jax/train/losses.py) applies to s as it does to class
    logits: `xent` is cross-entropy over the candidates;
  * the language-modelling loss `lm` is -sum_k t_k s_k: the negative log-likelihood of the
    target completion's tokens (with hard targets, of the one target candidate), the prompt's
    tokens masked out.

It is the same pure sharded step as classification (`steps.make_train_step` with
`logits_fn=choice_logits`): gradient accumulation, bf16, remat, FSDP and any device count
come with it. Batches are `w2s_jax.data.choice_batching.choice_batches`.
"""

import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh
from tqdm.auto import tqdm

from w2s_jax import sharding
from w2s_jax.data import choice_batching
from w2s_jax.data.choice_batching import ChoiceSet
from w2s_jax.models.checkpoints import LoadedModel
from w2s_jax.train import fit as fit_lib, lora
from w2s_jax.train.fit import TrainConfig
from w2s_jax.train.hooks import Hook

# The logit of an empty slot: finite (softmax gives it exactly 0 and 0 * it is 0, where -inf would
# make 0 * -inf = NaN in a loss), and far below any real summed log-probability.
MASKED_LOGIT = -1e9

# The losses whose gradient reaches every candidate; `lm` reads only those with a target > 0.
LM_LOSSES = ("lm",)


def completion_logprobs(logits: jax.Array, next_ids: jax.Array, next_mask: jax.Array, at: jax.Array) -> jax.Array:
  """Summed log-probability [N] of each row's completion tokens, from full next-token logits [N, T, V].

  The reference form of what `choice_logits` computes with the LM head run only at the
  completion's indices: tokens outside `next_mask` (the prompt's) contribute nothing.
  """
  log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)  # [N, T, V]
  picked = jnp.take_along_axis(log_probs, at[..., None], axis=1)  # [N, L, V]
  token = jnp.take_along_axis(picked, next_ids[..., None], axis=-1)[..., 0]  # [N, L]
  return jnp.sum(jnp.where(next_mask > 0, token, 0.0), axis=-1)


def choice_logits(module, params: Any, mb: dict[str, jax.Array]) -> jax.Array:
  """[B, K] summed log-probabilities of each slot's candidate, all K from one packed pass per row
  (w2s_jax/data/choice_batching.py); MASKED_LOGIT for an empty slot."""
  B, K, L = mb["at"].shape
  token = module.apply({"params": params}, mb["input_ids"], mb["attention_mask"], mb["at"].reshape(B, K * L),
                       mb["next_ids"].reshape(B, K * L), mb["positions"], method="token_logprobs")  # [B, K*L]
  summed = jnp.sum(jnp.where(mb["next_mask"] > 0, token.reshape(B, K, L), 0.0), axis=-1)  # [B, K]
  return jnp.where(mb["choice_mask"] > 0, summed, MASKED_LOGIT)


def slots_for_loss(loss: str) -> str:
  """Which candidates a training batch carries: the `lm` loss needs only those with a target."""
  return "targets" if loss in LM_LOSSES else "all"


def train(model: LoadedModel, data: ChoiceSet, mesh: Mesh, cfg: TrainConfig, *,
          targets: np.ndarray | None = None, weights: np.ndarray | None = None, pad_id: int = 0,
          hooks: Sequence[Hook] = (), desc: str = "train") -> Any:
  """Fine-tune a LanguageModel on `data` against soft `targets` [N, >= K] over its candidates
  (default: the right one); `cfg.loss` is `lm` or any classification loss. Returns the params."""
  slots = slots_for_loss(cfg.loss)

  def epoch_batches(epoch: int):
    return fit_lib._without_index(choice_batching.choice_batches(
        data, cfg.batch_size, targets=targets, weights=weights, slots=slots, shuffle=True, seed=cfg.seed,
        epoch=epoch, bucket=cfg.bucket, pad_id=pad_id, length_buckets=cfg.length_buckets,
        length_multiple=cfg.length_multiple, process_index=jax.process_index(),
        process_count=jax.process_count()))

  return fit_lib._fit(model, epoch_batches, len(data), mesh, cfg, on_features=False, hooks=hooks,
                      desc=desc, logits_fn=choice_logits)


def _score_step(model: LoadedModel, params: Any, mesh: Mesh):
  module = model.module

  def make(param_shardings):
    def score(params, batch):
      return choice_logits(module, params, batch), batch["index"]
    return jax.jit(score, in_shardings=(param_shardings, sharding.batch_sharding(mesh)),
                   out_shardings=sharding.replicated(mesh))
  return fit_lib.cached_step(model, params, mesh, "choices", make)


def predict_logits(model: LoadedModel, params: Any, data: ChoiceSet, mesh: Mesh, *, batch_size: int = 32,
                   pad_id: int = 0, length_buckets: int = 16, length_multiple: int = 1,
                   num_choices: int | None = None, desc: str = "score candidates") -> np.ndarray:
  """Candidate logits [N, num_choices] float32 (default the split's most candidates), in data order;
  MASKED_LOGIT beyond an example's candidates.

  A row packs one example's prompt and all its candidates (one pass scores them all); rows
  are sorted by packed length into batches, so little of a batch is padding.
  """
  params = lora.full_params(model.params, params)  # LoRA train params (a selection hook's) merged
  step = _score_step(model, params, mesh)
  stream = choice_batching.choice_batches(
      data, batch_size, shuffle=False, seed=0, bucket=True, pad_id=pad_id, length_buckets=length_buckets,
      length_multiple=length_multiple, process_index=jax.process_index(), process_count=jax.process_count())
  keep = ("input_ids", "attention_mask", "positions", "at", "next_ids", "next_mask", "choice_mask", "index")
  results = []
  for batch in tqdm(stream, total=math.ceil(len(data) / batch_size), desc=desc, disable=None, leave=False):
    results.append(step(params, sharding.global_batch({k: batch[k] for k in keep}, mesh)))
  out = np.full((len(data), num_choices or data.max_choices), MASKED_LOGIT, np.float32)
  for scores, index in jax.device_get(results):
    real = index >= 0
    out[index[real], :scores.shape[1]] = scores[real]
  return out


def greedy_continuations(model: LoadedModel, params: Any, prompts: Sequence[np.ndarray], mesh: Mesh, *,
                         max_new_tokens: int, batch_size: int = 32, pad_id: int = 0,
                         desc: str = "greedy") -> list[np.ndarray]:
  """The greedy (argmax, unconstrained) continuation of each prompt: `max_new_tokens` int32 ids each.

  Without a KV cache each new token reruns the whole sequence, padded once to the longest
  prompt + `max_new_tokens` (one compiled shape): fine for the few tokens of a chess move.
  """
  module = model.module
  params = lora.full_params(model.params, params)

  def make(param_shardings):
    def next_token(params, ids, mask, position):
      logits = module.apply({"params": params}, ids, mask, position[:, None], method="logits_at")  # [B, 1, V]
      return jnp.argmax(logits[:, 0], axis=-1).astype(jnp.int32)
    return jax.jit(next_token, in_shardings=(param_shardings, *[sharding.batch_sharding(mesh)] * 3),
                   out_shardings=sharding.replicated(mesh))
  step = fit_lib.cached_step(model, params, mesh, "greedy", make)
  T = max(len(p) for p in prompts) + max_new_tokens
  local = batch_size // jax.process_count()
  rows = slice(jax.process_index() * local, (jax.process_index() + 1) * local)  # this process's block
  out = []
  for start in tqdm(range(0, len(prompts), batch_size), desc=desc, disable=None, leave=False):
    chunk = prompts[start:start + batch_size]
    ids = np.full((batch_size, T), pad_id, np.int32)
    lengths = np.ones(batch_size, np.int64)  # padding rows: one token, so none attends to nothing
    for row, prompt in enumerate(chunk):
      ids[row, :len(prompt)] = prompt
      lengths[row] = len(prompt)
    new = np.zeros((batch_size, max_new_tokens), np.int32)
    for j in range(max_new_tokens):
      mask = (np.arange(T)[None] < lengths[:, None]).astype(np.int32)
      batch = sharding.global_batch({"ids": ids[rows], "mask": mask[rows],
                                     "position": (lengths[rows] - 1).astype(np.int32)}, mesh)
      token = np.asarray(jax.device_get(step(params, batch["ids"], batch["mask"], batch["position"])))
      new[:, j] = token
      ids[np.arange(batch_size), lengths] = token
      lengths += 1
    out.extend(new[:len(chunk)])
  return out


def starts_with_a_candidate(text: str, candidates: Sequence[str]) -> bool:
  """Whether a generated text begins with one of the candidates (e.g. a legal move), leading spaces
  aside. Text, not token ids: a model may spell " e2e4" in other tokens than the tokenizer's own."""
  text = text.lstrip()
  return any(text.startswith(c.lstrip()) for c in candidates)
