"""Selection methods: which of a student's checkpoints is kept.

The interface: `impl` is a `CheckpointSelection`. With `holds_out`, the protocol holds out
`val_frac` of the student's examples as a validation part, scores the student's AUROC on it
every `eval_every` steps and at the last (`train.hooks.BestCheckpoint`), and keeps the best
parameters; the student trains on the rest. The validation labels are the supervisor's
argmax (legitimate: no ground truth) or, for an oracle, the ground truth (for analysis
only; every table marks it).
"""

import dataclasses

from w2s_jax.errors import UserError
from w2s_jax.methods import Method, register


@dataclasses.dataclass(frozen=True)
class CheckpointSelection:
  holds_out: bool
  against_ground_truth: bool = False

  def check(self, name: str, *, val_frac: float = 0.0, eval_every: int = 0) -> None:
    if self.holds_out and not (0.0 < val_frac < 1.0 and eval_every > 0):
      raise UserError(f"config.method_options.{name}: val_frac={val_frac} must lie in (0, 1) and "
                      f"eval_every={eval_every} must be a positive step count")


_HOLD_OUT = dict(val_frac=0.2, eval_every=25)
register(Method("final", "selection", "the parameters after the last step (the paper)", CheckpointSelection(False),
                source="the paper"))
register(Method("weak_auroc", "selection",
                "early stopping on weak labels: the best AUROC against the supervisor on a held-out part of half B",
                CheckpointSelection(True), options=dict(_HOLD_OUT), source="EleutherAI/w2s (its default)"))
register(Method("oracle_auroc", "selection",
                "the best AUROC against the ground truth of a held-out part of half B",
                CheckpointSelection(True, against_ground_truth=True), options=dict(_HOLD_OUT), oracle=True,
                source="analysis (an upper bound on early stopping)"))
