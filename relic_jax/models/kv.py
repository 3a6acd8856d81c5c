"""What the DiT's blocks attend to besides their own tokens: cached keys and values, as a type
the model owns. Whoever keeps a cache (`memory/kv_cache.py`) builds a `KVView` from its storage;
the model never sees how or where the keys are stored.

Axes: L layers, B batch, S_i tokens of segment i, Sk = sum of S_i cached tokens, N heads, H head
dim. Keys are cached before RoPE and rotated when read, at the positions given by `angles`.
The cached tokens come as a few segments (e.g. a compressed memory and a window), concatenated
in order, so the view points at the cache's buffers instead of copying them; a segment may be
stored in a narrow dtype with a float32 scale per (token, head), dequantized when read, one
layer at a time inside the layer scan.
"""

import jax
import jax.numpy as jnp
from flax import struct

from relic_jax.models.rope import apply_rope


@struct.dataclass
class LayerKV:
  """Cached keys (before RoPE) and values of one layer, or of every layer with a leading L axis
  (what the layer scan slices): per segment k, v [(L,) B, S_i, N, H]; k_scale, v_scale: None
  (k, v hold the values) or per segment [(L,) B, S_i, N] float32, the value being k * scale."""
  k: tuple[jax.Array, ...]
  v: tuple[jax.Array, ...]
  k_scale: tuple[jax.Array, ...] | None = None
  v_scale: tuple[jax.Array, ...] | None = None


@struct.dataclass
class KVView:
  """The cache as the model reads it: `layers` (stacked, [L, ...]) and what every layer shares,
  the RoPE angles at the cached tokens' positions [Sk, H/2] and which cached tokens exist
  [B, Sk] (empty slots are masked out)."""
  layers: LayerKV | None
  angles: jax.Array
  valid: jax.Array

  def shared(self) -> "KVView":
    """The view without its per-layer arrays (broadcast to every layer of the scan)."""
    return self.replace(layers=None)

  def with_layer(self, layer: LayerKV) -> "KVView":
    """This (shared) view with one layer's arrays: what one block reads."""
    return self.replace(layers=layer)


def dequantize(x, scale, dtype):
  """x [..., N, H] stored with scale [..., N] (or None: x holds the values) -> values in dtype."""
  if scale is None:
    return x.astype(dtype)
  return (x.astype(jnp.float32) * scale[..., None]).astype(dtype)


def read(view: KVView, dtype):
  """One layer's cached keys (RoPE applied) and values [B, Sk, N, H] in `dtype`, and which of
  them exist [B, Sk]. view.layers holds that one layer's arrays (no leading L axis)."""
  lay = view.layers
  ks = lay.k_scale or (None,) * len(lay.k)
  vs = lay.v_scale or (None,) * len(lay.v)
  k = jnp.concatenate([dequantize(x, s, dtype) for x, s in zip(lay.k, ks)], axis=1)
  v = jnp.concatenate([dequantize(x, s, dtype) for x, s in zip(lay.v, vs)], axis=1)
  return apply_rope(k, view.angles), v, view.valid
