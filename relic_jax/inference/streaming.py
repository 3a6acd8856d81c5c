"""The block-causal student generating video block by block with its KV cache (pure functions).

A session: frame 0 is the clean latent of the input image, written into the cache at t = 0
(`start`). Each `step` then makes one block of `model.block_frames` latent frames (4 video
frames each) from the user's per-video-frame actions:
  1. the block's camera poses are integrated from the actions (relative to frame 0);
  2. few-step sampling: x = noise at sigma_0 = 1; for each sigma_i of config.generate
     (timesteps [1000, 750, 500, 250], shifted by generate.shift), the DiT predicts the velocity
     v with the block attending to the cache and to itself; x0 = x - sigma_i v; unless it was
     the last step, x = (1 - sigma_{i+1}) x0 + sigma_{i+1} fresh noise (Self-Forcing's sampler);
  3. the clean block is re-run at t = 0 and its keys/values are written into the cache (the
     window; frames leaving the window are pooled into the memory, `memory.kv_cache`).
`rollout` is `lax.scan` of `step` over blocks (offline generation, distillation); a streaming
`Session` calls the same jitted `step` once per block, so the two compute the same thing and
a session of any length up to the cache's capacity compiles once.
"""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import struct
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from relic_jax.diffusion import flow_matching as fm
from relic_jax.inference import camera
from relic_jax.memory import kv_cache as kv_lib
from relic_jax.models.dit import DiTConfig, WanDiT
from relic_jax.parallel.mesh import dividing_axes

ACTION_DIM = 13
STATIC = 12  # the "static" action channel


class ActionError(ValueError):
  """Actions a session cannot take (wrong shape, negative or non-finite magnitudes)."""


@dataclasses.dataclass(frozen=True)
class StreamSpec:
  """Everything static about a generator (hashable)."""
  dit: DiTConfig
  cache: kv_lib.CacheSpec
  sigmas: tuple[float, ...]
  latent_hw: tuple[int, int]
  action_scale: float

  @property
  def block_frames(self) -> int:
    return self.dit.block_frames

  @property
  def video_frames_per_block(self) -> int:
    return self.dit.cond_frames_per_latent * self.dit.block_frames


def sampler_sigmas(timesteps, shift: float) -> tuple[float, ...]:
  """Few-step sigmas: timesteps (0..1000) / 1000, shifted as in training."""
  s = fm.shift_sigma(np.asarray(timesteps, np.float64) / fm.NUM_TRAIN_TIMESTEPS, shift)
  return tuple(float(x) for x in s)


def spec_from_config(cfg: ml_collections.ConfigDict, mode: str | None = None,
                     max_frames: int | None = None) -> StreamSpec:
  """The student of cfg.model (block-causal), its cache per cfg.memory (mode / max_frames
  override it) and the sampler of cfg.generate."""
  model = cfg.model.copy_and_resolve_references()
  model.attention_mode = "block_causal"
  dit = DiTConfig.from_config(model)
  mem = cfg.memory.copy_and_resolve_references()
  if mode is not None:
    mem.mode = mode
  hw = (cfg.data.latent_height, cfg.data.latent_width)
  spec = kv_lib.spec_from_config(dit, mem, hw, max_frames)
  return StreamSpec(dit=dit, cache=spec,
                    sigmas=sampler_sigmas(cfg.generate.timesteps, cfg.generate.shift),
                    latent_hw=hw, action_scale=float(cfg.generate.action_scale))


@struct.dataclass
class StreamState:
  cache: kv_lib.KVCache
  camera: jax.Array  # [B, 4, 4] pose of the last video frame, relative to frame 0
  text: jax.Array    # [B, L] byte tokens or [B, L, text_dim] embeddings
  rng: jax.Array
  action_scale: jax.Array  # [B] metres per action unit, to integrate each session's poses


def _split(mesh, logical: str, dim: int):
  """The mesh axes `logical` maps to under the rules in context, if they divide dim (else
  None: replicated)."""
  return dividing_axes(mesh, nn.logical_to_mesh_axes((logical,))[0], dim)


