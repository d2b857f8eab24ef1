"""A language model on multiple-choice examples: tokenization, candidate log-likelihoods, the LM
loss (a hand computation, the prompt masked), and the same pure step on 1 and 8 devices, with
accumulation, bf16 and remat."""


import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from tests import tiny_models
from w2s_jax import sharding
from w2s_jax.data import choice_batching
from w2s_jax.data.tasks import ChoiceExample
from w2s_jax.errors import UserError
from w2s_jax.models import checkpoints
from w2s_jax.train import choices, losses, optim, state as state_lib, steps
from w2s_jax.train.fit import TrainConfig

EXAMPLES = [
    ChoiceExample("the movie was", (" good", " bad", " very good"), 2, uid=0),
    ChoiceExample("the food was really", (" awful", " fine"), 0, uid=1),
    ChoiceExample("service", (" poor", " great", " quite bad"), 1, uid=2),
    ChoiceExample("the plot and the service were so", (" fine", " bad"), 1, uid=3),
]


@pytest.fixture(scope="module")
def lm_dir(tmp_path_factory):
  return tiny_models.save_llama(tmp_path_factory.mktemp("tiny_llama"), hidden=32, layers=2)


@pytest.fixture(scope="module")
def tokenizer(lm_dir):
  return checkpoints.load_tokenizer(lm_dir)


def one_device():
  return sharding.make_mesh(1, 1, devices=jax.devices()[:1])


def load(lm_dir, mesh, **kw):
  return checkpoints.load_pretrained(lm_dir, mesh, task="lm", **kw)


def test_tokenize_choices_concatenates_prompt_and_candidates(tokenizer):
  data = choice_batching.tokenize_choices(EXAMPLES, tokenizer, max_length=32)
  assert data.n_truncated == 0 and data.max_choices == 3
  np.testing.assert_array_equal(data.num_choices, [3, 2, 3, 2])
  assert [len(p) for p in data.prompts] == [3, 4, 1, 7]
  assert [len(c) for c in data.candidates[0]] == [1, 1, 2]
  # Candidates are tokenized without special tokens and are the same tokens after any prompt.
  np.testing.assert_array_equal(data.candidates[3][0], data.candidates[1][1])
  np.testing.assert_array_equal(data.lengths(), [7, 6, 5, 9])  # packed: the prompt once, then every candidate


def test_tokenize_choices_truncates_the_prompt_start_and_checks_labels(tokenizer):
  data = choice_batching.tokenize_choices(EXAMPLES[3:], tokenizer, max_length=4)
  assert data.n_truncated == 1
  full = choice_batching.tokenize_choices(EXAMPLES[3:], tokenizer, max_length=32)
  np.testing.assert_array_equal(data.prompts[0], full.prompts[0][-3:])  # the end, next to the answer
  with pytest.raises(UserError, match="label 5 is not the index"):
    choice_batching.tokenize_choices([ChoiceExample("the", (" good", " bad"), 5, 0)], tokenizer, 16)
  # A whole text to model (empty prompt): its first token becomes the context.
  text = choice_batching.tokenize_choices([ChoiceExample("", ("the movie was good",), 0, 0)], tokenizer, 16)
  assert len(text.prompts[0]) == 1 and len(text.candidates[0][0]) == 3
  with pytest.raises(UserError, match="no shared context"):
    choice_batching.tokenize_choices([ChoiceExample("", (" good", " bad"), 0, 0)], tokenizer, 16)


def hand_logprob(module, params, prompt, completion):
  """log p(completion | prompt) from the full forward pass's next-token logits, in numpy."""
  ids = np.concatenate([prompt, completion])[None].astype(np.int32)
  logits = np.asarray(module.apply({"params": params}, ids, np.ones_like(ids)), np.float64)[0]  # [T, V]
  log_probs = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) \
      - logits.max(-1, keepdims=True)
  P = len(prompt)
  return sum(log_probs[P + j - 1, tok] for j, tok in enumerate(completion))


