"""A finished sweep's report: a W&B report built with wandb-workspaces, and offline the same figures as PNGs
and one self-contained HTML page in the workdir (launch/report.py; docs/reports.md).

What a report shows, in this order:

1. the results tables (results.md: every cell a median [min, max] over seeds, PGR with its 95% bootstrap CI);
2. per weak model, test accuracy against the strong students: the weak-to-strong student of each method, the
   strong ceiling (ground truth) and the weak supervisor's own accuracy;
3. PGR per method, ranked, with the 95% bootstrap CI of the mean over seeds;
4. a weak × strong heatmap of median PGR, one per method;
5. the training curves of every stage, one figure (W&B: one panel grid) per kind of stage.

In W&B the per-stage curves are the stage runs the sweep logged (one run per stage, grouped by the workdir's
W&B group, job type = the stage's kind). The per-run numbers are not W&B runs yet: `upload` logs one small run
per results.json row (job type "result": config weak/strong/method/seed, summary accuracy/PGR/agreement) so that
W&B's own bar plots can group and aggregate them, and one "report" run holding the offline figures as images.
Their run ids are derived from the group and the row, so uploading twice updates the same runs.
"""

import base64
import dataclasses
import hashlib
import html
import json
import math
import re
from collections import defaultdict
from pathlib import Path
from typing import Any

from etils import epath

from w2s_jax import artifacts, report
from w2s_jax.errors import UserError

REPORT_DIR = "report"  # WORKDIR/report/: the figures and report.html
RESULT_JOB = "result"  # the job type of the per-row runs `upload` logs
FIGURES_JOB = "report"  # the job type of the run holding the figures
CURVE_METRICS = ("loss", "accuracy", "grad_norm")  # what the training-curve panels show, where a stage logs it
# A results.json row's numbers that become a result run's W&B summary (the bar plots' metrics).
RESULT_SUMMARY = ("weak_acc", "strong_acc", "w2s_acc", "pgr", "weak_auroc", "strong_auroc", "w2s_auroc", "pgr_auroc",
                  *report.DIAGNOSTIC_FIELDS, "n_fit")
RESULT_CONFIG = ("weak", "strong", "method", "seed", "oracle", "supervisor")


@dataclasses.dataclass(frozen=True)
class Sweep:
  """What a finished sweep left in its workdir: results.json, config.json and the training log."""
  workdir: epath.Path
  results: dict[str, Any]
  config: dict[str, Any]
  curves: list[dict[str, Any]]  # metrics.jsonl's training lines (summary lines left out)

  @property
  def group(self) -> str:
    """The W&B group of the sweep's stage runs (tracking.Tracker: config.wandb.group, else the workdir's name)."""
    return (self.config.get("wandb") or {}).get("group") or self.workdir.name

  @property
  def project(self) -> str:
    return (self.config.get("wandb") or {}).get("project") or "w2s_jax"

  @property
  def entity(self) -> str | None:
    return (self.config.get("wandb") or {}).get("entity")

  @property
  def methods(self) -> list[str]:
    return list(dict.fromkeys(r["method"] for r in self.results["runs"]))

  @property
  def weak_models(self) -> list[str]:
    return _in_order(self.results, {r["weak"] for r in self.results["runs"]})

  @property
  def stage_kinds(self) -> list[str]:
    """The kinds of stage that logged training steps, in the order they first ran."""
    return list(dict.fromkeys(_kind(line["stage"]) for line in self.curves))


def _kind(stage: str) -> str:
  return stage.split(":")[0]


def _in_order(results: dict[str, Any], names: set[str]) -> list[str]:
  order = [m for m in results.get("model_order") or [] if m in names]
  return order + sorted(names - set(order))


def load(workdir: artifacts.PathLike) -> Sweep:
  """The sweep in `workdir` (local or gs://), or a one-line UserError saying what is missing."""
  workdir = artifacts.as_path(workdir)
  path = workdir / "results.json"
  if not path.exists():
    raise UserError(f"{path} does not exist: a report needs a finished sweep; run launch/main.py with "
                    f"--workdir={workdir} first (finished stages are loaded, not retrained)")
  results = json.loads(path.read_text())
  if not results.get("runs"):
    raise UserError(f"{path} holds no weak-to-strong runs (a prompting- or search-only workdir?): nothing to report")
  config_path = workdir / "config.json"
  config = json.loads(config_path.read_text()) if config_path.exists() else {}
  curves = []
  log_path = workdir / "metrics.jsonl"
  if log_path.exists():
    for line in log_path.read_text().splitlines():
      try:
        entry = json.loads(line)
      except json.JSONDecodeError:
        continue  # a line cut short by a killed run
      if "step" in entry and "summary" not in entry:
        curves.append(entry)
  return Sweep(workdir, results, config, curves)


