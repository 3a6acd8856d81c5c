"""`relic distill`: self-forcing DMD distillation of the block-causal student (the math is in
`training/self_forcing.py`), sharded over the config's mesh, in <workdir>/distill.

State (`DistillState`): the generator (student) with its AdamW state and EMA, and the critic
(fake score) with its AdamW state; the frozen teacher (real score) is a separate argument,
never updated. The generator starts from <workdir>/ode_init when it holds a checkpoint, else
from the teacher's params; the critic from the teacher's.

Each step: the student rolls out `blocks` blocks (a random exit step per block); on every
`critic_ratio`-th step (0, k, 2k, ...) the generator takes a DMD step on that rollout
(replayed or naive back-propagation); every step the critic takes a flow-matching step on it.
Both use AdamW with betas (distill.b1, distill.b2) and their own constant learning rate.
The rollout length follows distill.rollout_curriculum [(blocks, steps), ...]; each length
compiles its own step.

Checkpoints hold the whole state and the data iterator (Orbax, atomic), every
distill.checkpoint_every steps and at the end: a killed run resumes where its last checkpoint
left it, and then continues exactly as an uninterrupted run. Logged (metrics.jsonl,
TensorBoard): critic_loss every step; on generator steps dmd_loss (the DMD objective's
value, 0.5 mean g^2 of the normalised direction), teacher_fm_loss (the teacher's denoising
loss on this step's rollout: one noise level of the proxy `self_forcing.teacher_fit`),
score_diff (mean squared distance between the teacher's and the critic's x0 predictions),
gen_grad_norm and the mean exit step.
"""

import json
import os
import time
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging

from relic_jax import checkpoint as ckpt_lib
from relic_jax.config import validate
from relic_jax.config.derive import with_teacher_rope
from relic_jax.inference import loading
from relic_jax.inference import streaming as st
from relic_jax.io_utils import write_json_atomic
from relic_jax.parallel import mesh as mesh_lib
from relic_jax.training import self_forcing as sf
from relic_jax.training.state import param_count, with_shardings
from relic_jax.training.teacher import TeacherTask
from relic_jax.workdir import Workdir

GEN_METRICS = ("dmd_loss", "score_diff", "dmd_norm", "teacher_fm_loss", "mean_exit",
               "gen_grad_norm")


class DistillError(ValueError):
  """The distillation stage cannot run with this config or data (the message says why)."""


@flax.struct.dataclass
class DistillState:
  step: jax.Array
  gen: Any
  gen_ema: Any
  gen_opt: Any
  critic: Any
  critic_opt: Any


def stage_workdir(workdir: str) -> str:
  return os.path.join(workdir, "distill")


def optimizers(d: ml_collections.ConfigDict):
  """(generator, critic) AdamW with constant learning rates and global-norm clipping."""
  def make(lr):
    parts = [optax.clip_by_global_norm(d.grad_clip)] if d.grad_clip > 0 else []
    return optax.chain(*parts, optax.adamw(lr, b1=d.b1, b2=d.b2, weight_decay=d.weight_decay))
  return make(d.gen_lr), make(d.critic_lr)


def curriculum(cfg: ml_collections.ConfigDict) -> list[tuple[int, int]]:
  """[(blocks, end step)] from distill.rollout_curriculum [(blocks, steps)]."""
  out, end = [], 0
  for blocks, steps in cfg.distill.rollout_curriculum:
    end += int(steps)
    out.append((int(blocks), end))
  return out


def blocks_at(phases: list[tuple[int, int]], step: int) -> int:
  for blocks, end in phases:
    if step < end:
      return blocks
  return phases[-1][0]


def validate_distill(cfg: ml_collections.ConfigDict) -> None:
  d = cfg.distill
  def fail(field, why, fix):
    raise DistillError(f"config.distill.{field}={d[field]!r}: {why}. Fix: {fix}.")
  cur = d.rollout_curriculum
  if not cur or any(len(p) != 2 or int(p[0]) < 1 or int(p[1]) < 1 for p in cur):
    fail("rollout_curriculum", "must be a non-empty list of (blocks >= 1, steps >= 1)",
         "e.g. ((1, 20), (2, 20))")
  if d.backprop not in sf.BACKPROP_MODES:
    fail("backprop", f"unknown", f"use one of {sf.BACKPROP_MODES}")
  if int(d.critic_ratio) < 1:
    fail("critic_ratio", "must be >= 1", "use 1 (alternate every step) or more")
  if not 0 <= d.min_timestep < d.max_timestep <= 1000:
    fail("max_timestep", f"needs 0 <= min_timestep ({d.min_timestep}) < max_timestep <= 1000",
         "fix the range")
  for f in ("gen_lr", "critic_lr", "batch_size", "checkpoint_every", "log_every"):
    if not d[f] > 0:
      fail(f, "must be positive", "set a positive value")
  if not (0 <= d.b1 < 1 and 0 <= d.b2 < 1 and 0 <= d.ema_decay < 1):
    fail("b1", "betas and ema_decay must lie in [0, 1)", "use e.g. b1=0, b2=0.999, ema 0.99")
  if cfg.model.first_block_frames != 1:
    raise DistillError("the student's rollout puts frame 0 (the image latent) in a block of its "
                       f"own, but config.model.first_block_frames={cfg.model.first_block_frames}. "
                       "Fix: --config.model.first_block_frames=1.")


