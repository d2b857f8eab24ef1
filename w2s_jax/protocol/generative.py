"""The generative-finetuning stage: a model fine-tuned with the language-modelling loss on the
task's unlabelled text, before its ground-truth (ceiling) or weak-to-strong finetune.

The paper finds that this raises PGR: the strong model first learns the task's text
distribution, which its weak labels cannot corrupt, and then needs less from them. The text
is the inputs of half B and of the test set, never their labels (nor half A's: half A is
labelled data, for the supervisors and the ceiling). For a classification task each input
is one text, modelled whole; for a preference pair, its prompt followed by each of its two
responses (two texts: the reward-model setting's generative finetuning, on the comparisons'
text without their preferences); for a multiple-choice task (chess) it is the prompt (the
position), without any candidate.

A model opts in with `config.models.NAME.generative_finetune=True`; listing one checkpoint
twice (with and without) puts both students in one results.md, side by side. The stage is
per seed (half B is), cached like every stage, and its fine-tuned backbone is saved in the
stage's directory; the stages that start from it hold its key in theirs. `config.generative`
sets its epochs and learning rate.

On a gs:// workdir the backbone goes through a local temporary file both ways (safetensors reads and
writes local files only): written there, then uploaded; downloaded by every host, then read.
"""

import contextlib
import dataclasses
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import jax
import numpy as np
import safetensors
from etils import epath
from jax.experimental import multihost_utils

from w2s_jax import artifacts, seeds, sharding
from w2s_jax.artifacts import Stage
from w2s_jax.data import choice_batching, tasks
from w2s_jax.errors import UserError
from w2s_jax.models.checkpoints import LoadedModel
from w2s_jax.offline import save_float32_safetensors
from w2s_jax.protocol.context import Context, ModelSpec, SeedData, StageResult, train_config
from w2s_jax.train import choices, hooks as hooks_lib

BACKBONE_FILE = "backbone.safetensors"


def unlabelled_texts(data: SeedData) -> list[tasks.ChoiceExample]:
  """Half B's and the test set's inputs as texts to model whole (no prompt, no label); a preference
  pair gives two, its prompt followed by each response (which one was chosen is not said)."""
  inputs = [text for e in (*data.half_b, *data.task.test)
            for text in (e.texts if isinstance(e, tasks.PreferenceExample) else (e.text,))]
  return [tasks.ChoiceExample("", (text,), 0, uid=i) for i, text in enumerate(inputs)]


def _per_token_nll(model: LoadedModel, params, data: choice_batching.ChoiceSet, ctx: Context, batch_size: int,
                   pad_id: int, desc: str) -> float:
  """Mean negative log-likelihood per modelled token (nats) of `data`'s one completion each."""
  logprob = choices.predict_logits(model, params, data, ctx.mesh, batch_size=batch_size, pad_id=pad_id, desc=desc)
  tokens = sum(len(c[0]) for c in data.candidates)
  return float(-logprob[:, 0].sum() / tokens)


@contextlib.contextmanager
def _local_copy(path: epath.Path, *, upload: bool) -> Iterator[Path]:
  """`path` itself if local; else a temporary local file, downloaded from `path` first or uploaded to it after."""
  if artifacts.is_local(path):
    yield Path(path)
    return
  with tempfile.TemporaryDirectory(prefix="w2s_jax-backbone-") as tmp:
    local = Path(tmp) / path.name
    if not upload:
      with path.open("rb") as src, open(local, "wb") as dst:
        shutil.copyfileobj(src, dst, length=1 << 24)
    yield local
    if upload:  # a cut upload is no finished stage: its checksums.json records the whole file's SHA-256
      with open(local, "rb") as src, path.open("wb") as dst:
        shutil.copyfileobj(src, dst, length=1 << 24)


def save_backbone(params, path: artifacts.PathLike) -> None:
  """The backbone's parameters as float32 safetensors, one tensor at a time (gathered from every host)."""
  path = artifacts.as_path(path)
  flat = sharding.flatten_by_path(params)
  shapes = {name: tuple(leaf.shape) for name, leaf in flat.items()}
  tensors = ((name, np.asarray(multihost_utils.process_allgather(leaf, tiled=True))) for name, leaf in flat.items())
  failure = None
  if jax.process_index() == 0:
    try:
      path.parent.mkdir(parents=True, exist_ok=True)
      with _local_copy(path, upload=True) as local:
        save_float32_safetensors(local, shapes, tensors)
    except OSError as e:  # a full disk: one line; the stage is unfinished until its checksums.json lands
      failure = artifacts.write_error(path, e)
  else:
    for _ in tensors:  # every host takes part in each gather
      pass

  def told() -> None:
    if failure is not None:
      raise failure

  # A barrier: no host reads the backbone before it is whole, and a failed save stops every host.
  artifacts.on_process_0(told, f"save {path}")


