"""The student's KV cache and the streaming generator (relic_jax/memory, relic_jax/inference)."""

import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from relic_jax.inference import camera
from relic_jax.inference import streaming as st
from relic_jax.memory import kv_cache as kv_lib
from relic_jax.models.dit import DiTConfig, WanDiT, unstack_blocks

B, H, W, C = 2, 8, 8, 16
DIT = DiTConfig(dim=64, ffn_dim=128, num_heads=2, num_layers=2, attention_mode="block_causal",
                block_frames=3, action_dim=13, pose_dim=12)


def memory_cfg(mode="full", window=64, schedule=(1,), max_frames=64, kv_dtype="float32",
               overflow="error", pool="mean"):
  return ml_collections.ConfigDict({"mode": mode, "window": window, "schedule": schedule,
                                    "max_frames": max_frames, "kv_dtype": kv_dtype,
                                    "overflow": overflow, "pool": pool})


def conditioning(frames, seed=0):
  """Latents [B, T, h, w, C], per-video-frame actions [B, F, 13] and poses [B, F, 12]."""
  k1, k2, k3 = jax.random.split(jax.random.key(seed), 3)
  f = 1 + 4 * (frames - 1)
  x = jax.random.normal(k1, (B, frames, H, W, C))
  actions = jax.random.uniform(k2, (B, f, 13))
  poses = jax.random.normal(k3, (B, f, 12))
  text = jax.random.normal(jax.random.key(seed + 7), (B, 8, 32))
  return x, actions, poses, text


@functools.lru_cache(maxsize=8)
def model_params(dit=DIT, seed=1):
  x, a, p, txt = conditioning(4)
  model = WanDiT(dit)
  init = jax.jit(lambda k: model.init(k, x, jnp.zeros((B, 4)), txt, actions=a, poses=p))
  params = nn.meta.unbox(init(jax.random.key(seed)))["params"]
  params["proj_out"]["kernel"] = 0.1 * jax.random.normal(jax.random.key(seed + 1),
                                                         params["proj_out"]["kernel"].shape)
  # the zero-initialised RELIC projections made random, so actions and poses matter
  keys = iter(jax.random.split(jax.random.key(seed + 5), 8))
  blocks = params["blocks"]
  for node in (blocks["action_proj"], blocks["self_attn"]["pose_q"], blocks["self_attn"]["pose_k"]):
    node["kernel"] = 0.05 * jax.random.normal(next(keys), node["kernel"].shape)
  return params


@functools.partial(jax.jit, static_argnames=("dit", "spec", "first"))
def _cached_apply(params, cache, xb, tt, text, a, p, lo, *, dit, spec, first):
  # module level, so tests with the same shapes share one compilation
  return WanDiT(dit).apply({"params": params}, xb, tt, text, t_offset=lo, actions=a, poses=p,
                           kv_cache=kv_lib.view(cache, spec, dit), first_frame_in_input=first)


@functools.partial(jax.jit, static_argnames=("spec",))
def _write(cache, k, v, *, spec):
  return kv_lib.write(cache, spec, k, v)


@functools.partial(jax.jit, static_argnames=("dit",))
def full_forward(params, x, t, text, actions, poses, *, dit):
  return WanDiT(dit).apply({"params": params}, x, t, text, actions=actions, poses=poses)


def cached_forward(params, dit, mem, x, t, actions, poses, text, noisy_from):
  """Writes frames [0, noisy_from) block by block at t = 0 through the cache, then runs the
  remaining block against it."""
  spec = kv_lib.spec_from_config(dit, mem, (H, W))
  cache = kv_lib.init(spec, B)

  def run(cache, lo, hi, tt):
    first = lo == 0
    a = actions[:, 0 if first else 1 + 4 * (lo - 1):1 + 4 * (hi - 1)]
    p = poses[:, 0 if first else 1 + 4 * (lo - 1):1 + 4 * (hi - 1)]
    return _cached_apply(params, cache, x[:, lo:hi], tt, text, a, p, lo, dit=dit, spec=spec,
                         first=first)

  bounds = [(0, 1)] + [(s, s + dit.block_frames) for s in range(1, noisy_from, dit.block_frames)]
  for lo, hi in bounds:
    _, (k, v) = run(cache, lo, hi, jnp.zeros((B, hi - lo)))
    cache = _write(cache, k, v, spec=spec)
  out, _ = run(cache, noisy_from, noisy_from + dit.block_frames, t[:, noisy_from:])
  return out, cache, spec