def state_shardings(spec: StreamSpec, mesh, rules, batch: int, text_ndim: int) -> StreamState:
  """NamedShardings of a session's state on mesh: the KV cache by head (the heads over the
  axes of the logical "act_kv_heads", RELIC's layout) and by batch, everything else by batch
  or replicated."""
  n = spec.cache.num_heads
  with nn.logical_axis_rules(rules):
    b, h = _split(mesh, "batch", batch), _split(mesh, "act_kv_heads", n)
  named = lambda *axes: NamedSharding(mesh, P(*axes))
  rep = named()
  kv = named(None, b, None, h, None)                       # [L, B, S, N, H]
  scale = named(None, None, b, None, h) if spec.cache.quantized else rep  # [2, L, B, S, N]
  cache = kv_lib.KVCache(win_k=kv, win_v=kv, win_scale=scale, win_frame=rep, mem_k=kv,
                         mem_v=kv, mem_scale=scale, mem_pos=rep, mem_len=rep, frames=rep,
                         dropped=rep)
  return StreamState(cache=cache, camera=named(b, None, None),
                     text=named(b, *([None] * (text_ndim - 1))), rng=rep,
                     action_scale=named(b))


def apply_cached(params, spec: StreamSpec, state: StreamState, x, t, t_offset, actions, poses,
                 first: bool):
  """The student on x (one block, or frame 0 when `first`) attending to the state's cache ->
  (velocity, the block's (k, v) per layer)."""
  c = spec.dit
  view = kv_lib.view(state.cache, spec.cache, c)
  return WanDiT(c).apply({"params": params}, x, t, state.text, t_offset=t_offset,
                         actions=actions if c.action_dim else None,
                         poses=poses if c.pose_dim else None, kv_cache=view,
                         first_frame_in_input=first)


def start(params, spec: StreamSpec, latent0_B1hwC, text, rng, action_scale=None) -> StreamState:
  """A new session whose frame 0 is the clean image latent [B, 1, h, w, C] (normalised as the
  DiT was trained), written into an empty cache. action_scale: [B] metres per action unit per
  session (distillation: each training clip's own); default spec.action_scale for all."""
  b = latent0_B1hwC.shape[0]
  scale = (jnp.full((b,), spec.action_scale, jnp.float32) if action_scale is None else
           jnp.broadcast_to(jnp.asarray(action_scale, jnp.float32), (b,)))
  state = StreamState(cache=kv_lib.init(spec.cache, b),
                      camera=jnp.broadcast_to(jnp.eye(4), (b, 4, 4)),
                      text=jnp.asarray(text), rng=rng, action_scale=scale)
  actions = jnp.zeros((b, 1, ACTION_DIM)).at[:, :, STATIC].set(1.0)
  poses = camera.pose_features(state.camera[:, None])
  _, (k, v) = apply_cached(params, spec, state, latent0_B1hwC, jnp.zeros((b, 1)), 0, actions, poses,
                     True)
  return state.replace(cache=kv_lib.write(state.cache, spec.cache, k, v))


def block_input(params, spec: StreamSpec, state: StreamState, actions_BFA, pose_in, exit_step,
                key):
  """Self-Forcing's few-step sampler up to its exit step: x = noise at sigma_0; for
  i < exit_step: x0 = x - sigma_i v(x, sigma_i), x = (1 - sigma_{i+1}) x0 + sigma_{i+1} fresh
  noise. Returns the input of step `exit_step` (an int, traced or not) [B, bf, h, w, C]."""
  c, bf = spec.dit, spec.block_frames
  b = actions_BFA.shape[0]
  h, w = spec.latent_hw
  sig = jnp.asarray(spec.sigmas + (0.0,), jnp.float32)
  k0, kn = jax.random.split(key)
  offset = state.cache.frames

  def denoise(i, x):
    t = jnp.full((b, bf), sig[i] * fm.NUM_TRAIN_TIMESTEPS, jnp.float32)
    v, _ = apply_cached(params, spec, state, x, t, offset, actions_BFA, pose_in, False)
    x0 = x - sig[i] * v
    return (1.0 - sig[i + 1]) * x0 + sig[i + 1] * jax.random.normal(
        jax.random.fold_in(kn, i), x.shape, jnp.float32)

  x = jax.random.normal(k0, (b, bf, h, w, c.in_channels), jnp.float32)
  return jax.lax.fori_loop(0, exit_step, denoise, x)


