"""The block-causal attention layout, shared by the attention entry point (`attention.py`) and
the kernels behind it (`splash.py`): a static, hashable description from which each kernel builds
its mask at trace time, never an S x S array.

Query token i sees key token j iff block(j) <= block(i). Blocks are block_frames latent frames of
tokens_per_frame tokens each (the DiT's block-causal mode, the student's streaming blocks).
"""

import dataclasses

import jax.numpy as jnp


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
