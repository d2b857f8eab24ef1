"""LoRA: only adapters and head train, the model at init is the pretrained one, a fit has the form of full
fine-tuning's with checkpoints that hold no backbone, a resumed fit is bit-identical, scanned layers and
sharded kernels get adapters of their own layout, and bad settings are one-line errors."""

import dataclasses

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from tests import tiny_models
from w2s_jax import config_base, config_check, sharding
from w2s_jax.data import batching, tasks
from w2s_jax.errors import UserError
from w2s_jax.models import checkpoints
from w2s_jax.train import fit, hooks, lora
from w2s_jax.train.state import TrainState

LORA = lora.LoraConfig(rank=4, alpha=8.0)
CFG = fit.TrainConfig(batch_size=8, epochs=2.0, lr=1e-2, schedule="constant", lora=LORA,
                      length_buckets=1)  # one padded length: one compile per fit


def one_device():
  return sharding.make_mesh(1, 1, devices=jax.devices()[:1])


def host(tree):
  return jax.tree.map(np.asarray, jax.device_get(tree))


def flat(tree):
  return {sharding.path_str(p): leaf for p, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


class LastState(hooks.Hook):
  """Keeps a host copy of the train state's params at the end (the step donates its state)."""

  def on_end(self, step, state):
    self.params = host(state.params)


class StopAfter(hooks.Hook):
  """Raises after step `step` (put after Checkpointing, which has saved that step by then): a killed run."""

  def __init__(self, step):
    self.step = step

  def after_step(self, step, state, metrics, last):
    if step == self.step:
      raise RuntimeError("killed")


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
  root = tmp_path_factory.mktemp("lora")
  model_dir = tiny_models.save_gpt2(root / "gpt2", n_embd=16, n_layer=1)
  task = tasks.load_task(f"jsonl:{tiny_models.sentiment_jsonl(root / 'task.jsonl', 64)}")
  data = batching.tokenize(task.train, checkpoints.load_tokenizer(model_dir), 32)
  return root, model_dir, data


def trained(assets, cfg, name, extra_hooks=()):
  """(model, initial host params, returned host params, logged metrics, last state's params, checkpoint dir)."""
  root, model_dir, data = assets
  mesh = one_device()
  model = checkpoints.load_pretrained(model_dir, mesh, head_init="normal", seed=3)
  before = host(model.params)
  logged, last = [], LastState()
  directory = root / f"checkpoints_{name}"
  params = fit.train(model, data, mesh, cfg, hooks=[hooks.Checkpointing(directory), last,
                                                     hooks.MetricLog(lambda s, m: logged.append(m), every=1),
                                                     *extra_hooks])
  return model, before, host(params), logged, last.params, directory


@pytest.fixture(scope="module")
def lora_fit(assets):
  return trained(assets, CFG, "lora")


def test_only_adapters_and_head_train_and_the_loss_goes_down(lora_fit):
  model, before, params, logged, state_params, _ = lora_fit
  losses = [m["loss"] for m in logged]
  assert np.mean(losses[-3:]) < 0.8 * np.mean(losses[:3]), losses
  # The state held the head, the adapters and their scale: no backbone, so no backbone gradient or moment.
  assert set(state_params) == {"head", lora.ADAPTERS, lora.SCALE}
  assert float(state_params[lora.SCALE]) == LORA.alpha / LORA.rank
  assert not np.array_equal(state_params["head"]["kernel"], before["head"]["kernel"])
  # The pretrained backbone is bit-identical after training (an argument of the step, never donated)…
  for name, value in flat(host(model.params["backbone"])).items():
    np.testing.assert_array_equal(value, flat(before["backbone"])[name], err_msg=name)
  # …and what training returns differs from it exactly at the targeted kernels, by scale · A·B.
  adapters = flat(state_params[lora.ADAPTERS])
  targeted = {name for name in flat(before["backbone"]) if f"{name}/a" in adapters}
  assert targeted == {f"block_0/{k}/kernel" for k in ("attn/q", "attn/k", "attn/v", "attn/out", "fc", "proj")}
  for name, value in flat(params["backbone"]).items():
    base = flat(before["backbone"])[name]
    if name in targeted:
      assert np.abs(value - base).max() > 1e-4, name
      a, b = adapters[f"{name}/a"], adapters[f"{name}/b"]
      delta = (a.reshape(-1, LORA.rank) @ b.reshape(LORA.rank, -1)).reshape(base.shape)
      np.testing.assert_allclose(value, base + LORA.alpha / LORA.rank * delta, atol=1e-6, err_msg=name)
    else:
      np.testing.assert_array_equal(value, base, err_msg=name)


def test_at_init_the_adapted_model_is_the_pretrained_one(assets):
  _, model_dir, data = assets
  mesh = one_device()
  model = checkpoints.load_pretrained(model_dir, mesh, head_init="normal")
  train_params, backbone = lora.adapt(model.params, LORA, 0, mesh)
  assert backbone is model.params["backbone"] and "backbone" not in train_params
  adapters = flat(host(train_params[lora.ADAPTERS]))
  assert all(np.all(v == 0) for k, v in adapters.items() if k.endswith("/b"))  # B = 0 …
  assert all(np.abs(v).max() > 0 for k, v in adapters.items() if k.endswith("/a"))  # … A random
  full = fit.predict_logits(model, model.params, data, mesh, batch_size=8)
  adapted = fit.predict_logits(model, train_params, data, mesh, batch_size=8)
  np.testing.assert_array_equal(adapted, full)


def test_checkpoint_selection_scores_and_keeps_lora_params(assets, tmp_path):
  """A selection hook sees the state's params (adapters, no backbone): it scores them through predict_logits,
  which merges them, and saves and reloads the adapters' tree."""
  _, model_dir, data = assets
  mesh = one_device()
  model = checkpoints.load_pretrained(model_dir, mesh, head_init="normal")
  train_params, _ = lora.adapt(model.params, LORA, 0, mesh)
  train_params[lora.ADAPTERS]["block_0"]["fc"]["kernel"]["b"] += 0.5  # not the pretrained model any more
  score = lambda params: float(fit.predict_logits(model, params, data, mesh, batch_size=8)[:, 1].sum())
  select = hooks.BestCheckpoint(score, every=1, directory=tmp_path / "selection")
  select.observe(1, train_params, last=True)
  merged = lora.full_params(model.params, train_params)
  assert select.best_score == score(merged) != score(model.params)
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), train_params)
  state = TrainState(np.int32(1), train_params, None)
  resumed = hooks.BestCheckpoint(score, every=1, directory=tmp_path / "selection")
  resumed.on_start(state, TrainState(None, abstract, None))
  for name, value in flat(host(resumed.best_params)).items():
    np.testing.assert_array_equal(value, flat(host(train_params))[name], err_msg=name)