# --- figures -------------------------------------------------------------------------------------

def slug(name: str) -> str:
  """`name` as a file name and W&B media key: model names may hold '/', ':' or spaces."""
  return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "_"


def plot_accuracy_vs_ceiling(sweep: Sweep, weak: str, path: epath.Path) -> epath.Path:
  """One weak model's panel: test accuracy of each method's student against the strong students (model order),
  the strong ceiling (ground truth, dashed) and the weak model's own accuracy (dotted). Medians over seeds with
  min–max bars; an undefined value is left out, not drawn as zero."""
  plt = report._pyplot()
  rows = [r for r in sweep.results["summary"] if r["weak"] == weak]
  strongs = _in_order(sweep.results, {r["strong"] for r in rows})
  x = {s: i for i, s in enumerate(strongs)}
  fig, ax = plt.subplots(figsize=(max(5.0, 1.3 * len(strongs) + 2.5), 4))
  ceiling = {}
  for r in rows:
    if report._defined(r["strong_acc"]):
      ceiling.setdefault(r["strong"], r["strong_acc"])
  drawn = [s for s in strongs if s in ceiling]
  ax.errorbar([x[s] for s in drawn], [ceiling[s]["median"] for s in drawn],
              yerr=_min_max_bars([ceiling[s] for s in drawn]), fmt="k--o", capsize=3, label="strong ceiling (ground truth)")
  for method in dict.fromkeys(r["method"] for r in rows):
    mine = sorted((r for r in rows if r["method"] == method and report._defined(r["w2s_acc"])), key=lambda r: x[r["strong"]])
    if mine:
      ax.errorbar([x[r["strong"]] for r in mine], [r["w2s_acc"]["median"] for r in mine],
                  yerr=_min_max_bars([r["w2s_acc"] for r in mine]), marker="o", capsize=3,
                  label=f"weak → strong: {report._label(mine[0])}")
  weak_acc = next((r["weak_acc"]["median"] for r in rows if report._defined(r["weak_acc"])), None)
  if weak_acc is not None:
    ax.axhline(weak_acc, color="gray", lw=1, ls=":", label=f"weak supervisor ({weak})")
  ax.set_xticks(range(len(strongs)), strongs, rotation=20, fontsize=8)
  ax.set_xlabel("strong student")
  ax.set_ylabel("test accuracy (median over seeds; bars: min–max)")
  ax.set_title(f"weak supervisor: {weak}")
  ax.grid(alpha=0.3)
  ax.legend(fontsize=7)
  fig.tight_layout()
  artifacts.save_figure(fig, path, dpi=110)
  plt.close(fig)
  return path


def _min_max_bars(stats: list[dict[str, Any]]) -> list[list[float]]:
  return [[s["median"] - s["min"] for s in stats], [s["max"] - s["median"] for s in stats]]


def plot_training_curves(sweep: Sweep, kind: str, path: epath.Path) -> epath.Path | None:
  """Every `kind` stage's logged training metrics against its step, one panel per metric of CURVE_METRICS that
  a stage logged, one line per stage (the legend names the first 12). None if no such stage logged a step."""
  plt = report._pyplot()
  by_stage: dict[str, list[dict[str, Any]]] = defaultdict(list)
  for line in sweep.curves:
    if _kind(line["stage"]) == kind:
      by_stage[line["stage"]].append(line)
  metrics = [m for m in CURVE_METRICS if any(m in line for lines in by_stage.values() for line in lines)]
  if not metrics:
    return None
  fig, axes = plt.subplots(1, len(metrics), figsize=(4.5 * len(metrics), 3.6), squeeze=False)
  for ax, metric in zip(axes[0], metrics):
    for i, (stage, lines) in enumerate(by_stage.items()):
      points = sorted((line["step"], line[metric]) for line in lines if _finite(line.get(metric)))
      if points:
        steps, values = zip(*points)
        ax.plot(steps, values, lw=1, label=stage.split(":", 1)[-1] if i < 12 else None)
    ax.set_title(metric)
    ax.set_xlabel("step")
    ax.grid(alpha=0.3)
  axes[0][0].legend(fontsize=6)
  fig.suptitle(f"training curves: {kind} stages ({len(by_stage)})")
  fig.tight_layout()
  artifacts.save_figure(fig, path, dpi=110)
  plt.close(fig)
  return path