def to_distill_batch(cfg, batch: dict, blocks: int) -> dict:
  """A per-process data batch (latents, text, maybe actions) -> the rollout's inputs: frame 0,
  the text and the actions of the rollout's video frames (static actions when the data has
  none)."""
  latents = np.asarray(batch["latents"])
  b = latents.shape[0]
  f = blocks * cfg.model.block_frames * cfg.model.cond_frames_per_latent
  if "actions" in batch:
    a = np.asarray(batch["actions"], np.float32)
    if a.shape[1] < 1 + f:
      raise DistillError(
          f"a rollout of {blocks} blocks needs the actions of {f} video frames after frame 0, "
          f"but the data's clips have {a.shape[1] - 1} (data.latent_frames="
          f"{cfg.data.latent_frames}). Fix: shorten config.distill.rollout_curriculum or encode "
          f"clips of at least {1 + blocks * cfg.model.block_frames} latent frames.")
    actions = a[:, 1:1 + f]
  else:
    actions = np.zeros((b, f, st.ACTION_DIM), np.float32)
    actions[..., st.STATIC] = 1.0
  return {"latent0": latents[:, :1], "text": np.asarray(batch["text"]), "actions": actions}


def generator_update(state: DistillState, teacher, batch, spec: sf.DistillSpec, tx_gen,
                     ema_decay: float, rng):
  """A DMD step of the generator (and its EMA) on a fresh rollout -> (state, the detached
  student sequence, metrics). Teacher and critic are only read."""
  grads, m, seq = sf.generator_grads(state.gen, teacher, state.critic, spec, batch, rng)
  updates, opt = tx_gen.update(grads, state.gen_opt, state.gen)
  gen = optax.apply_updates(state.gen, updates)
  ema = jax.tree.map(lambda e, p: ema_decay * e + (1.0 - ema_decay) * p, state.gen_ema, gen)
  return (state.replace(gen=gen, gen_opt=opt, gen_ema=ema), seq,
          {**m, "gen_grad_norm": optax.tree.norm(grads)})


def critic_update(state: DistillState, seq, text, spec: sf.DistillSpec, tx_critic, rng):
  """A flow-matching step of the critic on the student's sequence -> (state, metrics)."""
  video, acts, poses = seq
  loss, grads = jax.value_and_grad(sf.critic_loss)(state.critic, spec, video, text, acts, poses,
                                                   rng)
  updates, opt = tx_critic.update(grads, state.critic_opt, state.critic)
  return (state.replace(critic=optax.apply_updates(state.critic, updates), critic_opt=opt),
          {"critic_loss": loss, "critic_grad_norm": optax.tree.norm(grads)})


def make_step(spec: sf.DistillSpec, tx_gen, tx_critic, d: ml_collections.ConfigDict, seed: int):
  """(state, teacher, batch) -> (state, metrics): the generator's DMD step when
  step % critic_ratio == 0 (else only the rollout), then the critic's step on that rollout."""
  ratio, decay = int(d.critic_ratio), float(d.ema_decay)

  def step_fn(state: DistillState, teacher, batch):
    rng = jax.random.fold_in(jax.random.key(seed), state.step)
    k_gen, k_critic = jax.random.split(rng)
    gen_turn = state.step % ratio == 0

    def with_gen(state):
      return generator_update(state, teacher, batch, spec, tx_gen, decay, k_gen)

    def without_gen(state):
      seq = sf.student_sequence(state.gen, spec, batch, k_gen)
      return state, seq, {k: jnp.zeros((), jnp.float32) for k in GEN_METRICS}

    new, seq, m = jax.lax.cond(gen_turn, with_gen, without_gen, state)
    new, cm = critic_update(new, seq, batch["text"], spec, tx_critic, k_critic)
    new = new.replace(step=state.step + 1)
    finite = jnp.all(jnp.asarray([jnp.isfinite(v) for v in (*m.values(), *cm.values())]))
    new = jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, state)
    return new, {**m, **cm, "gen_step": gen_turn, "finite": finite}

  return step_fn


