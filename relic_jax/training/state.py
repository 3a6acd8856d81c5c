"""The train state pytree and its sharded initialisation.

Params are created directly in their sharded layout: the init function is traced abstractly
(jax.eval_shape) to read the logical axis names off the boxed params, the names are mapped to
mesh shardings through the config's rules, and the real init runs under
jax.jit(..., out_shardings=...), so no full copy of the params ever exists on one device.
"""

from typing import Any, Callable

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  ema_params: Any
  opt_state: Any


def param_count(params) -> int:
  return int(sum(x.size for x in jax.tree.leaves(params)))


def _init_state_fn(init_params: Callable[[jax.Array], Any], tx: optax.GradientTransformation):
  def init(rng):
    params = init_params(rng)  # boxed (nn.Partitioned) leaves carry logical axis names
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, ema_params=params,
                      opt_state=tx.init(params))
  return init


def state_shardings(init_params, tx, mesh, rules, rng):
  """(abstract unboxed state, NamedSharding tree) without allocating anything."""
  init = _init_state_fn(init_params, tx)
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    boxed = jax.eval_shape(init, rng)
    shardings = nn.logical_to_mesh_sharding(nn.get_partition_spec(boxed), mesh, rules)
  return nn.meta.unbox(boxed), shardings


def create_sharded_state(init_params, tx, mesh, rules, rng):
  abstract, shardings = state_shardings(init_params, tx, mesh, rules, rng)
  init = _init_state_fn(init_params, tx)
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    state = jax.jit(lambda r: nn.meta.unbox(init(r)), out_shardings=shardings)(rng)
  return state, abstract, shardings


def with_shardings(abstract, shardings):
  """ShapeDtypeStructs carrying the target shardings: the restore target for Orbax."""
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                      abstract, shardings)
