"""Secrets never reach what a run writes: the values of the environment's keys, tokens and secrets.

A W&B key (WANDB_API_KEY), a hub token (HF_TOKEN), or any environment variable whose name says
key, token, secret or password (as a word of the name) may end up in a config value, a path or a command line by
mistake. `redact(obj)` replaces each such value, wherever it occurs inside a string of `obj`
(nested dicts, lists and tuples too), with `<redacted:NAME>`. Everything a run writes passes
through it: config.json, results.json, search.json, metrics.jsonl, the W&B run's config, name
and group, and the workdir lock's record of the command line.
"""

import os
import re
from typing import Any

# A word of the name (between underscores) says it: WANDB_API_KEY, HF_TOKEN, AWS_SECRET_ACCESS_KEY,
# DB_PASSWORD, OPENAI_APIKEY; not TOKENIZERS_PARALLELISM or KEYBOARD_LAYOUT.
SECRET_NAME = re.compile(r"(^|_)(API)?(KEY|TOKEN|SECRET|PASSWORD|PASSWD)S?(_|$)", re.IGNORECASE)
MIN_LENGTH = 6  # shorter values ("1", "true") would redact ordinary text; no real secret is that short


def secret_values() -> dict[str, str]:
  """{value: name} of the environment's secrets, longest first (a secret inside another is covered)."""
  found = {value: name for name, value in os.environ.items()
           if SECRET_NAME.search(name) and len(value) >= MIN_LENGTH}
  return dict(sorted(found.items(), key=lambda item: -len(item[0])))


def redact(obj: Any, secrets: dict[str, str] | None = None) -> Any:
  """`obj` with every secret value inside its strings replaced by `<redacted:NAME>`."""
  secrets = secret_values() if secrets is None else secrets
  if not secrets:
    return obj
  if isinstance(obj, str):
    for value, name in secrets.items():
      obj = obj.replace(value, f"<redacted:{name}>")
    return obj
  if isinstance(obj, dict):
    return {redact(k, secrets): redact(v, secrets) for k, v in obj.items()}
  if isinstance(obj, (list, tuple)):
    return type(obj)(redact(v, secrets) for v in obj)
  return obj
