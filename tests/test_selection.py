"""Checkpoint selection: the best-scoring parameters are kept, also across an interruption."""

import jax
import numpy as np
import pytest

from tests import tiny_models
from w2s_jax import sharding
from w2s_jax.models import checkpoints
from w2s_jax.train import loop
from w2s_jax.train.selection import BestCheckpoint


@pytest.fixture(scope="module")
def probe(tmp_path_factory):
  mesh = sharding.make_mesh(data=1, fsdp=1)
  directory = tiny_models.save_gpt2(tmp_path_factory.mktemp("sel") / "gpt2", n_embd=4, n_layer=1)
  rng = np.random.default_rng(0)
  features = rng.normal(size=(64, 4)).astype(np.float32)
  labels = (features[:, 0] > 0).astype(np.int32)
  return mesh, directory, features, labels


def head(probe):
  mesh, directory, _, _ = probe
  return checkpoints.head_only(directory, mesh, d_model=4, head_init="normal", seed=1)


def scores_by_step(target_step):
  """A score that peaks at `target_step`: selection must return exactly that step's parameters."""
  seen = {"step": 0}

  def score(params):
    seen["step"] += 1
    return -abs(seen["step"] - target_step)
  return score


def test_the_best_scoring_step_is_returned_not_the_last(probe):
  mesh, _, features, labels = probe
  # A constant learning rate, so that the first 6 steps of a 16-step run are a 6-step run.
  cfg = loop.TrainConfig(batch_size=8, epochs=2.0, lr=0.1, schedule="constant", log_every=100, seed=0)
  final = loop.train_head(head(probe), features, labels, mesh, cfg)
  select = BestCheckpoint(scores_by_step(3), every=2)  # evaluated at steps 2, 4, ...: the 3rd is step 6
  chosen = loop.train_head(head(probe), features, labels, mesh, cfg, select=select)
  assert select.best_step == 6 and [s for s, _ in select.history] == list(range(2, 17, 2))
  six_steps = loop.train_head(head(probe), features, labels, mesh,
                              loop.TrainConfig(**{**cfg.__dict__, "epochs": 0.75}))
  for a, b in zip(jax.tree.leaves(chosen), jax.tree.leaves(six_steps)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)
  assert not all(np.allclose(a, b) for a, b in zip(jax.tree.leaves(chosen), jax.tree.leaves(final)))


def test_selection_survives_an_interruption(probe, tmp_path):
  mesh, _, features, labels = probe
  cfg = loop.TrainConfig(batch_size=8, epochs=2.0, lr=0.1, log_every=1, checkpoint_every=4, seed=0)
  straight_select = BestCheckpoint(scores_by_step(2), every=2)
  straight = loop.train_head(head(probe), features, labels, mesh, cfg, select=straight_select)

  class Stop(Exception):
    pass

  def stop_at_10(step, metrics):
    if step == 10:
      raise Stop
  # The score peaks at the 2nd evaluation (step 4), before the stop at step 10 (checkpoint at 8).
  first = BestCheckpoint(scores_by_step(2), every=2, directory=tmp_path / "selection")
  with pytest.raises(Stop):
    loop.train_head(head(probe), features, labels, mesh, cfg, select=first, checkpoint_dir=tmp_path / "ckpt",
                    log=stop_at_10)
  resumed_select = BestCheckpoint(lambda params: -100.0, every=2, directory=tmp_path / "selection")
  resumed = loop.train_head(head(probe), features, labels, mesh, cfg, select=resumed_select,
                            checkpoint_dir=tmp_path / "ckpt")
  assert resumed_select.best_step == straight_select.best_step == 4
  for a, b in zip(jax.tree.leaves(resumed), jax.tree.leaves(straight)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)
