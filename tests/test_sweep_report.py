"""sweep_report.py and launch/report.py: the report of a real tiny two-seed sweep, built offline.

The W&B report object is built without contacting W&B (wandb-workspaces needs a login only to save it);
the tests check its blocks, panels, media keys and run filters, the result runs that `upload` would log,
and the offline figures and HTML page.
"""

import base64
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests import test_pipeline, tiny_models
from w2s_jax import sweep_report
from w2s_jax.errors import UserError
from w2s_jax.protocol import sweep

REPO = Path(__file__).resolve().parents[1]
GROUP = "report-sweep"


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
  """A finished sweep: weak -> strong, methods xent and logconf, seeds 0 and 1 (about a minute on CPU)."""
  assets = tiny_models.gpt2_pair(tmp_path_factory.mktemp("assets"), strong_embd=32, strong_layers=2, n_examples=400)
  workdir = tmp_path_factory.mktemp("sweep")
  c = test_pipeline.tiny_config(assets, **{"seeds": (0, 1), "wandb.mode": "disabled", "wandb.group": GROUP,
                                           "train.epochs": 2.0})
  sweep.run(c, workdir)
  return workdir


@pytest.fixture(scope="module")
def written(finished):
  loaded = sweep_report.load(finished)
  figures = sweep_report.write_figures(loaded)
  return loaded, figures, sweep_report.write_html(loaded, figures)


def test_load_reads_the_sweep_and_its_curves(finished):
  loaded = sweep_report.load(finished)
  assert loaded.group == GROUP and loaded.project == "w2s_jax"
  assert loaded.methods == ["xent", "logconf"]
  assert loaded.weak_models == ["weak"]
  assert loaded.stage_kinds[0] == "ground_truth" and "weak_to_strong" in loaded.stage_kinds
  assert all("step" in line and "summary" not in line for line in loaded.curves)


def test_a_workdir_without_results_is_one_clear_error(tmp_path):
  with pytest.raises(UserError, match="results.json does not exist.*run launch/main.py"):
    sweep_report.load(tmp_path)
  (tmp_path / "results.json").write_text(json.dumps({"runs": []}))
  with pytest.raises(UserError, match="no weak-to-strong runs"):
    sweep_report.load(tmp_path)


def test_a_line_cut_short_by_a_killed_run_is_skipped(finished, tmp_path):
  for name in ("results.json", "config.json"):
    (tmp_path / name).write_text((finished / name).read_text())
  lines = (finished / "metrics.jsonl").read_text()
  (tmp_path / "metrics.jsonl").write_text(lines + '{"stage": "weak_to_strong:weak->strong:xent:seed0", "st')
  assert len(sweep_report.load(tmp_path).curves) == len(sweep_report.load(finished).curves)


def test_figures_are_real_pngs_in_report_order(written):
  loaded, figures, _ = written
  counts = sweep_report.figure_counts(figures)
  # one accuracy panel per weak model, the PGR-per-method figure, one heatmap per method, one curve figure per kind
  assert counts == {"accuracy": 1, "pgr": 1, "heatmap": 2, "curves": len(loaded.stage_kinds)}
  assert [f.section for f in figures] == sorted((f.section for f in figures), key=list(sweep_report.SECTIONS).index)
  assert {f.key for f in figures} >= {"accuracy_weak", "pgr_per_method", "pgr_heatmap_xent", "pgr_heatmap_logconf",
                                      "curves_ground_truth", "curves_weak_to_strong"}
  for f in figures:
    assert f.path.parent == loaded.workdir / sweep_report.REPORT_DIR and f.path.stem == f.key
    assert f.path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_html_page_holds_every_figure_inline_and_the_tables(written):
  loaded, figures, page = written
  text = page.read_text()
  images = re.findall(r"src='data:image/png;base64,([A-Za-z0-9+/=]+)'", text)
  assert len(images) == len(figures)
  assert {base64.b64decode(i) for i in images} == {f.path.read_bytes() for f in figures}
  assert "<table>" in text and "<th>" in text and "logconf" in text
  for heading in sweep_report.SECTIONS.values():
    assert sweep_report.html.escape(heading) in text
  assert "src='http" not in text and "<script" not in text  # self-contained: nothing to fetch


def test_markdown_to_html_tables_lists_and_escaping():
  page = sweep_report.markdown_to_html("# Title\n\nsome **bold** <text>\n\n| a | b |\n|---|---|\n| 1 | 2 |\n\n- x\n- y")
  assert page.splitlines() == ["<h2>Title</h2>", "<p>some <b>bold</b> &lt;text&gt;</p>",
                               "<table><tr><th>a</th><th>b</th></tr><tr><td>1</td><td>2</td></tr></table>",
                               "<ul><li>x</li><li>y</li></ul>"]


def test_result_runs_one_per_row_with_stable_ids_and_no_nulls(finished):
  loaded = sweep_report.load(finished)
  runs = sweep_report.result_runs(loaded)
  assert len(runs) == len(loaded.results["runs"]) == 4  # 2 methods x 2 seeds
  ids = [r["id"] for r in runs]
  assert len(set(ids)) == 4 and all(re.fullmatch(r"[a-z0-9]{1,64}", i) for i in ids)
  assert ids == [r["id"] for r in sweep_report.result_runs(sweep_report.load(finished))]  # re-upload: same runs
  other_group = sweep_report.result_run_id("another-sweep", loaded.results["runs"][0])
  assert other_group not in ids
  for r, row in zip(runs, loaded.results["runs"]):
    assert r["config"]["method"] == row["method"] and r["config"]["seed"] == row["seed"]
    assert r["config"]["strong_params"] > r["config"]["weak_params"] > 0
    assert r["summary"]["w2s_acc"] == row["w2s_acc"]
    assert all(isinstance(v, (int, float)) for v in r["summary"].values())
    assert set(r["summary"]) <= set(sweep_report.RESULT_SUMMARY)


