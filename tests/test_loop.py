"""The training loop and its hooks: the hook contract, resumption from an orbax checkpoint, NaN stops."""

import ast
import re
import signal
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests import tiny_models
from w2s_jax import preemption, sharding
from w2s_jax.data import batching, tasks
from w2s_jax.errors import UserError
from w2s_jax.models import checkpoints
from w2s_jax.train import fit, hooks, loop
from w2s_jax.train.state import TrainState

REPO = Path(__file__).resolve().parents[1]


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


# ---------------------------------------------------------------------------------------------
# The contract, on a step that adds its batch to one parameter.

def one_device():
  return sharding.make_mesh(1, 1, devices=jax.devices()[:1])


@jax.jit
def add_batch(state, batch):
  total = batch["x"].sum()
  return TrainState(state.step + 1, {"w": state.params["w"] + total}, state.opt_state), {"loss": total}


def counting_state(step: int = 0, w: float = 0.0) -> TrainState:
  return TrainState(jnp.asarray(step, jnp.int32), {"w": jnp.asarray(w, jnp.float32)}, ())


def epoch_batches(epoch: int):
  """Epoch e holds batches 10e, 10e + 1, 10e + 2: the loss of a step says which batch it ran."""
  for i in range(3):
    yield {"x": np.array([10.0 * epoch + i], np.float32)}


class Recorder(hooks.Hook):
  def __init__(self, name, calls, *, sync_every=0, resume_at=None, final=None):
    self.name, self.calls, self.sync_every, self.resume_at, self.final = name, calls, sync_every, resume_at, final

  def on_start(self, state, abstract_state):
    self.calls.append((self.name, "start", abstract_state.params["w"].shape))
    return counting_state(self.resume_at, w=100.0) if self.resume_at is not None else state

  def needs_metrics(self, step, last):
    return bool(self.sync_every and step % self.sync_every == 0)

  def after_step(self, step, state, metrics, last):
    self.calls.append((self.name, "after", step, [float(m["loss"]) for m in metrics], last))

  def on_end(self, step, state):
    self.calls.append((self.name, "end", step))

  def on_stop(self, step, state):
    self.calls.append((self.name, "stop", step))

  def final_params(self, params):
    self.calls.append((self.name, "final"))
    return params if self.final is None else self.final(params)


def test_hooks_are_called_in_order_and_metrics_come_only_when_a_hook_asks():
  calls = []
  first = Recorder("a", calls, sync_every=2, final=lambda p: {"w": p["w"] + 1})
  second = Recorder("b", calls, final=lambda p: {"w": p["w"] * 2})
  params = loop.run(add_batch, counting_state(), epoch_batches, 5, one_device(), hooks=(first, second))
  assert calls[:2] == [("a", "start", ()), ("b", "start", ())]
  after = [c for c in calls if c[1] == "after"]
  # Steps 1…5 ran batches 0, 1, 2 of epoch 0, then 10, 11 of epoch 1. Metrics reach the host at
  # step 2 and 4 (hook a) and at the last step (the NaN stop), each time all of them since the last.
  assert [c[0] for c in after] == ["a", "b"] * 5
  assert [c[2:] for c in after[::2]] == [(1, [], False), (2, [0.0, 1.0], False), (3, [], False),
                                          (4, [2.0, 10.0], False), (5, [11.0], True)]
  assert after[1::2] == [("b",) + c[1:] for c in after[::2]]  # every hook sees the same fetch
  assert calls[-4:] == [("a", "end", 5), ("b", "end", 5), ("a", "final"), ("b", "final")]
  # The last step's params, through each hook's final_params in turn.
  assert float(params["w"]) == (0 + 1 + 2 + 10 + 11 + 1) * 2


def test_a_hook_that_restores_a_state_resumes_there_skipping_the_batches_it_saw():
  calls = []
  params = loop.run(add_batch, counting_state(), epoch_batches, 5, one_device(),
                    hooks=(Recorder("r", calls, sync_every=1, resume_at=3),))
  assert [c[2:4] for c in calls if c[1] == "after"] == [(4, [10.0]), (5, [11.0])]
  assert float(params["w"]) == 100.0 + 10 + 11


def test_a_run_with_no_step_left_still_ends_and_returns_the_restored_params():
  calls = []
  params = loop.run(add_batch, counting_state(), epoch_batches, 5, one_device(),
                    hooks=(Recorder("r", calls, resume_at=5),))
  assert [c[1] for c in calls] == ["start", "end", "final"] and float(params["w"]) == 100.0


def test_a_signal_stop_fetches_the_metrics_then_calls_on_stop_instead_of_on_end():
  class SignalAfterStep2(hooks.Hook):
    def after_step(self, step, state, metrics, last):
      if step == 2:
        signal.raise_signal(signal.SIGTERM)
  calls = []
  with preemption.installed():
    with pytest.raises(preemption.Stopped, match=r"^stopped by SIGTERM at step 3 of 'train': every finished stage "
                       r"is kept \(nothing of this one was saved\)"):
      loop.run(add_batch, counting_state(), epoch_batches, 5, one_device(),
               hooks=(SignalAfterStep2(), Recorder("r", calls)))
  # The step under way when the signal came (3) ends the run; its metrics and those before it are fetched.
  assert calls[-2:] == [("r", "after", 3, [0.0, 1.0, 2.0], False), ("r", "stop", 3)]


