"""The values of a config, checked before anything runs: a wrong value is one line, not a traceback.

ml_collections types a scalar override (`--config.n_train=abc` is refused by the flag parser), but
not the elements of a tuple (`--config.seeds=banana` becomes `('banana',)`) nor a value's range
(`--config.n_train=-5`). `check(config)` walks the fields below and raises `UserError` naming the
field, the value, what it must be, and an example; `sweep.plan` and `search.run` call it first, so
a bad value is refused before the first stage trains (and before any data or model loads).
"""

import re
from collections.abc import Callable
from typing import Any

import ml_collections

from w2s_jax.errors import UserError


def _is_int(x: Any) -> bool:
  return isinstance(x, int) and not isinstance(x, bool)


def _is_number(x: Any) -> bool:
  return isinstance(x, (int, float)) and not isinstance(x, bool)


def _ints_tuple(x: Any) -> bool:
  return isinstance(x, (tuple, list)) and all(_is_int(v) for v in x)


def _strs_tuple(x: Any) -> bool:
  return isinstance(x, (tuple, list)) and all(isinstance(v, str) and v for v in x)


def _regex(x: Any) -> bool:
  if not isinstance(x, str) or not x:
    return False
  try:
    re.compile(x)
  except re.error:
    return False
  return True


# field -> (accepts(value), what it must be, an example override)
Rule = tuple[Callable[[Any], bool], str, str]

RULES: dict[str, Rule] = {
    "task": (lambda x: isinstance(x, str) and bool(x), "a task name, jsonl:PATH, csv:PATH or tfds:NAME[:CONFIG]",
             "sciq"),
    "tfds_data_dir": (lambda x: x is None or (isinstance(x, str) and bool(x)),
                      "a directory (or gs://bucket/path) of prepared tfds datasets, or None", "/data/tfds"),
    "n_train": (lambda x: x is None or (_is_int(x) and x > 0), "a positive int (or None: all)", "1000"),
    "n_test": (lambda x: x is None or (_is_int(x) and x > 0), "a positive int (or None: all)", "1000"),
    "max_length": (lambda x: _is_int(x) and x > 0, "a positive int (tokens)", "512"),
    "data_seed": (lambda x: x is None or _is_int(x), "an int or None", "0"),
    "seeds": (lambda x: _ints_tuple(x) and len(x) > 0 and len(set(x)) == len(x),
              "a non-empty tuple of distinct ints", '"(0,1,2)"'),
    "methods": (_strs_tuple, "a tuple of method names", "\"('xent','logconf')\""),
    "chains": (_strs_tuple, "a tuple of 'weak>mid>strong' strings", "\"('gpt2>gpt2_medium>gpt2_large',)\""),
    "model_order": (_strs_tuple, "a tuple of the models' names, weakest first", "\"('gpt2','gpt2_medium')\""),
    "train.batch_size": (lambda x: _is_int(x) and x > 0, "a positive int", "32"),
    "train.epochs": (lambda x: _is_number(x) and x > 0, "a positive number", "2.0"),
    "train.warmup_steps": (lambda x: _is_int(x) and x >= 0, "an int >= 0", "0"),
    "train.weight_decay": (lambda x: _is_number(x) and x >= 0, "a number >= 0", "0.0"),
    "train.clip_norm": (lambda x: x is None or (_is_number(x) and x > 0), "a positive number or None", "1.0"),
    "train.length_buckets": (lambda x: _is_int(x) and x > 0, "a positive int", "16"),
    "train.length_multiple": (lambda x: _is_int(x) and x > 0, "a positive int", "8"),
    "train.log_every": (lambda x: _is_int(x) and x > 0, "a positive int (steps)", "10"),
    "train.checkpoint_every": (lambda x: _is_int(x) and x >= 0, "an int >= 0 (steps; 0: only at the end)", "200"),
    "search.seeds": (lambda x: _ints_tuple(x) and len(x) > 0, "a non-empty tuple of ints", '"(0,)"'),
    "search.lr": (lambda x: isinstance(x, (tuple, list)) and all(_is_number(v) and v > 0 for v in x),
                  "a tuple of positive learning rates (empty: the config's)", '"(1e-4,3e-4)"'),
    "search.epochs": (lambda x: isinstance(x, (tuple, list)) and all(_is_number(v) and v > 0 for v in x),
                      "a tuple of positive epoch counts (empty: the config's)", '"(1.0,2.0)"'),
    "search.n_train": (lambda x: isinstance(x, (tuple, list)) and all(_is_int(v) and v > 0 for v in x),
                       "a tuple of positive ints (empty: the config's)", '"(500,1000)"'),
    "search.val_frac": (lambda x: _is_number(x) and 0 < x < 1, "a fraction strictly between 0 and 1", "0.25"),
    "generative.epochs": (lambda x: _is_number(x) and x > 0, "a positive number", "1.0"),
    "generative.lr": (lambda x: x is None or (_is_number(x) and x > 0), "a positive number or None", "1e-5"),
    "prompting.shots": (lambda x: _ints_tuple(x) and all(v >= 0 for v in x), "a tuple of ints >= 0", '"(0,5)"'),
    "lora.rank": (lambda x: _is_int(x) and x >= 0, "an int >= 0 (0: no LoRA)", "8"),
    "lora.alpha": (lambda x: _is_number(x) and x > 0, "a positive number (the update is scaled by alpha / rank)", "16"),
    "lora.targets": (_regex, "a regex over parameter paths", "'/attn/(q|v)/kernel$'"),
    "mesh.data": (lambda x: _is_int(x) and (x == -1 or x > 0), "a positive int or -1 (the rest)", "-1"),
    "mesh.fsdp": (lambda x: _is_int(x) and (x == -1 or x > 0), "a positive int or -1 (the rest)", "1"),
}

