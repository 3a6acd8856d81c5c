"""Self-forcing DMD: the student's rollout, the DMD score difference and the generator gradient,
replayed block by block (constant memory in the rollout length) or naive (one backward pass
through the whole rollout). Pure functions; the stage around them is `training/distill.py`.

The rollout is the inference path (`inference/streaming.py`): frame 0 (the clean image latent)
is written into an empty KV cache, then for each block j the few-step sampler runs to a random
exit step e_j (Self-Forcing; by default one e for all blocks), giving the exit step's noisy
input x_in_j and the block's clean prediction x0_j = x_in_j - sigma_{e_j} v_theta(x_in_j |
cache_j); x0_j re-run at t = 0 is written into the cache (window + pooled memory) for the
blocks after it.

Gradient. As in Self-Forcing, only the exit step carries gradient: the steps before it and
the cache writes are detached. The generator's objective is therefore
    L(theta) = sum_j < g_j, x0_j(theta; x_in_j, cache_j) >,  g_j = stop_gradient(DMD direction)
where cache_j (the context) and x_in_j are constants. The DMD direction for the whole sequence
(frame 0 + all blocks) at a random noise level sigma (`dmd_sigma`: Self-Forcing's
shift-then-clamp by default), x_t = (1 - sigma) x0 + sigma noise, is
    g = (x0_fake(x_t) - x0_real(x_t)) / mean|x0 - x0_real(x_t)|      (DMD2's normaliser)
with x0_real from the frozen bidirectional teacher (classifier-free guidance on the text,
generate.guidance as a standard scale: `config.validation.standard_guidance`) and
x0_fake from the critic, divided by the number of elements (the gradient of DMD's
0.5 * mean((x0 - stop_gradient(x0 - g))^2), whose value is logged as `dmd_loss`).

  replayed (RELIC): (a) roll out every block without gradient, keeping x_in_j and x0_j;
    (b) the DMD direction g for the whole sequence; (c) a scan over blocks that rebuilds each
    block's context by re-writing the stored x0 into the cache and adds the VJP of that block's
    exit step with cotangent g_j to one gradient; (d) one update. The scan carries only the
    cache and the gradient, so working memory is one block's backward pass plus the
    (compressed) context.
  naive: the rollout itself is differentiated (exit steps with gradient, everything else
    stop_gradient), one backward pass through the scan, each block rematerialised when
    `naive_remat`; memory grows with the rollout.
Both compute the same gradient (tests/test_self_forcing.py).
"""

import dataclasses

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from relic_jax.config.choices import DMDTimestepSampling
from relic_jax.config.validation import standard_guidance
from relic_jax.diffusion import flow_matching as fm
from relic_jax.inference import camera
from relic_jax.inference import streaming as st
from relic_jax.models.dit import DiTConfig, WanDiT

BACKPROP_MODES = ("replayed", "naive")


@dataclasses.dataclass(frozen=True)
class DistillSpec:
  """Everything static about one distillation step (hashable)."""
  stream: st.StreamSpec   # the student (block-causal), its cache and sampler
  teacher: DiTConfig      # the bidirectional teacher and critic
  blocks: int             # rollout length
  guidance: float         # real-score CFG as a standard scale (1 = none; see standard_guidance)
  min_t: float            # DMD / critic timestep range as fractions of 1000 (before the shift)
  max_t: float
  shift: float
  timestep_sampling: str = DMDTimestepSampling.SHIFT_THEN_CLAMP
  backprop: str = "replayed"
  naive_remat: bool = True
  same_exit: bool = True

  @property
  def min_sigma(self) -> float:
    """The least DMD / critic sigma the sampling draws."""
    if self.timestep_sampling == DMDTimestepSampling.SHIFT_THEN_CLAMP:
      return self.min_t
    return float(fm.shift_sigma(self.min_t, self.shift))

  @property
  def max_sigma(self) -> float:
    if self.timestep_sampling == DMDTimestepSampling.SHIFT_THEN_CLAMP:
      return self.max_t
    return float(fm.shift_sigma(self.max_t, self.shift))

  @property
  def num_steps(self) -> int:
    return len(self.stream.sigmas)

  @property
  def latent_frames(self) -> int:
    """Frame 0 plus the rollout's blocks."""
    return 1 + self.blocks * self.stream.block_frames

  @property
  def video_frames_per_block(self) -> int:
    return self.stream.video_frames_per_block