def _finite(x: Any) -> bool:
  return isinstance(x, (int, float)) and math.isfinite(x)


@dataclasses.dataclass(frozen=True)
class Figure:
  key: str  # the W&B media key ("figures/<key>") and the file's stem
  section: str  # which part of the report it belongs to (SECTIONS)
  caption: str
  path: epath.Path


SECTIONS = {"accuracy": "Accuracy against the ceiling, per weak model",
            "pgr": "PGR per method (bars: median over seeds; points: mean and its 95% bootstrap CI)",
            "heatmap": "Median PGR per weak × strong pair",
            "curves": "Training curves per stage"}


def write_figures(sweep: Sweep, directory: epath.Path | None = None) -> list[Figure]:
  """Every figure of the report as a PNG in `directory` (default WORKDIR/report), in report order."""
  directory = directory or sweep.workdir / REPORT_DIR
  directory.mkdir(parents=True, exist_ok=True)
  results, figures = sweep.results, []
  for weak in sweep.weak_models:
    key = f"accuracy_{slug(weak)}"
    figures.append(Figure(key, "accuracy", f"weak supervisor {weak}",
                          plot_accuracy_vs_ceiling(sweep, weak, directory / f"{key}.png")))
  if results.get("comparison"):
    figures.append(Figure("pgr_per_method", "pgr", f"baseline for the paired differences: "
                          f"{results.get('comparison_baseline')}",
                          report.plot_comparison(results["comparison"], directory / "pgr_per_method.png")))
  order = _in_order(results, {m for r in results["summary"] for m in (r["weak"], r["strong"])})
  for method in sweep.methods:
    key = f"pgr_heatmap_{slug(method)}"
    path = report.plot_pgr_heatmap(results["summary"], order, directory / f"{key}.png", method=method)
    if path is not None:
      figures.append(Figure(key, "heatmap", f"method {method}", path))
  for kind in sweep.stage_kinds:
    key = f"curves_{slug(kind)}"
    path = plot_training_curves(sweep, kind, directory / f"{key}.png")
    if path is not None:
      figures.append(Figure(key, "curves", f"{kind} stages", path))
  return figures


# --- the offline page ----------------------------------------------------------------------------

def markdown_to_html(text: str) -> str:
  """The subset of Markdown that report.markdown writes: '#' headings, pipe tables, '- ' lists, **bold**,
  paragraphs. Everything else is escaped text."""
  out, paragraph, table, items = [], [], [], []

  def inline(s: str) -> str:
    return re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", html.escape(s))

  def flush() -> None:
    if paragraph:
      out.append(f"<p>{inline(' '.join(paragraph))}</p>")
      paragraph.clear()
    if table:
      cells = [[c.strip() for c in row.strip().strip("|").split("|")] for row in table]
      body = [r for r in cells[1:] if not all(set(c) <= set("-: ") for c in r)]
      out.append("<table><tr>" + "".join(f"<th>{inline(c)}</th>" for c in cells[0]) + "</tr>"
                 + "".join("<tr>" + "".join(f"<td>{inline(c)}</td>" for c in r) + "</tr>" for r in body)
                 + "</table>")
      table.clear()
    if items:
      out.append("<ul>" + "".join(f"<li>{inline(i)}</li>" for i in items) + "</ul>")
      items.clear()

  for line in text.splitlines():
    heading = re.match(r"(#{1,6}) (.*)", line)
    if heading:
      flush()
      level = min(len(heading.group(1)) + 1, 6)  # the page's own title is the one h1
      out.append(f"<h{level}>{inline(heading.group(2))}</h{level}>")
    elif line.startswith("|"):
      if paragraph or items:
        flush()
      table.append(line)
    elif line.startswith("- "):
      if paragraph or table:
        flush()
      items.append(line[2:])
    elif not line.strip():
      flush()
    else:
      if table or items:
        flush()
      paragraph.append(line)
  flush()
  return "\n".join(out)


_STYLE = """body{font-family:sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;font-size:12px;margin:1em 0}th,td{border:1px solid #ccc;padding:3px 6px}
th{background:#f3f3f3}figure{display:inline-block;margin:0.5em}img{max-width:100%}figcaption{font-size:12px}"""


