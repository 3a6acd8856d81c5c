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
import functools
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
  """Memory-efficient softmax attention in plain JAX (any backend), FlashAttention-2 style:
  queries in chunks of q_chunk, each scanning key chunks of kv_chunk with a running max and sum
  (online softmax). A `jax.custom_vjp` (`_flash`): the forward saves only the output and the
  per-query log-sum-exp, and the backward recomputes the scores chunk by chunk, so neither pass
  holds more than one [q_chunk, kv_chunk] score block per head besides O(S * H) inputs, outputs
  and gradients, whatever the sequence length. Computed in float32, returned in the input dtype.
  Masks as `dot_product_attention` (block layout and/or key validity); a query that sees no key
  gets zeros (and passes no gradient). Queries and keys are padded to multiples of their chunks
  (padding masked, padded queries dropped). Reverse mode only (no jvp).

  Masked work is skipped: a (query chunk, key chunk) pair in which no query sees any key (every
  key of the chunk invalid in every batch row, or the block ids of all its keys above those of
  all its queries) runs no score, softmax or matmul, forward or backward (the forward loops
  over each query chunk's live key chunks only, the backward branches with `jax.lax.cond`), so
  attention over a KV cache of fixed capacity costs what its filled part costs. The skip is
  decided for the whole batch: a chunk that one row sees is computed for all (under
  `jax.vmap` the loop runs to the longest row's count and the branch becomes a select)."""
  b, sq, n, h = q_BSNH.shape
  sk = k_BSNH.shape[1]
  scale = (1.0 / h ** 0.5) if scale is None else float(scale)
  if block_causal is not None:
    q_blocks, kv_blocks = block_causal.q_ids(sq), block_causal.kv_ids(sk)
  ck, cq = min(kv_chunk, sk), min(q_chunk, sq)
  kpad, qpad = (-sk) % ck, (-sq) % cq
  nkc, nqc = (sk + kpad) // ck, (sq + qpad) // cq
  valid = jnp.ones((b, sk), bool) if kv_valid is None else jnp.broadcast_to(
      kv_valid if kv_valid.ndim == 2 else kv_valid[None], (b, sk))

  def chunks(x, pad, nc, c):  # [B, S, ...] -> [nc, B, c, ...], zero-padded
    x = jnp.pad(x, ((0, 0), (0, pad)) + ((0, 0),) * (x.ndim - 2))
    return x.reshape(b, nc, c, *x.shape[2:]).swapaxes(0, 1)

  qs, ks, vs = chunks(q_BSNH, qpad, nqc, cq), chunks(k_BSNH, kpad, nkc, ck), chunks(
      v_BSNH, kpad, nkc, ck)
  valids = chunks(valid, kpad, nkc, ck)  # padded keys: invalid
  qbs = kbs = None
  if q_blocks is not None:
    # padded queries see no key (block -1): their rows are zeros, and are dropped
    qbs = jnp.pad(q_blocks, (0, qpad), constant_values=-1).reshape(nqc, cq)
    kbs = jnp.pad(kv_blocks, (0, kpad)).reshape(nkc, ck)
  live = _live_chunks(valids, qbs, kbs)  # [nqc, nkc]
  out = _flash(scale, qs, ks, vs, valids, qbs, kbs, live)  # [nqc, B, cq, N, H] float32
  return out.swapaxes(0, 1).reshape(b, nqc * cq, n, h)[:, :sq].astype(q_BSNH.dtype)


def _chunk_mask(valid, qb, kb):
  """valid [B, K], qb [Q] or None, kb [K] or None -> mask [B, 1, Q, K] (or [B, 1, 1, K])."""
  mask = valid[:, None, None, :]
  if kb is not None:
    mask = mask & (kb[None, None, None, :] <= qb[None, None, :, None])
  return mask