def test_metric_log_means_every_n_steps_and_at_the_last():
  logged = []
  loop.run(add_batch, counting_state(), epoch_batches, 5, one_device(),
           hooks=(hooks.MetricLog(lambda step, m: logged.append((step, m["loss"])), every=2),))
  assert logged == [(2, 0.5), (4, 6.0), (5, 11.0)]


def test_the_nan_stop_reports_the_first_non_finite_step_at_the_next_fetch():
  def batches_with_nan(epoch):
    for i in range(6):
      yield {"x": np.array([np.nan if i == 2 else 1.0], np.float32)}
  logged = []
  with pytest.raises(UserError, match=r"^demo: the loss became nan at step 3; lower the learning rate") as e:
    loop.run(add_batch, counting_state(), batches_with_nan, 6, one_device(), desc="demo",
             hooks=(hooks.MetricLog(lambda step, m: logged.append(step), every=4),))
  assert "\n" not in str(e.value)
  assert logged == []  # the stop came at step 4's fetch, before the log


def test_the_loop_knows_no_data_nor_model():
  """loop.py and hooks.py take batches and a step; they import nothing that knows data or heads."""
  for name in ("loop.py", "hooks.py"):
    tree = ast.parse((REPO / "w2s_jax" / "train" / name).read_text())
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    imported |= {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    assert not {m for m in imported if m.startswith(("w2s_jax.data", "w2s_jax.models", "w2s_jax.train.fit"))}, \
        (name, imported)


# ---------------------------------------------------------------------------------------------
# The standard hooks on real training.

def test_interrupted_training_resumes_from_checkpoint_to_the_same_params(setup, tmp_path):
  model_dir, data = setup
  mesh = sharding.make_mesh(data=2, fsdp=1)
  cfg = fit.TrainConfig(batch_size=8, epochs=1.0, lr=1e-3, seed=0)
  straight = fit.train(fresh(model_dir, mesh), data, mesh, cfg)

  def stop_at_step_5(step, metrics):
    if step >= 5:
      raise Interrupt
  with pytest.raises(Interrupt):  # at step 6, the first log after step 5, before it is saved
    fit.train(fresh(model_dir, mesh), data, mesh, cfg,
              hooks=(hooks.MetricLog(stop_at_step_5, every=2), hooks.Checkpointing(tmp_path, every=3)))
  assert sorted(p.name for p in tmp_path.iterdir() if p.name.isdigit()) == ["3"]

  seen = []
  resumed = fit.train(fresh(model_dir, mesh), data, mesh, cfg,
                      hooks=(hooks.MetricLog(lambda step, m: seen.append(step), every=2),
                             hooks.Checkpointing(tmp_path, every=3)))
  assert seen[0] > 3  # it started after the saved step, not from 0
  for a, b in zip(jax.tree.leaves(resumed), jax.tree.leaves(straight)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)


def test_nan_loss_stops_with_one_line_without_any_hook(setup):
  model_dir, data = setup
  mesh = sharding.make_mesh(data=1, fsdp=1)
  cfg = fit.TrainConfig(batch_size=8, epochs=1.0, lr=1e30, seed=0)
  with pytest.raises(UserError, match="loss became nan") as e:
    fit.train(fresh(model_dir, mesh), data, mesh, cfg)
  assert "\n" not in str(e.value)


def test_a_nan_state_is_never_checkpointed_and_earlier_saves_stay(tmp_path):
  """The loss is checked before every save, not only at logging steps."""
  mesh = sharding.make_mesh(data=1, fsdp=1)
  head = checkpoints.head_only(tiny_models.save_gpt2(tmp_path / "gpt2", n_embd=4, n_layer=1), mesh, d_model=4,
                               head_init="normal")
  features = np.random.default_rng(0).normal(size=(64, 4)).astype(np.float32)
  labels = (features[:, 0] > 0).astype(np.int32)
  features[40] = np.nan  # the batch holding row 40 makes the loss NaN, and every later state too
  cfg = fit.TrainConfig(batch_size=8, epochs=1.0, lr=1e-2, seed=0)
  with pytest.raises(UserError, match=r"loss became nan at step (\d+)") as e:
    fit.train_head(head, features, labels, mesh, cfg,
                   hooks=(hooks.MetricLog(lambda step, m: None, every=1000),
                          hooks.Checkpointing(tmp_path / "ckpt", every=1)))
  nan_step = int(re.search(r"at step (\d+)", str(e.value)).group(1))
  saved = sorted(int(p.name) for p in (tmp_path / "ckpt").iterdir() if p.name.isdigit())
  assert saved == [nan_step - 1], (saved, nan_step)  # the last finite state is kept (max_to_keep=1)
