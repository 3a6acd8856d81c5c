"""Throughput of one sharded, jitted teacher train step on random latents.

python -m relic_jax.bench.train_step --config=experiments/small.py --out=step.json
  [--steps=10 --warmup=3 --config.model.remat_policy=full ...]

Reports the median step time after warm-up, tokens/s, model TFLOP/s per device and MFU
(analytic model FLOPs: 3x forward, recompute not counted), and the compiled peak memory.
"""

import time

import jax
import numpy as np
from absl import app, flags

from relic_jax.bench.common import FLAGS, define_flags, emit
from relic_jax.config import validate
from relic_jax.parallel import chips
from relic_jax.parallel import mesh as mesh_lib
from relic_jax.training.optimizer import make_optimizer
from relic_jax.training.state import create_sharded_state, param_count
from relic_jax.training.teacher import TeacherTask
from relic_jax.training.trainer import compile_train_step, compiled_stats


def _define_flags():  # only when run as a program: other benchmarks import bench_train_step
  define_flags("experiments/tiny.py")
  flags.DEFINE_integer("steps", 10, "Timed steps.")
  flags.DEFINE_integer("warmup", 3, "Untimed steps after compilation.")


def bench_train_step(cfg, steps: int, warmup: int) -> dict:
  if steps < 1 or warmup < 0:
    raise app.UsageError(f"--steps={steps} --warmup={warmup}: need steps >= 1 and warmup >= 0.")

  validate(cfg)
  mesh = mesh_lib.make_mesh(cfg.mesh)
  rules = mesh_lib.rules(cfg.mesh)
  task = TeacherTask(cfg)
  tx = make_optimizer(cfg.train)
  state, _, shardings = create_sharded_state(task.init_params, tx, mesh, rules,
                                             jax.random.key(cfg.seed))
  rng = np.random.default_rng(0)
  example = task.example_batch(cfg.train.batch_size)
  batch = {k: rng.standard_normal(v.shape).astype(v.dtype) for k, v in example.items()}
  batch = mesh_lib.global_batch(mesh, rules, batch)
  t0 = time.perf_counter()
  compiled = compile_train_step(task, tx, cfg, mesh, rules, state, batch)
  compile_s = time.perf_counter() - t0
  for _ in range(warmup):
    state, metrics = compiled(state, batch)
  jax.block_until_ready(state)
  times = []
  for _ in range(steps):
    t0 = time.perf_counter()
    state, metrics = compiled(state, batch)
    jax.block_until_ready((state, metrics))
    times.append(time.perf_counter() - t0)
  step_time = float(np.median(times))
  n_dev = jax.device_count()
  kind = jax.devices()[0].device_kind
  flops_step = 3.0 * task.flops_per_example() * cfg.train.batch_size
  tflops = flops_step / step_time / n_dev
  peak = chips.peak_flops(kind, cfg.train.peak_flops_per_device)
  stats = compiled_stats(compiled)
  return {
      "config": cfg.name,
      "step_time_s": step_time,
      "step_time_min_s": float(np.min(times)),
      "tokens_per_s": task.tokens_per_example() * cfg.train.batch_size / step_time,
      "tflops_per_device": tflops / 1e12,
      "mfu": tflops / peak if peak else None,
      "peak_bytes": stats.get("peak_bytes"),
      "param_count": param_count(state.params),
      "device_kind": kind,
      "n_devices": n_dev,
      "mesh": dict(mesh.shape),
      "batch_size": cfg.train.batch_size,
      "tokens_per_example": task.tokens_per_example(),
      "dtype": cfg.model.dtype,
      "remat_policy": cfg.model.remat_policy,
      "attention_impl": cfg.model.attention_impl,
      "compile_s": compile_s,
      "loss_finite": bool(jax.device_get(metrics["finite"])),
  }


def main(argv):
  del argv
  emit(bench_train_step(FLAGS.config, FLAGS.steps, FLAGS.warmup))


if __name__ == "__main__":
  _define_flags()
  app.run(main)
