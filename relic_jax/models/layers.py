"""Small building blocks shared by the models: logically-partitioned Dense, Wan's norms,
per-frame modulation.

Axes: B batch, T latent frames, P tokens per frame, S = T*P tokens, D model dim.
Model code names only *logical* axes ("embed", "heads", "mlp", ...); the config's rules table
maps them to mesh axes.
"""

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

Dtype = Any
XAVIER_UNIFORM = nn.initializers.xavier_uniform()  # `dense`'s default kernel initializer


def dense(features: int, axes: tuple[str, str], name: str, dtype: Dtype, param_dtype: Dtype,
          kernel_init=XAVIER_UNIFORM, use_bias: bool = True) -> nn.Dense:
  """A Dense layer whose kernel [in, out] and bias [out] carry logical axis names."""
  return nn.Dense(
      features, use_bias=use_bias, dtype=dtype, param_dtype=param_dtype, name=name,
      kernel_init=nn.with_logical_partitioning(kernel_init, axes),
      bias_init=nn.with_logical_partitioning(nn.initializers.zeros, (axes[1],)))


def layer_norm_fp32(x, eps: float):
  """LayerNorm without affine parameters, computed in float32 (Wan's norm1/norm3/norm_out)."""
  x = x.astype(jnp.float32)
  mean = jnp.mean(x, axis=-1, keepdims=True)
  var = jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True)
  return (x - mean) * jnp.reciprocal(jnp.sqrt(var + eps))


class AffineLayerNorm(nn.Module):
  """float32 LayerNorm with learned scale and bias (Wan's cross-attention norm2)."""
  eps: float
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    d = x.shape[-1]
    scale = self.param("scale", nn.with_logical_partitioning(nn.initializers.ones, ("norm",)),
                       (d,), self.param_dtype)
    bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros, ("norm",)),
                      (d,), self.param_dtype)
    y = layer_norm_fp32(x, self.eps)
    return y * scale.astype(jnp.float32) + bias.astype(jnp.float32)


class RMSNorm(nn.Module):
  """RMS norm over the last axis with a learned scale; computed in float32, returned in the
  input dtype. Wan applies it to q and k across all heads at once (width = model dim)."""
  eps: float
  axis_name: str = "heads"
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    scale = self.param("scale",
                       nn.with_logical_partitioning(nn.initializers.ones, (self.axis_name,)),
                       (x.shape[-1],), self.param_dtype)
    xf = x.astype(jnp.float32)
    y = xf * jnp.reciprocal(jnp.sqrt(jnp.mean(jnp.square(xf), axis=-1, keepdims=True) + self.eps))
    return (y * scale.astype(jnp.float32)).astype(x.dtype)


def per_frame(x_BSD, num_frames: int):
  """[B, S, D] -> [B, T, P, D] so per-frame tensors [B, T, D] broadcast over a frame's tokens."""
  b, s, d = x_BSD.shape
  return x_BSD.reshape(b, num_frames, s // num_frames, d)


def modulate(x_BSD, shift_BTD, scale_BTD):
  """x * (1 + scale) + shift with one (shift, scale) per latent frame."""
  b, s, d = x_BSD.shape
  t = shift_BTD.shape[1]
  y = per_frame(x_BSD, t) * (1.0 + scale_BTD[:, :, None]) + shift_BTD[:, :, None]
  return y.reshape(b, s, d)


def gate(x_BSD, gate_BTD):
  b, s, d = x_BSD.shape
  return (per_frame(x_BSD, gate_BTD.shape[1]) * gate_BTD[:, :, None]).reshape(b, s, d)
