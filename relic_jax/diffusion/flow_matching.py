"""Rectified flow matching as Wan 2.1 trains it.

x_sigma = (1 - sigma) * x0 + sigma * noise, sigma in [0, 1], model timestep t = 1000 * sigma,
target velocity v = noise - x0. Sigmas are drawn uniformly (or logit-normal) and then shifted
towards noise by sigma' = shift * sigma / (1 + (shift - 1) * sigma) (shift 5 at 480p).

Per-frame sigmas [B, T]: frame 0 can be the clean image latent (sigma 0, excluded from the
loss); with per_frame_noise every other frame draws its own sigma (diffusion forcing).
"""

import jax
import jax.numpy as jnp

from relic_jax.config.choices import TimestepSampling

NUM_TRAIN_TIMESTEPS = 1000.0


def shift_sigma(sigma, shift: float):
  return shift * sigma / (1.0 + (shift - 1.0) * sigma)


def sample_sigma(rng, shape, sampling: str, shift: float):
  if sampling == TimestepSampling.UNIFORM:
    u = jax.random.uniform(rng, shape)
  elif sampling == TimestepSampling.LOGIT_NORMAL:
    u = jax.nn.sigmoid(jax.random.normal(rng, shape))
  else:
    raise ValueError(f"unknown timestep sampling {sampling!r}")
  return shift_sigma(u, shift)


def noisy_inputs(rng, x0_BTHWC, *, shift: float, sampling: str = "uniform",
                 clean_first_frame: bool = True, per_frame_noise: bool = False):
  """Returns (x_sigma, t_BT, v_target, loss_weight_BT)."""
  b, t = x0_BTHWC.shape[:2]
  k_sigma, k_noise = jax.random.split(rng)
  sigma = sample_sigma(k_sigma, (b, t) if per_frame_noise else (b, 1), sampling, shift)
  sigma = jnp.broadcast_to(sigma, (b, t))
  weight = jnp.ones((b, t), jnp.float32)
  if clean_first_frame:
    sigma = sigma.at[:, 0].set(0.0)
    weight = weight.at[:, 0].set(0.0)
  noise = jax.random.normal(k_noise, x0_BTHWC.shape, x0_BTHWC.dtype)
  s = sigma[:, :, None, None, None]
  x_sigma = (1.0 - s) * x0_BTHWC + s * noise
  return x_sigma, sigma * NUM_TRAIN_TIMESTEPS, noise - x0_BTHWC, weight


def velocity_loss(pred_BTHWC, target_BTHWC, weight_BT):
  """Mean squared velocity error over the frames with weight > 0."""
  err_BT = jnp.mean(jnp.square(pred_BTHWC.astype(jnp.float32) - target_BTHWC), axis=(2, 3, 4))
  return jnp.sum(err_BT * weight_BT) / jnp.maximum(jnp.sum(weight_BT), 1.0)
