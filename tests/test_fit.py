"""Training on data: per-example weights, cached-feature batches, and inference in data order."""

import jax
import numpy as np
import pytest

from tests import tiny_models
from w2s_jax import sharding
from w2s_jax.data import batching, tasks
from w2s_jax.errors import UserError
from w2s_jax.models import checkpoints
from w2s_jax.train import fit, hooks, losses


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  root = tmp_path_factory.mktemp("fit")
  model_dir = tiny_models.save_gpt2(root / "gpt2", n_embd=16, n_layer=1)
  path = tiny_models.sentiment_jsonl(root / "task.jsonl", 120)
  task = tasks.load_task(f"jsonl:{path}")
  data = batching.tokenize(task.train, checkpoints.load_tokenizer(model_dir), 32)
  return model_dir, data


@pytest.fixture(scope="module")
def head_dir(tmp_path_factory):
  return tiny_models.save_gpt2(tmp_path_factory.mktemp("head") / "gpt2", n_embd=4, n_layer=1)


def fresh(model_dir, mesh):
  return checkpoints.load_pretrained(model_dir, mesh, head_init="normal")


def one_device():
  return sharding.make_mesh(1, 1, devices=jax.devices()[:1])


def one_sgd_step(head_dir, features, labels, weights=None):
  """(logged loss, params) of one plain-SGD step of the head on one batch of 4 holding every row."""
  mesh = one_device()
  head = checkpoints.head_only(head_dir, mesh, d_model=4, head_init="normal", seed=1)
  cfg = fit.TrainConfig(batch_size=4, epochs=1.0, lr=0.5, optimizer="sgd", schedule="constant", seed=0)
  logged = []
  params = fit.train_head(head, features, labels, mesh, cfg, weights=weights,
                          hooks=(hooks.MetricLog(lambda step, m: logged.append(m), every=1),))
  return logged[0], jax.device_get(params)


def test_a_row_of_weight_half_counts_half(head_dir):
  rng = np.random.default_rng(0)
  a, b = rng.normal(size=(2, 4)).astype(np.float32)
  labels = np.array([1, 0], np.int32)
  plain, plain_params = one_sgd_step(head_dir, np.stack([a, b]), labels)
  # b twice at weight 1/2 is b once: the same loss, gradient and (SGD) update.
  halves, halves_params = one_sgd_step(head_dir, np.stack([a, b, b]), labels[[0, 1, 1]],
                                       weights=np.array([1.0, 0.5, 0.5]))
  # Weights that sum to less than 1 still give the weighted mean (the step does not clamp the sum to 1).
  small, small_params = one_sgd_step(head_dir, np.stack([a, b]), labels, weights=np.array([0.25, 0.25]))
  head = checkpoints.head_only(head_dir, one_device(), d_model=4, head_init="normal", seed=1)
  logits = fit.logits_from_features(head, head.params, np.stack([a, b]))
  expected = float(np.mean(losses.soft_cross_entropy(logits, np.eye(2, dtype=np.float32)[labels])))
  for logged, params in ((halves, halves_params), (small, small_params)):
    assert logged["loss"] == pytest.approx(plain["loss"], abs=1e-6) == pytest.approx(expected, abs=1e-6)
    assert logged["grad_norm"] == pytest.approx(plain["grad_norm"], rel=1e-5) and plain["grad_norm"] > 0
    for x, y in zip(jax.tree.leaves(params), jax.tree.leaves(plain_params)):
      np.testing.assert_allclose(x, y, atol=1e-6)


@pytest.mark.parametrize("linear_probe", [False, True])
def test_weights_reach_the_step_on_both_paths(setup, linear_probe):
  """Every example at weight 0: nothing to learn from, so plain SGD leaves every parameter as it was."""
  model_dir, data = setup
  mesh = one_device()
  cfg = fit.TrainConfig(batch_size=8, epochs=0.1, lr=0.1, optimizer="sgd", linear_probe=linear_probe, seed=0)
  before = jax.device_get(fresh(model_dir, mesh).params)
  logged = []
  after = fit.train(fresh(model_dir, mesh), data, mesh, cfg, weights=np.zeros(len(data), np.float32),
                    hooks=(hooks.MetricLog(lambda step, m: logged.append(m["loss"]), every=1),))
  assert logged and all(loss == 0.0 for loss in logged)
  for x, y in zip(jax.tree.leaves(jax.device_get(after)), jax.tree.leaves(before)):
    np.testing.assert_array_equal(x, y)
  moved = fit.train(fresh(model_dir, mesh), data, mesh, cfg)
  assert not np.array_equal(jax.device_get(moved)["head"]["kernel"], before["head"]["kernel"])


