"""The one attention function every model calls; its kernel is a config choice.

q [B, Sq, N, H], k and v [B, Sk, N, H]. Block-causal masking is described by per-token block
ids (q_blocks [Sq], kv_blocks [Sk]): query i sees key j iff kv_blocks[j] <= q_blocks[i]. The
[Sq, Sk] mask is built from those ids inside the jitted computation, so XLA can fuse it instead
of reading a materialised S x S array.
"""

import jax
import jax.numpy as jnp

IMPLS = ("xla", "cudnn")


def block_ids(num_frames: int, tokens_per_frame: int, block_frames: int, frame_offset=0):
  """Block index of every token of a (num_frames x tokens_per_frame) sequence."""
  frame = jnp.arange(num_frames * tokens_per_frame) // tokens_per_frame + frame_offset
  return frame // block_frames


def dot_product_attention(q_BSNH, k_BSNH, v_BSNH, *, impl: str = "xla", scale: float | None = None,
                          q_blocks=None, kv_blocks=None):
  if impl not in IMPLS:
    raise ValueError(f"attention impl {impl!r} is unknown; use one of {IMPLS}")
  mask = None
  if q_blocks is not None:
    mask = (kv_blocks[None, :] <= q_blocks[:, None])[None, None]  # [1, 1, Sq, Sk]
  return jax.nn.dot_product_attention(q_BSNH, k_BSNH, v_BSNH, mask=mask, scale=scale,
                                      implementation=impl)
