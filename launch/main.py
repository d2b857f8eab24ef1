"""Run a weak-to-strong experiment.

    python launch/main.py --config=configs/demo.py --workdir=workdirs/demo
    python launch/main.py --config=configs/nlp.py --workdir=runs/sciq --config.seeds="(0,1,2)"

Finished stages in WORKDIR are loaded, not recomputed (`--force` redoes them); an
interrupted stage resumes from its last checkpoint. On several hosts, start the same
command on each with `--distributed` (jax.distributed.initialize reads the cluster
from the environment: TPU pods, SLURM, or JAX_COORDINATOR_ADDRESS & co.), with a
workdir every host shares: a shared filesystem or gs://bucket/path (docs/multihost.md).
"""

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root, when run from a checkout

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file (configs/*.py[:arg]).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Where stages, checkpoints and results go: a directory, or "
                                "gs://bucket/path (on several hosts, one that every host shares).")
_FORCE = flags.DEFINE_bool("force", False, "Recompute finished stages instead of loading them.")
_DISTRIBUTED = flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize() (multi-host).")
_LIST_METHODS = flags.DEFINE_bool("list_methods", False, "Print every registered method, one line each, and exit.")
_SEARCH = flags.DEFINE_bool("search", False, "Choose hyperparameters on validation data (config.search's grid) "
                            "instead of running the sweep; writes WORKDIR/search.md.")
_PLAN = flags.DEFINE_bool("plan", False, "Check the config and print what the sweep would run, then exit.")


def main(argv):
  del argv
  from w2s_jax import redaction
  from w2s_jax.errors import UserError
  # Parsed already; what other libraries read of the command line (W&B's run metadata) holds no secret.
  sys.argv[:] = redaction.redact(sys.argv)
  if _LIST_METHODS.value:
    from w2s_jax import methods
    print("\n".join(methods.describe()))
    print("compose methods of different kinds with '+', e.g. --config.methods=\"('xent+weak_auroc',)\"")
    return 0
  if _CONFIG.value is None or (_WORKDIR.value is None and not _PLAN.value):
    print("error: give --config=configs/<experiment>.py and --workdir=DIR", file=sys.stderr)
    return 2
  os.environ.setdefault("WANDB_SILENT", "true")
  try:
    import jax
    from w2s_jax import artifacts, offline
    # Compiled steps persist across stages and runs (a GPT-2 step takes ~20 s to compile on CPU).
    jax.config.update("jax_compilation_cache_dir", str(offline.cache_root() / "xla"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
    if _DISTRIBUTED.value:
      jax.distributed.initialize()
    from w2s_jax import preemption
    preemption.install()  # after jax.distributed.initialize, whose SIGTERM handler it replaces (preemption.py)
    from w2s_jax.protocol import sweep
    if _PLAN.value:
      print("\n".join(sweep.plan(_CONFIG.value).describe()))
      return 0
    if _SEARCH.value:
      from w2s_jax.protocol import search
      search.run(_CONFIG.value, _WORKDIR.value, force=_FORCE.value)
      if jax.process_index() == 0:
        print((artifacts.as_path(_WORKDIR.value) / "search.md").read_text())
      return 0
    sweep.run(_CONFIG.value, _WORKDIR.value, force=_FORCE.value)
  except UserError as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  except KeyboardInterrupt as e:
    from w2s_jax import preemption
    if isinstance(e, preemption.Stopped):  # SIGTERM or SIGINT, with the running stage's checkpoint written
      print(e, file=sys.stderr)
      return e.exit_code
    print("interrupted: finished stages and checkpoints are kept; rerun the same command to resume",
          file=sys.stderr)
    return 130
  if jax.process_index() == 0:
    workdir = artifacts.as_path(_WORKDIR.value)  # gs://bucket/path too (pathlib would make it gs:/bucket/path)
    print((workdir / "results.md").read_text())
    print(f"results: {workdir / 'results.json'}")
    print(f"figures and report.html (and a W&B report with --upload --save): python launch/report.py {workdir}")
  return 0


def parse_flags(argv):
  """absl's parsing, with every bad flag or --config.* override reported in one line."""
  try:
    return flags.FLAGS(argv)
  except Exception as e:  # config_flags raises AttributeError/KeyError/ValueError for bad overrides
    message = str(e).strip().strip("\"'") or type(e).__name__
    given = [a.split("=")[0] for a in argv[1:] if a.startswith("--config.") and message in a.split("=")[0]]
    if isinstance(e, (AttributeError, KeyError)) and given:  # an override of a field the config lacks
      print(f"error: {given[0]}: the config has no field {message!r}; see the config file for its fields "
            "(configs/*.py, w2s_jax/config_base.py)", file=sys.stderr)
    else:
      print(f"error: bad command line ({type(e).__name__}: {message}); see configs/*.py for the fields "
            "and `--config.field=value` for overrides", file=sys.stderr)
    sys.exit(2)


def run():
  logging.set_verbosity(logging.WARNING)
  from w2s_jax import hub
  hub.offline_unless_reachable()  # before any HF library is imported: no network, no retries
  app.run(lambda argv: sys.exit(main(argv)), flags_parser=parse_flags)


if __name__ == "__main__":
  run()
