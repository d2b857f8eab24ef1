"""Rounds methods: how many students train in turn on half B.

The interface: `impl` is a `Rounds`. `students` = 1 is the paper's single student. With more,
each student labels half B for a fresh student of the same strong model (strong-to-strong:
does a student improve by learning from its own labels?). Relabelling is
  * 'in_sample': each student labels the very half B it trained on (it may mostly echo its
    supervisor there), or
  * 'held_out': half B is cut into `students` disjoint parts (seeded); student i trains on
    part i and labels part i + 1, examples it never saw. Each student then trains on a
    fraction of half B: a confound to read beside the gain.
The same two relabellings serve bootstrapping chains (`config.chains`, protocol/bootstrap.py).
"""

import dataclasses

from w2s_jax.errors import UserError
from w2s_jax.methods import Method, register

RELABELLINGS = ("in_sample", "held_out")


@dataclasses.dataclass(frozen=True)
class Rounds:
  def students(self, name: str, *, rounds: int = 0, relabel: str = "in_sample") -> tuple[int, str]:
    """(number of students, relabelling) for the method's options."""
    if rounds < 0 or relabel not in RELABELLINGS:
      raise UserError(f"config.method_options.{name}: rounds={rounds} must be >= 0 and relabel={relabel!r} "
                      f"one of {RELABELLINGS}")
    return 1 + rounds, relabel


register(Method("one_student", "rounds", "one student trained on the supervisor's labels (the paper)", Rounds(),
                source="the paper"))
register(Method("strong_to_strong", "rounds",
                "`rounds` more fresh strong students, each trained on the previous student's labels of half B "
                "(in-sample)", Rounds(), options=dict(rounds=1, relabel="in_sample"),
                source="EleutherAI/w2s; Burns et al. 2023 (bootstrapping)"))
register(Method("strong_to_strong_held_out", "rounds",
                "strong-to-strong with held-out relabelling: half B cut into 1 + `rounds` parts, one per student",
                Rounds(), options=dict(rounds=1, relabel="held_out"), source="this codebase"))
