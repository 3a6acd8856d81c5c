"""`relic play --config=... --workdir=RUN [--port=8000] [--host=127.0.0.1]`: the run's student
in a browser, steered with the keyboard, served with aiohttp (HTTP and websockets).

  GET  /              the page (relic_jax/play/static)
  GET  /starts        the start images (frame 0 of each held-out episode, PNG data URLs) and
                      their captions, the controls and the limits
  GET  /recordings/*  what the record button wrote (<workdir>/play/recordings)
  GET  /ws            one game per connection (protocol.py)

One game per connection, at most `max_sessions` at once: a connection past that gets a "busy"
message and is closed. Each connection generates block after block with the keys held when
the block starts, at most one block ahead of real time (so the keys answer within a block),
in a worker thread (JAX releases the GIL), and pushes each video frame as a JPEG as soon as
the block is decoded. Everything is compiled before the first player (`Engine.warmup`): the
stats report the compile count, which stays put. A malformed message gets an "error" message
and the game goes on; more than `rate` messages per second (beyond a burst) are dropped with
one "error" a second; a message over protocol.MAX_MESSAGE_BYTES is refused the same way, and
one over the websocket's limit (4x that) closes the connection. When the KV cache is full
(config.memory.max_frames), config.memory.overflow decides: "error" stops the game with a
"capacity" message until reset, "drop" goes on without adding to the memory (said once). A
disconnect frees the game's state.
"""

import asyncio
import base64
import io
import json
import os
import struct
import threading
import time

import numpy as np
from aiohttp import WSMsgType, web
from PIL import Image

from relic_jax.memory.kv_cache import CacheCapacityError
from relic_jax.play import controls, protocol
from relic_jax.play.engine import Engine, Game, limit_malloc_arenas

STATIC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static")
WS_MAX_BYTES = 4 * protocol.MAX_MESSAGE_BYTES


def jpeg(frame: np.ndarray, quality: int = 90) -> bytes:
  buf = io.BytesIO()
  Image.fromarray(frame).save(buf, "JPEG", quality=quality)
  return buf.getvalue()


def png_data_url(image: np.ndarray) -> str:
  buf = io.BytesIO()
  Image.fromarray(image).save(buf, "PNG")
  return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


class RateLimit:
  """A token bucket: `rate` messages a second, bursts of `burst`."""

  def __init__(self, rate: float, burst: float):
    self.rate, self.burst, self.tokens, self.t = rate, burst, burst, time.monotonic()
    self.dropped, self.told = 0, 0.0

  def allow(self) -> bool:
    now = time.monotonic()
    self.tokens = min(self.burst, self.tokens + (now - self.t) * self.rate)
    self.t = now
    if self.tokens >= 1:
      self.tokens -= 1
      return True
    self.dropped += 1
    return False

  def should_tell(self) -> bool:
    now = time.monotonic()
    if now - self.told >= 1.0:
      self.told = now
      return True
    return False


