"""Hyperparameters chosen on validation data: part of half A held out from its own ground truth.

    python launch/main.py --config=configs/finetune.py --search --workdir=workdirs/finetune

For every model of the config and every point of the grid in `config.search` (learning rates
x epochs x n_train), the model is trained on (1 - val_frac) of half A's ground truth and scored
on the rest of half A, for each of `search.seeds`. The test set's labels are never read, and
half B is never touched (it stays the weak labels' half). Each fit is a `validation` stage,
cached and resumable like every other stage, so an interrupted search resumes and a finished
point is never retrained.

The choice, written to search.md / search.json:
  * per model, the point with the best mean validation accuracy (AUROC breaks ties);
  * one shared (n_train, epochs), because the config has one `train.epochs` and one `n_train`
    for every model: the pair that maximises the mean over models of each model's accuracy at
    its best learning rate for that pair; then each model's best learning rate at it. These
    are the command-line overrides printed at the end.
Validation parts are small (val_frac of half A): read the spread over seeds before trusting a
one-point difference.
"""

import itertools
import statistics
import time
from typing import Any

import ml_collections
import numpy as np

from w2s_jax import artifacts, config_check, redaction, seeds, workdir as workdir_lib
from w2s_jax.data import splits
from w2s_jax.errors import UserError
from w2s_jax.protocol import generative as generative_lib, pgr
from w2s_jax.protocol.context import Context, ModelSpec, SeedData, StageResult, train_config
from w2s_jax.protocol.fitting import FitRequest, fit
from w2s_jax.protocol.ground_truth import ground_truth_loss


def grid(config: ml_collections.ConfigDict) -> list[dict[str, Any]]:
  """Every (n_train, epochs, lr) of `config.search`; an empty axis keeps the config's own value."""
  s = config.search
  if not s.lr and not s.epochs and not s.n_train:
    raise UserError("config.search has an empty grid: set search.lr, search.epochs and/or search.n_train "
                    "(e.g. --config.search.lr='(3e-5,1e-4)'), or run without --search")
  if not 0.0 < s.val_frac < 1.0:
    raise UserError(f"config.search.val_frac={s.val_frac} must lie strictly between 0 and 1")
  if not s.seeds:
    raise UserError("config.search.seeds is empty: give at least one seed, e.g. --config.search.seeds='(0,)'")
  lrs = tuple(s.lr) or (None,)  # None: each model's own config lr
  n_trains = tuple(s.n_train) or (config.n_train,)
  epochs = tuple(s.epochs) or (config.train.epochs,)
  return [{"n_train": int(n), "epochs": float(e), "lr": lr} for n, e, lr in itertools.product(n_trains, epochs, lrs)]


def point_config(config: ml_collections.ConfigDict, point: dict[str, Any], model: str) -> ml_collections.ConfigDict:
  """`config` with one grid point applied to `model`."""
  c = config.copy_and_resolve_references()
  with c.unlocked():
    c.n_train = point["n_train"]
    c.train.epochs = point["epochs"]
    if point["lr"] is not None:
      c.models[model].lr = float(point["lr"])
  c.lock()
  return c


def validation_fit(ctx: Context, name: str, data: SeedData) -> StageResult:
  """`name` trained on half A less its validation part (ground truth), scored on that part."""
  seed = data.seed
  gen_stage, backbone = generative_lib.backbone_of(ctx, ctx.models[name], data)
  stage, view = ctx.stage("validation", model=name, seed=seed, trained_on="half_a_less_validation",
                          **({"generative": gen_stage.key} if gen_stage is not None else {}))
  model = ModelSpec.from_view(name, view)
  fit_on, val = splits.split_validation(data.half_a, view["search.val_frac"], seeds.derive(seed, "search_validation"))
  cached = ctx.load_or_clear(stage)
  if cached is not None:
    return StageResult(stage, *cached)
  # The streams of the ground-truth stage: the search scores the fit the sweep would run.
  cfg = train_config(view, model, ground_truth_loss(data), {}, seeds.derive(seed, "batch_order"))
  request = FitRequest(
      name=f"validation:{name}:seed{seed}:n{view['n_train']}:epochs{view['train.epochs']:g}:lr{model.lr:g}",
      model=model, cfg=cfg, head_seed=seeds.derive(seed, "head_init", "ground_truth", name), examples=fit_on,
      targets=np.eye(data.num_classes, dtype=np.float32)[[e.label for e in fit_on]], weights=None,
      predict_on={"validation": val}, backbone=backbone)
  logits, _, _ = fit(ctx, stage, view, data, request)
  metrics = pgr.test_metrics(logits["validation"], val)
  result = {"model": name, "seed": seed, "n_train": view["n_train"], "epochs": view["train.epochs"], "lr": model.lr,
            "n_fit": len(fit_on), "n_val": metrics.pop("n_test"), "val_acc": metrics["acc"],
            "val_auroc": metrics["auroc"]}
  return ctx.save_predictions(stage, result, logits, {"validation": val})


def _mean(values: list[float | None]) -> float:
  """The mean of the values that exist (a multiple-choice task has no AUROC: None)."""
  values = [v for v in values if v is not None]
  return float(np.mean(values)) if values else float("nan")


