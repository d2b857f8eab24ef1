"""Merge the workdirs of one sweep run over disjoint seeds into one result (docs/reports.md).

    python launch/merge.py OUT WORKDIR WORKDIR [...]

A seed is independent of the others: it draws its own A/B split, head init and batch order, and
each of its stages is a deterministic function of the config and the seed. So the seeds of one
sweep can run on different machines, or across sessions too short for all of them, and be merged
afterwards. The merged results.json holds every run, chain and model row of its sources, ordered
by seed, and summaries computed from those rows exactly as one run over all the seeds computes
them (sweep.results_of). `launch/report.py OUT` then builds its figures.

The sources must be the same sweep: their configs may differ only in the keys of `MAY_DIFFER`
(which seeds, where logs go, the device mesh, where tfds data lives), and no seed may appear twice.
"""

import json
from typing import Any

from w2s_jax import artifacts, report, stage_keys
from w2s_jax.errors import UserError
from w2s_jax.protocol import sweep

# Config keys that say where or how a sweep ran, not what it computed.
MAY_DIFFER = ("seeds", "wandb", "mesh", "tfds_data_dir", "search")


def _load(workdir: artifacts.PathLike) -> tuple[artifacts.epath.Path, dict[str, Any], dict[str, Any]]:
  workdir = artifacts.as_path(workdir)
  paths = [workdir / "results.json", workdir / "config.json"]
  for path in paths:
    if not path.exists():
      raise UserError(f"{path} does not exist: each workdir to merge must hold a finished sweep "
                      f"(run launch/main.py with --workdir={workdir} to finish it)")
  results, config = (json.loads(p.read_text()) for p in paths)
  if not results.get("runs"):
    raise UserError(f"{paths[0]} holds no weak-to-strong runs: nothing to merge")
  return workdir, results, config


def _differences(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
  """Dotted keys where two config dicts differ."""
  a, b = stage_keys.flatten(a), stage_keys.flatten(b)
  return sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))


def _by_seed(rows: list[dict[str, Any]], order: dict[Any, int]) -> list[dict[str, Any]]:
  # Stable: within a seed, rows keep the order their sweep wrote them in. The bootstrap CIs resample
  # by position, so this order is what makes the merge's CIs equal to one run's over ascending seeds.
  return sorted(rows, key=lambda row: order[row["seed"]])


def merge(workdirs: list[artifacts.PathLike], out: artifacts.PathLike) -> dict[str, Any]:
  """Write OUT/results.json, results.md, plots, config.json and metrics.jsonl; returns the merged results."""
  if len(workdirs) < 2:
    raise UserError(f"merge needs 2 or more workdirs, got {len(workdirs)}")
  sources = [_load(w) for w in workdirs]
  first_dir, first, first_config = sources[0]
  seen: dict[Any, artifacts.epath.Path] = {}
  for workdir, results, config in sources:
    differ = [k for k in _differences(first_config, config) if k.split(".")[0] not in MAY_DIFFER]
    if differ:
      raise UserError(f"{workdir} ran a different sweep than {first_dir}: config {', '.join(differ[:5])} "
                      f"differ{'s' if len(differ) == 1 else ''}; only splits of one sweep over seeds merge")
    for seed in config["seeds"]:
      if seed in seen:
        raise UserError(f"seed {seed} is in both {seen[seed]} and {workdir}: give each seed's workdir once")
      seen[seed] = workdir
  seeds = sorted(seen)
  order = {seed: i for i, seed in enumerate(seeds)}
  runs, chains, models = ([row for _, r, _ in sources for row in r[field]] for field in ("runs", "chains", "models"))
  plan = [f"seeds {seeds} (merged from {len(sources)} workdirs); {first['plan'][0].split('; ', 1)[1]}",
          *first["plan"][1:]]
  merged = {**sweep.results_of(_by_seed(runs, order), _by_seed(chains, order), _by_seed(models, order),
                               task=first["task"], model_order=first["model_order"], plan=plan,
                               model_sizes=first["model_sizes"], min_gap_examples=first["min_gap_examples"],
                               baseline=first["comparison_baseline"]),
            # The machine time of every source: each seed was paid for once, wherever it ran.
            "wall_s": sum(r["wall_s"] for _, r, _ in sources),
            "trained_stages": sum(r["trained_stages"] for _, r, _ in sources),
            "workdir": str(artifacts.as_path(out)),
            "merged_from": [{"workdir": str(w), "seeds": c["seeds"], "wall_s": r["wall_s"]} for w, r, c in sources]}
  out = artifacts.as_path(out)
  out.mkdir(parents=True, exist_ok=True)
  artifacts.write_json(out / "config.json", {**first_config, "seeds": seeds}, indent=1)
  # The training curves, so that launch/report.py OUT draws them: stage names carry their seed.
  logs = [w / "metrics.jsonl" for w, _, _ in sources]
  artifacts.write_file(out / "metrics.jsonl", "".join(p.read_text() for p in logs if p.exists()))
  report.write(merged, out)
  return merged
