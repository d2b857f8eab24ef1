"""Secrets never reach what a run writes: planted in the environment and in the config, grepped for everywhere."""

import os
import subprocess
import sys
from pathlib import Path

from tests.test_bad_input import tiny  # noqa: F401  (the tiny sweep's assets and config file)

REPO = Path(__file__).resolve().parents[1]
WANDB_KEY = "0123456789abcdef0123456789abcdef01234567"  # the shape of a W&B key (40 hex digits)
SERVICE_TOKEN = "tok-planted-s3cr3t-value"


def test_no_secret_is_written_to_any_file_or_log(tiny, tmp_path):  # noqa: F811
  workdir = tmp_path / "work"
  env = {**{k: v for k, v in os.environ.items() if not k.startswith(("HF_", "WANDB_"))},
         "WANDB_API_KEY": WANDB_KEY, "MY_SERVICE_TOKEN": SERVICE_TOKEN, "WANDB_MODE": "offline",
         "HF_HUB_OFFLINE": "1"}
  # A secret pasted where it does not belong: the W&B group (a run name in every W&B record).
  done = subprocess.run([sys.executable, "launch/main.py", f"--config={tiny['config']}", f"--workdir={workdir}",
                         "--config.wandb.mode=offline", f"--config.wandb.group=sweep-{SERVICE_TOKEN}"],
                        cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
  assert done.returncode == 0, done.stderr
  written = [p for p in workdir.rglob("*") if p.is_file()]
  assert any(p.name == "config.json" for p in written) and any("wandb" in p.parts for p in written)
  leaks = [str(p.relative_to(workdir)) for p in written
           if any(secret.encode() in p.read_bytes() for secret in (WANDB_KEY, SERVICE_TOKEN))]
  assert not leaks, leaks
  assert WANDB_KEY not in done.stdout + done.stderr and SERVICE_TOKEN not in done.stdout + done.stderr
  assert "<redacted:MY_SERVICE_TOKEN>" in (workdir / "config.json").read_text()
