"""The training loop: resumption from an orbax checkpoint, NaN stops, prediction order."""

import jax
import numpy as np
import pytest

from tests import tiny_models
from w2s_jax import sharding
from w2s_jax.data import batching, tasks
from w2s_jax.errors import UserError
from w2s_jax.models import checkpoints
from w2s_jax.train import loop


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  root = tmp_path_factory.mktemp("loop")
  model_dir = tiny_models.save_gpt2(root / "gpt2", n_embd=16, n_layer=1)
  path = tiny_models.sentiment_jsonl(root / "task.jsonl", 120)
  task = tasks.load_task(f"jsonl:{path}")
  data = batching.tokenize(task.train, checkpoints.load_tokenizer(model_dir), 32)
  return model_dir, data


def fresh(model_dir, mesh):
  return checkpoints.load_pretrained(model_dir, mesh, head_init="normal")


class Interrupt(Exception):
  pass


def test_interrupted_training_resumes_from_checkpoint_to_the_same_params(setup, tmp_path):
  model_dir, data = setup
  mesh = sharding.make_mesh(data=2, fsdp=1)
  cfg = loop.TrainConfig(batch_size=8, epochs=1.0, lr=1e-3, log_every=2, checkpoint_every=3, seed=0)
  straight = loop.train(fresh(model_dir, mesh), data, mesh, cfg)

  def stop_at_step_5(step, metrics):
    if step >= 5:
      raise Interrupt
  with pytest.raises(Interrupt):
    loop.train(fresh(model_dir, mesh), data, mesh, cfg, checkpoint_dir=tmp_path, log=stop_at_step_5)
  assert sorted(p.name for p in tmp_path.iterdir() if p.name.isdigit()) == ["3"]

  seen = []
  resumed = loop.train(fresh(model_dir, mesh), data, mesh, cfg, checkpoint_dir=tmp_path,
                       log=lambda step, m: seen.append(step))
  assert seen[0] > 3  # it started after the saved step, not from 0
  for a, b in zip(jax.tree.leaves(resumed), jax.tree.leaves(straight)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)


def test_nan_loss_stops_with_one_line(setup):
  model_dir, data = setup
  mesh = sharding.make_mesh(data=1, fsdp=1)
  cfg = loop.TrainConfig(batch_size=8, epochs=1.0, lr=1e30, log_every=1, seed=0)
  with pytest.raises(UserError, match="loss became nan") as e:
    loop.train(fresh(model_dir, mesh), data, mesh, cfg)
  assert "\n" not in str(e.value)


def test_predict_returns_logits_rows_in_data_order(setup):
  model_dir, data = setup
  mesh = sharding.make_mesh(data=4, fsdp=1)
  model = fresh(model_dir, mesh)
  logits = loop.predict_logits(model, model.params, data, mesh, batch_size=8)
  one_by_one = [np.asarray(model.module.apply(
      {"params": model.params}, ids[None], np.ones((1, len(ids)), np.int32)))[0] for ids in data.ids[:5]]
  np.testing.assert_allclose(logits[:5], np.stack(one_by_one), atol=1e-5)
  np.testing.assert_allclose(loop.softmax(logits).sum(-1), 1.0, atol=1e-6)


def test_softmax_of_confident_logits_keeps_the_margin_that_probabilities_lose():
  # A margin of 20 saturates float32 p(class 1) to exactly 1.0; the logits still rank the rows.
  logits = np.array([[0.0, 20.0], [0.0, 25.0]], np.float32)
  probs = loop.softmax(logits)
  assert probs[0, 1] == probs[1, 1] == np.float32(1.0)
  assert logits[1, 1] - logits[1, 0] > logits[0, 1] - logits[0, 0]


def test_a_nan_state_is_never_checkpointed(tmp_path):
  """The loss is checked before every save, not only at logging steps."""
  mesh = sharding.make_mesh(data=1, fsdp=1)
  head = checkpoints.head_only(_tiny_dir(tmp_path), mesh, d_model=4, head_init="normal")
  features = np.random.default_rng(0).normal(size=(64, 4)).astype(np.float32)
  labels = (features[:, 0] > 0).astype(np.int32)
  features[40] = np.nan  # the batch holding row 40 makes the loss NaN, and every later state too
  cfg = loop.TrainConfig(batch_size=8, epochs=1.0, lr=1e-2, log_every=1000, checkpoint_every=1, seed=0)
  with pytest.raises(UserError, match="loss became nan at step (\\d+)") as e:
    loop.train_head(head, features, labels, mesh, cfg, checkpoint_dir=tmp_path / "ckpt")
  nan_step = int(__import__("re").search(r"at step (\d+)", str(e.value)).group(1))
  saved = sorted(int(p.name) for p in (tmp_path / "ckpt").iterdir() if p.name.isdigit())
  assert saved and max(saved) < nan_step, (saved, nan_step)


def test_feature_batches_group_lengths_like_token_batches_when_bucketed():
  n, batch_size = 96, 8
  lengths = np.random.default_rng(1).integers(1, 60, size=n)
  features = np.zeros((n, 2), np.float32)
  labels, targets = np.zeros(n, np.int32), np.full((n, 2), 0.5, np.float32)
  token_rows = [sorted(b) for b in batching.batch_order(lengths, batch_size, shuffle=True, seed=3, epoch=1)]
  feature_rows = [sorted(b["index"][b["index"] >= 0]) for b in loop._feature_batches(
      features, labels, targets, batch_size, seed=3, epoch=1, lengths=lengths, bucket=True)]
  assert [list(r) for r in feature_rows] == [list(r) for r in token_rows]
  unbucketed = [b["index"] for b in loop._feature_batches(features, labels, targets, batch_size, seed=3, epoch=1,
                                                            lengths=lengths, bucket=False)]
  spread = np.mean([np.ptp(lengths[i]) for i in unbucketed])
  assert np.mean([np.ptp(lengths[r]) for r in feature_rows]) < spread / 3  # bucketed batches: similar lengths


def _tiny_dir(root):
  return tiny_models.save_gpt2(root / "gpt2", n_embd=4, n_layer=1)


def test_inference_reuses_one_jitted_eval_step_per_model(setup):
  """Checkpoint selection scores a validation set every few steps: it must not compile each time."""
  model_dir, data = setup
  mesh = sharding.make_mesh(data=2, fsdp=1)
  model = fresh(model_dir, mesh)
  first = loop._eval_step(model, model.params, mesh, features_only=False)
  assert loop._eval_step(model, model.params, mesh, features_only=False) is first
  assert loop._eval_step(model, model.params, mesh, features_only=True) is not first
