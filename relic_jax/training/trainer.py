"""The generic training loop: sharded state, jitted step with donation, checkpoint/resume,
NaN guard, progress bar, TensorBoard, FLOPs/MFU, compiled memory/cost analysis, profiler window.

A stage (teacher, later ODE init and distillation) supplies a `Task`:
  model_config: dict                         (written into checkpoints, checked on restore)
  init_params(rng) -> boxed params           (nn.Partitioned leaves with logical axis names)
  loss_fn(params, batch, rng) -> scalar loss, or (loss, {name: scalar}) when the task has
                                 has_aux = True (the extra scalars are logged with the loss)
  example_batch(batch_size) -> dict of np arrays (shapes/dtypes of a per-process batch)
  flops_per_example() -> float               (analytic model FLOPs of one training example)
  tokens_per_example() -> int
"""

import json
import os
import time
from typing import Any, Callable, Iterable, Protocol

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging

from relic_jax import checkpoint as ckpt_lib
from relic_jax.config import validate
from relic_jax.parallel import chips
from relic_jax.parallel import mesh as mesh_lib
from relic_jax.io_utils import write_json_atomic
from relic_jax.training.optimizer import make_optimizer, make_schedule
from relic_jax.training.state import TrainState, create_sharded_state, param_count, state_shardings, with_shardings


class Task(Protocol):
  model_config: dict

  def init_params(self, rng): ...
  def loss_fn(self, params, batch, rng): ...
  def example_batch(self, batch_size: int) -> dict: ...
  def flops_per_example(self) -> float: ...
  def tokens_per_example(self) -> int: ...


class NonFiniteError(FloatingPointError):
  """A step produced a NaN/Inf metric; the update was discarded and nothing was saved."""


def make_train_step(task: Task, tx: optax.GradientTransformation, t_cfg, seed: int):
  schedule = make_schedule(t_cfg)
  decay = float(t_cfg.ema_decay)

  def train_step(state: TrainState, batch):
    rng = jax.random.fold_in(jax.random.key(seed), state.step)
    if getattr(task, "has_aux", False):
      (loss, aux), grads = jax.value_and_grad(task.loss_fn, has_aux=True)(state.params, batch,
                                                                          rng)
    else:
      (loss, grads), aux = jax.value_and_grad(task.loss_fn)(state.params, batch, rng), {}
    grad_norm = optax.tree.norm(grads)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    ema = jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, state.ema_params, params)
    new = TrainState(step=state.step + 1, params=params, ema_params=ema, opt_state=opt_state)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    # A non-finite step leaves the state as it was; the host raises before anything is saved.
    new = jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, state)
    metrics = {**aux, "loss": loss, "grad_norm": grad_norm, "lr": schedule(state.step),
               "finite": finite}
    return new, metrics

  return train_step


def compile_train_step(task: Task, tx, cfg, mesh, rules, abstract_state, abstract_batch):
  """AOT-compiles the train step with explicit in/out shardings (taken from the abstract
  arguments' .sharding) and the state donated."""
  step_fn = make_train_step(task, tx, cfg.train, cfg.seed)
  state_sh = jax.tree.map(lambda a: a.sharding, abstract_state)
  batch_sh = jax.tree.map(lambda a: a.sharding, abstract_batch)
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    jitted = jax.jit(step_fn, in_shardings=(state_sh, batch_sh),
                     out_shardings=(state_sh, mesh_lib.replicated(mesh)), donate_argnums=(0,))
    return jitted.lower(abstract_state, abstract_batch).compile()


def compiled_stats(compiled) -> dict:
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


class _Writer:
  """TensorBoard scalars plus a metrics.jsonl, on process 0 only."""

  def __init__(self, workdir: str, enabled: bool):
    self.enabled = enabled
    if not enabled:
      return
    from tensorboardX import SummaryWriter
    self.tb = SummaryWriter(os.path.join(workdir, "tensorboard"))
    self.jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a")

  def write(self, step: int, scalars: dict) -> None:
    if not self.enabled:
      return
    for k, v in scalars.items():
      if v is not None:
        self.tb.add_scalar(k, v, step)
    self.jsonl.write(json.dumps({"step": step, **scalars}) + "\n")
    self.jsonl.flush()

  def close(self) -> None:
    if self.enabled:
      self.tb.close()
      self.jsonl.close()


def _progress(total: int, initial: int, enabled: bool):
  if not enabled:
    return None
  from tqdm import tqdm
  return tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True, smoothing=0.1,
              mininterval=1.0)


