"""The generic train step of a `Task` (flow matching, the VAE, ODE regression: one model, one
AdamW with EMA) and `train`, which runs it through the shared loop (`training/loop.py`):
sharded state, checkpoint/resume, NaN guard, progress bar, TensorBoard, FLOPs/MFU, compiled
memory/cost analysis, profiler window.

A stage (teacher, VAE, tiny decoder, ODE init) supplies a `Task`:
  model_config: dict                         (written into checkpoints, checked on restore)
  init_params(rng) -> boxed params           (nn.Partitioned leaves with logical axis names)
  loss_fn(params, batch, rng) -> scalar loss, or (loss, {name: scalar}) when the task has
                                 has_aux = True (the extra scalars are logged with the loss)
  example_batch(batch_size) -> dict of np arrays (shapes/dtypes of a per-process batch)
  flops_per_example() -> float               (analytic model FLOPs of one training example)
  tokens_per_example() -> int
"""

import os
from typing import Any, Callable, Iterable, Protocol

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging

from data_pipeline.loader import make_train_iterator
from relic_jax import checkpoint as ckpt_lib
from relic_jax.config import validate
from relic_jax.parallel import chips
from relic_jax.parallel import mesh as mesh_lib
from relic_jax.training import loop
# compiled_stats and NonFiniteError live with the loop; re-exported here for their users.
from relic_jax.training.compiled import compile_step, compiled_stats  # noqa: F401
from relic_jax.training.loop import NonFiniteError  # noqa: F401
from relic_jax.training.optimizer import make_optimizer, make_schedule
from relic_jax.training.state import (TrainState, create_sharded_state, param_count,
                                      state_shardings, with_shardings)
from relic_jax.weights import pretrained
from relic_jax.weights.store import load_params


class Task(Protocol):
  model_config: dict

  def init_params(self, rng): ...
  def loss_fn(self, params, batch, rng): ...
  def example_batch(self, batch_size: int) -> dict: ...
  def flops_per_example(self) -> float: ...
  def tokens_per_example(self) -> int: ...


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
  return compile_step(make_train_step(task, tx, cfg.train, cfg.seed), mesh, rules,
                      (abstract_state, abstract_batch))


def state_from_params(params, tx, shardings) -> TrainState:
  """A step-0 train state around given (sharded) params: EMA = params, fresh optimizer."""
  def build(p):
    return TrainState(step=jnp.zeros((), jnp.int32), params=p, ema_params=p,
                      opt_state=tx.init(p))
  return jax.jit(build, out_shardings=shardings)(params)


class TaskStage(loop.Stage):
  """A `Task` as a stage of the loop: its generic step under config.train, in workdir."""
  compile_when_done = True  # a resumed, finished run still reports its compiled step

  def __init__(self, cfg: ml_collections.ConfigDict, workdir: str, task: Task,
               init_params: Any = None):
    t = cfg.train
    self.cfg, self.task, self.workdir, self._init_params = cfg, task, workdir, init_params
    self.mesh, self.rules = mesh_lib.make_mesh(cfg.mesh), mesh_lib.rules(cfg.mesh)
    self.tx = make_optimizer(t)
    self.rng = jax.random.key(cfg.seed)
    abstract, self.shardings = state_shardings(task.init_params, self.tx, self.mesh, self.rules,
                                               self.rng)
    self.abstract_state = with_shardings(abstract, self.shardings)
    self.n_params = param_count(abstract.params)
    self.meta = ckpt_lib.describe_model(task.model_config, abstract.params)
    self.cadence = loop.Cadence(
        steps=t.steps, log_every=t.log_every, checkpoint_every=t.checkpoint_every,
        keep_checkpoints=t.keep_checkpoints, async_checkpointing=t.async_checkpointing,
        progress_bar=t.progress_bar, profile_start_step=t.profile_start_step,
        profile_num_steps=t.profile_num_steps)
    self.batch_size = t.batch_size
    self.device_kind = jax.devices()[0].device_kind
    self.peak_flops = chips.peak_flops(self.device_kind, t.peak_flops_per_device)
    self.step_flops = task.flops_per_example() * 3.0 * t.batch_size
    self.step_tokens = task.tokens_per_example() * t.batch_size

  def init_state(self) -> TrainState:
    if self._init_params is not None:
      state = state_from_params(jax.device_put(self._init_params, self.shardings.params),
                                self.tx, self.shardings)
      logging.info("initialised from the given params")
      return state
    path = pretrained.resolve(self.cfg.train.init_from, "train.init_from")
    if path:
      if pretrained.is_diffusers(path):
        params = self._import(path)
      else:
        params = load_params(path, self.abstract_state.params, self.meta)
      state = state_from_params(params, self.tx, self.shardings)
      logging.info("initialised from the params in %s", path)
    else:
      state, _, _ = create_sharded_state(self.task.init_params, self.tx, self.mesh, self.rules,
                                         self.rng)
      logging.info("initialised a new %s-param model", f"{self.n_params:,}")
    return state

  def _import(self, path: str):
    """Params from a diffusers folder, through the task's importer, on this mesh."""
    importer = getattr(self.task, "import_params", None)
    if importer is None:
      raise pretrained.PretrainedError(
          f"train.init_from={path} is a diffusers folder, which this stage cannot start from. "
          "Fix: point it at params this stage saved, or clear it.")
    params = importer(path)
    pretrained.check_tree(params, self.abstract_state.params, f"train.init_from={path}")
    return jax.tree.map(lambda x, s: jax.device_put(np.asarray(x, s.dtype), s.sharding),
                        params, self.abstract_state.params)

  def train_step(self, kind) -> Callable:
    del kind
    return make_train_step(self.task, self.tx, self.cfg.train, self.cfg.seed)

  def example_batch(self, kind, batch_size: int) -> dict:
    del kind
    return self.task.example_batch(batch_size)

  def on_compiled(self, kind, stats: dict) -> None:
    if jax.process_index() != 0:
      return
    print(f"[relic] {jax.process_count()} process(es), {jax.device_count()} x "
          f"{self.device_kind}, mesh {dict(self.mesh.shape)}, {self.n_params:,} params, "
          f"step compiled in {stats['compile_s']:.1f}s", flush=True)
    print(f"[relic] compiled step: peak {stats.get('peak_bytes', 0) / 2**20:.1f} MiB/device "
          f"(args {stats.get('argument_bytes', 0) / 2**20:.1f}, temp "
          f"{stats.get('temp_bytes', 0) / 2**20:.1f}); XLA flops {stats.get('xla_flops', 0):.3e}, "
          f"analytic model flops {self.step_flops:.3e} per step", flush=True)

  def postfix(self, scalars: dict) -> dict:
    return {"loss": f"{scalars['loss']:.4f}"}

  def nonfinite_message(self, step: int, m: dict, latest: int | None) -> str:
    bad = "loss" if not np.isfinite(m["loss"]) else "grad_norm"
    return (f"step {step}: {bad} is {m[bad]} (loss={m['loss']}, grad_norm={m['grad_norm']}). The "
            f"update was discarded and nothing from this step was saved; the latest good "
            f"checkpoint is step {latest}. Fix: lower config.train.lr, enable "
            "config.train.grad_clip, or check the data.")

  def final_metrics(self, summary: loop.Summary) -> dict:
    stats = dict(summary.compiled[None])
    compile_s = stats.pop("compile_s")
    final = {"step": summary.step, "param_count": self.n_params,
             "device_kind": self.device_kind, "n_devices": jax.device_count(),
             "wall_s": summary.wall_s, "compile_s": compile_s, **stats, **summary.rates}
    history = summary.history
    if history:
      final["loss"] = history[-1]["loss"]
      tail = history[-min(len(history), 10):]
      final["loss_last10_mean"] = float(np.mean([h["loss"] for h in tail]))
      final["first_loss"] = history[0]["loss"]
    return final


def train(cfg: ml_collections.ConfigDict, workdir: str, task: Task,
          iterator: Any = None, hooks: Iterable[Callable[[int, dict], None]] = (),
          init_params: Any = None) -> dict:
  """Trains `task` to cfg.train.steps, resuming from the latest checkpoint in workdir.

  iterator: per-process batches with get_state()/set_state() (default: data_pipeline's grain
  loader for cfg). init_params: params a new run starts from (e.g. the teacher's for ODE
  initialisation), instead of a fresh init or config.train.init_from. hooks: called as
  hook(step, metrics) after each step's metrics are read.
  Returns the final metrics, also written to workdir/final_metrics.json.
  """
  validate(cfg)
  config = loop.prepare_run(cfg, workdir)
  if iterator is None:
    iterator = make_train_iterator(cfg)
  stage = TaskStage(cfg, workdir, task, init_params)
  stage.config = config
  return loop.run(stage, iterator, hooks)


def save_initial_state(cfg: ml_collections.ConfigDict, workdir: str, task: Task) -> None:
  """Writes a step-0 checkpoint of freshly initialised params (and optimizer state) to
  workdir/checkpoints without compiling a train step: an untrained model for smoke runs and
  tests of the stages that load one (generate, evaluate)."""
  validate(cfg)
  save_params_checkpoint(cfg, workdir, task, None)


def save_params_checkpoint(cfg: ml_collections.ConfigDict, workdir: str, task: Task,
                           params) -> None:
  """Writes a step-0 checkpoint of `params` (None: a fresh init) with a fresh optimizer state
  to workdir/checkpoints, without compiling a train step: a pretrained model used as is (the
  VAE stage with vae.init_from), or an untrained one for smoke runs."""
  mesh = mesh_lib.make_mesh(cfg.mesh)
  rules = mesh_lib.rules(cfg.mesh)
  tx = make_optimizer(cfg.train)
  state, abstract, shardings = create_sharded_state(task.init_params, tx, mesh, rules,
                                                    jax.random.key(cfg.seed))
  if params is not None:
    pretrained.check_tree(params, abstract.params, "pretrained params")
    placed = jax.tree.map(lambda x, s: jax.device_put(np.asarray(x, s.dtype), s.sharding),
                          params, with_shardings(abstract, shardings).params)
    state = state_from_params(placed, tx, shardings)
  ckpt = ckpt_lib.Checkpointer(os.path.join(workdir, "checkpoints"), cfg.train.keep_checkpoints,
                               async_save=False)
  ckpt.save(0, state, {}, ckpt_lib.describe_model(task.model_config, abstract.params))
  ckpt.close()
