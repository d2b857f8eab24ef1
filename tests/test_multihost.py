"""A real multi-host run: 2 processes x 4 CPU devices joined by jax.distributed, gloo collectives.

Each worker (tests/multihost_worker.py) feeds only its own rows of every global batch;
the training curve and the predictions must equal those of one process that holds all
8 devices on the same (data=2, fsdp=4) mesh. The `data` axis spans the two processes, so
gradients are all-reduced over loopback TCP, and the global batch is assembled from the
processes' parts with `jax.make_array_from_process_local_data`.

The sweep on two processes shares one workdir (process 0 writes every stage, both read them);
two processes that each get a workdir of their own (hosts with local disks) are refused at
start-up, on both, in one line, before anything trains.
"""

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests import multihost_worker, tiny_models
from w2s_jax import sharding

WORKER = Path(multihost_worker.__file__)
NUM_PROCESSES = 2
TIMEOUT_S = 300
PIPELINE_TIMEOUT_S = 900  # 3 fine-tunes, 5 prediction passes, then 2 feature passes and 3 probes
REFUSAL_TIMEOUT_S = 120
N_EXAMPLES = 96
N_TEST = N_EXAMPLES // 4  # sentiment_jsonl puts the first quarter in the test split
N_STEPS = -(-(N_EXAMPLES - N_TEST) // multihost_worker.BATCH_SIZE)  # one epoch


def free_loopback_port() -> int:
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def start_workers(tmp_path: Path, args: list[str]) -> list[tuple[subprocess.Popen, Path]]:
  """NUM_PROCESSES workers joined on a free loopback port, each logging to tmp_path/worker<i>.log."""
  port = free_loopback_port()
  # The workers choose their own device count and must not inherit a forced one.
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  env |= {"JAX_PLATFORMS": "cpu", "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled"}
  workers = []
  for i in range(NUM_PROCESSES):
    log = tmp_path / f"worker{i}.log"
    with open(log, "w") as f:  # a file, not a pipe: a full pipe would block the worker
      proc = subprocess.Popen(
          [sys.executable, str(WORKER), f"--process_id={i}", f"--num_processes={NUM_PROCESSES}",
           f"--port={port}", *args],
          stdout=f, stderr=subprocess.STDOUT, env=env)
    workers.append((proc, log))
  return workers


def wait_for(workers: list[tuple[subprocess.Popen, Path]], deadline: float, timeout_s: int) -> None:
  """Wait for every worker; on a failure or past the deadline kill them all and fail with their logs."""
  failed = None
  for proc, _ in workers:
    try:
      if proc.wait(timeout=max(deadline - time.monotonic(), 1)) != 0:
        failed = f"a worker exited with {proc.returncode}"
        break
    except subprocess.TimeoutExpired:
      failed = f"the workers did not finish within {timeout_s} s"
      break
  if failed:
    for proc, _ in workers:
      if proc.poll() is None:
        proc.kill()
        proc.wait()
    logs = "\n".join(f"--- worker {i} (last lines) ---\n" + "\n".join(log.read_text().splitlines()[-40:])
                     for i, (_, log) in enumerate(workers))
    pytest.fail(f"{failed}\n{logs}")


def wait_for_all(workers: list[tuple[subprocess.Popen, Path]], timeout_s: int) -> list[int]:
  """Every worker's exit status; past the deadline the workers are killed and the test fails with their logs."""
  deadline = time.monotonic() + timeout_s
  try:
    return [proc.wait(timeout=max(deadline - time.monotonic(), 1)) for proc, _ in workers]
  except subprocess.TimeoutExpired:
    wait_for(workers, deadline, timeout_s)  # kills them and fails with their logs
    raise


def error_lines(log: Path) -> list[str]:
  return [line for line in log.read_text().splitlines() if line.startswith("error:")]


def test_two_processes_train_and_predict_like_one_process_with_all_devices(tmp_path, monkeypatch):
  model_dir = tiny_models.save_gpt2(tmp_path / "gpt2", n_embd=16, n_layer=1)
  task = tiny_models.sentiment_jsonl(tmp_path / "task.jsonl", N_EXAMPLES)
  workers = start_workers(tmp_path, [f"--model_dir={model_dir}", f"--task={task}",
                                     f"--out={tmp_path / 'out.json'}"])
  deadline = time.monotonic() + TIMEOUT_S
  try:
    # The one-process reference runs while the workers start up and compile.
    monkeypatch.setattr(sharding, "MIN_SHARDED_SIZE", multihost_worker.MIN_SHARDED_SIZE)
    single = multihost_worker.fine_tune_and_predict(str(model_dir), str(task))
  finally:
    wait_for(workers, deadline, TIMEOUT_S)

  for i in range(NUM_PROCESSES):
    multi = json.loads((tmp_path / f"out.process{i}.json").read_text())
    assert (multi["process_index"], multi["process_count"], multi["device_count"]) == (i, 2, 8)
    # Each process holds one row of the mesh: the `data` axis (gradient all-reduce) crosses processes.
    assert multi["mesh_processes"] == [[0] * 4, [1] * 4]
    assert multi["sharded_params"] == single["sharded_params"] > 0  # FSDP did split parameters
    for run in ("finetune", "probe"):
      assert multi[f"{run}/steps"] == single[f"{run}/steps"] == list(range(1, N_STEPS + 1))
      np.testing.assert_allclose(multi[f"{run}/loss"], single[f"{run}/loss"], atol=1e-5, err_msg=run)
      np.testing.assert_allclose(multi[f"{run}/probs"], single[f"{run}/probs"], atol=1e-5, err_msg=run)
    # Training moved the model: the comparison is not between two untouched checkpoints.
    assert single["finetune/loss"][-1] < single["finetune/loss"][0]
    assert len(multi["finetune/probs"]) == N_TEST  # the whole test split, on every process


def test_hosts_with_workdirs_of_their_own_are_refused_at_start_up_in_one_line(tmp_path):
  weak = tiny_models.save_gpt2(tmp_path / "weak", n_embd=16, n_layer=1)
  task = tiny_models.sentiment_jsonl(tmp_path / "task.jsonl", N_EXAMPLES)
  workers = start_workers(tmp_path, [f"--model_dir={weak}", f"--strong_dir={weak}", f"--task={task}",
                                     f"--pipeline_workdir={tmp_path / 'host{process_id}'}"])
  assert wait_for_all(workers, REFUSAL_TIMEOUT_S) == [1] * NUM_PROCESSES
  for _, log in workers:  # the same line on both hosts, naming the one that cannot see process 0's files
    [line] = error_lines(log)
    assert f"workdir {tmp_path / 'host'}" in line
    assert "is not shared by the hosts: process 1 of 2 cannot see the file process 0 wrote" in line
    assert "shared filesystem" in line and "gs://" in line
  assert [p.name for p in (tmp_path / "host0").iterdir()] == [".lock"]  # nothing trained, no token left
  assert not (tmp_path / "host1").exists()


def assert_same_sweep(multi_dir: Path, single: dict, single_dir: Path, n_stages: int, *, rerun: bool) -> None:
  """The two-process sweep wrote the one-process results: rows, stages and every stage's arrays. After a
  `rerun` its results.json is the rerun's, which loaded every stage and trained none."""
  multi = json.loads((multi_dir / "results.json").read_text())
  assert single["trained_stages"] == n_stages and multi["trained_stages"] == (0 if rerun else n_stages)
  assert len(multi["runs"]) == len(single["runs"]) == 1
  for key, value in single["runs"][0].items():
    if isinstance(value, float):
      np.testing.assert_allclose(multi["runs"][0][key], value, atol=1e-5, err_msg=key)
    else:
      assert multi["runs"][0][key] == value, key
  # Stage directories are named by the hash of their spec: the same stages, the same outputs.
  stages = sorted(p.name for p in (single_dir / "stages").iterdir())
  assert sorted(p.name for p in (multi_dir / "stages").iterdir()) == stages and len(stages) == n_stages
  for name in stages:
    with np.load(single_dir / "stages" / name / "arrays.npz") as a, \
         np.load(multi_dir / "stages" / name / "arrays.npz") as b:
      assert sorted(a) == sorted(b)
      for key in a:
        np.testing.assert_allclose(b[key], a[key], atol=1e-5, err_msg=f"{name}/{key}")
    assert not (multi_dir / "stages" / name / "checkpoints").exists()  # cleared once the stage finished
  assert not list(multi_dir.glob(".hosts-*"))  # the shared-workdir check cleaned up after itself


@pytest.mark.slow
def test_two_process_pipeline_gives_the_one_process_results(tmp_path, monkeypatch):
  """The whole W2S sweep (orbax stage checkpoints, stage cache, reports) on 2 processes sharing a workdir,
  fine-tuned, then as linear probes (features stages written by process 0, read by both), then the first
  sweep again: process 0 finds every stage finished, and both load them (no host trains alone)."""
  from w2s_jax.protocol import sweep
  weak = tiny_models.save_gpt2(tmp_path / "weak", n_embd=16, n_layer=1)
  strong = tiny_models.save_gpt2(tmp_path / "strong", n_embd=32, n_layer=2, seed=1)
  task = tiny_models.sentiment_jsonl(tmp_path / "task.jsonl", N_EXAMPLES)
  multi_dir, single_dir = tmp_path / "two_processes", tmp_path / "one_process"
  multi_probes, single_probes = tmp_path / "two_processes_probes", tmp_path / "one_process_probes"
  workers = start_workers(tmp_path, [f"--model_dir={weak}", f"--strong_dir={strong}", f"--task={task}",
                                     f"--pipeline_workdir={multi_dir}", f"--probe_workdir={multi_probes}",
                                     "--rerun"])
  deadline = time.monotonic() + PIPELINE_TIMEOUT_S
  try:
    monkeypatch.setattr(sharding, "MIN_SHARDED_SIZE", multihost_worker.MIN_SHARDED_SIZE)
    single = sweep.run(multihost_worker.pipeline_config(str(weak), str(strong), str(task)), single_dir)
    single_probe = sweep.run(multihost_worker.pipeline_config(str(weak), str(strong), str(task), linear_probe=True),
                             single_probes)
  finally:
    wait_for(workers, deadline, PIPELINE_TIMEOUT_S)

  assert_same_sweep(multi_dir, single, single_dir, 3, rerun=True)  # 2 ground truth + 1 student
  assert_same_sweep(multi_probes, single_probe, single_probes, 5, rerun=False)  # and a features stage per model