def with_backbone(model: LoadedModel, path: artifacts.PathLike) -> LoadedModel:
  """`model` with its backbone's parameters read from `path` (a generative stage's), placed in the same
  shardings. A classifier reads every backbone tensor it has; an untied LM head it lacks is left out."""
  path = artifacts.as_path(path)
  flat = sharding.flatten_by_path(model.params["backbone"])
  loaded = {}
  with _local_copy(path, upload=False) as local, safetensors.safe_open(str(local), framework="np") as f:
    names = set(f.keys())
    missing = sorted(set(flat) - names)
    if missing:
      raise UserError(f"{path} lacks backbone tensor {missing[0]!r}: it was saved for another architecture; "
                      f"delete {path.parent} to fine-tune again")
    for name, leaf in flat.items():
      value = f.get_tensor(name).astype(leaf.dtype)
      if value.shape != leaf.shape:
        raise UserError(f"{path}: tensor {name!r} has shape {value.shape}, not {leaf.shape}; delete {path.parent}")
      loaded[name] = sharding.put_host_array(value, leaf.sharding)
  backbone = jax.tree_util.tree_map_with_path(lambda p, _: loaded[sharding.path_str(p)], model.params["backbone"])
  return LoadedModel(model.module, model.config, {**model.params, "backbone": backbone}, model.directory)


def generative(ctx: Context, name: str, data: SeedData) -> StageResult:
  """`name` fine-tuned with the LM loss on `unlabelled_texts(data)`; its result holds the loss per token
  before and after, and its directory the backbone."""
  seed = data.seed
  stage, view = ctx.stage("generative", model=name, seed=seed, trained_on="half_b_and_test_inputs")
  model = ModelSpec.from_view(name, view)
  cached = ctx.load_or_clear(stage)
  if cached is not None and artifacts.decided_by_process_0((stage.directory / BACKBONE_FILE).exists,
                                                           f"check {stage.directory / BACKBONE_FILE}"):
    return StageResult(stage, *cached)
  if view["train.linear_probe"]:
    raise UserError(f"config.models.{name}.generative_finetune: generative finetuning changes the backbone, "
                    "which a linear probe never trains (its features are the pretrained model's); "
                    "set train.linear_probe=False or generative_finetune=False")
  cfg = train_config(view, model, "lm", {}, seeds.derive(seed, "batch_order", "generative"))
  lr = view["generative.lr"]
  cfg = dataclasses.replace(cfg, epochs=view["generative.epochs"], lr=model.lr if lr is None else lr,
                            linear_probe=False)
  texts = unlabelled_texts(data)
  with ctx.tracker.stage(f"generative:{name}:seed{seed}", stage.spec) as log:
    loaded = ctx.load(model, task="lm")
    tokenizer = ctx.tokenizer(model)
    tokenized = choice_batching.tokenize_choices(texts, tokenizer, view["max_length"])
    before = _per_token_nll(loaded, loaded.params, tokenized, ctx, cfg.batch_size, tokenizer.pad_token_id,
                            f"generative {name}: loss before")
    runtime = ctx.config.train
    hooks = [hooks_lib.Checkpointing(stage.checkpoint_dir, every=runtime.checkpoint_every),
             hooks_lib.MetricLog(log, every=runtime.log_every)]
    params = choices.train(loaded, tokenized, ctx.mesh, cfg, pad_id=tokenizer.pad_token_id, hooks=hooks,
                           desc=f"generative:{name}:seed{seed}")
    after = _per_token_nll(loaded, params, tokenized, ctx, cfg.batch_size, tokenizer.pad_token_id,
                           f"generative {name}: loss after")
  save_backbone(params["backbone"], stage.directory / BACKBONE_FILE)
  result = {"model": name, "seed": seed, "n_texts": len(texts), "n_truncated": tokenized.n_truncated,
            "epochs": cfg.epochs, "lr": cfg.lr, "nll_per_token_before": before, "nll_per_token_after": after}
  stage.save(result, {}, keep_checkpoints=ctx.config.train.keep_checkpoints)
  ctx.trained_stages += 1
  return StageResult(stage, result, {})


def backbone_of(ctx: Context, model: ModelSpec, data: SeedData) -> tuple[Stage | None, epath.Path | None]:
  """The generative stage a model starts from and its backbone file; (None, None) without it."""
  if not model.generative_finetune:
    return None, None
  done = generative(ctx, model.name, data)
  return done.stage, done.stage.directory / BACKBONE_FILE
