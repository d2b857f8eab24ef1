"""report.py: PGR's arithmetic, the summaries over seeds and the paper-code aggregation, with hand-computed numbers."""

import json
import os
import math

import numpy as np
import pytest

from w2s_jax import report

GAP = report.min_gap(1000, 10)  # 0.01: ten examples of a 1,000-example test set


def run(weak, strong, method, seed, weak_acc, strong_acc, w2s_acc, *, auroc=(0.7, 0.9, 0.8), n_test=1000,
        min_gap_examples=10, oracle=False, **extra):
  """A run dict as the pipeline builds it, its PGRs computed by report.pgr; `extra` adds or overrides fields."""
  gap = report.min_gap(n_test, min_gap_examples)
  weak_auroc, strong_auroc, w2s_auroc = auroc
  return {"weak": weak, "strong": strong, "method": method, "seed": seed,
          "weak_acc": weak_acc, "strong_acc": strong_acc, "w2s_acc": w2s_acc,
          "pgr": report.pgr(weak_acc, w2s_acc, strong_acc, min_gap=gap),
          "weak_auroc": weak_auroc, "strong_auroc": strong_auroc, "w2s_auroc": w2s_auroc,
          "pgr_auroc": report.pgr(weak_auroc, w2s_auroc, strong_auroc, min_gap=gap),
          "agreement": 0.9, "n_test": n_test, "oracle": oracle, "selected_step": None, "supervisor": weak,
          "n_fit": 500, **extra}


def three_seed_runs():
  """a->b over 3 seeds: PGR .2, .6 and undefined (seed 2's ceiling equals its weak model)."""
  return [run("a", "b", "xent", 0, 0.60, 0.80, 0.64), run("a", "b", "xent", 1, 0.60, 0.80, 0.72),
          run("a", "b", "xent", 2, 0.80, 0.80, 0.81)]


# --- pgr / min_gap ---------------------------------------------------------------------------------------------


def test_min_gap_is_counted_in_test_examples():
  assert report.min_gap(1000, 10) == pytest.approx(0.01)
  assert report.min_gap(500, 10) == pytest.approx(0.02)
  assert report.DEFAULT_MIN_GAP_EXAMPLES == 10
  with pytest.raises(ValueError):
    report.min_gap(0, 10)


def test_ceiling_below_weak_is_undefined_not_sign_flipped():
  # The audited fault: the old abs(gap) check gave (0.82 - 0.80) / (0.78 - 0.80) = -1.0.
  assert report.pgr(0.80, 0.82, 0.78, min_gap=GAP) is None
  assert report.pgr(0.80, 0.82, 0.78, min_gap=0.0) is None
  assert report.pgr(0.80, 0.82, 0.80, min_gap=0.0) is None  # a zero gap is never divided by


def test_gap_exactly_at_min_gap_is_defined_and_just_below_is_not():
  assert report.pgr(0.70, 0.705, 0.71, min_gap=GAP) == pytest.approx(0.5)
  # 0.563 - 0.553 is 0.00999...98 in floating point: still a gap of exactly ten examples of 1,000.
  assert 0.563 - 0.553 < GAP
  assert report.pgr(0.553, 0.558, 0.563, min_gap=GAP) == pytest.approx(0.5)
  assert report.pgr(0.70, 0.705, 0.7099, min_gap=GAP) is None
  assert report.pgr(0.70, 0.705, 0.709, min_gap=GAP) is None  # nine examples


def test_normal_pgr_and_missing_inputs():
  assert report.pgr(0.60, 0.70, 0.80, min_gap=GAP) == pytest.approx(0.5)
  assert report.pgr(0.60, 0.55, 0.80, min_gap=GAP) == pytest.approx(-0.25)  # worse than the weak teacher
  assert report.pgr(0.60, 0.90, 0.80, min_gap=GAP) == pytest.approx(1.5)
  assert report.pgr(0.60, float("nan"), 0.80, min_gap=GAP) is None
  assert report.pgr(None, 0.70, 0.80, min_gap=GAP) is None


# --- summarize -------------------------------------------------------------------------------------------------


