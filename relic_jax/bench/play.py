"""`relic play` under use: clients steering games over websockets, measured.

python -m relic_jax.bench.play --config=experiments/demo.py --workdir=runs/demo \\
    --clients=1 --seconds=60 --rss_at=60,600 --out=play.json

Serves the run in this process (the Engine compiled first, as `relic play` does), then runs
`clients` websocket clients for `seconds`, each holding a cycle of keys (left, forward, right,
nothing), plus `garbage` clients that send malformed and hostile messages ten times a second.
Reports per good client the frames received per second (the server paces to real time, so
17.5 is the most a client gets), the blocks' latency (p50 / p95 over the blocks the server
reported), the generation FPS (frames per block / latency), the compile count before and
after, the errors the good clients saw (none expected), the process's RSS at the `rss_at`
seconds, and whether every game was freed at the end.
"""

import asyncio
import json
import time

import numpy as np
from absl import app, flags

from relic_jax.bench.common import FLAGS, define_flags, emit
from relic_jax.stages import latent_cache_config



def define_play_flags() -> None:
  """The command line's flags; defined only when run as a program, because `run` is also
  called from the soak test, in a process where `relic_jax.cli` already defines `--config`."""
  define_flags("experiments/demo.py")
  flags.DEFINE_string("workdir", "runs/demo", "The run to serve.")
  flags.DEFINE_integer("clients", 1, "Well-behaved clients.")
  flags.DEFINE_integer("garbage", 0, "Clients sending malformed messages.")
  flags.DEFINE_float("seconds", 60.0, "How long the clients play.")
  flags.DEFINE_string("rss_at", "", "Comma-separated seconds at which to read the RSS.")
  flags.DEFINE_integer("malloc_arenas", 1, "glibc malloc arenas, as `relic play` caps them "
                       "(0: glibc's default, for comparison).")


CYCLE = ((["ArrowLeft"], 3.0), (["KeyW"], 2.0), (["ArrowRight"], 3.0), ([], 1.0),
         (["KeyD", "ShiftLeft"], 1.0))
GARBAGE = ("not json", "[1]", '{"type": "keys", "keys": ["KeyZ"]}',
           '{"type": "keys", "keys": ["KeyW"], "speed": NaN}', '{"type": "mode", "mode": 7}',
           '{"type": "start", "start": 99}', json.dumps({"type": "keys", "pad": "x" * 50_000}),
           '{"type": "keys", "keys": ["KeyW"], "speed": 1e300}', "\x00\xff")


def rss_mb() -> float:
  with open("/proc/self/status") as f:
    for line in f:
      if line.startswith("VmRSS:"):
        return int(line.split()[1]) / 1024
  return float("nan")


async def good_client(url: str, seconds: float, index: int) -> dict:
  import aiohttp  # noqa: PLC0415
  frames, stats, errors = 0, [], []
  async with aiohttp.ClientSession() as s, s.ws_connect(url, max_msg_size=0) as ws:
    await ws.send_str(json.dumps({"type": "start", "start": 0}))
    t0 = time.monotonic()
    started = None
    step = index  # clients start at different places in the cycle

    async def steer():
      nonlocal step
      while True:
        keys, hold = CYCLE[step % len(CYCLE)]
        await ws.send_str(json.dumps({"type": "keys", "keys": keys, "speed": 1.0}))
        step += 1
        await asyncio.sleep(hold)
    steering = asyncio.create_task(steer())
    try:
      while time.monotonic() - t0 < seconds:
        msg = await ws.receive(timeout=max(0.1, seconds - (time.monotonic() - t0)))
        if msg.type == aiohttp.WSMsgType.BINARY:
          frames += 1
        elif msg.type == aiohttp.WSMsgType.TEXT:
          m = json.loads(msg.data)
          if m["type"] == "started":
            started = time.monotonic()
          elif m["type"] == "stats":
            stats.append(m)
          elif m["type"] in ("error", "busy", "capacity"):
            errors.append(m.get("message", m["type"]))
        else:
          break
    except asyncio.TimeoutError:
      pass
    finally:
      steering.cancel()
  played = time.monotonic() - (started or t0)
  ms = np.asarray([m["block_ms"] for m in stats[1:]] or [float("nan")])
  return {"frames": frames, "seconds": played, "frames_per_s": frames / max(played, 1e-9),
          "blocks": len(stats), "block_ms_p50": float(np.percentile(ms, 50)),
          "block_ms_p95": float(np.percentile(ms, 95)),
          "generated_fps_p50": float(np.median([m["fps"] for m in stats[1:]] or [0.0])),
          "compiles": [stats[0]["compiles"], stats[-1]["compiles"]] if stats else None,
          "errors": errors[:5], "error_count": len(errors)}


