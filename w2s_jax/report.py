"""Results: PGR per run, summaries over seeds, a ranked comparison of methods, results.json / results.md / PNGs.

PGR = (w2s − weak) / (strong ceiling − weak), on accuracy and on ROC AUC. It is undefined (None; null in JSON,
"n/a" in the tables) where the ceiling is not clearly above the weak model, strong − weak < `min_gap`: a
negative gap would flip PGR's sign and a tiny one makes the ratio measure noise. The minimum gap is counted in
test examples (`min_gap_examples / n_test`); see `DEFAULT_MIN_GAP_EXAMPLES`.

Two aggregations over seeds are reported:

* `summarize` (our choice, the main table): each seed's PGR uses that seed's own weak and ceiling numbers, and
  a (weak, strong, method) row gives the median over seeds with min, max, mean, std and a 95% bootstrap CI of the
  mean. Seeds whose PGR is undefined are left out and counted (`n_left_out`).
* `summarize_oai` (how the paper's code does it, openai/weak-to-strong notebooks/Plotting.ipynb): the weak and
  ceiling accuracies are averaged over seeds first, each run's PGR is taken against those averages, and the
  median is over all pairs and seeds together, one number per method. The two can differ, so both are written.

`compare_methods` ranks the methods of each (weak, strong) pair by median PGR and measures each against a
baseline method seed by seed (the same seed shares the data split and the weak model, so the paired difference
is less noisy than two separate medians).

A method is a student's training recipe ("xent", "xent+weak_auroc", "ensemble+xent", ...). A run whose method used
ground truth (`oracle`, e.g. checkpoint selection against true labels) is for analysis only and is marked
" (ORACLE)" in every table and plot label.
"""

import math
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from w2s_jax import artifacts

# A gap of 10 test examples (1 point of accuracy on 1,000 examples) is the smallest strong − weak gap that we
# divide by. A test accuracy near 80% has a binomial standard error of sqrt(n·p·(1−p)) ≈ 13 examples on
# n = 1,000, so a gap of a few examples is within noise and its ratio mostly measures that noise (and can flip
# sign). Counting in examples rather than in a fixed fraction lets the floor shrink as the test set grows, as
# the noise of a fraction does. It is a floor against sign flips and blow-ups, not a significance test.
# Configurable: the pipeline reads `config.report.min_gap_examples`.
DEFAULT_MIN_GAP_EXAMPLES = 10

# Accuracies are k / n_test, so a gap of exactly `min_gap` may come out a rounding error below it in floating
# point; this slack (far below one example of any test set under 10^8 examples) keeps such a gap defined.
_GAP_TOLERANCE = 1e-9

BOOTSTRAP_RESAMPLES = 10_000
BOOTSTRAP_SEED = 0  # fixed, so the same results always give the same interval

GAP_REASON = "ceiling not clearly above weak"
MISSING_REASON = "metric missing"

# What every weak-to-strong run reports about imitation and misfit (w2s_jax/diagnostics.py).
DIAGNOSTIC_FIELDS = ("agreement", "agreement_supervisor_right", "agreement_supervisor_wrong", "supervisor_wrong_frac",
                     "misfit", "misfit_kl")
RUN_FIELDS = ("weak_acc", "strong_acc", "w2s_acc", "pgr", "weak_auroc", "strong_auroc", "w2s_auroc", "pgr_auroc",
              *DIAGNOSTIC_FIELDS)
CHAIN_FIELDS = ("weak_acc", "strong_acc", "w2s_acc", "direct_w2s_acc", "pgr", "direct_pgr",
                "weak_auroc", "strong_auroc", "w2s_auroc", "direct_w2s_auroc", "pgr_auroc", "direct_pgr_auroc")
# PGR field -> the (weak, w2s, strong) fields it is computed from, to say why a value is missing.
PGR_INPUTS = {"pgr": ("weak_acc", "w2s_acc", "strong_acc"), "pgr_auroc": ("weak_auroc", "w2s_auroc", "strong_auroc"),
              "direct_pgr": ("weak_acc", "direct_w2s_acc", "strong_acc"),
              "direct_pgr_auroc": ("weak_auroc", "direct_w2s_auroc", "strong_auroc")}
# What `compare_methods` ranks and pairs against the baseline, and what it reports beside them.
COMPARED_PGRS = ("pgr", "pgr_auroc")
COMPARED_FIELDS = ("w2s_acc", "w2s_auroc", "agreement_supervisor_right", "agreement_supervisor_wrong", "misfit",
                   "n_fit")
ORACLE_MARK = " (ORACLE)"


def min_gap(n_test: int, min_gap_examples: float) -> float:
  """The minimum strong − weak gap, as a fraction, for a test set of `n_test` examples.

  AUROC uses the same fraction: its scale is also [0, 1], and a gap under k / n_test is treated as too small.
  """
  if n_test <= 0:
    raise ValueError(f"n_test must be positive, got {n_test}")
  if min_gap_examples < 0:
    raise ValueError(f"min_gap_examples must be >= 0, got {min_gap_examples}")
  return min_gap_examples / n_test


def _finite(x: Any) -> bool:
  return x is not None and math.isfinite(x)


def pgr(weak: float, w2s: float, strong: float, *, min_gap: float) -> float | None:
  """(w2s − weak) / (strong − weak), or None where strong − weak < min_gap or an input is missing.

  Not abs(gap): a ceiling below the weak model is always undefined, never a sign-flipped ratio. A gap of
  exactly `min_gap` is defined; a zero gap is undefined even with min_gap = 0.
  """
  if not (_finite(w2s) and _gap_clear(weak, strong, min_gap)):
    return None
  return float((w2s - weak) / (strong - weak))


