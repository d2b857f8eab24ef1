"""What a weak-to-strong student learned from its supervisor: imitation and misfit.

  * agreement, split by whether the supervisor was right (the paper's measure of imitation).
    On the test set: among the examples the supervisor labels correctly, how often the
    student agrees with it, and among those it labels wrongly, how often the student copies
    the mistake. A student that generalises beyond its supervisor keeps the first high and
    the second low; one that merely imitates has both near 1.
  * misfit: how far the student ends from the weak labels it was trained on (half B).
    Charikar et al. (2024) find that the gain of a weak-to-strong student is about its misfit
    to the weak labels. `misfit` is the fraction of half B whose argmax differs from the weak
    label's; `misfit_kl` is the mean KL(weak || student) in nats, the soft version.

Every value is NaN where its set is empty (e.g. a supervisor that is never wrong).
"""

import numpy as np


def _log_softmax(logits: np.ndarray) -> np.ndarray:
  z = np.asarray(logits, np.float64)
  z = z - z.max(-1, keepdims=True)
  return z - np.log(np.exp(z).sum(-1, keepdims=True))


def _mean(values: np.ndarray) -> float:
  return float(values.mean()) if values.size else float("nan")


def imitation(student_test_logits: np.ndarray, supervisor_test_logits: np.ndarray,
              test_labels: np.ndarray) -> dict[str, float]:
  """Student-supervisor agreement on the test set [N, C] logits, [N] labels: overall and split."""
  student = np.asarray(student_test_logits).argmax(-1)
  supervisor = np.asarray(supervisor_test_logits).argmax(-1)
  agrees = student == supervisor
  right = supervisor == np.asarray(test_labels)
  return {"agreement": _mean(agrees),
          "agreement_supervisor_right": _mean(agrees[right]),
          "agreement_supervisor_wrong": _mean(agrees[~right]),
          "supervisor_wrong_frac": _mean(~right)}


def misfit(student_logits: np.ndarray, weak_targets: np.ndarray) -> dict[str, float]:
  """The student's disagreement with the soft weak labels [N, C] it was trained on."""
  targets = np.asarray(weak_targets, np.float64)
  log_student = _log_softmax(student_logits)
  log_targets = np.log(np.where(targets > 0, targets, 1.0))  # 0 * log 0 = 0
  kl = np.sum(np.where(targets > 0, targets * (log_targets - log_student), 0.0), axis=-1)
  return {"misfit": _mean(np.asarray(student_logits).argmax(-1) != targets.argmax(-1)),
          "misfit_kl": _mean(kl)}