def _new_state(gen, critic, tx_gen, tx_critic) -> DistillState:
  """Step 0: the generator's EMA starts at the generator, both optimizers fresh."""
  return DistillState(step=jnp.zeros((), jnp.int32), gen=gen, gen_ema=gen,
                      gen_opt=tx_gen.init(gen), critic=critic, critic_opt=tx_critic.init(critic))


def state_layout(cfg, tx_gen, tx_critic, mesh, rules):
  """(abstract DistillState, its NamedShardings) from the model's logical axes, without
  allocating anything."""
  task = TeacherTask(cfg)

  def init(rng):
    p = task.init_params(rng)
    return _new_state(p, p, tx_gen, tx_critic)

  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    boxed = jax.eval_shape(init, jax.random.key(0))
    shardings = nn.logical_to_mesh_sharding(nn.get_partition_spec(boxed), mesh, rules)
  return nn.meta.unbox(boxed), shardings


def initial_state(gen_params, critic_params, tx_gen, tx_critic, shardings) -> DistillState:
  return jax.jit(lambda g, c: _new_state(g, c, tx_gen, tx_critic),
                 out_shardings=shardings)(gen_params, critic_params)


def load_teacher_and_init(cfg, workdir: str):
  """(teacher params, generator init params, where the generator starts from)."""
  teacher = loading.load_teacher(cfg, workdir)
  odir = Workdir.of(cfg, workdir).ode_init
  if ckpt_lib.has_checkpoint(odir):
    return teacher, loading.load_dit_params(cfg, odir), "ode_init"
  return teacher, teacher, "teacher"


