"""The model side of `relic play`: a run's student loaded once, and one game per connection.

`Engine(cfg, workdir)` loads, params only, the newest trained DiT of the run (the distilled
student's EMA, else the stage before it), the decoder (VAE or tiny decoder, with the teacher's
latent statistics) and the start images: frame 0 of every held-out episode, with its caption.
It holds one `Session` per memory mode, each compiled once (`warmup()` compiles them all before
the first player, so nothing compiles while anyone plays).

`Game` is one player's session: `step(keys, speed)` generates a block of 4 * block_frames video
frames with the keys held (controls.action_vector) and returns the frames with its figures:
latency, the memory's fill (frames in the window and in the memory, attended tokens, KV bytes)
and the camera path, per latent frame, with the frames the memory holds. `switch(mode)`
changes the memory live: the new mode's cache is rebuilt from the frames generated so far
(frame 0, then each block committed as generation commits it), so the next block sees what
that memory would hold of the same past; once a full cache drops frames
(memory.overflow='drop') the latents kept for that are let go and a switch is refused.
`record(on)` writes, when turned off, the frames since it was turned on to MP4, and the whole
session's actions as a script with the start image and the command that replays it exactly
(`relic generate`).
"""

import ctypes
import dataclasses
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from data_pipeline import clips as clips_lib
from data_pipeline import shards as shards_lib
from data_pipeline.generate import dataset_dir
from data_pipeline.preview import write_video
from relic_jax.config.derive import with_teacher_rope
from relic_jax.inference import camera
from relic_jax.inference import streaming as st
from relic_jax.inference.generate import fit_image
from relic_jax.inference.loading import load_decoder, load_dit
from relic_jax.inference.session import Session, SessionState
from relic_jax.io_utils import write_json_atomic
from relic_jax.memory import kv_cache as kv_lib
from relic_jax.play import controls
from relic_jax.play.protocol import MODES, ProtocolError

MAX_STARTS = 8
MALLOC_ARENAS = 1
_M_ARENA_MAX = -8  # glibc's mallopt parameter


def limit_malloc_arenas(arenas: int = MALLOC_ARENAS) -> bool:
  """Caps glibc's malloc arenas for the threads that allocate from here on -> whether it did.

  A server generating block after block from XLA's and asyncio's worker threads otherwise
  gives each thread its own arena, and the arenas fragment: measured on the demo run (one game,
  no server, blocks 100 to 500), RSS grew by 24 MB with glibc's default arenas, by 6 to 25 MB
  with two and by 1 MB with one. Called before the engine is built, so that XLA's threads
  allocate in the one arena (MALLOC_ARENA_MAX=1 in the environment does the same from
  outside). `arenas` 0 leaves glibc's default. Not glibc: a no-op."""
  if not arenas:
    return False
  try:
    libc = ctypes.CDLL("libc.so.6")
    return bool(libc.mallopt(_M_ARENA_MAX, int(arenas)))
  except (OSError, AttributeError):
    return False


class Rows:
  """Equal-width rows appended one by one into a numpy array that doubles when full: a game's
  per-block records take a few bytes each and no Python object per row."""

  def __init__(self, width: int, dtype=np.float32):
    self._a, self._n = np.zeros((16, width), dtype), 0

  def append(self, row) -> None:
    if self._n == len(self._a):
      self._a = np.concatenate([self._a, np.zeros_like(self._a)])
    self._a[self._n] = row
    self._n += 1

  def __len__(self) -> int:
    return self._n

  @property
  def array(self) -> np.ndarray:
    """The rows so far (a view: copy it to keep it past the next append)."""
    return self._a[:self._n]


def start_images(cfg, workdir: str, limit: int = MAX_STARTS) -> list[tuple[np.ndarray, str]]:
  """(frame 0 at the model's size, caption) of the run's held-out episodes (at most limit)."""
  data_dir = dataset_dir(cfg, workdir)
  manifest = shards_lib.read_manifest(data_dir)
  entries = shards_lib.episode_entries(manifest)
  reader = shards_lib.ShardReader(data_dir, manifest, cfg.data.verify_checksums)
  held = clips_lib.split_episodes(len(entries), "heldout", cfg.data.heldout_episodes, data_dir)
  h = cfg.data.latent_height * cfg.data.spatial_stride
  w = cfg.data.latent_width * cfg.data.spatial_stride
  out = []
  for e in held[:limit]:
    shard, entry = entries[e]
    frame = reader.read_episode(shard, entry, 0, 1)[0]["image"]
    out.append((fit_image(frame, h, w), entry["caption"]))
  return out


