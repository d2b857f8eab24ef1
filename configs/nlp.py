"""The paper's NLP setup: GPT-2 weak supervisors, GPT-2 and Qwen2.5 students, sciq by default.

    python launch/main.py --config=configs/nlp.py --workdir=runs/sciq
    python launch/main.py --config=configs/nlp.py:gpt2 --workdir=runs/gpt2     # GPT-2 family only
    python launch/main.py --config=configs/nlp.py:runlocal --workdir=/tmp/x    # tiny, for a laptop
    python launch/main.py --config=configs/nlp.py --config.task=boolq --config.seeds="(0,1,2)"

Learning rates are the paper code's (5e-5 for gpt2/gpt2-medium, 1e-5 for larger, at batch 32),
2 epochs, Adam, cosine to 0, no warm-up. Needs the hub (or the HF cache) for weights and data.
"""

from w2s_jax.config_base import base, finalize, model

GPT2 = dict(
    gpt2=model("openai-community/gpt2", 5e-5),
    gpt2_medium=model("openai-community/gpt2-medium", 5e-5),
    gpt2_large=model("openai-community/gpt2-large", 1e-5),
    gpt2_xl=model("openai-community/gpt2-xl", 1e-5, microbatches=2),
)
QWEN = dict(
    qwen2_5_0_5b=model("Qwen/Qwen2.5-0.5B", 1e-5),
    qwen2_5_1_5b=model("Qwen/Qwen2.5-1.5B", 1e-5, microbatches=2),
    # Scanned layers with full remat: the train step compiles once per shape for all 28 layers,
    # and its planned memory is 21 GB per device on 8 devices (BENCHMARKS.md, memory plan).
    qwen2_5_7b=model("Qwen/Qwen2.5-7B", 1e-5, microbatches=8, dtype="bfloat16", remat="full",
                     scan_layers=True),
)


def get_config(arg: str | None = None):
  c = base()
  c.task = "sciq"
  c.n_at_most = True  # the paper code's caps (20,000 train, 10,000 test): a smaller task is used whole
  if arg in (None, "", "all"):
    c.models.update(GPT2 | QWEN)
  elif arg == "gpt2":
    c.models.update(GPT2)
  elif arg == "runlocal":  # the same sweep shape, tiny enough for a laptop CPU
    c.models.update(dict(gpt2=GPT2["gpt2"], gpt2_medium=GPT2["gpt2_medium"]))
    c.n_train, c.n_test, c.max_length = 400, 200, 128
  else:
    raise ValueError(f"configs/nlp.py: unknown variant {arg!r} (use '', 'gpt2' or 'runlocal')")
  c.model_order = tuple(name for name in (*GPT2, *QWEN) if name in c.models)
  c.pairs = "all"
  c.methods = ("xent", "logconf")
  c.seeds = (0, 1, 2)
  return finalize(c)


def sweep_tasks():
  """The paper's task sweep: one run per task (launch each with --config.task=...)."""
  for task in ("sciq", "boolq", "cosmos_qa", "amazon_polarity", "anthropic_hh"):
    yield {"config.task": task}