async def garbage_client(url: str, seconds: float) -> dict:
  import aiohttp  # noqa: PLC0415
  answers = 0
  async with aiohttp.ClientSession() as s, s.ws_connect(url) as ws:
    t0, i = time.monotonic(), 0
    while time.monotonic() - t0 < seconds and not ws.closed:
      await ws.send_str(GARBAGE[i % len(GARBAGE)])
      i += 1
      try:
        while True:
          msg = await ws.receive(timeout=0.1)
          if msg.type == aiohttp.WSMsgType.TEXT and json.loads(msg.data)["type"] == "error":
            answers += 1
      except asyncio.TimeoutError:
        pass
  return {"sent": i, "error_answers": answers, "connection_kept": not ws.closed or
          time.monotonic() - t0 >= seconds}


def run(cfg, workdir: str, clients: int = 1, garbage: int = 0, seconds: float = 60.0,
        rss_at=(), malloc_arenas: int = 1) -> dict:
  from relic_jax.play.engine import Engine, limit_malloc_arenas  # noqa: PLC0415
  from relic_jax.play.server import Background, Server  # noqa: PLC0415
  arenas = limit_malloc_arenas(malloc_arenas)  # as `relic play` does
  t0 = time.perf_counter()
  engine = Engine(cfg, workdir)
  load_s = time.perf_counter() - t0
  warm_s = engine.warmup()
  server = Server(engine, max_sessions=clients + garbage)
  rss = {"start": rss_mb()}

  async def main(url):
    async def sample():
      t = time.monotonic()
      for at in sorted(rss_at):
        await asyncio.sleep(max(0.0, at - (time.monotonic() - t)))
        rss[f"{at:g}s"] = rss_mb()
    sampler = asyncio.create_task(sample())
    tasks = [good_client(url, seconds, i) for i in range(clients)]
    tasks += [garbage_client(url, seconds) for _ in range(garbage)]
    out = await asyncio.gather(*tasks)
    sampler.cancel()
    return out
  with Background(server) as port:
    results = asyncio.run(main(f"http://127.0.0.1:{port}/ws"))
    for _ in range(100):
      if server.active == 0:
        break
      time.sleep(0.05)
    rss["end"] = rss_mb()
    freed = server.active == 0
  return {"config": cfg.name, "workdir": workdir, "weights_from": engine.source,
          "clients": results[:clients], "garbage": results[clients:], "seconds": seconds,
          "load_s": load_s, "warmup_s": warm_s, "rss_mb": rss, "games_freed": freed,
          "realtime_fps": engine.fps, "malloc_arenas_capped": arenas,
          "frames_per_block": engine.frames_per_block}


def main(argv):
  del argv
  cfg = latent_cache_config(FLAGS.config, FLAGS.workdir)
  rss_at = [float(x) for x in FLAGS.rss_at.split(",") if x]
  emit(run(cfg, FLAGS.workdir, FLAGS.clients, FLAGS.garbage, FLAGS.seconds, rss_at,
                FLAGS.malloc_arenas))


if __name__ == "__main__":
  define_play_flags()
  app.run(main)