def spec_from_config(cfg: ml_collections.ConfigDict, blocks: int,
                     backprop: str | None = None) -> DistillSpec:
  d = cfg.distill
  backprop = backprop or d.backprop
  if backprop not in BACKPROP_MODES:
    raise ValueError(f"config.distill.backprop={backprop!r}: use one of {BACKPROP_MODES}")
  max_frames = 1 + blocks * cfg.model.block_frames
  stream = st.spec_from_config(cfg, max_frames=max_frames)
  teacher_model = cfg.model.copy_and_resolve_references()
  teacher_model.attention_mode = "bidirectional"
  if d.timestep_sampling not in DMDTimestepSampling.values():
    raise ValueError(f"config.distill.timestep_sampling={d.timestep_sampling!r}: use one of "
                     f"{DMDTimestepSampling.values()}")
  return DistillSpec(stream=stream, teacher=DiTConfig.from_config(teacher_model), blocks=blocks,
                     guidance=standard_guidance(cfg),
                     min_t=float(d.min_timestep) / fm.NUM_TRAIN_TIMESTEPS,
                     max_t=float(d.max_timestep) / fm.NUM_TRAIN_TIMESTEPS,
                     shift=float(cfg.generate.shift), timestep_sampling=str(d.timestep_sampling),
                     backprop=backprop, naive_remat=bool(d.naive_remat),
                     same_exit=bool(d.same_exit_across_blocks))


# ------------------------------------------------------------------ the rollout


def sample_exits(spec: DistillSpec, rng):
  """A sampler exit step per block [N] int32 (one for all blocks when spec.same_exit)."""
  n = 1 if spec.same_exit else spec.blocks
  e = jax.random.randint(rng, (n,), 0, spec.num_steps)
  return jnp.broadcast_to(e, (spec.blocks,))


def _blocks(actions_BFA, spec: DistillSpec):
  """[B, N * F, 13] -> [N, B, F, 13]: the scan's per-block actions."""
  b = actions_BFA.shape[0]
  f = spec.video_frames_per_block
  return jnp.moveaxis(actions_BFA.reshape(b, spec.blocks, f, -1), 1, 0)


def _scan_blocks(params, spec: DistillSpec, latent0, text, actions, exits, rng,
                 remat: bool = False, action_scale=None):
  """The block scan of `rollout` and `naive_rollout`: gradient (if any) reaches params only
  through each block's exit step; the sampler steps before it and the cache writes see
  stop_gradient(params) and the detached block. -> per-block (x_in, x0, poses)."""
  s = spec.stream
  k_start, k_blocks = jax.random.split(rng)
  frozen = jax.lax.stop_gradient(params)
  state = st.start(frozen, s, latent0, text, k_start, action_scale)

  def body(state, xs):
    j, a, e = xs
    poses = st.block_poses(s, state, a)
    pose_in = camera.pose_features(poses)
    x_in = st.block_input(frozen, s, state, a, pose_in, e, jax.random.fold_in(k_blocks, j))
    x0 = st.block_output(params, s, state, x_in, e, a, pose_in)
    return st.commit(frozen, s, state, jax.lax.stop_gradient(x0), a, poses), (x_in, x0, poses)

  if remat:
    body = jax.checkpoint(body)
  _, out = jax.lax.scan(body, state, (jnp.arange(spec.blocks), _blocks(actions, spec), exits))
  return out