def test_summary_spread_and_left_out_count():
  (row,) = report.summarize(three_seed_runs())
  assert (row["weak"], row["strong"], row["method"], row["seeds"]) == ("a", "b", "xent", [0, 1, 2])
  assert row["oracle"] is False
  s = row["pgr"]
  assert (s["n"], s["n_left_out"]) == (2, 1)
  assert s["median"] == pytest.approx(0.4)
  assert s["mean"] == pytest.approx(0.4)
  assert s["std"] == pytest.approx(math.sqrt(0.08))  # ddof=1: ((.2)^2 + (.2)^2) / 1
  assert (s["min"], s["max"]) == (pytest.approx(0.2), pytest.approx(0.6))
  assert row["left_out"]["pgr"] == [{"seed": 2, "reason": report.GAP_REASON}]
  w = row["w2s_acc"]
  assert (w["n"], w["n_left_out"]) == (3, 0)
  assert w["median"] == pytest.approx(0.72)
  assert w["mean"] == pytest.approx((0.64 + 0.72 + 0.81) / 3)
  assert w["std"] == pytest.approx(np.std([0.64, 0.72, 0.81], ddof=1))
  assert (w["min"], w["max"]) == (pytest.approx(0.64), pytest.approx(0.81))
  assert row["pgr_auroc"]["n_left_out"] == 0 and "pgr_auroc" not in row["left_out"]


def test_all_undefined_gives_none_stats():
  (row,) = report.summarize([run("a", "b", "xent", 0, 0.80, 0.78, 0.82)])
  assert row["pgr"] == {"median": None, "min": None, "max": None, "mean": None, "std": None, "ci95": None,
                        "n": 0, "n_left_out": 1}
  assert row["w2s_acc"]["std"] == 0.0  # one value


def test_bootstrap_ci():
  values = [0.2, 0.4, 0.6, 0.8]
  s = report._spread(values)
  lo, hi = s["ci95"]
  assert lo < s["mean"] < hi
  assert s["min"] <= lo and hi <= s["max"]
  # Bootstrap SE of the mean is sqrt(0.05) / 2 ~ 0.11, so the interval is about mean +- 0.2, not [min, max].
  assert 0.25 < lo < 0.4 and 0.6 < hi < 0.75
  assert report._spread(values)["ci95"] == [lo, hi]  # deterministic
  # Interpolated percentiles of a less regular sample would change with the generator's draws.
  uneven = [0.13, 0.52, 0.71, 0.2, 0.95, 0.33, 0.6, 0.47]
  assert report._spread(uneven)["ci95"] == report._spread(list(uneven))["ci95"]
  assert report._spread([0.37])["ci95"] == [0.37, 0.37]
  assert report._spread([0.5, 0.5, 0.5])["ci95"] == [0.5, 0.5]
  skewed = report._spread([0.0, 0.0, 0.0, 1.0, 0.1])
  assert skewed["min"] <= skewed["ci95"][0] <= skewed["mean"] <= skewed["ci95"][1] <= skewed["max"]


def chain(seed, strong_acc, *, relabel="in_sample", method="xent", w2s_auroc=0.8, oracle=False):
  """A chain row as the pipeline builds it: a>b>c, weak .6 / AUROC .7, chain w2s .7, direct .65, ceiling AUROC .9."""
  return {"chain": "a>b>c", "method": method, "relabel": relabel, "seed": seed, "steps": [],
          "weak_acc": 0.6, "strong_acc": strong_acc, "w2s_acc": 0.7, "direct_w2s_acc": 0.65,
          "weak_auroc": 0.7, "strong_auroc": 0.9, "w2s_auroc": w2s_auroc, "direct_w2s_auroc": 0.75, "n_test": 1000,
          "pgr": report.pgr(0.6, 0.7, strong_acc, min_gap=GAP),
          "direct_pgr": report.pgr(0.6, 0.65, strong_acc, min_gap=GAP),
          "pgr_auroc": report.pgr(0.7, w2s_auroc, 0.9, min_gap=GAP),
          "direct_pgr_auroc": report.pgr(0.7, 0.75, 0.9, min_gap=GAP),
          "oracle": oracle}


