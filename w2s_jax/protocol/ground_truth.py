"""The ground-truth stage: a model fine-tuned on half A's ground truth.

Its test metrics are the *weak* number when it supervises and the *strong ceiling* when it
is a student; its logits on half B are the weak labels (their softmax). One run serves both
roles, as in the paper code's `train_simple`. `member` i > 0 re-trains the same model on the
same half A with its own batch order and head init: a further member of a supervisor
ensemble (methods/supervisors.py).
"""

import numpy as np

from w2s_jax import seeds
from w2s_jax.data import tasks
from w2s_jax.protocol import generative as generative_lib, pgr
from w2s_jax.protocol.context import Context, ModelSpec, SeedData, StageResult, check_join, train_config
from w2s_jax.protocol.fitting import FitRequest, fit


def ground_truth_loss(data: SeedData) -> str:
  """Cross-entropy on the labels; for a multiple-choice task (chess), the language-modelling loss on
  the right completion, as the paper fine-tunes its chess models (the prompt masked)."""
  return "lm" if tasks.is_choice(data.half_a) else "xent"


def ground_truth(ctx: Context, name: str, data: SeedData, member: int = 0) -> StageResult:
  seed = data.seed
  extra = {"seed": seed, "trained_on": "half_a_ground_truth", **({"member": member} if member else {})}
  gen_stage, backbone = generative_lib.backbone_of(ctx, ctx.models[name], data)
  if gen_stage is not None:
    extra["generative"] = gen_stage.key  # it starts from that stage's backbone
  stage, view = ctx.stage("ground_truth", model=name, **extra)
  model = ModelSpec.from_view(name, view)
  cached = ctx.load_or_clear(stage)
  if cached is not None:
    out = StageResult(stage, *cached)
  else:
    streams = (member,) if member else ()  # member 0 keeps the streams of a single supervisor
    cfg = train_config(view, model, ground_truth_loss(data), {}, seeds.derive(seed, "batch_order", *streams))
    predict_on = {"test": data.task.test, "half_b": data.half_b}
    request = FitRequest(
        name=f"ground_truth:{name}:seed{seed}" + (f":member{member}" if member else ""), model=model, cfg=cfg,
        head_seed=seeds.derive(seed, "head_init", "ground_truth", name, *streams), examples=data.half_a,
        targets=np.eye(data.num_classes, dtype=np.float32)[[e.label for e in data.half_a]], weights=None, predict_on=predict_on,
        backbone=backbone)
    logits, _, extra = fit(ctx, stage, view, data, request)
    result = {"model": name, "seed": seed, "member": member, **pgr.test_metrics(logits["test"], data.task.test),
              **extra}
    out = ctx.save_predictions(stage, result, logits, predict_on)
  check_join(out.arrays["test_uids"], data.task.test, stage, "test")
  check_join(out.arrays["half_b_uids"], data.half_b, stage, "half B")
  return out
