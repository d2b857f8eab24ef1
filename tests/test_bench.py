"""launch/bench.py: the smallest case runs end to end in both frameworks and reports what it promises.

A smoke test, not a timed one: it checks that each row carries the fields the table and
BENCHMARKS.md are made of, that the two rows describe the same work, and that the numbers
are consistent with each other (never what they are).
"""

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("bench", REPO / "launch" / "bench.py")
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)


def test_tiny_case_runs_in_both_frameworks_with_consistent_rows():
  case = bench.dataclasses.replace(bench.CASES["tiny-fp32"], batch_size=4, seq_len=32, warmup=1, steps=2)
  jax_row, torch_row = bench.run_case(case, bench.synthetic_lengths(), bench.synthetic_source(),
                                      length_buckets=16, length_multiple=1, rounds=1)
  assert (jax_row["name"], jax_row["framework"]) == ("tiny-fp32", "jax")
  assert (torch_row["name"], torch_row["framework"]) == ("tiny-fp32", "pytorch")
  json.dumps([jax_row, torch_row])  # what main() prints must serialise
  # Both frameworks trained on the very same real tokens; only JAX pads.
  assert jax_row["real_tokens"] == torch_row["real_tokens"] > 0
  assert jax_row["padded_slots"] >= jax_row["real_tokens"]
  assert jax_row["batch_shape"][0] == 4 and jax_row["batch_shape"][1] in jax_row["length_boundaries"]
  assert len(jax_row["length_boundaries"]) <= 16
  for row in (jax_row, torch_row):
    assert row["tokens_per_s"] == pytest.approx(row["real_tokens"] / (row["step_s"] * row["steps"]))
    assert 0 < row["mfu"] < 1
    assert math.isfinite(row["final_loss"])
  assert jax_row["model_flops_per_step"] == pytest.approx(torch_row["model_flops_per_step"], rel=1e-6)
  assert jax_row["speedup_vs_pytorch"] == pytest.approx(jax_row["tokens_per_s"] / torch_row["tokens_per_s"])
  # The epoch estimate rescales by padding only: equal waste would leave the rate unchanged.
  slots_ratio = (1 - jax_row["padding_waste_bucketed"]) / (1 - jax_row["padding_waste_timed"])
  assert jax_row["tokens_per_s_epoch_estimate"] == pytest.approx(jax_row["tokens_per_s"] * slots_ratio)
  assert jax_row["compile_s"] > 0 and jax_row["n_shapes"] == 1
  memory = jax_row["memory_bytes"]
  assert memory["argument"] > 0 and memory["peak"] >= memory["argument"]
  assert 0 <= jax_row["padding_waste_bucketed"] < jax_row["padding_waste_unbucketed"] < 1


def test_non_embedding_params_match_the_torch_count():
  """6N counts the same parameters in both frameworks: everything but the two embedding tables."""
  import jax
  from w2s_jax.models import checkpoints
  config = bench.model_config(bench.CASES["tiny-fp32"])
  abstract = checkpoints.abstract_params(checkpoints.build_model(config))
  total = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(abstract))
  embeddings = config.vocab_size * config.d_model + config.max_positions * config.d_model
  assert bench.non_embedding_params(abstract) == total - embeddings


def test_model_flops_follow_the_stated_formula():
  lengths = [np.array([10, 20]), np.array([5])]
  n, layers, d = 1000, 2, 8
  expected = sum(6 * n * l + 12 * layers * d * l * l for l in (10, 20, 5))
  assert bench.model_flops(lengths, n, layers, d) == pytest.approx(expected)


def test_workload_batches_share_the_epochs_most_common_padded_length():
  case = bench.dataclasses.replace(bench.CASES["tiny-fp32"], batch_size=8)
  lengths = bench.synthetic_lengths()
  workload = bench.make_workload(case, lengths, vocab_size=64, warmup=1, steps=3, length_buckets=16,
                                 length_multiple=1)
  host = bench.jax_host_batches(workload)
  assert len(host) == 4 and len({b["input_ids"].shape for b in host}) == 1
  for batch, examples in zip(host, workload.batches):
    assert batch["attention_mask"].sum() == sum(len(ids) for ids, _ in examples)
    np.testing.assert_array_equal(batch["input_ids"][0, :len(examples[0][0])], examples[0][0])
  # Padded to the epoch's boundary, not to the longest example of these few batches.
  assert host[0]["input_ids"].shape[1] in workload.boundaries
  assert 1 < workload.n_shapes_epoch <= 16  # tweets-like lengths fill several of the 16 buckets


def test_full_lengths_have_no_padding():
  case = bench.dataclasses.replace(bench.CASES["tiny-fp32"], lengths="full", seq_len=32, batch_size=4)
  waste = bench.padding_waste(bench.case_lengths(case, bench.synthetic_lengths()), 4, 16, 1)
  # Only the epoch's last, partial batch has (weight-0) padding rows.
  assert waste["padding_waste_bucketed"] == waste["padding_waste_unbucketed"] < 1e-3


