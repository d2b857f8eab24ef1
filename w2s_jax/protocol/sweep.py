"""A sweep: plan the stages a config asks for, then run them, seed by seed, and write the results.

For each seed: half A / half B / test (context.load_data); every model's ground-truth run
(the weak number, the ceiling, the weak labels); for each (weak, strong) pair and each
recipe of `config.methods`, the student(s); for each chain and relabelling, the chain's
students. Every stage is cached (a rerun loads it; an interrupted one resumes), so a plan
costs only what is not yet done. `plan` checks the whole config before anything trains.
"""

import dataclasses
import time
from typing import Any

import ml_collections
import numpy as np

from w2s_jax import artifacts, config_check, diagnostics, methods as methods_lib, redaction, report, workdir as workdir_lib
from w2s_jax.errors import UserError
from w2s_jax.methods import Recipe
from w2s_jax.methods.rounds import RELABELLINGS
from w2s_jax.data import tasks
from w2s_jax.protocol import bootstrap, pgr, prompting as prompting_lib
from w2s_jax.protocol.context import Context, SeedData, model_size, model_specs
from w2s_jax.protocol.ground_truth import ground_truth
from w2s_jax.protocol.weak_labels import supervision
from w2s_jax.train.fit import softmax


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


@dataclasses.dataclass(frozen=True)
class Plan:
  """What a config asks for (per seed); `describe()` says it in words."""
  seeds: tuple[int, ...]
  model_order: tuple[str, ...]
  recipes: tuple[Recipe, ...]
  pairs: tuple[tuple[str, str], ...]
  chains: tuple[tuple[str, ...], ...]
  chain_relabel: tuple[str, ...]

  @property
  def ground_truth_models(self) -> list[str]:
    used = {n for pair in self.pairs for n in pair} | {n for chain in self.chains for n in chain}
    return [n for n in self.model_order if n in used]

  def describe(self) -> list[str]:
    return [f"seeds {list(self.seeds)}; ground truth: {', '.join(self.ground_truth_models)}",
            *(f"students {w} -> {s}: {', '.join(r.name for r in self.recipes)}" for w, s in self.pairs),
            *(f"chain {'>'.join(c)} ({', '.join(self.chain_relabel)})" for c in self.chains)]


def plan(config: ml_collections.ConfigDict) -> Plan:
  config_check.check(config)
  models = model_specs(config)
  if not models:
    raise UserError("config.models is empty; name at least a weak and a strong model")
  names = list(config.model_order)
  unknown = [n for n in names if n not in models]
  if not names or unknown or len(set(names)) != len(names):
    raise UserError(f"config.model_order {tuple(names)} must list each model of config.models "
                    f"{sorted(models)} once, weakest first")
  chains = tuple(tuple(c.split(">")) for c in config.chains)
  for chain in chains:
    if len(chain) < 3 or any(n not in models for n in chain):
      raise UserError(f"chain {'>'.join(chain)!r} must name 3 or more models of config.models, "
                      "weakest first, e.g. 'gpt2>gpt2_medium>gpt2_large'")
  bad = [r for r in config.chain_relabel if r not in RELABELLINGS]
  if bad or (chains and not config.chain_relabel):
    raise UserError(f"config.chain_relabel={tuple(config.chain_relabel)} must name one or more of {RELABELLINGS}")
  if not config.methods:
    raise UserError("config.methods is empty; name at least one method, e.g. ('xent',)")
  options = config.method_options.to_dict()
  recipes = tuple(methods_lib.resolve(spec, options) for spec in config.methods)
  for recipe in recipes:
    _check_options(recipe, models)
  if not config.report.min_gap_examples >= 0:
    raise UserError(f"config.report.min_gap_examples={config.report.min_gap_examples} must be >= 0 "
                    "(test examples by which the ceiling must beat the weak model for PGR to be defined)")
  return Plan(tuple(config.seeds), tuple(names), recipes, tuple(resolve_pairs(config, names)), chains,
              tuple(config.chain_relabel))