def distill(cfg: ml_collections.ConfigDict, workdir: str, iterator=None, teacher=None,
            gen_init=None, hooks=()) -> dict:
  """Runs (or resumes) the distillation stage in <workdir>/distill. teacher / gen_init: params
  to use instead of loading them from <workdir> (tests). hooks: called as hook(step, metrics)
  after each step's metrics are read, before its checkpoint."""
  from relic_jax.training.trainer import _progress, _Writer, NonFiniteError, compiled_stats
  validate(cfg)
  validate_distill(cfg)
  cfg = with_teacher_rope(cfg)  # the student runs with the final teacher's RoPE (YaRN)
  d = cfg.distill
  out = stage_workdir(workdir)
  os.makedirs(out, exist_ok=True)
  is_main = jax.process_index() == 0
  if is_main:
    write_json_atomic(os.path.join(out, "config.json"), json.loads(cfg.to_json()))
  mesh, rules = mesh_lib.make_mesh(cfg.mesh), mesh_lib.rules(cfg.mesh)
  split = mesh.shape["data"] * mesh.shape["fsdp"]
  if d.batch_size % split or (d.batch_size // jax.process_count()) % max(
      split // jax.process_count(), 1):
    raise DistillError(f"config.distill.batch_size={d.batch_size} does not split over the mesh's "
                       f"data x fsdp = {split} devices. Fix: use a multiple of {split}.")
  tx_gen, tx_critic = optimizers(d)
  abstract, shardings = state_layout(cfg, tx_gen, tx_critic, mesh, rules)
  meta = ckpt_lib.describe_model(TeacherTask(cfg).model_config, abstract.gen)
  source = "given"
  if teacher is None:
    teacher, gen_init, source = load_teacher_and_init(cfg, workdir)
  gen_init = teacher if gen_init is None else gen_init
  teacher = jax.device_put(teacher, shardings.critic)

  run_cfg = cfg.copy_and_resolve_references()
  with run_cfg.unlocked():
    run_cfg.train.batch_size = d.batch_size
  if iterator is None:
    iterator = _data_iterator(run_cfg, workdir)
  ckpt = ckpt_lib.Checkpointer(os.path.join(out, "checkpoints"), d.keep_checkpoints,
                               cfg.train.async_checkpointing)
  latest = ckpt.latest_step()
  if latest is None:
    state = initial_state(gen_init, teacher, tx_gen, tx_critic, shardings)
    logging.info("distillation starts: generator from %s", source)
  else:
    state, data_state = ckpt.restore(latest, with_shardings(abstract, shardings), meta)
    iterator.set_state(data_state)
    logging.info("restored distillation step %d", latest)
  start = int(jax.device_get(state.step))
  phases = curriculum(cfg)
  total = phases[-1][1]
  per_process = d.batch_size // jax.process_count()

  compiled: dict[int, Any] = {}
  stats: dict[int, dict] = {}

  def compiled_for(blocks: int):
    if blocks not in compiled:
      spec = sf.spec_from_config(cfg, blocks)
      example = to_distill_batch(cfg, _example(run_cfg, per_process), blocks)
      bsh = {k: mesh_lib.batch_sharding(mesh, rules, v.ndim) for k, v in example.items()}
      abatch = {k: jax.ShapeDtypeStruct((d.batch_size,) + v.shape[1:], v.dtype, sharding=bsh[k])
                for k, v in example.items()}
      t0 = time.time()
      with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        fn = jax.jit(make_step(spec, tx_gen, tx_critic, d, cfg.seed),
                     in_shardings=(shardings, shardings.critic, bsh),
                     out_shardings=(shardings, mesh_lib.replicated(mesh)), donate_argnums=(0,))
        compiled[blocks] = fn.lower(with_shardings(abstract, shardings),
                                    with_shardings(abstract.critic, shardings.critic),
                                    abatch).compile()
      stats[blocks] = {**compiled_stats(compiled[blocks]), "compile_s": time.time() - t0}
      if is_main:
        print(f"[relic] distill step for {blocks} block(s) ({spec.latent_frames} latent frames, "
              f"{spec.backprop} back-propagation) compiled in {stats[blocks]['compile_s']:.1f}s; "
              f"temp {stats[blocks].get('temp_bytes', 0) / 2**20:.1f} MiB", flush=True)
    return compiled[blocks]

  writer = _Writer(out, is_main)
  bar = _progress(total, start, is_main and cfg.train.progress_bar)
  history: list[dict] = []
  t_start = time.time()
  try:
    for step in range(start, total):
      blocks = blocks_at(phases, step)
      fn = compiled_for(blocks)
      batch = mesh_lib.global_batch(mesh, rules, to_distill_batch(cfg, next(iterator), blocks))
      state, metrics = fn(state, teacher, batch)
      m = jax.device_get(metrics)
      if not bool(m["finite"]):
        ckpt.wait()
        raise NonFiniteError(
            f"distill step {step}: a non-finite loss ({ {k: float(v) for k, v in m.items()} }). "
            f"The update was discarded; the latest good checkpoint is step "
            f"{ckpt.latest_step()}. Fix: lower config.distill.gen_lr / critic_lr.")
      row = {"step": step + 1, "blocks": blocks, "critic_loss": float(m["critic_loss"]),
             "critic_grad_norm": float(m["critic_grad_norm"])}
      if bool(m["gen_step"]):
        row |= {k: float(m[k]) for k in GEN_METRICS}
      history.append(row)
      for hook in hooks:
        hook(step + 1, row)
      if (step + 1) % d.log_every == 0 or bool(m["gen_step"]):
        writer.write(step + 1, {k: v for k, v in row.items() if k != "step"})
      if bar is not None:
        bar.update(1)
        bar.set_postfix(blocks=blocks, critic=f"{row['critic_loss']:.4f}",
                        **({"dmd": f"{row['dmd_loss']:.4f}"} if "dmd_loss" in row else {}))
      if (step + 1) % d.checkpoint_every == 0 or step + 1 == total:
        ckpt.save(step + 1, state, iterator.get_state(), meta)
  finally:
    if bar is not None:
      bar.close()
    writer.close()
    ckpt.close()

  gen_rows = [h for h in history if "dmd_loss" in h]
  final = {"step": int(jax.device_get(state.step)), "param_count": param_count(abstract.gen),
           "wall_s": time.time() - t_start, "generator_from": source,
           "backprop": d.backprop, "compiled": {str(k): v for k, v in stats.items()}}
  if gen_rows:
    final |= {"first_dmd_loss": gen_rows[0]["dmd_loss"], "last_dmd_loss": gen_rows[-1]["dmd_loss"],
              "first_score_diff": gen_rows[0]["score_diff"],
              "last_score_diff": gen_rows[-1]["score_diff"],
              "first_teacher_fm_loss": gen_rows[0]["teacher_fm_loss"],
              "last_teacher_fm_loss": gen_rows[-1]["teacher_fm_loss"]}
  if history:
    final["last_critic_loss"] = history[-1]["critic_loss"]
  if is_main:
    write_json_atomic(os.path.join(out, "final_metrics.json"), final)
  return final


def _example(cfg, batch_size: int) -> dict:
  return TeacherTask(cfg).example_batch(batch_size)


def _data_iterator(cfg, workdir: str):
  from data_pipeline.loader import CachedLatents, make_train_iterator
  if cfg.data.source == "latents":
    source = CachedLatents(cfg, cfg.data.latent_dir or os.path.join(workdir, "latents"))
    return make_train_iterator(cfg, source=source)
  return make_train_iterator(cfg)
