"""LoRA (Hu et al., 2021): a frozen backbone with trained low-rank adapters on some of its kernels.

A targeted kernel W, laid out [in…, out…] as our Einsum layers store it, gets two adapters:
  A [in…, r]: uniform in ±1/sqrt(fan_in) (PEFT's default for lora_A: nn.Linear's own init),
  B [r, out…]: zeros, so that at initialisation the model is exactly the pretrained one,
and the model runs with W + (alpha / r) · A·B. The merge is a parameter transformation applied
inside the train step's loss (`merged`): the model's modules never know about adapters, and
a scanned stack of layers ([L, in…, out…]) simply gets adapters with the same leading [L].

What trains is `adapt(params)`: every top-level group but the backbone (the classifier head
trains in full), the adapters under "lora", and the constant alpha / r under "lora_scale"
(kept with the adapters so that any holder of them can merge them; never trained). The
backbone is not part of the train state: it is an argument of the step, so it has no
gradient and no optimizer moments, and checkpoints hold only adapters, head and their Adam
moments; a resumed run reloads the backbone from its pretrained checkpoint.

Sharding: each adapter is sharded like the kernel dims it shares (A like W's input dims, B
like its output dims, the layer dim as W's) and the rank dim r is never sharded. So A·B is
born with W's own sharding, the merge needs no collective, and Adam's moments follow.

The input dims of a kernel: one, except the attention output projection (`attn/out`,
[heads, head_dim, d_model]), whose input is the heads: that is how HF's o_proj sees it, and
how PEFT adapts it (its A reads all heads at once).
"""

import dataclasses
import math
import re
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from w2s_jax import sharding
from w2s_jax.errors import UserError

ADAPTERS = "lora"      # top-level group of the train params: the adapters, as the backbone's tree
SCALE = "lora_scale"   # top-level group: alpha / rank, a constant of the parametrisation

# EleutherAI/w2s adapts q, k, v, o, gate, up, down (Llama/Qwen names); ours are attn/{q,k,v,out},
# mlp/{gate,up,down} (Llama, Qwen, Gemma) and fc/proj (the MLP of GPT-2, BERT, MPNet).
DEFAULT_TARGETS = r"/(attn/(q|k|v|out)|mlp/(gate|up|down)|fc|proj)/kernel$"
# Kernels whose first two dims are the input (the heads): the attention output projection.
_HEADS_IN = re.compile(r"(^|/)attn/out/kernel$")


@dataclasses.dataclass(frozen=True)
class LoraConfig:
  rank: int = 0            # r; 0: off, the backbone trains in full
  alpha: float = 8.0       # the update is scaled by alpha / rank (PEFT's default alpha = r = 8: scale 1)
  targets: str = DEFAULT_TARGETS  # regex (re.search) over '/'-joined paths, e.g. 'backbone/block_0/attn/q/kernel'

  @property
  def enabled(self) -> bool:
    return self.rank > 0

  @property
  def scale(self) -> float:
    return self.alpha / self.rank


def settings(base: Mapping[str, Any], *, rank: int | None = None, alpha: float | None = None,
             targets: str | None = None) -> LoraConfig:
  """`config.lora`'s fields, each overridden by a model's own (`models.NAME.lora_rank` …) where it sets one."""
  return LoraConfig(rank=base["rank"] if rank is None else rank, alpha=base["alpha"] if alpha is None else alpha,
                    targets=base["targets"] if targets is None else targets)


def check(cfg: LoraConfig) -> re.Pattern:
  """The compiled target regex; a UserError for a negative rank, alpha <= 0 or a malformed regex."""
  if not isinstance(cfg.rank, int) or isinstance(cfg.rank, bool) or cfg.rank < 0:
    raise UserError(f"lora.rank={cfg.rank!r} must be an int >= 0 (0: no LoRA); e.g. --config.lora.rank=8")
  if not isinstance(cfg.alpha, (int, float)) or isinstance(cfg.alpha, bool) or not cfg.alpha > 0:
    raise UserError(f"lora.alpha={cfg.alpha!r} must be a positive number; e.g. --config.lora.alpha=16")
  try:
    return re.compile(cfg.targets)
  except (re.error, TypeError) as e:
    raise UserError(f"lora.targets={cfg.targets!r} is not a valid regex ({e}); e.g. "
                    f"--config.lora.targets='{DEFAULT_TARGETS}'") from None