def _check_options(recipe: Recipe, models: dict) -> None:
  """Options are checked here, before any stage trains, not when the first student reaches them."""
  from w2s_jax.train import losses
  losses.get_loss(recipe["loss"].impl, **recipe.options_of("loss"))
  members = recipe["supervisor"].impl("weak", **recipe.options_of("supervisor"))
  missing = [m for m, _ in members if m != "weak" and m not in models]
  if missing:
    raise UserError(f"method {recipe.name!r}: supervisor models {missing} are not in config.models")
  if recipe["selection"].impl.holds_out:
    recipe["selection"].impl.check(recipe["selection"].name, **recipe.options_of("selection"))
  recipe["rounds"].impl.students(recipe["rounds"].name, **recipe.options_of("rounds"))
  recipe["examples"].impl(np.full((4, 2), 0.5, np.float32), **recipe.options_of("examples"))


def _supervisor_metrics(sup, data: SeedData) -> dict[str, Any]:
  return {"name": sup.name, **pgr.test_metrics(sup.test_logits, data.task.test)}


def _against_supervisor(student, sup, data: SeedData) -> dict[str, float]:
  """A later round's imitation and misfit measured against the *first* supervisor (the weak
  model), as for a one-student recipe: its own supervisor is the previous student, which it
  copies almost exactly. Misfit: against the weak soft labels of all of half B."""
  test_labels = np.array([e.label for e in data.task.test], np.int32)
  return {**diagnostics.imitation(student.arrays["test_logits"], sup.test_logits, test_labels),
          **diagnostics.misfit(student.arrays["half_b_logits"], softmax(sup.half_b_logits))}


def model_rows(ctx: Context, p: Plan, data: SeedData, gt: dict[str, Any]) -> list[dict[str, Any]]:
  """Per model of this seed: its fine-tuned test accuracy beside its k-shot prompting (decoders), and
  for a multiple-choice task how often its greedy continuation is no candidate; for chess, the
  model-free baselines as a row of their own."""
  rows = []
  for name in p.ground_truth_models:
    row = {"model": name, "seed": data.seed, "finetuned_acc": gt[name].result["acc"],
           "finetuned_auroc": gt[name].result["auroc"],
           "greedy_not_candidate": gt[name].result.get("greedy_not_candidate")}
    if ctx.config.prompting.shots and prompting_lib.is_decoder(ctx, name):
      for shots in ctx.config.prompting.shots:
        done = prompting_lib.prompting(ctx, name, data, int(shots)).result
        row[f"{shots}_shot_acc"], row[f"{shots}_shot_auroc"] = done["acc"], done["auroc"]
    rows.append(row)
  if tasks.is_chess_task(ctx.config.task):
    from w2s_jax.data import chess
    rows.append({"model": "(no model)", "seed": data.seed, "chance_acc": chess.chance(data.task.test),
                 "capture_or_check_acc": chess.capture_or_check_baseline(data.task.test)})
  return rows


def run_seed(ctx: Context, p: Plan, data: SeedData) -> tuple[list[dict], list[dict], list[dict]]:
  """The runs, chain rows and model rows of one seed."""
  min_gap_examples = ctx.config.report.min_gap_examples
  if ctx.config.prompting.shots:
    prompting_lib.check_task(data)  # before anything trains, not after
  gt = {name: ground_truth(ctx, name, data) for name in p.ground_truth_models}
  runs, chains = [], []
  for weak, strong in p.pairs:
    for recipe in p.recipes:
      sup = supervision(ctx, recipe, weak, data)
      n_students, relabel = recipe["rounds"].impl.students(recipe["rounds"].name, **recipe.options_of("rounds"))
      students = bootstrap.in_turn(ctx, [strong] * n_students, recipe, data, sup, relabel)
      rounds, last = None, students[-1].result
      if n_students > 1:
        rounds = [{"acc": s.result["acc"], "auroc": s.result["auroc"], "n_fit": s.result["n_fit"],
                   **{k: s.result[k] for k in report.DIAGNOSTIC_FIELDS}} for s in students]
        last = {**last, **_against_supervisor(students[-1], sup, data)}
      runs.append(pgr.run_row(weak, strong, recipe, data.seed, _supervisor_metrics(sup, data), gt[strong].result,
                              last, min_gap_examples=min_gap_examples, single_weak=gt[weak].result, rounds=rounds))
      ctx.tracker.summary(f"weak_to_strong:{weak}->{strong}:{recipe.name}:seed{data.seed}", runs[-1])
  for names in p.chains:
    for recipe in p.recipes:
      if recipe["rounds"].name != methods_lib.DEFAULTS["rounds"]:
        continue  # a chain is itself a sequence of students
      sup = supervision(ctx, recipe, names[0], data)
      direct = bootstrap.in_turn(ctx, [names[-1]], recipe, data, sup, "in_sample")[0]
      for relabel in p.chain_relabel:
        students = bootstrap.in_turn(ctx, list(names[1:]), recipe, data, sup, relabel)
        chains.append(pgr.chain_row(list(names), recipe, relabel, data.seed, _supervisor_metrics(sup, data),
                                    gt[names[-1]].result, [s.result for s in students], direct.result,
                                    min_gap_examples=min_gap_examples))
  return runs, chains, model_rows(ctx, p, data, gt)


