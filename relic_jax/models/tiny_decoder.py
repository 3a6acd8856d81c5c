"""A tiny causal decoder from the VAE's latents to frames, for real-time generation.

RELIC swaps the full VAE decoder for a tiny one at generation time. Ours decodes each latent
frame from itself and the latent frame before it (zeros at the start of a stream): two 3x3
convs, three (2x nearest upsample + 3x3 conv) stages, and a 3x3 conv to 4 frames x RGB. So it
streams with a cache of one latent frame. Latent frame 0 stands for video frame 0 alone: of
its 4 outputs the last is kept (the `first` flag), as the full decoder gives 1 frame for it.
Trained to match the video (L1) from the frozen VAE encoder's latent means
(relic_jax/training/vae_train.py).
"""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from relic_jax.models.vae import VAEConfig


@dataclasses.dataclass(frozen=True)
class TinyDecoderConfig:
  z_dim: int = 16
  dim: int = 64
  temporal_stride: int = 4
  upsamples: int = 3  # spatial stride 2 ** upsamples

  @classmethod
  def from_config(cls, v: ml_collections.ConfigDict) -> "TinyDecoderConfig":
    """The tiny decoder of the VAE config.vae describes (its width: config.vae.tiny_dim)."""
    vae = VAEConfig.from_config(v)
    return cls(z_dim=vae.z_dim, dim=v.tiny_dim, temporal_stride=vae.temporal_stride,
               upsamples=len(vae.dim_mult) - 1)


class TinyDecoder(nn.Module):
  cfg: TinyDecoderConfig

  @nn.compact
  def __call__(self, z, prev):
    """z [B, T, h, w, z_dim], prev [B, 1, h, w, z_dim] (the latent frame before z[:, 0]) ->
    video [B, T * 4, 8 h, 8 w, 3] (not clamped)."""
    c = self.cfg
    b, t, h, w, _ = z.shape
    x = jnp.concatenate([jnp.concatenate([prev, z[:, :-1]], axis=1), z], axis=-1)
    x = x.reshape(b * t, h, w, 2 * c.z_dim)
    for i in range(2):
      x = nn.silu(nn.Conv(c.dim, (3, 3), name=f"conv_in_{i}")(x))
    for i in range(c.upsamples):
      x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
      x = nn.silu(nn.Conv(max(c.dim // 2 ** i, 16), (3, 3), name=f"up_{i}")(x))
    x = nn.Conv(3 * c.temporal_stride, (3, 3), name="conv_out")(x)
    s = 2 ** c.upsamples
    x = x.reshape(b, t, h * s, w * s, c.temporal_stride, 3)
    return jnp.moveaxis(x, 4, 2).reshape(b, t * c.temporal_stride, h * s, w * s, 3)


def init_params(cfg: TinyDecoderConfig, key):
  z = jnp.zeros((1, 1, 2, 2, cfg.z_dim))
  return TinyDecoder(cfg).init(key, z, z)["params"]


def decode(params, cfg: TinyDecoderConfig, z, prev=None, first: bool = True, clamp: bool = True):
  """Latents [B, T, h, w, z] -> video: 1 + 4 (T - 1) frames when `first` (a stream's or clip's
  start), else 4 T frames continuing a stream whose previous latent frame is `prev`."""
  if prev is None:
    prev = jnp.zeros_like(z[:, :1])
  video = TinyDecoder(cfg).apply({"params": params}, z, prev)
  if first:
    video = video[:, cfg.temporal_stride - 1:]
  return jnp.clip(video, -1.0, 1.0) if clamp else video


decode_jit = jax.jit(decode, static_argnames=("cfg", "first", "clamp"))
