"""The one training loop of every stage (teacher, VAE and its tiny decoder, ODE init,
distillation). A stage supplies its state and its step (a `Stage`); `run` owns the rest:

  restore-or-init  the state and the data iterator's state from the latest checkpoint in
                   <stage workdir>/checkpoints, else the stage's initial state
  compile          one AOT-compiled step per distinct step kind (`Stage.step_kind`, e.g.
                   distillation's rollout length), explicit in/out shardings, state donated
  NaN guard        a step reports a boolean "finite"; a non-finite step keeps the previous
                   state (the stage's step does that) and `run` raises `NonFiniteError` naming
                   the latest good checkpoint; nothing from that step is saved
  logging          every step's scalars in the history and to the hooks; at the stage's log
                   cadence to metrics.jsonl and TensorBoard (with throughput and MFU when the
                   stage knows its FLOPs); a progress bar; a profiler window
  checkpoints      the state with the data iterator's state (Orbax, atomic) every
                   checkpoint_every steps and at the end
  final metrics    `Stage.final_metrics` of the run, written to final_metrics.json

Metrics are read one step late, so the host does not wait on the step it just dispatched; a
step's metrics are always read (and its hooks run) before a checkpoint that contains it.
Steps are numbered from 1 in metrics, hooks and checkpoints (step n = n updates done).
"""

import dataclasses
import json
import os
import time
from typing import Any, Callable, Hashable, Iterable

import jax
import ml_collections
from absl import logging
from tqdm import tqdm

from relic_jax import checkpoint as ckpt_lib
from relic_jax.io_utils import write_json_atomic
from relic_jax.parallel import mesh as mesh_lib
from relic_jax.training.compiled import compile_step, compiled_stats

Hook = Callable[[int, dict], None]


class NonFiniteError(FloatingPointError):
  """A step produced a NaN/Inf metric; the update was discarded and nothing was saved."""


@dataclasses.dataclass(frozen=True)
class Cadence:
  """How far a stage trains, and how often it logs, saves and profiles."""
  steps: int
  log_every: int
  checkpoint_every: int
  keep_checkpoints: int
  async_checkpointing: bool
  progress_bar: bool
  profile_start_step: int = -1  # >= 0: trace profile_num_steps steps from this step
  profile_num_steps: int = 0


@dataclasses.dataclass(frozen=True)
class Summary:
  """What `run` hands to `Stage.final_metrics`."""
  step: int            # the final state's step
  wall_s: float        # the loop's wall-clock time (the first step's compile excluded)
  compiled: dict       # step kind -> compiled_stats plus compile_s, in compile order
  rates: dict          # the throughput last logged (empty for a stage without step_flops)
  history: list        # every step's {"step": n, **scalars}


class Stage:
  """A training stage as the loop sees it. A subclass sets the attributes below in its
  __init__ and implements init_state, train_step, example_batch and final_metrics."""
  workdir: str
  cadence: Cadence
  mesh: Any
  rules: Any
  batch_size: int            # the global batch of one step
  abstract_state: Any        # ShapeDtypeStructs with the state's shardings (restore target)
  meta: dict                 # checkpoint metadata, checked on restore
  constants: tuple = ()      # step arguments between the state and the batch, never donated
  abstract_constants: tuple = ()
  step_flops: float | None = None  # model FLOPs of one step: throughput and MFU are logged
  step_tokens: int = 0
  peak_flops: float | None = None
  # The run's config, written to <workdir>/config.json once the latest checkpoint accepted it
  # (so a run refused on restore leaves the config that wrote the checkpoint in place).
  config: dict | None = None
  # Compile the step (and so report it) even when a resumed run has no step left to take.
  compile_when_done: bool = False

  def init_state(self):
    """A new run's step-0 state, in its shardings."""
    raise NotImplementedError

  def step_kind(self, step: int) -> Hashable:
    """The kind of 0-based step `step`; each kind compiles its own step."""
    del step
    return None

  def train_step(self, kind: Hashable) -> Callable:
    """(state, *constants, batch) -> (state, metrics with a boolean "finite")."""
    raise NotImplementedError

  def example_batch(self, kind: Hashable, batch_size: int) -> dict:
    """Numpy arrays of a per-process batch of `kind`'s step (shapes and dtypes only)."""
    raise NotImplementedError

  def batch(self, kind: Hashable, batch: dict) -> dict:
    """The data iterator's per-process batch -> the per-process batch of `kind`'s step."""
    del kind
    return batch

  def on_compiled(self, kind: Hashable, stats: dict) -> None:
    """Called once per kind after its step compiled (stats: compiled_stats + compile_s)."""

  def scalars(self, step: int, metrics: dict) -> dict:
    """A step's host metrics -> the scalars logged and passed to the hooks."""
    del step
    return {k: float(v) for k, v in metrics.items() if k != "finite"}

  def log_now(self, step: int, scalars: dict) -> bool:
    del scalars
    return step % self.cadence.log_every == 0 or step == self.cadence.steps

  def postfix(self, scalars: dict) -> dict:
    """The progress bar's postfix after a step."""
    del scalars
    return {}

  def nonfinite_message(self, step: int, metrics: dict, latest: int | None) -> str:
    return (f"step {step}: a non-finite metric ({metrics}). The update was discarded; the "
            f"latest good checkpoint is step {latest}.")

  def final_metrics(self, summary: Summary) -> dict:
    raise NotImplementedError


def prepare_run(cfg: ml_collections.ConfigDict, workdir: str) -> dict:
  """Joins the multi-host run when configured and creates workdir -> the config as JSON, for
  the stage's `config` (`run` writes it to config.json once the checkpoint accepted it)."""
  mesh_lib.maybe_initialize_distributed(cfg.distributed)
  os.makedirs(workdir, exist_ok=True)
  return json.loads(cfg.to_json())