def write_html(sweep: Sweep, figures: list[Figure], path: epath.Path | None = None) -> epath.Path:
  """report.html: the results tables and every figure, the images inline (base64), so the one file is the report."""
  path = path or sweep.workdir / REPORT_DIR / "report.html"
  title = f"Weak-to-strong sweep {sweep.group}: {sweep.results.get('task')}"
  parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
           f"<style>{_STYLE}</style></head><body><h1>{html.escape(title)}</h1>",
           f"<p>workdir: <code>{html.escape(str(sweep.workdir))}</code>; W&amp;B project "
           f"<code>{html.escape(sweep.project)}</code>, group <code>{html.escape(sweep.group)}</code></p>"]
  for section, heading in SECTIONS.items():
    mine = [f for f in figures if f.section == section]
    if mine:
      parts.append(f"<h2>{html.escape(heading)}</h2>")
      for f in mine:
        data = base64.b64encode(f.path.read_bytes()).decode()
        parts.append(f"<figure><img alt='{html.escape(f.key)}' src='data:image/png;base64,{data}'>"
                     f"<figcaption>{html.escape(f.caption)}</figcaption></figure>")
  parts.append("<h2>Tables</h2>")
  parts.append(markdown_to_html(report.markdown(sweep.results)))
  parts.append("</body></html>")
  artifacts.write_file(path, "\n".join(parts))
  return path


# --- W&B -----------------------------------------------------------------------------------------

def result_run_id(group: str, row: dict[str, Any]) -> str:
  """A W&B run id for one results.json row, the same on every upload (W&B ids: at most 64 of [a-z0-9])."""
  key = json.dumps([group, row["weak"], row["strong"], row["method"], row["seed"], row.get("oracle")])
  return "w2s" + hashlib.sha256(key.encode()).hexdigest()[:24]


def result_runs(sweep: Sweep) -> list[dict[str, Any]]:
  """One W&B run per results.json row: {id, name, config, summary}; an undefined number is left out of the
  summary (W&B would draw a missing value as a gap, a null as zero)."""
  runs = []
  sizes = sweep.results.get("model_sizes") or {}
  for row in sweep.results["runs"]:
    config = {k: row.get(k) for k in RESULT_CONFIG} | {"strong_params": sizes.get(row["strong"]),
                                                       "weak_params": sizes.get(row["weak"])}
    summary = {k: row[k] for k in RESULT_SUMMARY if _finite(row.get(k))}
    name = f"{row['weak']}->{row['strong']}:{row['method']}:seed{row['seed']}"
    runs.append({"id": result_run_id(sweep.group, row), "name": name, "config": config, "summary": summary})
  return runs


def upload(sweep: Sweep, figures: list[Figure], *, mode: str, entity: str | None = None) -> None:
  """Log the result runs and the figures run into the sweep's W&B group (`mode` "online" or "offline": offline
  they land in the sweep's W&B directory for a later `wandb sync`)."""
  import wandb
  from w2s_jax import tracking
  directory = tracking.wandb_dir(sweep.workdir)
  directory.mkdir(parents=True, exist_ok=True)
  common = dict(project=sweep.project, entity=entity or sweep.entity, group=sweep.group, dir=str(directory), mode=mode,
                resume="allow", reinit="create_new")
  for r in result_runs(sweep):
    run = wandb.init(id=r["id"], name=r["name"], job_type=RESULT_JOB, config=r["config"], **common)
    run.summary.update(r["summary"])
    run.finish()
  run = wandb.init(id=result_run_id(sweep.group, {"weak": "", "strong": "", "method": FIGURES_JOB, "seed": -1}),
                   name=f"report:{sweep.group}", job_type=FIGURES_JOB, **common)
  run.log({f"figures/{f.key}": wandb.Image(str(_local_copy(f.path, directory / REPORT_DIR)), caption=f.caption)
           for f in figures})
  run.finish()


def _local_copy(path: epath.Path, directory: Path) -> Path:
  """`path` itself if local, else a copy in `directory`: wandb.Image reads local files only (a gs:// workdir)."""
  if artifacts.is_local(path):
    return Path(path)
  directory.mkdir(parents=True, exist_ok=True)
  copy = directory / path.name
  copy.write_bytes(path.read_bytes())
  return copy


def _runset(wr, expr, sweep: Sweep, entity: str, name: str, *filters):
  return wr.Runset(entity=entity, project=sweep.project, name=name,
                   filters=[expr.Metric("Group") == sweep.group, *filters])