@pytest.mark.parametrize("window,pose_format", [(64, "extrinsics"), (3, "plucker")])
def test_cache_with_no_pooling_equals_one_block_causal_forward(window, pose_format):
  """S all ones: with an unbounded window, or a window of 3 frames whose older frames all move
  into the (unpooled) memory, attending to the cache equals the block-causal forward of the
  whole sequence (clean context at t = 0, the last block noisy)."""
  frames = 10  # [0] [1 2 3] [4 5 6] [7 8 9]
  dit = dataclasses.replace(DIT, pose_format=pose_format)
  x, actions, poses, text = conditioning(frames)
  params = model_params(dit)
  t = jnp.zeros((B, frames)).at[:, 7:].set(jnp.asarray([[900.0, 900.0, 900.0], [300.0] * 3]))
  full = full_forward(params, x, t, text, actions, poses, dit=dit)
  out, cache, _ = cached_forward(params, dit, memory_cfg(window=window), x, t, actions, poses,
                                 text, 7)
  np.testing.assert_allclose(out, full[:, 7:], atol=2e-5)
  assert int(cache.frames) == 7
  # and the check can fail: another context (frame 2 changed) gives another block
  other, _, _ = cached_forward(params, dit, memory_cfg(window=window), x.at[:, 2].add(1.0), t,
                               actions, poses, text, 7)
  assert np.abs(other - full[:, 7:]).max() > 1e-3
  assert int(cache.mem_len) == (0 if window == 64 else 4 * 16)  # frames 0..3 left the window


def test_pooling_schedule_fills_memory_as_documented():
  """RELIC's schedule: frame i leaves the window pooled by S[i mod 18] per side; tokens and
  their positions (the patch centres) are as documented, and pooled keys are the means."""
  dit = dataclasses.replace(DIT, num_layers=1)
  mem = memory_cfg(mode="relic", window=3, schedule=kv_lib.RELIC_SCHEDULE)
  spec = kv_lib.spec_from_config(dit, mem, (H, W))  # 4 x 4 tokens per frame
  cache = kv_lib.init(spec, 1)
  rng = np.random.default_rng(0)
  written = []
  for f in range(9):
    k = rng.standard_normal((1, 1, 16, 2, 32)).astype(np.float32)
    written.append(k)
    cache = kv_lib.write(cache, spec, jnp.asarray(k), jnp.asarray(2 * k))
  # frames 0..5 left the window, pooled by 1, 4, 2, 4, 4, 4 -> 16 + 1 + 4 + 1 + 1 + 1 tokens
  assert int(cache.mem_len) == 24 == kv_lib.attended_tokens(spec, 9) - 3 * 16
  mk = np.asarray(cache.mem_k[0, 0])
  np.testing.assert_allclose(mk[:16], written[0][0, 0], atol=1e-6)
  np.testing.assert_allclose(mk[16], written[1][0, 0].mean(0), atol=1e-6)
  grid = written[2][0, 0].reshape(4, 4, 2, 32)
  np.testing.assert_allclose(
      mk[17:21], grid.reshape(2, 2, 2, 2, 2, 32).mean((1, 3)).reshape(4, 2, 32), atol=1e-6)
  np.testing.assert_allclose(np.asarray(cache.mem_v[0, 0, :24]), 2 * mk[:24], atol=1e-5)
  pos = np.asarray(cache.mem_pos[:24])
  assert pos[16].tolist() == [1.0, 1.5, 1.5]  # the centre of the 4 x 4 frame 1
  assert pos[17:21].tolist() == [[2.0, 0.5, 0.5], [2.0, 0.5, 2.5], [2.0, 2.5, 0.5],
                                 [2.0, 2.5, 2.5]]
  assert np.asarray(cache.win_frame).tolist() == [6, 7, 8]