def test_summarize_chains_counts_undefined_pgr():
  (row,) = report.summarize_chains([chain(0, 0.8), chain(1, 0.59)])
  assert (row["chain"], row["method"], row["relabel"], row["oracle"]) == ("a>b>c", "xent", "in_sample", False)
  assert row["pgr"]["median"] == pytest.approx(0.5) and row["pgr"]["n_left_out"] == 1
  assert row["direct_pgr"]["median"] == pytest.approx(0.25) and row["direct_pgr"]["ci95"] == [pytest.approx(0.25)] * 2
  assert row["left_out"]["direct_pgr"] == [{"seed": 1, "reason": report.GAP_REASON}]
  assert row["pgr_auroc"]["median"] == pytest.approx(0.5) and row["direct_pgr_auroc"]["median"] == pytest.approx(0.25)


def test_chains_are_grouped_by_relabelling():
  rows = report.summarize_chains([chain(0, 0.8), chain(0, 0.8, relabel="held_out", w2s_auroc=0.86),
                                  chain(1, 0.8, relabel="held_out", w2s_auroc=0.86)])
  assert [(r["relabel"], len(r["seeds"])) for r in rows] == [("in_sample", 1), ("held_out", 2)]
  assert rows[1]["pgr_auroc"]["median"] == pytest.approx(0.8)


# --- the paper code's aggregation ------------------------------------------------------------------------------


def oai_runs():
  """a->b: the two seeds' weak/ceiling differ, so averaging first changes PGR. c->d: averaged ceiling below weak."""
  return [
      run("a", "b", "xent", 0, 0.70, 0.80, 0.75, auroc=(0.7, 0.9, 0.76)),
      run("a", "b", "xent", 1, 0.60, 0.90, 0.80, auroc=(0.7, 0.9, 0.86)),
      run("a", "b", "conf", 0, 0.70, 0.80, 0.85, auroc=(0.7, 0.9, 0.80)),
      run("a", "b", "conf", 1, 0.60, 0.90, 0.65, auroc=(0.7, 0.9, 0.80)),
      run("c", "d", "xent", 0, 0.80, 0.78, 0.79, auroc=(0.7, 0.9, 0.80)),
      run("c", "d", "xent", 1, 0.80, 0.81, 0.805, auroc=(0.7, 0.9, 0.90)),
      run("c", "d", "conf", 0, 0.80, 0.78, 0.79, auroc=(0.7, 0.9, 0.80)),
      run("c", "d", "conf", 1, 0.80, 0.81, 0.805, auroc=(0.7, 0.9, 0.90)),
  ]


def test_oai_aggregation_averages_weak_and_ceiling_first():
  runs = oai_runs()
  rows = {r["method"]: r for r in report.summarize_oai(runs, min_gap_examples=10)}
  assert list(rows) == ["xent", "conf"]
  # xent, a->b: mean weak .65, mean ceiling .85; PGRs (.75-.65)/.2 = .5 and (.80-.65)/.2 = .75.
  xent = rows["xent"]["pgr"]
  assert xent["median"] == pytest.approx(0.625)
  assert (xent["n"], xent["n_left_out"], xent["n_pairs"], xent["n_pairs_left_out"]) == (2, 2, 1, 1)
  assert xent["left_out_pairs"] == ["c->d"]  # mean ceiling .795 < mean weak .80, though seed 1 alone is defined
  # conf, a->b: (.85-.65)/.2 = 1.0 and (.65-.65)/.2 = 0.0.
  assert rows["conf"]["pgr"]["median"] == pytest.approx(0.5)
  # Per-seed PGRs against each seed's own numbers give other medians: xent (.5 + .6667)/2, conf (1.5 + .1667)/2.
  summary = {(r["weak"], r["method"]): r for r in report.summarize(runs)}
  assert summary[("a", "xent")]["pgr"]["median"] == pytest.approx((0.5 + 2 / 3) / 2)
  assert summary[("a", "conf")]["pgr"]["median"] == pytest.approx((1.5 + 1 / 6) / 2)
  assert summary[("c", "xent")]["pgr"]["n"] == 1  # per seed, c->d seed 1 (gap of exactly 10 examples) counts
  # AUROC, xent: every pair's gap is .2; a->b (.76-.7)/.2 = .3, (.86-.7)/.2 = .8; c->d .5, 1.0.
  auroc = rows["xent"]["pgr_auroc"]
  assert auroc["median"] == pytest.approx(0.65)
  assert (auroc["n"], auroc["n_left_out"], auroc["n_pairs"], auroc["n_pairs_left_out"]) == (4, 0, 2, 0)
  assert rows["xent"]["min_gap_examples"] == 10 and rows["xent"]["oracle"] is False


