"""One fit: a model trained on examples against targets, and its class logits on other sets.

Both the ground-truth and the weak-to-strong stages are made of this: it picks the data path
(cached features for the linear probe, or tokenized examples), builds the hooks that run
between steps (checkpointing, metric logging, checkpoint selection) and predicts.
"""

import dataclasses
from pathlib import Path

import numpy as np

from w2s_jax.artifacts import Stage
from w2s_jax.data import batching, choice_batching, tasks
from w2s_jax.errors import UserError
from w2s_jax.models import checkpoints
from w2s_jax.protocol.context import Context, ModelSpec, SeedData
from w2s_jax.protocol import generative as generative_lib
from w2s_jax.protocol.features import features
from w2s_jax.stage_keys import StageConfig
from w2s_jax.train import choices as choices_lib, fit as fit_lib, hooks as hooks_lib, metrics as metrics_lib
from w2s_jax.train.fit import TrainConfig


@dataclasses.dataclass(frozen=True)
class Validation:
  """A held-out part scored every `every` steps: AUROC of the student against `labels` [n] (0/1)."""
  examples: list[tasks.Example]
  labels: np.ndarray
  every: int


@dataclasses.dataclass(frozen=True)
class FitRequest:
  name: str                         # how logs and progress bars name the fit
  model: ModelSpec
  cfg: TrainConfig
  head_seed: int
  examples: list[tasks.Example]     # what it trains on
  targets: np.ndarray               # [len(examples), C] soft targets
  weights: np.ndarray | None        # [len(examples)] per-example loss weights; None: all 1
  predict_on: dict[str, list[tasks.Example]]  # e.g. {'test': ..., 'half_b': ...}
  validation: Validation | None = None
  backbone: Path | None = None      # backbone parameters to start from (a generative stage's), else the checkpoint's


def fit(ctx: Context, stage: Stage, view: StageConfig, data: SeedData,
        request: FitRequest) -> tuple[dict[str, np.ndarray], hooks_lib.BestCheckpoint | None, dict[str, float]]:
  """Train; class logits [n, C] on each `predict_on` set, the checkpoint selector if any (its
  best step and history), whose best parameters are the ones predicted with, and metrics of
  the trained model beyond its logits (a multiple-choice task's greedy generations: `_fine_tune`)."""
  cfg, v = request.cfg, request.validation

  choice = tasks.is_choice(request.examples)

  def selector(val_logits):
    if v is None:
      return None
    weight = np.ones(len(v.labels), np.float32)

    def score(params):
      logits = val_logits(params)
      if choice:  # AUROC is binary; with many candidates the score is accuracy against the same labels
        return float(metrics_lib.accuracy(logits, v.labels, weight))
      return float(metrics_lib.roc_auc(logits[:, 1] - logits[:, 0], v.labels, weight))
    return hooks_lib.BestCheckpoint(score, v.every, stage.selection_dir)

  if choice:
    if cfg.linear_probe:
      raise UserError(f"{request.name}: train.linear_probe needs a classification task; a multiple-choice task "
                      "(chess) fine-tunes the language model: set train.linear_probe=False")
    return _fine_tune(ctx, stage, view, request, selector, choice=True)
  if cfg.loss in choices_lib.LM_LOSSES:
    raise UserError(f"{request.name}: the {cfg.loss!r} loss is for language models on multiple-choice tasks "
                    "(chess puzzles); a classification task trains with xent, logconf, ...")

  if cfg.linear_probe and request.backbone is not None:
    raise UserError(f"{request.name}: a linear probe trains on the pretrained backbone's features; "
                    "generative finetuning needs train.linear_probe=False")
  if cfg.linear_probe and cfg.cache_features:
    return _fit_probe(ctx, stage, view, data, request, selector)
  return _fine_tune(ctx, stage, view, request, selector, choice=False)


def _fit_probe(ctx: Context, stage: Stage, view: StageConfig, data: SeedData, request: FitRequest,
               selector) -> tuple[dict[str, np.ndarray], hooks_lib.BestCheckpoint | None, dict[str, float]]:
  """A linear probe: the head alone, trained on the model's cached pooled features."""
  runtime = ctx.config.train
  model, cfg, v = request.model, request.cfg, request.validation
  with ctx.tracker.stage(request.name, stage.spec) as log:
    hooks = [hooks_lib.Checkpointing(stage.checkpoint_dir, every=runtime.checkpoint_every),
             hooks_lib.MetricLog(log, every=runtime.log_every)]
    labels = np.array([e.label for e in request.examples], np.int32)
    feats = features(ctx, model, data)
    lookup = {("train", int(u)): i for i, u in enumerate(feats["train_uids"])}
    lookup |= {("test", int(u)): i for i, u in enumerate(feats["test_uids"])}

    def rows(examples, split, what="features"):
      return feats[f"{split}_{what}"][[lookup[(split, e.uid)] for e in examples]]

    head = checkpoints.head_only(model.checkpoint, ctx.mesh, pooling=model.pooling, seed=request.head_seed,
                                 head_init=view["head_init"], d_model=feats["train_features"].shape[-1],
                                 task=tasks.head_kind(request.examples))
    # The validation rows are gathered once, not at every evaluation.
    val_features = rows(v.examples, "train") if v is not None else None
    select = selector(lambda params: fit_lib.logits_from_features(head, params, val_features))
    params = fit_lib.train_head(head, rows(request.examples, "train"), labels, ctx.mesh, cfg,
                                targets=request.targets, weights=request.weights,
                                lengths=rows(request.examples, "train", "lengths"),
                                hooks=hooks + ([select] if select else []), desc=request.name)
    return {k: fit_lib.logits_from_features(head, params, rows(ex, "test" if k == "test" else "train"))
            for k, ex in request.predict_on.items()}, select, {}