def _layout(name: str, shape: tuple[int, ...]) -> tuple[int, int, int]:
  """(leading layer dims, input dims, output dims) of the kernel at backbone path `name`."""
  lead = 1 if sharding.STACKED in name.split("/") else 0
  n_in = 2 if _HEADS_IN.search(name) else 1
  return lead, n_in, len(shape) - lead - n_in


def _adaptable(name: str, shape: tuple[int, ...]) -> bool:
  """A kernel: at least one input and one output dim besides a scanned layer dim (not a bias or a norm)."""
  _, _, n_out = _layout(name, shape)
  return n_out >= 1 and len(shape) >= 2


def targeted(backbone: Any, cfg: LoraConfig) -> dict[str, Any]:
  """{backbone path: kernel} of the kernels `cfg.targets` matches (matched against 'backbone/' + path);
  a UserError if it matches none."""
  pattern = check(cfg)
  flat = sharding.flatten_by_path(backbone)
  kernels = {name: leaf for name, leaf in flat.items() if _adaptable(name, tuple(leaf.shape))}
  chosen = {name: leaf for name, leaf in kernels.items() if pattern.search(f"backbone/{name}")}
  if not chosen:
    examples = [f"backbone/{name}" for name in list(kernels)[:4]]
    raise UserError(f"lora.targets={cfg.targets!r} matches no kernel of the backbone; its kernels' paths look "
                    f"like {examples}: fix the regex (e.g. '/attn/(q|v)/kernel$')")
  return chosen


def _equation(lead: int, n_in: int, n_out: int) -> str:
  """The merge's einsum with named dims: l = layer, i/j = input, r = rank, o/p/q = output;
  e.g. 'ir,ro->io' (an MLP kernel), 'ir,rop->iop' (into heads), 'lijr,lro->lijo' (scanned, out of heads)."""
  layer, ins, outs = "l" * lead, "ij"[:n_in], "opq"[:n_out]
  return f"{layer}{ins}r,{layer}r{outs}->{layer}{ins}{outs}"


def _adapter_specs(kernel_spec: P, lead: int, n_in: int, ndim: int) -> tuple[P, P]:
  """A's and B's PartitionSpecs from the kernel's: the dims they share keep its axes, r is unsharded."""
  spec = tuple(kernel_spec) + (None,) * (ndim - len(kernel_spec))
  return P(*spec[:lead + n_in], None), P(*spec[:lead], None, *spec[lead + n_in:])


def adapter_shapes(backbone: Any, cfg: LoraConfig) -> dict[str, tuple[tuple[int, ...], tuple[int, ...]]]:
  """{backbone path: (A's shape, B's shape)} of every targeted kernel; works on abstract params too."""
  shapes = {}
  for name, kernel in targeted(backbone, cfg).items():
    shape = tuple(kernel.shape)
    lead, n_in, _ = _layout(name, shape)
    shapes[name] = ((*shape[:lead + n_in], cfg.rank), (*shape[:lead], cfg.rank, *shape[lead + n_in:]))
  return shapes


def abstract_adapters(backbone: Any, cfg: LoraConfig) -> dict[str, Any]:
  """The adapters' tree as ShapeDtypeStructs (memory plans and parameter counts without any weights)."""
  flat = {}
  for name, (a_shape, b_shape) in adapter_shapes(backbone, cfg).items():
    flat[f"{name}/a"] = jax.ShapeDtypeStruct(a_shape, jnp.float32)
    flat[f"{name}/b"] = jax.ShapeDtypeStruct(b_shape, jnp.float32)
  return sharding.nest_by_path(flat)