def test_oai_weak_numbers_are_the_methods_own_supervisor():
  # An ensemble supervisor at .70 beside the single weak model at .60; ceiling .80 for both.
  runs = [run("a", "b", "xent", s, 0.60, 0.80, 0.70) for s in (0, 1)]
  runs += [run("a", "b", "ensemble+xent", s, 0.70, 0.80, 0.75) for s in (0, 1)]
  rows = {r["method"]: r for r in report.summarize_oai(runs)}
  assert rows["xent"]["pgr"]["median"] == pytest.approx(0.5)
  assert rows["ensemble+xent"]["pgr"]["median"] == pytest.approx(0.5)  # (.75 − .70) / (.80 − .70)


def test_oai_min_gap_examples_is_used():
  # 300 examples of 1,000 = .3 > a->b's averaged gap of .2: every pair is left out.
  rows = report.summarize_oai(oai_runs(), min_gap_examples=300)
  assert all(r["pgr"]["median"] is None and r["pgr"]["n"] == 0 and r["pgr"]["n_left_out"] == 4 for r in rows)
  # With a 100-example test set the 10-example floor is .1, so a pair with an averaged gap of .05 is out.
  runs = [run("a", "b", "xent", s, 0.60, 0.65, 0.62, n_test=100) for s in (0, 1)]
  (row,) = report.summarize_oai(runs, min_gap_examples=10)
  assert row["pgr"]["n_pairs_left_out"] == 1 and row["pgr"]["median"] is None
  (row,) = report.summarize_oai(runs, min_gap_examples=5)
  assert row["pgr"]["median"] == pytest.approx(0.4)


# --- markdown, JSON, plots -------------------------------------------------------------------------------------


def results_for(runs, chains=()):
  return {"task": "toy", "model_order": ["a", "b", "c", "d"], "runs": runs, "summary": report.summarize(runs),
          "oai_summary": report.summarize_oai(runs, min_gap_examples=10), "min_gap_examples": 10,
          "chains": list(chains), "chain_summary": report.summarize_chains(list(chains)), "wall_s": 1.5}


def test_markdown_shows_na_left_out_and_oai_section():
  runs = three_seed_runs() + [run("c", "d", "xent", 0, 0.80, 0.78, 0.82)]
  md = report.markdown(results_for(runs))
  lines = md.splitlines()
  ab = next(line for line in lines if line.startswith("| a | b | xent | 0.600 [0.600, 0.800]"))
  assert "| 0.400 [0.200, 0.600] |" in ab  # PGR median [min, max]
  lo, hi = report.summarize(three_seed_runs())[0]["pgr"]["ci95"]
  assert f"| 0.400 [{lo:.3f}, {hi:.3f}] |" in ab  # PGR mean [95% CI]
  assert "PGR: 2 of 3 seeds; 1 left out: ceiling not clearly above weak" in ab
  cd = next(line for line in lines if line.startswith("| c | d | xent |"))
  assert "| 0.820 | n/a | n/a | 0.500 |" in cd  # PGR and its mean undefined, its AUROC PGR defined
  assert "PGR: 0 of 1 seeds; 1 left out" in cd
  assert "## Aggregated as the paper code does" in md
  oai = next(line for line in lines if line.startswith("| xent | "))
  assert "c->d" in oai
  assert "10 test examples" in md and "0.0100 for n_test = 1,000" in md


def test_markdown_without_oai_or_min_gap_says_so():
  results = results_for(three_seed_runs())
  del results["oai_summary"], results["min_gap_examples"]
  md = report.markdown(results)
  assert "paper code" not in md and "not recorded" in md


