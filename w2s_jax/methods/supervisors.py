"""Supervisor methods: who labels half B.

The interface: `impl(weak, **options) -> [(model, member), ...]`, the ground-truth runs whose
labels are combined (`combine`): member 0 is a model's ground-truth run on half A, member
i > 0 the same model re-trained on the same half A with its own head init and batch order
(seeds.py). One member is the paper's single supervisor; several are an ensemble, whose
soft labels are the mean of the members' probabilities. The supervisor's own test numbers
are those of the combination, so PGR measures what the student recovers over the
supervisor it actually had.
"""

import dataclasses

import numpy as np

from w2s_jax.methods import Method, register


@dataclasses.dataclass(frozen=True)
class Supervision:
  """A supervisor's beliefs, as logits (log-probabilities for a combination), rows joined by uid."""
  name: str                   # e.g. 'minilm_l3', 'ensemble(minilm_l3 x3)'
  half_b_logits: np.ndarray   # [n_half_b, C], aligned with half B
  test_logits: np.ndarray     # [n_test, C], aligned with the test set
  stage_keys: tuple[str, ...]  # the stages it comes from (they enter the student's key)


def _log_mean_softmax(logits: list[np.ndarray]) -> np.ndarray:
  """log(mean_m softmax(logits_m)) [N, C] float32: the ensemble's log-probabilities."""
  stacked = np.stack([np.asarray(x, np.float64) for x in logits])  # [M, N, C]
  z = stacked - stacked.max(-1, keepdims=True)
  log_probs = z - np.log(np.exp(z).sum(-1, keepdims=True))
  peak = log_probs.max(0)                                           # [N, C]
  return (peak + np.log(np.exp(log_probs - peak).mean(0))).astype(np.float32)


def combine(members: list[Supervision]) -> Supervision:
  """One member as it is; several averaged in probability (not in logits: a confident member
  must not outvote the others by the size of its logits)."""
  if len(members) == 1:
    return members[0]
  models = list(dict.fromkeys(m.name for m in members))
  name = "ensemble(" + ", ".join(f"{n} x{sum(m.name == n for m in members)}" for n in models) + ")"
  return Supervision(name, _log_mean_softmax([m.half_b_logits for m in members]),
                     _log_mean_softmax([m.test_logits for m in members]),
                     tuple(k for m in members for k in m.stage_keys))


def single(weak: str) -> list[tuple[str, int]]:
  return [(weak, 0)]


def ensemble(weak: str, *, members: int = 3, models: tuple[str, ...] = ()) -> list[tuple[str, int]]:
  """`members` runs of the weak model (seeds of one supervisor) and the first run of each of `models`."""
  if members < 1:
    from w2s_jax.errors import UserError
    raise UserError(f"config.method_options.ensemble.members={members} must be at least 1")
  return [(weak, i) for i in range(members)] + [(m, 0) for m in models if m != weak]


register(Method("single", "supervisor", "the weak model's soft labels (the paper)", single, source="the paper"))
register(Method("ensemble", "supervisor",
                "mean probabilities of several supervisors: `members` seeds of the weak model, plus `models`",
                ensemble, options=dict(members=3, models=()), source="EleutherAI/w2s; Burns et al. 2023 appendix"))