class MetricsWriter:
  """TensorBoard scalars plus a metrics.jsonl, on process 0 only."""

  def __init__(self, workdir: str, enabled: bool):
    self.enabled = enabled
    if not enabled:
      return
    # tensorboardX: a heavy optional dependency (it imports torch when torch is installed,
    # seconds), only when a run writes its metrics
    from tensorboardX import SummaryWriter  # noqa: PLC0415
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


def progress_bar(total: int, initial: int, enabled: bool):
  return (tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True, smoothing=0.1,
               mininterval=1.0) if enabled else None)


def run(stage: Stage, iterator: Any, hooks: Iterable[Hook] = ()) -> dict:
  """Trains `stage` to stage.cadence.steps, resuming from its latest checkpoint. iterator:
  per-process batches with get_state()/set_state(). hooks: called as hook(step, scalars) after
  each step's metrics are read. Returns the final metrics, also written to final_metrics.json."""
  c = stage.cadence
  is_main = jax.process_index() == 0
  ckpt = ckpt_lib.Checkpointer(os.path.join(stage.workdir, "checkpoints"), c.keep_checkpoints,
                               c.async_checkpointing)
  writer = bar = None
  profiling = False
  try:
    latest = ckpt.latest_step()
    if latest is None:
      state = stage.init_state()
    else:
      state, data_state = ckpt.restore(latest, stage.abstract_state, stage.meta)
      iterator.set_state(data_state)
      logging.info("restored step %d from %s", latest, ckpt.directory)
    start = int(jax.device_get(state.step))
    if is_main and stage.config is not None:
      write_json_atomic(os.path.join(stage.workdir, "config.json"), stage.config)

    compiled: dict[Hashable, Any] = {}
    stats: dict[Hashable, dict] = {}
    per_process = stage.batch_size // jax.process_count()

    def step_fn(kind):
      if kind not in compiled:
        example = stage.example_batch(kind, per_process)
        abstract_batch = {
            k: jax.ShapeDtypeStruct((stage.batch_size,) + v.shape[1:], v.dtype,
                                    sharding=mesh_lib.batch_sharding(stage.mesh, stage.rules,
                                                                     v.ndim))
            for k, v in example.items()}
        t0 = time.time()
        compiled[kind] = compile_step(stage.train_step(kind), stage.mesh, stage.rules,
                                      (stage.abstract_state, *stage.abstract_constants,
                                       abstract_batch))
        stats[kind] = {**compiled_stats(compiled[kind]), "compile_s": time.time() - t0}
        stage.on_compiled(kind, stats[kind])
      return compiled[kind]

    if start < c.steps or stage.compile_when_done:
      step_fn(stage.step_kind(start))

    n_dev = jax.device_count()
    writer = MetricsWriter(stage.workdir, is_main)
    bar = progress_bar(c.steps, start, is_main and c.progress_bar)
    history: list[dict] = []
    pending: tuple[int, Any] | None = None
    window_start, window_steps = time.time(), 0
    rates: dict = {}

    def read(step: int, metrics) -> dict:
      m = jax.device_get(metrics)
      if not bool(m["finite"]):
        ckpt.wait()
        raise NonFiniteError(stage.nonfinite_message(step, m, ckpt.latest_step()))
      scalars = stage.scalars(step, m)
      for hook in hooks:
        hook(step, scalars)
      return scalars

    def log(step: int, scalars: dict) -> None:
      nonlocal window_start, window_steps, rates
      history.append({"step": step, **scalars})
      if stage.log_now(step, scalars):
        dt = time.time() - window_start
        if stage.step_flops is not None and window_steps and dt > 0:
          sps = window_steps / dt
          tf = stage.step_flops * sps / n_dev
          rates = {"steps_per_s": sps, "tokens_per_s": stage.step_tokens * sps,
                   "tflops_per_device": tf / 1e12,
                   "mfu": (tf / stage.peak_flops) if stage.peak_flops else None}
        writer.write(step, {**scalars, **rates})
        window_start, window_steps = time.time(), 0
      if bar is not None:
        bar.set_postfix(**stage.postfix(scalars))

    t_start = time.time()
    for step in range(start, c.steps):
      if step == c.profile_start_step and is_main:
        jax.profiler.start_trace(os.path.join(stage.workdir, "profile"))
        profiling = True
      kind = stage.step_kind(step)
      fn = step_fn(kind)
      batch = mesh_lib.global_batch(stage.mesh, stage.rules, stage.batch(kind, next(iterator)))
      state, metrics = fn(state, *stage.constants, batch)
      window_steps += 1
      ckpt.check()  # a background checkpoint write that failed stops the run here
      if pending is not None:
        log(pending[0], read(*pending))
      pending = (step + 1, metrics)
      if bar is not None:
        bar.update(1)
      if profiling and step + 1 >= c.profile_start_step + c.profile_num_steps:
        jax.block_until_ready(state)
        jax.profiler.stop_trace()
        profiling = False
      if (step + 1) % c.checkpoint_every == 0 or step + 1 == c.steps:
        log(pending[0], read(*pending))  # never save a state from a non-finite step
        pending = None
        ckpt.save(step + 1, state, iterator.get_state(), stage.meta)
    if pending is not None:
      log(pending[0], read(*pending))
  finally:
    if profiling:
      jax.profiler.stop_trace()
    if bar is not None:
      bar.close()
    if writer is not None:
      writer.close()
    ckpt.close()

  final = stage.final_metrics(Summary(step=int(jax.device_get(state.step)),
                                      wall_s=time.time() - t_start, compiled=stats, rates=rates,
                                      history=history))
  if is_main:
    write_json_atomic(os.path.join(stage.workdir, "final_metrics.json"), final)
  return final