class Connection:
  """One websocket: its game, the keys held, and the loop that generates blocks."""

  def __init__(self, server: "Server", ws: web.WebSocketResponse):
    self.server, self.ws, self.engine = server, ws, server.engine
    self.game: Game | None = None
    self.start_args = None
    self.keys, self.speed = frozenset(), 1.0
    self.paused = False
    self.lock = asyncio.Lock()
    self.wake = asyncio.Event()
    self.limit = RateLimit(server.rate, server.burst)
    self.sent = 0
    self.clock0 = 0.0
    self.told_drop = False

  async def send(self, msg: dict) -> None:
    if not self.ws.closed:
      await self.ws.send_str(json.dumps(msg))

  async def error(self, message: str) -> None:
    await self.send({"type": "error", "message": message})

  async def run(self) -> None:
    await self.send(self.server.ready_message())
    loop = asyncio.create_task(self.generate_loop())
    try:
      async for msg in self.ws:
        if msg.type == WSMsgType.ERROR:
          break
        if msg.type not in (WSMsgType.TEXT, WSMsgType.BINARY):
          continue
        if not self.limit.allow():
          if self.limit.should_tell():
            await self.error(f"too many messages: {self.limit.dropped} dropped (at most "
                             f"{self.server.rate:g} a second)")
          continue
        try:
          m = protocol.parse(msg.data, len(self.engine.starts))  # binary: refused there
          await self.handle(m)
        except protocol.ProtocolError as e:
          await self.error(str(e))
        except CacheCapacityError as e:
          await self.send({"type": "capacity", "message": str(e)})
    finally:
      loop.cancel()
      try:
        await loop
      except (asyncio.CancelledError, Exception):
        pass
      self.game = None  # the game's state (KV cache, history) is freed with it

  async def handle(self, m: dict) -> None:
    kind = m["type"]
    if kind == "keys":
      self.keys, self.speed = m["keys"], m["speed"]
      return
    if kind == "start":
      image = m["image"] if "image" in m else self.engine.starts[m["start"]][0]
      caption = m["caption"] or ("" if "image" in m else self.engine.starts[m["start"]][1])
      self.start_args = (image, caption, m["mode"])
      await self.new_game()
      return
    if self.game is None:
      raise protocol.ProtocolError(f"'{kind}' before 'start'")
    if kind == "reset":
      await self.new_game()
    elif kind == "mode":
      async with self.lock:
        seconds = await asyncio.to_thread(self.game.switch, m["mode"])
      await self.send({"type": "mode", "mode": m["mode"], "rebuild_s": seconds,
                       "memory": self.game.memory()})
    elif kind == "record":
      async with self.lock:
        meta = await asyncio.to_thread(self.game.record, m["on"])
      if m["on"]:
        await self.send({"type": "recording", "from_frame": self.game.recording.since_frame})
      elif meta is not None:
        rel = lambda p: p and "/recordings/" + os.path.basename(p)  # noqa: E731
        await self.send({"type": "recorded", **meta, "video_url": rel(meta["video"]),
                         "actions_url": rel(meta["actions"]), "image_url": rel(meta["image"])})

  async def new_game(self) -> None:
    image, caption, mode = self.start_args
    async with self.lock:
      self.game = None
      game = await asyncio.to_thread(Game, self.engine, image, caption, mode)
      self.game, self.paused, self.told_drop = game, False, False
      self.sent, self.clock0 = 1, time.monotonic()
      await self.ws.send_bytes(struct.pack(">I", 0) + jpeg(game.frame0))
    await self.send({"type": "started", "caption": caption, "mode": mode,
                     "memory": game.memory(), "compiles": self.engine.traces})
    self.wake.set()

  async def generate_loop(self) -> None:
    fpb, fps = self.engine.frames_per_block, self.engine.fps
    while not self.ws.closed:
      if self.game is None or self.paused:
        self.wake.clear()
        await self.wake.wait()
        continue
      ahead = self.sent - (time.monotonic() - self.clock0) * fps  # frames not yet due
      if ahead > fpb:
        await asyncio.sleep((ahead - fpb) / fps)
        continue
      async with self.lock:
        game = self.game
        if game is None or self.paused:
          continue
        try:
          video, stats = await asyncio.to_thread(game.step, self.keys, self.speed)
        except CacheCapacityError as e:
          self.paused = True
          await self.send({"type": "capacity", "message": str(e), "stopped": True})
          continue
        except Exception as e:  # a fault of the model side: say it, keep the connection
          self.paused = True
          await self.error(f"generation failed: {type(e).__name__}: {e}")
          continue
        frames = await asyncio.to_thread(lambda v=video: [jpeg(f) for f in v])
        for f in frames:
          await self.ws.send_bytes(struct.pack(">I", self.sent) + f)
          self.sent += 1
      await self.send(stats)
      if stats["memory"]["dropped"] and not self.told_drop:
        self.told_drop = True
        await self.send({"type": "capacity", "stopped": False, "message": (
            f"the KV cache is full (config.memory.max_frames={stats['memory']['max_frames']}): "
            "config.memory.overflow='drop' keeps generating without adding to the memory")})


