"""The weak-to-strong stage: a strong student fine-tuned on a supervisor's labels of half B.

The student runs one recipe of methods (w2s_jax/methods/): its supervisor, label transform,
example weights, loss and checkpoint selection. It also predicts all of half B, so that in
a chain or a strong-to-strong round it can supervise the next student (bootstrap.py).
"""

import numpy as np

from w2s_jax import diagnostics, seeds
from w2s_jax.data import tasks
from w2s_jax.methods import Recipe
from w2s_jax.methods.supervisors import Supervision
from w2s_jax.protocol import generative as generative_lib, pgr
from w2s_jax.protocol.context import Context, ModelSpec, SeedData, StageResult, check_join, rows_of, train_config
from w2s_jax.protocol.fitting import FitRequest, fit
from w2s_jax.protocol.weak_labels import student_data


def student(ctx: Context, strong: str, recipe: Recipe, data: SeedData, supervisor: Supervision,
            train_on: list[tasks.Example], trained_on: str = "half_b") -> StageResult:
  """`strong` trained on `train_on` (half B, or a part of it named by `trained_on`) against
  `supervisor`'s labels with `recipe` (whose rounds method is not used here)."""
  seed = data.seed
  # One student: a multi-round recipe's first student is the very stage of its one-student recipe.
  recipe = recipe.per_student()
  gen_stage, backbone = generative_lib.backbone_of(ctx, ctx.models[strong], data)
  stage, view = ctx.stage("weak_to_strong", model=strong, methods=recipe.named, seed=seed,
                          recipe={kind: m.name for kind, m in recipe.methods.items() if kind != "rounds"},
                          supervisor=list(supervisor.stage_keys), trained_on=trained_on,
                          **({"generative": gen_stage.key} if gen_stage is not None else {}))
  model = ModelSpec.from_view(strong, view)
  cached = ctx.load_or_clear(stage)
  if cached is not None:
    out = StageResult(stage, *cached)
  else:
    sd = student_data(view, recipe, supervisor, train_on, data.half_b, seed)
    loss = recipe["loss"]
    cfg = train_config(view, model, loss.impl, view.under(f"method_options.{loss.name}"),
                       seeds.derive(seed, "batch_order"))
    predict_on = {"test": data.task.test, "half_b": data.half_b}
    name = f"weak_to_strong:{supervisor.name}->{strong}:{recipe.name}:seed{seed}"
    if trained_on != "half_b":
      name += f":{trained_on}"
    request = FitRequest(name=name, model=model, cfg=cfg, head_seed=seeds.derive(seed, "head_init", "weak_to_strong", strong),
                         examples=sd.examples, targets=sd.targets, weights=sd.weights, predict_on=predict_on,
                         validation=sd.validation, backbone=backbone)
    logits, select, extra = fit(ctx, stage, view, data, request)
    test_labels = np.array([e.label for e in data.task.test], np.int32)
    uids = np.array([e.uid for e in data.half_b], np.int64)
    result = {"strong": strong, "supervisor": supervisor.name, "seed": seed,
              **pgr.test_metrics(logits["test"], data.task.test),
              # imitation of the supervisor on the test set, and misfit to the labels trained on
              **diagnostics.imitation(logits["test"], supervisor.test_logits, test_labels),
              **diagnostics.misfit(logits["half_b"][rows_of(uids, sd.examples)], sd.targets),
              "trained_on": trained_on, "n_fit": len(sd.examples), "n_dropped": sd.n_dropped,
              "n_downweighted": sd.n_downweighted, "selection": recipe["selection"].name, **extra}
    if select is not None:
      result |= {"selected_step": select.best_step, "selection_val_auroc": select.best_score,
                 "selection_history": select.history, "n_val": len(sd.validation.examples)}
    out = ctx.save_predictions(stage, result, logits, predict_on)
  check_join(out.arrays["test_uids"], data.task.test, stage, "test")
  check_join(out.arrays["half_b_uids"], data.half_b, stage, "half B")
  return out