def rollout(params, spec: DistillSpec, latent0, text, actions, exits, rng, action_scale=None):
  """Step (a), no gradient: -> dict of per-block x_in and x0 [N, B, bf, h, w, C] and the
  block poses [N, B, F, 4, 4]. actions [B, N * F, 13] (F video frames per block); poses are
  integrated with action_scale [B] (default: the spec's, config.generate.action_scale)."""
  x_in, x0, poses = _scan_blocks(jax.lax.stop_gradient(params), spec, latent0, text, actions,
                                 exits, rng, action_scale=action_scale)
  return {"x_in": x_in, "x0": x0, "poses": poses}


def sequence(spec: DistillSpec, latent0, x0_NB, actions, poses_N):
  """The whole generated sequence as the teacher sees it: video latents [B, 1 + N bf, ...]
  (frame 0 first), actions [B, 1 + N F, 13] (frame 0: static) and poses [B, 1 + N F, 12]."""
  b = latent0.shape[0]
  x = jnp.concatenate([latent0, jnp.moveaxis(x0_NB, 0, 1).reshape(b, -1, *x0_NB.shape[3:])], 1)
  a0 = jnp.zeros((b, 1, actions.shape[-1])).at[:, :, st.STATIC].set(1.0)
  p = jnp.moveaxis(poses_N, 0, 1).reshape(b, -1, 4, 4)
  p = jnp.concatenate([jnp.broadcast_to(jnp.eye(4), (b, 1, 4, 4)), p], 1)
  return x, jnp.concatenate([a0, actions], 1), camera.pose_features(p)


def _bidirectional(params, cfg: DiTConfig, x, t, text, actions, poses):
  return WanDiT(cfg).apply({"params": params}, x, t, text,
                           actions=actions if cfg.action_dim else None,
                           poses=poses if cfg.pose_dim else None)


# ------------------------------------------------------------------ DMD and the critic


def _noised(video, sigma_B, noise):
  """The sequence at noise level sigma_B [B] on every frame but frame 0 (the clean image):
  -> (x_t, model timesteps [B, T], sigma broadcast [B, T, 1, 1, 1], loss weight [B, T] that
  leaves frame 0 out)."""
  b, t = video.shape[:2]
  sigma = jnp.broadcast_to(sigma_B[:, None], (b, t)).at[:, 0].set(0.0)
  s = sigma[:, :, None, None, None]
  weight = jnp.ones((b, t)).at[:, 0].set(0.0)
  return (1.0 - s) * video + s * noise, sigma * fm.NUM_TRAIN_TIMESTEPS, s, weight


def dmd_sigma(spec: DistillSpec, rng, shape):
  """DMD / critic noise levels by spec.timestep_sampling (config.distill.timestep_sampling):
  "shift_then_clamp" (Self-Forcing): t ~ randint(0, 1000) / 1000, shifted, clamped to
  [min_t, max_t]; "uniform_shifted_range": uniform between the shifted ends."""
  if spec.timestep_sampling == DMDTimestepSampling.SHIFT_THEN_CLAMP:
    n = int(fm.NUM_TRAIN_TIMESTEPS)
    u = jax.random.randint(rng, shape, 0, n).astype(jnp.float32) / n
    return jnp.clip(fm.shift_sigma(u, spec.shift), spec.min_t, spec.max_t)
  return jax.random.uniform(rng, shape, minval=spec.min_sigma, maxval=spec.max_sigma)


def _random_noised(spec: DistillSpec, video, rng):
  """`_noised` at a sigma per example drawn by `dmd_sigma` -> (noise, its outputs)."""
  k_s, k_n = jax.random.split(rng)
  sigma = dmd_sigma(spec, k_s, (video.shape[0],))
  noise = jax.random.normal(k_n, video.shape, video.dtype)
  return noise, _noised(video, sigma, noise)


