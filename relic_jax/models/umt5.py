"""The umT5 / T5 v1.1 text encoder (Wan 2.1 encodes its captions with umT5-XXL's encoder).

Token ids [B, L] int32 and an attention mask [B, L] -> hidden states [B, L, d_model] float32,
padding positions zeroed (Wan zero-pads its text context). The architecture, as
`transformers`' `UMT5EncoderModel` / `T5EncoderModel`:
- token embedding (no scaling, no position embedding);
- per layer, pre-norm: RMS layer norm (scale only, no mean, no bias; computed in float32) ->
  self-attention without biases and without the 1/sqrt(d) scaling, plus a learned relative
  position bias (bidirectional buckets, log-spaced past half of them) -> residual; RMS norm ->
  gated-GELU FFN (GELU, tanh approximation, of wi_0 x times wi_1 x, then wo) -> residual;
- a final RMS norm.
umT5 gives every layer its own relative-position table; T5 v1.1 shares layer 0's
(`UMT5Config.per_layer_bias`).

Matmuls run in `dtype` (bf16 for the XXL), norms, softmax and the residual stream in float32;
layers are scanned (`scan_layers`) with params stacked on a leading "layers" axis, and every
param carries logical axes ("vocab", "embed", "heads", "mlp"), so the config's rules shard it
as they shard the DiT. Import from a Hugging Face checkpoint: `relic_jax.weights.umt5`.
"""

import dataclasses
import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from relic_jax.models.layers import RMSNorm, dense


@dataclasses.dataclass(frozen=True)
class UMT5Config:
  vocab_size: int
  d_model: int
  d_kv: int
  d_ff: int
  num_layers: int
  num_heads: int
  num_buckets: int = 32
  max_distance: int = 128
  eps: float = 1e-6
  per_layer_bias: bool = True  # umT5; False: T5 v1.1 (layer 0's table for every layer)
  dtype: str = "float32"
  param_dtype: str = "float32"
  scan_layers: bool = True


def relative_buckets(q_len: int, k_len: int, num_buckets: int, max_distance: int):
  """T5's bidirectional relative-position buckets [q_len, k_len] int32 of key - query: half
  the buckets for each sign, the first half of those exact distances, the rest log-spaced up to
  max_distance (beyond it, the last bucket)."""
  rel = jnp.arange(k_len)[None, :] - jnp.arange(q_len)[:, None]
  half = num_buckets // 2
  out = (rel > 0).astype(jnp.int32) * half
  rel = jnp.abs(rel)
  exact = half // 2
  ratio = jnp.log(jnp.maximum(rel, 1).astype(jnp.float32) / exact) / math.log(max_distance / exact)
  large = jnp.minimum(exact + (ratio * (half - exact)).astype(jnp.int32), half - 1)
  return out + jnp.where(rel < exact, rel, large)


def _position_bias(table_KN, buckets_QK):
  """A relative-position table [buckets, heads] -> the bias [heads, Q, K] float32."""
  return jnp.transpose(table_KN.astype(jnp.float32)[buckets_QK], (2, 0, 1))


def _table(module, cfg: UMT5Config):
  return module.param("relative_attention_bias", nn.with_logical_partitioning(
      nn.initializers.normal(1.0), (None, "heads")), (cfg.num_buckets, cfg.num_heads),
      jnp.dtype(cfg.param_dtype))


class UMT5Layer(nn.Module):
  """One encoder layer, in nn.scan's (carry, x) -> (carry, y) form."""
  cfg: UMT5Config

  @nn.compact
  def __call__(self, x_BLD, mask_bias_B11L, buckets_LL, shared_bias_NLL):
    c = self.cfg
    dt, pdt = jnp.dtype(c.dtype), jnp.dtype(c.param_dtype)
    b, length, _ = x_BLD.shape
    inner = c.num_heads * c.d_kv

    h = RMSNorm(c.eps, axis_name="norm", param_dtype=pdt, name="attn_norm")(x_BLD).astype(dt)
    q, k, v = (dense(inner, ("embed", "heads"), n, dt, pdt, use_bias=False)(h).reshape(
        b, length, c.num_heads, c.d_kv) for n in ("q", "k", "v"))
    bias = (_position_bias(_table(self, c), buckets_LL) if c.per_layer_bias
            else shared_bias_NLL)
    s = jnp.einsum("bqnh,bknh->bnqk", q, k, preferred_element_type=jnp.float32)
    p = jax.nn.softmax(s + bias[None] + mask_bias_B11L, axis=-1)
    o = jnp.einsum("bnqk,bknh->bqnh", p.astype(dt), v).reshape(b, length, inner)
    x_BLD = x_BLD + dense(c.d_model, ("heads", "embed"), "o", dt, pdt,
                          use_bias=False)(o).astype(jnp.float32)

    h = RMSNorm(c.eps, axis_name="norm", param_dtype=pdt, name="ffn_norm")(x_BLD).astype(dt)
    gelu = jax.nn.gelu(dense(c.d_ff, ("embed", "mlp"), "wi_0", dt, pdt, use_bias=False)(h),
                       approximate=True)
    lin = dense(c.d_ff, ("embed", "mlp"), "wi_1", dt, pdt, use_bias=False)(h)
    x_BLD = x_BLD + dense(c.d_model, ("mlp", "embed"), "wo", dt, pdt,
                          use_bias=False)(gelu * lin).astype(jnp.float32)
    return x_BLD, None


class UMT5Encoder(nn.Module):
  """ids [B, L] int32, mask [B, L] (nonzero = a token) -> [B, L, d_model] float32, padding
  positions zero."""
  cfg: UMT5Config

  @nn.compact
  def __call__(self, ids_BL, mask_BL):
    c = self.cfg
    pdt = jnp.dtype(c.param_dtype)
    length = ids_BL.shape[1]
    valid = mask_BL.astype(bool)
    x = nn.Embed(c.vocab_size, c.d_model, param_dtype=pdt, name="token_embedding",
                 embedding_init=nn.with_logical_partitioning(
                     nn.initializers.normal(1.0), ("vocab", "embed")))(ids_BL)
    x = x.astype(jnp.float32)
    mask_bias = jnp.where(valid, 0.0, jnp.finfo(jnp.float32).min)[:, None, None, :]
    buckets = relative_buckets(length, length, c.num_buckets, c.max_distance)
    shared = None if c.per_layer_bias else _position_bias(_table(self, c), buckets)
    if c.scan_layers:
      layers = nn.scan(UMT5Layer, variable_axes={"params": 0}, split_rngs={"params": True},
                       in_axes=(nn.broadcast,) * 3, length=c.num_layers,
                       metadata_params={nn.PARTITION_NAME: "layers"})
      x, _ = layers(c, name="layers")(x, mask_bias, buckets, shared)
    else:
      for i in range(c.num_layers):
        x, _ = UMT5Layer(c, name=f"layers_{i}")(x, mask_bias, buckets, shared)
    x = RMSNorm(c.eps, axis_name="norm", param_dtype=pdt, name="final_norm")(x)
    return x * valid[..., None]
