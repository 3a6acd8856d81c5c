"""The one attention function every model calls; its kernel is a config choice
(`config.choices.AttentionImpl`, model.attention_impl): "xla" (any backend), "cudnn" (NVIDIA
fused flash attention; bf16/fp16), "splash" (TPU Pallas splash attention, `models/splash.py`; on
other backends it runs in the Pallas interpreter, which is slow and meant for testing only),
"chunked" (memory-efficient online softmax in plain JAX, `chunked_attention`; any backend).

q [B, Sq, N, H], k and v [B, Sk, N, H]. Block-causal masking is described statically by a
`block_causal.BlockCausal` layout (query i sees key j iff block(j) <= block(i), with
block(i) = (i + offset) // block_tokens), or, for the kernels that take them (all but splash), by
explicit per-token block ids (q_blocks [Sq], kv_blocks [Sk]: query i sees key j iff
kv_blocks[j] <= q_blocks[i]). Either way the [Sq, Sk] mask is built inside the jitted
computation (xla, cudnn), chunk by chunk (chunked) or tile by tile inside the kernel (splash),
never read from a materialised S x S array.

`KERNELS` is the table of implementations: a new kernel is one `Kernel` entry there (its
`attend` function and what it accepts) plus its name in `config.choices.AttentionImpl`.
"""

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp

from relic_jax.config.choices import AttentionImpl
from relic_jax.models.block_causal import BlockCausal


def _jax_kernel(implementation: str):
  """jax.nn.dot_product_attention with the block layout and key validity as a boolean mask."""
  def attend(q_BSNH, k_BSNH, v_BSNH, *, scale, block_causal, q_blocks, kv_blocks, kv_valid):
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
                                        implementation=implementation)
  return attend


def _splash_kernel(q_BSNH, k_BSNH, v_BSNH, *, scale, block_causal, q_blocks, kv_blocks,
                   kv_valid):
  del q_blocks, kv_blocks, kv_valid  # refused before the call (Kernel flags)
  # Lazy: splash.py imports the Pallas TPU kernels (a heavy optional dependency); only when used.
  from relic_jax.models.splash import splash_attention  # noqa: PLC0415
  return splash_attention(q_BSNH, k_BSNH, v_BSNH, scale=scale, block_causal=block_causal)


@dataclasses.dataclass(frozen=True)
class Kernel:
  """One attention implementation: `attend(q, k, v, *, scale, block_causal, q_blocks,
  kv_blocks, kv_valid)` and what it accepts besides the static block layout."""
  attend: Callable
  key_mask: bool      # takes kv_valid (what the KV cache path needs)
  token_blocks: bool  # takes per-token block ids (q_blocks / kv_blocks)


def dot_product_attention(q_BSNH, k_BSNH, v_BSNH, *, impl: str = "xla", scale: float | None = None,
                          block_causal: BlockCausal | None = None, q_blocks=None, kv_blocks=None,
                          kv_valid=None):
  """Softmax attention with the kernel KERNELS[impl]; unmasked unless `block_causal` (or, for
  kernels with token_blocks, q_blocks and kv_blocks) is given. kv_valid [Sk] or [B, Sk] (kernels
  with key_mask): keys that exist (the KV cache's filled slots); every query must see at least
  one. `scale` defaults to 1/sqrt(head dim)."""
  if impl not in KERNELS:
    raise ValueError(f"attention impl {impl!r} is unknown; use one of {AttentionImpl.values()}")
  if block_causal is not None and q_blocks is not None:
    raise ValueError("give either block_causal or q_blocks/kv_blocks, not both")
  if (q_blocks is None) != (kv_blocks is None):
    raise ValueError("q_blocks and kv_blocks go together")
  kernel = KERNELS[impl]
  if kv_valid is not None and not kernel.key_mask:
    takes = [str(k) for k, v in KERNELS.items() if v.key_mask]
    raise ValueError(f"attention impl {impl!r} does not take a key mask (kv_valid); the KV "
                     f"cache path needs attention_impl={' or '.join(map(repr, takes))}")
  if q_blocks is not None and not kernel.token_blocks:
    raise ValueError(f"{impl} attention needs the static block layout: pass block_causal="
                     "BlockCausal(...) instead of q_blocks/kv_blocks")
  return kernel.attend(q_BSNH, k_BSNH, v_BSNH, scale=scale, block_causal=block_causal,
                       q_blocks=q_blocks, kv_blocks=kv_blocks, kv_valid=kv_valid)


