"""Build the report of a finished sweep (docs/reports.md).

    python launch/report.py WORKDIR                    # offline: WORKDIR/report/*.png and report.html
    python launch/report.py WORKDIR --upload --save    # also log the result runs to W&B and publish the report

Offline (the default) nothing contacts W&B: the figures and a self-contained HTML page are written into
WORKDIR/report/. `--upload` logs one W&B run per results.json row and one run holding the figures into the
sweep's W&B group (online with WANDB_API_KEY set or `--wandb_mode=online`; offline they wait in the
workdir's wandb/ directory for `wandb sync`). `--save` builds the W&B report over those runs and the
sweep's stage runs and publishes it (needs a W&B login); it prints the report's URL.
"""

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root, when run from a checkout

from absl import app, flags  # noqa: E402

_UPLOAD = flags.DEFINE_bool("upload", False, "Log the result runs and the figures into the sweep's W&B group.")
_SAVE = flags.DEFINE_bool("save", False, "Publish the W&B report (needs a W&B login; implies the runs exist: "
                          "--upload now or before).")
_WANDB_MODE = flags.DEFINE_enum("wandb_mode", "auto", ["auto", "online", "offline"],
                                "W&B mode for --upload (auto: online if WANDB_API_KEY is set).")
_ENTITY = flags.DEFINE_string("entity", None, "W&B entity (default: the sweep's config.wandb.entity, else "
                              "your W&B default entity).")


def main(argv):
  from w2s_jax import sweep_report, tracking
  from w2s_jax.errors import UserError
  if len(argv) != 2:
    raise app.UsageError("usage: launch/report.py WORKDIR [--upload] [--save]")
  try:
    sweep = sweep_report.load(argv[1])
    figures = sweep_report.write_figures(sweep)
    page = sweep_report.write_html(sweep, figures)
    print(sweep_report.summary_line(figures, page))
    if _UPLOAD.value:
      mode = tracking.wandb_mode(_WANDB_MODE.value)
      sweep_report.upload(sweep, figures, mode=mode, entity=_ENTITY.value)
      print(f"logged {len(sweep.results['runs'])} result runs and the figures to W&B ({mode}), group {sweep.group}")
    if _SAVE.value:
      if not (os.environ.get("WANDB_API_KEY") or _logged_in()):
        raise UserError("--save publishes the report on W&B: log in first (wandb login, or set WANDB_API_KEY)")
      import wandb
      entity = _ENTITY.value or sweep.entity or wandb.Api().default_entity
      built = sweep_report.build(sweep, figures, entity=entity).save()
      print(f"W&B report: {built.url}")
  except UserError as e:
    sys.exit(f"error: {e}")


def _logged_in() -> bool:
  import wandb
  try:
    return bool(wandb.Api().api_key)
  except Exception:  # wandb raises its own UsageError (and others) when no key is configured
    return False


if __name__ == "__main__":
  app.run(main)