def test_write_json_nulls_and_plots_with_undefined_values(tmp_path):
  chains = [chain(0, 0.59)]
  runs = three_seed_runs() + [run("c", "d", "xent", 0, 0.80, 0.78, 0.82, auroc=(0.7, float("nan"), 0.8))]
  report.write(results_for(runs, chains), tmp_path)
  data = json.loads((tmp_path / "results.json").read_text())
  assert data["runs"][2]["pgr"] is None and data["runs"][3]["pgr"] is None
  assert data["runs"][3]["strong_auroc"] is None  # NaN -> null
  cd = next(r for r in data["summary"] if r["weak"] == "c")
  assert cd["pgr"]["median"] is None and cd["pgr"]["ci95"] is None
  assert data["chain_summary"][0]["pgr"]["n_left_out"] == 1
  assert "chain PGR: 0 of 1 seeds; 1 left out" in (tmp_path / "results.md").read_text()
  for name in ("accuracy.png", "pgr.png"):
    assert (tmp_path / name).stat().st_size > 0
  assert not (tmp_path / "methods.png").exists()  # no comparison in these results


def test_plot_when_every_value_is_undefined(tmp_path):
  results = results_for([run("a", "b", "xent", 0, 0.80, 0.78, 0.82)])
  for field in ("weak_acc", "strong_acc", "w2s_acc"):
    results["summary"][0][field] = report._spread([None])
  paths = report.plot(results, tmp_path)
  assert [p.name for p in paths] == ["accuracy.png", "pgr.png"] and all(os.path.getsize(p) > 0 for p in paths)


# --- methods compared ------------------------------------------------------------------------------------------


def method_runs(method, w2s_accs, *, w2s_auroc=0.8, oracle=False):
  """a->b over seeds 0-2, weak .6 and ceiling .8 on every seed, so PGR = (w2s − .6) / .2 (None: w2s missing)."""
  return [run("a", "b", method, seed, 0.60, 0.80, w2s, auroc=(0.7, 0.9, w2s_auroc), oracle=oracle,
              agreement_supervisor_right=0.95, agreement_supervisor_wrong=0.4, misfit=0.1)
          for seed, w2s in enumerate(w2s_accs)]


def compared_runs():
  """PGRs per seed: xent .2 .5 .3; logconf .5 .4 .6; drop .1 n/a 1.0; the oracle .8 .8 .8."""
  return (method_runs("xent", (0.64, 0.70, 0.66), w2s_auroc=0.76)  # PGR (AUROC) .3 on every seed
          + method_runs("logconf", (0.70, 0.68, 0.72))  # PGR (AUROC) .5
          + method_runs("xent+drop_least_confident", (0.62, None, 0.80))
          + method_runs("xent+oracle_auroc", (0.76, 0.76, 0.76), oracle=True))


def by_method(rows):
  return {r["method"]: r for r in rows}


def test_compare_methods_ranks_by_median_pgr():
  rows = report.compare_methods(compared_runs())
  assert [(r["rank"], r["method"]) for r in rows] == [
      (1, "xent+oracle_auroc"), (2, "xent+drop_least_confident"), (3, "logconf"), (4, "xent")]
  medians = [r["pgr"]["median"] for r in rows]
  assert medians == [pytest.approx(m) for m in (0.8, 0.55, 0.5, 0.3)]
  assert [r["oracle"] for r in rows] == [True, False, False, False]
  assert all((r["weak"], r["strong"], r["seeds"], r["supervisor"]) == ("a", "b", [0, 1, 2], "a") for r in rows)
  assert rows[0]["w2s_acc"]["median"] == pytest.approx(0.76) and rows[0]["n_fit"]["median"] == 500
  assert rows[0]["misfit"]["median"] == pytest.approx(0.1)


def test_paired_difference_and_wins_against_the_baseline_by_hand():
  logconf = by_method(report.compare_methods(compared_runs(), baseline="xent"))["logconf"]
  # logconf − xent per seed: .5 − .2, .4 − .5, .6 − .3 = +.3, −.1, +.3; above xent on seeds 0 and 2.
  d = logconf["pgr_vs_baseline"]
  assert d["mean"] == pytest.approx(0.5 / 3)
  assert (d["wins"], d["n"], d["seeds"]) == (2, 3, [0, 1, 2])
  assert d["ci95"] == pytest.approx(report._bootstrap_ci(np.array([0.3, -0.1, 0.3])))
  assert -0.1 - 1e-12 <= d["ci95"][0] <= d["mean"] <= d["ci95"][1] <= 0.3 + 1e-12
  # AUROC: .5 − .3 on every seed.
  a = logconf["pgr_auroc_vs_baseline"]
  assert a["mean"] == pytest.approx(0.2) and a["ci95"] == [pytest.approx(0.2)] * 2 and (a["wins"], a["n"]) == (3, 3)


