"""What every stage of a sweep shares: the config, the stage store, the mesh, models and tokenizers.

A stage is a value with a key (`artifacts.Stage`): `Context.stage` builds its spec from the
config fields its kind reads (`stage_keys.py`), the code version of its kind, the model's
name, content fingerprints of the user's files, and what the caller adds (the seed, the keys
of the stages it consumes, the recipe). The view it returns is the only way a stage reads the
config, so a stage cannot depend on a field its key leaves out.
"""

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np

from w2s_jax import artifacts, seeds as seeds_lib, sharding, stage_keys
from w2s_jax.artifacts import Stage, StageStore
from w2s_jax.data import splits, tasks
from w2s_jax.errors import UserError
from w2s_jax import models
from w2s_jax.models import checkpoints, layers
from w2s_jax.stage_keys import StageConfig
from w2s_jax.tracking import Tracker
from w2s_jax.train import lora
from w2s_jax.train.fit import TrainConfig


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
  generative_finetune: bool = False  # start from its generative stage's backbone (protocol/generative.py)
  lora_rank: int | None = None  # this model's LoRA; None: config.lora's (w2s_jax/train/lora.py)
  lora_alpha: float | None = None
  lora_targets: str | None = None

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


def train_config(view: StageConfig, model: ModelSpec, loss: str, loss_options: dict[str, Any],
                 batch_order_seed: int) -> TrainConfig:
  """The loop's settings, from a stage's keyed fields only."""
  return TrainConfig(
      batch_size=view["train.batch_size"], microbatches=model.microbatches, epochs=view["train.epochs"],
      lr=model.lr, optimizer=view["train.optimizer"], schedule=view["train.schedule"],
      warmup_steps=view["train.warmup_steps"], weight_decay=view["train.weight_decay"],
      clip_norm=view["train.clip_norm"], loss=loss, loss_kwargs=tuple(sorted(loss_options.items())),
      linear_probe=view["train.linear_probe"], cache_features=view["train.cache_features"],
      bucket=view["train.bucket"], length_buckets=view["train.length_buckets"],
      length_multiple=view["train.length_multiple"], seed=batch_order_seed,
      lora=lora.settings(view.under("lora"), rank=model.lora_rank, alpha=model.lora_alpha,
                         targets=model.lora_targets))


def task_fingerprint(task: str, chess_options: dict[str, Any] | None = None, tfds_data_dir: str | None = None) -> str:
  """Users' files enter the cache key by content, so an edited file is never served stale results.

  A chess task's fingerprint also holds `config.chess` (its filters and prompt format): those
  fields change only chess stages, so they enter only chess tasks' keys (stage_keys.RUNTIME_ONLY).
  The Lichess database (a gigabyte) is fingerprinted like a checkpoint, by size and samples.
  A tfds task's is its prepared version and a hash of its dataset_info.json and features.json.
  """
  if task.startswith(("jsonl:", "csv:")):
    path = Path(task.split(":", 1)[1]).expanduser()
    if path.exists():
      return hashlib.sha256(path.read_bytes()).hexdigest()[:16]
  if task.startswith("tfds:"):
    from w2s_jax.data import tfds_tasks  # tensorflow-datasets is imported only for tfds tasks
    return tfds_tasks.fingerprint(task, tfds_data_dir)
  if tasks.is_chess_task(task):
    options = json.dumps(chess_options or {}, sort_keys=True, default=list)
    path = Path(task.removeprefix("lichess:")).expanduser()
    content = _sampled_digest([path]) if task.startswith("lichess:") and path.is_file() else task
    return f"{content}|{options}"
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
  return _sampled_digest(sorted(p for p in directory.iterdir() if p.is_file() and p.name.endswith(WEIGHT_SUFFIXES)))


def _sampled_digest(paths: list[Path]) -> str:
  """Each file's name and size, its JSON or small files whole, 64 KiB at start, middle and end of the rest."""
  digest = hashlib.sha256()
  for path in paths:
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


def model_size(checkpoint: str) -> int | None:
  """The backbone's parameter count, from its config alone (shapes, no weights read); None if the
  checkpoint cannot be resolved here (a cached rerun without the hub): sizes only label figures."""
  try:
    directory = checkpoints.resolve_checkpoint(checkpoint)
    config = models.config_from_hf(checkpoints.read_hf_config(directory))
    module = checkpoints.build_model(config, pooling="mean")
  except (UserError, OSError):
    return None
  return int(sum(x.size for x in jax.tree.leaves(checkpoints.abstract_params(module)["backbone"])))