def block_output(params, spec: StreamSpec, state: StreamState, x_in, exit_step, actions_BFA,
                 pose_in):
  """The sampler's exit step: x0 = x_in - sigma v(x_in, sigma), sigma = sigmas[exit_step]."""
  b, bf = x_in.shape[:2]
  sigma = jnp.asarray(spec.sigmas, jnp.float32)[exit_step]
  t = jnp.broadcast_to(sigma * fm.NUM_TRAIN_TIMESTEPS, (b, bf))
  v, _ = apply_cached(params, spec, state, x_in, t, state.cache.frames, actions_BFA, pose_in,
                      False)
  return x_in - sigma * v


def commit(params, spec: StreamSpec, state: StreamState, x0, actions_BFA, poses_BF44):
  """Re-runs the clean block at t = 0 and writes its keys/values into the cache; the camera
  moves to the block's last pose."""
  b, bf = x0.shape[:2]
  _, (k, v) = apply_cached(params, spec, state, x0, jnp.zeros((b, bf)), state.cache.frames,
                           actions_BFA, camera.pose_features(poses_BF44), False)
  return state.replace(cache=kv_lib.write(state.cache, spec.cache, k, v),
                       camera=poses_BF44[:, -1])


def block_poses(spec: StreamSpec, state: StreamState, actions_BFA):
  """The block's camera poses [B, F, 4, 4], integrated from the actions (relative to frame 0)
  with each session's action scale."""
  return camera.integrate(state.camera, actions_BFA, state.action_scale[:, None, None])


def step(params, spec: StreamSpec, state: StreamState, actions_BFA):
  """One block from the actions of its 4 * block_frames video frames [B, F, 13] ->
  (state, clean latents [B, block_frames, h, w, C]): `block_input` to the last sampler step,
  `block_output`, then `commit`. Distillation (training/self_forcing.py) runs the same three
  with a random exit step."""
  poses = block_poses(spec, state, actions_BFA)
  pose_in = camera.pose_features(poses)
  rng, key = jax.random.split(state.rng)
  last = len(spec.sigmas) - 1
  x_in = block_input(params, spec, state, actions_BFA, pose_in, last, key)
  x0 = block_output(params, spec, state, x_in, last, actions_BFA, pose_in)
  state = commit(params, spec, state, x0, actions_BFA, poses)
  return state.replace(rng=rng), x0


def rollout(params, spec: StreamSpec, state: StreamState, actions_NBFA):
  """`step` scanned over N blocks: -> (state, latents [B, N * block_frames, h, w, C])."""
  state, blocks = jax.lax.scan(lambda s, a: step(params, spec, s, a), state, actions_NBFA)
  n, b, bf = blocks.shape[:3]
  return state, jnp.moveaxis(blocks, 0, 1).reshape(b, n * bf, *blocks.shape[3:])


def check_actions(spec: StreamSpec, actions, batch: int) -> np.ndarray:
  """Host-side validation of one block's actions -> float32 [B, F, 13]."""
  a = np.asarray(actions, np.float32)
  f = spec.video_frames_per_block
  if a.ndim == 2 and a.shape == (f, ACTION_DIM):
    a = np.broadcast_to(a, (batch, f, ACTION_DIM))  # the same actions for every session
  if a.shape != (batch, f, ACTION_DIM):
    raise ActionError(
        f"a step takes the actions of its {f} video frames ({spec.block_frames} latent frames x "
        f"{spec.dit.cond_frames_per_latent}), shaped [{f}, 13] (or [{batch}, {f}, 13]); got "
        f"{list(np.shape(actions))}. Fix: pass one 13-d action vector per video frame.")
  if not np.all(np.isfinite(a)):
    bad = np.argwhere(~np.isfinite(a))[0]
    raise ActionError(f"action [{', '.join(map(str, bad))}] is {a[tuple(bad)]}: actions must be "
                      "finite. Fix: replace NaN/inf magnitudes.")
  if np.any(a < 0):
    bad = np.argwhere(a < 0)[0]
    raise ActionError(f"action [{', '.join(map(str, bad))}] is {a[tuple(bad)]}: RELIC's action "
                      "channels are non-negative magnitudes (a direction has its own channel, "
                      "e.g. dolly_out instead of -dolly_in). Fix: use the opposite channel.")
  return a
