"""The one attention function every model calls; its kernel is a config choice:
"xla" (any backend), "cudnn" (NVIDIA fused flash attention; bf16/fp16), "splash" (TPU Pallas
splash attention, `models/splash.py`; on other backends it runs in the Pallas interpreter, which
is slow and meant for testing only).

q [B, Sq, N, H], k and v [B, Sk, N, H]. Block-causal masking is described statically by a
`BlockCausal` layout (query i sees key j iff block(j) <= block(i), with
block(i) = (i + offset) // block_tokens), or, for "xla"/"cudnn" only, by explicit per-token block
ids (q_blocks [Sq], kv_blocks [Sk]: query i sees key j iff kv_blocks[j] <= q_blocks[i]). Either
way the [Sq, Sk] mask is built inside the jitted computation (xla) or tile by tile inside the
kernel (splash), never read from a materialised S x S array.
"""

import dataclasses

import jax
import jax.numpy as jnp

IMPLS = ("xla", "cudnn", "splash")


@dataclasses.dataclass(frozen=True)
class BlockCausal:
  """Static block-causal layout: query token i is in block (i + q_offset) // block_tokens, key
  token j in (j + kv_offset) // block_tokens, and query i sees key j iff block(j) <= block(i).
  For a video of tokens_per_frame tokens per frame and block_frames frames per block,
  block_tokens = block_frames * tokens_per_frame and an offset of f frames is
  f * tokens_per_frame tokens. Static (hashable) so kernels can build their masks at trace time."""
  block_tokens: int
  q_offset: int = 0
  kv_offset: int = 0

  def __post_init__(self):
    if self.block_tokens <= 0 or self.q_offset < 0 or self.kv_offset < 0:
      raise ValueError(f"{self}: block_tokens must be positive and offsets non-negative")

  def q_ids(self, length: int):
    return (jnp.arange(length) + self.q_offset) // self.block_tokens

  def kv_ids(self, length: int):
    return (jnp.arange(length) + self.kv_offset) // self.block_tokens


def block_ids(num_frames: int, tokens_per_frame: int, block_frames: int, frame_offset=0):
  """Block index of every token of a (num_frames x tokens_per_frame) sequence."""
  frame = jnp.arange(num_frames * tokens_per_frame) // tokens_per_frame + frame_offset
  return frame // block_frames


def dot_product_attention(q_BSNH, k_BSNH, v_BSNH, *, impl: str = "xla", scale: float | None = None,
                          block_causal: BlockCausal | None = None, q_blocks=None, kv_blocks=None,
                          kv_valid=None):
  """Softmax attention; unmasked unless `block_causal` (or, xla/cudnn only, q_blocks and
  kv_blocks) is given. kv_valid [Sk] or [B, Sk] (xla only): keys that exist (the KV cache's
  filled slots); every query must see at least one. `scale` defaults to 1/sqrt(head dim)."""
  if impl not in IMPLS:
    raise ValueError(f"attention impl {impl!r} is unknown; use one of {IMPLS}")
  if block_causal is not None and q_blocks is not None:
    raise ValueError("give either block_causal or q_blocks/kv_blocks, not both")
  if (q_blocks is None) != (kv_blocks is None):
    raise ValueError("q_blocks and kv_blocks go together")
  if kv_valid is not None and impl != "xla":
    raise ValueError(f"attention impl {impl!r} does not take a key mask (kv_valid); the KV "
                     "cache path needs attention_impl='xla'")
  if impl == "splash":
    if q_blocks is not None:
      raise ValueError("splash attention needs the static block layout: pass block_causal="
                       "BlockCausal(...) instead of q_blocks/kv_blocks")
    from relic_jax.models.splash import splash_attention  # Pallas TPU imports: only when used
    return splash_attention(q_BSNH, k_BSNH, v_BSNH, scale=scale, block_causal=block_causal)
  if block_causal is not None:
    q_blocks = block_causal.q_ids(q_BSNH.shape[1])
    kv_blocks = block_causal.kv_ids(k_BSNH.shape[1])
  mask = None
  if q_blocks is not None:
    mask = (kv_blocks[None, :] <= q_blocks[:, None])[None, None]  # [1, 1, Sq, Sk]
  if kv_valid is not None:
    valid = kv_valid[None, None, None, :] if kv_valid.ndim == 1 else kv_valid[:, None, None, :]
    mask = valid if mask is None else mask & valid
  return jax.nn.dot_product_attention(q_BSNH, k_BSNH, v_BSNH, mask=mask, scale=scale,
                                      implementation=impl)
