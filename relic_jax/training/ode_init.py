"""`relic ode_init`: the block-causal student's initialisation by regression onto the teacher's
ODE trajectories, with RELIC's hybrid forcing. In <workdir>/ode_init.

1. Trajectories (<workdir>/ode_init/trajectories/part_NNNNN.npz, each written atomically; a
   killed run keeps its finished parts): for ode_init.num_trajectories clips of
   1 + ode_init.blocks * model.block_frames latent frames from the training data, the frozen
   bidirectional teacher integrates the flow ODE dx/dsigma = v from pure noise (frame 0 is the
   clean image latent, sigma 0 throughout) with Euler steps on the grid of
   ode_init.solver_steps uniform timesteps joined with the student's timesteps
   (config.generate.timesteps), all shifted by generate.shift, with classifier-free guidance
   generate.guidance on the text (null text: teacher.null_text; the same guidance as DMD's
   real score, in the convention generate.cfg_convention). Stored: the states at the student's
   timesteps [S, T, h, w, C], the end point x0, the text, actions and poses.
2. Regression (the generic trainer, config.train overridden by ode_init.train; params start
   from the teacher's): the student sees, for each block, the trajectory's state at a random
   one of its timesteps, and regresses the end point: mean squared error of its x0 prediction
   (x - sigma v) on the noised blocks. Hybrid forcing: of B = ode_init.blocks blocks, the first
   C are clean (the trajectory's end point) and are written into the student's KV cache at
   t = 0 exactly as generation writes them (the window, and the memory pooled by
   config.memory's schedule); the next K = ode_init.noisy_blocks are noised and run one after
   another against the cache, each then cached as it was seen (noisy), so attention is
   block-causal throughout and the loss is taken on the K noised blocks. C is B - K, or, with
   ode_init.random_context (the default), drawn per step from 0..B - K, so that the blocks a
   session generates first, right after the image, are regressed too.
"""

import glob
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from tqdm import tqdm

from relic_jax.config import validate
from relic_jax.config.derive import with_teacher_rope
from relic_jax.config.validation import standard_guidance
from relic_jax.diffusion import flow_matching as fm
from relic_jax.inference import camera
from relic_jax.inference.loading import load_teacher
from relic_jax.inference import streaming as st
from relic_jax.io_utils import write_npz_atomic
from relic_jax.memory import kv_cache as kv_lib
from relic_jax.models.dit import DiTConfig, WanDiT
from relic_jax.training.data import train_iterator
from relic_jax.training.teacher import TeacherTask
from relic_jax.training.trainer import train
from relic_jax.workdir import Workdir


class ODEInitError(ValueError):
  """The ODE initialisation cannot run with this config or data (the message says why)."""


def stage_workdir(workdir: str) -> str:
  return Workdir(root=workdir).ode_init