def _live_chunks(valids, qbs, kbs):
  """Which (query chunk, key chunk) pairs hold a visible (query, key) pair for some batch row:
  valids [nkc, B, ck], qbs [nqc, cq] and kbs [nkc, ck] (or None) -> bool [nqc, nkc]. From
  per-chunk reductions only: a key chunk lives if one of its keys is valid, and then for a
  query chunk if its smallest valid key block is <= the chunk's largest query block (exact for
  the block ids: that key is seen by that query)."""
  key_ok = valids.any(1)  # [nkc, ck]: valid in some batch row
  live = key_ok.any(-1)[None, :]  # [1, nkc]
  if qbs is None:
    return jnp.broadcast_to(live, (1, key_ok.shape[0]))
  big = jnp.iinfo(kbs.dtype).max
  kb_min = jnp.where(key_ok, kbs, big).min(-1)  # [nkc] (big if no valid key)
  return live & (kb_min[None, :] <= qbs.max(-1)[:, None])


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _flash(scale, qs, ks, vs, valids, qbs, kbs, live):
  """The chunked attention proper, on chunk-major inputs: qs [nqc, B, cq, N, H], ks and vs
  [nkc, B, ck, N, H] (any float dtype), valids [nkc, B, ck] bool, qbs [nqc, cq] and kbs
  [nkc, ck] int block ids (or both None), live [nqc or 1, nkc] bool (`_live_chunks`: pairs
  that are False are skipped) -> out [nqc, B, cq, N, H] float32."""
  return _flash_fwd(scale, qs, ks, vs, valids, qbs, kbs, live)[0]


def _flash_fwd(scale, qs, ks, vs, valids, qbs, kbs, live):
  nqc, b, cq, n, h = qs.shape
  live = jnp.broadcast_to(live, (nqc, live.shape[1]))

  def attend(xs):
    """One query chunk against every key chunk: -> out [B, cq, N, H], lse [B, N, cq]."""
    q, qb, live_q = xs
    q = q.astype(jnp.float32) * scale

    def update(carry, xs):
      m, l, acc = carry
      kc, vc, ok, kb = xs
      s = jnp.einsum("bqnh,bknh->bnqk", q, kc.astype(jnp.float32))
      mask = _chunk_mask(ok, qb, kb)
      m_new = jnp.maximum(m, jnp.where(mask, s, -jnp.inf).max(-1))
      m_safe = jnp.where(jnp.isfinite(m_new), m_new, 0.0)
      p = jnp.exp(jnp.where(mask, s - m_safe[..., None], -jnp.inf))
      corr = jnp.exp(jnp.where(jnp.isfinite(m), m, 0.0) - m_safe) * jnp.isfinite(m)
      l = l * corr + p.sum(-1)
      acc = acc * corr[..., None] + jnp.einsum("bnqk,bknh->bnqh", p, vc.astype(jnp.float32))
      return m_new, l, acc

    # A masked chunk would leave m, l and acc as they are: the loop visits only the live key
    # chunks, in order. A loop of run-time length (a while loop) rather than a scan over
    # every chunk with a `lax.cond`: under `jax.checkpoint` in a scanned layer stack (the
    # models' remat), JAX's partial evaluation of a cond inside a scan saved the scores and
    # masks of every (query chunk, key chunk) pair as residuals, one full [S, S] score matrix
    # per head (docs/scale.md); a while loop has no per-iteration residuals to save.
    order = jnp.nonzero(live_q, size=live_q.shape[0], fill_value=0)[0]

    def body(j, carry):
      i = order[j]
      take = lambda x: None if x is None else jax.lax.dynamic_index_in_dim(x, i, 0, False)
      return update(carry, (take(ks), take(vs), take(valids), take(kbs)))

    init = (jnp.full((b, n, cq), -jnp.inf), jnp.zeros((b, n, cq)), jnp.zeros((b, n, cq, h)))
    m, l, acc = jax.lax.fori_loop(0, live_q.sum(), body, init)
    seen = l > 0  # False for a query that sees no key: output 0, and lse 0 (never used)
    out = acc / jnp.where(seen, l, 1.0)[..., None]
    lse = jnp.where(seen, jnp.where(jnp.isfinite(m), m, 0.0) + jnp.log(jnp.where(seen, l, 1.0)),
                    0.0)
    return out.transpose(0, 2, 1, 3), lse

  out, lse = jax.lax.map(attend, (qs, qbs, live))
  return out, (qs, ks, vs, valids, qbs, kbs, live, out, lse)