def check_join(uids: np.ndarray, examples: list[tasks.Example], stage: Stage, what: str) -> None:
  """Per-example arrays are joined by uid: a stage whose rows are not `examples` is one clear error."""
  expected = np.array([e.uid for e in examples], np.int64)
  if uids.shape != expected.shape or not np.array_equal(uids.astype(np.int64), expected):
    raise UserError(f"stage {stage.directory.name}: its {what} rows are for other examples than this run's "
                    f"({len(uids)} rows, {len(expected)} expected, first differing uid at row "
                    f"{int(np.argmax(uids[:len(expected)] != expected[:len(uids)])) if len(uids) else 0}); "
                    f"delete {stage.directory} or rerun with --force")


def rows_of(uids: np.ndarray, examples: list[tasks.Example]) -> np.ndarray:
  """Row indices into a stage's per-example arrays (stored with `uids`) of `examples`, by uid."""
  row = {int(u): i for i, u in enumerate(uids)}
  missing = [e.uid for e in examples if e.uid not in row]
  if missing:
    raise UserError(f"{len(missing)} examples (first uid {missing[0]}) are missing from a stage's arrays; "
                    "rerun with --force")
  return np.array([row[e.uid] for e in examples], np.int64)


@dataclasses.dataclass(frozen=True)
class SeedData:
  """One seed's examples: the task's test set, half A (ground truth) and half B (weak labels)."""
  seed: int
  task: tasks.TaskData
  half_a: list[tasks.Example]
  half_b: list[tasks.Example]

  @property
  def num_classes(self) -> int:
    """Columns of every logits array of this task (`tasks.num_classes`)."""
    return tasks.num_classes(self.task)


@dataclasses.dataclass(frozen=True)
class StageResult:
  """A finished stage: its result dict and its per-example arrays ('<set>_logits', '<set>_uids')."""
  stage: Stage
  result: dict[str, Any]
  arrays: dict[str, np.ndarray]


