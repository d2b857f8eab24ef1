"""Label methods: a transform of the supervisor's probabilities into the student's targets.

The interface: `impl(probs [N, C], **options) -> targets [N, C]` (rows sum to 1).
"""

import numpy as np

from w2s_jax.methods import Method, register


def soft(probs: np.ndarray) -> np.ndarray:
  return np.asarray(probs, np.float32)


def hard(probs: np.ndarray) -> np.ndarray:
  """One-hot argmax (ties to the lower class, as np.argmax)."""
  probs = np.asarray(probs)
  return np.eye(probs.shape[-1], dtype=np.float32)[probs.argmax(-1)]


register(Method("soft", "labels", "the supervisor's probabilities as targets (the paper)", soft, source="the paper"))
register(Method("hard", "labels", "the supervisor's argmax, one-hot, as targets", hard, source="the paper"))
