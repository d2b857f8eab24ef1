"""The weak-to-strong protocol as cached stages.

For each seed:
  1. the task's train set is split (seeded) into half A and half B;
  2. ground truth: every model of the sweep is fine-tuned on half A with ground-truth
     labels → its test metrics (the *weak* number when it supervises, the *strong
     ceiling* when it is a student) and its soft labels on half B;
  3. weak-to-strong: for each (weak, strong) pair and loss, the strong model is
     fine-tuned on half B against the weak model's soft labels → test metrics;
  4. PGR = (w2s − weak) / (strong ceiling − weak), on accuracy and AUROC.
A model's ground-truth run serves both roles (as in the paper code's `train_simple`).
Every stage is cached under a hash of what determines it (`artifacts.py`): a rerun
loads finished stages and resumes an unfinished one from its last checkpoint.
With `linear_probe` and `cache_features`, each model's backbone runs once per
example set (a `features` stage) and every fit trains only the head.
"""

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np

from w2s_jax import report, sharding
from w2s_jax.artifacts import Stage, StageStore
from w2s_jax.data import batching, splits, tasks
from w2s_jax.errors import UserError
from w2s_jax.models import checkpoints, layers
from w2s_jax.tracking import Tracker
from w2s_jax.train import loop, losses as losses_lib, metrics as metrics_lib


@dataclasses.dataclass(frozen=True)
class ModelSpec:
  """One model of the sweep, as the config names it."""
  name: str
  checkpoint: str
  lr: float
  microbatches: int = 1
  pooling: str | None = None
  dtype: str = "float32"
  remat: bool | str = False  # 'none' | 'full' | 'dots_no_batch' | 'dots' (models.layers.REMAT_POLICIES)
  scan_layers: bool = False  # one nn.scan over the blocks: compiles in a fraction of the time

  def fingerprint(self) -> dict[str, Any]:
    return dataclasses.asdict(self)


def model_specs(config: ml_collections.ConfigDict) -> dict[str, ModelSpec]:
  specs = {}
  for name, m in config.models.items():
    known = {f.name for f in dataclasses.fields(ModelSpec)} - {"name"}
    unknown = set(m.keys()) - known
    if unknown:
      raise UserError(f"config.models.{name} has unknown fields {sorted(unknown)}; known: {sorted(known)}")
    if "checkpoint" not in m or "lr" not in m:
      raise UserError(f"config.models.{name} needs a 'checkpoint' (directory or hub id) and an 'lr'")
    spec = ModelSpec(name=name, **{k: m[k] for k in m.keys()})
    try:
      layers.remat_policy_name(spec.remat)  # fail before any stage runs, not when the model loads
    except UserError as e:
      raise UserError(f"config.models.{name}.{e}") from None
    specs[name] = spec
  return specs


def resolve_pairs(config: ml_collections.ConfigDict, names: list[str]) -> list[tuple[str, str]]:
  """'all' (every weak before strong in model order), 'all+self', or 'weak:strong,weak:strong'."""
  if config.pairs in ("all", "all+self"):
    offset = 0 if config.pairs == "all+self" else 1
    return [(w, s) for i, w in enumerate(names) for s in names[i + offset:]]
  pairs = []
  for item in str(config.pairs).split(","):
    weak, sep, strong = item.strip().partition(":")
    if not sep or weak not in names or strong not in names:
      raise UserError(f"pairs entry {item.strip()!r} is not 'weak:strong' with both in config.models "
                      f"({names}); or use pairs='all'")
    pairs.append((weak, strong))
  return pairs


def train_config(config: ml_collections.ConfigDict, model: ModelSpec, loss: str, seed: int) -> loop.TrainConfig:
  t = config.train
  loss_kwargs = tuple(sorted(config.loss_options.get(loss, {}).items())) if "loss_options" in config else ()
  return loop.TrainConfig(
      batch_size=t.batch_size, microbatches=model.microbatches, epochs=t.epochs, lr=model.lr,
      optimizer=t.optimizer, schedule=t.schedule, warmup_steps=t.warmup_steps, weight_decay=t.weight_decay,
      clip_norm=t.clip_norm, loss=loss, loss_kwargs=loss_kwargs, linear_probe=t.linear_probe,
      cache_features=t.cache_features, bucket=t.bucket, length_buckets=t.length_buckets,
      length_multiple=t.length_multiple, log_every=t.log_every,
      checkpoint_every=t.checkpoint_every, seed=seed)


