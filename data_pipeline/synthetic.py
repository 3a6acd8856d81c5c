"""A small synthetic latent dataset: learnable, deterministic, no download.

Each example is a latent clip [T, H, W, C] made of a few 2D sinusoids drifting over time, and a
"text" embedding [L, D_text] that is a fixed random projection of the sinusoids' parameters, so
the text really describes the clip. Example i depends only on (seed, i).
"""

import numpy as np


class SyntheticLatents:
  """A grain random-access source of {"latents", "text"} examples."""

  def __init__(self, num_examples: int, frames: int, height: int, width: int, channels: int,
               text_len: int, text_dim: int, seed: int = 0, num_waves: int = 3):
    self._n = num_examples
    self._shape = (frames, height, width, channels)
    self._text_shape = (text_len, text_dim)
    self._seed = seed
    self._waves = num_waves
    proj_rng = np.random.default_rng([seed, 2**31 - 1])
    self._proj = proj_rng.standard_normal((num_waves * 5, text_len * text_dim)).astype(np.float32)
    self._mix = proj_rng.standard_normal((num_waves, channels)).astype(np.float32)

  def __len__(self) -> int:
    return self._n

  def __getitem__(self, index: int) -> dict:
    if not 0 <= index < self._n:
      raise IndexError(f"example {index} out of range [0, {self._n})")
    rng = np.random.default_rng([self._seed, index])
    t, h, w, c = self._shape
    # per wave: spatial frequency (fy, fx), velocity (vy, vx), phase
    params = rng.uniform(-1.0, 1.0, size=(self._waves, 5)).astype(np.float32)
    tt = np.arange(t, dtype=np.float32)[:, None, None]
    yy = np.arange(h, dtype=np.float32)[None, :, None] / h
    xx = np.arange(w, dtype=np.float32)[None, None, :] / w
    lat = np.zeros(self._shape, np.float32)
    for k, (fy, fx, vy, vx, ph) in enumerate(params):
      wave = np.sin(2 * np.pi * (2 * fy * (yy + 0.1 * vy * tt) + 2 * fx * (xx + 0.1 * vx * tt))
                    + np.pi * ph)
      lat += wave[..., None] * self._mix[k]
    lat /= np.sqrt(self._waves)
    text = np.tanh(params.reshape(1, -1) @ self._proj).reshape(self._text_shape)
    return {"latents": lat.astype(np.float32), "text": text.astype(np.float32)}