def test_scanned_layers_get_adapters_with_the_layer_dim(tmp_path):
  """Same checkpoint and adapter values, blocks unrolled or scanned: the same merged kernels and logits."""
  model_dir = tiny_models.save_gpt2(tmp_path / "gpt2", n_embd=8, n_layer=2)
  mesh = one_device()
  loop = checkpoints.load_pretrained(model_dir, mesh, head_init="normal")
  scan = checkpoints.load_pretrained(model_dir, mesh, head_init="normal", scan_layers=True)
  cfg = lora.LoraConfig(rank=2, alpha=4.0, targets=r"/attn/(q|out)/kernel$")
  loop_params, _ = lora.adapt(loop.params, cfg, 0, mesh)
  scan_params, _ = lora.adapt(scan.params, cfg, 1, mesh)
  rng = np.random.default_rng(0)
  blocks = {}  # nonzero B everywhere, the same values in both layouts
  for name in ("q", "out"):
    per_layer = [{k: rng.normal(size=v.shape).astype(np.float32)
                  for k, v in loop_params[lora.ADAPTERS][f"block_{i}"]["attn"][name]["kernel"].items()} for i in range(2)]
    for i in range(2):
      loop_params[lora.ADAPTERS][f"block_{i}"]["attn"][name]["kernel"] = per_layer[i]
    blocks[name] = {"kernel": {k: np.stack([per_layer[i][k] for i in range(2)]) for k in ("a", "b")}}
  stacked = scan_params[lora.ADAPTERS]["blocks"][sharding.STACKED]["attn"]
  assert stacked["q"]["kernel"]["a"].shape == (2, 8, 2) and stacked["q"]["kernel"]["b"].shape == (2, 2, 2, 4)
  assert stacked["out"]["kernel"]["a"].shape == (2, 2, 4, 2) and stacked["out"]["kernel"]["b"].shape == (2, 2, 8)
  scan_params[lora.ADAPTERS]["blocks"][sharding.STACKED]["attn"] = blocks
  scan_params["head"] = loop_params["head"]
  loop_merged = flat(host(lora.full_params(loop.params, loop_params)["backbone"]))
  scan_merged = flat(host(lora.full_params(scan.params, scan_params)["backbone"]))
  for name in ("q", "out"):
    np.testing.assert_allclose(scan_merged[f"blocks/stacked/attn/{name}/kernel"],
                               np.stack([loop_merged[f"block_{i}/attn/{name}/kernel"] for i in range(2)]), atol=1e-6)
  ids = np.array([[5, 6, 7, 8, 9, 3]], np.int32)
  mask = np.ones_like(ids)
  logits = [m.module.apply({"params": lora.full_params(m.params, p)}, ids, mask)
            for m, p in ((loop, loop_params), (scan, scan_params))]
  np.testing.assert_allclose(logits[1], logits[0], atol=1e-5)
  assert np.abs(np.asarray(logits[0]) - np.asarray(loop.module.apply({"params": loop.params}, ids, mask))).max() > 1e-3