def test_undefined_pgr_is_left_out_of_the_median_and_the_pairing():
  drop = by_method(report.compare_methods(compared_runs()))["xent+drop_least_confident"]
  # Seed 1 has no w2s accuracy: the median is over .1 and 1.0, and seed 1 is counted out.
  assert drop["pgr"]["median"] == pytest.approx(0.55)
  assert (drop["pgr"]["n"], drop["pgr"]["n_left_out"]) == (2, 1)
  # Paired on seeds 0 and 2 only: .1 − .2 = −.1, 1.0 − .3 = +.7.
  d = drop["pgr_vs_baseline"]
  assert d["mean"] == pytest.approx(0.3) and (d["wins"], d["n"], d["seeds"]) == (1, 2, [0, 2])
  assert drop["pgr_auroc_vs_baseline"]["n"] == 3  # its AUROC is defined on every seed


def test_baseline_has_no_paired_difference():
  xent = by_method(report.compare_methods(compared_runs()))["xent"]
  assert xent["pgr_vs_baseline"] is None and xent["pgr_auroc_vs_baseline"] is None
  line = next(line for line in report.comparison_markdown(report.compare_methods(compared_runs()),
                                                          baseline="xent").splitlines()
              if line.startswith("| 4 | xent |"))
  assert line.count("| baseline |") == 2


def test_missing_baseline_gives_no_paired_columns():
  runs = [r for r in compared_runs() if r["method"] != "xent"]
  rows = report.compare_methods(runs, baseline="xent")
  assert all(r["pgr_vs_baseline"] is None and r["pgr_auroc_vs_baseline"] is None for r in rows)
  md = report.comparison_markdown(rows, baseline="xent")
  assert "vs baseline |" not in md
  assert "| rank | method | w2s acc | PGR | PGR (AUROC) | agreement, supervisor right / wrong | misfit |" in md
  md = report.comparison_markdown(report.compare_methods(compared_runs()), baseline=None)
  assert "vs baseline" not in md and "None" not in md


def test_comparison_table_cells():
  rows = report.compare_methods(compared_runs())
  md = report.comparison_markdown(rows, baseline="xent")
  assert ("| rank | method | w2s acc | PGR | PGR vs baseline | PGR (AUROC) | PGR (AUROC) vs baseline | "
          "agreement, supervisor right / wrong | misfit |") in md
  lines = md.splitlines()
  assert [line.split(" | ")[1] for line in lines if line.startswith("| ") and not line.startswith("| rank")
          and not line.startswith("| ---")] == ["xent+oracle_auroc (ORACLE)", "xent+drop_least_confident",
                                                "logconf", "xent"]
  lo, hi = by_method(rows)["logconf"]["pgr_vs_baseline"]["ci95"]
  logconf = next(line for line in lines if line.startswith("| 3 | logconf |"))
  signed = lambda x: f"{x:+.3f}".replace("-", "−")
  assert f"| 0.500 [0.400, 0.600] | {signed(0.5 / 3)} [{signed(lo)}, {signed(hi)}], 2/3 |" in logconf
  assert "| +0.200 [+0.200, +0.200], 3/3 |" in logconf  # AUROC: the same difference on every seed
  assert "| 0.950 [0.950, 0.950] / 0.400 [0.400, 0.400] | 0.100 [0.100, 0.100] |" in logconf
  drop = next(line for line in lines if line.startswith("| 2 | xent+drop_least_confident |"))
  assert "| 0.550 [0.100, 1.000] (2 of 3 seeds) |" in drop and ", 1/2 |" in drop
  assert "-" not in drop.replace("| ---", "").replace("xent+drop_least_confident", "")  # minus signs are −


def test_oracle_marked_in_every_table_and_noted_once(tmp_path):
  runs = compared_runs()
  results = results_for(runs, [chain(0, 0.8, method="xent+oracle_auroc", oracle=True)])
  results |= {"comparison": report.compare_methods(runs), "comparison_baseline": "xent"}
  md = report.markdown(results)
  lines = md.splitlines()
  assert lines[2].startswith("**ORACLE**: rows marked (ORACLE)") and md.count("**ORACLE**") == 1
  assert "## Methods compared" in md
  mentions = [line for line in lines if "xent+oracle_auroc" in line]
  assert len(mentions) == 6  # main, means, comparison, imitation, paper-code and chain tables
  assert all("xent+oracle_auroc (ORACLE)" in line for line in mentions)
  assert not any("logconf (ORACLE)" in line for line in lines)
  assert "(ORACLE)" not in report.markdown(results_for(method_runs("xent", (0.64, 0.70, 0.66))))