def test_command_line_rejects_a_bad_mesh():
  result = subprocess.run([sys.executable, str(REPO / "launch" / "bench.py"), "--case", "tiny-fp32",
                           "--mesh", "2"], capture_output=True, text=True, timeout=60)
  assert result.returncode == 2 and "--mesh" in result.stderr


def test_memory_plan_compiles_an_fsdp_step_without_allocating_it():
  """The plan on 8 fake devices (conftest): the state is split 8 ways, and nothing runs."""
  from w2s_jax.models.gpt2 import GPT2Config
  config = GPT2Config(vocab_size=512, max_positions=64, d_model=64, n_layers=2, n_heads=4, d_ff=256,
                      dtype="bfloat16", remat=True)
  row = bench.memory_plan(model="tiny", config=config, batch_size=16, seq_len=32)
  memory = row["memory_bytes_per_device"]
  full_state_bytes = row["params"] * 4 * 3  # fp32 params + Adam's two moments
  # Sharded, not replicated (GPT-2's norms, biases and 64 x 64 position table stay whole).
  assert row["state_bytes_per_device"] < full_state_bytes / 2
  assert memory["argument"] < full_state_bytes / 2
  assert memory["peak"] >= memory["argument"] > 0
  assert row["mesh"] == {"data": 1, "fsdp": 8} and row["accelerator"] == "8xh100-80gb" and row["fits"]
  assert row["wall_s"] >= row["lower_s"] + row["compile_s"] and row["host_peak_rss_bytes"] > 0


def test_scanned_layers_let_the_planned_activations_shrink_with_remat():
  """With the blocks scanned, full remat keeps only each block's input: the plan says so."""
  from w2s_jax.models.gpt2 import GPT2Config

  def temp_bytes(remat):
    config = GPT2Config(vocab_size=512, max_positions=256, d_model=64, n_layers=8, n_heads=4, d_ff=256,
                        dtype="float32", remat=remat, scan_layers=True)
    row = bench.memory_plan(model="tiny", config=config, batch_size=16, seq_len=256)
    return row["memory_bytes_per_device"]["temp"]

  assert temp_bytes("full") < temp_bytes(False) / 2


def tiny_qwen():
  """A Qwen2-shaped decoder (GQA, q/k/v bias, untied embeddings), scanned with full remat as the
  large plans are. Its matrices have >= 2**14 entries per layer and dims divisible by 8, so FSDP
  splits every one of them; norms, biases and the head stay replicated."""
  from w2s_jax.models.llama import LlamaConfig
  return LlamaConfig(vocab_size=512, d_model=128, n_layers=2, n_heads=8, n_kv_heads=4, head_dim=32,
                     d_ff=256, max_positions=256, qkv_bias=True, dtype="bfloat16", remat="full",
                     scan_layers=True)


def fake_slice(chips, hbm_bytes=80e9):
  return bench.Accelerator(f"test-{chips}", chips, hbm_bytes, "fake CPU devices of the test")


TINY_PLAN = dict(model="tiny-qwen", batch_size=32, seq_len=256)


@pytest.fixture(scope="module")
def tiny_plans():
  """The tiny Qwen2 planned on 2 devices in fp32 and on 8 devices in bf16: one compile each."""
  return {(chips, dtype): bench.memory_plan(config=tiny_qwen(), accelerator=fake_slice(chips),
                                            param_dtype=dtype, **TINY_PLAN)
          for chips, dtype in ((2, "float32"), (8, "bfloat16"))}


def split_and_replicated_params(config):
  """(parameters FSDP splits, parameters it replicates), by the rule of w2s_jax/sharding.py:
  a tensor (one layer's slice, for scanned blocks) of at least MIN_SHARDED_SIZE entries is split."""
  import jax
  from w2s_jax import sharding
  from w2s_jax.models import checkpoints
  split = replicated = 0
  abstract = checkpoints.abstract_params(checkpoints.build_model(config))
  for path, leaf in jax.tree_util.tree_flatten_with_path(abstract)[0]:
    stacked = sharding.STACKED in sharding.path_str(path).split("/")
    per_layer = math.prod(leaf.shape[1:] if stacked else leaf.shape)
    if per_layer >= sharding.MIN_SHARDED_SIZE:
      split += math.prod(leaf.shape)
    else:
      replicated += math.prod(leaf.shape)
  return split, replicated