class Engine:
  """A run's student, decoder and start images, with a compiled Session per memory mode."""

  def __init__(self, cfg, workdir: str):
    self.cfg = with_teacher_rope(cfg)
    self.workdir = workdir
    self.params, self.source = load_dit(self.cfg, workdir)
    self.decoder = load_decoder(self.cfg, workdir)
    self.starts = start_images(self.cfg, workdir)
    self.fps = float(self.cfg.generate.fps)
    self.sessions = {m: Session(self.cfg, self.params, decoder=self.decoder, mode=m)
                     for m in MODES}
    self.frames_per_block = self.sessions["relic"].spec.video_frames_per_block
    self.size = (self.cfg.data.latent_height * self.cfg.data.spatial_stride,
                 self.cfg.data.latent_width * self.cfg.data.spatial_stride)
    self._commit = {m: jax.jit(self._commit_fn(s)) for m, s in self.sessions.items()}
    # the minimap's camera path: compiled once, not dispatched op by op every block
    self.integrate = jax.jit(camera.integrate)

  @staticmethod
  def _commit_fn(session: Session):
    spec = session.spec

    def commit(params, stream, x0, actions):
      return st.commit(params, spec, stream, x0, actions, st.block_poses(spec, stream, actions))
    return commit

  @property
  def traces(self) -> int:
    """Compilations of the block step, all modes together (one each after warmup)."""
    return sum(s.traces for s in self.sessions.values())

  def warmup(self) -> float:
    """Compiles every mode's start, block and mode switch on the first start image; returns
    the seconds it took."""
    t0 = time.perf_counter()
    image, caption = self.starts[0] if self.starts else (
        np.zeros((*self.size, 3), np.uint8), "")
    for mode in MODES:
      game = Game(self, image, caption, mode)
      game.step(frozenset(), 1.0)
      game.switch(MODES[(MODES.index(mode) + 1) % len(MODES)])
    return time.perf_counter() - t0


@dataclasses.dataclass
class Recording:
  since_frame: int                  # the session's video frame the recording starts at
  frames: list = dataclasses.field(default_factory=list)
  switched: bool = False            # the memory mode changed while recording


