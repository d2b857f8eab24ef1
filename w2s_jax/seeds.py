"""One seed per purpose, derived from the run's seed.

A run's seed (an entry of `config.seeds`) drives four random choices, and each gets its
own independent stream so that changing one never moves another by accident:

  | purpose       | what it draws                               | derived from                          |
  | ------------- | ------------------------------------------- | ------------------------------------- |
  | "subsample"   | which examples form n_train / n_test        | `data_seed` if set, else the seed     |
  | "split"       | which training examples go to half A or B   | the seed                              |
  | "batch_order" | the shuffle (and bucketing) of every epoch  | the seed                              |
  | "head_init"   | the head's initial weights (head_init=normal)| the seed, the stage kind, the model  |
  | "validation"  | which half-B examples are held out to select | the seed                              |
  |               | a student's checkpoint (selection methods)   |                                       |
  | "relabel_parts"| how half B is cut into one part per student | the seed, the number of parts         |
  |               | (held-out relabelling: methods/rounds.py)    |                                       |
  | "prompting"   | the k demonstrations of k-shot prompts       | the seed, k                           |
  |               | (protocol/prompting.py)                      |                                       |

A supervisor ensemble's extra members (methods/supervisors.py) add their member index to the
batch-order and head-init streams: the same half A, another run.

The head's stream also takes the stage kind and the model's name, so two heads of the same
width (a weak and a strong model with equal d_model, or one model's ground-truth run and its
weak-to-strong run) never start from identical weights. Derivation is a hash, so it is the
same on every machine, process and Python version.
"""

import hashlib
import json

PURPOSES = ("subsample", "split", "batch_order", "head_init", "validation", "relabel_parts",
            "search_validation", "prompting")


def derive(seed: int, purpose: str, *context: str | int) -> int:
  """A 31-bit seed for `purpose` (one of PURPOSES), independent of the other purposes' seeds."""
  if purpose not in PURPOSES:
    raise ValueError(f"unknown seed purpose {purpose!r}; one of {PURPOSES}")
  digest = hashlib.sha256(json.dumps([int(seed), purpose, *context]).encode()).digest()
  return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF
