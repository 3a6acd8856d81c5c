"""Ahead-of-time compilation of a train step and what the compiled step reports.

`compile_step` lowers step(state, *args) -> (state, metrics) for the shardings its abstract
arguments carry: the state comes back in its own layout and is donated, the metrics come back
replicated. `compiled_stats` reads XLA's memory and cost analysis of the result.
"""

import flax.linen as nn
import jax
from absl import logging

from relic_jax.parallel import mesh as mesh_lib


def compile_step(step_fn, mesh, rules, abstract_args, compiler_options=None):
  """step_fn AOT-compiled for abstract_args (ShapeDtypeStruct trees with .sharding; the first
  is the state): explicit in/out shardings, the state donated; compiler_options are XLA's
  debug options by name (e.g. {"xla_gpu_enable_triton_gemm": False})."""
  in_shardings = tuple(jax.tree.map(lambda a: a.sharding, x) for x in abstract_args)
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    jitted = jax.jit(step_fn, in_shardings=in_shardings,
                     out_shardings=(in_shardings[0], mesh_lib.replicated(mesh)),
                     donate_argnums=(0,))
    return jitted.lower(*abstract_args).compile(compiler_options)


def compiled_stats(compiled) -> dict:
  """Bytes per device (arguments, outputs, temporaries, aliased, peak) and XLA's FLOP and
  bytes-accessed counts of a compiled step; what a backend does not report is left out."""
  out = {}
  try:
    mem = compiled.memory_analysis()
    out["argument_bytes"] = int(mem.argument_size_in_bytes)
    out["output_bytes"] = int(mem.output_size_in_bytes)
    out["temp_bytes"] = int(mem.temp_size_in_bytes)
    out["alias_bytes"] = int(mem.alias_size_in_bytes)
    out["peak_bytes"] = int(mem.argument_size_in_bytes + mem.output_size_in_bytes
                            + mem.temp_size_in_bytes - mem.alias_size_in_bytes)
  except Exception as e:  # not every backend reports it
    logging.warning("no compiled memory analysis: %s", e)
  try:
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    out["xla_flops"] = float(cost.get("flops", -1.0))
    out["xla_bytes_accessed"] = float(cost.get("bytes accessed", -1.0))
  except Exception as e:
    logging.warning("no compiled cost analysis: %s", e)
  return out