def dmd_direction(teacher, critic, spec: DistillSpec, video, text, actions, poses, rng,
                  null=None):
  """Step (b): the DMD direction g [B, T, h, w, C] for the whole sequence (zero on frame 0)
  and metrics. No gradient flows into teacher or critic. null: the unconditional branch's text
  (the batch's "null_text", teacher.null_text; None: zeros)."""
  teacher, critic, video = jax.lax.stop_gradient((teacher, critic, video))
  t = video.shape[1]
  noise, (x_t, ts, s, weight) = _random_noised(spec, video, rng)
  v_real = _bidirectional(teacher, spec.teacher, x_t, ts, text, actions, poses)
  teacher_fm = fm.velocity_loss(v_real, noise - video, weight)
  if spec.guidance != 1.0:
    null = jnp.zeros_like(text) if null is None else null
    v_null = _bidirectional(teacher, spec.teacher, x_t, ts, null, actions, poses)
    v_real = v_null + spec.guidance * (v_real - v_null)
  v_fake = _bidirectional(critic, spec.teacher, x_t, ts, text, actions, poses)
  x0_real = x_t - s * v_real
  x0_fake = x_t - s * v_fake
  w = (jnp.arange(t) > 0).astype(jnp.float32)[None, :, None, None, None]
  norm = jnp.sum(jnp.abs(video - x0_real) * w, axis=(1, 2, 3, 4), keepdims=True) / (
      jnp.sum(w) * np.prod(video.shape[2:]))
  g = (x0_fake - x0_real) / jnp.maximum(norm, 1e-6) * w
  gen = g[:, 1:]
  metrics = {"dmd_loss": 0.5 * jnp.mean(jnp.square(gen)),
             "score_diff": jnp.mean(jnp.square((x0_fake - x0_real) * w)) * t / (t - 1),
             "dmd_norm": jnp.mean(norm), "teacher_fm_loss": teacher_fm}
  return g, metrics


def teacher_fit(gen, teacher, spec: DistillSpec, batch: dict, rng, num_sigmas: int = 8):
  """The proxy for the DMD objective: the frozen teacher's flow-matching (denoising) loss on
  the student's rollout, averaged over num_sigmas noise levels spread over the DMD range with
  noise fixed by rng. This bounds the cross-entropy -E_student[log p_teacher] that DMD's KL
  contains (the denoising ELBO), does not involve the critic, and so is comparable across
  checkpoints: lower means the student's samples sit where the teacher puts its mass."""
  k_roll, k_noise = jax.random.split(rng)
  video, acts, poses = student_sequence(gen, spec, batch, k_roll)
  losses = []
  for i, sig in enumerate(np.linspace(spec.min_sigma, spec.max_sigma, num_sigmas)):
    noise = jax.random.normal(jax.random.fold_in(k_noise, i), video.shape, video.dtype)
    x_t, ts, _, weight = _noised(video, jnp.full((video.shape[0],), sig, jnp.float32), noise)
    v = _bidirectional(teacher, spec.teacher, x_t, ts, batch["text"], acts, poses)
    losses.append(fm.velocity_loss(v, noise - video, weight))
  return jnp.mean(jnp.stack(losses))


def critic_loss(critic, spec: DistillSpec, video, text, actions, poses, rng):
  """The critic's flow-matching loss on the (detached) student sequence: it learns the
  student's distribution, so its x0 prediction is the fake score."""
  video = jax.lax.stop_gradient(video)
  noise, (x_t, ts, _, weight) = _random_noised(spec, video, rng)
  pred = _bidirectional(critic, spec.teacher, x_t, ts, text, actions, poses)
  return fm.velocity_loss(pred, noise - video, weight)


# ------------------------------------------------------------------ generator gradients


def _cotangent(spec: DistillSpec, g):
  """DMD direction on the blocks [B, N bf, ...] -> per-block cotangents [N, B, bf, ...] of
  0.5 * mean((x0 - sg(x0 - g))^2)."""
  b = g.shape[0]
  bf = spec.stream.block_frames
  cot = g[:, 1:] / g[:, 1:].size
  return jnp.moveaxis(cot.reshape(b, spec.blocks, bf, *g.shape[2:]), 1, 0)


