"""Results: PGR per run, summaries over seeds, results.json / results.md / PNG plots.

PGR = (w2s − weak) / (strong − weak), on accuracy and on ROC AUC. It is reported as
NaN where the gap strong − weak is under `MIN_GAP` (the ratio would be noise), and
summarised over seeds by its median (as the paper's code does) with its spread.
"""

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

MIN_GAP = 1e-3


def pgr(weak: float, w2s: float, strong: float) -> float:
  gap = strong - weak
  return float("nan") if abs(gap) < MIN_GAP else (w2s - weak) / gap


def _spread(values: list[float]) -> dict[str, float]:
  v = np.array([x for x in values if x is not None and np.isfinite(x)], dtype=np.float64)
  if len(v) == 0:
    return {"median": float("nan"), "mean": float("nan"), "std": float("nan"), "min": float("nan"),
            "max": float("nan"), "n": 0}
  return {"median": float(np.median(v)), "mean": float(v.mean()), "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0,
          "min": float(v.min()), "max": float(v.max()), "n": int(len(v))}


def summarize(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
  """One row per (weak, strong, loss): each metric's median and spread over seeds."""
  groups: dict[tuple, list[dict]] = defaultdict(list)
  for run in runs:
    groups[(run["weak"], run["strong"], run["loss"])].append(run)
  summary = []
  for (weak, strong, loss), group in groups.items():
    row = {"weak": weak, "strong": strong, "loss": loss, "seeds": [r["seed"] for r in group]}
    for field in ("weak_acc", "strong_acc", "w2s_acc", "pgr", "weak_auroc", "strong_auroc", "w2s_auroc",
                  "pgr_auroc", "agreement"):
      row[field] = _spread([r[field] for r in group])
    summary.append(row)
  return summary


def summarize_chains(chains: list[dict[str, Any]]) -> list[dict[str, Any]]:
  """One row per (chain, loss): the chain's final accuracy and PGR vs the direct weak->strong run."""
  groups: dict[tuple, list[dict]] = defaultdict(list)
  for c in chains:
    groups[(c["chain"], c["loss"])].append(c)
  return [{"chain": chain, "loss": loss, "seeds": [c["seed"] for c in group],
           **{f: _spread([c[f] for c in group]) for f in ("weak_acc", "strong_acc", "w2s_acc",
                                                          "direct_w2s_acc", "pgr", "direct_pgr")}}
          for (chain, loss), group in groups.items()]


def _nan_to_none(x: Any) -> Any:
  if isinstance(x, float) and not np.isfinite(x):
    return None
  if isinstance(x, dict):
    return {k: _nan_to_none(v) for k, v in x.items()}
  if isinstance(x, list):
    return [_nan_to_none(v) for v in x]
  return x


def markdown(results: dict[str, Any]) -> str:
  lines = [f"# Weak-to-strong results: {results.get('task', '')}", "",
           f"wall time: {results['wall_s']:.1f} s; seeds per row: median [min, max]", "",
           "| weak | strong | loss | weak acc | strong ceiling | w2s acc | PGR | PGR (AUROC) | agreement | seeds |",
           "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]

  def cell(s: dict[str, float]) -> str:
    if not s["n"]:
      return "n/a"
    return f"{s['median']:.3f} [{s['min']:.3f}, {s['max']:.3f}]" if s["n"] > 1 else f"{s['median']:.3f}"

  for row in results["summary"]:
    lines.append(f"| {row['weak']} | {row['strong']} | {row['loss']} | {cell(row['weak_acc'])} | "
                 f"{cell(row['strong_acc'])} | {cell(row['w2s_acc'])} | {cell(row['pgr'])} | "
                 f"{cell(row['pgr_auroc'])} | {cell(row['agreement'])} | {len(row['seeds'])} |")
  if results.get("chain_summary"):
    lines += ["", "## Bootstrapping chains", "",
              "| chain | loss | weak acc | strong ceiling | chain w2s acc | chain PGR | direct w2s acc | direct PGR |",
              "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for row in results["chain_summary"]:
      lines.append(f"| {row['chain']} | {row['loss']} | {cell(row['weak_acc'])} | {cell(row['strong_acc'])} | "
                   f"{cell(row['w2s_acc'])} | {cell(row['pgr'])} | {cell(row['direct_w2s_acc'])} | "
                   f"{cell(row['direct_pgr'])} |")
  lines += ["", "PGR = (w2s − weak) / (strong ceiling − weak); n/a where the gap is under "
            f"{MIN_GAP}. Per-run numbers are in results.json."]
  return "\n".join(lines) + "\n"


def plot(results: dict[str, Any], workdir: Path) -> list[Path]:
  """The paper's figures: test accuracy vs strong model for each weak model and loss; PGR per loss."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  written = []
  summary = results["summary"]
  losses = sorted({r["loss"] for r in summary})
  strongs = list(dict.fromkeys(results.get("model_order", []) or [r["strong"] for r in summary]))
  strongs = [s for s in strongs if any(r["strong"] == s for r in summary)]
  x = {s: i for i, s in enumerate(strongs)}

  fig, axes = plt.subplots(1, len(losses), figsize=(5 * len(losses), 4), squeeze=False, sharey=True)
  for ax, loss in zip(axes[0], losses):
    rows = [r for r in summary if r["loss"] == loss]
    ceiling = {r["strong"]: r["strong_acc"]["median"] for r in rows}
    ax.plot([x[s] for s in strongs if s in ceiling], [ceiling[s] for s in strongs if s in ceiling], "k--o",
            label="strong ceiling (ground truth)")
    for weak in dict.fromkeys(r["weak"] for r in rows):
      mine = sorted((r for r in rows if r["weak"] == weak), key=lambda r: x[r["strong"]])
      xs = [x[r["strong"]] for r in mine]
      ys = [r["w2s_acc"]["median"] for r in mine]
      lo = [r["w2s_acc"]["median"] - r["w2s_acc"]["min"] for r in mine]
      hi = [r["w2s_acc"]["max"] - r["w2s_acc"]["median"] for r in mine]
      line = ax.errorbar(xs, ys, yerr=[lo, hi], marker="o", capsize=3, label=f"weak {weak} → strong")
      ax.axhline(mine[0]["weak_acc"]["median"], color=line[0].get_color(), lw=0.8, ls=":")
    ax.set_xticks(range(len(strongs)), strongs, rotation=20)
    ax.set_title(f"loss: {loss}")
    ax.set_xlabel("strong student")
    ax.grid(alpha=0.3)
  axes[0][0].set_ylabel("test accuracy (median over seeds; bars: min–max)")
  axes[0][-1].legend(fontsize=7)
  fig.tight_layout()
  path = workdir / "accuracy.png"
  fig.savefig(path, dpi=120)
  plt.close(fig)
  written.append(path)

  fig, ax = plt.subplots(figsize=(max(5, 1.2 * len(summary)), 4))
  labels, medians, lows, highs, colors = [], [], [], [], []
  palette = plt.rcParams["axes.prop_cycle"].by_key()["color"]
  for i, row in enumerate(summary):
    s = row["pgr"]
    if not s["n"]:
      continue
    labels.append(f"{row['weak']}→{row['strong']}\n{row['loss']}")
    medians.append(s["median"])
    lows.append(s["median"] - s["min"])
    highs.append(s["max"] - s["median"])
    colors.append(palette[losses.index(row["loss"]) % len(palette)])
  ax.bar(range(len(medians)), medians, yerr=[lows, highs], color=colors, capsize=4)
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
  workdir.mkdir(parents=True, exist_ok=True)
  (workdir / "results.json").write_text(json.dumps(_nan_to_none(results), indent=1))
  (workdir / "results.md").write_text(markdown(results))
  if results["summary"]:
    plot(results, workdir)