def test_feature_batches_group_lengths_like_token_batches_when_bucketed():
  n, batch_size = 96, 8
  lengths = np.random.default_rng(1).integers(1, 60, size=n)
  features = np.zeros((n, 2), np.float32)
  labels, targets = np.zeros(n, np.int32), np.full((n, 2), 0.5, np.float32)
  token_rows = [sorted(b) for b in batching.batch_order(lengths, batch_size, shuffle=True, seed=3, epoch=1)]
  feature_rows = [sorted(b["index"][b["index"] >= 0]) for b in fit._feature_batches(
      features, labels, targets, batch_size, seed=3, epoch=1, lengths=lengths, bucket=True)]
  assert [list(r) for r in feature_rows] == [list(r) for r in token_rows]
  unbucketed = [b["index"] for b in fit._feature_batches(features, labels, targets, batch_size, seed=3, epoch=1,
                                                           lengths=lengths, bucket=False)]
  spread = np.mean([np.ptp(lengths[i]) for i in unbucketed])
  assert np.mean([np.ptp(lengths[r]) for r in feature_rows]) < spread / 3  # bucketed batches: similar lengths


def test_feature_batches_carry_each_rows_weight_and_zero_for_padding():
  n = 10
  weights = np.linspace(0.0, 1.0, n).astype(np.float32)  # row 0 weighs 0 but is still a real row
  features, labels, targets = np.zeros((n, 2), np.float32), np.zeros(n, np.int32), np.zeros((n, 2), np.float32)
  out = list(fit._feature_batches(features, labels, targets, 4, seed=0, epoch=0, weights=weights))
  index = np.concatenate([b["index"] for b in out])
  weight = np.concatenate([b["weight"] for b in out])
  assert sorted(index[index >= 0]) == list(range(n)) and weight.dtype == np.float32
  np.testing.assert_array_equal(weight[index >= 0], weights[index[index >= 0]])
  assert np.all(weight[index < 0] == 0) and (index < 0).sum() == 2
  with pytest.raises(UserError, match="weights must lie in"):
    next(fit._feature_batches(features, labels, targets, 4, seed=0, epoch=0, weights=weights * 2))


def test_predict_returns_logits_rows_in_data_order(setup):
  model_dir, data = setup
  mesh = sharding.make_mesh(data=4, fsdp=1)
  model = fresh(model_dir, mesh)
  logits = fit.predict_logits(model, model.params, data, mesh, batch_size=8)
  one_by_one = [np.asarray(model.module.apply(
      {"params": model.params}, ids[None], np.ones((1, len(ids)), np.int32)))[0] for ids in data.ids[:5]]
  np.testing.assert_allclose(logits[:5], np.stack(one_by_one), atol=1e-5)
  np.testing.assert_allclose(fit.softmax(logits).sum(-1), 1.0, atol=1e-6)


def test_softmax_of_confident_logits_keeps_the_margin_that_probabilities_lose():
  # A margin of 20 saturates float32 p(class 1) to exactly 1.0; the logits still rank the rows.
  logits = np.array([[0.0, 20.0], [0.0, 25.0]], np.float32)
  probs = fit.softmax(logits)
  assert probs[0, 1] == probs[1, 1] == np.float32(1.0)
  assert logits[1, 1] - logits[1, 0] > logits[0, 1] - logits[0, 0]


def test_inference_reuses_one_jitted_eval_step_per_model(setup):
  """Checkpoint selection scores a validation set every few steps: it must not compile each time."""
  model_dir, data = setup
  mesh = sharding.make_mesh(data=2, fsdp=1)
  model = fresh(model_dir, mesh)
  first = fit._eval_step(model, model.params, mesh, features_only=False)
  assert fit._eval_step(model, model.params, mesh, features_only=False) is first
  assert fit._eval_step(model, model.params, mesh, features_only=True) is not first
