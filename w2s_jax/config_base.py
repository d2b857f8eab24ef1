"""Every field an experiment config has, with the paper code's defaults.

Config files in `configs/` start from `base()` and change what their experiment
changes; `launch/main.py --config=configs/X.py --config.field=value` overrides any
field. The returned ConfigDict is locked: a misspelt field is an error, not a no-op.

Every field either enters the cache key of each stage it can affect or is runtime-only
(logging, checkpoint intervals, W&B, mesh, report): `w2s_jax/stage_keys.py` says which.
"""

import ml_collections


def model(checkpoint: str, lr: float, **kw) -> ml_collections.ConfigDict:
  """One model of the sweep: a HF checkpoint (directory or hub id) and its learning rate.

  Every field exists with its default, so each is settable from the command line
  (`--config.models.NAME.microbatches=4`):
    microbatches: gradient accumulation inside the step (1: none);
    pooling: 'last' | 'first' | 'mean'; None picks the architecture's default;
    dtype: 'float32' | 'bfloat16';
    remat: per-block activation checkpointing, 'none' | 'full' | 'dots_no_batch' | 'dots'
      (models.layers.REMAT_POLICIES);
    scan_layers: the blocks as one nn.scan (one block compiled instead of L).
  """
  fields = dict(checkpoint=checkpoint, lr=lr, **MODEL_DEFAULTS)
  unknown = set(kw) - set(fields)
  if unknown:
    raise ValueError(f"model(): unknown fields {sorted(unknown)}; known: {sorted(fields)}")
  fields |= kw
  # A None default needs a typed reference, or an override from the command line is refused.
  if fields["pooling"] is None:
    fields["pooling"] = ml_collections.FieldReference(None, field_type=str)
  return ml_collections.ConfigDict(fields)


MODEL_DEFAULTS = dict(microbatches=1, pooling=None, dtype="float32", remat="none", scan_layers=False)


def base() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.task = "sciq"           # a registered task, or jsonl:PATH / csv:PATH
  c.n_train = 20_000        # examples of the train split (halved into A and B)
  c.n_test = 10_000
  c.balance = False         # balance classes when subsampling
  c.max_length = 1024       # longer texts are truncated (not dropped)
  # None: each run's seed picks its own subsample; an int: one example pool for every seed (each
  # seed still draws its own A/B split, batch order and head init: w2s_jax/seeds.py).
  c.data_seed = ml_collections.FieldReference(None, field_type=int)

  c.models = ml_collections.ConfigDict()  # name -> model(...)
  c.model_order = ()        # the models' names, weakest first (ConfigDict keys have no order)
  c.pairs = "all"           # 'all' | 'all+self' | 'weak:strong,weak:strong'
  c.chains = ()             # bootstrapping, e.g. ('gpt2>gpt2_medium>gpt2_large',): each student labels for the next
  c.losses = ("xent", "logconf")
  c.loss_options = ml_collections.ConfigDict(dict(
      logconf=dict(alpha_max=0.5, warmup_frac=0.1, schedule="linear"),  # 'oai_jump' reproduces OAI's code
      product=dict(alpha=1.0, beta=1.0),
      entropy=dict(alpha_max=0.5, warmup_frac=0.1, schedule="linear"),  # EleutherAI's negative controls
      window=dict(radius=0.15),
  ))
  c.hard_labels = False     # train students on argmax weak labels instead of soft ones
  # Confidence filtering: drop this fraction of half B whose weak labels are least confident
  # (|p(class 1) - 1/2| smallest) before the student trains (w2s_jax/student_data.py).
  c.label_filter = ml_collections.ConfigDict(dict(drop_frac=0.0))
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
  # How a student's parameters are chosen (w2s_jax/train/selection.py):
  #   'final': the last step, as the paper;
  #   'weak_auroc': early stopping on weak labels (EleutherAI/w2s's default): hold out val_frac of
  #     half B, labelled by the supervisor, score AUROC against its labels every eval_every steps,
  #     and keep the best parameters; the student trains on the rest of half B;
  #   'oracle_auroc': the same, scored against the ground truth: an ORACLE, for analysis only
  #     (every table marks it).
  c.selection = ml_collections.ConfigDict(dict(method="final", val_frac=0.2, eval_every=25))
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
