"""One fit: a model trained on examples against targets, and its class logits on other sets.

Both the ground-truth and the weak-to-strong stages are made of this: it picks the data path
(cached features for the linear probe, or tokenized examples), builds the hooks that run
between steps (checkpointing, metric logging, checkpoint selection) and predicts.
"""

import dataclasses

import numpy as np

from w2s_jax.artifacts import Stage
from w2s_jax.data import batching, tasks
from w2s_jax.models import checkpoints
from w2s_jax.protocol.context import Context, ModelSpec, SeedData
from w2s_jax.protocol.features import features
from w2s_jax.stage_keys import StageConfig
from w2s_jax.train import fit as fit_lib, hooks as hooks_lib, metrics as metrics_lib
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


def fit(ctx: Context, stage: Stage, view: StageConfig, data: SeedData,
        request: FitRequest) -> tuple[dict[str, np.ndarray], hooks_lib.BestCheckpoint | None]:
  """Train; class logits [n, C] on each `predict_on` set, and the checkpoint selector if any
  (its best step and history), whose best parameters are the ones predicted with."""
  runtime = ctx.config.train
  model, cfg, v = request.model, request.cfg, request.validation

  def selector(val_logits):
    if v is None:
      return None
    weight = np.ones(len(v.labels), np.float32)

    def score(params):
      logits = val_logits(params)
      return float(metrics_lib.roc_auc(logits[:, 1] - logits[:, 0], v.labels, weight))
    return hooks_lib.BestCheckpoint(score, v.every, stage.selection_dir)

  with ctx.tracker.stage(request.name, stage.spec) as log:
    hooks = [hooks_lib.Checkpointing(stage.checkpoint_dir, every=runtime.checkpoint_every),
             hooks_lib.MetricLog(log, every=runtime.log_every)]
    labels = np.array([e.label for e in request.examples], np.int32)
    if cfg.linear_probe and cfg.cache_features:
      feats = features(ctx, model, data)
      lookup = {("train", int(u)): i for i, u in enumerate(feats["train_uids"])}
      lookup |= {("test", int(u)): i for i, u in enumerate(feats["test_uids"])}

      def rows(examples, split, what="features"):
        return feats[f"{split}_{what}"][[lookup[(split, e.uid)] for e in examples]]

      head = checkpoints.head_only(model.checkpoint, ctx.mesh, pooling=model.pooling, seed=request.head_seed,
                                   head_init=view["head_init"], d_model=feats["train_features"].shape[-1])
      # The validation rows are gathered once, not at every evaluation.
      val_features = rows(v.examples, "train") if v is not None else None
      select = selector(lambda params: fit_lib.logits_from_features(head, params, val_features))
      params = fit_lib.train_head(head, rows(request.examples, "train"), labels, ctx.mesh, cfg,
                                  targets=request.targets, weights=request.weights,
                                  lengths=rows(request.examples, "train", "lengths"),
                                  hooks=hooks + ([select] if select else []), desc=request.name)
      return {k: fit_lib.logits_from_features(head, params, rows(ex, "test" if k == "test" else "train"))
              for k, ex in request.predict_on.items()}, select

    loaded = ctx.load(model, seed=request.head_seed, head_init=view["head_init"])
    pad_id = ctx.tokenizer(model).pad_token_id

    def tokenize(examples):
      return batching.tokenize(examples, ctx.tokenizer(model), view["max_length"])

    def predict(params, tokenized, desc):
      return fit_lib.predict_logits(loaded, params, tokenized, ctx.mesh, batch_size=cfg.batch_size, pad_id=pad_id,
                                    length_buckets=cfg.length_buckets, length_multiple=cfg.length_multiple,
                                    desc=desc)

    # The validation set is scored every `every` steps: tokenized once.
    val_data = tokenize(v.examples) if v is not None else None
    select = selector(lambda params: predict(params, val_data, f"{request.name}: validation"))
    params = fit_lib.train(loaded, tokenize(request.examples), ctx.mesh, cfg, targets=request.targets,
                           weights=request.weights, pad_id=pad_id, hooks=hooks + ([select] if select else []),
                           desc=request.name)
    return {k: predict(params, tokenize(ex), f"{request.name}: {k}") for k, ex in request.predict_on.items()}, select