def state_from_params(params, tx, shardings) -> TrainState:
  """A step-0 train state around given (sharded) params: EMA = params, fresh optimizer."""
  def build(p):
    return TrainState(step=jnp.zeros((), jnp.int32), params=p, ema_params=p,
                      opt_state=tx.init(p))
  return jax.jit(build, out_shardings=shardings)(params)


def train(cfg: ml_collections.ConfigDict, workdir: str, task: Task,
          iterator: Any = None, hooks: Iterable[Callable[[int, dict], None]] = (),
          init_params: Any = None) -> dict:
  """Trains `task` to cfg.train.steps, resuming from the latest checkpoint in workdir.

  iterator: per-process batches with get_state()/set_state() (default: data_pipeline's grain
  loader for cfg). init_params: params a new run starts from (e.g. the teacher's for ODE
  initialisation), instead of a fresh init or config.train.init_from. hooks: called as hook(step, metrics) after each step's metrics are read.
  Returns the final metrics, also written to workdir/final_metrics.json.
  """
  validate(cfg)
  mesh_lib.maybe_initialize_distributed(cfg.distributed)
  t = cfg.train
  os.makedirs(workdir, exist_ok=True)
  is_main = jax.process_index() == 0
  if is_main:
    write_json_atomic(os.path.join(workdir, "config.json"), json.loads(cfg.to_json()))

  mesh = mesh_lib.make_mesh(cfg.mesh)
  rules = mesh_lib.rules(cfg.mesh)
  tx = make_optimizer(t)
  rng = jax.random.key(cfg.seed)
  if iterator is None:
    from data_pipeline.loader import make_train_iterator
    iterator = make_train_iterator(cfg)

  ckpt = ckpt_lib.Checkpointer(os.path.join(workdir, "checkpoints"), t.keep_checkpoints,
                               t.async_checkpointing)
  abstract, shardings = state_shardings(task.init_params, tx, mesh, rules, rng)
  meta = ckpt_lib.describe_model(task.model_config, abstract.params)
  latest = ckpt.latest_step()
  if latest is None and init_params is not None:
    state = state_from_params(jax.device_put(init_params, shardings.params), tx, shardings)
    logging.info("initialised from the given params")
  elif latest is None and t.init_from:
    from relic_jax.weights.store import load_params
    params = load_params(t.init_from, with_shardings(abstract.params, shardings.params),
                         ckpt_lib.describe_model(task.model_config, abstract.params))
    state = state_from_params(params, tx, shardings)
    logging.info("initialised from the params in %s", t.init_from)
  elif latest is None:
    state, _, _ = create_sharded_state(task.init_params, tx, mesh, rules, rng)
    logging.info("initialised a new %s-param model", f"{param_count(abstract.params):,}")
  else:
    state, data_state = ckpt.restore(latest, with_shardings(abstract, shardings), meta)
    iterator.set_state(data_state)
    logging.info("restored step %d from %s", latest, ckpt.directory)
  start = int(jax.device_get(state.step))

  per_process = t.batch_size // jax.process_count()
  example = task.example_batch(per_process)
  batch_sh = {k: mesh_lib.batch_sharding(mesh, rules, v.ndim) for k, v in example.items()}
  abstract_batch = {k: jax.ShapeDtypeStruct((t.batch_size,) + v.shape[1:], v.dtype, sharding=batch_sh[k])
                    for k, v in example.items()}
  t0 = time.time()
  compiled = compile_train_step(task, tx, cfg, mesh, rules, with_shardings(abstract, shardings),
                                abstract_batch)
  compile_s = time.time() - t0

  n_dev = jax.device_count()
  device_kind = jax.devices()[0].device_kind
  peak = chips.peak_flops(device_kind, t.peak_flops_per_device)
  step_flops = task.flops_per_example() * 3.0 * t.batch_size
  step_tokens = task.tokens_per_example() * t.batch_size
  stats = compiled_stats(compiled)
  n_params = param_count(abstract.params)
  if is_main:
    print(f"[relic] {jax.process_count()} process(es), {n_dev} x {device_kind}, mesh {dict(mesh.shape)}, {n_params:,} params, "
          f"step compiled in {compile_s:.1f}s", flush=True)
    print(f"[relic] compiled step: peak {stats.get('peak_bytes', 0) / 2**20:.1f} MiB/device "
          f"(args {stats.get('argument_bytes', 0) / 2**20:.1f}, temp "
          f"{stats.get('temp_bytes', 0) / 2**20:.1f}); XLA flops {stats.get('xla_flops', 0):.3e}, "
          f"analytic model flops {step_flops:.3e} per step", flush=True)

  writer = _Writer(workdir, is_main)
  bar = _progress(t.steps, start, is_main and t.progress_bar)
  history: list[dict] = []
  pending: tuple[int, Any] | None = None
  window_start, window_steps = time.time(), 0
  last_rates: dict = {}
  profiling = False

  def read(step: int, metrics) -> dict:
    m = jax.device_get(metrics)
    if not bool(m["finite"]):
      bad = "loss" if not np.isfinite(m["loss"]) else "grad_norm"
      ckpt.wait()
      raise NonFiniteError(
          f"step {step}: {bad} is {m[bad]} (loss={m['loss']}, grad_norm={m['grad_norm']}). The "
          f"update was discarded and nothing from this step was saved; the latest good "
          f"checkpoint is step {ckpt.latest_step()}. Fix: lower config.train.lr, enable "
          "config.train.grad_clip, or check the data.")
    out = {k: float(v) for k, v in m.items() if k != "finite"}
    for hook in hooks:
      hook(step, out)
    return out

  def log(step: int, scalars: dict) -> None:
    nonlocal window_start, window_steps, last_rates
    history.append({"step": step, **scalars})
    if step % t.log_every == 0 or step == t.steps:
      dt = time.time() - window_start
      if window_steps and dt > 0:
        sps = window_steps / dt
        tf = step_flops * sps / n_dev
        last_rates = {"steps_per_s": sps, "tokens_per_s": step_tokens * sps,
                      "tflops_per_device": tf / 1e12, "mfu": (tf / peak) if peak else None}
      writer.write(step, {**scalars, **last_rates})
      window_start, window_steps = time.time(), 0
    if bar is not None:
      bar.set_postfix(loss=f"{scalars['loss']:.4f}")

  t_start = time.time()
  try:
    for step in range(start, t.steps):
      if step == t.profile_start_step and is_main:
        jax.profiler.start_trace(os.path.join(workdir, "profile"))
        profiling = True
      batch = mesh_lib.global_batch(mesh, rules, next(iterator))
      state, metrics = compiled(state, batch)
      window_steps += 1
      if pending is not None:
        log(pending[0], read(*pending))
      pending = (step + 1, metrics)
      if bar is not None:
        bar.update(1)
      if profiling and step + 1 >= t.profile_start_step + t.profile_num_steps:
        jax.block_until_ready(state)
        jax.profiler.stop_trace()
        profiling = False
      if (step + 1) % t.checkpoint_every == 0 or step + 1 == t.steps:
        log(pending[0], read(*pending))  # never save a state from a non-finite step
        pending = None
        ckpt.save(step + 1, state, iterator.get_state(), meta)
    if pending is not None:
      log(pending[0], read(*pending))
  finally:
    if profiling:
      jax.profiler.stop_trace()
    if bar is not None:
      bar.close()
    writer.close()
    ckpt.close()

  final = {"step": int(jax.device_get(state.step)), "param_count": n_params,
           "device_kind": device_kind, "n_devices": n_dev, "wall_s": time.time() - t_start,
           "compile_s": compile_s, **{k: v for k, v in stats.items()}, **last_rates}
  if history:
    final["loss"] = history[-1]["loss"]
    tail = history[-min(len(history), 10):]
    final["loss_last10_mean"] = float(np.mean([h["loss"] for h in tail]))
    final["first_loss"] = history[0]["loss"]
  if is_main:
    write_json_atomic(os.path.join(workdir, "final_metrics.json"), final)
  return final


def save_initial_state(cfg: ml_collections.ConfigDict, workdir: str, task: Task) -> None:
  """Writes a step-0 checkpoint of freshly initialised params (and optimizer state) to
  workdir/checkpoints without compiling a train step: an untrained model for smoke runs and
  tests of the stages that load one (generate, evaluate)."""
  validate(cfg)
  mesh = mesh_lib.make_mesh(cfg.mesh)
  rules = mesh_lib.rules(cfg.mesh)
  tx = make_optimizer(cfg.train)
  state, abstract, _ = create_sharded_state(task.init_params, tx, mesh, rules,
                                            jax.random.key(cfg.seed))
  ckpt = ckpt_lib.Checkpointer(os.path.join(workdir, "checkpoints"), cfg.train.keep_checkpoints,
                               async_save=False)
  ckpt.save(0, state, {}, ckpt_lib.describe_model(task.model_config, abstract.params))
  ckpt.close()
