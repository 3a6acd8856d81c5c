"""TPU splash attention (Pallas) behind `attention.dot_product_attention(impl="splash")`.

The kernel is JAX's `jax.experimental.pallas.ops.tpu.splash_attention` (`make_splash_mha`).
It is written for TPU; for any other target (the platform of the mesh's devices, so a step
compiled for a TPU topology on a CPU host gets the real kernel) it runs in Pallas interpret
mode, which is correct but very slow and meant for testing only (the CPU tests check it
against the XLA reference).

How the model's attention is mapped onto the kernel:

* **Layout.** q, k, v [B, S, N, H] -> per example [N, S, H] (vmap over the batch). The kernel
  applies no softmax scale, so q is pre-scaled by `scale` (which the caller derives from the
  true head dim).
* **Padding.** The kernel tiles both sequences in blocks that are multiples of 128 tokens, so
  queries are zero-padded to a multiple of 128 x (query shards) and keys/values to a multiple
  of 128; tiles are the largest of 512 / 256 / 128 dividing the padded length. Padded keys are
  masked out by the mask (below); padded query rows are dropped. The head dim is zero-padded to
  a multiple of 128 as well (q.k and the real output columns are unchanged by zero columns; Wan's
  head dim is 128, so real configs pad nothing).
* **Masks.** One lazy mask, `SplashMask`, a `_ComputableMask` that the kernel evaluates per tile
  from token indices: key j is visible iff j < (real key count) and, for block-causal attention
  (`block_causal.BlockCausal`), block(j) <= block(i). Its host-side cost is O(S) memory (the mask
  info is per 512 x 512 tile, plus the index vector), never an S x S array (S = 32,760 tokens for
  the 14B config). Padded query rows see every real key, so no row of the softmax is empty. An
  unmasked attention whose keys need no padding uses `FullMask` (no masking work at all).
* **Sharding.** XLA cannot partition a Pallas call. Under a mesh (`jax.set_mesh`) the kernel runs
  in `jax.shard_map` over the mesh axes of the logical axes "batch" (batch), "act_len" (the query
  sequence: context parallelism) and "act_heads" (heads), resolved with `nn.logical_to_mesh_axes`
  under the active `nn.logical_axis_rules`. Keys and values are full-length on every shard (the
  in_specs all-gather them over the context axis); queries stay split over it, and the kernel's
  mask tables are split to match (`make_splash_mha(q_seq_shards=..., head_shards=...)` with
  `SplashAttentionKernel.manual_sharding_spec`), so each shard computes only its own query rows.
  The key/value sequence is never split inside the kernel (no ring attention). Without a mesh
  (a plain single-device call) the kernel is called directly.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as sk
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as sm
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from relic_jax.models.block_causal import BlockCausal
from relic_jax.parallel.mesh import axis_size, dividing_axes

LANE = 128  # the kernel's tiles are multiples of the TPU lane width
MAX_TILE = 512


class SplashMask(sm._ComputableMask):  # pylint: disable=protected-access
  """Lazy mask over the padded [q_len_padded, kv_len_padded] score matrix: key j is visible to
  query i iff j < kv_len and (no block_causal, or i >= q_len (a padded query), or
  block(j) <= block(i)). Evaluated tile by tile (on the host for the tile tables, in the kernel
  for the scores); never materialised whole. Hashable, so the kernel's mask processing (an
  lru_cache keyed by the mask) runs once per shape."""

  def __init__(self, shape: tuple[int, int], q_len: int, kv_len: int,
               block_causal: BlockCausal | None):
    self.key = (tuple(shape), int(q_len), int(kv_len), block_causal)
    bc = block_causal

    def mask_function(q_ids, kv_ids):
      # Called with numpy arrays (host tile tables) and with int32 arrays inside the kernel.
      visible = kv_ids < kv_len
      if bc is not None:
        same_or_earlier = ((kv_ids + bc.kv_offset) // bc.block_tokens
                           <= (q_ids + bc.q_offset) // bc.block_tokens)
        visible = visible & (same_or_earlier | (q_ids >= q_len))
      return visible

    super().__init__(shape=tuple(shape), mask_function=mask_function)

  def __eq__(self, other):
    return isinstance(other, SplashMask) and self.key == other.key

  def __hash__(self):
    return hash((SplashMask, self.key))


def _round_up(n: int, m: int) -> int:
  return -(-n // m) * m


def _granule(n: int) -> int:
  """What a sequence of n tokens is padded to a multiple of: the lane width, or for long
  sequences the largest tile, so the kernel's tiles stay large and its mask tables small (with
  128-token tiles 123k tokens need ~2 MB of tables, over the TPU's 1 MiB of scalar memory)."""
  return MAX_TILE if n >= 8 * MAX_TILE else LANE


def _tile(n: int) -> int:
  """The largest of 512 / 256 / 128 that divides n (a multiple of 128)."""
  return next(t for t in (MAX_TILE, 256, LANE) if n % t == 0)


