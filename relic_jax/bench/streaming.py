"""Streaming generation: per-block latency, FPS and KV-cache size of the three memory modes.

python -m relic_jax.bench.streaming --config=experiments/small.py --out=streaming.json

For each mode (relic: window + pooled memory; full: every frame uncompressed; window: no
memory) and horizon H (21, 80, 240 latent frames = 5 s, 20 s, 60 s): a session whose cache is
sized for H (config.memory.max_frames = H) is filled to H - (blocks + 1) * block_frames latent
frames, then one untimed warm-up block and `--blocks` timed blocks are generated (median), the
last ending at H:
  block_latency_s   one block: the few-step sampler (config.generate.timesteps) plus the
                    clean re-run that writes the cache (no decoding)
  fps               video frames per second = 4 * block_frames / block_latency_s
  kv_bytes          the cache's K/V buffers (and fp8 scales) at capacity
  attended_tokens   cached tokens a query of the last block attends to (valid ones), plus
                    the block's own
  flops_per_block   analytic matmul FLOPs of the block (models/flops.py)
  fill, filled_frames   the --fills fraction and the latent frames in the cache before the
                    warm-up block
`--fills=0.1,1.0`: the same per fraction f of the horizon: the cache (capacity still sized for
H) is filled to f * H latent frames rounded to whole blocks after frame 0 (at least frame 0;
at most the full fill above), so the cost of a partly filled cache shows (the cache kernel
may skip its empty slots: model.cache_attention_impl=chunked). result[mode][H] is the
largest fill's measurement (the default, "1.0", is the full fill: the figures as before),
result["fills"][mode][H][str(f)] each fill's. Fills run from the smallest on one session, so
only the first one's first_block_s (the warm-up block) includes compiling.
The fill writes random keys/values through the real `kv_cache.write` (what is stored does not
change the cost), so a 60 s horizon is measured without generating 60 s first. The params are
random (speed does not depend on them).

"analytic" adds the FLOPs per block of the wan_1_3b and relic_14b shapes at 480x832 (60x104
latents, 30x52 tokens per frame, 512 text tokens) for each mode and horizon, and relic's cost
ratio between 80 and 21 latent frames.
"""

import importlib
import time

import flax.linen as nn
import jax
import numpy as np
from absl import app, flags

from relic_jax.bench.common import FLAGS, define_flags, emit
from relic_jax.inference import streaming as st
from relic_jax.inference.session import Session
from relic_jax.memory import kv_cache as kv_lib
from relic_jax.models import flops as flops_lib
from relic_jax.training.teacher import TeacherTask

define_flags("experiments/small.py")
flags.DEFINE_list("horizons", ["21", "80", "240"], "Latent-frame horizons.")
flags.DEFINE_list("modes", ["relic", "full", "window"], "Memory modes.")
flags.DEFINE_integer("blocks", 3, "Timed blocks per measurement (after one warm-up).")
flags.DEFINE_list("fills", ["1.0"], "Fractions of the horizon the cache is filled to before "
                  "timing (rounded to whole blocks; 1.0: the last timed block ends at it).")

MODES = ("relic", "full", "window")


def _fill(session, state, frames: int, rng):
  """Writes random K/V for latent frames 1 .. frames-1 (frame 0 is the session's start)."""
  spec = session.spec.cache
  cache = state.stream.cache
  b = cache.win_k.shape[1]
  shape = (spec.num_layers, b, spec.tokens_per_frame, spec.num_heads, spec.head_dim)
  write = jax.jit(lambda c, k, v: kv_lib.write(c, spec, k, v))
  for i in range(frames - 1):
    k1, k2, rng = jax.random.split(rng, 3)
    cache = write(cache, jax.random.normal(k1, shape), jax.random.normal(k2, shape))
  stream = state.stream.replace(cache=cache)
  return type(state)(stream, state.decoder_cache, frames)


def fill_frames(fill: float, horizon: int, block_frames: int, blocks: int) -> int:
  """Latent frames in the cache before the warm-up block for a fill fraction of the horizon:
  frame 0 plus whole blocks, as near fill * horizon as they come, at most what leaves room for
  the warm-up and timed blocks (horizon - (blocks + 1) * block_frames, the full fill)."""
  if not 0.0 <= fill <= 1.0:
    raise ValueError(f"a fill is a fraction of the horizon in [0, 1], not {fill}")
  most = horizon - block_frames * (blocks + 1)
  if most < 1:
    raise ValueError(f"horizon {horizon} is too short for {blocks + 1} blocks")
  return min(most, 1 + block_frames * max(0, round((fill * horizon - 1) / block_frames)))