def test_an_undefined_pgr_is_left_out_of_the_summary_not_logged_as_null(finished, tmp_path):
  results = json.loads((finished / "results.json").read_text())
  results["runs"][0]["pgr"] = None
  (tmp_path / "results.json").write_text(json.dumps(results))
  runs = sweep_report.result_runs(sweep_report.load(tmp_path))
  assert "pgr" not in runs[0]["summary"] and "pgr" in runs[1]["summary"]


def _filters(block) -> list[str]:
  return [rs.filters for rs in block.runsets]


def test_the_wandb_report_panels_and_run_filters(written):
  wr = pytest.importorskip("wandb_workspaces.reports.v2")
  loaded, figures, _ = written
  built = sweep_report.build(loaded, figures, entity="my-team")
  assert isinstance(built, wr.Report)
  assert built.entity == "my-team" and built.project == "w2s_jax" and GROUP in built.title
  grids = [b for b in built.blocks if isinstance(b, wr.PanelGrid)]
  headings = [b.text for b in built.blocks if isinstance(b, (wr.H2, wr.H3))]
  assert headings[:2] == [sweep_report.SECTIONS["accuracy"], "weak supervisor: weak"]
  assert {sweep_report.SECTIONS[s] for s in sweep_report.SECTIONS} <= set(headings)
  for grid in grids:  # every runset is this sweep's group, in the sweep's project
    for rs in grid.runsets:
      assert rs.entity == "my-team" and rs.project == "w2s_jax"
      assert f"Metric(\"Group\") == '{GROUP}'" in rs.filters

  # the accuracy-against-ceiling bars: this weak model's result runs, grouped by the strong student
  weak_grid = next(g for g in grids if any("Config(\"weak\") == 'weak'" in f for f in _filters(g)))
  assert "Metric(\"JobType\") == 'result'" in weak_grid.runsets[0].filters
  bars = [p for p in weak_grid.panels if isinstance(p, wr.BarPlot)]
  assert bars[0].metrics == ["weak_acc", "w2s_acc", "strong_acc"] and bars[0].groupby == "config.strong"
  assert bars[0].groupby_aggfunc == "median" and bars[0].groupby_rangefunc == "minmax"

  # PGR per method over every result run, with error bars
  pgr_bars = [p for g in grids for p in g.panels if isinstance(p, wr.BarPlot) and p.groupby == "config.method"]
  assert [p.metrics for p in pgr_bars] == [["pgr"], ["pgr_auroc"]]
  assert all(p.groupby_rangefunc == "stderr" for p in pgr_bars)

  # the figures: media browsers over the figures run, one media key per offline figure
  media = [p for g in grids for p in g.panels if isinstance(p, wr.MediaBrowser)]
  assert sorted(k for p in media for k in p.media_keys) == sorted(f"figures/{f.key}" for f in figures)
  media_grids = [g for g in grids if any(isinstance(p, wr.MediaBrowser) for p in g.panels)]
  assert all("Metric(\"JobType\") == 'report'" in g.runsets[0].filters for g in media_grids)

  # training curves: one grid per kind of stage, over that kind's stage runs
  curve_grids = [g for g in grids if any(isinstance(p, wr.LinePlot) for p in g.panels)]
  assert len(curve_grids) == len(loaded.stage_kinds)
  for grid, kind in zip(curve_grids, loaded.stage_kinds):
    assert f"Metric(\"JobType\") == '{kind}'" in grid.runsets[0].filters
    assert {p.y[0] for p in grid.panels} <= set(sweep_report.CURVE_METRICS)
    assert "loss" in {p.y[0] for p in grid.panels}

  # the tables close the report
  assert isinstance(built.blocks[-1], wr.MarkdownBlock) and "logconf" in built.blocks[-1].text


def test_launch_report_offline_and_its_error(finished, tmp_path):
  run = subprocess.run([sys.executable, str(REPO / "launch/report.py"), str(finished)], capture_output=True, text=True,
                       cwd=REPO, timeout=300)
  assert run.returncode == 0, run.stderr[-2000:]
  assert re.search(r"wrote \d+ figures \(1 accuracy, 1 pgr, 2 heatmap, \d+ curves\) and .*report\.html", run.stdout)
  assert (finished / sweep_report.REPORT_DIR / "report.html").exists()
  missing = subprocess.run([sys.executable, str(REPO / "launch/report.py"), str(tmp_path)], capture_output=True,
                           text=True, cwd=REPO, timeout=300)
  assert missing.returncode != 0
  assert missing.stderr.strip().splitlines()[-1].startswith("error: ") and "results.json does not exist" in missing.stderr


def test_upload_offline_logs_the_result_runs_and_the_figures(written, tmp_path, monkeypatch):
  pytest.importorskip("wandb")
  monkeypatch.setenv("WANDB_SILENT", "true")
  loaded, figures, _ = written
  sweep_report.upload(loaded, figures, mode="offline")
  from w2s_jax import tracking
  run_dirs = sorted(tracking.wandb_dir(loaded.workdir).glob("wandb/offline-run-*"))
  ids = {d.name.rsplit("-", 1)[-1] for d in run_dirs}
  assert {r["id"] for r in sweep_report.result_runs(loaded)} <= ids
  assert len(ids) == len(loaded.results["runs"]) + 1  # and the figures run