def chunked_attention(q_BSNH, k_BSNH, v_BSNH, *, scale=None, block_causal=None, q_blocks=None,
                      kv_blocks=None, kv_valid=None, kv_chunk: int = 256, q_chunk: int = 256):
  """Memory-efficient softmax attention in plain JAX (any backend): queries in chunks of
  q_chunk (a `lax.map`), each a `lax.scan` over key chunks of kv_chunk with a running max and
  sum (online softmax), the scan body rematerialised, so neither the forward nor the backward
  pass holds more than one [q_chunk, kv_chunk] score block per head, whatever the sequence
  length. Masks as `dot_product_attention` (block layout and/or key validity). Queries and keys
  are padded to multiples of their chunks (padding masked, padded queries dropped)."""
  b, sq, n, h = q_BSNH.shape
  sk = k_BSNH.shape[1]
  scale = (1.0 / h ** 0.5) if scale is None else scale
  if block_causal is not None:
    q_blocks, kv_blocks = block_causal.q_ids(sq), block_causal.kv_ids(sk)
  chunk = min(kv_chunk, sk)
  pad = (-sk) % chunk
  valid = jnp.ones((b, sk), bool) if kv_valid is None else jnp.broadcast_to(
      kv_valid if kv_valid.ndim == 2 else kv_valid[None], (b, sk))
  k = jnp.pad(k_BSNH, ((0, 0), (0, pad), (0, 0), (0, 0)))
  v = jnp.pad(v_BSNH, ((0, 0), (0, pad), (0, 0), (0, 0)))
  valid = jnp.pad(valid, ((0, 0), (0, pad)))
  kb = None if kv_blocks is None else jnp.pad(kv_blocks, (0, pad))
  nc = (sk + pad) // chunk
  ks = k.reshape(b, nc, chunk, n, h).swapaxes(0, 1)
  vs = v.reshape(b, nc, chunk, n, h).swapaxes(0, 1)
  valids = valid.reshape(b, nc, chunk).swapaxes(0, 1)
  kbs = None if kb is None else kb.reshape(nc, chunk)

  def attend(q, qb):
    """q [B, Q, N, H] (scaled, float32), qb [Q] or None -> out [B, N, Q, H]."""
    nq = q.shape[1]

    @jax.checkpoint
    def body(carry, xs):
      m, l, acc = carry
      kc, vc, ok, kbc = xs
      s = jnp.einsum("bqnh,bknh->bnqk", q, kc.astype(jnp.float32))
      mask = ok[:, None, None, :]
      if kbc is not None:
        mask = mask & (kbc[None, None, None, :] <= qb[None, None, :, None])
      s = jnp.where(mask, s, -jnp.inf)
      m_new = jnp.maximum(m, s.max(-1))
      m_safe = jnp.where(jnp.isfinite(m_new), m_new, 0.0)
      p = jnp.where(mask, jnp.exp(s - m_safe[..., None]), 0.0)
      corr = jnp.exp(jnp.where(jnp.isfinite(m), m, 0.0) - m_safe) * jnp.isfinite(m)
      l = l * corr + p.sum(-1)
      acc = acc * corr[..., None] + jnp.einsum("bnqk,bknh->bnqh", p, vc.astype(jnp.float32))
      return (m_new, l, acc), None

    init = (jnp.full((b, n, nq), -jnp.inf), jnp.zeros((b, n, nq)), jnp.zeros((b, n, nq, h)))
    (_, l, acc), _ = jax.lax.scan(body, init, (ks, vs, valids, kbs))
    return acc / jnp.maximum(l, 1e-30)[..., None]

  q = q_BSNH.astype(jnp.float32) * scale
  if sq <= q_chunk:
    out = attend(q, q_blocks)
  else:
    qpad = (-sq) % q_chunk
    nqc = (sq + qpad) // q_chunk
    qs = jnp.pad(q, ((0, 0), (0, qpad), (0, 0), (0, 0))).reshape(b, nqc, q_chunk, n, h)
    qbs = None if q_blocks is None else jnp.pad(q_blocks, (0, qpad),
                                                constant_values=-1).reshape(nqc, q_chunk)
    # padded queries see no key (block -1): their rows are zeros, and are dropped
    outs = jax.lax.map(lambda xs: attend(xs[0], xs[1]), (qs.swapaxes(0, 1), qbs))
    out = outs.transpose(1, 2, 0, 3, 4).reshape(b, n, nqc * q_chunk, h)[:, :, :sq]
  return out.transpose(0, 2, 1, 3).astype(q_BSNH.dtype)


# The attention kernels, one entry each (config.choices.AttentionImpl lists their names for
# validation; tests/test_attention_impls.py checks the two agree).
KERNELS: dict[str, Kernel] = {
    AttentionImpl.XLA: Kernel(_jax_kernel("xla"), key_mask=True, token_blocks=True),
    AttentionImpl.CUDNN: Kernel(_jax_kernel("cudnn"), key_mask=False, token_blocks=True),
    AttentionImpl.SPLASH: Kernel(_splash_kernel, key_mask=False, token_blocks=False),
    AttentionImpl.CHUNKED: Kernel(chunked_attention, key_mask=True, token_blocks=True),
}