def stage_config(cfg: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """cfg with config.train overridden by config.ode_init.train."""
  out = cfg.copy_and_resolve_references()
  with out.unlocked():
    for k, v in cfg.ode_init.train.items():
      out.train[k] = v
  return out


def clip_frames(cfg) -> int:
  return 1 + cfg.ode_init.blocks * cfg.model.block_frames


def solver_sigmas(cfg) -> tuple[np.ndarray, np.ndarray]:
  """(the Euler grid of sigmas, descending from 1 to 0; the grid index of each student
  timestep)."""
  o, g = cfg.ode_init, cfg.generate
  t = np.linspace(fm.NUM_TRAIN_TIMESTEPS, 0.0, o.solver_steps + 1)
  t = np.unique(np.concatenate([t, np.asarray(g.timesteps, np.float64)]))[::-1]
  sig = fm.shift_sigma(t / fm.NUM_TRAIN_TIMESTEPS, g.shift)
  idx = np.asarray([int(np.argmin(np.abs(t - x))) for x in g.timesteps])
  return sig.astype(np.float32), idx


def validate_ode(cfg) -> None:
  o = cfg.ode_init
  if o.blocks < 1 or not 1 <= o.noisy_blocks <= o.blocks:
    raise ODEInitError(f"config.ode_init.noisy_blocks={o.noisy_blocks} with blocks={o.blocks}: "
                       "need 1 <= noisy_blocks <= blocks. Fix: set them so.")
  if o.num_trajectories < 1 or o.solver_steps < 1:
    raise ODEInitError("config.ode_init.num_trajectories and solver_steps must be >= 1. Fix: "
                       "set positive values.")
  if cfg.model.first_block_frames != 1:
    raise ODEInitError(f"config.model.first_block_frames={cfg.model.first_block_frames}: the "
                       "student's frame 0 is a block of its own. Fix: set it to 1.")


# ------------------------------------------------------------------ 1. trajectories


def teacher_trajectory(teacher, dit: DiTConfig, sigmas, keep_idx, latent0, text, actions, poses,
                       rng, guidance: float, null=None):
  """Euler integration of the teacher's flow from noise -> (states at keep_idx [B, S, T, ...],
  x0 [B, T, ...]). latent0 [B, 1, ...] is frame 0 (clean); T is actions' latent length.
  guidance: a standard CFG scale (1 = none; config.validation.standard_guidance), whose
  unconditional branch gets `null` (teacher.null_text; None: zeros)."""
  b = latent0.shape[0]
  t_len = (actions.shape[1] - 1) // dit.cond_frames_per_latent + 1
  shape = (b, t_len) + latent0.shape[2:]
  x = jax.random.normal(rng, shape, jnp.float32).at[:, :1].set(latent0)
  sig = jnp.asarray(sigmas)
  keep = jnp.asarray(keep_idx)

  def velocity(x, s):
    t = jnp.full((b, t_len), s * fm.NUM_TRAIN_TIMESTEPS).at[:, 0].set(0.0)
    run = lambda txt: WanDiT(dit).apply({"params": teacher}, x, t, txt,
                                        actions=actions if dit.action_dim else None,
                                        poses=poses if dit.pose_dim else None)
    v = run(text)
    if guidance != 1.0:
      v0 = run(jnp.zeros_like(text) if null is None else null)
      v = v0 + guidance * (v - v0)
    return v

  def body(carry, i):
    x, states = carry
    states = jnp.where((keep == i)[:, None, None, None, None, None], x[None], states)
    v = velocity(x, sig[i])
    x = x + (sig[i + 1] - sig[i]) * v
    x = x.at[:, :1].set(latent0)
    return (x, states), None

  states = jnp.zeros((len(keep_idx),) + shape, jnp.float32)
  (x, states), _ = jax.lax.scan(body, (x, states), jnp.arange(len(sigmas) - 1))
  return jnp.moveaxis(states, 0, 1), x


def _conditioning(cfg, batch: dict, frames: int):
  """(latent0, text, null text, actions [B, F, 13], poses [B, F, 12]) of a data batch, cut to
  `frames` latent frames; the synthetic source has no actions: static, and identity poses."""
  lat = np.asarray(batch["latents"])
  if lat.shape[1] < frames:
    raise ODEInitError(f"the data's clips have {lat.shape[1]} latent frames but ode_init.blocks="
                       f"{cfg.ode_init.blocks} needs {frames}. Fix: lower config.ode_init.blocks "
                       f"or use clips of data.latent_frames >= {frames}.")
  b = lat.shape[0]
  f = 1 + cfg.model.cond_frames_per_latent * (frames - 1)
  if "actions" in batch:
    actions = np.asarray(batch["actions"], np.float32)[:, :f]
    poses = np.asarray(batch["poses"], np.float32)[:, :f]
  else:
    actions = np.zeros((b, f, st.ACTION_DIM), np.float32)
    actions[..., st.STATIC] = 1.0
    poses = np.broadcast_to(np.eye(4, dtype=np.float32)[:3].reshape(12), (b, f, 12)).copy()
  text = np.asarray(batch["text"])
  null = np.asarray(batch["null_text"]) if "null_text" in batch else np.zeros_like(text)
  return lat[:, :1], text, null, actions, poses


def write_trajectories(cfg, workdir: str, teacher, iterator, progress: bool = False) -> str:
  """Computes the missing trajectory parts -> their directory."""
  validate_ode(cfg)
  out = os.path.join(stage_workdir(workdir), "trajectories")
  os.makedirs(out, exist_ok=True)
  o = cfg.ode_init
  frames = clip_frames(cfg)
  sigmas, keep = solver_sigmas(cfg)
  dit = DiTConfig.from_config(cfg.model)
  per_part = cfg.train.batch_size
  parts = -(-o.num_trajectories // per_part)
  guidance = standard_guidance(cfg)
  fn = jax.jit(lambda p, l0, tx, nl, a, ps, r: teacher_trajectory(
      p, dit, sigmas, keep, l0, tx, a, ps, r, guidance, nl))
  bar = None
  if progress:
    bar = tqdm(total=parts, unit="part", desc="teacher ODE trajectories")
  for i in range(parts):
    batch = next(iterator)  # drawn for every part, done or not: the same clips on resume
    path = os.path.join(out, f"part_{i:05d}.npz")
    if not os.path.exists(path):
      latent0, text, null, actions, poses = _conditioning(cfg, batch, frames)
      states, x0 = fn(teacher, latent0, text, null, actions, poses,
                      jax.random.fold_in(jax.random.key(cfg.seed + 1), i))
      write_npz_atomic(path, states=np.asarray(states), x0=np.asarray(x0), text=text,
                       actions=actions, poses=poses)
    if bar is not None:
      bar.update(1)
  if bar is not None:
    bar.close()
  return out


class TrajectoryIterator:
  """Shuffled per-epoch batches of the stored trajectories, this process's rows of each global
  batch; get_state/set_state for the trainer's checkpoints."""

  def __init__(self, directory: str, batch_size: int, seed: int, process_index: int = 0,
               process_count: int = 1):
    """batch_size: the global batch (every process reads the same order, keeps its rows)."""
    files = sorted(glob.glob(os.path.join(directory, "part_*.npz")))
    if not files:
      raise ODEInitError(f"no trajectories in {directory}. Fix: run `relic ode_init`.")
    data = [dict(np.load(f)) for f in files]
    self.data = {k: np.concatenate([x[k] for x in data]) for k in data[0]}
    self.n = len(self.data["x0"])
    if self.n < batch_size:
      raise ODEInitError(f"{self.n} trajectories are fewer than one batch ({batch_size}). Fix: "
                         "raise config.ode_init.num_trajectories or lower ode_init.train."
                         "batch_size.")
    self.batch, self.seed, self.count = batch_size, seed, 0
    self.rows = slice(process_index * batch_size // process_count,
                      (process_index + 1) * batch_size // process_count)

  def __iter__(self):
    return self

  def __next__(self):
    per_epoch = self.n // self.batch
    epoch, i = divmod(self.count, per_epoch)
    order = np.random.default_rng([self.seed, epoch]).permutation(self.n)
    idx = order[i * self.batch:(i + 1) * self.batch][self.rows]
    self.count += 1
    return {k: v[idx] for k, v in self.data.items()}

  def get_state(self) -> dict:
    return {"count": self.count}

  def set_state(self, state: dict) -> None:
    self.count = int(state["count"])


# ------------------------------------------------------------------ 2. regression


def _poses44(poses_BF12):
  b, f = poses_BF12.shape[:2]
  bottom = jnp.broadcast_to(jnp.asarray([0.0, 0.0, 0.0, 1.0]), (b, f, 1, 4))
  return jnp.concatenate([poses_BF12.reshape(b, f, 3, 4), bottom], axis=2)


class ODEInitTask(TeacherTask):
  """A `trainer.Task`: the student regresses the trajectories' end points with hybrid forcing.
  Same params (and checkpoint layout) as the teacher; the student runs block-causally."""

  def __init__(self, cfg: ml_collections.ConfigDict):
    super().__init__(cfg)
    validate_ode(cfg)
    self.spec = st.spec_from_config(cfg, max_frames=clip_frames(cfg))
    self.sigmas = jnp.asarray(st.sampler_sigmas(cfg.generate.timesteps, cfg.generate.shift))
    self._clip = (clip_frames(cfg), cfg.data.latent_height, cfg.data.latent_width)

  def example_batch(self, batch_size: int) -> dict:
    t, h, w = self._clip
    c, d = self.dit, self.cfg.data
    f = 1 + c.cond_frames_per_latent * (t - 1)
    s = len(self.cfg.generate.timesteps)
    text = (np.zeros((batch_size, d.text_len), np.int32) if c.text_encoder == "bytes" else
            np.zeros((batch_size, d.text_len, c.text_dim), np.float32))
    return {"states": np.zeros((batch_size, s, t, h, w, c.in_channels), np.float32),
            "x0": np.zeros((batch_size, t, h, w, c.in_channels), np.float32), "text": text,
            "actions": np.zeros((batch_size, f, st.ACTION_DIM), np.float32),
            "poses": np.zeros((batch_size, f, 12), np.float32)}

  def loss_fn(self, params, batch, rng):
    spec, o = self.spec, self.cfg.ode_init
    bf, k4 = spec.block_frames, spec.dit.cond_frames_per_latent
    x0, states, text = batch["x0"], batch["states"], batch["text"]
    actions, poses = batch["actions"], _poses44(batch["poses"])
    b = x0.shape[0]
    n_max = o.blocks - o.noisy_blocks
    ctx_rng, rng = jax.random.split(rng)
    # hybrid forcing: n_clean clean blocks, then noisy_blocks noised ones; with random_context
    # n_clean is drawn per step from 0..n_max, so the blocks right after the image (which a
    # session generates first, with nothing but frame 0 before them) are trained too
    n_clean = jax.random.randint(ctx_rng, (), 0, n_max + 1) if o.random_context else n_max

    def block(j):
      """Block j's latent frames and its video frames (actions, poses)."""
      return (slice(1 + j * bf, 1 + (j + 1) * bf),
              slice(1 + j * bf * k4, 1 + (j + 1) * bf * k4))

    state = st.start(params, spec, x0[:, :1], text, rng)
    steps = jax.random.randint(rng, (b, o.blocks), 0, len(spec.sigmas))
    total = jnp.zeros((), jnp.float32)
    # every block runs block-causally against the cache: a clean one at t = 0 (cached as
    # generation caches a finished block), a noised one at its trajectory state (cached as
    # seen); the blocks after the noised ones run clean and count nothing
    for j in range(o.blocks):
      lat, vid = block(j)
      a, pose_in = actions[:, vid], camera.pose_features(poses[:, vid])
      k = steps[:, j]
      noisy = jnp.logical_and(j >= n_clean, j < n_clean + o.noisy_blocks)
      x_t = jnp.take_along_axis(states[:, :, lat], k[:, None, None, None, None, None],
                                axis=1)[:, 0]
      sigma = jnp.where(noisy, self.sigmas[k], 0.0)
      x = jnp.where(noisy, x_t, x0[:, lat])
      t = jnp.broadcast_to(sigma[:, None] * fm.NUM_TRAIN_TIMESTEPS, (b, bf))
      v, (kk, vv) = st.apply_cached(params, spec, state, x, t, state.cache.frames, a, pose_in,
                                    False)
      pred = x - sigma[:, None, None, None, None] * v
      total = total + jnp.where(noisy, jnp.mean(jnp.square(pred - x0[:, lat])), 0.0)
      state = state.replace(cache=kv_lib.write(state.cache, spec.cache, kk, vv))
    return total / o.noisy_blocks


def ode_init(cfg: ml_collections.ConfigDict, workdir: str, teacher=None, progress: bool = False):
  """The stage: trajectories (resumable), then the regression (resumable) -> final metrics."""
  validate(cfg)  # the student's recipe among the rest: its clean context must leave the window
  validate_ode(cfg)
  cfg = with_teacher_rope(cfg)
  if teacher is None:
    teacher = load_teacher(cfg, workdir)
  data_cfg = cfg.copy_and_resolve_references()
  with data_cfg.unlocked():  # clips of the ODE init's length (a prefix of the latent cache's)
    data_cfg.data.latent_frames = clip_frames(cfg)
  traj_dir = write_trajectories(data_cfg, workdir, teacher, train_iterator(data_cfg, workdir),
                                progress)
  run_cfg = stage_config(cfg)
  it = TrajectoryIterator(traj_dir, run_cfg.train.batch_size, run_cfg.seed, jax.process_index(),
                          jax.process_count())
  return train(run_cfg, stage_workdir(workdir), ODEInitTask(run_cfg), it, init_params=teacher)
