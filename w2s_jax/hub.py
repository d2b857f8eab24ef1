"""No network, no waiting: with the Hugging Face hub unreachable, hub ids and datasets come from the cache.

Without this, a model or dataset that is not cached costs ~25 s of HTTP retries and warnings
before its one-line error; and a cached one still waits on the network before it is read.
`offline_unless_reachable()` opens one TCP connection to the hub's host (HF_ENDPOINT, default
huggingface.co) with a short timeout; if that fails it sets HF_HUB_OFFLINE and
HF_DATASETS_OFFLINE, so huggingface_hub, transformers and datasets read their caches at once
and a miss is our one-line error in seconds. Both libraries read these variables when first
imported: `launch/main.py` calls this before anything imports them. A user's own setting of
either variable is left as it is (and no probe is made).
"""

import os
import socket
from urllib.parse import urlparse

DEFAULT_ENDPOINT = "https://huggingface.co"
OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")


def reachable(endpoint: str, timeout: float = 3.0) -> bool:
  """Whether a TCP connection to `endpoint`'s host and port opens within `timeout` seconds."""
  url = urlparse(endpoint)
  port = url.port or (443 if url.scheme == "https" else 80)
  try:
    with socket.create_connection((url.hostname or "", port), timeout=timeout):
      return True
  except OSError:  # no DNS, refused, unreachable, timed out
    return False


def offline_unless_reachable(timeout: float = 3.0) -> bool:
  """Set the hub's offline variables if its host cannot be reached; returns whether the run is offline."""
  if any(name in os.environ for name in OFFLINE_VARIABLES):
    return os.environ.get("HF_HUB_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE")
  if reachable(os.environ.get("HF_ENDPOINT", DEFAULT_ENDPOINT), timeout):
    return False
  for name in OFFLINE_VARIABLES:
    os.environ[name] = "1"
  return True