def test_window_sink_attends_frame_0_and_the_window_and_nothing_else():
  """memory.mode='window_sink': the block reads frame 0 (whole, forever) and the last `window`
  frames; frames in between leave no trace. One layer, so a cached frame's keys and values
  depend on that frame alone and a change to frame f reaches the block only if f is attended."""
  frames = 10  # [0] [1 2 3] [4 5 6] [7 8 9]; window 3: frames 4 5 6 at the last block
  dit = dataclasses.replace(DIT, num_layers=1)
  x, actions, poses, text = conditioning(frames)
  params = model_params(dit)
  t = jnp.zeros((B, frames)).at[:, 7:].set(600.0)

  def block(mode, x):
    mem = memory_cfg(mode=mode, window=3, max_frames=16)
    return cached_forward(params, dit, mem, x, t, actions, poses, text, 7)

  base, cache, spec = block("window_sink", x)
  assert spec.memory_tokens == 16 and int(cache.mem_len) == 16  # frame 0, uncompressed
  assert np.asarray(cache.mem_pos[:16, 0]).tolist() == [0.0] * 16
  assert np.asarray(cache.win_frame).tolist() == [6, 4, 5] and int(cache.dropped) == 0
  assert kv_lib.attended_tokens(spec, 7) == 16 + 3 * 16 == kv_lib.attended_tokens(spec, 12)
  for f in (1, 2, 3):  # older than the window, not frame 0: not attended
    np.testing.assert_array_equal(block("window_sink", x.at[:, f].add(1.0))[0], base)
  for f in (0, 5):  # frame 0 and a window frame: attended
    assert np.abs(block("window_sink", x.at[:, f].add(1.0))[0] - base).max() > 1e-3
  # the contrasts that make the checks able to fail: "window" forgets frame 0, "full" keeps 2
  window = block("window", x)[0]
  np.testing.assert_array_equal(block("window", x.at[:, 0].add(1.0))[0], window)
  assert np.abs(window - base).max() > 1e-3
  full = block("full", x)[0]
  assert np.abs(block("full", x.at[:, 2].add(1.0))[0] - full).max() > 1e-3


def test_pooling_pads_grids_the_factor_does_not_divide():
  """Wan at 480x832 has 30 x 52 tokens: pooled by 4 -> 8 x 13, edge patches averaging only the
  tokens they have."""
  x = jnp.arange(6 * 5, dtype=jnp.float32).reshape(1, 1, 30, 1, 1)
  pooled = kv_lib._pool(x, (6, 5), 4, 30)
  grid = np.arange(30, dtype=np.float32).reshape(6, 5)
  want = [grid[:4, :4].mean(), grid[:4, 4:].mean(), grid[4:, :4].mean(), grid[4:, 4:].mean()]
  np.testing.assert_allclose(np.asarray(pooled[0, 0, :4, 0, 0]), want)
  spec = kv_lib.CacheSpec(30, 40, 128, (30, 52), 6, kv_lib.RELIC_SCHEDULE, 81)
  assert spec.pooled_tokens(4) == 8 * 13 and spec.pooled_tokens(2) == 15 * 26
  # "subsample" keeps each patch's middle token, and its position
  picked = kv_lib._pool(x, (6, 5), 4, 30, "subsample")
  assert np.asarray(picked[0, 0, :4, 0, 0]).tolist() == [grid[1, 1], grid[1, 4], grid[4, 1],
                                                         grid[4, 4]]
  pos = np.asarray(kv_lib._pool_positions((6, 5), 4, 30, "subsample"))[:4]
  assert pos.tolist() == [[1, 1], [1, 4], [4, 1], [4, 4]]


def test_low_precision_kv_storage_stays_close():
  frames = 7
  x, actions, poses, text = conditioning(frames)
  params = model_params()
  t = jnp.zeros((B, frames)).at[:, 4:].set(500.0)
  ref, _, full_spec = cached_forward(params, DIT, memory_cfg(), x, t, actions, poses, text, 4)
  for kv_dtype, tol, bytes_ratio in [("bfloat16", 2e-2, 0.5), ("float8_e4m3fn", 8e-2, 36 / 128)]:
    out, cache, spec = cached_forward(params, DIT, memory_cfg(kv_dtype=kv_dtype), x, t, actions,
                                      poses, text, 4)
    assert cache.win_k.dtype == jnp.dtype(kv_dtype)
    err = float(np.abs(out - ref).max() / np.abs(ref).max())
    assert 0 < err < tol, (kv_dtype, err)
    # fp8: 1 byte per element plus a float32 scale per (token, head) of 32 elements
    assert spec.kv_bytes() / full_spec.kv_bytes() == bytes_ratio