def test_adapters_are_sharded_like_their_kernels_and_the_merge_keeps_the_layout(assets, monkeypatch):
  monkeypatch.setattr(sharding, "MIN_SHARDED_SIZE", 0)  # really shard the tiny kernels
  _, model_dir, _ = assets
  mesh = sharding.make_mesh(data=2, fsdp=4)
  model = checkpoints.load_pretrained(model_dir, mesh, head_init="normal")
  train_params, _ = lora.adapt(model.params, LORA, 0, mesh)
  kernels, adapters = flat(model.params["backbone"]), flat(train_params[lora.ADAPTERS])
  q = kernels["block_0/attn/q/kernel"].sharding.spec  # [D, N, H], FSDP on D
  assert q == jax.sharding.PartitionSpec("fsdp", None, None)
  assert adapters["block_0/attn/q/kernel/a"].sharding.spec == jax.sharding.PartitionSpec("fsdp", None)
  assert adapters["block_0/attn/q/kernel/b"].sharding.spec == jax.sharding.PartitionSpec(None, None, None)
  out = kernels["block_0/attn/out/kernel"].sharding.spec  # [N, H, D], FSDP on D
  assert out == jax.sharding.PartitionSpec(None, None, "fsdp")
  assert adapters["block_0/attn/out/kernel/b"].sharding.spec == jax.sharding.PartitionSpec(None, "fsdp")
  merged = lora.full_params(model.params, train_params)
  for name, value in flat(merged["backbone"]).items():
    assert value.sharding == kernels[name].sharding, name


def test_a_lora_fit_has_the_form_of_full_fine_tuning_with_checkpoints_of_adapters_only(assets, lora_fit):
  _, _, params, logged, _, lora_dir = lora_fit
  _, _, full_params, full_logged, _, full_dir = trained(assets, dataclasses.replace(CFG, lora=lora.LoraConfig()), "full")
  shapes = lambda tree: jax.tree.map(lambda x: (x.shape, x.dtype), tree)
  assert shapes(params) == shapes(full_params)  # same keys, shapes and dtypes
  assert len(logged) == len(full_logged) and set(logged[0]) == set(full_logged[0])

  def saved(directory):
    with ocp.StandardCheckpointer() as checkpointer:
      (step,) = [p for p in directory.iterdir() if p.name.isdigit()]  # the last save only
      state = checkpointer.restore(step / "default")
    return flat(state), lora.count(state)

  lora_saved, (lora_n, lora_bytes) = saved(lora_dir)
  full_saved, (full_n, full_bytes) = saved(full_dir)
  assert not any("backbone" in name for name in lora_saved)
  assert any(name.startswith("params/backbone/") for name in full_saved)
  # This 16-wide model's kernels are barely larger than rank-4 adapters; the backbone's embeddings,
  # norms and biases are what the LoRA checkpoint leaves out (docs/lora.md: Qwen2.5-0.5B's numbers).
  assert lora_n < 0.5 * full_n and lora_bytes < 0.5 * full_bytes, (lora_n, full_n)


