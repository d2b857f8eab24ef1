"""Test metrics, PGR, and the rows of results.json that the report summarises.

PGR = (w2s − weak) / (strong ceiling − weak), on accuracy and on AUROC (undefined where the
ceiling is not clearly above the weak model: `report.pgr`). "Weak" is the supervisor the
student actually had: for an ensemble of supervisors, the ensemble's own test numbers.
"""

from typing import Any

import numpy as np

from w2s_jax import report
from w2s_jax.data import tasks
from w2s_jax.methods import Recipe
from w2s_jax.train import metrics as metrics_lib


def test_metrics(logits: np.ndarray, examples: list[tasks.Example]) -> dict[str, float | None]:
  """Accuracy, and AUROC ranked by the logit margin (float32 probabilities tie at 1.0 once a
  model is confident, which pulls AUROC toward 0.5). A multiple-choice task has accuracy only
  (AUROC is binary): its auroc is None, and so every PGR on AUROC is undefined."""
  labels = np.array([e.label for e in examples], np.int32)
  weight = np.ones(len(labels), np.float32)
  if tasks.is_choice(examples):
    return {"acc": float(metrics_lib.accuracy(logits, labels, weight)), "auroc": None, "n_test": int(len(labels))}
  margin = logits[:, 1].astype(np.float32) - logits[:, 0].astype(np.float32)
  return {"acc": float(metrics_lib.accuracy(logits, labels, weight)),
          "auroc": float(metrics_lib.roc_auc(margin, labels, weight)), "n_test": int(len(labels))}


def _pgrs(weak: dict[str, Any], w2s: dict[str, Any], strong: dict[str, Any], gap: float, prefix: str = "") -> dict:
  return {f"{prefix}pgr": report.pgr(weak["acc"], w2s["acc"], strong["acc"], min_gap=gap),
          f"{prefix}pgr_auroc": report.pgr(weak["auroc"], w2s["auroc"], strong["auroc"], min_gap=gap)}


def run_row(weak: str, strong: str, recipe: Recipe, seed: int, supervisor: dict[str, Any],
            strong_result: dict[str, Any], w2s: dict[str, Any], *, min_gap_examples: float,
            single_weak: dict[str, Any] | None = None, rounds: list[dict[str, Any]] | None = None) -> dict[str, Any]:
  """One student's row: `supervisor` holds the supervisor's test metrics and name, `w2s` the (last)
  student's result, whose imitation and misfit are against `supervisor` (sweep.py sees to it for a
  multi-round recipe); `rounds` lists each round's own numbers."""
  gap = report.min_gap(w2s["n_test"], min_gap_examples)
  row = {"weak": weak, "strong": strong, "method": recipe.name, "seed": seed, "supervisor": supervisor["name"],
         "weak_acc": supervisor["acc"], "strong_acc": strong_result["acc"], "w2s_acc": w2s["acc"],
         "weak_auroc": supervisor["auroc"], "strong_auroc": strong_result["auroc"], "w2s_auroc": w2s["auroc"],
         **_pgrs(supervisor, w2s, strong_result, gap),
         **{k: w2s[k] for k in report.DIAGNOSTIC_FIELDS}, "n_test": w2s["n_test"], "oracle": recipe.oracle,
         "selected_step": w2s.get("selected_step"), "n_fit": w2s["n_fit"]}
  if single_weak is not None and single_weak["acc"] != supervisor["acc"]:
    row |= {"single_weak_acc": single_weak["acc"], "single_weak_auroc": single_weak["auroc"]}
  if rounds is not None:
    row["rounds"] = rounds
  return row


def chain_row(names: list[str], recipe: Recipe, relabel: str, seed: int, supervisor: dict[str, Any],
              strong_result: dict[str, Any], students: list[dict[str, Any]], direct: dict[str, Any], *,
              min_gap_examples: float) -> dict[str, Any]:
  """A bootstrapping chain's row: its last student against the first supervisor and the last
  model's ceiling, beside the direct weak -> strong student."""
  last = students[-1]
  gap = report.min_gap(last["n_test"], min_gap_examples)
  return {"chain": ">".join(names), "method": recipe.name, "relabel": relabel, "seed": seed,
          "steps": [{"student": s["strong"], "acc": s["acc"], "auroc": s["auroc"], "n_fit": s["n_fit"]}
                    for s in students],
          "weak_acc": supervisor["acc"], "strong_acc": strong_result["acc"], "w2s_acc": last["acc"],
          "direct_w2s_acc": direct["acc"], "weak_auroc": supervisor["auroc"], "strong_auroc": strong_result["auroc"],
          "w2s_auroc": last["auroc"], "direct_w2s_auroc": direct["auroc"], "n_test": last["n_test"],
          **_pgrs(supervisor, last, strong_result, gap), **_pgrs(supervisor, direct, strong_result, gap, "direct_"),
          "oracle": recipe.oracle}
