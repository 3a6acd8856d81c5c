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

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import struct

from relic_jax.diffusion import flow_matching as fm
from relic_jax.inference import camera
from relic_jax.memory import kv_cache as kv_lib
from relic_jax.models.dit import DiTConfig, WanDiT

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


def _apply(params, spec: StreamSpec, state: StreamState, x, t, t_offset, actions, poses,
           first: bool):
  c = spec.dit
  view = kv_lib.view(state.cache, spec.cache, c)
  return WanDiT(c).apply({"params": params}, x, t, state.text, t_offset=t_offset,
                         actions=actions if c.action_dim else None,
                         poses=poses if c.pose_dim else None, kv_cache=view,
                         first_frame_in_input=first)


def start(params, spec: StreamSpec, latent0_B1hwC, text, rng) -> StreamState:
  """A new session whose frame 0 is the clean image latent [B, 1, h, w, C] (normalised as the
  DiT was trained), written into an empty cache."""
  b = latent0_B1hwC.shape[0]
  state = StreamState(cache=kv_lib.init(spec.cache, b),
                      camera=jnp.broadcast_to(jnp.eye(4), (b, 4, 4)),
                      text=jnp.asarray(text), rng=rng)
  actions = jnp.zeros((b, 1, ACTION_DIM)).at[:, :, STATIC].set(1.0)
  poses = camera.pose_features(state.camera[:, None])
  _, (k, v) = _apply(params, spec, state, latent0_B1hwC, jnp.zeros((b, 1)), 0, actions, poses,
                     True)
  return state.replace(cache=kv_lib.write(state.cache, spec.cache, k, v))


def step(params, spec: StreamSpec, state: StreamState, actions_BFA):
  """One block from the actions of its 4 * block_frames video frames [B, F, 13] ->
  (state, clean latents [B, block_frames, h, w, C])."""
  c, bf = spec.dit, spec.block_frames
  b = actions_BFA.shape[0]
  h, w = spec.latent_hw
  poses = camera.integrate(state.camera, actions_BFA, spec.action_scale)
  pose_in = camera.pose_features(poses)
  offset = state.cache.frames
  rng, k0, *keys = jax.random.split(state.rng, 1 + len(spec.sigmas))
  x = jax.random.normal(k0, (b, bf, h, w, c.in_channels), jnp.float32)
  x0 = x
  for i, sigma in enumerate(spec.sigmas):
    t = jnp.full((b, bf), sigma * fm.NUM_TRAIN_TIMESTEPS, jnp.float32)
    v, _ = _apply(params, spec, state, x, t, offset, actions_BFA, pose_in, False)
    x0 = x - sigma * v
    if i + 1 < len(spec.sigmas):
      nxt = spec.sigmas[i + 1]
      x = (1.0 - nxt) * x0 + nxt * jax.random.normal(keys[i], x.shape, jnp.float32)
  _, (k, v) = _apply(params, spec, state, x0, jnp.zeros((b, bf)), offset, actions_BFA, pose_in,
                     False)
  cache = kv_lib.write(state.cache, spec.cache, k, v)
  return state.replace(cache=cache, camera=poses[:, -1], rng=rng), x0


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