def test_camera_integration_matches_the_data_pipeline():
  from data_pipeline import poses as poses_lib
  rng = np.random.default_rng(3)
  a = np.abs(rng.standard_normal((12, 13))).astype(np.float32) * 0.05
  first = np.eye(4)
  want = poses_lib.integrate_actions(first, np.concatenate([np.zeros((1, 13)), a]), 0.3)[1:]
  got = camera.integrate(jnp.eye(4)[None], jnp.asarray(a)[None], 0.3)[0]
  np.testing.assert_allclose(got, want, atol=1e-5)


# ------------------------------------------------------------------ sessions


def session_config(max_frames=64, **memory):
  from experiments.tiny import get_config
  cfg = get_config()
  cfg.model.update({"action_dim": 13, "pose_dim": 12, "attention_mode": "block_causal"})
  cfg.memory.update({"max_frames": max_frames, "window": 6, **memory})
  return cfg


@pytest.fixture(scope="module")
def tiny_params():
  return model_params()


def walk(n_blocks, seed=0):
  """Plausible actions: forward with a slow pan, [n, 12, 13]."""
  a = np.zeros((n_blocks, 12, 13), np.float32)
  a[:, :, 0] = 1.0
  a[:, :, 8] = 0.03 * (1 + np.random.default_rng(seed).random((n_blocks, 12)))
  return a


def text_embedding():
  return np.asarray(jax.random.normal(jax.random.key(5), (8, 32)))


def start_latent(batch=1):
  return jax.random.normal(jax.random.key(11), (batch, 1, H, W, C))


def test_session_steps_equal_the_offline_scan(tiny_params):
  from relic_jax.inference.session import Session
  cfg = session_config()
  s = Session(cfg, tiny_params)
  state, _ = s.start(text_embedding(), latent=start_latent())
  first = state
  streamed = []
  for a in walk(4):
    state, out = s.step(state, a)
    streamed.append(out["latents"])
  streamed = np.concatenate(streamed, axis=1)
  _, offline = jax.jit(lambda p, st0, a: st.rollout(p, s.spec, st0, a))(
      tiny_params, first.stream, jnp.asarray(walk(4))[:, None])
  np.testing.assert_allclose(streamed, offline, atol=1e-5)
  assert np.isfinite(streamed).all() and streamed.std() > 0.1
  # other actions from the same state make another block (the actions reach the generator)
  _, pan = s.step(first, np.tile(np.eye(13, dtype=np.float32)[9] * 0.2, (12, 1)))
  assert np.abs(np.asarray(pan["latents"]) - streamed[:, :3]).max() > 1e-3


def test_a_long_session_compiles_once(tiny_params):
  from relic_jax.inference.session import Session
  n = 105
  cfg = session_config(max_frames=1 + 3 * n)
  s = Session(cfg, tiny_params)
  state, _ = s.start(text_embedding(), latent=start_latent())
  actions = walk(n)
  for a in actions:
    state, out = s.step(state, a)
  assert state.frames == 1 + 3 * n
  assert s.traces == 1 and s._step._cache_size() == 1
  assert int(state.stream.cache.frames) == 1 + 3 * n
  assert int(state.stream.cache.mem_len) == kv_lib.attended_tokens(s.spec.cache, 1 + 3 * n) - 6 * 16
  assert np.isfinite(np.asarray(out["latents"])).all()


def test_capacity_and_bad_actions_give_clear_errors_and_keep_the_session(tiny_params):
  from relic_jax.inference.session import Session
  cfg = session_config(max_frames=7)  # frame 0 and two blocks
  s = Session(cfg, tiny_params)
  state, _ = s.start(text_embedding(), latent=start_latent())
  a = walk(3)
  bad_cases = [
      (a[0][:5], r"takes the actions of its 12 video frames .* got \[5, 13\]"),
      (np.concatenate([a[0], a[0][:, :1]], 1), r"got \[12, 14\]"),
      (np.where(np.eye(12, 13, dtype=bool), -1.0, a[0]), r"action \[0, 0, 0\] is -1.0: .*"
                                                         r"non-negative .* dolly_out"),
      (np.where(np.eye(12, 13, k=3, dtype=bool), np.nan, a[0]), r"action \[0, 0, 3\] is nan: "
                                                                r"actions must be finite"),
  ]
  for bad, msg in bad_cases:
    with pytest.raises(st.ActionError, match=msg):
      s.step(state, bad)
  s1, out1 = s.step(state, a[0])  # the refused calls changed nothing
  s2, out2 = s.step(s1, a[1])
  clean = Session(cfg, tiny_params)
  c0, _ = clean.start(text_embedding(), latent=start_latent())
  c1, ref1 = clean.step(c0, a[0])
  np.testing.assert_allclose(out1["latents"], ref1["latents"], atol=1e-6)
  with pytest.raises(kv_lib.CacheCapacityError, match=r"make 10 latent frames, but the KV cache "
                                                      r"was sized for config.memory.max_frames=7"):
    s.step(s2, a[2])
  s.step(s1, a[1])  # an earlier state still steps
  # the "drop" policy keeps going: frames that no longer fit are dropped from the memory
  cfg = session_config(max_frames=7, overflow="drop")
  d = Session(cfg, tiny_params)
  state, _ = d.start(text_embedding(), latent=start_latent())
  for x in walk(4):
    state, out = d.step(state, x)
  assert int(state.stream.cache.dropped) > 0 and np.isfinite(np.asarray(out["latents"])).all()


