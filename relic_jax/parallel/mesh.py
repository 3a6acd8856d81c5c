"""Mesh from config, multi-host initialisation and global batch assembly.

The mesh has the axes ("data", "fsdp", "context", "tensor"), outermost first; one axis may be
-1 and fills the devices the others leave. The rules table (config.mesh.rules) maps the logical
axes that model code names to these mesh axes.
"""

import math

import flax.linen as nn
import jax
from jax.experimental import mesh_utils
import ml_collections
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from relic_jax.config.base import MESH_AXES
# resolve_mesh_shape lives with the config checks (no JAX needed) and is re-exported here.
from relic_jax.config.validation import ConfigError, resolve_mesh_shape  # noqa: F401


def make_mesh(mesh_cfg: ml_collections.ConfigDict, devices=None) -> Mesh:
  """The ("data", "fsdp", "context", "tensor") mesh over `devices` (default: all); raises
  ConfigError naming the mesh and the device count when config.mesh.shape does not fit."""
  devices = jax.devices() if devices is None else list(devices)
  shape = resolve_mesh_shape(dict(mesh_cfg.shape), len(devices))
  dims = tuple(shape[a] for a in MESH_AXES)
  try:
    arr = mesh_utils.create_device_mesh(dims, devices=devices)
  except Exception:  # non-TPU topologies or subsets of devices: plain row-major order
    arr = np.asarray(devices).reshape(dims)
  return Mesh(arr, MESH_AXES)


def rules(mesh_cfg: ml_collections.ConfigDict):
  return tuple((name, tuple(t) if isinstance(t, list) else t) for name, t in mesh_cfg.rules)


def maybe_initialize_distributed(dist_cfg: ml_collections.ConfigDict) -> None:
  """jax.distributed.initialize when configured (multi-host TPU pods / GPU clusters)."""
  if not dist_cfg.initialize or jax.distributed.is_initialized():
    return  # idempotent: the CLI initialises before validating, the trainer calls it again
  kwargs = {}
  if dist_cfg.coordinator_address:
    kwargs["coordinator_address"] = dist_cfg.coordinator_address
  if dist_cfg.num_processes:
    kwargs["num_processes"] = dist_cfg.num_processes
  if dist_cfg.process_id >= 0:
    kwargs["process_id"] = dist_cfg.process_id
  jax.distributed.initialize(**kwargs)


def batch_sharding(mesh: Mesh, rules_, ndim: int) -> NamedSharding:
  """Sharding of a batch-major array: the leading axis over the logical "batch" axis."""
  spec = nn.logical_to_mesh_axes(("batch",) + (None,) * (ndim - 1), rules_)
  return NamedSharding(mesh, spec)


def global_batch(mesh: Mesh, rules_, local_batch):
  """Assembles a global jax.Array from this process's slice of the batch (a pytree of numpy
  arrays whose leading axis is the per-process batch)."""
  def put(x):
    x = np.asarray(x)
    return jax.make_array_from_process_local_data(batch_sharding(mesh, rules_, x.ndim), x)
  return jax.tree.map(put, local_batch)


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def axis_size(mesh, axes) -> int:
  """The number of devices along mesh axes (one name, a tuple of names, or None: 1)."""
  if axes is None:
    return 1
  axes = axes if isinstance(axes, tuple) else (axes,)
  return math.prod(mesh.shape[a] for a in axes)


def dividing_axes(mesh, axes, dim: int):
  """The longest leading part of `axes` (one name, a tuple, or None) whose mesh size divides
  dim, None when no part does (replicate): shard_map and explicit shardings need even splits
  (e.g. params are initialised with a batch of 1 under the training mesh)."""
  axes = () if axes is None else axes if isinstance(axes, tuple) else (axes,)
  while axes and dim % axis_size(mesh, axes):
    axes = axes[:-1]
  return axes or None