def init_adapters(backbone: Any, cfg: LoraConfig, seed: int, mesh: Mesh) -> dict[str, Any]:
  """Adapters {path…: {'a': A, 'b': B}} (float32, the backbone's tree for the targeted kernels only),
  placed in shardings like their kernels' (module docstring).

  A is drawn on the host from numpy's generator seeded by (seed, the adapter's index in path order):
  every host draws the same values and places only its devices' slices (`put_host_array`), and no
  random-number program is compiled (threefry for a dozen shapes took 4-5 s on this CPU). Adapters
  are small (fan_in x r), so the host copy costs nothing.
  """
  kernels = sharding.flatten_by_path(backbone)
  flat = {}
  for i, (name, (a_shape, b_shape)) in enumerate(sorted(adapter_shapes(backbone, cfg).items())):
    kernel = kernels[name]
    lead, n_in, _ = _layout(name, tuple(kernel.shape))
    kernel_spec = kernel.sharding.spec if isinstance(kernel.sharding, NamedSharding) else P()
    a_spec, b_spec = _adapter_specs(kernel_spec, lead, n_in, kernel.ndim)
    bound = 1.0 / math.sqrt(math.prod(kernel.shape[lead:lead + n_in]))
    a = np.random.default_rng([seed, i]).uniform(-bound, bound, a_shape).astype(np.float32)
    b = np.zeros(b_shape, np.float32)
    flat[f"{name}/a"] = sharding.put_host_array(a, NamedSharding(mesh, a_spec))
    flat[f"{name}/b"] = sharding.put_host_array(b, NamedSharding(mesh, b_spec))
  return sharding.nest_by_path(flat)


def adapt(params: Any, cfg: LoraConfig, seed: int, mesh: Mesh) -> tuple[dict[str, Any], Any]:
  """(the train params: every group but the backbone, the adapters and alpha / r; the frozen backbone)."""
  if "backbone" not in params:
    raise UserError("LoRA adapts a backbone, and these params have none (a head on cached features): "
                    "set lora.rank=0 or train.linear_probe=False")
  backbone = params["backbone"]
  train = {k: v for k, v in params.items() if k != "backbone"}
  train[ADAPTERS] = init_adapters(backbone, cfg, seed, mesh)
  train[SCALE] = jax.device_put(jnp.asarray(cfg.scale, jnp.float32), sharding.replicated(mesh))
  return train, backbone


def merge(backbone: Any, adapters: Any, scale: jax.Array) -> Any:
  """The backbone with W + scale · A·B at every adapted kernel (same tree, shapes and dtypes)."""
  flat = sharding.flatten_by_path(adapters)

  def one(path, kernel):
    name = sharding.path_str(path)
    if f"{name}/a" not in flat:
      return kernel
    a, b = flat[f"{name}/a"], flat[f"{name}/b"]  # [L?, in…, r], [L?, r, out…]
    delta = jnp.einsum(_equation(*_layout(name, kernel.shape)), a, b)  # [L?, in…, out…]
    return (kernel.astype(jnp.float32) + scale * delta).astype(kernel.dtype)

  return jax.tree_util.tree_map_with_path(one, backbone)


def is_adapted(params: Any) -> bool:
  return isinstance(params, Mapping) and ADAPTERS in params


def merged(params: Mapping[str, Any], backbone: Any) -> dict[str, Any]:
  """The model's params {'backbone': merged, 'head': …} from train params (`adapt`) and the frozen backbone."""
  rest = {k: v for k, v in params.items() if k not in (ADAPTERS, SCALE)}
  return {"backbone": merge(backbone, params[ADAPTERS], params[SCALE]), **rest}


def full_params(base: Mapping[str, Any], params: Any) -> Any:
  """`params` as the model takes them: merged into `base`'s backbone if they are LoRA train params, else as
  they are. The merged backbone keeps `base`'s shardings, so inference steps compiled for it are reused."""
  if not is_adapted(params):
    return params
  rest = {k: v for k, v in params.items() if k not in (ADAPTERS, SCALE)}
  out_shardings = jax.tree.map(lambda x: x.sharding, {"backbone": base["backbone"], **rest})
  return jax.jit(merged, out_shardings=out_shardings)(params, base["backbone"])


def count(tree: Any) -> tuple[int, int]:
  """(parameters, bytes) of a pytree of arrays or ShapeDtypeStructs."""
  leaves = jax.tree.leaves(tree)
  return (sum(math.prod(x.shape) for x in leaves),
          sum(math.prod(x.shape) * jnp.dtype(x.dtype).itemsize for x in leaves))