def test_a_resumed_lora_fit_is_bit_identical(assets, lora_fit):
  _, _, params, _, _, _ = lora_fit
  root, model_dir, data = assets
  mesh = one_device()
  directory = root / "checkpoints_resumed"
  with pytest.raises(RuntimeError, match="killed"):
    model = checkpoints.load_pretrained(model_dir, mesh, head_init="normal", seed=3)
    fit.train(model, data, mesh, CFG, hooks=[hooks.Checkpointing(directory, every=5), StopAfter(5)])
  model = checkpoints.load_pretrained(model_dir, mesh, head_init="normal", seed=3)  # the backbone reloaded
  resumed = host(fit.train(model, data, mesh, CFG, hooks=[hooks.Checkpointing(directory, every=5)]))
  for name, value in flat(resumed).items():
    np.testing.assert_array_equal(value, flat(params)[name], err_msg=name)


@pytest.mark.parametrize("cfg, match", [
    (dataclasses.replace(CFG, lora=lora.LoraConfig(rank=-1)), r"lora.rank=-1 must be an int >= 0"),
    (dataclasses.replace(CFG, lora=lora.LoraConfig(rank=4, alpha=0.0)), r"lora.alpha=0.0 must be a positive"),
    (dataclasses.replace(CFG, lora=lora.LoraConfig(rank=4, targets="(")), r"is not a valid regex"),
    (dataclasses.replace(CFG, lora=lora.LoraConfig(rank=4, targets="mlp/nothing")),
     r"matches no kernel of the backbone; its kernels' paths look like \['backbone/block_0"),
    (dataclasses.replace(CFG, linear_probe=True, cache_features=False), r"set one of them off"),
    (dataclasses.replace(CFG, linear_probe=True), r"a head on cached features has none"),
])
def test_bad_lora_settings_are_one_line_errors(assets, cfg, match):
  _, model_dir, data = assets
  mesh = one_device()
  model = checkpoints.load_pretrained(model_dir, mesh, head_init="normal")
  with pytest.raises(UserError, match=match) as error:
    fit.train(model, data, mesh, cfg)
  assert "\n" not in str(error.value)


def test_config_fields_per_model_override_and_range_checks():
  c = config_base.base()
  c.models = {"weak": config_base.model("w", 1e-4), "strong": config_base.model("s", 1e-5, lora_rank=8)}
  c = config_base.finalize(c)
  config_check.check(c)
  assert c.lora.rank == 0 and c.models.weak.lora_rank is None
  weak = lora.settings(c.lora, rank=c.models.weak.lora_rank, alpha=c.models.weak.lora_alpha,
                       targets=c.models.weak.lora_targets)
  strong = lora.settings(c.lora, rank=c.models.strong.lora_rank, alpha=c.models.strong.lora_alpha,
                         targets=c.models.strong.lora_targets)
  assert not weak.enabled and strong == lora.LoraConfig(rank=8, alpha=8.0, targets=lora.DEFAULT_TARGETS)
  c.models.weak.lora_alpha = 32.0  # a typed None: settable from the command line
  for field, value, match in [("lora.rank", -2, r"config.lora.rank=-2 must be an int >= 0"),
                              ("lora.targets", "[", r"config.lora.targets='\[' must be a regex"),
                              ("models.weak.lora_rank", -1, r"config.models.weak.lora_rank=-1 must be")]:
    bad = c.copy_and_resolve_references()
    node, key = bad, field.split(".")
    for part in key[:-1]:
      node = node[part]
    node[key[-1]] = value
    with pytest.raises(UserError, match=match):
      config_check.check(bad)
