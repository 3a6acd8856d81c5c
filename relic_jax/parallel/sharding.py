"""The abstract params tree of a model on a mesh: shapes, dtypes and the sharding each param
gets from its logical axis names under the config's rules, without allocating anything. It is
the restore target of params-only loading and the layout of imported weights."""

from typing import Any, Callable

import flax.linen as nn
import jax


def abstract_params(init_fn: Callable[[jax.Array], Any], mesh: jax.sharding.Mesh, rules):
  """ShapeDtypeStructs carrying NamedShardings for the (unboxed) params init_fn(rng) returns;
  init_fn may return boxed (nn.Partitioned) leaves, the others are replicated."""
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    boxed = jax.eval_shape(init_fn, jax.random.key(0))
    shardings = nn.logical_to_mesh_sharding(nn.get_partition_spec(boxed), mesh, rules)
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                      nn.meta.unbox(boxed), shardings)
