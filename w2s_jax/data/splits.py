"""Seeded selection of examples: the n_train / n_test subsets, balancing, halves A and B.

Every choice here is a permutation drawn from `np.random.default_rng(seed)`, so the same
seed picks the same examples on every machine and every run, and a different seed picks
different ones.
"""

import numpy as np

from w2s_jax.data.tasks import Example
from w2s_jax.errors import UserError


def select(examples, n: int | None, *, seed: int, balance: bool = False,
           what: str = "split", field: str = "n", at_most: bool = True) -> list[Example]:
  """A seeded subset of `n` usable examples (at most `n`, with `at_most`), ordered by uid.

  Args:
    examples: a sequence of `Example | None` (`None`: a record the task cannot use); it
      may be lazy, in which case only the examples looked at are built.
    n: how many to keep; None keeps all.
    seed: the permutation's seed.
    balance: take equally many of each class (undersampling the majority, as
      EleutherAI/w2s does): n // 2 of each, or all of the minority class.
    what: names the split in error messages.
    field: the config field that asked for `n` (named in the error when the split is short).
    at_most: a split with fewer than `n` usable examples (of each class, balanced) is used
      whole; otherwise that is an error naming how many there are.
  """
  if n is not None and n <= 0:
    raise UserError(f"{what}: asked for {n} examples; n_train / n_test must be positive")
  order = np.random.default_rng(seed).permutation(len(examples))
  if balance:
    chosen = _balanced(examples, order, n, what)
  else:
    chosen = []
    for i in order:
      example = examples[int(i)]
      if example is not None:
        chosen.append(example)
        if n is not None and len(chosen) == n:
          break
  if not chosen:
    raise UserError(f"{what} has no usable examples; check the data source")
  if n is not None and not at_most and len(chosen) < n:
    have = f"{len(chosen):,} usable examples" + (" once balanced" if balance else "")
    raise UserError(f"{what} has {have}, fewer than {field}={n:,}; set --config.{field}={len(chosen)} "
                    "or less (or --config.n_at_most=True to take all there are)")
  return sorted(chosen, key=lambda example: example.uid)


def _balanced(examples, order: np.ndarray, n: int | None, what: str) -> list[Example]:
  """n // 2 of each class (all of the minority class when n is None or larger), taken
  in `order`; an odd n that the classes can fill gets one more, the next in `order`."""
  # Read each example once: a lazy sequence builds a new object on every read.
  usable = [example for example in (examples[int(i)] for i in order) if example is not None]
  by_class = [[e for e in usable if e.label == label] for label in (0, 1)]
  minority = min(len(by_class[0]), len(by_class[1]))
  if minority == 0:
    raise UserError(f"{what} has only one class ({len(by_class[0])} of label 0, "
                    f"{len(by_class[1])} of label 1), so it cannot be balanced; set "
                    "balance=False or supply examples of both labels")
  per_class = minority if n is None else min(minority, n // 2)
  chosen = by_class[0][:per_class] + by_class[1][:per_class]
  if n is not None and n % 2 and per_class == n // 2 and len(chosen) < len(usable):
    taken = {id(example) for example in chosen}
    chosen.append(next(e for e in usable if id(e) not in taken))
  return chosen


def split_halves(examples: list[Example], seed: int) -> tuple[list[Example], list[Example]]:
  """Splits the training examples into half A and half B with a seeded permutation.

  Half A is the ground truth the supervisors (weak model, strong ceiling) train on;
  half B is what the weak model labels for the student. The halves are disjoint and
  cover `examples`; A gets the smaller half when the count is odd. Each half keeps the
  input order, so the result depends only on the seed and on which examples there are.
  """
  if len(examples) < 2:
    raise UserError(f"need at least 2 training examples to split into halves A and B, "
                    f"got {len(examples)}; raise n_train or supply more data")
  order = np.random.default_rng(seed).permutation(len(examples))
  in_a = np.zeros(len(examples), dtype=bool)
  in_a[order[:len(examples) // 2]] = True
  half_a = [example for example, a in zip(examples, in_a) if a]
  half_b = [example for example, a in zip(examples, in_a) if not a]
  return half_a, half_b


def split_validation(examples: list[Example], val_frac: float, seed: int) -> tuple[list[Example], list[Example]]:
  """(train part, validation part) of `examples` with a seeded permutation; each keeps the input order.

  The validation part holds round(val_frac * n) examples, at least one, and leaves at least
  one to train on.
  """
  if not 0.0 < val_frac < 1.0:
    raise UserError(f"val_frac={val_frac} (a selection method's option) must lie strictly between 0 and 1")
  if len(examples) < 2:
    raise UserError(f"cannot hold out a validation part of {len(examples)} example(s); raise n_train")
  n_val = min(max(1, round(val_frac * len(examples))), len(examples) - 1)
  in_val = np.zeros(len(examples), dtype=bool)
  in_val[np.random.default_rng(seed).permutation(len(examples))[:n_val]] = True
  return ([e for e, v in zip(examples, in_val) if not v], [e for e, v in zip(examples, in_val) if v])


def split_parts(examples: list[Example], parts: int, seed: int) -> list[list[Example]]:
  """`parts` disjoint parts covering `examples` with a seeded permutation (sizes differ by at most
  one; each keeps the input order): held-out relabelling gives each student its own part."""
  if parts < 1 or len(examples) < parts:
    raise UserError(f"cannot cut {len(examples)} examples into {parts} parts (one per student); "
                    "raise n_train or use fewer rounds / a shorter chain")
  part_of = np.empty(len(examples), np.int64)
  part_of[np.random.default_rng(seed).permutation(len(examples))] = np.arange(len(examples)) % parts
  return [[e for e, p in zip(examples, part_of) if p == i] for i in range(parts)]
