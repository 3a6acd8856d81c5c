"""`relic distill`: self-forcing DMD distillation of the block-causal student (the math is in
`training/self_forcing.py`), sharded over the config's mesh, in <workdir>/distill.

State (`DistillState`): the generator (student) with its AdamW state and EMA, and the critic
(fake score) with its AdamW state; the frozen teacher (real score) is a separate argument,
never updated. The generator starts from <workdir>/ode_init when it holds a checkpoint, else
from the teacher's params; the critic from the teacher's.

Each step: the student rolls out `blocks` blocks (a random sampler exit step, shared by all
blocks unless distill.same_exit_across_blocks is False); on every `critic_ratio`-th step
(0, k, 2k, ...) the generator takes a DMD step on that rollout (replayed or naive
back-propagation); every step the critic takes a flow-matching step on it. Both use AdamW
with betas (distill.b1, distill.b2) and their own constant learning rate; the generator's EMA
equals its params before distill.ema_start_step (Self-Forcing: 200) and decays by
distill.ema_decay after. The rollout length follows distill.rollout_curriculum [(blocks,
steps), ...] (RELIC's 5 s -> 10 s -> 20 s; the longest must leave memory.window, which
config.validate checks); each length compiles its own step. Each example's poses are
integrated with its clip's action_scale (the latent cache's, else generate.action_scale).

`DistillStage` runs in the shared training loop (`training/loop.py`): checkpoints hold the
whole state and the data iterator (Orbax, atomic), every distill.checkpoint_every steps and
at the end: a killed run resumes where its last checkpoint
left it, and then continues exactly as an uninterrupted run. Logged (metrics.jsonl,
TensorBoard): critic_loss every step; on generator steps dmd_loss (the DMD objective's
value, 0.5 mean g^2 of the normalised direction), teacher_fm_loss (the teacher's denoising
loss on this step's rollout: one noise level of the proxy `self_forcing.teacher_fit`),
score_diff (mean squared distance between the teacher's and the critic's x0 predictions),
gen_grad_norm and the mean exit step.
"""

import os
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
from relic_jax.parallel import mesh as mesh_lib
from relic_jax.training import loop
from relic_jax.training import self_forcing as sf
from relic_jax.training.data import train_iterator
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
  return Workdir(root=workdir).distill


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
  # (the curriculum's shape, and that it leaves the window, are config.validate's)
  if d.backprop not in sf.BACKPROP_MODES:
    fail("backprop", "unknown", f"use one of {sf.BACKPROP_MODES}")
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


def rollout_frames(cfg: ml_collections.ConfigDict) -> int:
  """Latent frames of the curriculum's longest rollout (frame 0 included): the clip length the
  distillation's data must have (a longer latent cache is read as a prefix)."""
  longest = max(int(blocks) for blocks, _ in cfg.distill.rollout_curriculum)
  return cfg.model.first_block_frames + longest * cfg.model.block_frames


def to_distill_batch(cfg, batch: dict, blocks: int) -> dict:
  """A per-process data batch (latents, text, maybe actions and action_scale) -> the rollout's
  inputs: frame 0, the text, the actions of the rollout's video frames (static actions when
  the data has none) and each example's action scale [B] (metres per action unit, to
  integrate its poses as the teacher saw them; config.generate.action_scale when the data has
  none)."""
  latents = np.asarray(batch["latents"])
  b = latents.shape[0]
  if "action_scale" in batch:
    scale = np.asarray(batch["action_scale"], np.float32).reshape(b)
  else:
    scale = np.full((b,), cfg.generate.action_scale, np.float32)
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
  out = {"latent0": latents[:, :1], "text": np.asarray(batch["text"]), "actions": actions,
         "action_scale": scale}
  if "null_text" in batch:  # umT5 captions: the empty caption's embedding for guidance
    out["null_text"] = np.asarray(batch["null_text"])
  return out


def generator_update(state: DistillState, teacher, batch, spec: sf.DistillSpec, tx_gen,
                     ema_decay: float, rng, ema_start_step: int = 0):
  """A DMD step of the generator (and its EMA) on a fresh rollout -> (state, the detached
  student sequence, metrics). Teacher and critic are only read. The EMA follows the generator
  exactly before distill step ema_start_step (Self-Forcing starts its EMA at step 200)."""
  grads, m, seq = sf.generator_grads(state.gen, teacher, state.critic, spec, batch, rng)
  updates, opt = tx_gen.update(grads, state.gen_opt, state.gen)
  gen = optax.apply_updates(state.gen, updates)
  decay = jnp.where(state.step >= ema_start_step, ema_decay, 0.0)
  ema = jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, state.gen_ema, gen)
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
  ratio, decay, ema_start = int(d.critic_ratio), float(d.ema_decay), int(d.ema_start_step)

  def step_fn(state: DistillState, teacher, batch):
    rng = jax.random.fold_in(jax.random.key(seed), state.step)
    k_gen, k_critic = jax.random.split(rng)
    gen_turn = state.step % ratio == 0

    def with_gen(state):
      return generator_update(state, teacher, batch, spec, tx_gen, decay, k_gen, ema_start)

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

  rng = jax.random.key(0)  # a concrete key, made outside the mesh (which may be compile-only)
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    boxed = jax.eval_shape(init, rng)
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