# ------------------------------------------------------------------ RELIC's conditioning wiring


def _record_attention(monkeypatch):
  from relic_jax.models import attention as attn_lib
  calls = []
  real = attn_lib.dot_product_attention

  def spy(q, k, v, **kw):
    calls.append((np.asarray(q), np.asarray(k), np.asarray(v)))
    return real(q, k, v, **kw)
  monkeypatch.setattr(attn_lib, "dot_product_attention", spy)
  return calls


def _attention_inputs(monkeypatch, d_actions=0.0, d_poses=0.0):
  """The (q, k, v) of every attention call (per layer: self-attention, then cross-attention)
  of the unscanned DiT, with the given conditioning and with actions/poses shifted."""
  dit = dataclasses.replace(DIT, scan_layers=False, attention_mode="bidirectional")
  x, actions, poses, text = conditioning(4)
  params = unstack_blocks(model_params(), DIT.num_layers)
  calls = _record_attention(monkeypatch)
  model = WanDiT(dit)
  t = jnp.full((B, 4), 500.0)
  model.apply({"params": params}, x, t, text, actions=actions, poses=poses)
  base = list(calls)
  calls.clear()
  model.apply({"params": params}, x, t, text, actions=actions + d_actions, poses=poses + d_poses)
  return base, calls


def test_pose_reaches_queries_and_keys_only(monkeypatch):
  """Changing the poses changes layer 0's self-attention queries and keys and leaves its values
  (whose input the poses have not touched yet) exactly as they were."""
  base, calls = _attention_inputs(monkeypatch, d_poses=1.0)
  q0, k0, v0 = base[0]
  q1, k1, v1 = calls[0]
  assert np.abs(q1 - q0).max() > 1e-3 and np.abs(k1 - k0).max() > 1e-3
  np.testing.assert_array_equal(v1, v0)
  # cross-attention of layer 0 sees the pose change only through the self-attention output
  np.testing.assert_array_equal(calls[1][1], base[1][1])  # text keys untouched


def test_action_lands_after_self_attention(monkeypatch):
  """Changing the actions leaves layer 0's self-attention inputs (q, k, v) untouched and
  changes what comes after it: layer 0's cross-attention queries."""
  base, calls = _attention_inputs(monkeypatch, d_actions=0.5)
  for i in range(3):
    np.testing.assert_array_equal(calls[0][i], base[0][i])
  assert np.abs(calls[1][0] - base[1][0]).max() > 1e-3  # cross-attention queries moved
  assert np.abs(calls[2][0] - base[2][0]).max() > 1e-3  # and layer 1's self-attention


def test_plucker_rays():
  from relic_jax.models.dit import plucker_rays
  eye = np.eye(4)[:3].reshape(1, 1, 12)
  rays = np.asarray(plucker_rays(jnp.asarray(eye), 2, 2, 90.0))[0, 0]  # [4, 6]
  d = np.array([[-0.5, -0.5, 1], [0.5, -0.5, 1], [-0.5, 0.5, 1], [0.5, 0.5, 1]])
  np.testing.assert_allclose(rays[:, :3], d / np.linalg.norm(d, axis=1, keepdims=True), atol=1e-6)
  np.testing.assert_allclose(rays[:, 3:], 0.0, atol=1e-7)  # through the origin
  moved = np.eye(4)[:3].copy()
  moved[:, 3] = [1.0, 2.0, 3.0]
  rays = np.asarray(plucker_rays(jnp.asarray(moved.reshape(1, 1, 12)), 2, 2, 90.0))[0, 0]
  np.testing.assert_allclose(rays[:, 3:], np.cross([1.0, 2.0, 3.0], rays[:, :3]), atol=1e-6)


