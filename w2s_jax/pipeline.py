"""The weak-to-strong protocol as cached stages.

For each seed:
  1. the task's train set is split (seeded) into half A and half B;
  2. ground truth: every model of the sweep is fine-tuned on half A with ground-truth
     labels → its test metrics (the *weak* number when it supervises, the *strong
     ceiling* when it is a student) and its logits on half B (the weak labels are their
     softmax);
  3. weak-to-strong: for each (weak, strong) pair and loss, the strong model is
     fine-tuned on half B against the weak model's soft labels → test metrics;
  4. PGR = (w2s − weak) / (strong ceiling − weak), on accuracy and AUROC (undefined
     where the ceiling is not clearly above the weak model: `report.pgr`).
A model's ground-truth run serves both roles (as in the paper code's `train_simple`).
Every stage is cached under a hash of what determines it (`artifacts.py`; which config
fields enter which key: `stage_keys.py`): a rerun loads finished stages and resumes an
unfinished one from its last checkpoint. Per-example arrays are stored with the examples'
uids and joined by uid, never by position. With `linear_probe` and `cache_features`, each
model's backbone runs once per example set (a `features` stage) and every fit trains only
the head.
"""

import dataclasses
import hashlib
import json
import time
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np

from w2s_jax import diagnostics, report, seeds as seeds_lib, sharding, stage_keys
from w2s_jax.artifacts import Stage, StageStore
from w2s_jax.data import batching, splits, tasks
from w2s_jax.errors import UserError
from w2s_jax.models import checkpoints, layers
from w2s_jax.stage_keys import StageConfig
from w2s_jax.student_data import student_data
from w2s_jax.tracking import Tracker
from w2s_jax.train import loop, losses as losses_lib, metrics as metrics_lib
from w2s_jax.train import selection as selection_lib
from w2s_jax.train.selection import BestCheckpoint


@dataclasses.dataclass(frozen=True)
class ModelSpec:
  """One model of the sweep, as the config names it (config_base.model gives every field)."""
  name: str
  checkpoint: str
  lr: float
  microbatches: int = 1
  pooling: str | None = None
  dtype: str = "float32"
  remat: bool | str = "none"  # 'none' | 'full' | 'dots_no_batch' | 'dots' (models.layers.REMAT_POLICIES)
  scan_layers: bool = False  # one nn.scan over the blocks: compiles in a fraction of the time

  @classmethod
  def from_view(cls, name: str, view: StageConfig) -> "ModelSpec":
    return cls(name=name, **view.under("model"))


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


def train_config(view: StageConfig, runtime: ml_collections.ConfigDict, model: ModelSpec, loss: str,
                 seed: int) -> loop.TrainConfig:
  """The loop's settings from a stage's keyed fields; only logging and checkpoint intervals come
  from `runtime` (config.train), which cannot change the result."""
  return loop.TrainConfig(
      batch_size=view["train.batch_size"], microbatches=model.microbatches, epochs=view["train.epochs"],
      lr=model.lr, optimizer=view["train.optimizer"], schedule=view["train.schedule"],
      warmup_steps=view["train.warmup_steps"], weight_decay=view["train.weight_decay"],
      clip_norm=view["train.clip_norm"], loss=loss, loss_kwargs=tuple(sorted(view.under("loss_options").items())),
      linear_probe=view["train.linear_probe"], cache_features=view["train.cache_features"],
      bucket=view["train.bucket"], length_buckets=view["train.length_buckets"],
      length_multiple=view["train.length_multiple"], log_every=runtime.log_every,
      checkpoint_every=runtime.checkpoint_every, seed=seeds_lib.derive(seed, "batch_order"))


def _task_fingerprint(task: str) -> str:
  """Users' files enter the cache key by content, so an edited file is never served stale results."""
  if task.startswith(("jsonl:", "csv:")):
    path = Path(task.split(":", 1)[1]).expanduser()
    if path.exists():
      return hashlib.sha256(path.read_bytes()).hexdigest()[:16]
  return task


WEIGHT_SUFFIXES = (".safetensors", ".bin", ".onnx", ".gguf", ".json")
_SAMPLE = 1 << 16


