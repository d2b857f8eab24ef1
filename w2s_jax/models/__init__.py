"""Our Flax models and the registry that maps a Hugging Face `model_type` to one of them.

Each architecture module provides:
  <Arch>Config   a frozen dataclass with `from_hf(config_json_dict)`, `kind`
                 ("decoder" or "encoder"), `tie_embeddings`, and runtime fields
                 `dtype` and `remat`;
  <Arch>         the backbone: (input_ids [B, T], attention_mask [B, T]) -> hidden [B, T, D],
                 and `lm_logits(hidden)` -> [B, T, V];
  PRESETS        real-size configs by name (checked with `jax.eval_shape` in tests);
  hf_tensor_map  our parameter path -> (HF tensor name, transform to our layout);
  HF_IGNORED, HF_PREFIXES, HF_MODEL_TYPES  for the checkpoint loader.
"""

import dataclasses
from types import ModuleType
from typing import Any

import flax.linen as nn

from w2s_jax.errors import UserError
from w2s_jax.models import gpt2

ARCHITECTURES: dict[str, tuple[ModuleType, type, type]] = {
    # model_type in config.json -> (module, config class, backbone class)
    "gpt2": (gpt2, gpt2.GPT2Config, gpt2.GPT2),
}


def register(module: ModuleType, config_cls: type, backbone_cls: type) -> None:
  for model_type in module.HF_MODEL_TYPES:
    ARCHITECTURES[model_type] = (module, config_cls, backbone_cls)


def architecture(model_type: str) -> tuple[ModuleType, type, type]:
  if model_type not in ARCHITECTURES:
    raise UserError(f"model_type {model_type!r} is not supported; supported: {sorted(ARCHITECTURES)}")
  return ARCHITECTURES[model_type]


def config_from_hf(hf_config: dict[str, Any], **runtime: Any) -> Any:
  """Our config for a HF config.json dict; `runtime` sets dtype / remat."""
  _, config_cls, _ = architecture(hf_config.get("model_type", "<missing>"))
  return dataclasses.replace(config_cls.from_hf(hf_config), **runtime)


def backbone_for(config: Any) -> nn.Module:
  for _, config_cls, backbone_cls in ARCHITECTURES.values():
    if type(config) is config_cls:
      return backbone_cls(config)
  raise TypeError(f"no backbone registered for {type(config).__name__}")


def module_for(config: Any) -> ModuleType:
  for module, config_cls, _ in ARCHITECTURES.values():
    if type(config) is config_cls:
      return module
  raise TypeError(f"no architecture registered for {type(config).__name__}")


def max_input_tokens(config: Any) -> int:
  """The most tokens the model reads: its learned or trained positions, less any it reserves
  (MPNet's first two). Past them a position embedding would be read out of range, which XLA
  clamps without a word, so longer inputs are refused (protocol/context.py), not run."""
  return config.max_positions - getattr(module_for(config), "POSITIONS_RESERVED", 0)


def preset(name: str, **runtime: Any) -> Any:
  """A real-size config by preset name (e.g. 'gpt2-xl', 'qwen2.5-7b')."""
  for module, _, _ in ARCHITECTURES.values():
    if name in module.PRESETS:
      return dataclasses.replace(module.PRESETS[name], **runtime)
  known = sorted({n for module, _, _ in ARCHITECTURES.values() for n in module.PRESETS})
  raise UserError(f"unknown model preset {name!r}; known: {known}")

from w2s_jax.models import llama  # noqa: E402  (registered after `register` is defined)
register(llama, llama.LlamaConfig, llama.Llama)

from w2s_jax.models import bert, mpnet  # noqa: E402  (registered after `register` is defined)
register(bert, bert.BertConfig, bert.Bert)
register(mpnet, mpnet.MPNetConfig, mpnet.MPNet)

from w2s_jax.models import gemma3  # noqa: E402  (registered after `register` is defined)
register(gemma3, gemma3.Gemma3Config, gemma3.Gemma3)