def test_the_cache_path_runs_its_own_kernel(monkeypatch):
  """model.cache_attention_impl: attention over the KV cache runs it (here the memory-efficient
  "chunked"), the rest model.attention_impl (here "splash", for the bidirectional teacher on a
  TPU); the blocks equal the all-xla model's."""
  frames = 7
  x, actions, poses, text = conditioning(frames)
  t = jnp.zeros((B, frames)).at[:, 4:].set(500.0)
  params = model_params()
  ref, _, _ = cached_forward(params, DIT, memory_cfg(window=3), x, t, actions, poses, text, 4)
  chunked = dataclasses.replace(DIT, cache_attention_impl="chunked")
  out, _, _ = cached_forward(params, chunked, memory_cfg(window=3), x, t, actions, poses, text,
                             4)
  np.testing.assert_allclose(out, ref, atol=2e-5)
  from relic_jax.models import attention as attn_lib
  used, real = [], attn_lib.dot_product_attention

  def spy(q, k, v, impl="xla", **kw):  # records the kernel, computes with xla (CPU)
    used.append((impl, kw.get("kv_valid") is not None))
    return real(q, k, v, impl="xla" if impl == "splash" else impl, **kw)
  monkeypatch.setattr(attn_lib, "dot_product_attention", spy)
  roles = dataclasses.replace(DIT, attention_impl="splash", cache_attention_impl="chunked")
  out, _, _ = cached_forward(params, roles, memory_cfg(window=3), x, t, actions, poses, text, 4)
  np.testing.assert_allclose(out, ref, atol=2e-5)
  assert {u for u in used if u[1]} == {("chunked", True)}  # self-attention over the cache
  assert {u for u in used if not u[1]} == {("splash", False)}  # cross-attention to the text


def test_the_kernels_that_take_a_key_mask_are_the_configs():
  from relic_jax.config.choices import AttentionImpl
  from relic_jax.models.attention import KERNELS
  assert set(AttentionImpl.with_key_mask()) == {k for k, v in KERNELS.items() if v.key_mask}


def test_a_sharded_session_equals_one_device(tiny_params):
  """Session(mesh=...) on the 8 test devices, RELIC's layout: the batch over data x fsdp = 4,
  the heads (and the KV cache) over tensor = 2, params FSDP; the blocks equal one device's,
  the cache stays split by head, and the step compiles once."""
  from jax.sharding import NamedSharding
  from jax.sharding import PartitionSpec as P
  from relic_jax.inference.session import Session
  from relic_jax.parallel import mesh as mesh_lib
  cfg = session_config()
  cfg.mesh.shape = {"data": 1, "fsdp": 4, "context": 1, "tensor": 2}
  mesh = mesh_lib.make_mesh(cfg.mesh)
  one, many = Session(cfg, tiny_params, batch=4), Session(cfg, tiny_params, batch=4, mesh=mesh)
  text = np.broadcast_to(text_embedding(), (4, 8, 32))
  s1, _ = one.start(text, latent=start_latent(4))
  s8, _ = many.start(text, latent=start_latent(4))
  for a in walk(3):
    s1, o1 = one.step(s1, np.broadcast_to(a, (4, 12, 13)))
    s8, o8 = many.step(s8, np.broadcast_to(a, (4, 12, 13)))
    np.testing.assert_allclose(np.asarray(o8["latents"]), np.asarray(o1["latents"]), atol=2e-5)
  cache = s8.stream.cache
  by_head = NamedSharding(mesh, P(None, ("data", "fsdp"), None, "tensor", None))
  for x in (cache.win_k, cache.win_v, cache.mem_k, cache.mem_v):
    assert x.sharding.is_equivalent_to(by_head, x.ndim), x.sharding
  assert many.traces == 1
  qkv = many.params["blocks"]["self_attn"]["q"]["kernel"]  # [layers, embed, heads]
  assert qkv.sharding.is_equivalent_to(NamedSharding(mesh, P(None, "fsdp", "tensor")), 3)