class Context:
  """One sweep's shared state, in one workdir."""

  def __init__(self, config: ml_collections.ConfigDict, workdir: artifacts.PathLike, *, force: bool = False):
    self.config = config
    self.workdir = artifacts.as_path(workdir)  # local, or gs://
    self.force = force
    self.models = model_specs(config)
    self.mesh = sharding.make_mesh(config.mesh.data, config.mesh.fsdp)
    self.store = StageStore(self.workdir)
    self.tracker = Tracker(self.workdir, config.to_dict(), mode=config.wandb.mode, project=config.wandb.project,
                           entity=config.wandb.entity, group=config.wandb.group)
    self._tokenizers: dict[str, Any] = {}
    self._fingerprints: dict[str, str] = {}  # "task" and each model's name -> content hash
    self.features_cache: dict[str, dict[str, np.ndarray]] = {}  # features stages loaded in this run
    self._finished: dict[str, tuple[dict, dict]] = {}  # stage key -> (result, arrays) finished or loaded
    self.trained_stages = 0  # how many stages this process actually trained (0 on a cached rerun)

  # --- data -----------------------------------------------------------------------------------
  def subsample_seed(self, seed: int) -> int:
    data_seed = self.config.data_seed
    return seeds_lib.derive(seed if data_seed is None else data_seed, "subsample")

  def load_data(self, seed: int) -> SeedData:
    c = self.config
    task = tasks.load_task(c.task, n_train=c.n_train, n_test=c.n_test, seed=self.subsample_seed(seed),
                           balance=c.balance, chess_options=c.chess.to_dict(), at_most=c.n_at_most,
                           tfds_data_dir=c.tfds_data_dir)
    half_a, half_b = splits.split_halves(task.train, seeds_lib.derive(seed, "split"))
    return SeedData(seed, task, half_a, half_b)

  # --- models ---------------------------------------------------------------------------------
  def tokenizer(self, model: ModelSpec):
    if model.name not in self._tokenizers:
      tok = checkpoints.load_tokenizer(model.checkpoint)
      hf = checkpoints.read_hf_config(checkpoints.resolve_checkpoint(model.checkpoint))
      vocab = hf.get("vocab_size")
      if vocab is not None and len(tok) > vocab:
        raise UserError(f"the tokenizer of {model.name} has {len(tok)} tokens but the model's vocabulary has "
                        f"{vocab}: they do not belong together; use the checkpoint's own tokenizer")
      limit = models.max_input_tokens(models.config_from_hf(hf))
      if self.config.max_length > limit:
        raise UserError(f"config.max_length={self.config.max_length} is longer than {model.name} reads "
                        f"({limit} tokens: its position embeddings); set --config.max_length={limit} or less")
      self._tokenizers[model.name] = tok
    return self._tokenizers[model.name]

  def load(self, model: ModelSpec, **kwargs: Any) -> checkpoints.LoadedModel:
    """`model`'s checkpoint on the mesh with its runtime settings (dtype, remat, scan_layers, pooling);
    `task='lm'` for a language model (multiple-choice tasks), which has no pooling."""
    if kwargs.get("task") == "lm":
      kwargs = {k: v for k, v in kwargs.items() if k not in ("head_init", "seed")}
      return checkpoints.load_pretrained(model.checkpoint, self.mesh, dtype=model.dtype, remat=model.remat,
                                         scan_layers=model.scan_layers, **kwargs)
    return checkpoints.load_pretrained(model.checkpoint, self.mesh, dtype=model.dtype, remat=model.remat,
                                       scan_layers=model.scan_layers, pooling=model.pooling, **kwargs)

  # --- stages ---------------------------------------------------------------------------------
  def stage(self, kind: str, *, model: str, methods: tuple[str, ...] = (), **extra: Any) -> tuple[Stage, StageConfig]:
    """The stage of `kind` for `model` (and a recipe's `methods`), and the view of its keyed config fields."""
    values = stage_keys.config_values(self.config, kind, model=model, methods=methods)
    # Content hashes are taken once per run: a large data file is read once, not once per stage.
    if "task" not in self._fingerprints:
      self._fingerprints["task"] = task_fingerprint(self.config.task, self.config.chess.to_dict(),
                                                    self.config.tfds_data_dir)
    if model not in self._fingerprints:
      self._fingerprints[model] = checkpoint_fingerprint(self.models[model].checkpoint)
    spec = {"version": stage_keys.VERSIONS[kind], "config": stage_keys.keyed(values), "model_name": model,
            "task_fingerprint": self._fingerprints["task"], "checkpoint_fingerprint": self._fingerprints[model],
            **extra}
    return self.store.stage(kind, spec), StageConfig(kind, values)

  def load_or_clear(self, stage: Stage) -> tuple[dict, dict] | None:
    """A finished stage's (result, arrays); None if it must run (not finished, damaged, or --force).

    A stage that this run already finished or loaded is served from memory: several recipes
    share one supervisor's ground truth, and a strong-to-strong or chain's first student is the
    plain student, so without this each would be read again (and, with --force, retrained).
    A stage whose files do not match their checksums is said in one line and recomputed
    (`Stage.load_if_intact`), never used.
    """
    if stage.key in self._finished:
      return self._finished[stage.key]
    if self.force:
      # Process 0 decides for every process: a host that cleared a stage the others resume would train alone.
      if artifacts.decided_by_process_0(stage.saved, f"check stage {stage.directory.name}"):
        stage.clear()
      return None
    loaded = stage.load_if_intact()
    if loaded is not None:
      self._finished[stage.key] = loaded
    return loaded

  def save_predictions(self, stage: Stage, result: dict[str, Any], logits: dict[str, np.ndarray],
                       examples: dict[str, list[tasks.Example]]) -> StageResult:
    """Logits of each example set with the examples' uids (joined by uid when read back)."""
    arrays = {}
    for k, v in logits.items():
      arrays[f"{k}_logits"] = v.astype(np.float32)
      arrays[f"{k}_uids"] = np.array([e.uid for e in examples[k]], np.int64)
    stage.save(result, arrays, keep_checkpoints=self.config.train.keep_checkpoints)
    self.trained_stages += 1
    self._finished[stage.key] = (result, arrays)
    return StageResult(stage, result, arrays)
