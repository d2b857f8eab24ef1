"""The reward model: pairs batched as [B, 2, T], a zero-initialised scalar reward read at the last real
token, the soft Bradley-Terry loss, and a sharded train step that ranks pairs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests import tiny_models
from w2s_jax import sharding
from w2s_jax.data import batching
from w2s_jax.data.tasks import PreferenceExample
from w2s_jax.models import checkpoints, heads
from w2s_jax.models.gpt2 import GPT2Config
from w2s_jax.train import losses, optim, state as state_lib, steps

TINY = GPT2Config(vocab_size=32, max_positions=16, d_model=16, n_layers=2, n_heads=2, d_ff=32)


def pair_batch(n: int, seed: int, T: int = 8):
  """Pairs of random sequences; the chosen one ends in the upper half of the vocabulary, the rejected
  one in the lower half (a reward of the last real token can learn it), in a random slot."""
  rng = np.random.default_rng(seed)
  lengths = rng.integers(2, T + 1, size=(n, 2))
  ids = rng.integers(1, TINY.vocab_size, size=(n, 2, T)).astype(np.int32)
  mask = (np.arange(T)[None, None] < lengths[..., None]).astype(np.int32)
  labels = rng.integers(2, size=n).astype(np.int32)
  rows = np.arange(n)
  for slot in (0, 1):
    last = ids[rows, slot, lengths[:, slot] - 1]
    chosen = labels == slot
    ids[rows, slot, lengths[:, slot] - 1] = np.where(chosen, last % 16 + 16, last % 15 + 1)
  ids = np.where(mask == 1, ids, 0).astype(np.int32)
  return {"input_ids": ids, "attention_mask": mask, "labels": labels,
          "targets": np.eye(2, dtype=np.float32)[labels], "weight": np.ones(n, np.float32)}


def reward_model(mesh, head_init="zeros"):
  module = checkpoints.build_model(TINY, task="reward", head_init=head_init)
  return module, checkpoints.init_params(module, jax.random.key(0), mesh)


def test_rewards_are_per_sequence_and_start_at_zero():
  mesh = sharding.make_mesh(1, 1, devices=jax.devices()[:1])
  module, params = reward_model(mesh)
  assert isinstance(module, heads.RewardModel) and params["head"]["kernel"].shape == (TINY.d_model, 1)
  batch = pair_batch(6, seed=0)
  rewards = module.apply({"params": params}, batch["input_ids"], batch["attention_mask"])
  np.testing.assert_array_equal(np.asarray(rewards), np.zeros((6, 2)))  # zero head: indifferent

  module, params = reward_model(mesh, head_init="normal")
  rewards = np.asarray(module.apply({"params": params}, batch["input_ids"], batch["attention_mask"]))  # [6, 2]
  assert rewards.shape == (6, 2) and np.all(rewards != 0)
  # Each reward is its own sequence's, read alone: a pair's two rows of the backbone batch do not mix.
  for i in range(2):
    for slot in (0, 1):
      length = int(batch["attention_mask"][i, slot].sum())
      alone = module.apply({"params": params}, batch["input_ids"][i:i + 1, slot:slot + 1, :length],
                           batch["attention_mask"][i:i + 1, slot:slot + 1, :length])
      np.testing.assert_allclose(np.asarray(alone)[0, 0], rewards[i, slot], rtol=1e-5, atol=1e-6)


def test_cross_entropy_on_rewards_is_the_soft_bradley_terry_loss():
  rewards = jnp.array([[0.3, -1.2], [2.0, 0.5], [-0.4, -0.4]])  # [B, 2]
  t = jnp.array([0.9, 0.2, 0.5])  # P(response 1 is better): a weak reward model's sigma(r_1 - r_0)
  loss, _ = losses.xent(rewards, jnp.stack([1 - t, t], -1), jnp.ones(3))
  margin = rewards[:, 1] - rewards[:, 0]
  bradley_terry = -(t * jax.nn.log_sigmoid(margin) + (1 - t) * jax.nn.log_sigmoid(-margin))
  np.testing.assert_allclose(float(loss), float(bradley_terry.mean()), rtol=1e-6)


def test_pairs_tokenize_as_two_sequences_keeping_their_end():
  tok = tiny_models.word_tokenizer()
  pairs = [PreferenceExample("the movie was", (" very good", " bad"), 0, uid=7),
           PreferenceExample("the plot and the food and the service was", (" good", " really awful"), 1, uid=9)]
  data = batching.tokenize(pairs, tok, max_length=6)
  assert data.rows_per_example == 2 and list(data.uids) == [7, 9] and list(data.labels) == [0, 1]
  assert tok.decode(data.ids[0][0]) == "the movie was very good" and tok.decode(data.ids[0][1]) == "the movie was bad"
  # The long pair lost its start, never its response: the reward is read at the end.
  assert tok.decode(data.ids[1][1]) == "and the service was really awful" and data.n_truncated == 1
  assert list(data.lengths) == [5, 6]

  batch = next(batching.batches(data, 4, shuffle=False, seed=0, bucket=False, pad_id=0))
  assert batch["input_ids"].shape == (4, 2, 6) and batch["attention_mask"].shape == (4, 2, 6)
  np.testing.assert_array_equal(batch["attention_mask"][0].sum(-1), [5, 4])
  np.testing.assert_array_equal(batch["input_ids"][1, 0], data.ids[1][0])
  assert list(batch["index"]) == [0, 1, -1, -1] and list(batch["weight"]) == [1, 1, 0, 0]
  np.testing.assert_array_equal(batch["attention_mask"][2:, :, 0], 1)  # padding rows attend to one token


@pytest.mark.parametrize("loss", ["xent", "logconf"])
def test_reward_model_learns_to_rank_pairs_on_8_devices_as_on_1(loss):
  batches = [pair_batch(16, seed=s) for s in range(40)]
  finals = []
  for mesh in (sharding.make_mesh(1, 1, devices=jax.devices()[:1]), sharding.make_mesh(4, 2)):
    module, params = reward_model(mesh)
    tx = optim.make_optimizer(name="adam", lr=1e-2, total_steps=len(batches), schedule="constant")
    state, shardings, keys = state_lib.create(params, tx, mesh)
    step = steps.jit_train_step(steps.make_train_step(module, tx, losses.get_loss(loss), total_steps=len(batches),
                                                      trainable=keys, mesh=mesh), shardings, mesh)
    curve = []
    for b in batches:
      state, m = step(state, sharding.global_batch(b, mesh))
      curve.append((float(m["loss"]), float(m["accuracy"])))
    finals.append(np.array(curve))
  single, sharded = finals
  assert single[0, 0] == pytest.approx(np.log(2), rel=1e-5)  # indifferent at the start
  assert single[-10:, 1].mean() > 0.9  # ranks the held-out-like later batches right
  # The same steps on 8 devices (float sums in another order: Adam amplifies the difference later on).
  np.testing.assert_allclose(sharded[:10], single[:10], rtol=1e-3, atol=1e-5)
