"""One process of the multi-host test: 4 CPU devices, joined to the others with jax.distributed.

Run by tests/test_multihost.py as
  python tests/multihost_worker.py --process_id=I --num_processes=N --port=P \
      --model_dir=D --task=T --out=OUT.json
Every process trains the same tiny model on its own rows of each global batch (gloo
all-reduces the gradients between processes), predicts the test split, and writes its
loss curves and predictions to OUT.json with `.processI` inserted before the suffix.
With --pipeline_workdir=W --strong_dir=S instead of --out, the processes run a whole W2S
sweep (`protocol.sweep.run`) into W (process 0 writes results.json); `{process_id}` in W gives
each process a workdir of its own (hosts with local disks: refused at start-up). A UserError
ends the worker as launch/main.py ends: `error: <its line>` on stderr and exit status 1.

`fine_tune_and_predict` and `pipeline_config` are the experiments themselves; the test runs
them in one process too, so the two runs differ only in how many processes share the mesh.
"""

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LOCAL_DEVICES = 4
MESH = dict(data=2, fsdp=4)
BATCH_SIZE = 16
MAX_LENGTH = 32
# The tiny model's tensors are all smaller than the default threshold; lower it so FSDP
# really shards the embeddings and MLP kernels over the fsdp axis.
MIN_SHARDED_SIZE = 256


def train_config(**overrides):
  from w2s_jax.train import fit
  # length_multiple 16 > the longest example: one sequence length, so one compile per step.
  return fit.TrainConfig(**(dict(batch_size=BATCH_SIZE, epochs=1.0, lr=1e-3, seed=0, length_multiple=16)
                            | overrides))


def fine_tune_and_predict(model_dir: str, task_path: str) -> dict[str, list]:
  """Fine-tune the checkpoint on the task's train split and predict its test split, twice:
  the whole model, then a linear probe on cached features (the other path of `fit.train`).

  Returns {"<run>/steps": [...], "<run>/loss": [...], "<run>/probs": [[p0, p1], ...]} for
  run in (finetune, probe), as plain lists, plus "sharded_params" (how many parameter
  tensors FSDP split) and "mesh_processes" (the process of each mesh device). Every process returns the whole result: metrics and predictions
  are replicated.
  """
  import jax
  import numpy as np
  from w2s_jax import sharding
  from w2s_jax.data import batching, tasks
  from w2s_jax.models import checkpoints
  from w2s_jax.train import fit, hooks

  mesh = sharding.make_mesh(**MESH)
  task = tasks.load_task(f"jsonl:{task_path}")
  tokenizer = checkpoints.load_tokenizer(model_dir)
  train = batching.tokenize(task.train, tokenizer, MAX_LENGTH)
  test = batching.tokenize(task.test, tokenizer, MAX_LENGTH)
  result: dict[str, list] = {}
  for run, overrides in (("finetune", {}), ("probe", dict(linear_probe=True, lr=1e-2))):
    model = checkpoints.load_pretrained(model_dir, mesh, head_init="normal")
    curve: list[tuple[int, float]] = []
    log = hooks.MetricLog(lambda step, metrics: curve.append((step, metrics["loss"])), every=1)
    params = fit.train(model, train, mesh, train_config(**overrides), hooks=(log,))
    probs = fit.softmax(fit.predict_logits(model, params, test, mesh, batch_size=BATCH_SIZE))
    result |= {f"{run}/steps": [s for s, _ in curve], f"{run}/loss": [l for _, l in curve],
               f"{run}/probs": np.asarray(probs, np.float64).tolist()}
  result["sharded_params"] = sum(not x.sharding.is_fully_replicated for x in jax.tree.leaves(params))
  result["mesh_processes"] = [[d.process_index for d in row] for row in mesh.devices]
  return result


def pipeline_config(weak_dir: str, strong_dir: str, task_path: str, *, linear_probe: bool = False):
  """A one-pair, one-loss W2S sweep on the mesh above, small enough for a multi-host test; with
  `linear_probe`, both models are probes on cached features (features stages, head-only fits)."""
  from w2s_jax.config_base import base, finalize, model
  c = base()
  c.train.linear_probe = linear_probe
  c.task = f"jsonl:{task_path}"
  c.n_train, c.n_test, c.max_length = None, None, MAX_LENGTH
  c.models.update(dict(weak=model(weak_dir, 3e-4), strong=model(strong_dir, 3e-3)))
  c.model_order = ("weak", "strong")
  c.methods = ("xent",)
  c.train.batch_size, c.train.epochs, c.train.log_every = BATCH_SIZE, 1.0, 1
  c.train.checkpoint_every = 2  # orbax saves from both processes mid-stage, too
  c.head_init = "normal"
  c.wandb.mode = "disabled"
  c.mesh.data, c.mesh.fsdp = MESH["data"], MESH["fsdp"]
  return finalize(c)


def main(argv: list[str]) -> None:
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("--process_id", type=int, required=True)
  parser.add_argument("--num_processes", type=int, required=True)
  parser.add_argument("--port", type=int, required=True)
  parser.add_argument("--model_dir", required=True)
  parser.add_argument("--task", required=True)
  parser.add_argument("--out", help="fine-tune mode: where the results go (JSON)")
  parser.add_argument("--pipeline_workdir", help="pipeline mode: run a W2S sweep into this workdir")
  parser.add_argument("--strong_dir", help="pipeline mode: the strong model (--model_dir is the weak one)")
  parser.add_argument("--probe_workdir", help="pipeline mode: then the same sweep as linear probes, into this workdir")
  parser.add_argument("--rerun", action="store_true",
                      help="pipeline mode: then rerun the first sweep, which loads every stage it finished")
  args = parser.parse_args(argv)

  sys.path.insert(0, str(REPO))  # run as a script: make `w2s_jax` importable from the checkout
  import jax
  from w2s_jax import sharding
  sharding.MIN_SHARDED_SIZE = MIN_SHARDED_SIZE
  jax.config.update("jax_num_cpu_devices", LOCAL_DEVICES)
  # Cross-process collectives on CPU need an implementation; gloo runs over loopback TCP.
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(coordinator_address=f"127.0.0.1:{args.port}",
                             num_processes=args.num_processes, process_id=args.process_id,
                             coordinator_bind_address=f"127.0.0.1:{args.port}", initialization_timeout=120)
  assert jax.process_count() == args.num_processes and jax.local_device_count() == LOCAL_DEVICES

  status = 0
  if args.pipeline_workdir:
    from w2s_jax.errors import UserError
    from w2s_jax.protocol import sweep
    try:
      sweep.run(pipeline_config(args.model_dir, args.strong_dir, args.task),
                args.pipeline_workdir.format(process_id=args.process_id))
      if args.probe_workdir:
        sweep.run(pipeline_config(args.model_dir, args.strong_dir, args.task, linear_probe=True), args.probe_workdir)
      if args.rerun:
        sweep.run(pipeline_config(args.model_dir, args.strong_dir, args.task),
                  args.pipeline_workdir.format(process_id=args.process_id))
    except UserError as e:
      print(f"error: {e}", file=sys.stderr)
      status = 1
  else:
    result = fine_tune_and_predict(args.model_dir, args.task)
    result |= {"process_index": jax.process_index(), "process_count": jax.process_count(),
               "device_count": jax.device_count()}
    out = Path(args.out)
    out.with_suffix(f".process{args.process_id}{out.suffix}").write_text(json.dumps(result))
  jax.distributed.shutdown()
  sys.exit(status)


if __name__ == "__main__":
  main(sys.argv[1:])
