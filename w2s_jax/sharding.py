"""The device mesh, the parameter sharding rules, and host-local <-> global arrays.

One mesh with two axes serves every run, from 1 CPU to a multi-host pod slice:
  * `data`: pure data parallelism (parameters replicated along it);
  * `fsdp`: fully-sharded data parallelism (parameters *and* the batch split along it).
The batch is split over both axes, so every device sees different examples.

Parameter shardings come from a short rule table over '/'-joined parameter paths
(big_vision style): the first matching regex wins, and its value is either a
`PartitionSpec` or the string "fsdp" meaning "shard the largest dimension that
the `fsdp` axis divides; replicate small tensors".
"""

import re
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from w2s_jax.errors import UserError

MESH_AXES = ("data", "fsdp")
BATCH_AXES = ("data", "fsdp")  # the batch dimension is split over every device

# Tensors smaller than this stay replicated: sharding a bias or a LayerNorm scale
# saves nothing and costs an all-gather per use.
MIN_SHARDED_SIZE = 2**14

# The path part under which a scanned stack of layers keeps its parameters, each with a
# leading [L] layer axis (models.layers.Scanned). FSDP never shards that axis: the scan
# takes one layer's slice per step, and every device must hold a part of each layer.
STACKED = "stacked"

# The default rule table: FSDP everywhere (small tensors replicated by the rule itself).
DEFAULT_RULES: tuple[tuple[str, Any], ...] = ((".*", "fsdp"),)


def make_mesh(data: int = -1, fsdp: int = 1, devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A (data, fsdp) mesh over all devices; one of the sizes may be -1 (fills the rest)."""
  devices = list(jax.devices() if devices is None else devices)
  n = len(devices)
  sizes = [data, fsdp]
  if sizes.count(-1) > 1:
    raise UserError(f"mesh: at most one of data={data}, fsdp={fsdp} may be -1; set the other explicitly")
  if -1 in sizes:
    known = int(np.prod([s for s in sizes if s != -1]))
    if known <= 0 or n % known:
      raise UserError(f"mesh: {n} devices are not divisible by {known}; choose mesh sizes that divide {n}")
    sizes[sizes.index(-1)] = n // known
  if int(np.prod(sizes)) < n and -1 not in (data, fsdp) and jax.process_count() == 1 and min(sizes) >= 1:
    devices = devices[:int(np.prod(sizes))]  # a smaller mesh on one host: use the first devices
    n = len(devices)
  if int(np.prod(sizes)) != n or min(sizes) < 1:
    raise UserError(f"mesh: data={sizes[0]} x fsdp={sizes[1]} != {n} devices; "
                    f"set config.mesh.data/fsdp so that their product is {n} (or use -1 for one)")
  # Auto axis types: XLA propagates shardings through the ported HF models, and we
  # pin them only where it matters (parameters, batch, step outputs).
  return jax.make_mesh(tuple(sizes), MESH_AXES, axis_types=(jax.sharding.AxisType.Auto,) * 2,
                       devices=devices)


def path_str(path: tuple[Any, ...]) -> str:
  """'/'-joined names of a pytree key path: ('backbone', 'block_0', 'attn', 'q', 'kernel') -> 'backbone/block_0/…'."""
  parts = []
  for key in path:
    for attr in ("key", "name", "idx"):
      if hasattr(key, attr):
        parts.append(str(getattr(key, attr)))
        break
    else:
      parts.append(str(key))
  return "/".join(parts)


def flatten_by_path(tree: Any) -> dict[str, Any]:
  """{path_str(path): leaf} of a pytree's leaves."""
  return {path_str(path): leaf for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def nest_by_path(flat: dict[str, Any]) -> dict[str, Any]:
  """The inverse of `flatten_by_path` for nested dicts: {'a/b/c': x} -> {'a': {'b': {'c': x}}}."""
  tree: dict[str, Any] = {}
  for name, leaf in flat.items():
    *parents, last = name.split("/")
    node = tree
    for part in parents:
      node = node.setdefault(part, {})
    node[last] = leaf
  return tree


def fsdp_spec(shape: Sequence[int], fsdp_size: int) -> P:
  """Shard the largest dimension divisible by the fsdp axis size; replicate small tensors."""
  if fsdp_size == 1 or int(np.prod(shape, dtype=np.int64)) < MIN_SHARDED_SIZE:  # read at call: tests lower it
    return P()
  for dim in sorted(range(len(shape)), key=lambda d: -shape[d]):
    if shape[dim] % fsdp_size == 0:
      spec = [None] * len(shape)
      spec[dim] = "fsdp"
      return P(*spec)
  return P()


def param_shardings(abstract_params: Any, mesh: Mesh, rules: Sequence[tuple[str, Any]] = DEFAULT_RULES) -> Any:
  """NamedShardings for a pytree of (abstract) arrays, from the first matching rule per path."""
  compiled = [(re.compile(pattern), spec) for pattern, spec in rules]
  fsdp_size = mesh.shape["fsdp"]

  def one(path, leaf):
    name = path_str(path)
    for pattern, spec in compiled:
      if pattern.search(name):
        if spec == "fsdp" and STACKED in name.split("/"):
          spec = P(None, *fsdp_spec(leaf.shape[1:], fsdp_size))
        elif spec == "fsdp":
          spec = fsdp_spec(leaf.shape, fsdp_size)
        return NamedSharding(mesh, spec)
    return NamedSharding(mesh, P())

  return jax.tree_util.tree_map_with_path(one, abstract_params)


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) dimension split over every device of the mesh."""
  return NamedSharding(mesh, P(BATCH_AXES))


def global_batch(local_batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """Assemble the global batch from each host's rows (each host passes only its own block).

  On one host this is a plain device_put with the batch sharding; on several hosts each
  host contributes `global_batch_size / process_count` rows and no host holds the rest.
  """
  sharding = batch_sharding(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in local_batch.items()}


def put_host_array(host_value: np.ndarray, sharding: jax.sharding.Sharding) -> jax.Array:
  """Place a host numpy array straight into its sharding: each device gets only its slice."""
  host_value = np.asarray(host_value)
  return jax.make_array_from_callback(host_value.shape, sharding, lambda index: host_value[index])


def per_device_batch_size(global_batch_size: int, mesh: Mesh) -> int:
  n = mesh.devices.size
  if global_batch_size % n:
    raise UserError(f"batch size {global_batch_size} is not divisible by the {n} devices of the mesh; "
                    f"use a multiple of {n}")
  return global_batch_size // n