def build(sweep: Sweep, figures: list[Figure], *, entity: str):
  """The W&B report (a wandb_workspaces Report; `.save()` publishes it). Built without contacting W&B."""
  import wandb_workspaces.reports.v2 as wr
  from wandb_workspaces import expr
  results = sweep.results
  result_job = expr.Metric("JobType") == RESULT_JOB

  def media(section: str, columns: int = 2):
    keys = [f"figures/{f.key}" for f in figures if f.section == section]
    return wr.MediaBrowser(title=SECTIONS[section], media_keys=keys, num_columns=columns,
                           layout=wr.Layout(w=24, h=10))

  figures_run = _runset(wr, expr, sweep, entity, "figures", expr.Metric("JobType") == FIGURES_JOB)
  blocks = [wr.H1(f"Weak-to-strong: {results.get('task')}"),
            wr.P(f"Sweep {sweep.group}: methods {', '.join(sweep.methods)}; seeds "
                 f"{sorted({r['seed'] for r in results['runs']})}; PGR undefined where the ceiling is not "
                 f"{results.get('min_gap_examples')} test examples above the weak model."),
            wr.TableOfContents(),
            wr.H2(SECTIONS["accuracy"])]
  for weak in sweep.weak_models:
    weak_runs = _runset(wr, expr, sweep, entity, f"weak {weak}", result_job, expr.Config("weak") == weak)
    blocks += [wr.H3(f"weak supervisor: {weak}"),
               wr.PanelGrid(runsets=[weak_runs], panels=[
                   wr.BarPlot(title=f"accuracy, weak {weak} (median over seeds, min-max)",
                              metrics=["weak_acc", "w2s_acc", "strong_acc"], groupby="config.strong",
                              groupby_aggfunc="median", groupby_rangefunc="minmax", layout=wr.Layout(w=12, h=8)),
                   wr.ScatterPlot(title=f"w2s accuracy against strong model size, weak {weak}",
                                  x="strong_params", y="w2s_acc", log_x=True, layout=wr.Layout(w=12, h=8))])]
  blocks += [wr.PanelGrid(runsets=[figures_run], panels=[media("accuracy")])]
  all_results = _runset(wr, expr, sweep, entity, "every result", result_job)
  blocks += [wr.H2(SECTIONS["pgr"]),
             wr.P("W&B bars: mean over seeds and pairs, whiskers one standard error; the figure: median over "
                  "seeds per pair, mean and its 95% bootstrap CI (w2s_jax/report.py)."),
             wr.PanelGrid(runsets=[all_results], panels=[
                 wr.BarPlot(title="PGR (accuracy) per method", metrics=["pgr"], groupby="config.method",
                            groupby_aggfunc="mean", groupby_rangefunc="stderr", layout=wr.Layout(w=12, h=8)),
                 wr.BarPlot(title="PGR (AUROC) per method", metrics=["pgr_auroc"], groupby="config.method",
                            groupby_aggfunc="mean", groupby_rangefunc="stderr", layout=wr.Layout(w=12, h=8))]),
             wr.PanelGrid(runsets=[figures_run], panels=[media("pgr", 1)]),
             wr.MarkdownBlock(report.comparison_markdown(results.get("comparison") or [],
                                                         baseline=results.get("comparison_baseline"))),
             wr.H2(SECTIONS["heatmap"]),
             wr.PanelGrid(runsets=[figures_run], panels=[media("heatmap")]),
             wr.H2(SECTIONS["curves"]),
             wr.P("The figures below are drawn from metrics.jsonl, so they show even where the stage runs were "
                  "logged offline and never synced; the line plots after them are W&B's own, over the stage runs."),
             wr.PanelGrid(runsets=[figures_run], panels=[media("curves")])]
  for kind in sweep.stage_kinds:
    metrics = [m for m in CURVE_METRICS if any(m in line for line in sweep.curves if _kind(line["stage"]) == kind)]
    stages = _runset(wr, expr, sweep, entity, f"{kind} stages", expr.Metric("JobType") == kind)
    blocks += [wr.H3(f"{kind} stages"),
               wr.PanelGrid(runsets=[stages], panels=[wr.LinePlot(title=f"{kind}: {m}", x="Step", y=[m],
                                                                  layout=wr.Layout(w=8, h=6)) for m in metrics])]
  blocks += [wr.H2("Tables"), wr.MarkdownBlock(report.markdown(results))]
  return wr.Report(project=sweep.project, entity=entity, title=f"W2S sweep {sweep.group}: {results.get('task')}",
                   description=f"workdir {sweep.workdir}", blocks=blocks, width="fluid")


def figure_counts(figures: list[Figure]) -> dict[str, int]:
  return {s: sum(f.section == s for f in figures) for s in SECTIONS}


def summary_line(figures: list[Figure], html_path: epath.Path) -> str:
  counts = ", ".join(f"{n} {s}" for s, n in figure_counts(figures).items())
  return f"wrote {len(figures)} figures ({counts}) and {html_path}"