def _gap_clear(weak: float | None, strong: float | None, min_gap: float) -> bool:
  """Is the ceiling clearly above the weak model: strong − weak >= min_gap (and > 0)?"""
  if not (_finite(weak) and _finite(strong)):
    return False
  gap = strong - weak
  return gap > 0 and gap >= min_gap - _GAP_TOLERANCE


def _bootstrap_ci(v: np.ndarray) -> list[float]:
  """95% percentile-bootstrap CI of the mean; deterministic (fixed generator), [v, v] for one value."""
  if len(v) == 1:
    return [float(v[0]), float(v[0])]
  rng = np.random.default_rng(BOOTSTRAP_SEED)
  means = v[rng.integers(0, len(v), size=(BOOTSTRAP_RESAMPLES, len(v)))].mean(axis=1)
  lo, hi = np.percentile(means, [2.5, 97.5])
  # A resampled mean lies in [min, max]; clip the float rounding of summing equal values.
  return [float(np.clip(lo, v.min(), v.max())), float(np.clip(hi, v.min(), v.max()))]


def _spread(values: list[Any]) -> dict[str, Any]:
  """Median, min, max, mean, std (ddof=1), 95% bootstrap CI of the mean; None/NaN values are counted out."""
  v = np.array([x for x in values if _finite(x)], dtype=np.float64)
  out = {"n": int(len(v)), "n_left_out": len(values) - int(len(v))}
  if len(v) == 0:
    return {"median": None, "min": None, "max": None, "mean": None, "std": None, "ci95": None, **out}
  return {"median": float(np.median(v)), "min": float(v.min()), "max": float(v.max()), "mean": float(v.mean()),
          "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0, "ci95": _bootstrap_ci(v), **out}


def _left_out(group: list[dict[str, Any]], fields: tuple[str, ...]) -> dict[str, list[dict[str, Any]]]:
  """For each PGR field, the seeds whose value is undefined and why (a missing input, else the gap)."""
  out = {}
  for field in fields:
    if field not in PGR_INPUTS:
      continue
    missing = []
    for r in group:
      if not _finite(r.get(field)):
        inputs_ok = all(_finite(r.get(f)) for f in PGR_INPUTS[field])
        missing.append({"seed": r.get("seed"), "reason": GAP_REASON if inputs_ok else MISSING_REASON})
    if missing:
      out[field] = missing
  return out


def _group(rows: list[dict[str, Any]], keys: tuple[str, ...]) -> dict[tuple, list[dict[str, Any]]]:
  """Rows by the values of `keys`, groups in the order they first appear."""
  groups: dict[tuple, list[dict]] = defaultdict(list)
  for row in rows:
    groups[tuple(row[k] for k in keys)].append(row)
  return groups


def _oracle(group: list[dict[str, Any]]) -> bool:
  """Did any run of the group use ground truth? One such seed is enough to make the row analysis-only."""
  return any(bool(r.get("oracle")) for r in group)


def summarize(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
  """One row per (weak, strong, method): each metric's spread over seeds, per-seed PGR (see the module doc)."""
  summary = []
  for (weak, strong, method), group in _group(runs, ("weak", "strong", "method")).items():
    row = {"weak": weak, "strong": strong, "method": method, "oracle": _oracle(group),
           "seeds": [r["seed"] for r in group]}
    for field in RUN_FIELDS:
      row[field] = _spread([r.get(field) for r in group])
    row["left_out"] = _left_out(group, RUN_FIELDS)
    summary.append(row)
  return summary


def summarize_models(models: list[dict[str, Any]]) -> list[dict[str, Any]]:
  """One row per model (and the model-free baselines' row): each numeric field's `_spread` over seeds."""
  groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
  for row in models:
    groups[row["model"]].append(row)
  out = []
  for name, group in groups.items():
    fields = sorted({k for r in group for k in r} - {"model", "seed"})
    out.append({"model": name, "seeds": [r["seed"] for r in group],
                **{f: _spread([r.get(f) for r in group]) for f in fields}})
  return out


def models_markdown(rows: list[dict[str, Any]]) -> str:
  """Each model's fine-tuned accuracy beside its k-shot prompting and, for multiple-choice tasks, how
  often its greedy continuation is not a candidate; model-free baselines (chess) in their own row."""
  shots = sorted({int(k.split("_")[0]) for r in rows for k in r if k.endswith("_shot_acc")})
  # "trained": fine-tuned, or a linear probe under train.linear_probe; either way on half A's ground truth.
  columns = [("finetuned_acc", "trained acc"), *[(f"{k}_shot_acc", f"{k}-shot acc") for k in shots]]
  if any("greedy_not_candidate" in r and r["greedy_not_candidate"]["n"] for r in rows):
    columns.append(("greedy_not_candidate", "greedy not a candidate"))
  if any("chance_acc" in r for r in rows):
    columns += [("chance_acc", "random candidate"), ("capture_or_check_acc", "random capture or check")]
  lines = ["| model | " + " | ".join(label for _, label in columns) + " | seeds |",
           "| --- | " + " | ".join("---" for _ in columns) + " | --- |"]
  for r in rows:
    lines.append(f"| {r['model']} | " + " | ".join(_cell(r.get(f)) for f, _ in columns) + f" | {len(r['seeds'])} |")
  return "\n".join(lines)


def summarize_chains(chains: list[dict[str, Any]]) -> list[dict[str, Any]]:
  """One row per (chain, method, relabel): the chain's final numbers and PGR vs the direct weak->strong run."""
  return [{"chain": chain, "method": method, "relabel": relabel, "oracle": _oracle(group),
           "seeds": [c["seed"] for c in group],
           **{f: _spread([c.get(f) for c in group]) for f in CHAIN_FIELDS},
           "left_out": _left_out(group, CHAIN_FIELDS)}
          for (chain, method, relabel), group in _group(chains, ("chain", "method", "relabel")).items()]


def _seed_mean(group: list[dict[str, Any]], field: str) -> float | None:
  """Mean over seeds of a per-seed number (one value per seed: the group's runs of a seed share it)."""
  per_seed = {r["seed"]: r.get(field) for r in group if _finite(r.get(field))}
  return float(np.mean(list(per_seed.values()))) if per_seed else None


def summarize_oai(runs: list[dict[str, Any]], *,
                  min_gap_examples: float = DEFAULT_MIN_GAP_EXAMPLES) -> list[dict[str, Any]]:
  """PGR aggregated as the paper's code does: one median per method, on accuracy and on AUROC.

  For each (weak, strong) pair: average the ceiling over the pair's seeds and the supervisor's (weak) numbers over
  the method's seeds of the pair (one value per seed; they differ by method for an ensemble supervisor); a pair
  whose averaged gap is under `min_gap(n_test, min_gap_examples)` (n_test: the smallest of its runs', the
  strictest floor) is left out with all the method's runs on it. Each remaining run's PGR is (its w2s − mean
  weak) / (mean ceiling − mean weak); a run whose w2s number is missing is left out. The median is over all those
  runs, all pairs and seeds together, per method. The paper's notebook averages per model over its seeds, the
  same numbers when every pair ran every seed, and leaves out gaps <= 0 only (we use the same floor as
  `summarize`).

  Returns one row per method: {"method", "oracle", "min_gap_examples", "pgr": stats, "pgr_auroc": stats},
  stats being {"median" (None if no run is left), "n" (runs used), "n_left_out" (runs left out), "n_pairs",
  "n_pairs_left_out", "left_out_pairs" (["weak->strong", ...])}.
  """
  pairs = _group(runs, ("weak", "strong"))
  rows = []
  for (method,), method_runs in _group(runs, ("method",)).items():
    row: dict[str, Any] = {"method": method, "oracle": _oracle(method_runs), "min_gap_examples": min_gap_examples}
    for field, (weak_f, w2s_f, strong_f) in (("pgr", PGR_INPUTS["pgr"]), ("pgr_auroc", PGR_INPUTS["pgr_auroc"])):
      values, n_left_out, n_pairs, left_out_pairs = [], 0, 0, []
      for (weak, strong), group in pairs.items():
        mine = [r for r in group if r["method"] == method]
        if not mine:
          continue
        # The supervisor's numbers are the method's own (an ensemble supervisor differs from the single weak
        # model); the ceiling is shared by every method of the pair.
        weak_mean, strong_mean = _seed_mean(mine, weak_f), _seed_mean(group, strong_f)
        gap_floor = min_gap(min(r["n_test"] for r in group), min_gap_examples)
        if not _gap_clear(weak_mean, strong_mean, gap_floor):
          left_out_pairs.append(f"{weak}->{strong}")
          n_left_out += len(mine)
          continue
        n_pairs += 1
        for r in mine:
          value = pgr(weak_mean, r.get(w2s_f), strong_mean, min_gap=gap_floor)
          if value is None:
            n_left_out += 1
          else:
            values.append(value)
      row[field] = {"median": float(np.median(values)) if values else None, "n": len(values),
                    "n_left_out": n_left_out, "n_pairs": n_pairs, "n_pairs_left_out": len(left_out_pairs),
                    "left_out_pairs": left_out_pairs}
    rows.append(row)
  return rows


def _per_seed(group: list[dict[str, Any]], field: str) -> dict[Any, float]:
  """seed -> the run's defined value of `field` (undefined seeds absent)."""
  return {r["seed"]: float(r[field]) for r in group if _finite(r.get(field))}


def _paired_difference(group: list[dict[str, Any]], baseline: list[dict[str, Any]] | None,
                       field: str) -> dict[str, Any] | None:
  """method − baseline seed by seed, over the seeds where both are defined; None without a baseline.

  {"mean", "ci95" (95% bootstrap CI of the mean), "wins" (seeds where the method is strictly above), "n" (seeds
  paired), "seeds"}; mean and ci95 are None when no seed pairs.
  """
  if baseline is None:
    return None
  mine, theirs = _per_seed(group, field), _per_seed(baseline, field)
  seeds = [seed for seed in mine if seed in theirs]
  if not seeds:
    return {"mean": None, "ci95": None, "wins": 0, "n": 0, "seeds": []}
  diffs = np.array([mine[seed] - theirs[seed] for seed in seeds])
  return {"mean": float(diffs.mean()), "ci95": _bootstrap_ci(diffs), "wins": int((diffs > 0).sum()),
          "n": len(seeds), "seeds": seeds}


def _check_one_run_per_seed(group: list[dict[str, Any]]) -> None:
  """Pairing by seed needs one run per seed; a repeated seed would silently pair only one of them."""
  seeds = [r["seed"] for r in group]
  if len(set(seeds)) != len(seeds):
    r = group[0]
    raise ValueError(f"{r['method']} on {r['weak']}->{r['strong']} has a seed more than once: {seeds}")


def _method_row(group: list[dict[str, Any]], baseline: list[dict[str, Any]] | None) -> dict[str, Any]:
  """One method of one pair: PGR spreads, paired differences against `baseline` (None: none), medians beside."""
  first = group[0]
  supervisors = list(dict.fromkeys(r["supervisor"] for r in group if r.get("supervisor") is not None))
  row = {"weak": first["weak"], "strong": first["strong"], "method": first["method"], "oracle": _oracle(group),
         "supervisor": ", ".join(supervisors) or None, "seeds": [r["seed"] for r in group]}
  for field in COMPARED_PGRS:
    row[field] = _spread([r.get(field) for r in group])
    row[f"{field}_vs_baseline"] = _paired_difference(group, baseline, field)
  for field in COMPARED_FIELDS:
    row[field] = _spread([r.get(field) for r in group])
  return row


def _rank_key(row: dict[str, Any]) -> tuple:
  """Highest median PGR first; methods whose PGR is undefined on every seed last; then by name, for ties."""
  median = row["pgr"]["median"]
  return (median is None, -median if median is not None else 0.0, row["method"])


def compare_methods(runs: list[dict[str, Any]], *, baseline: str = "xent") -> list[dict[str, Any]]:
  """Methods ranked by median PGR within each (weak, strong) pair, each paired seed by seed with `baseline`.

  One row per (weak, strong, method), pairs in the order they first appear, methods in rank order:
  {"weak", "strong", "method", "rank" (1 = best in its pair), "oracle", "supervisor" (None if not recorded),
  "seeds", "pgr", "pgr_auroc" (the `_spread` stats; undefined seeds left out and counted in n_left_out),
  "pgr_vs_baseline", "pgr_auroc_vs_baseline" (`_paired_difference`; None for the baseline itself and where the
  pair has no `baseline` run), and the `_spread` stats of w2s_acc, w2s_auroc, agreement_supervisor_right,
  agreement_supervisor_wrong, misfit, n_fit}.
  """
  rows = []
  for pair_runs in _group(runs, ("weak", "strong")).values():
    methods = _group(pair_runs, ("method",))
    for group in methods.values():
      _check_one_run_per_seed(group)
    base = methods.get((baseline,))
    ranked = sorted((_method_row(group, None if method == baseline else base)
                     for (method,), group in methods.items()), key=_rank_key)
    rows += [{**row, "rank": rank} for rank, row in enumerate(ranked, start=1)]
  return rows


def _nan_to_none(x: Any) -> Any:
  """JSON has no NaN: non-finite floats become null (numpy scalars become Python numbers on the way)."""
  if isinstance(x, np.integer):
    return int(x)
  if isinstance(x, (float, np.floating)):
    return float(x) if np.isfinite(x) else None
  if isinstance(x, dict):
    return {k: _nan_to_none(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [_nan_to_none(v) for v in x]
  return x


def _num(x: float) -> str:
  """Three decimals with a true minus sign (−), as the docs print numbers."""
  return f"{x:.3f}".replace("-", "−")


def _signed(x: float) -> str:
  """A difference: always signed (+0.100, −0.020), so its direction is read at a glance."""
  return f"{x:+.3f}".replace("-", "−")


def _cell(s: dict[str, Any] | None) -> str:
  """median [min, max]; the value alone for one seed; n/a where no seed has a value."""
  if not s or not s.get("n"):
    return "n/a"
  return f"{_num(s['median'])} [{_num(s['min'])}, {_num(s['max'])}]" if s["n"] > 1 else _num(s["median"])


def _mean_cell(s: dict[str, Any] | None) -> str:
  """mean [95% bootstrap CI]; the value alone for one seed (its CI is the value)."""
  if not s or not s.get("n"):
    return "n/a"
  return f"{_num(s['mean'])} [{_num(s['ci95'][0])}, {_num(s['ci95'][1])}]" if s["n"] > 1 else _num(s["mean"])


def _counted_cell(s: dict[str, Any]) -> str:
  """_cell, saying on how many seeds it stands where some were left out: "0.400 [0.200, 0.600] (2 of 3 seeds)"."""
  if not s["n_left_out"]:
    return _cell(s)
  return f"{_cell(s)} ({s['n']} of {s['n'] + s['n_left_out']} seeds)"


def _paired_cell(d: dict[str, Any]) -> str:
  """mean difference [95% CI], wins / seeds paired: "+0.100 [+0.030, +0.170], 7/10"; the CI alone is dropped
  for one seed."""
  if not d["n"]:
    return "n/a (no seed pairs)"
  ci = f" [{_signed(d['ci95'][0])}, {_signed(d['ci95'][1])}]" if d["n"] > 1 else ""
  return f"{_signed(d['mean'])}{ci}, {d['wins']}/{d['n']}"


def _label(row: dict[str, Any]) -> str:
  """The row's method, marked where it used ground truth."""
  return row["method"] + (ORACLE_MARK if row.get("oracle") else "")


def _notes(row: dict[str, Any], labels: dict[str, str]) -> str:
  """e.g. "PGR: 2 of 3 seeds; 1 left out: ceiling not clearly above weak"; empty when nothing was left out."""
  notes = []
  for field, label in labels.items():
    missing = row.get("left_out", {}).get(field) or []
    s = row.get(field) or {}
    if not missing and not s.get("n_left_out"):
      continue
    n_out = len(missing) or s.get("n_left_out", 0)
    reasons = ", ".join(dict.fromkeys(m["reason"] for m in missing)) or GAP_REASON
    notes.append(f"{label}: {s.get('n', 0)} of {len(row['seeds'])} seeds; {n_out} left out: {reasons}")
  return "; ".join(notes)


def _footnote(results: dict[str, Any]) -> str:
  k = results.get("min_gap_examples")
  n_tests = sorted({r["n_test"] for r in results.get("runs", []) if r.get("n_test")})
  if k is None:
    floor = "the minimum gap was not recorded in these results"
  else:
    floor = f"n/a where strong − weak < {k:g} test examples ({k:g} / n_test"
    floor += f"; {', '.join(f'{k / n:.4f} for n_test = {n:,}' for n in n_tests)})" if n_tests else ")"
  return (f"PGR = (w2s − weak) / (strong ceiling − weak); {floor}. The same fraction is used for AUROC. "
          "Rows: median [min, max] over seeds, each seed's PGR against its own weak and ceiling; means with a "
          "95% percentile-bootstrap CI over seeds. Per-run numbers are in results.json.")


def _any_oracle(results: dict[str, Any]) -> bool:
  tables = ("runs", "chains", "summary", "chain_summary", "oai_summary", "comparison")
  return any(r.get("oracle") for table in tables for r in results.get(table) or [])


def comparison_markdown(rows: list[dict[str, Any]], *, baseline: str | None) -> str:
  """`compare_methods` rows as one ranked table per (weak, strong) pair.

  The "vs baseline" columns appear only in a pair where `baseline` ran; the baseline's own cells say so.
  """
  intro = "Ranked by median PGR over seeds; cells: median [min, max]."
  if baseline is not None:
    intro += (f" vs baseline ({baseline}): method − baseline on the same seed, mean [95% bootstrap CI], and in how "
              "many of the seeds where both are defined the method is above the baseline.")
  lines = [intro]
  for (weak, strong), pair_rows in _group(rows, ("weak", "strong")).items():
    paired = baseline is not None and any(r["method"] == baseline for r in pair_rows)
    header = ["rank", "method", "w2s acc", "PGR", *(["PGR vs baseline"] if paired else []), "PGR (AUROC)",
              *(["PGR (AUROC) vs baseline"] if paired else []), "agreement, supervisor right / wrong", "misfit"]
    lines += ["", f"**{weak} → {strong}**", "", "| " + " | ".join(header) + " |",
              "| " + " | ".join(["---"] * len(header)) + " |"]
    lines += [_comparison_line(row, baseline if paired else None) for row in pair_rows]
  return "\n".join(lines) + "\n"


def _comparison_line(row: dict[str, Any], baseline: str | None) -> str:
  """One table line; the paired cells only when `baseline` (not None) ran in this row's pair."""
  def versus(field: str) -> list[str]:
    if baseline is None:
      return []
    d = row[f"{field}_vs_baseline"]
    return ["baseline" if row["method"] == baseline else "n/a" if d is None else _paired_cell(d)]

  cells = [str(row["rank"]), _label(row), _cell(row["w2s_acc"]), _counted_cell(row["pgr"]), *versus("pgr"),
           _counted_cell(row["pgr_auroc"]), *versus("pgr_auroc"),
           f"{_cell(row['agreement_supervisor_right'])} / {_cell(row['agreement_supervisor_wrong'])}",
           _cell(row["misfit"])]
  return "| " + " | ".join(cells) + " |"


def markdown(results: dict[str, Any]) -> str:
  wall = results.get("wall_s")
  lines = [f"# Weak-to-strong results: {results.get('task', '')}", ""]
  if _any_oracle(results):
    # Said once here, and every oracle row is marked too: a reader who skips this note still sees the mark.
    lines += [f"**ORACLE**: rows marked{ORACLE_MARK} come from methods that used ground truth (e.g. checkpoint "
              "selection against true labels); they are for analysis only, not weak-to-strong results.", ""]
  lines += [(f"wall time: {wall:.1f} s; " if wall is not None else "") +
            "cells: median [min, max] over seeds; mean [95% bootstrap CI]", "",
            "| weak | strong | method | weak acc | strong ceiling | w2s acc | PGR | PGR mean [95% CI] | PGR (AUROC) | "
            "PGR (AUROC) mean [95% CI] | agreement | seeds | left out |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
  pgr_labels = {"pgr": "PGR", "pgr_auroc": "PGR (AUROC)"}
  for row in results["summary"]:
    lines.append(f"| {row['weak']} | {row['strong']} | {_label(row)} | {_cell(row['weak_acc'])} | "
                 f"{_cell(row['strong_acc'])} | {_cell(row['w2s_acc'])} | {_cell(row['pgr'])} | "
                 f"{_mean_cell(row['pgr'])} | {_cell(row['pgr_auroc'])} | {_mean_cell(row['pgr_auroc'])} | "
                 f"{_cell(row['agreement'])} | {len(row['seeds'])} | {_notes(row, pgr_labels)} |")
  if results["summary"]:
    lines += ["", "Means over seeds [95% bootstrap CI]:", "",
              "| weak | strong | method | weak acc | strong ceiling | w2s acc | agreement |",
              "| --- | --- | --- | --- | --- | --- | --- |"]
    for row in results["summary"]:
      lines.append(f"| {row['weak']} | {row['strong']} | {_label(row)} | {_mean_cell(row['weak_acc'])} | "
                   f"{_mean_cell(row['strong_acc'])} | {_mean_cell(row['w2s_acc'])} | "
                   f"{_mean_cell(row['agreement'])} |")
  if results.get("comparison"):
    lines += ["", "## Methods compared", "",
              comparison_markdown(results["comparison"], baseline=results.get("comparison_baseline")).rstrip("\n")]
  if results["summary"] and "misfit" in results["summary"][0]:
    lines += ["", "## Imitation and misfit", "",
              "Agreement of student and supervisor on the test set, where the supervisor is right and where it is "
              "wrong (a student that only imitates agrees everywhere); misfit: the student's disagreement with the "
              "weak labels it trained on (argmax; KL in nats).", "",
              "| weak | strong | method | agreement | supervisor right | supervisor wrong | misfit | misfit KL |",
              "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for row in results["summary"]:
      lines.append(f"| {row['weak']} | {row['strong']} | {_label(row)} | "
                   + " | ".join(_cell(row[f]) for f in ("agreement", "agreement_supervisor_right",
                                                        "agreement_supervisor_wrong", "misfit", "misfit_kl")) + " |")
  if results.get("oai_summary"):
    lines += ["", "## Aggregated as the paper code does", "",
              "Weak and ceiling averaged over seeds per pair first; each run's PGR against those averages; median "
              "over all pairs and seeds per method. Pairs whose averaged gap is under the minimum are left out.", "",
              "| method | PGR median | runs used | runs left out | PGR (AUROC) median | runs used | runs left out |",
              "| --- | --- | --- | --- | --- | --- | --- |"]

    def oai_cells(s: dict[str, Any]) -> str:
      median = "n/a" if s["median"] is None else _num(s["median"])
      out = str(s["n_left_out"])
      if s["left_out_pairs"]:
        out += f" ({s['n_pairs_left_out']} pair(s), {GAP_REASON}: {', '.join(s['left_out_pairs'])})"
      return f"{median} | {s['n']} | {out}"

    for row in results["oai_summary"]:
      lines.append(f"| {_label(row)} | {oai_cells(row['pgr'])} | {oai_cells(row['pgr_auroc'])} |")
  if results.get("chain_summary"):
    lines += ["", "## Bootstrapping chains", "",
              "relabel: in_sample, each student labels the half B it trained on; held_out, half B is cut into one "
              "part per link, so each student labels examples it never saw.", "",
              "| chain | method | relabel | weak acc | strong ceiling | chain w2s acc | chain PGR | "
              "chain PGR mean [95% CI] | direct w2s acc | direct PGR | direct PGR mean [95% CI] | "
              "chain PGR (AUROC) | direct PGR (AUROC) | left out |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    chain_labels = {"pgr": "chain PGR", "direct_pgr": "direct PGR", "pgr_auroc": "chain PGR (AUROC)",
                    "direct_pgr_auroc": "direct PGR (AUROC)"}
    for row in results["chain_summary"]:
      lines.append(f"| {row['chain']} | {_label(row)} | {row['relabel']} | {_cell(row['weak_acc'])} | "
                   f"{_cell(row['strong_acc'])} | {_cell(row['w2s_acc'])} | {_cell(row['pgr'])} | "
                   f"{_mean_cell(row['pgr'])} | {_cell(row['direct_w2s_acc'])} | {_cell(row['direct_pgr'])} | "
                   f"{_mean_cell(row['direct_pgr'])} | {_cell(row['pgr_auroc'])} | "
                   f"{_cell(row['direct_pgr_auroc'])} | {_notes(row, chain_labels)} |")
  if any(k.endswith("_shot_acc") or k == "chance_acc" or (k == "greedy_not_candidate" and r[k]["n"])
         for r in results.get("model_summary") or [] for k in r):
    lines += ["", "## Models beside their fine-tunes", "",
              "Each model trained on half A's ground truth (fine-tuned, or a linear probe; its weak number, or its "
              "ceiling), beside the same "
              "model untrained and prompted k-shot with demonstrations from half A (decoders only); on a "
              "multiple-choice task, how often its greedy, unconstrained continuation is not one of the candidates "
              "(chess: not a legal move); and model-free baselines on the same test set.", "",
              models_markdown(results["model_summary"])]
  if len(results.get("pair_gaps") or []) >= 2:
    method = results["pair_gaps"][0]["method"]
    lines += ["", "## Pairs worth a fine-tune", "",
              f"Per pair ({method}): the ceiling's lead over the weak model, per seed, and whether its 95% CI lies "
              "above the minimum gap (clear: PGR measures more than noise). Clear pairs first, by median PGR; "
              "figures: accuracy_vs_size.png, pgr_heatmap.png.", "", pair_gaps_markdown(results["pair_gaps"])]
  lines += ["", _footnote(results)]
  return "\n".join(lines) + "\n"


def _defined(s: dict[str, Any] | None) -> bool:
  return bool(s) and s.get("median") is not None


def _pyplot():
  """matplotlib's pyplot on the file-only backend (no display on a training host)."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  return plt


def plot(results: dict[str, Any], workdir: Path) -> list[Path]:
  """The paper's figures: test accuracy vs strong model for each weak model and method; PGR per row.

  Median over seeds with min-max bars; undefined values (None) are skipped, not drawn as zero.
  """
  plt = _pyplot()
  written = []
  summary = results["summary"]
  methods = sorted({r["method"] for r in summary})
  oracle_methods = {r["method"] for r in summary if r.get("oracle")}
  strongs = list(dict.fromkeys(results.get("model_order", []) or [r["strong"] for r in summary]))
  strongs = [s for s in strongs if any(r["strong"] == s for r in summary)]
  x = {s: i for i, s in enumerate(strongs)}

  fig, axes = plt.subplots(1, max(1, len(methods)), figsize=(5 * max(1, len(methods)), 4), squeeze=False,
                           sharey=True)
  for ax, method in zip(axes[0], methods):
    rows = [r for r in summary if r["method"] == method]
    ceiling = {r["strong"]: r["strong_acc"]["median"] for r in rows if _defined(r["strong_acc"])}
    ax.plot([x[s] for s in strongs if s in ceiling], [ceiling[s] for s in strongs if s in ceiling], "k--o",
            label="strong ceiling (ground truth)")
    for weak in dict.fromkeys(r["weak"] for r in rows):
      mine = sorted((r for r in rows if r["weak"] == weak), key=lambda r: x[r["strong"]])
      drawn = [r for r in mine if _defined(r["w2s_acc"])]
      color = None
      if drawn:
        s = [r["w2s_acc"] for r in drawn]
        line = ax.errorbar([x[r["strong"]] for r in drawn], [v["median"] for v in s],
                           yerr=[[v["median"] - v["min"] for v in s], [v["max"] - v["median"] for v in s]],
                           marker="o", capsize=3, label=f"weak {weak} → strong")
        color = line[0].get_color()
      weak_acc = next((r["weak_acc"]["median"] for r in mine if _defined(r["weak_acc"])), None)
      if weak_acc is not None:
        ax.axhline(weak_acc, color=color, lw=0.8, ls=":")
    ax.set_xticks(range(len(strongs)), strongs, rotation=20)
    ax.set_title(f"method: {method}{ORACLE_MARK if method in oracle_methods else ''}")
    ax.set_xlabel("strong student")
    ax.grid(alpha=0.3)
  axes[0][0].set_ylabel("test accuracy (median over seeds; bars: min–max)")
  if axes[0][-1].get_legend_handles_labels()[0]:
    axes[0][-1].legend(fontsize=7)
  fig.tight_layout()
  path = artifacts.save_figure(fig, workdir / "accuracy.png", dpi=120)
  plt.close(fig)
  written.append(path)

  fig, ax = plt.subplots(figsize=(max(5, 1.2 * len(summary)), 4))
  labels, medians, lows, highs, colors = [], [], [], [], []
  palette = plt.rcParams["axes.prop_cycle"].by_key()["color"]
  for row in summary:
    s = row["pgr"]
    if not _defined(s):
      continue
    labels.append(f"{row['weak']}→{row['strong']}\n{_label(row)}")
    medians.append(s["median"])
    lows.append(s["median"] - s["min"])
    highs.append(s["max"] - s["median"])
    colors.append(palette[methods.index(row["method"]) % len(palette)])
  if medians:
    ax.bar(range(len(medians)), medians, yerr=[lows, highs], color=colors, capsize=4)
  else:
    ax.text(0.5, 0.5, "PGR undefined for every row", ha="center", va="center", transform=ax.transAxes)
  ax.axhline(0, color="k", lw=0.8)
  ax.set_xticks(range(len(labels)), labels, fontsize=7)
  ax.set_ylabel("PGR (median over seeds; bars: min–max)")
  ax.set_title("performance gap recovered")
  fig.tight_layout()
  path = artifacts.save_figure(fig, workdir / "pgr.png", dpi=120)
  plt.close(fig)
  written.append(path)
  return written


def _pgr_bars(ax, rows: list[dict[str, Any]], field: str) -> None:
  """One horizontal bar per row at its median `field`, the mean's 95% CI over it; oracle rows hatched."""
  for y, row in enumerate(rows):
    s = row[field]
    if not _defined(s):
      ax.text(0, y, " n/a (undefined on every seed)", va="center", fontsize=7)
      continue
    oracle = bool(row.get("oracle"))
    ax.barh(y, s["median"], color="tab:red" if oracle else "tab:blue", alpha=0.6, hatch="//" if oracle else None,
            edgecolor="k", lw=0.5)
    lo, hi = s["ci95"]
    ax.errorbar(s["mean"], y, xerr=[[s["mean"] - lo], [hi - s["mean"]]], fmt="o", color="k", ms=3, capsize=3)
  ax.axvline(0, color="k", lw=0.8)  # the weak supervisor
  ax.axvline(1, color="k", lw=0.8, ls=":")  # the strong ceiling
  ax.grid(axis="x", alpha=0.3)


def plot_comparison(rows: list[dict[str, Any]], path: Path) -> Path:
  """`compare_methods` rows in rank order (best on top): median PGR on accuracy and on AUROC, one panel each.

  Bars: median over seeds; points and whiskers: the mean and its 95% bootstrap CI. Oracle rows are hatched and
  labelled; a PGR undefined on every seed is written n/a, not drawn as zero.
  """
  plt = _pyplot()
  several_pairs = len({(r["weak"], r["strong"]) for r in rows}) > 1
  labels = [(f"{r['weak']}→{r['strong']}: " if several_pairs else "") + _label(r) for r in rows]
  fig, axes = plt.subplots(1, 2, figsize=(11, 1.5 + 0.45 * len(rows)), sharey=True, squeeze=False)
  for ax, (field, title) in zip(axes[0], (("pgr", "PGR (accuracy)"), ("pgr_auroc", "PGR (AUROC)"))):
    _pgr_bars(ax, rows, field)
    ax.set_title(title)
    ax.set_xlabel("bar: median over seeds; point: mean, 95% bootstrap CI")
  axes[0][0].set_yticks(range(len(rows)), labels, fontsize=8)
  axes[0][0].invert_yaxis()  # rank 1 on top
  if not several_pairs and rows:
    fig.suptitle(f"methods compared: {rows[0]['weak']} → {rows[0]['strong']}")
  fig.tight_layout()
  artifacts.save_figure(fig, path, dpi=120)
  plt.close(fig)
  return path


def write(results: dict[str, Any], workdir: artifacts.PathLike) -> None:
  """results.json (undefined values as null; allow_nan=False so no NaN slips into the JSON), results.md, PNGs.

  Each file is written whole or not at all and its checksum recorded in workdir/checksums.json
  (`artifacts.verify` checks them); a full disk is one UserError that leaves the previous file in place.
  `workdir` may be gs://bucket/path (every path below is built from its epath.Path).
  """
  workdir = artifacts.as_path(workdir)
  artifacts.write_json(workdir / "results.json", _nan_to_none(results), indent=1, allow_nan=False)
  artifacts.write_file(workdir / "results.md", markdown(results))
  if results["summary"]:
    plot(results, workdir)
  if len(results.get("comparison") or []) >= 2:
    plot_comparison(results["comparison"], workdir / "methods.png")
  if len(results.get("pair_gaps") or []) >= 2:
    plot_zoo(results, workdir, method=results["pair_gaps"][0]["method"])


# --- the zoo: which pairs have a gap worth a fine-tune -------------------------------------------

def pair_gaps(runs: list[dict[str, Any]], *, method: str, min_gap_examples: float) -> list[dict[str, Any]]:
  """One row per (weak, strong) pair of `method`'s runs: the ceiling's per-seed lead over the weak
  model (strong − weak accuracy, same seed) with its spread, whether the gap is *clear*, and PGR.

  Clear: the 95% bootstrap CI of the mean gap lies above the minimum gap (`min_gap`, in test
  examples). Such a pair's ceiling beats the weak model by more than noise, so its PGR measures
  something and the pair is worth fine-tuning. Rows are ordered clear first, then by median PGR.
  """
  groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
  for run in runs:
    if run["method"] == method:
      groups[(run["weak"], run["strong"])].append(run)
  rows = []
  for (weak, strong), group in groups.items():
    gaps = [r["strong_acc"] - r["weak_acc"] for r in group if _finite(r["strong_acc"]) and _finite(r["weak_acc"])]
    n_test = max(r["n_test"] for r in group)
    floor = min_gap(n_test, min_gap_examples)
    gap = _spread(gaps)
    clear = bool(gap["n"] >= 2 and gap["ci95"][0] >= floor - _GAP_TOLERANCE)
    rows.append({"weak": weak, "strong": strong, "method": method, "gap": gap, "min_gap": floor, "clear": clear,
                 "pgr": _spread([r["pgr"] for r in group]), "pgr_auroc": _spread([r["pgr_auroc"] for r in group]),
                 "seeds": [r["seed"] for r in group]})
  return sorted(rows, key=lambda r: (not r["clear"], -(r["pgr"]["median"] if _defined(r["pgr"]) else -math.inf)))


def pair_gaps_markdown(rows: list[dict[str, Any]]) -> str:
  lines = ["| weak | strong | ceiling − weak, mean [95% CI] | clear gap | PGR | PGR mean [95% CI] | PGR (AUROC) | seeds |",
           "| --- | --- | --- | --- | --- | --- | --- | --- |"]
  for r in rows:
    g = r["gap"]
    gap = "n/a" if g["mean"] is None else (f"{_signed(g['mean'])} [{_signed(g['ci95'][0])}, "
                                           f"{_signed(g['ci95'][1])}]" if g["n"] > 1 else _signed(g["mean"]))
    lines.append(f"| {r['weak']} | {r['strong']} | {gap} | {'yes' if r['clear'] else 'no'} | {_cell(r['pgr'])} | "
                 f"{_mean_cell(r['pgr'])} | {_cell(r['pgr_auroc'])} | {len(r['seeds'])} |")
  return "\n".join(lines)


def plot_zoo(results: dict[str, Any], workdir: Path, *, method: str) -> list[Path]:
  """The paper's figure over model size, and a weak × strong PGR heatmap, for `method`'s runs.

  accuracy_vs_size.png: test accuracy against the strong model's parameter count (log scale), one
  line per weak model, with each model's ground-truth ceiling; medians over seeds.
  pgr_heatmap.png: median PGR per (weak, strong); blank where the pair did not run or PGR is undefined.
  """
  plt = _pyplot()
  summary = [r for r in results["summary"] if r["method"] == method]
  sizes = results.get("model_sizes") or {}
  order = [m for m in results.get("model_order", []) if any(m in (r["weak"], r["strong"]) for r in summary)]
  written = []
  if summary and all(sizes.get(m) for m in order):
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    ceiling = {}
    for r in summary:
      if _defined(r["strong_acc"]):
        ceiling[r["strong"]] = r["strong_acc"]["median"]
      if _defined(r["weak_acc"]):
        ceiling.setdefault(r["weak"], r["weak_acc"]["median"])  # a weak model's own ground-truth run
    xs = sorted(ceiling, key=lambda m: sizes[m])
    ax.plot([sizes[m] for m in xs], [ceiling[m] for m in xs], "k--o", label="ground truth (ceiling)")
    for weak in [m for m in order if any(r["weak"] == m for r in summary)]:
      rows = sorted((r for r in summary if r["weak"] == weak and _defined(r["w2s_acc"])), key=lambda r: sizes[r["strong"]])
      if rows:
        ax.plot([sizes[r["strong"]] for r in rows], [r["w2s_acc"]["median"] for r in rows], "o-",
                label=f"weak {weak} → strong")
    for m in xs:
      ax.annotate(m, (sizes[m], ceiling[m]), fontsize=7, xytext=(3, -10), textcoords="offset points")
    ax.set_xscale("log")
    ax.set_xlabel("strong model parameters (backbone)")
    ax.set_ylabel("test accuracy (median over seeds)")
    ax.set_title(f"weak-to-strong by model size ({method})")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    written.append(artifacts.save_figure(fig, workdir / "accuracy_vs_size.png", dpi=120))
    plt.close(fig)
  heatmap = plot_pgr_heatmap(summary, order, workdir / "pgr_heatmap.png", method=method)
  if heatmap is not None:
    written.append(heatmap)
  return written


def plot_pgr_heatmap(summary: list[dict[str, Any]], order: list[str], path: Path, *, method: str) -> Path | None:
  """Median PGR per (weak, strong) of `method`'s summary rows, weak supervisors down, strong students across
  (both in `order`); blank and "n/a" where the pair did not run or PGR is undefined. None if no row is `method`'s."""
  plt = _pyplot()
  summary = [r for r in summary if r["method"] == method]
  weaks = [m for m in order if any(r["weak"] == m for r in summary)]
  strongs = [m for m in order if any(r["strong"] == m for r in summary)]
  if not (weaks and strongs):
    return None
  grid = np.full((len(weaks), len(strongs)), np.nan)
  for r in summary:
    if _defined(r["pgr"]):
      grid[weaks.index(r["weak"]), strongs.index(r["strong"])] = r["pgr"]["median"]
  fig, ax = plt.subplots(figsize=(1.4 * len(strongs) + 2.5, 1.0 * len(weaks) + 1.8))
  image = ax.imshow(np.ma.masked_invalid(grid), cmap="RdBu", vmin=-1, vmax=1)
  for i in range(len(weaks)):
    for j in range(len(strongs)):
      ax.text(j, i, "n/a" if np.isnan(grid[i, j]) else f"{grid[i, j]:.2f}", ha="center", va="center", fontsize=8)
  ax.set_xticks(range(len(strongs)), strongs, rotation=20, fontsize=8)
  ax.set_yticks(range(len(weaks)), weaks, fontsize=8)
  ax.set_xlabel("strong student")
  ax.set_ylabel("weak supervisor")
  ax.set_title(f"median PGR ({method}); n/a: not run or ceiling not clearly above weak", fontsize=9)
  fig.colorbar(image, ax=ax, shrink=0.8)
  fig.tight_layout()
  artifacts.save_figure(fig, path, dpi=120)
  plt.close(fig)
  return path
