"""Every test process sees 8 fake CPU devices, so sharded code runs for real on one machine.

Tests that want one device build their mesh over `jax.devices()[:1]`.
"""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no test may reach the network
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")

import jax  # noqa: E402

jax.config.update("jax_num_cpu_devices", 8)