def _fine_tune(ctx: Context, stage: Stage, view: StageConfig, request: FitRequest, selector, *,
               choice: bool) -> tuple[dict[str, np.ndarray], hooks_lib.BestCheckpoint | None, dict[str, float]]:
  """Fine-tune backbone and head on tokenized examples: a Classifier, a RewardModel for preference pairs
  (its [n, 2] logits are the pair's two rewards: `models.heads.RewardModel`), or for a multiple-choice task a
  LanguageModel whose logits are its candidates' log-likelihoods (w2s_jax/train/choices.py), with
  `request.targets` [n, C] over each example's candidates.

  A multiple-choice fit has an extra metric on the test set: `greedy_not_candidate`, how often the
  model's greedy, unconstrained continuation of the prompt does not start with one of the
  candidates' text (for chess, how often it would play an illegal or malformed move if it were
  not constrained; what follows the move is not judged: a model trained on moves alone runs on
  past them)."""
  runtime = ctx.config.train
  model, cfg, v = request.model, request.cfg, request.validation
  with ctx.tracker.stage(request.name, stage.spec) as log:
    hooks = [hooks_lib.Checkpointing(stage.checkpoint_dir, every=runtime.checkpoint_every),
             hooks_lib.MetricLog(log, every=runtime.log_every)]
    if choice:
      loaded = ctx.load(model, task="lm")
    else:
      loaded = ctx.load(model, seed=request.head_seed, head_init=view["head_init"], task=tasks.head_kind(request.examples))
    if request.backbone is not None:
      loaded = generative_lib.with_backbone(loaded, request.backbone)
    tokenizer = ctx.tokenizer(model)
    pad_id = tokenizer.pad_token_id
    shapes = dict(length_buckets=cfg.length_buckets, length_multiple=cfg.length_multiple)

    def tokenize(examples):
      if choice:
        return choice_batching.tokenize_choices(examples, tokenizer, view["max_length"])
      return batching.tokenize(examples, tokenizer, view["max_length"])

    def predict(params, tokenized, desc):
      if choice:
        return choices_lib.predict_logits(loaded, params, tokenized, ctx.mesh, batch_size=cfg.batch_size,
                                          pad_id=pad_id, num_choices=request.targets.shape[1], desc=desc, **shapes)
      return fit_lib.predict_logits(loaded, params, tokenized, ctx.mesh, batch_size=cfg.batch_size, pad_id=pad_id,
                                    desc=desc, **shapes)

    # The validation set is scored every `every` steps: tokenized once.
    val_data = tokenize(v.examples) if v is not None else None
    select = selector(lambda params: predict(params, val_data, f"{request.name}: validation"))
    train = choices_lib.train if choice else fit_lib.train
    params = train(loaded, tokenize(request.examples), ctx.mesh, cfg, targets=request.targets,
                   weights=request.weights, pad_id=pad_id, hooks=hooks + ([select] if select else []),
                   desc=request.name)
    logits = {k: predict(params, tokenize(ex), f"{request.name}: {k}") for k, ex in request.predict_on.items()}
    extra = {}
    if choice and "test" in request.predict_on:
      test = request.predict_on["test"]
      tokenized = tokenize(test)
      longest = max(len(c) for cands in tokenized.candidates for c in cands)
      generated = choices_lib.greedy_continuations(
          loaded, params, tokenized.prompts, ctx.mesh, max_new_tokens=longest + 1, batch_size=cfg.batch_size,
          pad_id=pad_id, desc=f"{request.name}: greedy")
      texts = tokenizer.batch_decode([g.tolist() for g in generated], skip_special_tokens=True)
      hits = [choices_lib.starts_with_a_candidate(t, e.candidates) for t, e in zip(texts, test)]
      extra = {"greedy_not_candidate": float(1.0 - np.mean(hits)), "greedy_example": texts[0][:40]}
    return logits, select, extra
