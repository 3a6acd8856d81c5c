"""The attention kernels agree: TPU splash attention (run here in the Pallas interpreter) equals
the XLA reference for bidirectional, block-causal and cross-attention, forward and backward, on
raw q/k/v and inside the whole DiT, and sharded with shard_map over data x fsdp x tensor and
context meshes. Shapes are small: the interpreter is slow."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from relic_jax.config import validate
from relic_jax.config.base import DEFAULT_RULES
from relic_jax.models import attention as attn_lib
from relic_jax.models.block_causal import BlockCausal, block_ids
from relic_jax.models import splash as splash_lib
from relic_jax.parallel import mesh as mesh_lib
from relic_jax.training.optimizer import make_optimizer
from relic_jax.training.state import state_shardings
from relic_jax.training.teacher import TeacherTask
from tests.helpers import inputs, make_model, random_params, tiny_config

FWD_TOL = dict(atol=2e-5, rtol=1e-5)
GRAD_TOL = dict(atol=5e-5, rtol=1e-4)


def _qkv(b, sq, sk, n, h, seed=0):
  ks = jax.random.split(jax.random.key(seed), 3)
  return (jax.random.normal(ks[0], (b, sq, n, h)), jax.random.normal(ks[1], (b, sk, n, h)),
          jax.random.normal(ks[2], (b, sk, n, h)))


def _loss(impl, block_causal):
  def f(q, k, v):
    out = attn_lib.dot_product_attention(q, k, v, impl=impl, scale=0.3, block_causal=block_causal)
    return jnp.sum(jnp.sin(out)), out
  return f


def _check_fwd_and_grads(q, k, v, block_causal):
  (_, out), grads = jax.value_and_grad(_loss("splash", block_causal), argnums=(0, 1, 2),
                                       has_aux=True)(q, k, v)
  (_, ref), ref_grads = jax.value_and_grad(_loss("xla", block_causal), argnums=(0, 1, 2),
                                           has_aux=True)(q, k, v)
  np.testing.assert_allclose(out, ref, **FWD_TOL)
  for name, g, r in zip("qkv", grads, ref_grads):
    np.testing.assert_allclose(g, r, **GRAD_TOL, err_msg=f"d{name}")


@pytest.mark.parametrize("frames,tokens,block_frames,head_dim", [
    (4, 16, None, 16),  # 64 tokens, bidirectional: padded to 128
    (4, 16, 1, 16),     # block-causal, one frame per block
    (6, 24, 2, 64),     # 144 tokens: padded to 256; blocks of 48 straddle the 128-token tiles
    (6, 24, 3, 16),     # blocks of 72 tokens
    (6, 24, None, 64),
])
def test_splash_equals_xla_forward_and_grads(frames, tokens, block_frames, head_dim):
  s = frames * tokens
  layout = None if block_frames is None else BlockCausal(block_frames * tokens)
  _check_fwd_and_grads(*_qkv(2, s, s, 2, head_dim), layout)


def test_block_causal_layout_equals_block_ids():
  """The static layout gives the xla path exactly the mask the per-token block ids give."""
  frames, tokens, block_frames = 6, 24, 2
  ids = block_ids(frames, tokens, block_frames)
  layout = BlockCausal(block_frames * tokens)
  np.testing.assert_array_equal(layout.q_ids(frames * tokens), ids)
  q, k, v = _qkv(2, frames * tokens, frames * tokens, 2, 16)
  np.testing.assert_array_equal(
      attn_lib.dot_product_attention(q, k, v, block_causal=layout),
      attn_lib.dot_product_attention(q, k, v, q_blocks=ids, kv_blocks=ids))
  with pytest.raises(ValueError, match="static block layout"):
    attn_lib.dot_product_attention(q, k, v, impl="splash", q_blocks=ids, kv_blocks=ids)


def test_splash_cross_attention_and_offset_blocks():
  # 64 video tokens attend to 8 text tokens (keys padded 8 -> 128), unmasked
  _check_fwd_and_grads(*_qkv(2, 64, 8, 2, 16), None)
  # queries are the last 2 frames of a 6-frame clip (offset), keys the whole clip
  tokens = 24
  layout = BlockCausal(2 * tokens, q_offset=4 * tokens)
  q, k, v = _qkv(1, 2 * tokens, 6 * tokens, 2, 16, seed=1)
  np.testing.assert_allclose(
      *(attn_lib.dot_product_attention(q, k, v, impl=impl, block_causal=layout)
        for impl in ("splash", "xla")), **FWD_TOL)


def test_mask_is_lazy_and_right():
  mask = splash_lib.SplashMask((256, 256), q_len=200, kv_len=190,
                               block_causal=BlockCausal(48))
  q = np.arange(128, 256)[:, None]
  kv = np.arange(0, 128)[None, :]
  np.testing.assert_array_equal(mask[128:256, 0:128], (kv // 48 <= q // 48) | (q >= 200))
  kv = kv + 128  # the last tile also holds padded keys (>= 190): never visible
  np.testing.assert_array_equal(mask[128:256, 128:256],
                                (kv < 190) & ((kv // 48 <= q // 48) | (q >= 200)))
  # The 14B shape: 21 frames x 1560 tokens = 32,760 tokens (padded to 32,768), blocks of 3
  # frames. The kernel's host-side tables are per 512 x 512 tile plus one index per token,
  # never S x S (which would be 1 GiB of bools).
  s, s_pad = 32760, 32768
  kernel = splash_lib.make_kernel(s, s, s_pad, s_pad, 40, BlockCausal(3 * 1560),
                                  interpret=True)
  sizes = [x.size for x in jax.tree.leaves(kernel)]
  assert max(sizes) == s_pad  # q_sequence; data_next / block_mask are (1, 64, 64)
  assert sum(sizes) < 10 * s_pad
  assert kernel.fwd_mask_info.partial_mask_blocks is None  # the kernel computes the mask


@pytest.mark.parametrize("mode", ["bidirectional", "block_causal"])
def test_dit_with_splash_equals_xla(mode):
  x, t, txt = inputs(t=4)
  ref = make_model(attention_mode=mode, block_frames=2)
  params = random_params(ref, x, t, txt)
  splash = make_model(attention_mode=mode, block_frames=2, attention_impl="splash")
  np.testing.assert_allclose(splash.apply({"params": params}, x, t, txt),
                             ref.apply({"params": params}, x, t, txt), **FWD_TOL)


@pytest.mark.parametrize("layout,sq,sk", [(BlockCausal(48), 144, 144), (None, 256, 128)],
                         ids=["block_causal", "full_unpadded"])
def test_sharded_attention_grads_with_context_parallelism(layout, sq, sk):
  """Queries split over context=2 (keys all-gathered), heads over tensor=2, batch over fsdp=2:
  the key/value gradients must be summed over the context shards. full_unpadded: every query
  sees every key and no length needs padding (the text cross-attention's case), where JAX's
  mask processing fails on a full mask split over query shards; each shard runs the kernel of
  its local length instead."""
  cfg = tiny_config()
  cfg.mesh.shape = {"data": 1, "fsdp": 2, "context": 2, "tensor": 2}
  mesh = mesh_lib.make_mesh(cfg.mesh)
  q, k, v = _qkv(2, sq, sk, 4, 16)
  (_, ref), ref_grads = jax.value_and_grad(_loss("xla", layout), argnums=(0, 1, 2),
                                           has_aux=True)(q, k, v)
  with jax.set_mesh(mesh), nn.logical_axis_rules(DEFAULT_RULES):
    sh = NamedSharding(mesh, P(("data", "fsdp"), "context", "tensor", None))
    fn = jax.jit(jax.value_and_grad(_loss("splash", layout), argnums=(0, 1, 2), has_aux=True))
    args = [jax.device_put(a, sh) for a in (q, k, v)]
    (_, out), grads = fn(*args)
    assert "manual_computation" in fn.lower(*args).as_text()  # the kernel runs in shard_map
  np.testing.assert_allclose(out, ref, **FWD_TOL)
  for name, g, r in zip("qkv", grads, ref_grads):
    np.testing.assert_allclose(g, r, **GRAD_TOL, err_msg=f"d{name}")


@pytest.mark.parametrize("mesh_shape,mode", [
    ({"data": 2, "fsdp": 2, "context": 1, "tensor": 2}, "block_causal"),
    ({"data": 1, "fsdp": 2, "context": 2, "tensor": 2}, "bidirectional"),
], ids=["data2_fsdp2_tensor2", "fsdp2_context2_tensor2"])
def test_sharded_dit_with_splash_equals_single_device_xla(mesh_shape, mode):
  cfg = tiny_config(dim=64, num_heads=4, attention_mode=mode, block_frames=2)
  cfg.mesh.shape = mesh_shape
  cfg.train.batch_size = 4
  task = TeacherTask(cfg)
  x, t, txt = inputs(b=4, t=cfg.data.latent_frames, dt=cfg.model.text_dim)
  params = random_params(task.model, x, t, txt)
  ref = task.model.apply({"params": params}, x, t, txt)  # xla, one device

  cfg.model.attention_impl = "splash"
  task = TeacherTask(cfg)
  mesh = mesh_lib.make_mesh(cfg.mesh)
  rules = mesh_lib.rules(cfg.mesh)
  _, sh = state_shardings(task.init_params, make_optimizer(cfg.train), mesh, rules,
                          jax.random.key(0))
  params = jax.device_put(params, sh.params)
  batch = mesh_lib.global_batch(mesh, rules, {"x": np.asarray(x), "t": np.asarray(t),
                                              "txt": np.asarray(txt)})
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    fwd = jax.jit(lambda p, b: task.model.apply({"params": p}, b["x"], b["t"], b["txt"]))
    out = fwd(params, batch)
    assert "manual_computation" in fwd.lower(params, batch).as_text()
  np.testing.assert_allclose(out, ref, **FWD_TOL)


def test_splash_lowers_for_tpu(monkeypatch):
  """Without a TPU: the non-interpret kernel (padding, lazy block-causal mask, backward) lowers
  to Mosaic for a TPU target, pretending the CPU is a TPU v5e. This checks block shapes and
  that the mask function is expressible in the kernel; compiling needs a real TPU."""
  tpu_info = pytest.importorskip("jax._src.pallas.mosaic.tpu_info")
  if not hasattr(tpu_info, "registry") or not hasattr(tpu_info, "_get_tpu_info_impl"):
    pytest.skip("JAX's private TPU info registry changed")
  monkeypatch.setitem(tpu_info.registry, jax.devices()[0].device_kind,
                      lambda: tpu_info._get_tpu_info_impl(tpu_info.ChipVersion.TPU_V5E, 1))

  def loss(q, k, v):
    out = splash_lib.splash_attention(q, k, v, block_causal=BlockCausal(72),
                                      interpret=False)
    return jnp.sum(out.astype(jnp.float32))

  a = jax.ShapeDtypeStruct((1, 144, 2, 64), jnp.bfloat16)
  exported = jax.export.export(jax.jit(jax.grad(loss, argnums=(0, 1, 2))), platforms=["tpu"])(
      a, a, a)
  assert exported.mlir_module().count("tpu_custom_call") == 3  # forward, dq, dkv kernels


@pytest.mark.parametrize("masking", ["none", "kv_valid", "block_causal"])
def test_chunked_attention_equals_xla_forward_and_grads(masking):
  k1, k2, k3 = jax.random.split(jax.random.key(4), 3)
  q = jax.random.normal(k1, (2, 48, 2, 16))
  k = jax.random.normal(k2, (2, 70 if masking != "block_causal" else 48, 2, 16))
  v = jax.random.normal(k3, k.shape)
  kw = {"kv_valid": jnp.arange(70) < 61} if masking == "kv_valid" else (
      {"block_causal": BlockCausal(12, q_offset=4, kv_offset=4)}
      if masking == "block_causal" else {})

  def loss(impl):
    def f(q, k, v):
      if impl == "chunked":
        # 16 does not divide the 70 keys, nor 32 the 48 queries: both paddings are exercised
        out = attn_lib.chunked_attention(q, k, v, kv_chunk=16, q_chunk=32, **kw)
      else:
        out = attn_lib.dot_product_attention(q, k, v, impl="xla", **kw)
      return jnp.sum(out ** 2), out
    return f
  (_, ref), gref = jax.value_and_grad(loss("xla"), (0, 1, 2), has_aux=True)(q, k, v)
  (_, out), gout = jax.value_and_grad(loss("chunked"), (0, 1, 2), has_aux=True)(q, k, v)
  np.testing.assert_allclose(out, ref, atol=2e-6)
  for a, b in zip(gout, gref):
    np.testing.assert_allclose(a, b, atol=1e-5)


@pytest.mark.parametrize("mode", ["bidirectional", "block_causal"])
def test_chunked_is_a_config_choice_and_the_teacher_runs_with_it(mode):
  """model.attention_impl='chunked' validates, and the teacher's forward with it equals xla."""
  cfg = tiny_config(attention_mode=mode, block_frames=3, attention_impl="xla")
  x, t, txt = inputs(b=2, t=cfg.data.latent_frames, dt=cfg.model.text_dim)
  task = TeacherTask(cfg)
  params = random_params(task.model, x, t, txt)
  ref = task.model.apply({"params": params}, x, t, txt)

  cfg.model.attention_impl = "chunked"
  assert validate(cfg) is cfg
  task = TeacherTask(cfg)
  assert task.model.cfg.attention_impl == "chunked"
  out = jax.jit(lambda p: task.model.apply({"params": p}, x, t, txt))(params)
  np.testing.assert_allclose(out, ref, **FWD_TOL)


def test_the_kernel_table_is_the_config_choice():
  from relic_jax.config.choices import AttentionImpl
  from relic_jax.models.attention import KERNELS
  assert sorted(KERNELS) == sorted(AttentionImpl.values())


def _chunked_case(masking, dtype=jnp.float32):
  """q, k, v (odd lengths: 8-token chunks split them unevenly) and the mask keywords of one
  masking mode, with the [B, Sq] rows that see at least one key."""
  sq, sk = (45, 45) if masking in ("block_causal", "block_ids") else (37, 29)
  q, k, v = (x.astype(dtype) for x in _qkv(2, sq, sk, 3, 16, seed=7))
  kw = {}
  if masking == "block_causal":  # the kv offset leaves the first queries with no key
    kw = {"block_causal": BlockCausal(10, q_offset=3, kv_offset=10)}
  elif masking == "block_ids":  # queries in block -1 see nothing; blocks not monotone
    ids = jnp.array([(i * 7) % 5 - 1 for i in range(45)])
    kw = {"q_blocks": ids, "kv_blocks": jnp.maximum(ids, 0)}
  elif masking == "kv_valid_1d":
    kw = {"kv_valid": (jnp.arange(sk) % 4 != 1) & (jnp.arange(sk) < 25)}
  elif masking == "kv_valid_2d":  # the second batch element has no key: every row masked
    kw = {"kv_valid": jnp.stack([jnp.arange(sk) >= 6, jnp.zeros(sk, bool)])}
  qb, kb = kw.get("q_blocks"), kw.get("kv_blocks")
  if "block_causal" in kw:
    qb, kb = kw["block_causal"].q_ids(sq), kw["block_causal"].kv_ids(sk)
  seen = jnp.ones((2, sq, sk), bool)
  if qb is not None:
    seen = seen & (kb[None, :] <= qb[:, None])[None]
  if "kv_valid" in kw:
    seen = seen & jnp.broadcast_to(kw["kv_valid"], (2, sk))[:, None, :]
  return (q, k, v), kw, seen.any(-1)


def _max_rel_err(a, b):
  a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
  assert np.isfinite(a).all()
  return np.abs(a - b).max() / np.abs(b).max()


@pytest.mark.parametrize("masking", ["none", "block_causal", "block_ids", "kv_valid_1d",
                                     "kv_valid_2d", "bf16"])
def test_chunked_custom_vjp_equals_xla(masking):
  """The flash-style forward and recomputing backward equal xla for every masking mode, several
  chunks each way with padding. xla gives a query that sees no key the mean of all values; the
  chunked kernel gives zeros, so those rows are compared with zero and weighted 0 in the loss."""
  dtype = jnp.bfloat16 if masking == "bf16" else jnp.float32
  (q, k, v), kw, seen = _chunked_case("kv_valid_2d" if masking == "bf16" else masking, dtype)
  assert (masking in ("none", "kv_valid_1d")) == bool(seen.all())
  w = jax.random.normal(jax.random.key(3), q.shape) * seen[:, :, None, None]

  def loss(impl, dt):
    def f(q, k, v):
      q, k, v = (x.astype(dt) for x in (q, k, v))
      if impl == "chunked":
        out = attn_lib.chunked_attention(q, k, v, scale=0.3, kv_chunk=8, q_chunk=8, **kw)
      else:
        out = attn_lib.dot_product_attention(q, k, v, impl="xla", scale=0.3, **kw)
      return jnp.sum(w * out.astype(jnp.float32)), out
    return jax.value_and_grad(f, (0, 1, 2), has_aux=True)

  (_, out), grads = loss("chunked", dtype)(q, k, v)
  (_, ref), ref_grads = loss("xla", jnp.float32)(q, k, v)  # float32 reference, also for bf16
  assert out.dtype == dtype and all(g.dtype == dtype for g in grads)
  tol = 1e-2 if dtype == jnp.bfloat16 else 1e-5
  rows = seen[:, :, None, None]
  assert _max_rel_err(jnp.where(rows, out, 0), jnp.where(rows, ref, 0)) < tol
  np.testing.assert_array_equal(jnp.where(rows, 0, out.astype(jnp.float32)), 0)
  for name, g, r in zip("qkv", grads, ref_grads):
    assert _max_rel_err(g, r) < tol, f"d{name}"


def test_chunked_masked_rows_get_zero_gradients():
  """A query that sees no key passes no gradient (and no NaN) even with a nonzero cotangent."""
  (q, k, v), kw, seen = _chunked_case("block_causal")
  assert not seen.all()
  grads = jax.grad(lambda q, k, v: jnp.sum(jnp.sin(attn_lib.chunked_attention(
      q, k, v, kv_chunk=8, q_chunk=8, **kw))), (0, 1, 2))(q, k, v)
  assert all(np.isfinite(g).all() for g in grads)
  np.testing.assert_array_equal(jnp.where(seen[:, :, None, None], 0, grads[0]), 0)
  assert np.abs(grads[1]).max() > 0


def test_chunked_gradient_memory_is_linear_in_sequence():
  """The custom_vjp backward recomputes scores from q, k, v and the log-sum-exp, so the
  gradient's temporaries are a small multiple of the inputs. Measured on CPU at this shape:
  about 21 MB (1.7x q+k+v) now; the former plain autodiff of the rematerialised scan kept every
  key chunk's float32 carry for every query chunk: 177 MB (14x) here, 2.37 GB (47x) at
  S=32768, where the new backward needs 84 MB (1.7x)."""
  s = 8192
  a = jax.ShapeDtypeStruct((1, s, 2, 64), jnp.float32)

  def loss(q, k, v):
    return jnp.sum(attn_lib.chunked_attention(q, k, v, kv_chunk=256, q_chunk=256) ** 2)
  compiled = jax.jit(jax.grad(loss, argnums=(0, 1, 2))).lower(a, a, a).compile()
  temp = compiled.memory_analysis().temp_size_in_bytes
  assert temp < 4 * (3 * s * 2 * 64 * 4), temp


def _cache_case():
  """A KV cache 10% full, as the streaming student reads it: [pooled memory (a filled prefix),
  window (ring: its first frames filled), the block's own keys (all valid)] of 64 queries; batch
  row 1 has less memory than row 0."""
  mem, win, blk = 256, 64, 64
  q, k, v = _qkv(2, blk, mem + win + blk, 2, 16, seed=11)
  pos = jnp.arange(mem + win + blk)
  fill = jnp.array([24, 9])[:, None]  # memory slots filled per row
  valid = jnp.where(pos < mem, pos < fill,
                    jnp.where(pos < mem + win, pos < mem + win // 2, True))
  return (q, k, v), valid


def test_chunked_skips_masked_chunks(monkeypatch):
  """Masked (query chunk, key chunk) pairs run no attention work: the forward loops over the
  live key chunks of each query chunk only, the backward branches with `cond` on a per-pair
  flag; 8 of the cache's 12 key chunks (the empty
  memory and window slots) are flagged dead (and a block-causal layout's pairs above the
  diagonal); the results equal xla and those computed with nothing skipped; and the flag is
  what decides (all flagged dead: zeros)."""
  (q, k, v), valid = _cache_case()
  w = jax.random.normal(jax.random.key(5), q.shape)

  def grads(impl):
    def f(q, k, v):
      if impl == "chunked":
        out = attn_lib.chunked_attention(q, k, v, kv_valid=valid, kv_chunk=32, q_chunk=32)
      else:
        out = attn_lib.dot_product_attention(q, k, v, impl="xla", kv_valid=valid)
      return jnp.sum(w * out), out
    return jax.jit(jax.value_and_grad(f, (0, 1, 2), has_aux=True))

  fwd_jaxpr = str(jax.make_jaxpr(lambda *a: attn_lib.chunked_attention(
      *a, kv_valid=valid, kv_chunk=32, q_chunk=32))(q, k, v))
  bwd_jaxpr = str(jax.make_jaxpr(jax.grad(lambda *a: jnp.sum(attn_lib.chunked_attention(
      *a, kv_valid=valid, kv_chunk=32, q_chunk=32)), (0, 1, 2)))(q, k, v))
  # forward: a loop over the live key chunks only; backward: a cond per pair
  assert " while[" in fwd_jaxpr and " cond[" not in fwd_jaxpr and " cond[" in bwd_jaxpr

  live = attn_lib._live_chunks(valid.reshape(2, 12, 32).swapaxes(0, 1), None, None)
  np.testing.assert_array_equal(live[0], jnp.isin(jnp.arange(12), jnp.array([0, 8, 10, 11])))
  (_, ref), ref_grads = grads("xla")(q, k, v)
  (_, out), out_grads = grads("chunked")(q, k, v)
  np.testing.assert_allclose(out, ref, atol=2e-6)
  for a, b in zip(out_grads, ref_grads):
    np.testing.assert_allclose(a, b, atol=1e-5)

  real = attn_lib._live_chunks
  monkeypatch.setattr(attn_lib, "_live_chunks", lambda *a: jnp.ones_like(real(*a)))
  (_, full), full_grads = grads("chunked")(q, k, v)  # nothing skipped: the same numbers
  np.testing.assert_allclose(out, full, atol=1e-6, rtol=1e-6)
  for a, b in zip(out_grads, full_grads):
    np.testing.assert_allclose(a, b, atol=1e-6, rtol=1e-6)
  monkeypatch.setattr(attn_lib, "_live_chunks", lambda *a: jnp.zeros_like(real(*a)))
  (_, none), none_grads = grads("chunked")(q, k, v)  # everything skipped: no work, zeros
  np.testing.assert_array_equal(none, 0)
  assert all(not np.asarray(g).any() for g in none_grads)
  monkeypatch.undo()

  # block ids: with 8-token chunks, a key chunk whose blocks are all above a query chunk's
  (q, k, v), kw, _ = _chunked_case("block_causal")
  layout = kw["block_causal"]
  qbs = jnp.pad(layout.q_ids(45), (0, 3), constant_values=-1).reshape(6, 8)
  kbs = jnp.pad(layout.kv_ids(45), (0, 3)).reshape(6, 8)
  valids = jnp.broadcast_to((jnp.arange(48) < 45).reshape(6, 1, 8), (6, 2, 8))
  live = attn_lib._live_chunks(valids, qbs, kbs)
  expect = ((kbs[None, :, None, :] <= qbs[:, None, :, None]) & valids[None, :, 0, None, :]).any(
      (2, 3))
  np.testing.assert_array_equal(live, expect)
  assert 0 < int(live.sum()) < live.size


@pytest.mark.parametrize("policy", ["nothing_saveable", "dots_saveable"])
def test_chunked_saves_no_scores_under_remat_in_a_layer_scan(policy):
  """The models scan their layers with `jax.checkpoint`: there, the chunked kernel must keep
  no per-(query chunk, key chunk) array, or its memory is the full [S, S] scores it exists to
  avoid (a `lax.cond` in the forward's scan made JAX save every pair's scores and mask:
  1.5 GiB per device in `small`'s teacher at 8,192 tokens, docs/scale.md)."""
  q = jax.random.normal(jax.random.key(0), (1, 512, 2, 16))
  remat = jax.checkpoint(lambda c: attn_lib.chunked_attention(c, c, c, kv_chunk=64, q_chunk=64),
                         policy=getattr(jax.checkpoint_policies, policy))

  def loss(x):
    x, _ = jax.lax.scan(lambda c, _: (c + remat(c), None), x, None, length=2)
    return x.sum()

  hlo = jax.jit(jax.grad(loss)).lower(q).as_text()
  assert "8x8x1x2x64x" not in hlo  # [query chunks, key chunks, B, N, 64, ...]
