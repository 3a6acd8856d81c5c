"""The abstract params tree of a model on a mesh: shapes, dtypes and the sharding each param
gets from its logical axis names under the config's rules, without allocating anything. It is
the restore target of params-only loading and the layout of imported weights."""

from typing import Any, Callable

import flax.linen as nn
import jax


def abstract_params(init_fn: Callable[[jax.Array], Any], mesh: jax.sharding.Mesh, rules):
  """ShapeDtypeStructs carrying NamedShardings for the (unboxed) params init_fn(rng) returns;
  init_fn may return boxed (nn.Partitioned) leaves, the others are replicated."""
  rng = jax.random.key(0)  # concrete, made outside the mesh (which may be compile-only)
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    boxed = jax.eval_shape(init_fn, rng)
    shardings = nn.logical_to_mesh_sharding(nn.get_partition_spec(boxed), mesh, rules)
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                      nn.meta.unbox(boxed), shardings)


def param_layout(init_fn: Callable[[jax.Array], Any], rules) -> dict[str, dict]:
  """{param path: {"shape", "dtype", "logical" (the param's logical axes), "mesh" (the mesh
  axes each dimension is split over under `rules`, None = replicated)}} of the params
  init_fn(rng) returns, without a mesh or any allocation: what the golden-sharding test pins."""
  with nn.logical_axis_rules(rules):
    boxed = jax.eval_shape(init_fn, jax.random.key(0))
    logical = nn.get_partition_spec(boxed)
    out = {}
    leaves = jax.tree_util.tree_leaves_with_path(nn.meta.unbox(boxed))
    specs = jax.tree_util.tree_leaves(logical, is_leaf=lambda x: isinstance(
        x, jax.sharding.PartitionSpec))
    for (path, leaf), spec in zip(leaves, specs):
      names = tuple(spec) + (None,) * (leaf.ndim - len(spec))
      mesh = nn.logical_to_mesh_axes(names, rules)
      out[jax.tree_util.keystr(path)] = {
          "shape": list(leaf.shape), "dtype": str(leaf.dtype), "logical": list(names),
          "mesh": [list(a) if isinstance(a, tuple) else a for a in mesh]}
  return out
