"""docs/methods.md's worked example of adding a method, run as written."""

import re
from pathlib import Path

import numpy as np
import pytest

from w2s_jax import methods
from tests import test_pipeline
from tests.test_pipeline import tiny_config
from w2s_jax.protocol import sweep

assets = test_pipeline.assets  # its tiny models and task (a module-scoped fixture)

DOC = Path(__file__).resolve().parents[1] / "docs" / "methods.md"


@pytest.fixture
def worked_example():
  """The doc's first python block executed: it registers `label_smoothing` (removed afterwards)."""
  block = re.search(r"```python\n(.*?)```", DOC.read_text(), re.S).group(1)
  namespace: dict = {}
  exec(compile(block, str(DOC), "exec"), namespace)
  yield namespace
  methods.REGISTRY.pop("label_smoothing", None)


def test_the_worked_example_adds_a_method_that_a_sweep_runs(worked_example, assets, tmp_path):
  smoothed = worked_example["label_smoothing"](np.array([[0.0, 1.0]]), eps=0.2)
  np.testing.assert_allclose(smoothed, [[0.1, 0.9]])
  assert any(line.split()[1] == "label_smoothing" for line in methods.describe())
  probe = {"mesh.data": 1, "mesh.fsdp": 1, "train.linear_probe": True, "train.epochs": 1.0}
  results = sweep.run(tiny_config(assets, **{**probe, "methods": ("xent", "label_smoothing+xent")}), tmp_path)
  assert [r["method"] for r in results["runs"]] == ["xent", "label_smoothing+xent"]
  # Its option enters the key of its own student only.
  again = sweep.run(tiny_config(assets, **{**probe, "methods": ("xent", "label_smoothing+xent"),
                                           "method_options.label_smoothing.eps": 0.3}), tmp_path)
  assert again["trained_stages"] == 1