def make_kernel(q_len: int, kv_len: int, q_len_padded: int, kv_len_padded: int, num_heads: int,
                block_causal: BlockCausal | None, *, head_shards: int = 1, q_seq_shards: int = 1,
                interpret: bool = False) -> sk.SplashAttentionKernel:
  """The splash kernel for (padded) [num_heads, q_len_padded, H] queries and
  [num_heads, kv_len_padded, H] keys/values, with its mask tables laid out for
  head_shards x q_seq_shards shards. Host cost: the mask processing is lru-cached by JAX, so
  rebuilding the kernel at each trace is cheap after the first time."""
  shape = (q_len_padded, kv_len_padded)
  if block_causal is None and kv_len == kv_len_padded:
    head_mask = sm.FullMask(shape)
  else:
    head_mask = SplashMask(shape, q_len, kv_len, block_causal)
  tq, tk = _tile(q_len_padded // q_seq_shards), _tile(kv_len_padded)
  sizes = sk.BlockSizes(block_q=tq, block_kv=tk, block_kv_compute=tk,
                        block_q_dkv=tq, block_kv_dkv=tk, block_kv_dkv_compute=tk,
                        block_q_dq=tq, block_kv_dq=tk)
  return sk.make_splash_mha(sm.MultiHeadMask([head_mask] * num_heads), block_sizes=sizes,
                            head_shards=head_shards, q_seq_shards=q_seq_shards,
                            interpret=interpret)


def _attend(kernel, q_BSNH, k_BSNH, v_BSNH):
  """The kernel over a batch: [b, Sq, n, H] x [b, Sk, n, H] -> [b, Sq, n, H]."""
  def one(q, k, v):  # [S, n, H] -> [n, S, H] for the kernel and back
    out = kernel(q.transpose(1, 0, 2), k.transpose(1, 0, 2), v.transpose(1, 0, 2))
    return out.transpose(1, 0, 2)
  return jax.vmap(one)(q_BSNH, k_BSNH, v_BSNH)


def target_platform(mesh=None) -> str:
  """The platform the computation is being built for: the devices of the mesh in context
  (`jax.set_mesh`; a TPU topology's compile-only devices on a CPU host included), else the
  default backend."""
  mesh = jax.sharding.get_abstract_mesh() if mesh is None else mesh
  device = None if mesh.empty else getattr(mesh, "abstract_device", None)
  return device.platform if device is not None else jax.default_backend()


def splash_attention(q_BSNH, k_BSNH, v_BSNH, *, scale: float | None = None,
                     block_causal: BlockCausal | None = None, interpret: bool | None = None):
  """Splash attention: q [B, Sq, N, H], k and v [B, Sk, N, H] -> [B, Sq, N, H]; unmasked, or
  block-causal per `block_causal`. For TPU; `interpret` (default: the target is not a TPU, by
  `target_platform`: the mesh's devices, not the host's backend, so a step compiled for a TPU
  topology on a CPU host gets the real kernel) runs the kernel in the Pallas interpreter, which
  is slow and for testing only."""
  b, sq, n, h = q_BSNH.shape
  skv = k_BSNH.shape[1]
  if k_BSNH.shape != (b, skv, n, h) or v_BSNH.shape != k_BSNH.shape:
    raise ValueError(f"splash attention needs q [B, Sq, N, H] and k, v [B, Sk, N, H] with the same "
                     f"B, N, H; got {q_BSNH.shape}, {k_BSNH.shape}, {v_BSNH.shape}")
  mesh = jax.sharding.get_abstract_mesh()
  if interpret is None:
    interpret = target_platform(mesh) != "tpu"
  scale = h ** -0.5 if scale is None else scale

  if mesh.empty:
    batch_axes = seq_axes = head_axes = None
  else:
    batch_axes, seq_axes, head_axes, _ = nn.logical_to_mesh_axes(
        ("batch", "act_len", "act_heads", None))
    batch_axes, head_axes = dividing_axes(mesh, batch_axes, b), dividing_axes(mesh, head_axes, n)
  q_shards, head_shards = axis_size(mesh, seq_axes), axis_size(mesh, head_axes)

  sq_pad = _round_up(sq, _granule(sq // q_shards) * q_shards)
  skv_pad, h_pad = _round_up(skv, _granule(skv)), _round_up(h, LANE)
  kernel_seq_axes = seq_axes
  if block_causal is None and skv == skv_pad and q_shards > 1:
    # Every query sees every key, wherever it sits: each query shard runs the same kernel of
    # its local length (JAX's mask processing fails on a full mask split over query shards,
    # e.g. the text cross-attention under context parallelism).
    local = sq_pad // q_shards
    kernel = make_kernel(local, skv, local, skv_pad, n, None, head_shards=head_shards,
                         interpret=interpret)
    kernel_seq_axes = None
  else:
    kernel = make_kernel(sq, skv, sq_pad, skv_pad, n, block_causal, head_shards=head_shards,
                         q_seq_shards=q_shards, interpret=interpret)

  dtype = q_BSNH.dtype
  q = (q_BSNH.astype(jnp.float32) * scale).astype(dtype)
  q = jnp.pad(q, ((0, 0), (0, sq_pad - sq), (0, 0), (0, h_pad - h)))
  kv_pad = ((0, 0), (0, skv_pad - skv), (0, 0), (0, h_pad - h))
  k, v = jnp.pad(k_BSNH, kv_pad), jnp.pad(v_BSNH, kv_pad)

  if mesh.empty:
    out = _attend(kernel, q, k, v)
  else:
    # The kernel's mask tables are split like the (head, query-sequence) grid of the shards.
    kernel_spec = kernel.manual_sharding_spec(NamedSharding(mesh, P(head_axes,
                                                                     kernel_seq_axes)))
    q_spec = P(batch_axes, seq_axes, head_axes, None)
    kv_spec = P(batch_axes, None, head_axes, None)  # full-length keys/values on every shard
    # check_vma=False: the kernel's pallas_call does not declare how its outputs vary over the
    # mesh, which check_vma=True requires. Gradients stay right: shard_map sums the key/value
    # cotangents over the axes they are replicated on (context), as the tests check.
    out = jax.shard_map(_attend, mesh=mesh, in_specs=(kernel_spec, q_spec, kv_spec, kv_spec),
                        out_specs=q_spec, check_vma=False)(kernel, q, k, v)
  return out[:, :sq, :, :h]