def measure(cfg, params, mode: str, horizon: int, blocks: int, fills=(1.0,)) -> dict:
  """-> {fill: result} for one mode and horizon, one session (compiled once) for all fills."""
  bf = cfg.model.block_frames
  session = Session(cfg, params, mode=mode, max_frames=horizon)
  spec = session.spec
  text = np.zeros((cfg.data.text_len, cfg.model.text_dim), np.float32)
  latent = jax.random.normal(jax.random.key(0), (1, 1, *spec.latent_hw, cfg.model.in_channels))
  actions = np.zeros((4 * bf, 13), np.float32)
  actions[:, 0] = 1.0
  results = {}
  for fill in fills:
    fill_to = fill_frames(fill, horizon, bf, blocks)
    state, _ = session.start(text, latent=latent)
    state = _fill(session, state, fill_to, jax.random.key(1))
    t0 = time.perf_counter()
    state, out = session.step(state, actions)  # warm-up (compiles, at the first fill)
    jax.block_until_ready(out["latents"])
    compile_s = time.perf_counter() - t0
    times = []
    for _ in range(blocks):
      t0 = time.perf_counter()
      state, out = session.step(state, actions)
      jax.block_until_ready(out["latents"])
      times.append(time.perf_counter() - t0)
    latency = float(np.median(times))
    cached = kv_lib.attended_tokens(spec.cache, state.frames - bf)
    p = spec.cache.tokens_per_frame
    per_block = (len(spec.sigmas) + 1) * flops_lib.block_forward_flops(
        spec.dit, bf, p, cached, cfg.data.text_len)
    results[fill] = {
        "block_latency_s": latency, "fps": 4 * bf / latency,
        "kv_bytes": spec.cache.kv_bytes(), "attended_tokens": cached + bf * p,
        "capacity_tokens": spec.cache.window * p + spec.cache.memory_slots + bf * p,
        "flops_per_block": per_block, "first_block_s": compile_s, "fill": fill,
        "filled_frames": fill_to}
  return results


def analytic(horizons) -> dict:
  """FLOPs per block of the big shapes at 480x832, from the cache arithmetic alone."""
  out = {}
  for name in ("wan_1_3b", "relic_14b"):
    cfg = importlib.import_module(f"experiments.{name}").get_config()
    cfg.data.latent_height, cfg.data.latent_width = 60, 104
    res = {}
    for mode in MODES:
      res[mode] = {}
      for h in horizons:
        spec = st.spec_from_config(cfg, mode=mode, max_frames=h)
        bf = spec.block_frames
        cached = kv_lib.attended_tokens(spec.cache, h - bf)
        res[mode][str(h)] = {
            "flops_per_block": (len(spec.sigmas) + 1) * flops_lib.block_forward_flops(
                spec.dit, bf, spec.cache.tokens_per_frame, cached, 512),
            "attended_tokens": cached + bf * spec.cache.tokens_per_frame,
            "kv_bytes_bf16": kv_lib.CacheSpec(**{**spec.cache.__dict__,
                                                 "kv_dtype": "bfloat16"}).kv_bytes()}
    r = res["relic"]
    if "21" in r and "80" in r:
      res["relic_80_over_21"] = r["80"]["flops_per_block"] / r["21"]["flops_per_block"]
    out[name] = res
  return out


def main(argv):
  del argv
  cfg = FLAGS.config.copy_and_resolve_references()
  cfg.model.attention_mode = "block_causal"
  horizons = [int(h) for h in FLAGS.horizons]
  params = TeacherTask(cfg).init_params(jax.random.key(0))
  params = nn.meta.unbox(params)
  result = {"config": cfg.name, "device": jax.devices()[0].device_kind,
            "latent_hw": [cfg.data.latent_height, cfg.data.latent_width],
            "block_frames": cfg.model.block_frames, "window": cfg.memory.window,
            "steps_per_block": len(cfg.generate.timesteps)}
  fills = sorted({float(f) for f in FLAGS.fills})
  result["cache_attention_impl"] = cfg.model.cache_attention_impl or cfg.model.attention_impl
  for mode in FLAGS.modes:
    result[mode], by_fill = {}, {}
    for h in horizons:
      res = measure(cfg, params, mode, h, FLAGS.blocks, fills)
      result[mode][str(h)] = res[fills[-1]]
      by_fill[str(h)] = {str(f): r for f, r in res.items()}
    result.setdefault("fills", {})[mode] = by_fill
  for h in map(str, horizons):
    if "relic" in result and "full" in result:
      result.setdefault("relic_over_full_latency", {})[h] = (
          result["relic"][h]["block_latency_s"] / result["full"][h]["block_latency_s"])
      result.setdefault("relic_over_full_kv_bytes", {})[h] = (
          result["relic"][h]["kv_bytes"] / result["full"][h]["kv_bytes"])
  result["analytic"] = analytic(horizons)
  emit(result)


if __name__ == "__main__":
  app.run(main)
