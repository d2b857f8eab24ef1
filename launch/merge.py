"""Merge the workdirs of one sweep run over disjoint seeds (w2s_jax/merge.py, docs/reports.md).

    python launch/main.py --config=configs/finetune.py:mpnet --config.seeds="(0,)" --workdir=runs/s0   # machine 1
    python launch/main.py --config=configs/finetune.py:mpnet --config.seeds="(1,2)" --workdir=runs/s12 # machine 2
    python launch/merge.py runs/merged runs/s0 runs/s12     # results.json, results.md, plots over seeds 0-2
    python launch/report.py runs/merged                     # the figures and report.html, as for any sweep
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root, when run from a checkout

from absl import app  # noqa: E402


def main(argv):
  from w2s_jax import merge
  from w2s_jax.errors import UserError
  if len(argv) < 4:
    raise app.UsageError("usage: launch/merge.py OUT WORKDIR WORKDIR [...]")
  try:
    merged = merge.merge(argv[2:], argv[1])
  except UserError as e:
    sys.exit(f"error: {e}")
  seeds = sorted({run["seed"] for run in merged["runs"]})
  print(f"merged {len(argv) - 2} workdirs ({len(merged['runs'])} runs, seeds {seeds}) into {argv[1]}: "
        f"results.md there; figures: python launch/report.py {argv[1]}")


if __name__ == "__main__":
  app.run(main)
