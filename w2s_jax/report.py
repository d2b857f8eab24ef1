"""Results: PGR per run, summaries over seeds, results.json / results.md / PNG plots.

PGR = (w2s − weak) / (strong ceiling − weak), on accuracy and on ROC AUC. It is undefined (None; null in JSON,
"n/a" in the tables) where the ceiling is not clearly above the weak model, strong − weak < `min_gap`: a
negative gap would flip PGR's sign and a tiny one makes the ratio measure noise. The minimum gap is counted in
test examples (`min_gap_examples / n_test`); see `DEFAULT_MIN_GAP_EXAMPLES`.

Two aggregations over seeds are reported:

* `summarize` (our choice, the main table): each seed's PGR uses that seed's own weak and ceiling numbers, and
  a (weak, strong, loss) row gives the median over seeds with min, max, mean, std and a 95% bootstrap CI of the
  mean. Seeds whose PGR is undefined are left out and counted (`n_left_out`).
* `summarize_oai` (how the paper's code does it, openai/weak-to-strong notebooks/Plotting.ipynb): the weak and
  ceiling accuracies are averaged over seeds first, each run's PGR is taken against those averages, and the
  median is over all pairs and seeds together, one number per loss. The two can differ, so both are written.
"""

import json
import math
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

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
CHAIN_FIELDS = ("weak_acc", "strong_acc", "w2s_acc", "direct_w2s_acc", "pgr", "direct_pgr")
# PGR field -> the (weak, w2s, strong) fields it is computed from, to say why a value is missing.
PGR_INPUTS = {"pgr": ("weak_acc", "w2s_acc", "strong_acc"), "pgr_auroc": ("weak_auroc", "w2s_auroc", "strong_auroc"),
              "direct_pgr": ("weak_acc", "direct_w2s_acc", "strong_acc")}


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


def summarize(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
  """One row per (weak, strong, loss): each metric's spread over seeds, per-seed PGR (see the module doc)."""
  groups: dict[tuple, list[dict]] = defaultdict(list)
  for run in runs:
    groups[(run["weak"], run["strong"], run["loss"])].append(run)
  summary = []
  for (weak, strong, loss), group in groups.items():
    row = {"weak": weak, "strong": strong, "loss": loss, "seeds": [r["seed"] for r in group]}
    for field in RUN_FIELDS:
      row[field] = _spread([r.get(field) for r in group])
    row["left_out"] = _left_out(group, RUN_FIELDS)
    summary.append(row)
  return summary


def summarize_chains(chains: list[dict[str, Any]]) -> list[dict[str, Any]]:
  """One row per (chain, loss): the chain's final accuracy and PGR vs the direct weak->strong run."""
  groups: dict[tuple, list[dict]] = defaultdict(list)
  for c in chains:
    groups[(c["chain"], c["loss"])].append(c)
  return [{"chain": chain, "loss": loss, "seeds": [c["seed"] for c in group],
           **{f: _spread([c.get(f) for c in group]) for f in CHAIN_FIELDS},
           "left_out": _left_out(group, CHAIN_FIELDS)}
          for (chain, loss), group in groups.items()]


def _seed_mean(group: list[dict[str, Any]], field: str) -> float | None:
  """Mean over seeds of a per-seed number (one value per seed: every loss of a seed shares it)."""
  per_seed = {r["seed"]: r.get(field) for r in group if _finite(r.get(field))}
  return float(np.mean(list(per_seed.values()))) if per_seed else None


def summarize_oai(runs: list[dict[str, Any]], *,
                  min_gap_examples: float = DEFAULT_MIN_GAP_EXAMPLES) -> list[dict[str, Any]]:
  """PGR aggregated as the paper's code does: one median per loss, on accuracy and on AUROC.

  For each (weak, strong) pair: average the weak and the ceiling numbers over the pair's seeds (one value per
  seed); a pair whose averaged gap is under `min_gap(n_test, min_gap_examples)` (n_test: the smallest of its
  runs', the strictest floor) is left out with all its runs. Each remaining run's PGR is (its w2s − mean weak) /
  (mean ceiling − mean weak); a run whose w2s number is missing is left out. The median is over all those
  runs, all pairs and seeds together, per loss. The paper's notebook averages per model over its seeds, the
  same numbers when every pair ran every seed, and leaves out gaps <= 0 only (we use the same floor as
  `summarize`).

  Returns one row per loss: {"loss", "min_gap_examples", "pgr": stats, "pgr_auroc": stats}, stats being
  {"median" (None if no run is left), "n" (runs used), "n_left_out" (runs left out), "n_pairs",
  "n_pairs_left_out", "left_out_pairs" (["weak->strong", ...])}.
  """
  pairs: dict[tuple, list[dict]] = defaultdict(list)
  for run in runs:
    pairs[(run["weak"], run["strong"])].append(run)
  losses = list(dict.fromkeys(r["loss"] for r in runs))
  rows = []
  for loss in losses:
    row: dict[str, Any] = {"loss": loss, "min_gap_examples": min_gap_examples}
    for field, (weak_f, w2s_f, strong_f) in (("pgr", PGR_INPUTS["pgr"]), ("pgr_auroc", PGR_INPUTS["pgr_auroc"])):
      values, n_left_out, n_pairs, left_out_pairs = [], 0, 0, []
      for (weak, strong), group in pairs.items():
        mine = [r for r in group if r["loss"] == loss]
        if not mine:
          continue
        weak_mean, strong_mean = _seed_mean(group, weak_f), _seed_mean(group, strong_f)
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


def _cell(s: dict[str, Any] | None) -> str:
  """median [min, max]; the value alone for one seed; n/a where no seed has a value."""
  if not s or not s.get("n"):
    return "n/a"
  return f"{s['median']:.3f} [{s['min']:.3f}, {s['max']:.3f}]" if s["n"] > 1 else f"{s['median']:.3f}"


def _mean_cell(s: dict[str, Any] | None) -> str:
  """mean [95% bootstrap CI]; the value alone for one seed (its CI is the value)."""
  if not s or not s.get("n"):
    return "n/a"
  return f"{s['mean']:.3f} [{s['ci95'][0]:.3f}, {s['ci95'][1]:.3f}]" if s["n"] > 1 else f"{s['mean']:.3f}"


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


SELECTION_NOTES = {
    "weak_auroc": "students' checkpoints selected by AUROC against the supervisor's labels on a held-out part "
                  "of half B (early stopping on weak labels)",
    "oracle_auroc": "**ORACLE**: students' checkpoints selected by AUROC against the ground truth of a held-out "
                    "part of half B; for analysis only, not a weak-to-strong result",
}


def markdown(results: dict[str, Any]) -> str:
  # An oracle selection is marked in every table, not only in a note that a reader might skip.
  oracle = " (ORACLE)" if results.get("oracle") else ""
  wall = results.get("wall_s")
  lines = [f"# Weak-to-strong results: {results.get('task', '')}", "",
           (f"wall time: {wall:.1f} s; " if wall is not None else "") +
           "cells: median [min, max] over seeds; mean [95% bootstrap CI]", "",
           *([f"Selection: {SELECTION_NOTES[results['selection']]}.", ""]
             if results.get("selection") in SELECTION_NOTES else []),
           "| weak | strong | loss | weak acc | strong ceiling | w2s acc | PGR | PGR mean [95% CI] | PGR (AUROC) | "
           "PGR (AUROC) mean [95% CI] | agreement | seeds | left out |",
           "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
  pgr_labels = {"pgr": "PGR", "pgr_auroc": "PGR (AUROC)"}
  for row in results["summary"]:
    lines.append(f"| {row['weak']} | {row['strong']} | {row['loss']}{oracle} | {_cell(row['weak_acc'])} | "
                 f"{_cell(row['strong_acc'])} | {_cell(row['w2s_acc'])} | {_cell(row['pgr'])} | "
                 f"{_mean_cell(row['pgr'])} | {_cell(row['pgr_auroc'])} | {_mean_cell(row['pgr_auroc'])} | "
                 f"{_cell(row['agreement'])} | {len(row['seeds'])} | {_notes(row, pgr_labels)} |")
  if results["summary"]:
    lines += ["", "Means over seeds [95% bootstrap CI]:", "",
              "| weak | strong | loss | weak acc | strong ceiling | w2s acc | agreement |",
              "| --- | --- | --- | --- | --- | --- | --- |"]
    for row in results["summary"]:
      lines.append(f"| {row['weak']} | {row['strong']} | {row['loss']}{oracle} | {_mean_cell(row['weak_acc'])} | "
                   f"{_mean_cell(row['strong_acc'])} | {_mean_cell(row['w2s_acc'])} | "
                   f"{_mean_cell(row['agreement'])} |")
  if results["summary"] and "misfit" in results["summary"][0]:
    lines += ["", "## Imitation and misfit", "",
              "Agreement of student and supervisor on the test set, where the supervisor is right and where it is "
              "wrong (a student that only imitates agrees everywhere); misfit: the student's disagreement with the "
              "weak labels it trained on (argmax; KL in nats).", "",
              "| weak | strong | loss | agreement | supervisor right | supervisor wrong | misfit | misfit KL |",
              "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for row in results["summary"]:
      lines.append(f"| {row['weak']} | {row['strong']} | {row['loss']}{oracle} | "
                   + " | ".join(_cell(row[f]) for f in ("agreement", "agreement_supervisor_right",
                                                        "agreement_supervisor_wrong", "misfit", "misfit_kl")) + " |")
  if results.get("oai_summary"):
    lines += ["", "## Aggregated as the paper code does", "",
              "Weak and ceiling averaged over seeds per pair first; each run's PGR against those averages; median "
              "over all pairs and seeds per loss. Pairs whose averaged gap is under the minimum are left out.", "",
              "| loss | PGR median | runs used | runs left out | PGR (AUROC) median | runs used | runs left out |",
              "| --- | --- | --- | --- | --- | --- | --- |"]

    def oai_cells(s: dict[str, Any]) -> str:
      median = "n/a" if s["median"] is None else f"{s['median']:.3f}"
      out = str(s["n_left_out"])
      if s["left_out_pairs"]:
        out += f" ({s['n_pairs_left_out']} pair(s), {GAP_REASON}: {', '.join(s['left_out_pairs'])})"
      return f"{median} | {s['n']} | {out}"

    for row in results["oai_summary"]:
      lines.append(f"| {row['loss']}{oracle} | {oai_cells(row['pgr'])} | {oai_cells(row['pgr_auroc'])} |")
  if results.get("chain_summary"):
    lines += ["", "## Bootstrapping chains", "",
              "| chain | loss | weak acc | strong ceiling | chain w2s acc | chain PGR | chain PGR mean [95% CI] | "
              "direct w2s acc | direct PGR | direct PGR mean [95% CI] | left out |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    chain_labels = {"pgr": "chain PGR", "direct_pgr": "direct PGR"}
    for row in results["chain_summary"]:
      lines.append(f"| {row['chain']} | {row['loss']}{oracle} | {_cell(row['weak_acc'])} | {_cell(row['strong_acc'])} | "
                   f"{_cell(row['w2s_acc'])} | {_cell(row['pgr'])} | {_mean_cell(row['pgr'])} | "
                   f"{_cell(row['direct_w2s_acc'])} | {_cell(row['direct_pgr'])} | "
                   f"{_mean_cell(row['direct_pgr'])} | {_notes(row, chain_labels)} |")
  lines += ["", _footnote(results)]
  return "\n".join(lines) + "\n"


def _defined(s: dict[str, Any] | None) -> bool:
  return bool(s) and s.get("median") is not None


def plot(results: dict[str, Any], workdir: Path) -> list[Path]:
  """The paper's figures: test accuracy vs strong model for each weak model and loss; PGR per row.

  Median over seeds with min-max bars; undefined values (None) are skipped, not drawn as zero.
  """
  oracle = " (ORACLE)" if results.get("oracle") else ""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  written = []
  summary = results["summary"]
  losses = sorted({r["loss"] for r in summary})
  strongs = list(dict.fromkeys(results.get("model_order", []) or [r["strong"] for r in summary]))
  strongs = [s for s in strongs if any(r["strong"] == s for r in summary)]
  x = {s: i for i, s in enumerate(strongs)}

  fig, axes = plt.subplots(1, max(1, len(losses)), figsize=(5 * max(1, len(losses)), 4), squeeze=False,
                           sharey=True)
  for ax, loss in zip(axes[0], losses):
    rows = [r for r in summary if r["loss"] == loss]
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
    ax.set_title(f"loss: {loss}{oracle}")
    ax.set_xlabel("strong student")
    ax.grid(alpha=0.3)
  axes[0][0].set_ylabel("test accuracy (median over seeds; bars: min–max)")
  if axes[0][-1].get_legend_handles_labels()[0]:
    axes[0][-1].legend(fontsize=7)
  fig.tight_layout()
  path = workdir / "accuracy.png"
  fig.savefig(path, dpi=120)
  plt.close(fig)
  written.append(path)

  fig, ax = plt.subplots(figsize=(max(5, 1.2 * len(summary)), 4))
  labels, medians, lows, highs, colors = [], [], [], [], []
  palette = plt.rcParams["axes.prop_cycle"].by_key()["color"]
  for row in summary:
    s = row["pgr"]
    if not _defined(s):
      continue
    labels.append(f"{row['weak']}→{row['strong']}\n{row['loss']}{oracle}")
    medians.append(s["median"])
    lows.append(s["median"] - s["min"])
    highs.append(s["max"] - s["median"])
    colors.append(palette[losses.index(row["loss"]) % len(palette)])
  if medians:
    ax.bar(range(len(medians)), medians, yerr=[lows, highs], color=colors, capsize=4)
  else:
    ax.text(0.5, 0.5, "PGR undefined for every row", ha="center", va="center", transform=ax.transAxes)
  ax.axhline(0, color="k", lw=0.8)
  ax.set_xticks(range(len(labels)), labels, fontsize=7)
  ax.set_ylabel("PGR (median over seeds; bars: min–max)")
  ax.set_title("performance gap recovered")
  fig.tight_layout()
  path = workdir / "pgr.png"
  fig.savefig(path, dpi=120)
  plt.close(fig)
  written.append(path)
  return written


def write(results: dict[str, Any], workdir: Path) -> None:
  """results.json (undefined values as null; allow_nan=False so no NaN slips into the JSON), results.md, PNGs."""
  workdir.mkdir(parents=True, exist_ok=True)
  (workdir / "results.json").write_text(json.dumps(_nan_to_none(results), indent=1, allow_nan=False))
  (workdir / "results.md").write_text(markdown(results))
  if results["summary"]:
    plot(results, workdir)