def _task_fingerprint(task: str) -> str:
  """Users' files enter the cache key by content, so an edited file is never served stale results."""
  if task.startswith(("jsonl:", "csv:")):
    import hashlib
    path = Path(task.split(":", 1)[1]).expanduser()
    if path.exists():
      return hashlib.sha256(path.read_bytes()).hexdigest()[:16]
  return task


class Experiment:
  """One sweep: models × pairs × losses × seeds on one task, in one workdir."""

  def __init__(self, config: ml_collections.ConfigDict, workdir: str | Path, *, force: bool = False):
    self.config = config
    self.workdir = Path(workdir)
    self.force = force
    self.models = model_specs(config)
    if not self.models:
      raise UserError("config.models is empty; name at least a weak and a strong model")
    self.names = list(config.model_order)
    unknown = [n for n in self.names if n not in self.models]
    if not self.names or unknown or len(set(self.names)) != len(self.names):
      raise UserError(f"config.model_order {tuple(self.names)} must list each model of config.models "
                      f"{sorted(self.models)} once, weakest first")
    self.pairs = resolve_pairs(config, self.names)
    self.chains = [c.split(">") for c in config.chains]
    for chain in self.chains:
      if len(chain) < 3 or any(n not in self.models for n in chain):
        raise UserError(f"chain {'>'.join(chain)!r} must name 3 or more models of config.models, "
                        "weakest first, e.g. 'gpt2>gpt2_medium>gpt2_large'")
    for loss in config.losses:
      losses_lib.get_loss(loss, **dict(config.loss_options.get(loss, {})))  # unknown loss: fail now
    self.mesh = sharding.make_mesh(config.mesh.data, config.mesh.fsdp)
    self.store = StageStore(self.workdir)
    self.tracker = Tracker(self.workdir, config.to_dict(), mode=config.wandb.mode, project=config.wandb.project,
                           entity=config.wandb.entity, group=config.wandb.group)
    self._tokenizers: dict[str, Any] = {}
    self._features: dict[str, dict[str, np.ndarray]] = {}  # features stages already loaded in this run
    self.trained_stages = 0  # how many stages this process actually trained (0 on a cached rerun)

  # --- data -----------------------------------------------------------------------------------
  def data_spec(self, seed: int) -> dict[str, Any]:
    c = self.config
    data_seed = seed if c.data_seed is None else c.data_seed
    return {"task": c.task, "task_fingerprint": _task_fingerprint(c.task), "n_train": c.n_train,
            "n_test": c.n_test, "balance": c.balance, "max_length": c.max_length, "data_seed": data_seed}

  def load_data(self, seed: int) -> tuple[tasks.TaskData, list[tasks.Example], list[tasks.Example]]:
    spec = self.data_spec(seed)
    task = tasks.load_task(self.config.task, n_train=self.config.n_train, n_test=self.config.n_test,
                           seed=spec["data_seed"], balance=self.config.balance)
    half_a, half_b = splits.split_halves(task.train, seed)
    return task, half_a, half_b

  def tokenizer(self, model: ModelSpec):
    if model.name not in self._tokenizers:
      tok = checkpoints.load_tokenizer(model.checkpoint)
      hf = checkpoints.read_hf_config(checkpoints.resolve_checkpoint(model.checkpoint))
      vocab = hf.get("vocab_size")
      if vocab is not None and len(tok) > vocab:
        raise UserError(f"the tokenizer of {model.name} has {len(tok)} tokens but the model's vocabulary has "
                        f"{vocab}: they do not belong together; use the checkpoint's own tokenizer")
      self._tokenizers[model.name] = tok
    return self._tokenizers[model.name]

  def tokenize(self, model: ModelSpec, examples: list[tasks.Example]) -> batching.TokenizedSet:
    return batching.tokenize(examples, self.tokenizer(model), self.config.max_length)

  def load(self, model: ModelSpec, **kwargs: Any) -> checkpoints.LoadedModel:
    """`model`'s checkpoint on the mesh with its runtime settings (dtype, remat, scan_layers, pooling)."""
    return checkpoints.load_pretrained(model.checkpoint, self.mesh, dtype=model.dtype, remat=model.remat,
                                       scan_layers=model.scan_layers, pooling=model.pooling, **kwargs)

  # --- stages ---------------------------------------------------------------------------------
  def features(self, model: ModelSpec, seed: int, task: tasks.TaskData) -> dict[str, np.ndarray]:
    """Pooled features of every train and test example (the frozen backbone runs once per model)."""
    # Only what changes the features: not the learning rate or the gradient accumulation.
    spec = {"model": {k: model.fingerprint()[k] for k in ("checkpoint", "pooling", "dtype")},
            "data": self.data_spec(seed)}
    stage = self.store.stage("features", spec)
    if stage.key in self._features:
      return self._features[stage.key]
    cached = self._load_or_clear(stage)
    if cached is not None:
      self._features[stage.key] = cached[1]
      return cached[1]
    loaded = self.load(model)
    pad_id = self.tokenizer(model).pad_token_id
    # One pass over train and test together: one jitted function, one compile per length bucket.
    data = self.tokenize(model, [*task.train, *task.test])
    feats = loop.features(loaded, loaded.params, data, self.mesh, batch_size=self.config.train.batch_size,
                          pad_id=pad_id, desc=f"features {model.name}")
    n = len(task.train)
    arrays = {"train_features": feats[:n], "train_uids": data.uids[:n],
              "test_features": feats[n:], "test_uids": data.uids[n:]}
    stage.save({"model": model.name, "n_train": len(task.train), "n_test": len(task.test)}, arrays)
    self.trained_stages += 1
    self._features[stage.key] = arrays
    return arrays

  def fit(self, stage: Stage, name: str, model: ModelSpec, cfg: loop.TrainConfig, seed: int,
          task: tasks.TaskData, train_examples: list[tasks.Example], targets: np.ndarray,
          predict_on: dict[str, list[tasks.Example]]) -> dict[str, np.ndarray]:
    """Train `model` on examples against soft targets; class probabilities on each `predict_on` set."""
    with self.tracker.stage(name, stage.spec) as log:
      labels = np.array([e.label for e in train_examples], np.int32)
      if cfg.linear_probe and cfg.cache_features:
        feats = self.features(model, seed, task)
        lookup = {("train", int(u)): i for i, u in enumerate(feats["train_uids"])}
        lookup |= {("test", int(u)): i for i, u in enumerate(feats["test_uids"])}

        def rows(examples, split):
          return feats[f"{split}_features"][[lookup[(split, e.uid)] for e in examples]]

        head = checkpoints.head_only(model.checkpoint, self.mesh, pooling=model.pooling, seed=seed,
                                     head_init=self.config.head_init, d_model=feats["train_features"].shape[-1])
        params = loop.train_head(head, rows(train_examples, "train"), labels, self.mesh, cfg, targets=targets,
                                 checkpoint_dir=stage.checkpoint_dir, log=log, desc=name)
        return {k: loop.predict_from_features(head, params, rows(ex, "test" if k == "test" else "train"))
                for k, ex in predict_on.items()}
      loaded = self.load(model, seed=seed, head_init=self.config.head_init)
      pad_id = self.tokenizer(model).pad_token_id
      data = self.tokenize(model, train_examples)
      params = loop.train(loaded, data, self.mesh, cfg, targets=targets, pad_id=pad_id,
                          checkpoint_dir=stage.checkpoint_dir, log=log, desc=name)
      return {k: loop.predict(loaded, params, self.tokenize(model, ex), self.mesh,
                              batch_size=self.config.train.batch_size, pad_id=pad_id, desc=f"{name}: {k}")
              for k, ex in predict_on.items()}

  def _load_or_clear(self, stage: Stage) -> tuple[dict, dict] | None:
    if stage.done():
      if not self.force:
        return stage.load()
      stage.clear()
    return None

  def ground_truth(self, name: str, seed: int, task, half_a, half_b) -> tuple[Stage, dict, dict]:
    """Model `name` fine-tuned on half A ground truth: its test metrics and soft labels on half B."""
    model = self.models[name]
    cfg = train_config(self.config, model, "xent", seed)
    spec = {"data": self.data_spec(seed), "seed": seed, "model": model.fingerprint(),
            "train": dataclasses.asdict(cfg), "trained_on": "half_a_ground_truth"}
    stage = self.store.stage("ground_truth", spec)
    cached = self._load_or_clear(stage)
    if cached is not None:
      return stage, *cached
    targets = np.eye(2, dtype=np.float32)[[e.label for e in half_a]]
    probs = self.fit(stage, f"ground_truth:{name}:seed{seed}", model, cfg, seed, task, half_a, targets,
                     {"test": task.test, "half_b": half_b})
    result = {"model": name, "seed": seed, **self.test_metrics(probs["test"], task.test)}
    stage.save(result, {"test_probs": probs["test"], "half_b_probs": probs["half_b"],
                        "test_uids": np.array([e.uid for e in task.test]),
                        "half_b_uids": np.array([e.uid for e in half_b])},
               keep_checkpoints=self.config.train.keep_checkpoints)
    self.trained_stages += 1
    return stage, result, {"test_probs": probs["test"], "half_b_probs": probs["half_b"]}

  def weak_to_strong(self, weak: str, strong: str, loss: str, seed: int, task, half_b,
                     weak_stage: Stage, weak_arrays: dict) -> tuple[Stage, dict[str, Any], dict[str, np.ndarray]]:
    """`strong` fine-tuned on half B against the supervisor's soft labels -> test metrics.

    The supervisor (`weak_stage`) is a ground-truth stage, or, in a bootstrapping chain, the
    previous student's stage. The student also labels half B: the next model of a chain
    trains on those labels (the paper's bootstrapping).
    """
    model = self.models[strong]
    cfg = train_config(self.config, model, loss, seed)
    spec = {"weak_stage": weak_stage.key, "seed": seed, "model": model.fingerprint(),
            "train": dataclasses.asdict(cfg), "hard_labels": self.config.hard_labels,
            "trained_on": "half_b_weak_labels"}
    stage = self.store.stage("weak_to_strong", spec)
    cached = self._load_or_clear(stage)
    if cached is not None:
      return stage, *cached
    targets = weak_arrays["half_b_probs"].astype(np.float32)
    if self.config.hard_labels:
      targets = np.eye(2, dtype=np.float32)[targets.argmax(-1)]
    probs = self.fit(stage, f"weak_to_strong:{weak}->{strong}:{loss}:seed{seed}", model, cfg, seed, task,
                     half_b, targets, {"test": task.test, "half_b": half_b})
    weak_test = weak_arrays["test_probs"]
    result = {"weak": weak, "strong": strong, "loss": loss, "seed": seed,
              **self.test_metrics(probs["test"], task.test),
              # student-supervisor agreement on the test set (the paper's measure of imitation)
              "agreement": float((probs["test"].argmax(-1) == weak_test.argmax(-1)).mean())}
    arrays = {f"{k}_probs": v for k, v in probs.items()}
    stage.save(result, arrays, keep_checkpoints=self.config.train.keep_checkpoints)
    self.trained_stages += 1
    return stage, result, arrays

  def chain(self, names: list[str], loss: str, seed: int, task, half_b,
            gt: dict[str, tuple]) -> dict[str, Any]:
    """Bootstrapping M1 -> M2 -> ... -> Mk: each student labels half B for the next one.

    PGR of the last model is measured against M1 (weak) and Mk's ground-truth ceiling.
    """
    supervisor_stage, _, supervisor_arrays = gt[names[0]]
    steps = []
    for weak, strong in zip(names, names[1:]):
      supervisor_stage, result, supervisor_arrays = self.weak_to_strong(
          weak, strong, loss, seed, task, half_b, supervisor_stage, supervisor_arrays)
      steps.append({"student": strong, "acc": result["acc"], "auroc": result["auroc"]})
    weak_result, strong_result = gt[names[0]][1], gt[names[-1]][1]
    direct = self.weak_to_strong(names[0], names[-1], loss, seed, task, half_b, *gt[names[0]][::2])[1]
    return {"chain": ">".join(names), "loss": loss, "seed": seed, "steps": steps,
            "weak_acc": weak_result["acc"], "strong_acc": strong_result["acc"], "w2s_acc": result["acc"],
            "direct_w2s_acc": direct["acc"],
            "pgr": report.pgr(weak_result["acc"], result["acc"], strong_result["acc"]),
            "direct_pgr": report.pgr(weak_result["acc"], direct["acc"], strong_result["acc"])}

  @staticmethod
  def test_metrics(probs: np.ndarray, examples: list[tasks.Example]) -> dict[str, float]:
    labels = np.array([e.label for e in examples], np.int32)
    weight = np.ones(len(labels), np.float32)
    return {"acc": float(metrics_lib.accuracy(probs, labels, weight)),
            "auroc": float(metrics_lib.roc_auc(probs[:, 1], labels, weight)), "n_test": int(len(labels))}

  # --- the sweep ------------------------------------------------------------------------------
  def run(self) -> dict[str, Any]:
    start = time.time()
    if jax.process_index() == 0:
      self.workdir.mkdir(parents=True, exist_ok=True)
      (self.workdir / "config.json").write_text(json.dumps(self.config.to_dict(), indent=1, default=str))
    runs = []
    needed = [n for n in self.names if any(n in pair for pair in self.pairs) or
              any(n in chain for chain in self.chains)]
    chains = []
    for seed in self.config.seeds:
      task, half_a, half_b = self.load_data(seed)
      gt = {name: self.ground_truth(name, seed, task, half_a, half_b) for name in needed}
      for weak, strong in self.pairs:
        weak_stage, weak_result, weak_arrays = gt[weak]
        strong_result = gt[strong][1]
        for loss in self.config.losses:
          w2s = self.weak_to_strong(weak, strong, loss, seed, task, half_b, weak_stage, weak_arrays)[1]
          runs.append({
              "weak": weak, "strong": strong, "loss": loss, "seed": seed,
              "weak_acc": weak_result["acc"], "strong_acc": strong_result["acc"], "w2s_acc": w2s["acc"],
              "pgr": report.pgr(weak_result["acc"], w2s["acc"], strong_result["acc"]),
              "weak_auroc": weak_result["auroc"], "strong_auroc": strong_result["auroc"],
              "w2s_auroc": w2s["auroc"],
              "pgr_auroc": report.pgr(weak_result["auroc"], w2s["auroc"], strong_result["auroc"]),
              "agreement": w2s["agreement"], "n_test": w2s["n_test"],
          })
          self.tracker.summary(f"weak_to_strong:{weak}->{strong}:{loss}:seed{seed}", runs[-1])
      for names in self.chains:
        for loss in self.config.losses:
          chains.append(self.chain(names, loss, seed, task, half_b, gt))
    results = {"task": self.config.task, "model_order": self.names, "runs": runs,
               "summary": report.summarize(runs),
               "chains": chains, "chain_summary": report.summarize_chains(chains), "wall_s": time.time() - start,
               "trained_stages": self.trained_stages, "workdir": str(self.workdir)}
    if jax.process_index() == 0:
      report.write(results, self.workdir)
    self.tracker.close()
    return results


def run(config: ml_collections.ConfigDict, workdir: str | Path, *, force: bool = False) -> dict[str, Any]:
  return Experiment(config, workdir, force=force).run()