def check_batch_split(d: ml_collections.ConfigDict, mesh) -> None:
  """Refuses a distill.batch_size that the mesh's data x fsdp devices cannot split."""
  split = mesh.shape["data"] * mesh.shape["fsdp"]
  if d.batch_size % split or (d.batch_size // jax.process_count()) % max(
      split // jax.process_count(), 1):
    raise DistillError(f"config.distill.batch_size={d.batch_size} does not split over the mesh's "
                       f"data x fsdp = {split} devices. Fix: use a multiple of {split}.")


def data_config(cfg: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """cfg with train.batch_size = distill.batch_size and clips of the longest rollout
  (data.latent_frames = rollout_frames; the latent cache, encoded at the longest horizon any
  stage needs, is read as a prefix): the config the data iterator reads."""
  out = cfg.copy_and_resolve_references()
  with out.unlocked():
    out.train.batch_size = cfg.distill.batch_size
    out.data.latent_frames = max(int(cfg.data.latent_frames), rollout_frames(cfg))
  return out


class DistillStage(loop.Stage):
  """Distillation as a stage of the loop: the DistillState, the frozen teacher as the step's
  constant, one compiled step per rollout length of the curriculum."""

  def __init__(self, cfg: ml_collections.ConfigDict, workdir: str, mesh, rules, teacher,
               gen_init, source: str):
    """cfg: with the teacher's RoPE. teacher, gen_init: params (teacher's layout)."""
    d = cfg.distill
    self.cfg, self.d, self.workdir, self.source = cfg, d, workdir, source
    self.mesh, self.rules = mesh, rules
    self.task = TeacherTask(data_config(cfg))  # example batches of the longest rollout
    self.tx_gen, self.tx_critic = optimizers(d)
    abstract, self.shardings = state_layout(cfg, self.tx_gen, self.tx_critic, mesh, rules)
    self.n_params = param_count(abstract.gen)
    self.abstract_state = with_shardings(abstract, self.shardings)
    self.meta = ckpt_lib.describe_model(self.task.model_config, abstract.gen)
    self.constants = (jax.device_put(teacher, self.shardings.critic),)
    self.abstract_constants = (with_shardings(abstract.critic, self.shardings.critic),)
    self._gen_init = gen_init
    self.phases = curriculum(cfg)
    self.cadence = loop.Cadence(
        steps=self.phases[-1][1], log_every=d.log_every, checkpoint_every=d.checkpoint_every,
        keep_checkpoints=d.keep_checkpoints, async_checkpointing=cfg.train.async_checkpointing,
        progress_bar=cfg.train.progress_bar)
    self.batch_size = d.batch_size

  def init_state(self) -> DistillState:
    state = initial_state(self._gen_init, self.constants[0], self.tx_gen, self.tx_critic,
                          self.shardings)
    logging.info("distillation starts: generator from %s", self.source)
    return state

  def step_kind(self, step: int) -> int:
    return blocks_at(self.phases, step)

  def train_step(self, blocks: int):
    return make_step(sf.spec_from_config(self.cfg, blocks), self.tx_gen, self.tx_critic, self.d,
                     self.cfg.seed)

  def example_batch(self, blocks: int, batch_size: int) -> dict:
    return to_distill_batch(self.cfg, self.task.example_batch(batch_size), blocks)

  def batch(self, blocks: int, batch: dict) -> dict:
    return to_distill_batch(self.cfg, batch, blocks)

  def on_compiled(self, blocks: int, stats: dict) -> None:
    if jax.process_index() == 0:
      spec = sf.spec_from_config(self.cfg, blocks)
      print(f"[relic] distill step for {blocks} block(s) ({spec.latent_frames} latent frames, "
            f"{spec.backprop} back-propagation) compiled in {stats['compile_s']:.1f}s; "
            f"temp {stats.get('temp_bytes', 0) / 2**20:.1f} MiB", flush=True)

  def scalars(self, step: int, m: dict) -> dict:
    """critic_loss and critic_grad_norm every step, the generator's metrics on its steps."""
    row = {"blocks": blocks_at(self.phases, step - 1), "critic_loss": float(m["critic_loss"]),
           "critic_grad_norm": float(m["critic_grad_norm"])}
    if bool(m["gen_step"]):
      row |= {k: float(m[k]) for k in GEN_METRICS}
    return row

  def log_now(self, step: int, scalars: dict) -> bool:
    return step % self.d.log_every == 0 or "dmd_loss" in scalars  # every generator step

  def postfix(self, scalars: dict) -> dict:
    return {"blocks": scalars["blocks"], "critic": f"{scalars['critic_loss']:.4f}",
            **({"dmd": f"{scalars['dmd_loss']:.4f}"} if "dmd_loss" in scalars else {})}

  def nonfinite_message(self, step: int, m: dict, latest: int | None) -> str:
    values = {k: float(v) for k, v in m.items()}
    # (this message has always numbered the step from 0: step - 1 updates were good)
    return (f"distill step {step - 1}: a non-finite loss ({values}). The update was "
            f"discarded; the latest good checkpoint is step {latest}. Fix: lower "
            "config.distill.gen_lr / critic_lr.")

  def final_metrics(self, summary: loop.Summary) -> dict:
    history = summary.history
    gen_rows = [h for h in history if "dmd_loss" in h]
    final = {"step": summary.step, "param_count": self.n_params, "wall_s": summary.wall_s,
             "generator_from": self.source, "backprop": self.d.backprop,
             "compiled": {str(k): v for k, v in summary.compiled.items()}}
    if gen_rows:
      final |= {"first_dmd_loss": gen_rows[0]["dmd_loss"],
                "last_dmd_loss": gen_rows[-1]["dmd_loss"],
                "first_score_diff": gen_rows[0]["score_diff"],
                "last_score_diff": gen_rows[-1]["score_diff"],
                "first_teacher_fm_loss": gen_rows[0]["teacher_fm_loss"],
                "last_teacher_fm_loss": gen_rows[-1]["teacher_fm_loss"]}
    if history:
      final["last_critic_loss"] = history[-1]["critic_loss"]
    return final


def distill(cfg: ml_collections.ConfigDict, workdir: str, iterator=None, teacher=None,
            gen_init=None, hooks=()) -> dict:
  """Runs (or resumes) the distillation stage in <workdir>/distill. teacher / gen_init: params
  to use instead of loading them from <workdir> (tests). hooks: called as hook(step, metrics)
  after each step's metrics are read, before its checkpoint."""
  validate(cfg)
  validate_distill(cfg)
  cfg = with_teacher_rope(cfg)  # the student runs with the final teacher's RoPE (YaRN)
  out = stage_workdir(workdir)
  mesh, rules = mesh_lib.make_mesh(cfg.mesh), mesh_lib.rules(cfg.mesh)
  check_batch_split(cfg.distill, mesh)
  source = "given"
  if teacher is None:
    teacher, gen_init, source = load_teacher_and_init(cfg, workdir)
  config = loop.prepare_run(cfg, out)  # (after the inputs: a refused run writes nothing)
  stage = DistillStage(cfg, out, mesh, rules, teacher, teacher if gen_init is None else gen_init,
                       source)
  stage.config = config
  if iterator is None:
    iterator = train_iterator(data_config(cfg), workdir)
  return loop.run(stage, iterator, hooks)


def load_generator(cfg, workdir: str, use_ema: bool = True):
  """The distilled student's params (its EMA by default) from <workdir>/distill."""
  d = cfg.distill
  tx_gen, tx_critic = optimizers(d)
  mesh, rules = mesh_lib.make_mesh(cfg.mesh), mesh_lib.rules(cfg.mesh)
  abstract, shardings = state_layout(cfg, tx_gen, tx_critic, mesh, rules)
  meta = ckpt_lib.describe_model(TeacherTask(cfg).model_config, abstract.gen)
  ckpt = ckpt_lib.Checkpointer(os.path.join(stage_workdir(workdir), "checkpoints"),
                               d.keep_checkpoints, async_save=False)
  step = ckpt.latest_step()
  if step is None:
    raise ckpt_lib.CheckpointError(f"{ckpt.directory} holds no checkpoint. Fix: run "
                                   "`relic distill` with this --workdir.")
  state, _ = ckpt.restore(step, with_shardings(abstract, shardings), meta)
  ckpt.close()
  return state.gen_ema if use_ema else state.gen