def test_candidate_logits_are_summed_completion_logprobs(lm_dir, tokenizer):
  mesh = sharding.make_mesh(data=8, fsdp=1)
  model = load(lm_dir, mesh)
  data = choice_batching.tokenize_choices(EXAMPLES, tokenizer, max_length=32)
  logits = choices.predict_logits(model, model.params, data, mesh, batch_size=8, num_choices=4)
  assert logits.shape == (4, 4)
  params = jax.device_get(model.params)
  for i in range(len(data)):
    for k, cand in enumerate(data.candidates[i]):
      np.testing.assert_allclose(logits[i, k], hand_logprob(model.module, params, data.prompts[i], cand),
                                 rtol=1e-5, atol=1e-5)
    assert np.all(logits[i, len(data.candidates[i]):] == choices.MASKED_LOGIT)


def step_of(model, mesh, loss, *, microbatches=1, lr=0.0, total=10):
  tx = optim.make_optimizer(name="adam", lr=lr, total_steps=total, schedule="constant") if lr else \
      optax.set_to_zero()
  state, shardings, keys = state_lib.create(model.params, tx, mesh)
  step = steps.make_train_step(model.module, tx, losses.get_loss(loss), total_steps=total, trainable=keys,
                               microbatches=microbatches, mesh=mesh, logits_fn=choices.choice_logits)
  return state, steps.jit_train_step(step, shardings, mesh)


def batches_of(data, loss, *, targets=None, batch_size=4, epochs=1):
  out = []
  for epoch in range(epochs):
    for b in choice_batching.choice_batches(data, batch_size, targets=targets, shuffle=True, seed=0, epoch=epoch,
                                            slots=choices.slots_for_loss(loss)):
      b.pop("index")
      out.append(b)
  return out


def test_lm_loss_is_the_completion_nll_with_the_prompt_masked(lm_dir, tokenizer):
  mesh = one_device()
  model = load(lm_dir, mesh)
  data = choice_batching.tokenize_choices(EXAMPLES, tokenizer, max_length=32)
  (batch,) = batches_of(data, "lm")
  assert batch["choice_mask"].shape == (4, 1) and batch["choice_mask"].sum() == 4  # one slot: the label
  params = jax.device_get(model.params)  # before the step, which donates them
  state, step = step_of(model, mesh, "lm")
  _, metrics = step(state, sharding.global_batch(batch, mesh))
  nll = [-hand_logprob(model.module, params, data.prompts[i], data.candidates[i][data.labels[i]]) for i in range(4)]
  np.testing.assert_allclose(float(metrics["loss"]), np.mean(nll), rtol=1e-5)
  # Counting the prompt's tokens too would give another number: the test can tell.
  whole = [-hand_logprob(model.module, params, data.prompts[i][:1],
                         np.concatenate([data.prompts[i][1:], data.candidates[i][data.labels[i]]])) for i in range(4)]
  assert abs(np.mean(whole) - np.mean(nll)) > 0.5
  assert float(metrics["accuracy"]) == 1.0  # the one slot is the label's


