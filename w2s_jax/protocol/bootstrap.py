"""Students in turn: each trained model labels half B for the next one.

  * bootstrapping (the paper): a chain M1 -> M2 -> ... -> Mk of ever stronger models;
  * strong-to-strong (methods/rounds.py): weak -> strong -> strong -> ..., a fresh student of
    the same model trained on the previous student's labels.

Relabelling is 'in_sample' (each student labels the half B it trained on, so a chain may
mostly echo its first supervisor) or 'held_out' (half B cut into one disjoint part per
student: student i trains on part i, labelled by the model before it, and labels part i + 1,
which it never saw). Held-out students each train on a fraction of half B.
"""

from w2s_jax import seeds
from w2s_jax.data import splits
from w2s_jax.methods import Recipe
from w2s_jax.methods.supervisors import Supervision
from w2s_jax.protocol.context import Context, SeedData, StageResult
from w2s_jax.protocol.weak_labels import from_stage
from w2s_jax.protocol.weak_to_strong import student


def in_turn(ctx: Context, students: list[str], recipe: Recipe, data: SeedData, first: Supervision,
            relabel: str) -> list[StageResult]:
  """Train `students` in order, the first supervised by `first`, each next by the one before."""
  n = len(students)
  if relabel == "held_out":
    parts = splits.split_parts(data.half_b, n, seeds.derive(data.seed, "relabel_parts", n))
    trained_on = [f"half_b_part_{i}_of_{n}" for i in range(n)]
  elif relabel == "in_sample":
    parts, trained_on = [data.half_b] * n, ["half_b"] * n
  else:
    raise ValueError(f"relabel={relabel!r}")
  supervisor, out = first, []
  for strong, part, name in zip(students, parts, trained_on):
    out.append(student(ctx, strong, recipe, data, supervisor, part, name))
    supervisor = from_stage(out[-1], strong)
  return out
