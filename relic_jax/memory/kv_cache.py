"""RELIC's student KV cache: a rolling window of recent latent frames plus a compressed memory
of every older one, as explicit fixed-capacity pytrees (a session never recompiles).

Per layer (leading axis L) and batch row, for P = h' * w' tokens per latent frame:
  window  [L, B, w*P, N, H]  the last w latent frames, uncompressed, in w ring slots
                             (frame i lives in slot i mod w; `win_frame` says which frame a
                             slot holds, -1 = empty)
  memory  [L, B, M + P, N, H] every frame that has left the window, spatially pooled by
                             S[i mod len(S)] per side (RELIC: S = [1,4,2,4,4,4,2,4,4,2,4,4,4,2,
                             4,4,2,4]); `mem_len` tokens are filled, appended in frame order.
                             M is sized from the maximum horizon (`capacity`); the P extra
                             tokens are slack for fixed-size writes.
What is cached, and how pooled tokens are formed (the choice the paper leaves open):
  * keys are cached *before* RoPE (after the pose embedding was added and QK-norm applied) with
    their (t, h, w) positions; RoPE is applied when they are read, so a pooled token gets the
    rotation of its own position instead of an average of rotated vectors;
  * `memory.pool="mean"` (default): a pooled token's key and value are the means of the (up
    to) s x s tokens it covers, and its position is the mean of theirs (the centre of the
    patch, at the frame's t). The pose embedding is per latent frame, so the pooled key keeps
    exactly its frame's pose term (the mean of keys that all carry it). Grids that s does not
    divide are padded: edge patches average only the tokens they have (30 x 52 tokens pooled
    by 4 -> 8 x 13). `"subsample"`: the patch keeps its middle token (key, value and position
    exactly as they were).
Storage dtype (`memory.kv_dtype`): float32, bfloat16, or float8_e4m3fn with a float32 scale
per (token, head) (amax / 448), dequantized on read.

Modes (`memory.mode`): "relic" (window + compressed memory), "full" (window + memory with S
all ones: every frame uncompressed, the full-history baseline), "window" (no memory: frames
that leave the window are dropped), "window_sink" (the window plus frame 0 kept forever,
uncompressed, and no other memory: the baseline that separates RELIC's memory from merely
keeping the input image, which RELIC's S[0] = 1 also keeps whole). Past capacity
(`memory.overflow`): "error" (the session refuses the step, checked on the host) or "drop"
(frames that no longer fit are dropped from the memory; `dropped` counts them). These choices are
declared in `config.choices` (MemoryMode, MemoryPool, KVDtype, Overflow).

The DiT reads the cache through `view`, which builds the model's own `models.kv.KVView` (the
memory and window buffers as two segments, RoPE angles of their positions, validity): the model
never sees this storage layout.
"""

import dataclasses
import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import struct

from relic_jax.config.choices import KVDtype, MemoryMode, MemoryPool, Overflow
from relic_jax.models import rope as rope_lib
from relic_jax.models.kv import KVView, LayerKV, dequantize

RELIC_SCHEDULE = (1, 4, 2, 4, 4, 4, 2, 4, 4, 2, 4, 4, 4, 2, 4, 4, 2, 4)
FP8_MAX = 448.0


class CacheCapacityError(ValueError):
  """A session asked for more latent frames than its KV cache was sized for."""