def test_planned_arguments_are_the_state_split_over_fsdp(tiny_plans):
  """Per-device arguments = (params + Adam's two moments) / fsdp for the split tensors, whole for the
  replicated ones, + the device's rows of the batch: 4x more devices and half the bytes per
  parameter must show as exactly that, or the plan counts the state wrongly."""
  import jax
  import jax.numpy as jnp
  from w2s_jax.train import optim
  split, replicated = split_and_replicated_params(tiny_qwen())
  assert split > 20 * replicated  # the split tensors are what the plan is about
  # int32 step counts, replicated: ours and the optimizer's (Adam's, the schedule's).
  n_counts = 1 + sum(x.ndim == 0 for x in jax.tree.leaves(jax.eval_shape(
      optim.make_optimizer(name="adam", lr=bench.LR, total_steps=bench.TOTAL_STEPS).init,
      {"w": jax.ShapeDtypeStruct((8,), jnp.float32)})))
  b, t = TINY_PLAN["batch_size"], TINY_PLAN["seq_len"]
  batch_bytes = b * (2 * t * 4 + 4 + 2 * 4 + 4)  # input_ids, attention_mask [B, T] int32; labels, targets [B, 2], weight
  for (chips, dtype), row in tiny_plans.items():
    itemsize = {"float32": 4, "bfloat16": 2}[dtype]
    state = 3 * itemsize * (split / chips + replicated) + 4 * n_counts
    assert row["params"] == split + replicated
    assert row["state_bytes_per_device"] == state
    assert row["memory_bytes_per_device"]["argument"] == pytest.approx(state + batch_bytes / chips, rel=1e-3)
    assert row["mesh"] == {"data": 1, "fsdp": chips} and row["fits"]
  arguments = {k: r["memory_bytes_per_device"]["argument"] for k, r in tiny_plans.items()}
  # 4x the devices and half the bytes: ~8x less per device (less, for the replicated tensors).
  assert 6 < arguments[2, "float32"] / arguments[8, "bfloat16"] <= 8


def test_smallest_fitting_plan_adds_microbatches_until_the_step_fits(tiny_plans):
  """Against a budget just under the one-microbatch peak, the search must go on to more
  microbatches (fewer rows live at once) and stop at the first count that fits."""
  whole = tiny_plans[8, "bfloat16"]
  budget = whole["memory_bytes_per_device"]["peak"] - 1
  tried = []
  found = bench.smallest_fitting_plan(tried.append, config=tiny_qwen(), accelerator=fake_slice(8, budget),
                                      param_dtype="bfloat16", **TINY_PLAN)
  assert tried[0]["memory_bytes_per_device"] == whole["memory_bytes_per_device"] and not tried[0]["fits"]
  assert [r["microbatches"] for r in tried] == bench.microbatch_counts(32, 8)[:len(tried)]
  assert all(not r["fits"] for r in tried[:-1])
  assert found is tried[-1] and found["fits"] and found["microbatches"] > 1
  assert found["memory_bytes_per_device"]["peak"] < budget
  assert found["rows_per_device_at_once"] == 32 // 8 // found["microbatches"]


def test_plan_batches_and_microbatches_fit_the_chips():
  assert bench.plan_batch_size(bench.ACCELERATORS["8xh100-80gb"]) == 32  # the paper's batch
  assert bench.plan_batch_size(bench.ACCELERATORS["v5p-128"]) == 64  # one row for each of 64 chips
  assert bench.plan_batch_size(bench.ACCELERATORS["v5p-128"], 128) == 128
  assert bench.microbatch_counts(32, 8) == [1, 2, 4]
  assert bench.microbatch_counts(96, 16) == [1, 2, 3, 6]
  with pytest.raises(bench.UserError, match="multiple of 8"):
    bench.microbatch_counts(20, 8)
  with pytest.raises(bench.UserError, match="choose one of"):
    bench.memory_plan(config=tiny_qwen(), batch_size=16, seq_len=32, microbatches=4)
  with pytest.raises(bench.UserError, match="divisor of 8"):
    bench.memory_plan(config=tiny_qwen(), batch_size=16, seq_len=32, data=3)
  with pytest.raises(bench.UserError, match="needs 64 devices"):
    bench.memory_plan(model="qwen2.5-72b", accelerator=bench.ACCELERATORS["v5p-128"])


def test_large_plans_name_presets_and_slices_that_exist():
  """`--plan-suite large` must not fail on a name after minutes of compiling the ones before it."""
  from w2s_jax import models
  for plan in bench.LARGE_PLANS:
    assert plan.accelerator in bench.ACCELERATORS and plan.param_dtype in ("float32", "bfloat16")
    assert models.preset(plan.model).tie_embeddings is False  # 14B and up: a separate LM head
  chips = {bench.ACCELERATORS[p.accelerator].chips for p in bench.LARGE_PLANS}
  assert chips == {8, 16, 64}


def test_command_line_reports_a_bad_plan_in_one_line():
  result = subprocess.run([sys.executable, str(REPO / "launch" / "bench.py"), "--memory-plan",
                           "--plan-model", "tiny-gpt", "--plan-batch", "8"],
                          capture_output=True, text=True, timeout=60)
  assert result.returncode == 1 and result.stderr.count("\n") == 1
  assert "unknown model preset 'tiny-gpt'" in result.stderr
