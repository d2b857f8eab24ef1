"""Checkpoint selection (`hooks.BestCheckpoint`): the best-scoring parameters are kept, also across an interruption."""

import jax
import numpy as np
import pytest

from tests import tiny_models
from w2s_jax import sharding
from w2s_jax.models import checkpoints
from w2s_jax.train import fit
from w2s_jax.train.hooks import BestCheckpoint, Checkpointing, MetricLog


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
  cfg = fit.TrainConfig(batch_size=8, epochs=2.0, lr=0.1, schedule="constant", seed=0)
  final = fit.train_head(head(probe), features, labels, mesh, cfg)
  select = BestCheckpoint(scores_by_step(3), every=2)  # evaluated at steps 2, 4, ...: the 3rd is step 6
  chosen = fit.train_head(head(probe), features, labels, mesh, cfg, hooks=(select,))
  assert select.best_step == 6 and [s for s, _ in select.history] == list(range(2, 17, 2))
  six_steps = fit.train_head(head(probe), features, labels, mesh,
                             fit.TrainConfig(**{**cfg.__dict__, "epochs": 0.75}))
  for a, b in zip(jax.tree.leaves(chosen), jax.tree.leaves(six_steps)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)
  assert not all(np.allclose(a, b) for a, b in zip(jax.tree.leaves(chosen), jax.tree.leaves(final)))


def test_selection_survives_an_interruption(probe, tmp_path):
  mesh, _, features, labels = probe
  cfg = fit.TrainConfig(batch_size=8, epochs=2.0, lr=0.1, seed=0)
  straight_select = BestCheckpoint(scores_by_step(2), every=2)
  straight = fit.train_head(head(probe), features, labels, mesh, cfg, hooks=(straight_select,))

  class Stop(Exception):
    pass

  def stop_at_10(step, metrics):
    if step == 10:
      raise Stop
  # The score peaks at the 2nd evaluation (step 4), before the stop at step 10 (checkpoint at 8).
  first = BestCheckpoint(scores_by_step(2), every=2, directory=tmp_path / "selection")
  with pytest.raises(Stop):
    fit.train_head(head(probe), features, labels, mesh, cfg,
                   hooks=(MetricLog(stop_at_10, every=1), Checkpointing(tmp_path / "ckpt", every=4), first))
  resumed_select = BestCheckpoint(lambda params: -100.0, every=2, directory=tmp_path / "selection")
  resumed = fit.train_head(head(probe), features, labels, mesh, cfg,
                           hooks=(Checkpointing(tmp_path / "ckpt", every=4), resumed_select))
  assert resumed_select.best_step == straight_select.best_step == 4
  for a, b in zip(jax.tree.leaves(resumed), jax.tree.leaves(straight)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)


def test_a_rerun_of_a_finished_run_scores_the_restored_last_step(probe, tmp_path):
  """No step is left to run, yet selection has params to return: the last step is always scored."""
  mesh, _, features, labels = probe
  cfg = fit.TrainConfig(batch_size=8, epochs=1.0, lr=0.1, seed=0)
  last = fit.train_head(head(probe), features, labels, mesh, cfg, hooks=(Checkpointing(tmp_path, every=0),))
  select = BestCheckpoint(lambda params: 1.0, every=3)
  rerun = fit.train_head(head(probe), features, labels, mesh, cfg, hooks=(Checkpointing(tmp_path), select))
  assert select.history == [(8, 1.0)] and select.best_step == 8
  for a, b in zip(jax.tree.leaves(rerun), jax.tree.leaves(last)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