def _flash_bwd(scale, res, g):
  """Recomputes each [cq, ck] probability block from q, k and the saved log-sum-exp:
  P = exp(S - lse), dV += P^T dO, dP = dO V^T, dS = P * (dP - D) with D = rowsum(dO * O),
  dQ += scale dS K, dK += scale dS^T Q. Key chunks outside (carrying dQ, updated in place),
  query chunks inside (carrying the key chunk's dK and dV); masked pairs (live False) are
  skipped."""
  qs, ks, vs, valids, qbs, kbs, live, out, lse = res
  nqc, b, cq, n, h = qs.shape
  g = g.astype(jnp.float32)
  d = jnp.einsum("cbqnh,cbqnh->cbnq", g, out)  # D [nqc, B, N, cq]

  def kv_chunk(dq, xs):
    kc, vc, ok, kb, live_k = xs
    kc, vc = kc.astype(jnp.float32), vc.astype(jnp.float32)

    def update(carry, xs):
      """-> dK, dV with this query chunk's share, and its dQ share [B, cq, N, H]."""
      dk, dv = carry
      q, do, lse_i, d_i, qb = xs
      q = q.astype(jnp.float32) * scale
      s = jnp.einsum("bqnh,bknh->bnqk", q, kc)
      p = jnp.exp(jnp.where(_chunk_mask(ok, qb, kb), s - lse_i[..., None], -jnp.inf))
      dv = dv + jnp.einsum("bnqk,bqnh->bknh", p, do)
      ds = p * (jnp.einsum("bqnh,bknh->bnqk", do, vc) - d_i[..., None])
      dk = dk + jnp.einsum("bnqk,bqnh->bknh", ds, q)  # q is scaled: dK = scale dS^T Q
      return dk, dv, scale * jnp.einsum("bnqk,bknh->bqnh", ds, kc)

    def skip(carry, _):
      return *carry, jnp.zeros(qs.shape[1:], jnp.float32)

    def q_step(carry, xs):
      dk, dv, dq = carry
      i, *xs, is_live = xs
      dk, dv, dq_i = jax.lax.cond(is_live, update, skip, (dk, dv), xs)
      # outside the cond: only the small share is a branch output, dQ is updated in place
      dq = jax.lax.dynamic_update_index_in_dim(dq, dq[i] + dq_i, i, 0)
      return (dk, dv, dq), None

    zeros = jnp.zeros(kc.shape, jnp.float32)
    (dk, dv, dq), _ = jax.lax.scan(q_step, (zeros, zeros, dq),
                                   (jnp.arange(nqc), qs, g, lse, d, qbs, live_k))
    return dq, (dk.astype(ks.dtype), dv.astype(vs.dtype))

  live = jnp.broadcast_to(live, (nqc, live.shape[1]))
  dq, (dk, dv) = jax.lax.scan(kv_chunk, jnp.zeros(qs.shape, jnp.float32),
                              (ks, vs, valids, kbs, live.T))
  return dq.astype(qs.dtype), dk, dv, None, None, None, None


_flash.defvjp(_flash_fwd, _flash_bwd)


# The attention kernels, one entry each (config.choices.AttentionImpl lists their names for
# validation; tests/test_attention_impls.py checks the two agree).
KERNELS: dict[str, Kernel] = {
    AttentionImpl.XLA: Kernel(_jax_kernel("xla"), key_mask=True, token_blocks=True),
    AttentionImpl.CUDNN: Kernel(_jax_kernel("cudnn"), key_mask=False, token_blocks=True),
    AttentionImpl.SPLASH: Kernel(_splash_kernel, key_mask=False, token_blocks=False),
    AttentionImpl.CHUNKED: Kernel(chunked_attention, key_mask=True, token_blocks=True),
}