def test_compare_methods_ranks_within_each_pair_and_rejects_repeated_seeds():
  runs = compared_runs() + [run("c", "d", m, 0, 0.6, 0.8, w) for m, w in (("xent", 0.7), ("logconf", 0.65))]
  rows = report.compare_methods(runs)
  cd = [(r["rank"], r["method"]) for r in rows if r["weak"] == "c"]
  assert cd == [(1, "xent"), (2, "logconf")]
  assert rows[-1]["pgr_vs_baseline"]["mean"] == pytest.approx(-0.25)  # paired within c->d only
  with pytest.raises(ValueError, match="more than once"):
    report.compare_methods(compared_runs() + method_runs("xent", (0.7,)))


def test_plot_comparison_and_write_methods_png(tmp_path):
  rows = report.compare_methods(compared_runs() + method_runs("nothing_defined", (None, None, None)))
  path = report.plot_comparison(rows, tmp_path / "cmp.png")
  assert path == tmp_path / "cmp.png" and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  runs = compared_runs()
  results = results_for(runs) | {"comparison": report.compare_methods(runs), "comparison_baseline": "xent"}
  report.write(results, tmp_path)
  assert (tmp_path / "methods.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  assert json.loads((tmp_path / "results.json").read_text())["comparison"][0]["method"] == "xent+oracle_auroc"


# --- the zoo: pairs worth a fine-tune --------------------------------------------------------------------------


def zoo_runs():
  """a->b: a clear 10-point gap in 3 seeds; a->c: a 2-point gap (under 10 of 1000 examples in seed 1); b->c: none."""
  return [run("a", "b", "xent", s, 0.70, 0.80 + d, 0.75) for s, d in enumerate((0.0, 0.01, -0.01))] + \
         [run("a", "c", "xent", s, 0.70, 0.72 + d, 0.71) for s, d in enumerate((0.0, -0.015, 0.01))] + \
         [run("b", "c", "xent", s, 0.80, 0.80, 0.80) for s in range(3)] + \
         [run("a", "b", "logconf", s, 0.70, 0.80, 0.70) for s in range(3)]


def test_pair_gaps_call_a_gap_clear_only_when_its_ci_is_above_the_minimum():
  rows = report.pair_gaps(zoo_runs(), method="xent", min_gap_examples=10)
  assert [(r["weak"], r["strong"], r["clear"]) for r in rows] == [("a", "b", True), ("a", "c", False),
                                                                  ("b", "c", False)]
  ab = rows[0]
  assert ab["gap"]["mean"] == pytest.approx(0.10) and ab["min_gap"] == pytest.approx(0.01)
  assert ab["pgr"]["median"] == pytest.approx(0.5) and ab["method"] == "xent" and ab["seeds"] == [0, 1, 2]
  assert rows[2]["pgr"]["n"] == 0  # no gap: PGR undefined in every seed
  table = report.pair_gaps_markdown(rows)
  assert "| a | b | +0.100 [" in table and "| yes |" in table and "| b | c | +0.000" in table


def test_zoo_figures_and_section(tmp_path):
  runs = zoo_runs()
  results = results_for(runs) | {"model_order": ["a", "b", "c"], "model_sizes": {"a": 10, "b": 100, "c": 1000},
                                 "pair_gaps": report.pair_gaps(runs, method="xent", min_gap_examples=10)}
  report.write(results, tmp_path)
  for name in ("accuracy_vs_size.png", "pgr_heatmap.png"):
    assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
  assert "## Pairs worth a fine-tune" in (tmp_path / "results.md").read_text()
  # Without sizes (a checkpoint that could not be resolved), only the heatmap.
  other = tmp_path / "no_sizes"
  other.mkdir()
  written = report.plot_zoo(results | {"model_sizes": {"a": 10, "b": None, "c": 1000}}, other, method="xent")
  assert [p.name for p in written] == ["pgr_heatmap.png"]
