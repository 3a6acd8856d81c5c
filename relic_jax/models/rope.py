"""3D rotary position embedding as in Wan 2.1, with an optional YaRN extension of the temporal axis.

The head dim H is split into temporal / height / width parts (128 -> 44 / 42 / 42, see
`config.head_dim_split`); each part rotates consecutive pairs (x[2i], x[2i+1]) by
position * theta^(-2i/part). Tables are [S, H/2] angles for S = T*H'*W' tokens in (t, h, w)
row-major order.
"""

import math

import jax.numpy as jnp

from relic_jax.config.validation import head_dim_split


def inv_frequencies(dim: int, theta: float):
  return 1.0 / (theta ** (jnp.arange(0, dim, 2, dtype=jnp.float32) / dim))


def yarn_inv_frequencies(inv_freq, factor: float, original_len: int, beta_fast: float,
                         beta_slow: float):
  """YaRN "NTK-by-parts" (Peng et al. 2023): a pair that turns at least `beta_fast` full
  periods over the original length has been seen at every phase and keeps its frequency; one
  that turns at most `beta_slow` periods would reach angles never seen and is interpolated
  (divided by `factor`); a linear ramp in between. The ramp is in periods, so it must suit
  the axis: a 21-frame temporal axis turns its fastest pair only ~3.3 times (config/base.py
  sets beta_fast = 2), where YaRN's LLM value 32 would interpolate every pair."""
  if factor == 1.0:
    return inv_freq
  rotations = original_len * inv_freq / (2 * math.pi)
  ramp = jnp.clip((rotations - beta_slow) / (beta_fast - beta_slow), 0.0, 1.0)
  return inv_freq / factor * (1.0 - ramp) + inv_freq * ramp


def yarn_attention_scale(factor: float) -> float:
  """Multiplier on the attention logits: (0.1 ln s + 1)^2, i.e. sqrt(1/t) on both q and k."""
  return 1.0 if factor == 1.0 else (0.1 * math.log(factor) + 1.0) ** 2


def rope_angles(head_dim: int, grid: tuple[int, int, int], theta: float, t_offset=0,
                yarn_factor: float = 1.0, yarn_original_frames: int = 21,
                yarn_beta_fast: float = 2.0, yarn_beta_slow: float = 1.0):
  """Angles [S, head_dim/2] for a (T, H', W') token grid; `t_offset` shifts the temporal
  positions (a traced scalar is fine: streaming blocks start at their frame index)."""
  return rope_angles_at(head_dim, grid_positions(grid, t_offset), theta, yarn_factor,
                        yarn_original_frames, yarn_beta_fast, yarn_beta_slow)


def grid_positions(grid: tuple[int, int, int], t_offset=0):
  """(t, h, w) positions [T*H'*W', 3] float32 of a token grid in row-major order."""
  t, h, w = grid
  tt, hh, ww = jnp.meshgrid(jnp.arange(t, dtype=jnp.float32) + jnp.asarray(t_offset, jnp.float32),
                            jnp.arange(h, dtype=jnp.float32), jnp.arange(w, dtype=jnp.float32),
                            indexing="ij")
  return jnp.stack([tt, hh, ww], -1).reshape(t * h * w, 3)


def rope_angles_at(head_dim: int, positions_S3, theta: float, yarn_factor: float = 1.0,
                   yarn_original_frames: int = 21, yarn_beta_fast: float = 2.0,
                   yarn_beta_slow: float = 1.0):
  """Angles [S, head_dim/2] for tokens at arbitrary (t, h, w) positions [S, 3] (fractional
  positions are fine: the KV memory's pooled tokens sit at the centre of what they pool)."""
  dt, dh, dw = head_dim_split(head_dim)
  inv_t = yarn_inv_frequencies(inv_frequencies(dt, theta), yarn_factor, yarn_original_frames,
                               yarn_beta_fast, yarn_beta_slow)
  pos = positions_S3.astype(jnp.float32)
  return jnp.concatenate([pos[:, 0:1] * inv_t[None], pos[:, 1:2] * inv_frequencies(dh, theta)[None],
                          pos[:, 2:3] * inv_frequencies(dw, theta)[None]], axis=-1)


def apply_rope(x_BSNH, angles_SH):
  """Rotates consecutive pairs of the head dim; computed in float32, returned in x's dtype."""
  cos = jnp.cos(angles_SH)[None, :, None, :]
  sin = jnp.sin(angles_SH)[None, :, None, :]
  xf = x_BSNH.astype(jnp.float32).reshape(*x_BSNH.shape[:-1], -1, 2)
  x1, x2 = xf[..., 0], xf[..., 1]
  out = jnp.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], axis=-1)
  return out.reshape(x_BSNH.shape).astype(x_BSNH.dtype)