class Server:
  """The aiohttp application around an Engine."""

  def __init__(self, engine: Engine, max_sessions: int = 2, rate: float = 60.0,
               burst: float = 120.0):
    self.engine, self.max_sessions, self.rate, self.burst = engine, max_sessions, rate, burst
    self.active = 0
    self.recordings = os.path.join(engine.workdir, "play", "recordings")
    os.makedirs(self.recordings, exist_ok=True)
    self._starts = [{"index": i, "caption": c, "image": png_data_url(img)}
                    for i, (img, c) in enumerate(engine.starts)]

  def ready_message(self) -> dict:
    e = self.engine
    return {"type": "ready", "num_starts": len(e.starts), "modes": list(protocol.MODES),
            "mode": e.cfg.memory.mode if e.cfg.memory.mode in protocol.MODES else "relic",
            "fps": e.fps, "frames_per_block": e.frames_per_block, "size": list(e.size),
            "keys": controls.KEYS, "max_speed": controls.MAX_SPEED,
            "weights_from": e.source, "overflow": e.cfg.memory.overflow,
            "max_frames": int(e.cfg.memory.max_frames)}

  async def index(self, request):
    return web.FileResponse(os.path.join(STATIC, "index.html"))

  async def starts(self, request):
    return web.json_response({"starts": self._starts, **self.ready_message()})

  async def websocket(self, request):
    ws = web.WebSocketResponse(max_msg_size=WS_MAX_BYTES, heartbeat=30.0)
    await ws.prepare(request)
    if self.active >= self.max_sessions:
      await ws.send_str(json.dumps({"type": "busy", "message": (
          f"all {self.max_sessions} sessions are in use; try again when one ends (the server's "
          "--max_sessions)")}))
      await ws.close()
      return ws
    self.active += 1
    try:
      await Connection(self, ws).run()
    finally:
      self.active -= 1
    return ws

  def app(self) -> web.Application:
    app = web.Application(client_max_size=WS_MAX_BYTES)
    app.router.add_get("/", self.index)
    app.router.add_get("/starts", self.starts)
    app.router.add_get("/ws", self.websocket)
    app.router.add_static("/static", STATIC)
    app.router.add_static("/recordings", self.recordings)
    return app


class Background:
  """A Server's app on its own event loop in a daemon thread (the bench, the tests):
  `with Background(server) as port: ...` serves on 127.0.0.1:port (a free one)."""

  def __init__(self, server: Server, host: str = "127.0.0.1"):
    self.server, self.host = server, host

  def __enter__(self) -> int:
    self.loop = asyncio.new_event_loop()
    self.runner = web.AppRunner(self.server.app())
    self.loop.run_until_complete(self.runner.setup())
    site = web.TCPSite(self.runner, self.host, 0)
    self.loop.run_until_complete(site.start())
    self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
    self.thread.start()
    return site._server.sockets[0].getsockname()[1]

  def __exit__(self, *exc) -> None:
    asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(30)
    self.loop.call_soon_threadsafe(self.loop.stop)
    self.thread.join(10)


def serve(cfg, workdir: str, host: str = "127.0.0.1", port: int = 8000,
          max_sessions: int = 2) -> None:
  """Loads the run, compiles every memory mode, then serves until interrupted."""
  limit_malloc_arenas()  # before XLA's threads allocate: RSS stays flat while games run
  t0 = time.perf_counter()
  engine = Engine(cfg, workdir)
  print(f"[relic] play: the DiT from {engine.source}, {len(engine.starts)} start images; "
        f"loaded in {time.perf_counter() - t0:.1f}s", flush=True)
  print(f"[relic] play: compiled the memory modes {', '.join(protocol.MODES)} in "
        f"{engine.warmup():.1f}s", flush=True)
  server = Server(engine, max_sessions)
  where = f"http://{host}:{port}/"
  print(f"[relic] play: open {where} (at most {max_sessions} sessions; Ctrl-C stops)", flush=True)
  web.run_app(server.app(), host=host, port=port, print=None)
