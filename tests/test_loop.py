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


def test_predict_returns_rows_in_data_order(setup):
  model_dir, data = setup
  mesh = sharding.make_mesh(data=4, fsdp=1)
  model = fresh(model_dir, mesh)
  probs = loop.predict(model, model.params, data, mesh, batch_size=8)
  one_by_one = [np.asarray(jax.nn.softmax(model.module.apply(
      {"params": model.params}, ids[None], np.ones((1, len(ids)), np.int32)))[0]) for ids in data.ids[:5]]
  np.testing.assert_allclose(probs[:5], np.stack(one_by_one), atol=1e-5)
  np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-5)