@dataclasses.dataclass(frozen=True)
class CacheSpec:
  """Static shape of a KV cache (hashable: part of the jitted functions' signature)."""
  num_layers: int
  num_heads: int
  head_dim: int
  grid: tuple[int, int]          # (h', w') tokens per latent frame
  window: int                    # w latent frames
  schedule: tuple[int, ...]      # pooling factor per side of frame i: schedule[i % len]
  max_frames: int                # latent frames a session may hold (incl. frame 0)
  kv_dtype: str = KVDtype.FLOAT32.value
  use_memory: bool = True
  overflow: str = Overflow.ERROR.value
  pool: str = MemoryPool.MEAN.value
  sink_only: bool = False        # window_sink: the memory keeps frame 0 alone, the rest drop

  @property
  def tokens_per_frame(self) -> int:
    return self.grid[0] * self.grid[1]

  def pooled_tokens(self, factor: int) -> int:
    return math.ceil(self.grid[0] / factor) * math.ceil(self.grid[1] / factor)

  def frame_tokens_in_memory(self, frame: int) -> int:
    return self.pooled_tokens(self.schedule[frame % len(self.schedule)])

  @property
  def memory_tokens(self) -> int:
    """M: the tokens of every frame that can leave the window within max_frames."""
    if not self.use_memory:
      return 0
    leaving = max(self.max_frames - self.window, 0)
    if self.sink_only:
      leaving = min(leaving, 1)
    return sum(self.frame_tokens_in_memory(i) for i in range(leaving))

  @property
  def memory_slots(self) -> int:
    return self.memory_tokens + self.tokens_per_frame if self.use_memory else 0

  @property
  def quantized(self) -> bool:
    return self.kv_dtype == KVDtype.FLOAT8_E4M3FN

  def kv_bytes(self, batch: int = 1) -> int:
    """Bytes of the cache's K and V buffers (and fp8 scales) at capacity."""
    tokens = self.window * self.tokens_per_frame + self.memory_slots
    per_token = 2 * self.num_heads * (self.head_dim * jnp.dtype(self.kv_dtype).itemsize
                                      + (4 if self.quantized else 0))
    return int(self.num_layers * batch * tokens * per_token)


