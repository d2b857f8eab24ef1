"""The features stage: a frozen backbone's pooled features of every train and test example.

With `train.linear_probe` and `train.cache_features`, each model's backbone runs once per
example pool, and every ground-truth and weak-to-strong fit of that model trains only its
head on these features.
"""

import numpy as np

from w2s_jax.data import batching, tasks
from w2s_jax.protocol.context import Context, ModelSpec, SeedData, check_join
from w2s_jax.train import fit


def features(ctx: Context, model: ModelSpec, data: SeedData) -> dict[str, np.ndarray]:
  """{'train_features', 'train_uids', 'train_lengths', 'test_…'}: pooled features [N, D] float32
  ([N, 2, D] for preference pairs: each pair's two sequences)."""
  task = data.task
  stage, view = ctx.stage("features", model=model.name, subsample_seed=ctx.subsample_seed(data.seed))
  if stage.key in ctx.features_cache:
    return ctx.features_cache[stage.key]
  cached = ctx.load_or_clear(stage)
  if cached is not None:
    arrays = cached[1]
  else:
    loaded = ctx.load(model, task=tasks.head_kind(task.train))
    pad_id = ctx.tokenizer(model).pad_token_id
    # One pass over train and test together: one jitted function, one compile per length bucket.
    tokenized = batching.tokenize([*task.train, *task.test], ctx.tokenizer(model), view["max_length"])
    feats = fit.features(loaded, loaded.params, tokenized, ctx.mesh, batch_size=view["train.batch_size"],
                         pad_id=pad_id, length_buckets=view["train.length_buckets"],
                         length_multiple=view["train.length_multiple"], desc=f"features {model.name}")
    n = len(task.train)
    arrays = {"train_features": feats[:n], "train_uids": tokenized.uids[:n], "train_lengths": tokenized.lengths[:n],
              "test_features": feats[n:], "test_uids": tokenized.uids[n:], "test_lengths": tokenized.lengths[n:]}
    stage.save({"model": model.name, "n_train": len(task.train), "n_test": len(task.test)}, arrays)
    ctx.trained_stages += 1
  check_join(arrays["train_uids"], task.train, stage, "train features")
  check_join(arrays["test_uids"], task.test, stage, "test features")
  ctx.features_cache[stage.key] = arrays
  return arrays
