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
  """YaRN "NTK-by-parts": frequencies that turn many times over the original length keep
  their value, those that turn less than once are interpolated by `factor`, with a linear
  ramp between (Peng et al. 2023)."""
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
                yarn_beta_fast: float = 32.0, yarn_beta_slow: float = 1.0):
  """Angles [S, head_dim/2] for a (T, H', W') token grid; `t_offset` shifts the temporal
  positions (a traced scalar is fine: streaming blocks start at their frame index)."""
  t, h, w = grid
  dt, dh, dw = head_dim_split(head_dim)
  inv_t = yarn_inv_frequencies(inv_frequencies(dt, theta), yarn_factor, yarn_original_frames,
                               yarn_beta_fast, yarn_beta_slow)
  pos_t = jnp.arange(t, dtype=jnp.float32) + jnp.asarray(t_offset, jnp.float32)
  ang_t = pos_t[:, None] * inv_t[None]
  ang_h = jnp.arange(h, dtype=jnp.float32)[:, None] * inv_frequencies(dh, theta)[None]
  ang_w = jnp.arange(w, dtype=jnp.float32)[:, None] * inv_frequencies(dw, theta)[None]
  full = jnp.concatenate([
      jnp.broadcast_to(ang_t[:, None, None], (t, h, w, dt // 2)),
      jnp.broadcast_to(ang_h[None, :, None], (t, h, w, dh // 2)),
      jnp.broadcast_to(ang_w[None, None, :], (t, h, w, dw // 2)),
  ], axis=-1)
  return full.reshape(t * h * w, head_dim // 2)


def apply_rope(x_BSNH, angles_SH):
  """Rotates consecutive pairs of the head dim; computed in float32, returned in x's dtype."""
  cos = jnp.cos(angles_SH)[None, :, None, :]
  sin = jnp.sin(angles_SH)[None, :, None, :]
  xf = x_BSNH.astype(jnp.float32).reshape(*x_BSNH.shape[:-1], -1, 2)
  x1, x2 = xf[..., 0], xf[..., 1]
  out = jnp.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], axis=-1)
  return out.reshape(x_BSNH.shape).astype(x_BSNH.dtype)
