"""Weak labels: the supervisor's labels of half B, and what a student trains on.

`supervision` runs (or loads) the ground-truth stages the recipe's supervisor method names
and combines them (one weak model, or an ensemble). `student_data` then applies the rest of
the recipe to the examples a student trains on, in this order:
  1. labels: the supervisor's probabilities transformed into targets (soft, hard);
  2. examples: a weight per example from the supervisor's soft labels (all 1, or the least
     confident dropped or down-weighted); weight-0 examples are left out;
  3. selection: with a checkpoint-selection method that holds out, a validation part of what
     remains, labelled by the supervisor's argmax (or, for an oracle, the ground truth).
"""

import dataclasses

import numpy as np

from w2s_jax import seeds
from w2s_jax.data import splits, tasks
from w2s_jax.methods import Recipe
from w2s_jax.methods.supervisors import Supervision, combine
from w2s_jax.protocol.context import Context, SeedData, StageResult, rows_of
from w2s_jax.protocol.fitting import Validation
from w2s_jax.protocol.ground_truth import ground_truth
from w2s_jax.stage_keys import StageConfig
from w2s_jax.train.fit import softmax


def from_stage(result: StageResult, name: str) -> Supervision:
  """A trained model (a ground-truth run or a student) as a supervisor."""
  return Supervision(name, result.arrays["half_b_logits"], result.arrays["test_logits"], (result.stage.key,))


def supervision(ctx: Context, recipe: Recipe, weak: str, data: SeedData) -> Supervision:
  members = recipe["supervisor"].impl(weak, **recipe.options_of("supervisor"))
  return combine([from_stage(ground_truth(ctx, model, data, member), model) for model, member in members])


@dataclasses.dataclass(frozen=True)
class StudentData:
  examples: list[tasks.Example]     # what the student trains on
  targets: np.ndarray               # [len(examples), C]
  weights: np.ndarray | None        # [len(examples)] loss weights; None: all 1
  validation: Validation | None     # the held-out part for checkpoint selection
  n_dropped: int                    # examples of weight 0 (left out)
  n_downweighted: int               # examples of weight in (0, 1)


def student_data(view: StageConfig, recipe: Recipe, supervisor: Supervision, train_on: list[tasks.Example],
                 half_b: list[tasks.Example], seed: int) -> StudentData:
  """`train_on` ⊆ half B; the supervisor's rows are aligned with `half_b` and picked by uid.

  Options come from the stage's `view` (`method_options.<name>`), so only keyed values count.
  """
  def options(kind: str) -> dict:
    return view.under(f"method_options.{recipe[kind].name}")

  uids = np.array([e.uid for e in half_b], np.int64)
  probs = softmax(supervisor.half_b_logits[rows_of(uids, train_on)])           # [n, C]
  targets = np.asarray(recipe["labels"].impl(probs, **options("labels")), np.float32)
  weights = np.asarray(recipe["examples"].impl(probs, **options("examples")), np.float32)
  kept = np.flatnonzero(weights > 0)
  examples, targets, weights = [train_on[i] for i in kept], targets[kept], weights[kept]
  n_dropped, n_downweighted = len(train_on) - len(kept), int(np.sum(weights < 1))

  selection, validation = recipe["selection"].impl, None
  if selection.holds_out:
    opts = options("selection")
    selection.check(recipe["selection"].name, **opts)
    fit_on, val = splits.split_validation(examples, opts["val_frac"], seeds.derive(seed, "validation"))
    row = {e.uid: i for i, e in enumerate(examples)}
    val_labels = (np.array([e.label for e in val], np.int32) if selection.against_ground_truth
                  else targets[[row[e.uid] for e in val]].argmax(-1).astype(np.int32))
    validation = Validation(val, val_labels, opts["eval_every"])
    fit_rows = [row[e.uid] for e in fit_on]
    examples, targets, weights = fit_on, targets[fit_rows], weights[fit_rows]
  return StudentData(examples, targets, None if np.all(weights == 1) else weights, validation, n_dropped,
                     n_downweighted)