def summarize(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
  """One row per (model, n_train, epochs, lr): validation accuracy and AUROC over seeds."""
  groups: dict[tuple, list[dict[str, Any]]] = {}
  for r in rows:
    groups.setdefault((r["model"], r["n_train"], r["epochs"], r["lr"]), []).append(r)
  out = []
  for (model, n_train, epochs, lr), group in groups.items():
    accs = [r["val_acc"] for r in group]
    out.append({"model": model, "n_train": n_train, "epochs": epochs, "lr": lr, "seeds": [r["seed"] for r in group],
                "val_acc": _mean(accs), "val_acc_sd": statistics.stdev(accs) if len(accs) > 1 else None,
                "val_auroc": _mean([r["val_auroc"] for r in group]), "n_val": group[0]["n_val"],
                "n_fit": group[0]["n_fit"]})
  return out


def choose(summary: list[dict[str, Any]], model_order: list[str]) -> dict[str, Any]:
  """The best point per model, and the best shared (n_train, epochs) with each model's lr at it."""
  key = lambda r: (r["val_acc"], r["val_auroc"])
  best_per_model = {m: max((r for r in summary if r["model"] == m), key=key) for m in model_order}
  shared_scores = {}
  for n_train, epochs in {(r["n_train"], r["epochs"]) for r in summary}:
    at = {m: [r for r in summary if r["model"] == m and (r["n_train"], r["epochs"]) == (n_train, epochs)]
          for m in model_order}
    if all(at.values()):
      best = {m: max(rs, key=key) for m, rs in at.items()}
      shared_scores[(n_train, epochs)] = (_mean([b["val_acc"] for b in best.values()]), best)
  if not shared_scores:
    raise UserError("no (n_train, epochs) of the search has a finished point for every model")
  (n_train, epochs), (score, best) = max(shared_scores.items(), key=lambda kv: kv[1][0])
  return {"best_per_model": best_per_model,
          "shared": {"n_train": n_train, "epochs": epochs, "mean_val_acc": score,
                     "lr": {m: b["lr"] for m, b in best.items()},
                     "val_acc": {m: b["val_acc"] for m, b in best.items()}}}


def overrides(chosen: dict[str, Any]) -> str:
  shared = chosen["shared"]
  parts = [f"--config.n_train={shared['n_train']}", f"--config.train.epochs={shared['epochs']:g}"]
  parts += [f"--config.models.{m}.lr={lr:g}" for m, lr in shared["lr"].items()]
  return " ".join(parts)


def markdown(results: dict[str, Any]) -> str:
  chosen, order = results["chosen"], results["model_order"]
  lines = [f"# Hyperparameter search on validation data ({results['task']})", "",
           f"Each model trained on {1 - results['val_frac']:.0%} of half A's ground truth and scored on the "
           f"other {results['val_frac']:.0%} (test set unread), seeds {results['seeds']}; "
           f"{results['trained_stages']} fits trained in this run, {results['wall_s']:.0f} s.", "",
           "| model | n_train | epochs | lr | n fit / val | val acc (sd) | val AUROC | |",
           "| --- | --- | --- | --- | --- | --- | --- | --- |"]
  best = {m: chosen["best_per_model"][m] for m in order}
  for r in sorted(results["summary"], key=lambda r: (order.index(r["model"]), r["n_train"], r["epochs"], r["lr"])):
    sd = f" ({r['val_acc_sd']:.3f})" if r["val_acc_sd"] is not None else ""
    mark = "best" if r is best[r["model"]] else ""
    lines.append(f"| {r['model']} | {r['n_train']} | {r['epochs']:g} | {r['lr']:g} | {r['n_fit']} / {r['n_val']} | "
                 f"{r['val_acc']:.3f}{sd} | {r['val_auroc']:.3f} | {mark} |")
  shared = chosen["shared"]
  lines += ["", f"Chosen (one n_train and epochs for every model): n_train={shared['n_train']}, "
            f"epochs={shared['epochs']:g}; " + ", ".join(f"{m} lr {shared['lr'][m]:g} (val acc "
                                                        f"{shared['val_acc'][m]:.3f})" for m in order) + ".", "",
            "Run the sweep with these settings:", "", f"    {overrides(chosen)}", ""]
  return "\n".join(lines)


def run(config: ml_collections.ConfigDict, workdir: artifacts.PathLike, *, force: bool = False) -> dict[str, Any]:
  """Every model at every grid point for every search seed; writes search.json and search.md."""
  start = time.time()
  config_check.check(config)
  points = grid(config)
  order = list(config.model_order) or list(config.models.keys())
  missing = [m for m in order if m not in config.models]
  if missing:
    raise UserError(f"config.model_order names {missing}, which config.models does not define")
  with workdir_lib.claim(workdir):
    return _run(config, workdir, force=force, start=start, points=points, order=order)


def _run(config: ml_collections.ConfigDict, workdir: artifacts.PathLike, *, force: bool, start: float,
         points: list[dict[str, Any]], order: list[str]) -> dict[str, Any]:
  rows, trained = [], 0
  for name in order:
    for point in points:
      ctx = Context(point_config(config, point, name), workdir, force=force)
      for seed in config.search.seeds:
        rows.append(validation_fit(ctx, name, ctx.load_data(seed)).result)
      trained += ctx.trained_stages
      ctx.tracker.close()
  summary = summarize(rows)
  results = {"task": config.task, "model_order": order, "val_frac": config.search.val_frac,
             "seeds": list(config.search.seeds), "grid": points, "rows": rows, "summary": summary,
             "chosen": choose(summary, order), "trained_stages": trained, "wall_s": time.time() - start}
  results["overrides"] = overrides(results["chosen"])
  results = redaction.redact(results)
  out = artifacts.as_path(workdir)

  def write() -> None:
    artifacts.write_json(out / "search.json", results, indent=1, default=str)
    artifacts.write_file(out / "search.md", markdown(results))

  artifacts.on_process_0(write, "write search.json and search.md")
  return results