def run(config: ml_collections.ConfigDict, workdir: artifacts.PathLike, *, force: bool = False) -> dict[str, Any]:
  """Plan, run every seed, write results.json / results.md / plots; returns the results.

  `workdir`: a local directory or gs://bucket/path, shared by every host of a multi-host run (`workdir.claim`
  refuses one they do not share)."""
  start = time.time()
  p = plan(config)  # a bad config is refused before the workdir is touched
  with workdir_lib.claim(workdir):
    return _run(config, p, workdir, force=force, start=start)


def results_of(runs: list[dict], chains: list[dict], models: list[dict], *, task: str, model_order: list[str],
               plan: list[str], model_sizes: dict[str, Any], min_gap_examples: float, baseline: str) -> dict[str, Any]:
  """results.json's content from the per-run, per-chain and per-model rows: every summary is computed here,
  from those rows alone, so a merge of seeds run apart (w2s_jax/merge.py) summarizes exactly as one run would."""
  return {"task": task, "model_order": model_order, "plan": plan, "runs": runs, "summary": report.summarize(runs),
          "oai_summary": report.summarize_oai(runs, min_gap_examples=min_gap_examples),
          "comparison": report.compare_methods(runs, baseline=baseline), "comparison_baseline": baseline,
          "pair_gaps": report.pair_gaps(runs, method=baseline, min_gap_examples=min_gap_examples),
          "model_sizes": model_sizes, "min_gap_examples": min_gap_examples, "chains": chains,
          "chain_summary": report.summarize_chains(chains), "models": models,
          "model_summary": report.summarize_models(models)}


def _run(config: ml_collections.ConfigDict, p: Plan, workdir: artifacts.PathLike, *, force: bool,
         start: float) -> dict[str, Any]:
  ctx = Context(config, workdir, force=force)
  artifacts.on_process_0(lambda: artifacts.write_json(ctx.workdir / "config.json", redaction.redact(config.to_dict()),
                                                      indent=1, default=str), "write config.json")
  runs, chains, models = [], [], []
  for seed in p.seeds:
    seed_runs, seed_chains, seed_models = run_seed(ctx, p, ctx.load_data(seed))
    runs += seed_runs
    chains += seed_chains
    models += seed_models
  names = [r.name for r in p.recipes]
  results = {**results_of(runs, chains, models, task=config.task, model_order=list(p.model_order), plan=p.describe(),
                          model_sizes={name: model_size(ctx.models[name].checkpoint) for name in p.ground_truth_models},
                          min_gap_examples=config.report.min_gap_examples,
                          baseline="xent" if "xent" in names else names[0]),
             "wall_s": time.time() - start, "trained_stages": ctx.trained_stages, "workdir": str(ctx.workdir)}
  # Every process returns once the report is written: a caller on any host may read it.
  artifacts.on_process_0(lambda: report.write(redaction.redact(results), ctx.workdir), "write the report")
  ctx.tracker.close()
  return results