def spec_from_config(model_cfg, memory_cfg: ml_collections.ConfigDict, latent_hw: tuple[int, int],
                     max_frames: int | None = None) -> CacheSpec:
  """The cache of a DiT (model config or DiTConfig) on latents of latent_hw, per config.memory."""
  get = (lambda k: model_cfg[k]) if isinstance(model_cfg, ml_collections.ConfigDict) else (
      lambda k: getattr(model_cfg, k))
  _, ph, pw = get("patch_size")
  mode = memory_cfg.mode
  if mode not in MemoryMode.values():
    raise ValueError(f"config.memory.mode={mode!r}: unknown. Fix: use one of "
                     f"{MemoryMode.values()}.")
  schedule = tuple(memory_cfg.schedule) if mode == MemoryMode.RELIC else (1,)  # frame 0 whole
  return CacheSpec(num_layers=get("num_layers"), num_heads=get("num_heads"),
                   head_dim=get("dim") // get("num_heads"),
                   grid=(latent_hw[0] // ph, latent_hw[1] // pw), window=memory_cfg.window,
                   schedule=schedule, max_frames=max_frames or memory_cfg.max_frames,
                   kv_dtype=memory_cfg.kv_dtype, use_memory=mode != MemoryMode.WINDOW,
                   overflow=memory_cfg.overflow,
                   pool=memory_cfg.get("pool", MemoryPool.MEAN.value),
                   sink_only=mode == MemoryMode.WINDOW_SINK)


@struct.dataclass
class KVCache:
  win_k: jax.Array        # [L, B, w*P, N, H]
  win_v: jax.Array
  win_scale: jax.Array    # [2, L, B, w*P, N] float32 (fp8) or [0]
  win_frame: jax.Array    # [w] int32, -1 = empty
  mem_k: jax.Array        # [L, B, M+P, N, H]
  mem_v: jax.Array
  mem_scale: jax.Array    # [2, L, B, M+P, N] or [0]
  mem_pos: jax.Array      # [M+P, 3] float32 (t, h, w)
  mem_len: jax.Array      # [] int32
  frames: jax.Array       # [] int32: latent frames written so far (the next frame's index)
  dropped: jax.Array      # [] int32: frames dropped from a full memory ("drop" policy)


def init(spec: CacheSpec, batch: int) -> KVCache:
  l, n, h, p = spec.num_layers, spec.num_heads, spec.head_dim, spec.tokens_per_frame
  dt = jnp.dtype(spec.kv_dtype)
  wt, mt = spec.window * p, spec.memory_slots
  scale = lambda t: jnp.ones((2, l, batch, t, n), jnp.float32) if spec.quantized else \
      jnp.zeros((0,), jnp.float32)
  return KVCache(
      win_k=jnp.zeros((l, batch, wt, n, h), dt), win_v=jnp.zeros((l, batch, wt, n, h), dt),
      win_scale=scale(wt), win_frame=jnp.full((spec.window,), -1, jnp.int32),
      mem_k=jnp.zeros((l, batch, mt, n, h), dt), mem_v=jnp.zeros((l, batch, mt, n, h), dt),
      mem_scale=scale(mt), mem_pos=jnp.zeros((mt, 3), jnp.float32),
      mem_len=jnp.zeros((), jnp.int32), frames=jnp.zeros((), jnp.int32),
      dropped=jnp.zeros((), jnp.int32))


def abstract(spec: CacheSpec, batch: int):
  return jax.eval_shape(lambda: init(spec, batch))


# ------------------------------------------------------------------ reading (the DiT's view)


def _quantize(x, quantized: bool, dtype):
  """x [..., N, H] -> (stored, scale [..., N])."""
  if not quantized:
    return x.astype(dtype), None
  amax = jnp.max(jnp.abs(x.astype(jnp.float32)), axis=-1)
  scale = jnp.maximum(amax, 1e-12) / FP8_MAX
  return (x.astype(jnp.float32) / scale[..., None]).astype(dtype), scale


def view(cache: KVCache, spec: CacheSpec, model_cfg) -> KVView:
  """What the DiT's `kv_cache=` argument takes (`models.kv.KVView`): the keys/values of the
  memory then the window as two segments (the buffers themselves, with their fp8 scales), the
  RoPE angles at every slot's position and which slots are filled."""
  scales = lambda i: (cache.mem_scale[i], cache.win_scale[i]) if spec.quantized else None
  layers = LayerKV(k=(cache.mem_k, cache.win_k), v=(cache.mem_v, cache.win_v),
                   k_scale=scales(0), v_scale=scales(1))
  hh, ww = spec.grid
  grid = rope_lib.grid_positions((1, hh, ww))  # [P, 3] of a frame at t = 0
  win_pos = (grid[None] + jnp.stack([jnp.maximum(cache.win_frame, 0).astype(jnp.float32),
                                     jnp.zeros(spec.window), jnp.zeros(spec.window)],
                                    -1)[:, None]).reshape(-1, 3)
  win_valid = jnp.repeat(cache.win_frame >= 0, spec.tokens_per_frame)
  mem_valid = jnp.arange(spec.memory_slots) < cache.mem_len
  positions = jnp.concatenate([cache.mem_pos, win_pos], axis=0)
  c = model_cfg
  angles = rope_lib.rope_angles_at(c.head_dim, positions, c.rope_theta, c.yarn_factor,
                                   c.yarn_original_frames, c.yarn_beta_fast, c.yarn_beta_slow)
  b = cache.win_k.shape[1]
  valid = jnp.broadcast_to(jnp.concatenate([mem_valid, win_valid])[None], (b, positions.shape[0]))
  return KVView(layers=layers, angles=angles, valid=valid)


# ------------------------------------------------------------------ writing (between blocks)


def _middle_tokens(grid: tuple[int, int], factor: int) -> np.ndarray:
  """Flat index of the middle token of each factor x factor patch (edge patches: of the
  tokens they have)."""
  hh, ww = grid
  rows = [min(i * factor + (min(factor, hh - i * factor) - 1) // 2, hh - 1)
          for i in range(math.ceil(hh / factor))]
  cols = [min(j * factor + (min(factor, ww - j * factor) - 1) // 2, ww - 1)
          for j in range(math.ceil(ww / factor))]
  return np.asarray([r * ww + c for r in rows for c in cols], np.int32)


def _pool(x_LBPNH, grid: tuple[int, int], factor: int, slots: int, rule: str = MemoryPool.MEAN):
  """Pools factor x factor patches ("mean": edge patches average what they have;
  "subsample": the middle token); returns [L, B, slots, N, H] with the pooled tokens first
  and zeros after."""
  hh, ww = grid
  if factor == 1:
    return x_LBPNH
  if rule == MemoryPool.SUBSAMPLE:
    picked = x_LBPNH[:, :, _middle_tokens(grid, factor)].astype(jnp.float32)
    return jnp.pad(picked, ((0, 0), (0, 0), (0, slots - picked.shape[2]), (0, 0), (0, 0)))
  l, b, _, n, h = x_LBPNH.shape
  ph, pw = math.ceil(hh / factor), math.ceil(ww / factor)
  x = x_LBPNH.astype(jnp.float32).reshape(l, b, hh, ww, n, h)
  x = jnp.pad(x, ((0, 0), (0, 0), (0, ph * factor - hh), (0, pw * factor - ww), (0, 0), (0, 0)))
  ones = jnp.pad(jnp.ones((hh, ww), jnp.float32), ((0, ph * factor - hh), (0, pw * factor - ww)))
  s = x.reshape(l, b, ph, factor, pw, factor, n, h).sum((3, 5))
  cnt = ones.reshape(ph, factor, pw, factor).sum((1, 3))
  pooled = (s / cnt[None, None, :, :, None, None]).reshape(l, b, ph * pw, n, h)
  return jnp.pad(pooled, ((0, 0), (0, 0), (0, slots - ph * pw), (0, 0), (0, 0)))


def _pool_positions(grid: tuple[int, int], factor: int, slots: int, rule: str = MemoryPool.MEAN):
  hh, ww = grid
  pos = rope_lib.grid_positions((1, hh, ww))[:, 1:].reshape(hh, ww, 2)
  if factor == 1:
    out = pos.reshape(-1, 2)
  elif rule == MemoryPool.SUBSAMPLE:
    out = pos.reshape(-1, 2)[_middle_tokens(grid, factor)]
  else:
    ph, pw = math.ceil(hh / factor), math.ceil(ww / factor)
    p = jnp.pad(pos, ((0, ph * factor - hh), (0, pw * factor - ww), (0, 0)))
    ones = jnp.pad(jnp.ones((hh, ww)), ((0, ph * factor - hh), (0, pw * factor - ww)))
    s = p.reshape(ph, factor, pw, factor, 2).sum((1, 3))
    cnt = ones.reshape(ph, factor, pw, factor).sum((1, 3))
    out = (s / cnt[..., None]).reshape(ph * pw, 2)
  return jnp.pad(out, ((0, slots - out.shape[0]), (0, 0)))


def _evict(cache: KVCache, spec: CacheSpec, slot, frame, evict) -> KVCache:
  """Pools the frame held in window `slot` into the memory (appended at mem_len) if `evict`
  (traced; with `spec.sink_only` only frame 0 is kept, the others leave without a trace).
  Computed either way and written to the slack when not evicting: no lax.cond over the whole
  cache, whose operands XLA would copy."""
  p = spec.tokens_per_frame
  start = slot * p
  take = lambda a: jax.lax.dynamic_slice_in_dim(a, start, p, axis=2)
  scale = lambda i: take(cache.win_scale[i]) if spec.quantized else None
  k = dequantize(take(cache.win_k), scale(0), jnp.float32)
  v = dequantize(take(cache.win_v), scale(1), jnp.float32)
  factors = sorted(set(spec.schedule))
  table = jnp.asarray([factors.index(f) for f in spec.schedule], jnp.int32)
  branch = table[frame % len(spec.schedule)]
  counts = jnp.asarray([spec.pooled_tokens(f) for f in factors], jnp.int32)
  count = counts[branch]

  def pooled(f):
    return lambda kv: (_pool(kv[0], spec.grid, f, p, spec.pool),
                       _pool(kv[1], spec.grid, f, p, spec.pool),
                       _pool_positions(spec.grid, f, p, spec.pool))
  pk, pv, ppos = jax.lax.switch(branch, [pooled(f) for f in factors], (k, v))
  ppos = jnp.concatenate([jnp.full((p, 1), frame, jnp.float32), ppos], axis=-1)
  fits = cache.mem_len + count <= spec.memory_tokens
  if spec.sink_only:
    evict = evict & (frame == 0)
  keep = evict & fits
  at = jnp.where(keep, cache.mem_len, spec.memory_tokens)  # the slack: harmless, stays invalid
  dt = jnp.dtype(spec.kv_dtype)
  sk, sk_scale = _quantize(pk, spec.quantized, dt)
  sv, sv_scale = _quantize(pv, spec.quantized, dt)
  put = lambda buf, x: jax.lax.dynamic_update_slice_in_dim(buf, x.astype(buf.dtype), at, axis=2)
  mem_scale = cache.mem_scale
  if spec.quantized:
    mem_scale = jnp.stack([put(cache.mem_scale[0], sk_scale), put(cache.mem_scale[1], sv_scale)])
  return cache.replace(
      mem_k=put(cache.mem_k, sk), mem_v=put(cache.mem_v, sv), mem_scale=mem_scale,
      mem_pos=jax.lax.dynamic_update_slice_in_dim(cache.mem_pos, ppos, at, axis=0),
      mem_len=jnp.where(keep, cache.mem_len + count, cache.mem_len),
      dropped=cache.dropped + (evict & ~fits).astype(jnp.int32))


def write(cache: KVCache, spec: CacheSpec, k_LBSNH, v_LBSNH) -> KVCache:
  """Appends n = S / P latent frames (the DiT's new (k, v) of a clean block, keys before RoPE)
  as frames cache.frames .. + n - 1: each goes into its window slot, and the frame it replaces
  (w frames older) is pooled into the memory first (or dropped, in window mode)."""
  p = spec.tokens_per_frame
  n = k_LBSNH.shape[2] // p
  dt = jnp.dtype(spec.kv_dtype)
  for j in range(n):  # static: a block's frames
    frame = cache.frames
    slot = frame % spec.window
    old = cache.win_frame[slot]
    if spec.use_memory:
      cache = _evict(cache, spec, slot, jnp.maximum(old, 0), old >= 0)
    sk, sk_scale = _quantize(k_LBSNH[:, :, j * p:(j + 1) * p], spec.quantized, dt)
    sv, sv_scale = _quantize(v_LBSNH[:, :, j * p:(j + 1) * p], spec.quantized, dt)
    put = lambda buf, x, slot=slot: jax.lax.dynamic_update_slice_in_dim(
        buf, x.astype(buf.dtype), slot * p, axis=2)
    win_scale = cache.win_scale
    if spec.quantized:
      win_scale = jnp.stack([put(cache.win_scale[0], sk_scale), put(cache.win_scale[1], sv_scale)])
    cache = cache.replace(win_k=put(cache.win_k, sk), win_v=put(cache.win_v, sv),
                          win_scale=win_scale, win_frame=cache.win_frame.at[slot].set(frame),
                          frames=frame + 1)
  return cache


def attended_tokens(spec: CacheSpec, frames: int) -> int:
  """Valid cached tokens after `frames` latent frames were written (host-side arithmetic)."""
  in_window = min(frames, spec.window)
  left = frames - in_window
  if not spec.use_memory:
    return in_window * spec.tokens_per_frame
  mem = 0
  for i in range(min(left, 1) if spec.sink_only else left):
    t = spec.frame_tokens_in_memory(i)
    if mem + t > spec.memory_tokens:
      break
    mem += t
  return in_window * spec.tokens_per_frame + mem


def check_capacity(spec: CacheSpec, frames_after: int) -> None:
  """Host-side: raises CacheCapacityError if a session would exceed max_frames (policy
  "error")."""
  if spec.overflow == Overflow.ERROR and frames_after > spec.max_frames:
    raise CacheCapacityError(
        f"this step would make {frames_after} latent frames, but the KV cache was sized for "
        f"config.memory.max_frames={spec.max_frames}. Fix: start a new session, raise "
        "config.memory.max_frames, or set config.memory.overflow='drop' to keep going "
        "without adding to the memory.")