def replay(params, spec: DistillSpec, latent0, text, actions, exits, record, cot, rng,
           action_scale=None):
  """Step (c): block by block, re-write the stored clean blocks into the cache (detached) and
  accumulate the VJP of each block's exit step with its cotangent -> gradient (params' tree)."""
  s = spec.stream
  k_start, _ = jax.random.split(rng)
  frozen = jax.lax.stop_gradient(params)
  state = st.start(frozen, s, latent0, text, k_start, action_scale)
  zero = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), params)

  def body(carry, xs):
    state, grads = carry
    a, e, x_in, x0, poses, c = xs
    pose_in = camera.pose_features(poses)
    _, vjp = jax.vjp(lambda p: st.block_output(p, s, state, x_in, e, a, pose_in), params)
    (g,) = vjp(c)
    grads = jax.tree.map(lambda acc, x: acc + x.astype(jnp.float32), grads, g)
    return (st.commit(frozen, s, state, x0, a, poses), grads), None

  xs = (_blocks(actions, spec), exits, record["x_in"], record["x0"], record["poses"], cot)
  (_, grads), _ = jax.lax.scan(body, (state, zero), xs)
  return grads


def naive_rollout(params, spec: DistillSpec, latent0, text, actions, exits, rng,
                  action_scale=None):
  """The rollout with gradient through each block's exit step only (sampler steps before it
  and cache writes detached): -> per-block x0 [N, B, bf, ...] and poses, differentiable in
  params. Each block is rematerialised in the backward pass when spec.naive_remat."""
  _, x0, poses = _scan_blocks(params, spec, latent0, text, actions, exits, rng,
                              remat=spec.naive_remat, action_scale=action_scale)
  return x0, poses


def generator_grads(params, teacher, critic, spec: DistillSpec, batch: dict, rng, exits=None):
  """One generator gradient of the DMD objective -> (grads, metrics, the detached sequence
  (video, actions, poses) for the critic). batch: latent0 [B, 1, h, w, C], text, actions
  [B, N F, 13] (the rollout's video frames, frame 0 excluded), optionally action_scale [B]
  (each example's metres per action unit for its poses; default generate.action_scale).
  exits: the blocks' sampler exit steps [N] (default: drawn from rng); null_text, when the
  batch has it, is the guidance's unconditional text (else zeros)."""
  k_exit, k_roll, k_dmd = jax.random.split(rng, 3)
  exits = sample_exits(spec, k_exit) if exits is None else jnp.asarray(exits, jnp.int32)
  latent0, text, actions = batch["latent0"], batch["text"], batch["actions"]
  scale, null = batch.get("action_scale"), batch.get("null_text")
  if spec.backprop == "replayed":
    record = rollout(params, spec, latent0, text, actions, exits, k_roll, scale)
    video, acts, poses = sequence(spec, latent0, record["x0"], actions, record["poses"])
    g, metrics = dmd_direction(teacher, critic, spec, video, text, acts, poses, k_dmd, null)
    grads = replay(params, spec, latent0, text, actions, exits, record, _cotangent(spec, g),
                   k_roll, scale)
  else:
    def objective(p):
      x0, poses_n = naive_rollout(p, spec, latent0, text, actions, exits, k_roll, scale)
      video, acts, poses = sequence(spec, latent0, jax.lax.stop_gradient(x0), actions, poses_n)
      g, metrics = dmd_direction(teacher, critic, spec, video, text, acts, poses, k_dmd, null)
      cot = jax.lax.stop_gradient(_cotangent(spec, g))
      return jnp.sum(cot * x0), (metrics, (video, acts, poses))
    grads, (metrics, (video, acts, poses)) = jax.grad(objective, has_aux=True)(params)
  metrics = {**metrics, "mean_exit": jnp.mean(exits.astype(jnp.float32))}
  return grads, metrics, (video, acts, poses)


def student_sequence(params, spec: DistillSpec, batch: dict, rng):
  """The rollout of `generator_grads` with the same rng, without any gradient: what the critic
  trains on when the generator does not update (the same samples either way)."""
  k_exit, k_roll, _ = jax.random.split(rng, 3)
  exits = sample_exits(spec, k_exit)
  record = rollout(params, spec, batch["latent0"], batch["text"], batch["actions"], exits, k_roll,
                   batch.get("action_scale"))
  return sequence(spec, batch["latent0"], record["x0"], batch["actions"], record["poses"])