class Game:
  """One player's session: a start image, a caption and a memory mode, then blocks."""

  def __init__(self, engine: Engine, image: np.ndarray, caption: str, mode: str = "relic"):
    self.engine, self.caption, self.mode = engine, caption, mode
    self.image = fit_image(np.asarray(image, np.uint8), *engine.size)
    # as `relic generate --image` starts (so a recording replays exactly); the latent of frame
    # 0 is kept for rebuilding another mode's memory
    self.state, video0 = engine.sessions[mode].start(caption, image=self.image)
    self.latent0 = engine.decoder.encode_image(self.image[None])
    self.frame0 = video0[0, 0] if video0 is not None else self.image
    # per block: clean latents (until a full cache drops frames) and the action held
    self.blocks_x0, self.actions = [], Rows(controls.ACTION_DIM)
    self.modes_used = {mode}
    self.c2w = np.eye(4, dtype=np.float32)
    self.path = Rows(3, np.float64)         # per latent frame: x, z, yaw (radians)
    self.path.append((0.0, 0.0, 0.0))
    self.latencies = Rows(1)                # per block, seconds
    self.recording: Recording | None = None
    self.capacity_note = ""

  @property
  def session(self) -> Session:
    return self.engine.sessions[self.mode]

  @property
  def video_frames(self) -> int:
    return 1 + self.engine.frames_per_block * len(self.actions)

  def step(self, keys, speed: float):
    """One block with the held keys -> (frames uint8 [F, H, W, 3], stats dict). Raises
    kv_cache.CacheCapacityError when the cache is full and config.memory.overflow='error'."""
    f = self.engine.frames_per_block
    action = controls.action_vector(keys, speed)
    actions = np.tile(action, (f, 1))
    t0 = time.perf_counter()
    self.state, out = self.session.step(self.state, actions)
    video = out["video"][0]
    latency = time.perf_counter() - t0
    self.latencies.append(latency)
    self.actions.append(action)
    if self.blocks_x0 is not None:
      self.blocks_x0.append(np.asarray(out["latents"]))
      if int(self.state.stream.cache.dropped):
        # the cache is full and drops what leaves the window (memory.overflow='drop'): no
        # other mode could be rebuilt within its max_frames either, so the latents kept for
        # that are let go, and the game's memory stays flat from here
        self.blocks_x0 = None
    self._move(actions)
    if self.recording is not None:
      self.recording.frames.append(video)
    return video, self.stats(latency)

  def _move(self, actions: np.ndarray) -> None:
    scale = float(self.state.stream.action_scale[0])
    poses = np.asarray(self.engine.integrate(self.c2w[None], actions[None], scale))[0]
    k = self.engine.cfg.model.cond_frames_per_latent
    for p in poses[k - 1::k]:  # latent frame j >= 1 ends at video frame 4j
      fwd = p[:3, 2]
      self.path.append((p[0, 3], p[2, 3], np.arctan2(fwd[0], fwd[2])))
    self.c2w = poses[-1]

  def memory(self) -> dict:
    """The cache's fill: latent frames in the window and in the memory, tokens, bytes."""
    spec = self.session.spec.cache
    frames = self.state.frames
    window = min(frames, spec.window)
    in_memory = 0 if not spec.use_memory else (min(frames - window, 1) if spec.sink_only
                                               else frames - window)
    tokens = kv_lib.attended_tokens(spec, frames)
    slots = spec.window * spec.tokens_per_frame + spec.memory_slots
    kv = spec.kv_bytes(1)
    return {"mode": self.mode, "frames": int(frames), "max_frames": spec.max_frames,
            "window_frames": int(window), "memory_frames": int(in_memory),
            "window_tokens": int(window * spec.tokens_per_frame),
            "memory_tokens": int(tokens - window * spec.tokens_per_frame),
            "kv_bytes": kv, "kv_bytes_used": int(kv * tokens / max(slots, 1)),
            "dropped": int(self.state.stream.cache.dropped)}

  def stats(self, latency: float) -> dict:
    lat = self.latencies.array[:, 0]
    lat = lat[1:] if len(lat) > 1 else lat
    mem, path = self.memory(), self.path.array
    f, bf = self.engine.frames_per_block, self.session.spec.block_frames
    return {"type": "stats", "block_ms": 1000 * latency,
            "block_ms_p50": float(1000 * np.percentile(lat, 50)),
            "block_ms_p95": float(1000 * np.percentile(lat, 95)),
            "fps": f / latency, "realtime": f / latency >= self.engine.fps,
            "video_frames": self.video_frames, "memory": mem, "compiles": self.engine.traces,
            "pose": path[-1].tolist(), "path_from": len(path) - bf, "path": path[-bf:].tolist(),
            # latent frames [0, window_from) left the window: the memory holds them (relic:
            # pooled; full: whole; window: none of them)
            "window_from": mem["frames"] - mem["window_frames"],
            "recording": self.recording is not None}

  def switch(self, mode: str) -> float:
    """Changes the memory mode: the new mode's cache holds frame 0 and every block so far,
    committed as generation commits them. Returns the seconds it took."""
    if mode == self.mode:
      return 0.0
    if self.blocks_x0 is None:
      raise ProtocolError(f"the memory is full (memory.max_frames="
                          f"{self.session.spec.cache.max_frames} latent frames) and drops what "
                          "leaves the window: another mode cannot be rebuilt from here. Fix: "
                          "reset, or switch earlier.")
    t0 = time.perf_counter()
    new = self.engine.sessions[mode]
    total = self.state.frames
    kv_lib.check_capacity(new.spec.cache, total)
    state, _ = new.start(self.caption, latent=self.latent0)
    stream, commit = state.stream, self.engine._commit[mode]
    f = self.engine.frames_per_block
    for x0, action in zip(self.blocks_x0, self.actions.array):
      actions = np.tile(action, (f, 1))
      with new._context():
        stream = commit(self.engine.params, stream, jnp.asarray(x0), jnp.asarray(actions)[None])
    # the decoder's streaming cache is the same video: keep it
    self.state = SessionState(stream, self.state.decoder_cache, total)
    self.mode = mode
    self.modes_used.add(mode)
    if self.recording is not None:
      self.recording.switched = True
    return time.perf_counter() - t0

  def record(self, on: bool, out_dir: str | None = None) -> dict | None:
    """Starts recording (on), or stops and writes the recording -> its files (None if none
    was running)."""
    if on:
      if self.recording is None:
        self.recording = Recording(since_frame=self.video_frames)
      return None
    rec, self.recording = self.recording, None
    if rec is None:
      return None
    out_dir = out_dir or os.path.join(self.engine.workdir, "play", "recordings")
    os.makedirs(out_dir, exist_ok=True)
    stem = os.path.join(out_dir, time.strftime("%Y%m%d-%H%M%S") + f"-{id(self) % 10000:04d}")
    fps = self.engine.fps
    video = (np.concatenate(rec.frames) if rec.frames else
             np.zeros((0, *self.engine.size, 3), np.uint8))
    if len(video):
      write_video(stem + ".mp4", video, fps)
    actions = (np.repeat(self.actions.array, self.engine.frames_per_block, axis=0)
               if len(self.actions) else
               np.tile(controls.action_vector(frozenset()), (1, 1)))
    script = stem + ".txt"
    with open(script + ".tmp", "w") as f:
      f.write(controls.to_script(actions, fps))
    os.replace(script + ".tmp", script)
    image = stem + ".png"
    Image.fromarray(self.image).save(image + ".tmp.png")
    os.replace(image + ".tmp.png", image)
    exact = len(self.modes_used) == 1
    command = (f"relic generate --config=<this config> --workdir={self.engine.workdir} "
               f"--actions={script} --image={image} --text={json.dumps(self.caption)} "
               f"--config.memory.mode={self.mode}")
    meta = {"video": stem + ".mp4" if len(video) else None, "actions": script, "image": image,
            "caption": self.caption, "mode": self.mode, "fps": fps,
            "video_from_frame": rec.since_frame, "video_frames": int(len(video)),
            "session_frames": self.video_frames, "replay": command, "replay_exact": exact,
            "note": ("the replay regenerates the whole session from its start; the MP4 is its "
                     f"frames {rec.since_frame}..{self.video_frames - 1}" if exact else
                     "the memory mode changed during the session: a replay with one mode does "
                     "not reproduce it exactly")}
    write_json_atomic(stem + ".json", meta)
    return meta