def test_prompt_positions_get_no_gradient_and_candidates_do_not_see_each_other(lm_dir, tokenizer):
  mesh = one_device()
  model = load(lm_dir, mesh)
  data = choice_batching.tokenize_choices(EXAMPLES, tokenizer, max_length=32)
  (batch,) = choice_batching.choice_batches(data, 4, shuffle=False, seed=0)
  assert batch["choice_mask"].shape == (4, 3)  # every candidate of an example packed in its row
  full = model.module.apply({"params": model.params}, batch["input_ids"], batch["attention_mask"],
                            batch["positions"])  # [B, T, V]

  def total(logits):
    return sum(jnp.sum(choices.completion_logprobs(logits, batch["next_ids"][:, k], batch["next_mask"][:, k],
                                                   batch["at"][:, k])) for k in range(3))

  grad = np.abs(np.asarray(jax.grad(total)(full))).sum(-1)  # [B, T]
  scored = np.zeros_like(grad, dtype=bool)
  for b in range(len(grad)):
    scored[b, batch["at"][b][batch["next_mask"][b] > 0]] = True
  assert np.all(grad[~scored] == 0.0)  # the prompt's own tokens (but its last) have no loss
  assert np.all(grad[scored] > 0.0)
  # The step's scorer (LM head only at the completion's indices) agrees with the reference ...
  gathered = np.asarray(choices.choice_logits(model.module, model.params, batch))
  for k in range(3):
    reference = np.asarray(choices.completion_logprobs(full, batch["next_ids"][:, k], batch["next_mask"][:, k],
                                                       batch["at"][:, k]))
    real = batch["choice_mask"][:, k] > 0
    np.testing.assert_allclose(gathered[real, k], reference[real], rtol=1e-5, atol=1e-5)
  # ... and packing is invisible: each candidate scores as it would alone after its prompt.
  params = jax.device_get(model.params)
  for row, i in enumerate(batch["index"]):
    for k, cand in enumerate(data.candidates[i]):
      np.testing.assert_allclose(gathered[row, k], hand_logprob(model.module, params, data.prompts[i], cand),
                                 rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("loss", ["lm", "xent"])
def test_choice_step_same_on_1_and_8_devices_and_any_accumulation(lm_dir, tokenizer, loss):
  data = choice_batching.tokenize_choices(EXAMPLES * 4, tokenizer, max_length=32)
  rng = np.random.default_rng(0)
  targets = np.zeros((len(data), data.max_choices), np.float32)
  for i, k in enumerate(data.num_choices):
    targets[i, :k] = rng.dirichlet(np.ones(k))  # soft: every candidate is a slot, for both losses
  batches = batches_of(data, loss, targets=targets, batch_size=8, epochs=2)

  def curve(mesh, microbatches):
    model = load(lm_dir, mesh)
    state, step = step_of(model, mesh, loss, microbatches=microbatches, lr=1e-2)
    out = []
    for b in batches:
      state, m = step(state, sharding.global_batch(b, mesh))
      out.append(float(m["loss"]))
    return np.array(out)

  one = curve(one_device(), 1)
  assert one[-1] < one[0]  # it learns
  # 8 devices (data 2 x FSDP 4) and 2 microbatches at once: each is pinned apart for classification
  # (tests/test_steps.py); here the packed batches' [B, T, T] masks and [B, K, L] indices go through both.
  np.testing.assert_allclose(curve(sharding.make_mesh(data=2, fsdp=4), 2), one, rtol=2e-4)


def test_bf16_and_remat_train_the_same_model(lm_dir, tokenizer):
  data = choice_batching.tokenize_choices(EXAMPLES * 2, tokenizer, max_length=32)
  mesh = one_device()
  # Cross-entropy over the candidates: it pushes the wrong ones down, so it fits eight examples.
  cfg = TrainConfig(batch_size=8, epochs=20, lr=1e-2, loss="xent", schedule="constant")
  losses_by = {}
  for name, kw in {"fp32": {}, "bf16+remat": dict(dtype="bfloat16", remat="full")}.items():
    model = load(lm_dir, mesh, **kw)
    params = choices.train(model, data, mesh, cfg)
    logits = choices.predict_logits(model, params, data, mesh, batch_size=8)
    losses_by[name] = logits
    assert np.mean(logits.argmax(-1) == data.labels) == 1.0
  real = losses_by["fp32"] > choices.MASKED_LOGIT
  np.testing.assert_allclose(losses_by["bf16+remat"][real], losses_by["fp32"][real], atol=0.5)


def test_choice_batches_check_targets(tokenizer):
  data = choice_batching.tokenize_choices(EXAMPLES, tokenizer, max_length=32)
  bad = choice_batching.one_hot_targets(data)
  bad[1, 2] = 0.5  # example 1 has two candidates
  with pytest.raises(UserError, match="candidates an example does not have"):
    next(choice_batching.choice_batches(data, 4, targets=bad, shuffle=False, seed=0))
  with pytest.raises(UserError, match="NaN"):
    next(choice_batching.choice_batches(data, 4, targets=np.full((4, 3), np.nan), shuffle=False, seed=0))


def test_greedy_continuations_are_the_argmax_tokens(lm_dir, tokenizer):
  mesh = sharding.make_mesh(data=8, fsdp=1)
  model = load(lm_dir, mesh)
  data = choice_batching.tokenize_choices(EXAMPLES, tokenizer, max_length=32)
  generated = choices.greedy_continuations(model, model.params, data.prompts, mesh, max_new_tokens=3, batch_size=8)
  params = jax.device_get(model.params)
  for prompt, out in zip(data.prompts, generated):
    ids = list(prompt)
    for _ in range(3):
      x = np.array([ids], np.int32)
      ids.append(int(np.argmax(np.asarray(model.module.apply({"params": params}, x, np.ones_like(x)))[0, -1])))
    np.testing.assert_array_equal(out, ids[len(prompt):])
  legal = (" e2e4", " g1f3", " e7e8q")
  assert choices.starts_with_a_candidate(" e2e4\nBest", legal)  # what follows is not judged
  assert choices.starts_with_a_candidate("e7e8q", legal) and choices.starts_with_a_candidate(" g1f3g1", legal)
  assert not choices.starts_with_a_candidate(" e7e8", legal) and not choices.starts_with_a_candidate(" 2022-", legal)


def _save_decoder(name: str, directory):
  """A tiny random decoder of each family whose attention differs: GPT-2 (learned positions), Mistral
  (a sliding window of 4), Gemma 3 (local windows of 4 and global layers)."""
  import torch
  import transformers
  from tests import test_gemma3, test_llama
  if name == "gpt2":
    return tiny_models.save_gpt2(directory, n_embd=16, n_layer=2), 21
  if name == "mistral":
    test_llama._save_tiny("mistral", directory)
    return directory, test_llama.SMALL["vocab_size"]
  torch.manual_seed(0)
  model = test_gemma3._perturbed(transformers.Gemma3ForCausalLM(test_gemma3._text_config()))
  model.save_pretrained(directory)
  return directory, test_gemma3.SMALL["vocab_size"]


@pytest.mark.parametrize("family", ["gpt2", "mistral", "gemma3"])
def test_packed_candidates_score_as_separate_sequences_in_every_decoder(family, tmp_path):
  directory, vocab = _save_decoder(family, tmp_path)
  mesh = sharding.make_mesh(data=2, fsdp=4)
  model = load(directory, mesh)
  rng = np.random.default_rng(0)
  ids = lambda n: rng.integers(3, vocab, size=n).astype(np.int32)
  # Prompts of 3-7 tokens, 2-4 candidates of 1-4 tokens: longer than the windows of 4.
  prompts = [ids(int(rng.integers(3, 8))) for _ in range(6)]
  cands = [tuple(ids(int(rng.integers(1, 5))) for _ in range(int(rng.integers(2, 5)))) for _ in range(6)]
  data = choice_batching.ChoiceSet(prompts, cands, np.zeros(6, np.int32), np.arange(6, dtype=np.int64))
  logits = choices.predict_logits(model, model.params, data, mesh, batch_size=8)
  params = jax.device_get(model.params)
  for i in range(6):
    for k, cand in enumerate(cands[i]):
      np.testing.assert_allclose(logits[i, k], hand_logprob(model.module, params, prompts[i], cand),
                                 rtol=2e-5, atol=2e-5, err_msg=f"{family} example {i} candidate {k}")
