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
  row = bench.memory_plan(model="tiny", config=config, batch_size=16, seq_len=32, fsdp=8)
  memory = row["memory_bytes_per_device"]
  full_state_bytes = row["params"] * 4 * 3  # fp32 params + Adam's two moments
  assert row["state_bytes_per_device"] < full_state_bytes / 4  # sharded, not replicated
  assert memory["argument"] < full_state_bytes / 2
  assert memory["peak"] >= memory["argument"] > 0
  assert row["mesh"] == {"data": 1, "fsdp": 8} and row["fits_80GB"]


def test_scanned_layers_let_the_planned_activations_shrink_with_remat():
  """With the blocks scanned, full remat keeps only each block's input: the plan says so."""
  from w2s_jax.models.gpt2 import GPT2Config

  def temp_bytes(remat):
    config = GPT2Config(vocab_size=512, max_positions=256, d_model=64, n_layers=8, n_heads=4, d_ff=256,
                        dtype="float32", remat=remat, scan_layers=True)
    row = bench.memory_plan(model="tiny", config=config, batch_size=16, seq_len=256, fsdp=8)
    return row["memory_bytes_per_device"]["temp"]

  assert temp_bytes("full") < temp_bytes(False) / 2
