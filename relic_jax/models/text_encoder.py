"""A small built-in text encoder, so runs on our own data need no umT5 download.

Byte tokens [B, L] int32 (UTF-8 bytes + 1, 0 = padding: `data_pipeline.clips.tokenize_caption`)
-> embeddings [B, L, text_dim] float32, trained jointly with the DiT it feeds. A token
embedding plus a learned position embedding, `text_encoder_layers` pre-LN transformer layers
(bidirectional attention over the non-padding tokens), a final LayerNorm and a projection to
text_dim. Padding positions come out as zeros, as Wan's zero-padded umT5 context does.

With real Wan weights, use precomputed umT5 embeddings instead (model.text_encoder = "none").
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from relic_jax.models.layers import dense

VOCAB = 257  # 256 byte values + 1, and 0 for padding


class ByteTextEncoder(nn.Module):
  width: int
  out_dim: int
  num_layers: int = 2
  num_heads: int = 2
  dtype: str = "float32"
  param_dtype: str = "float32"

  @nn.compact
  def __call__(self, tokens_BL):
    dt, pdt = jnp.dtype(self.dtype), jnp.dtype(self.param_dtype)
    b, length = tokens_BL.shape
    mask = tokens_BL > 0
    x = nn.Embed(VOCAB, self.width, param_dtype=pdt, name="tokens",
                 embedding_init=nn.with_logical_partitioning(
                     nn.initializers.normal(0.02), ("vocab", "text_embed")))(tokens_BL)
    pos = self.param("positions", nn.with_logical_partitioning(nn.initializers.normal(0.02),
                                                               (None, "text_embed")),
                     (length, self.width), pdt)
    x = (x + pos[None]).astype(jnp.float32)
    # keys: padding masked out; a row of padding only (an empty caption) attends to nothing
    # real, so it is zeroed at the output anyway.
    bias = jnp.where(mask[:, None, None, :], 0.0, -1e9).astype(jnp.float32)
    head_dim = self.width // self.num_heads
    for i in range(self.num_layers):
      h = nn.LayerNorm(param_dtype=pdt, name=f"ln_attn_{i}")(x).astype(dt)
      qkv = dense(3 * self.width, ("text_embed", "text_mlp"), f"qkv_{i}", dt, pdt)(h)
      q, k, v = (y.reshape(b, length, self.num_heads, head_dim) for y in jnp.split(qkv, 3, -1))
      logits = jnp.einsum("bqnh,bknh->bnqk", q, k).astype(jnp.float32) / head_dim ** 0.5
      probs = jax.nn.softmax(logits + bias, axis=-1).astype(dt)
      att = jnp.einsum("bnqk,bknh->bqnh", probs, v).reshape(b, length, self.width)
      x = x + dense(self.width, ("text_mlp", "text_embed"), f"attn_out_{i}", dt, pdt)(att)
      h = nn.LayerNorm(param_dtype=pdt, name=f"ln_mlp_{i}")(x).astype(dt)
      h = dense(4 * self.width, ("text_embed", "text_mlp"), f"fc1_{i}", dt, pdt)(h)
      h = dense(self.width, ("text_mlp", "text_embed"), f"fc2_{i}", dt, pdt)(
          jax.nn.gelu(h, approximate=True))
      x = x + h.astype(jnp.float32)
    x = nn.LayerNorm(param_dtype=pdt, name="ln_out")(x).astype(dt)
    out = dense(self.out_dim, ("text_embed", "text_out"), "proj", dt, pdt)(x)
    return jnp.where(mask[..., None], out.astype(jnp.float32), 0.0)