MODEL_RULES: dict[str, Rule] = {
    "checkpoint": (lambda x: isinstance(x, str) and bool(x), "a checkpoint directory, hub id or offline:NAME",
                   "offline:all-minilm-l6-v2"),
    "lr": (lambda x: _is_number(x) and x > 0, "a positive learning rate", "5e-5"),
    "microbatches": (lambda x: _is_int(x) and x > 0, "a positive int", "1"),
    "dtype": (lambda x: x in ("float32", "bfloat16"), "'float32' or 'bfloat16'", "bfloat16"),
    "pooling": (lambda x: x in (None, "last", "first", "mean"), "'last', 'first', 'mean' or None", "mean"),
    "lora_rank": (lambda x: x is None or (_is_int(x) and x >= 0), "an int >= 0 or None (config.lora's)", "8"),
    "lora_alpha": (lambda x: x is None or (_is_number(x) and x > 0), "a positive number or None (config.lora's)",
                   "16"),
    "lora_targets": (lambda x: x is None or _regex(x), "a regex over parameter paths or None (config.lora's)",
                     "'/attn/(q|v)/kernel$'"),
}


def _get(config: ml_collections.ConfigDict, field: str) -> tuple[bool, Any]:
  node: Any = config
  for part in field.split("."):
    if not isinstance(node, ml_collections.ConfigDict) or part not in node:
      return False, None
    node = node[part]
  return True, node


def _refuse(field: str, value: Any, rule: Rule) -> UserError:
  _, must_be, example = rule
  return UserError(f"config.{field}={value!r} must be {must_be}; e.g. --config.{field}={example}")


def check(config: ml_collections.ConfigDict) -> None:
  """Raise `UserError` at the first field whose value is not what it must be (fields a config
  does not have are skipped: configs built for one setting may lack another's fields)."""
  for field, rule in RULES.items():
    present, value = _get(config, field)
    if present and not rule[0](value):
      raise _refuse(field, value, rule)
  if "models" in config:
    for name, model in config.models.items():
      for field, rule in MODEL_RULES.items():
        if field in model and not rule[0](model[field]):
          raise _refuse(f"models.{name}.{field}", model[field], rule)