def checkpoint_fingerprint(checkpoint: str) -> str:
  """A local checkpoint directory enters the key by content: a model retrained into the same
  directory must not be served the old model's results.

  Hashes every JSON file whole, and each weight file's size with 64 KiB read at its start,
  middle and end (a few reads, not gigabytes; a retrained model changes every region).
  Hub ids and `offline:` names are versioned by their source and enter as they are.
  """
  directory = Path(checkpoint).expanduser()
  if not directory.is_dir():
    return checkpoint
  digest = hashlib.sha256()
  for path in sorted(p for p in directory.iterdir() if p.is_file() and p.name.endswith(WEIGHT_SUFFIXES)):
    size = path.stat().st_size
    digest.update(f"{path.name}:{size}".encode())
    with open(path, "rb") as f:
      if path.suffix == ".json" or size <= 3 * _SAMPLE:
        digest.update(f.read())
        continue
      for offset in (0, size // 2, size - _SAMPLE):
        f.seek(offset)
        digest.update(f.read(_SAMPLE))
  return digest.hexdigest()[:16]


def check_join(uids: np.ndarray, examples: list[tasks.Example], stage: Stage, what: str) -> None:
  """Per-example arrays are joined by uid: a stage whose rows are not `examples` is one clear error."""
  expected = np.array([e.uid for e in examples], np.int64)
  if uids.shape != expected.shape or not np.array_equal(uids.astype(np.int64), expected):
    raise UserError(f"stage {stage.directory.name}: its {what} rows are for other examples than this run's "
                    f"({len(uids)} rows, {len(expected)} expected, first differing uid at row "
                    f"{int(np.argmax(uids[:len(expected)] != expected[:len(uids)])) if len(uids) else 0}); "
                    f"delete {stage.directory} or rerun with --force")


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
    if config.selection.method not in selection_lib.METHODS:
      raise UserError(f"config.selection.method={config.selection.method!r} is not one of "
                      f"{tuple(selection_lib.METHODS)}")
    if config.selection.method != "final" and config.selection.eval_every <= 0:
      raise UserError(f"config.selection.eval_every={config.selection.eval_every} must be a positive step count")
    if not config.report.min_gap_examples >= 0:
      raise UserError(f"config.report.min_gap_examples={config.report.min_gap_examples} must be >= 0 "
                      "(test examples by which the ceiling must beat the weak model for PGR to be defined)")
    self.mesh = sharding.make_mesh(config.mesh.data, config.mesh.fsdp)
    self.store = StageStore(self.workdir)
    self.tracker = Tracker(self.workdir, config.to_dict(), mode=config.wandb.mode, project=config.wandb.project,
                           entity=config.wandb.entity, group=config.wandb.group)
    self._tokenizers: dict[str, Any] = {}
    self._fingerprints: dict[str, str] = {}  # "task" and each model's name -> content hash
    self._features: dict[str, dict[str, np.ndarray]] = {}  # features stages already loaded in this run
    self.trained_stages = 0  # how many stages this process actually trained (0 on a cached rerun)

  # --- data -----------------------------------------------------------------------------------
  def subsample_seed(self, seed: int) -> int:
    data_seed = self.config.data_seed
    return seeds_lib.derive(seed if data_seed is None else data_seed, "subsample")

  def load_data(self, seed: int) -> tuple[tasks.TaskData, list[tasks.Example], list[tasks.Example]]:
    c = self.config
    task = tasks.load_task(c.task, n_train=c.n_train, n_test=c.n_test, seed=self.subsample_seed(seed),
                           balance=c.balance)
    half_a, half_b = splits.split_halves(task.train, seeds_lib.derive(seed, "split"))
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

  def load(self, model: ModelSpec, **kwargs: Any) -> checkpoints.LoadedModel:
    """`model`'s checkpoint on the mesh with its runtime settings (dtype, remat, scan_layers, pooling)."""
    return checkpoints.load_pretrained(model.checkpoint, self.mesh, dtype=model.dtype, remat=model.remat,
                                       scan_layers=model.scan_layers, pooling=model.pooling, **kwargs)

  # --- stages ---------------------------------------------------------------------------------
  def stage(self, kind: str, *, model: str, loss: str | None = None, **extra: Any) -> tuple[Stage, StageConfig]:
    """The stage of `kind` for `model` (and `loss`), and the view of the config fields in its key."""
    values = stage_keys.config_values(self.config, kind, model=model, loss=loss)
    # Content hashes are taken once per run: a large data file is read once, not once per stage.
    if "task" not in self._fingerprints:
      self._fingerprints["task"] = _task_fingerprint(self.config.task)
    if model not in self._fingerprints:
      self._fingerprints[model] = checkpoint_fingerprint(self.models[model].checkpoint)
    spec = {"version": stage_keys.VERSIONS[kind], "config": values, "model_name": model,
            "task_fingerprint": self._fingerprints["task"], "checkpoint_fingerprint": self._fingerprints[model],
            **extra}
    if loss is not None:
      spec["loss"] = loss
    return self.store.stage(kind, spec), StageConfig(kind, values)

  def features(self, model: ModelSpec, seed: int, task: tasks.TaskData) -> dict[str, np.ndarray]:
    """Pooled features of every train and test example (the frozen backbone runs once per model)."""
    stage, view = self.stage("features", model=model.name, subsample_seed=self.subsample_seed(seed))
    if stage.key in self._features:
      return self._features[stage.key]
    cached = self._load_or_clear(stage)
    if cached is not None:
      arrays = cached[1]
    else:
      loaded = self.load(model)
      pad_id = self.tokenizer(model).pad_token_id
      # One pass over train and test together: one jitted function, one compile per length bucket.
      data = batching.tokenize([*task.train, *task.test], self.tokenizer(model), view["max_length"])
      feats = loop.features(loaded, loaded.params, data, self.mesh, batch_size=view["train.batch_size"],
                            pad_id=pad_id, length_buckets=view["train.length_buckets"],
                            length_multiple=view["train.length_multiple"], desc=f"features {model.name}")
      n = len(task.train)
      arrays = {"train_features": feats[:n], "train_uids": data.uids[:n], "train_lengths": data.lengths[:n],
                "test_features": feats[n:], "test_uids": data.uids[n:], "test_lengths": data.lengths[n:]}
      stage.save({"model": model.name, "n_train": len(task.train), "n_test": len(task.test)}, arrays)
      self.trained_stages += 1
    check_join(arrays["train_uids"], task.train, stage, "train features")
    check_join(arrays["test_uids"], task.test, stage, "test features")
    self._features[stage.key] = arrays
    return arrays

  def fit(self, stage: Stage, view: StageConfig, name: str, model: ModelSpec, cfg: loop.TrainConfig,
          seed: int, task: tasks.TaskData, train_examples: list[tasks.Example], targets: np.ndarray,
          predict_on: dict[str, list[tasks.Example]],
          validation: tuple[list[tasks.Example], np.ndarray, int] | None = None,
          ) -> tuple[dict[str, np.ndarray], BestCheckpoint | None]:
    """Train `model` on examples against soft targets; class logits on each `predict_on` set.

    With `validation` = (examples of the train split, their labels to score against, every N
    steps), the parameters with the best validation AUROC are kept instead of the last ones;
    the selector (its best step and history) is returned beside the logits.
    """
    head_seed = seeds_lib.derive(seed, "head_init", stage.kind, model.name)

    def selector(val_logits):
      """A BestCheckpoint scoring val_logits(params) [n_val, 2] by AUROC against the validation labels."""
      if validation is None:
        return None
      _, labels, every = validation
      weight = np.ones(len(labels), np.float32)

      def score(params):
        logits = val_logits(params)
        return float(metrics_lib.roc_auc(logits[:, 1] - logits[:, 0], labels, weight))
      return BestCheckpoint(score, every, stage.selection_dir)

    with self.tracker.stage(name, stage.spec) as log:
      labels = np.array([e.label for e in train_examples], np.int32)
      if cfg.linear_probe and cfg.cache_features:
        feats = self.features(model, seed, task)
        lookup = {("train", int(u)): i for i, u in enumerate(feats["train_uids"])}
        lookup |= {("test", int(u)): i for i, u in enumerate(feats["test_uids"])}

        def rows(examples, split, what="features"):
          return feats[f"{split}_{what}"][[lookup[(split, e.uid)] for e in examples]]

        head = checkpoints.head_only(model.checkpoint, self.mesh, pooling=model.pooling, seed=head_seed,
                                     head_init=view["head_init"], d_model=feats["train_features"].shape[-1])
        # The validation rows are gathered once, not at every evaluation.
        val_features = rows(validation[0], "train") if validation is not None else None
        select = selector(lambda params: loop.logits_from_features(head, params, val_features))
        params = loop.train_head(head, rows(train_examples, "train"), labels, self.mesh, cfg, targets=targets,
                                 lengths=rows(train_examples, "train", "lengths"),
                                 checkpoint_dir=stage.checkpoint_dir, log=log, select=select, desc=name)
        return {k: loop.logits_from_features(head, params, rows(ex, "test" if k == "test" else "train"))
                for k, ex in predict_on.items()}, select
      loaded = self.load(model, seed=head_seed, head_init=view["head_init"])
      pad_id = self.tokenizer(model).pad_token_id

      def tokenize(examples):
        return batching.tokenize(examples, self.tokenizer(model), view["max_length"])

      def predict(params, data, desc):
        return loop.predict_logits(loaded, params, data, self.mesh, batch_size=cfg.batch_size, pad_id=pad_id,
                                   length_buckets=cfg.length_buckets, length_multiple=cfg.length_multiple, desc=desc)

      # The validation set is scored every eval_every steps: tokenized once.
      val_data = tokenize(validation[0]) if validation is not None else None
      select = selector(lambda params: predict(params, val_data, f"{name}: validation"))
      params = loop.train(loaded, tokenize(train_examples), self.mesh, cfg, targets=targets, pad_id=pad_id,
                          checkpoint_dir=stage.checkpoint_dir, log=log, select=select, desc=name)
      return {k: predict(params, tokenize(ex), f"{name}: {k}") for k, ex in predict_on.items()}, select

  def _load_or_clear(self, stage: Stage) -> tuple[dict, dict] | None:
    if stage.done():
      if not self.force:
        return stage.load()
      stage.clear()
    return None

  def _save_predictions(self, stage: Stage, result: dict[str, Any], logits: dict[str, np.ndarray],
                        examples: dict[str, list[tasks.Example]]) -> dict[str, np.ndarray]:
    """Logits of each example set with the examples' uids (joined by uid when read back)."""
    arrays = {}
    for k, v in logits.items():
      arrays[f"{k}_logits"] = v.astype(np.float32)
      arrays[f"{k}_uids"] = np.array([e.uid for e in examples[k]], np.int64)
    stage.save(result, arrays, keep_checkpoints=self.config.train.keep_checkpoints)
    self.trained_stages += 1
    return arrays

  def ground_truth(self, name: str, seed: int, task, half_a, half_b) -> tuple[Stage, dict, dict]:
    """Model `name` fine-tuned on half A ground truth: its test metrics and logits on half B."""
    stage, view = self.stage("ground_truth", model=name, seed=seed, trained_on="half_a_ground_truth")
    model = ModelSpec.from_view(name, view)
    cached = self._load_or_clear(stage)
    if cached is not None:
      result, arrays = cached
    else:
      cfg = train_config(view, self.config.train, model, "xent", seed)
      targets = np.eye(2, dtype=np.float32)[[e.label for e in half_a]]
      predict_on = {"test": task.test, "half_b": half_b}
      logits, _ = self.fit(stage, view, f"ground_truth:{name}:seed{seed}", model, cfg, seed, task, half_a,
                           targets, predict_on)
      result = {"model": name, "seed": seed, **self.test_metrics(logits["test"], task.test)}
      arrays = self._save_predictions(stage, result, logits, predict_on)
    check_join(arrays["test_uids"], task.test, stage, "test")
    check_join(arrays["half_b_uids"], half_b, stage, "half B")
    return stage, result, arrays

  def weak_to_strong(self, weak: str, strong: str, loss: str, seed: int, task, half_b,
                     weak_stage: Stage, weak_arrays: dict) -> tuple[Stage, dict[str, Any], dict[str, np.ndarray]]:
    """`strong` fine-tuned on half B against the supervisor's soft labels -> test metrics.

    The supervisor (`weak_stage`) is a ground-truth stage, or, in a bootstrapping chain, the
    previous student's stage. The student also labels half B: the next model of a chain
    trains on those labels (the paper's bootstrapping).
    """
    stage, view = self.stage("weak_to_strong", model=strong, loss=loss, seed=seed, weak_stage=weak_stage.key,
                             trained_on="half_b_weak_labels")
    model = ModelSpec.from_view(strong, view)
    check_join(weak_arrays["half_b_uids"], half_b, weak_stage, "half B weak labels")
    check_join(weak_arrays["test_uids"], task.test, weak_stage, "test")
    cached = self._load_or_clear(stage)
    if cached is not None:
      result, arrays = cached
    else:
      cfg = train_config(view, self.config.train, model, loss, seed)
      data = student_data(view, half_b, loop.softmax(weak_arrays["half_b_logits"]), seed)
      predict_on = {"test": task.test, "half_b": half_b}
      logits, select = self.fit(stage, view, f"weak_to_strong:{weak}->{strong}:{loss}:seed{seed}", model, cfg,
                                seed, task, data.examples, data.targets, predict_on, data.validation)
      test_labels = np.array([e.label for e in task.test], np.int32)
      row = {e.uid: i for i, e in enumerate(half_b)}
      result = {"weak": weak, "strong": strong, "loss": loss, "seed": seed,
                **self.test_metrics(logits["test"], task.test),
                # imitation of the supervisor on the test set, and misfit to the labels trained on
                **diagnostics.imitation(logits["test"], weak_arrays["test_logits"], test_labels),
                **diagnostics.misfit(logits["half_b"][[row[e.uid] for e in data.examples]], data.targets),
                "selection": view["selection.method"], "n_fit": len(data.examples), "n_dropped": data.n_dropped}
      if select is not None:
        result |= {"selected_step": select.best_step, "selection_val_auroc": select.best_score,
                   "selection_history": select.history, "n_val": len(data.validation[0])}
      arrays = self._save_predictions(stage, result, logits, predict_on)
    check_join(arrays["test_uids"], task.test, stage, "test")
    check_join(arrays["half_b_uids"], half_b, stage, "half B")
    return stage, result, arrays

  def min_gap(self, n_test: int) -> float:
    return report.min_gap(n_test, self.config.report.min_gap_examples)

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
    gap = self.min_gap(result["n_test"])
    return {"chain": ">".join(names), "loss": loss, "seed": seed, "steps": steps,
            "weak_acc": weak_result["acc"], "strong_acc": strong_result["acc"], "w2s_acc": result["acc"],
            "direct_w2s_acc": direct["acc"], "n_test": result["n_test"],
            "pgr": report.pgr(weak_result["acc"], result["acc"], strong_result["acc"], min_gap=gap),
            "direct_pgr": report.pgr(weak_result["acc"], direct["acc"], strong_result["acc"], min_gap=gap)}

  @staticmethod
  def test_metrics(logits: np.ndarray, examples: list[tasks.Example]) -> dict[str, float]:
    """Accuracy, and AUROC ranked by the logit margin (float32 probabilities tie at 1.0 once a
    model is confident, which pulls AUROC toward 0.5)."""
    labels = np.array([e.label for e in examples], np.int32)
    weight = np.ones(len(labels), np.float32)
    margin = logits[:, 1].astype(np.float32) - logits[:, 0].astype(np.float32)
    return {"acc": float(metrics_lib.accuracy(logits, labels, weight)),
            "auroc": float(metrics_lib.roc_auc(margin, labels, weight)), "n_test": int(len(labels))}

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
          gap = self.min_gap(w2s["n_test"])
          runs.append({
              "weak": weak, "strong": strong, "loss": loss, "seed": seed,
              "weak_acc": weak_result["acc"], "strong_acc": strong_result["acc"], "w2s_acc": w2s["acc"],
              "pgr": report.pgr(weak_result["acc"], w2s["acc"], strong_result["acc"], min_gap=gap),
              "weak_auroc": weak_result["auroc"], "strong_auroc": strong_result["auroc"],
              "w2s_auroc": w2s["auroc"],
              "pgr_auroc": report.pgr(weak_result["auroc"], w2s["auroc"], strong_result["auroc"], min_gap=gap),
              **{k: w2s[k] for k in report.DIAGNOSTIC_FIELDS}, "n_test": w2s["n_test"],
              "selection": w2s["selection"], "selected_step": w2s.get("selected_step"),
          })
          self.tracker.summary(f"weak_to_strong:{weak}->{strong}:{loss}:seed{seed}", runs[-1])
      for names in self.chains:
        for loss in self.config.losses:
          chains.append(self.chain(names, loss, seed, task, half_b, gt))
    min_gap_examples = self.config.report.min_gap_examples
    results = {"task": self.config.task, "model_order": self.names, "runs": runs,
               "summary": report.summarize(runs),
               "oai_summary": report.summarize_oai(runs, min_gap_examples=min_gap_examples),
               "min_gap_examples": min_gap_examples, "selection": self.config.selection.method,
               "oracle": self.config.selection.method in selection_lib.ORACLES,
               "chains": chains, "chain_summary": report.summarize_chains(chains), "wall_s": time.time() - start,
               "trained_stages": self.trained_stages, "workdir": str(self.workdir)}
    if jax.process_index() == 0:
      report.write(results, self.workdir)
    self.tracker.close()
    return results


def run(config: ml_collections.ConfigDict, workdir: str | Path, *, force: bool = False) -> dict[str, Any]:
  return Experiment(config, workdir, force=force).run()
