"""Hyperparameters chosen on validation data (w2s_jax/protocol/search.py), on tiny real checkpoints."""

import json

import numpy as np
import pytest

from tests import tiny_models
from w2s_jax.config_base import base, finalize, model
from w2s_jax.errors import UserError
from w2s_jax.protocol import search
from w2s_jax.protocol.context import Context


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
  return tiny_models.gpt2_pair(tmp_path_factory.mktemp("assets"), strong_embd=16, strong_layers=1, n_examples=240)


def tiny_config(assets, lrs=(1e-4, 3e-3), epochs=(2.0,), n_trains=()):
  c = base()
  c.task = f"jsonl:{assets['task']}"
  c.n_train, c.n_test, c.max_length = 160, 40, 32
  c.models.update(dict(weak=model(str(assets["weak"]), 1e-3), strong=model(str(assets["strong"]), 1e-3)))
  c.model_order = ("weak", "strong")
  c.train.batch_size, c.train.epochs, c.train.log_every = 16, 3.0, 100
  c.train.length_buckets = 1  # one compiled shape per fit
  c.head_init = "normal"
  c.wandb.mode = "disabled"
  c.search.lr, c.search.epochs, c.search.n_train, c.search.seeds = lrs, epochs, n_trains, (0,)
  return finalize(c)


def test_grid_is_every_combination_and_an_empty_axis_keeps_the_configs_value(assets):
  points = search.grid(tiny_config(assets, lrs=(1e-4, 3e-3), epochs=(), n_trains=(80, 160)))
  assert points == [{"n_train": n, "epochs": 3.0, "lr": lr} for n in (80, 160) for lr in (1e-4, 3e-3)]
  applied = search.point_config(tiny_config(assets), points[1], "strong")
  assert (applied.n_train, applied.models.strong.lr, applied.models.weak.lr) == (80, 3e-3, 1e-3)


def test_an_empty_grid_or_bad_val_frac_is_a_one_line_error(assets):
  with pytest.raises(UserError, match="empty grid"):
    search.grid(tiny_config(assets, lrs=(), epochs=()))
  c = tiny_config(assets)
  with c.unlocked():
    c.search.val_frac = 1.0
  with pytest.raises(UserError, match="val_frac"):
    search.grid(c)


def row(model, lr, epochs, acc, auroc=0.5, n_train=100):
  return {"model": model, "n_train": n_train, "epochs": epochs, "lr": lr, "val_acc": acc, "val_auroc": auroc}


def test_choose_takes_each_models_best_and_the_shared_epochs_that_serve_all_models_best():
  summary = [row("weak", 1e-4, 2.0, 0.70), row("weak", 1e-3, 2.0, 0.72), row("weak", 1e-4, 4.0, 0.76),
             row("weak", 1e-3, 4.0, 0.60), row("strong", 1e-4, 2.0, 0.90), row("strong", 1e-3, 2.0, 0.80),
             row("strong", 1e-4, 4.0, 0.81), row("strong", 1e-3, 4.0, 0.84)]
  chosen = search.choose(summary, ["weak", "strong"])
  assert chosen["best_per_model"]["weak"]["epochs"] == 4.0 and chosen["best_per_model"]["strong"]["epochs"] == 2.0
  # epochs 2: (0.72 + 0.90) / 2 = 0.81 beats epochs 4: (0.76 + 0.84) / 2 = 0.80.
  assert chosen["shared"] == {"n_train": 100, "epochs": 2.0, "mean_val_acc": pytest.approx(0.81),
                              "lr": {"weak": 1e-3, "strong": 1e-4}, "val_acc": {"weak": 0.72, "strong": 0.90}}
  assert search.overrides(chosen) == ("--config.n_train=100 --config.train.epochs=2 "
                                      "--config.models.weak.lr=0.001 --config.models.strong.lr=0.0001")
  # A tie in accuracy goes to the higher AUROC.
  tie = search.choose([row("weak", 1e-4, 2.0, 0.7, 0.80), row("weak", 1e-3, 2.0, 0.7, 0.85)], ["weak"])
  assert tie["shared"]["lr"] == {"weak": 1e-3}


def test_search_scores_half_a_only_caches_its_fits_and_reports_the_choice(assets, tmp_path):
  config = tiny_config(assets)
  results = search.run(config, tmp_path)
  assert results["trained_stages"] == 4  # 2 models x 2 learning rates x 1 seed
  assert {(r["model"], r["lr"]) for r in results["rows"]} == {(m, lr) for m in ("weak", "strong") for lr in (1e-4, 3e-3)}
  # The validation part is a quarter of half A: never half B, never the test set.
  data = Context(config, tmp_path).load_data(0)
  half_a = {e.uid for e in data.half_a}
  other = {e.uid for e in data.half_b} | {e.uid for e in data.task.test}
  for stage_dir in (tmp_path / "stages").glob("validation-*"):
    uids = set(np.load(stage_dir / "arrays.npz")["validation_uids"].tolist())
    assert len(uids) == round(0.25 * len(half_a)) and uids <= half_a and not uids & other
  for r in results["rows"]:
    assert r["n_val"] == 20 and r["n_fit"] == 60 and 0.0 <= r["val_acc"] <= 1.0
  # A higher learning rate trains these tiny models further in 2 epochs: validation sees it.
  by = {(r["model"], r["lr"]): r["val_auroc"] for r in results["rows"]}
  assert by[("strong", 3e-3)] > by[("strong", 1e-4)]
  text = (tmp_path / "search.md").read_text()
  assert "--config.models.strong.lr=0.003" in text and results["overrides"] in text
  assert json.loads((tmp_path / "search.json").read_text())["chosen"]["shared"]["lr"]["strong"] == 3e-3
  # A rerun loads every fit; a changed val_frac is a different stage.
  assert search.run(config, tmp_path)["trained_stages"] == 0
  with config.unlocked():
    config.search.val_frac, config.search.lr = 0.5, (3e-3,)
  assert search.run(config, tmp_path)["trained_stages"] == 2
