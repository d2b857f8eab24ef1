"""Example methods: which half-B examples a student trains on, and with what weight.

The interface: `impl(probs [N, C], **options) -> weights [N]` in [0, 1], from the supervisor's
*soft* labels (whatever the label method, so a filter means the same on soft and hard
labels). Weight 0 drops the example (it is not trained on, and the epoch is shorter); a
weight in (0, 1) counts the example that much in every loss's weighted mean (the train
step's `weight` column).

Confidence is |p(class 1) − 1/2| (the top-class margin for more classes); the least
confident are ranked by a stable sort, so among equal confidences the earlier example goes
first and a rerun picks the same ones.
"""

import numpy as np

from w2s_jax.errors import UserError
from w2s_jax.methods import Method, register


def confidence(probs: np.ndarray) -> np.ndarray:
  """[N] the top class's probability minus 1 / C (|p1 − 1/2| for two classes)."""
  probs = np.asarray(probs, np.float64)
  return probs.max(-1) - 1.0 / probs.shape[-1]


def least_confident(probs: np.ndarray, frac: float, name: str) -> np.ndarray:
  """[N] bool: the round(frac · N) examples whose weak labels are least confident."""
  if not 0.0 <= frac < 1.0:
    raise UserError(f"config.method_options.{name}.frac={frac} must lie in [0, 1): the fraction of half B "
                    "whose weak labels are least confident")
  n = int(round(frac * len(probs)))
  chosen = np.zeros(len(probs), bool)
  chosen[np.argsort(confidence(probs), kind="stable")[:n]] = True
  return chosen


def all_examples(probs: np.ndarray) -> np.ndarray:
  return np.ones(len(probs), np.float32)


def drop_least_confident(probs: np.ndarray, *, frac: float = 0.2) -> np.ndarray:
  return np.where(least_confident(probs, frac, "drop_least_confident"), 0.0, 1.0).astype(np.float32)


def downweight_least_confident(probs: np.ndarray, *, frac: float = 0.2, weight: float = 0.5) -> np.ndarray:
  if not 0.0 < weight <= 1.0:
    raise UserError(f"config.method_options.downweight_least_confident.weight={weight} must lie in (0, 1]; "
                    "use drop_least_confident to drop examples")
  return np.where(least_confident(probs, frac, "downweight_least_confident"), weight, 1.0).astype(np.float32)


register(Method("all", "examples", "every example of half B, weight 1 (the paper)", all_examples,
                source="the paper"))
register(Method("drop_least_confident", "examples",
                "drop the fraction `frac` of half B whose weak labels are least confident", drop_least_confident,
                options=dict(frac=0.2), source="Guo & Yang 2024; EleutherAI/w2s"))
register(Method("downweight_least_confident", "examples",
                "weight the least confident fraction `frac` of half B by `weight` in the loss",
                downweight_least_confident, options=dict(frac=0.2, weight=0.5), source="Guo & Yang 2024"))
