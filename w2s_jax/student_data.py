"""What a weak-to-strong student trains on: which half-B examples, against which labels.

From the supervisor's soft labels on half B, in this order:
  1. label form: soft (the paper's default) or hard (`hard_labels`: the argmax, one-hot);
  2. confidence filtering (`label_filter.drop_frac`): drop the fraction of half B whose weak
     labels are least confident, |p(class 1) − 1/2| smallest (Guo & Yang 2024 filter, and
     reweight, the supervisor's least reliable labels); 0 keeps every example;
  3. a validation part for checkpoint selection (`selection`, w2s_jax/train/selection.py):
     held out of what remains, labelled by the supervisor, or by the ground truth for the oracle.
The filter ranks by the *soft* labels, so it means the same whatever the label form.
"""

import dataclasses

import numpy as np

from w2s_jax import seeds
from w2s_jax.data import splits
from w2s_jax.data.tasks import Example
from w2s_jax.errors import UserError
from w2s_jax.stage_keys import StageConfig
from w2s_jax.train.selection import ORACLES


@dataclasses.dataclass
class StudentData:
  examples: list[Example]          # what the student trains on
  targets: np.ndarray              # [len(examples), 2] their labels
  validation: tuple[list[Example], np.ndarray, int] | None  # (examples, labels to score, every N steps)
  n_dropped: int                   # dropped by the confidence filter


def student_data(view: StageConfig, half_b: list[Example], weak_probs: np.ndarray, seed: int) -> StudentData:
  """`weak_probs` [len(half_b), 2]: the supervisor's soft labels, aligned with `half_b` (joined by uid)."""
  targets = np.asarray(weak_probs, np.float32)
  if view["hard_labels"]:
    targets = np.eye(2, dtype=np.float32)[targets.argmax(-1)]
  keep = np.arange(len(half_b))
  drop_frac = view["label_filter.drop_frac"]
  if not 0.0 <= drop_frac < 1.0:
    raise UserError(f"label_filter.drop_frac={drop_frac} must lie in [0, 1): the fraction of half B whose weak "
                    "labels are least confident, dropped before the student trains")
  n_dropped = int(round(drop_frac * len(half_b)))
  if n_dropped:
    confidence = np.abs(np.asarray(weak_probs, np.float64)[:, 1] - 0.5)
    # A stable sort: among equal confidences, the earlier example (lower uid) is dropped first.
    keep = np.sort(np.argsort(confidence, kind="stable")[n_dropped:])
  examples = [half_b[i] for i in keep]
  targets = targets[keep]

  method = view["selection.method"]
  if method == "final":
    return StudentData(examples, targets, None, n_dropped)
  fit_on, val = splits.split_validation(examples, view["selection.val_frac"], seeds.derive(seed, "validation"))
  row = {e.uid: i for i, e in enumerate(examples)}
  val_labels = (np.array([e.label for e in val], np.int32) if method in ORACLES
                else targets[[row[e.uid] for e in val]].argmax(-1).astype(np.int32))
  return StudentData(fit_on, targets[[row[e.uid] for e in fit_on]],
                     (val, val_labels, view["selection.eval_every"]), n_dropped)
