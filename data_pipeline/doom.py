"""ViZDoom exploration episodes: a scripted "person flying a camera" through Freedoom levels.

ViZDoom (the Doom engine, headless, with the Freedoom WADs inside the package) renders each
frame; the camera pose is read back from the engine (CAMERA_POSITION_*, CAMERA_ANGLE,
CAMERA_PITCH, CAMERA_ROLL) after every step, so poses are exact and the actions are computed
from them (data_pipeline/poses.py). Monsters are off (`-nomonsters`), as are the HUD, weapon,
crosshair, messages and view bobbing: the scene is static and only the camera moves.

The pilot is a random sequence of segments drawn from a seeded generator: walks with varying
speed and curvature (avoiding walls with the depth buffer), backing up, strafes, turns,
looking up/down, pauses, 360-degree pans, look-away-and-back, and out-and-back walks
(A -> B -> A), the last three made to create revisits. Same (wad, map, seed, config) -> the same
episode, bit for bit.

Conventions: Doom map units are converted to metres at 32 units per metre; Doom's x east,
y north, z up world is our z-up world; yaw is counter-clockwise from +x.
Caveat: Doom's software renderer draws pitch as a vertical image shear, not a true rotation,
so frames with the camera tilted are only approximately pinhole views of the stored pose
(yaw and translation are exact). `max_pitch_deg` bounds how far the pilot tilts.
"""

import dataclasses
import functools
import os

import numpy as np
from PIL import Image

from data_pipeline import poses as poses_lib
from data_pipeline.episode import DataError, Episode, make_episode
from relic_jax.config.choices import Wad

UNITS_PER_METRE = 32.0
TICS_PER_SECOND = 35.0
# Steady-state speed of the player, in map units per tic, per unit of a MOVE_*_DELTA button:
# Doom's thrust against its ground friction (measured: 0.652 units per 2-tic frame per unit at
# speeds 2, 5 and 10). Speeds reach it with a time constant of about 10 tics (momentum).
MOVE_UNITS_PER_TIC = 0.326
WADS = Wad.values()


def all_maps(wad: str) -> list[str]:
  if wad == "freedoom2":
    return [f"MAP{i:02d}" for i in range(1, 33)]
  if wad == "freedoom1":
    return [f"E{e}M{m}" for e in range(1, 5) for m in range(1, 10)]
  raise DataError(f"unknown WAD {wad!r}. Fix: use one of {', '.join(WADS)}.")


def map_list(wads, maps, heldout) -> list[str]:
  """The "wad/MAP" names to generate from: `maps` if given, else every map of `wads`; minus
  `heldout`."""
  known = {f"{w}/{m}" for w in WADS for m in all_maps(w)}
  for name in list(maps) + list(heldout):
    if name not in known:
      raise DataError(f"config.data.gen map {name!r} is unknown. Fix: name maps as "
                      "'freedoom2/MAP01' .. 'freedoom2/MAP32' or 'freedoom1/E1M1' .. "
                      "'freedoom1/E4M9'.")
  chosen = list(maps) if maps else [f"{w}/{m}" for w in wads for m in all_maps(w)]
  out = [m for m in chosen if m not in set(heldout)]
  if not out:
    raise DataError("config.data.gen selects no maps (all are held out). Fix: list maps in "
                    "config.data.gen.maps or shorten heldout_maps.")
  return out


@dataclasses.dataclass(frozen=True)
class GenConfig:
  height: int = 64
  width: int = 64
  frames_per_episode: int = 300
  render_resolution: str = "256x192"
  tics_per_frame: int = 2
  max_pitch_deg: float = 20.0
  spawn: str = "random"

  @classmethod
  def from_config(cls, g) -> "GenConfig":
    return cls(**{f.name: g[f.name] for f in dataclasses.fields(cls)})

  @property
  def fps(self) -> float:
    return TICS_PER_SECOND / self.tics_per_frame


def _resolution(text: str):
  # vizdoom: a heavy optional dependency (the engine binding), only when episodes are rendered
  import vizdoom as vzd  # noqa: PLC0415
  name = "RES_" + text.upper()
  if not hasattr(vzd.ScreenResolution, name):
    options = sorted(n[4:].lower() for n in dir(vzd.ScreenResolution) if n.startswith("RES_"))
    raise DataError(f"config.data.gen.render_resolution={text!r} is not a ViZDoom resolution. "
                    f"Fix: use one of {', '.join(options)}.")
  return getattr(vzd.ScreenResolution, name)


def make_game(map_path: str, seed: int, render_resolution: str = "256x192",
              sectors: bool = False):
  """A headless ViZDoom game on `map_path` ("freedoom2/MAP01") with a free camera."""
  import vizdoom as vzd  # noqa: PLC0415  (heavy optional dependency, as above)
  wad, level = map_path.split("/")
  game = vzd.DoomGame()
  game.set_doom_game_path(os.path.join(os.path.dirname(vzd.__file__), f"{wad}.wad"))
  game.set_doom_map(level)
  game.set_screen_resolution(_resolution(render_resolution))
  game.set_screen_format(vzd.ScreenFormat.RGB24)
  for setter in (game.set_render_hud, game.set_render_weapon, game.set_render_crosshair,
                 game.set_render_messages, game.set_render_corpses, game.set_window_visible,
                 game.set_sound_enabled):
    setter(False)
  game.set_depth_buffer_enabled(True)
  game.set_sectors_info_enabled(sectors)
  game.set_mode(vzd.Mode.PLAYER)
  game.set_episode_timeout(0)
  game.set_seed(int(seed) % (2**31 - 1))
  game.add_game_args("-nomonsters +freelook 1 +movebob 0 +vid_forcesurface 0")
  b = vzd.Button
  game.set_available_buttons([b.MOVE_FORWARD_BACKWARD_DELTA, b.MOVE_LEFT_RIGHT_DELTA,
                              b.TURN_LEFT_RIGHT_DELTA, b.LOOK_UP_DOWN_DELTA])
  v = vzd.GameVariable
  game.set_available_game_variables([v.CAMERA_POSITION_X, v.CAMERA_POSITION_Y,
                                     v.CAMERA_POSITION_Z, v.CAMERA_ANGLE, v.CAMERA_PITCH,
                                     v.CAMERA_ROLL])
  game.init()
  return game


@functools.lru_cache(maxsize=16)
def _sectors(map_path: str) -> tuple:
  """Per sector: (lines [L, 4] in map units, floor height, ceiling height), and the blocking
  lines [B, 4] of the whole map. Read once per map and process (sector info slows rendering, so
  the episode's own game runs without it)."""
  game = make_game(map_path, 0, "160x120", sectors=True)
  try:
    state = game.get_state()
    sectors = [(np.array([(l.x1, l.y1, l.x2, l.y2) for l in s.lines], np.float64).reshape(-1, 4),
                float(s.floor_height), float(s.ceiling_height)) for s in state.sectors]
  finally:
    game.close()
  blocking = np.array([(l.x1, l.y1, l.x2, l.y2) for s in state.sectors for l in s.lines
                       if l.is_blocking], np.float64).reshape(-1, 4)
  return sectors, blocking


def map_geometry(map_path: str) -> np.ndarray:
  """The map's blocking wall segments [L, 4] (x1, y1, x2, y2) in metres, for top-down plots."""
  return _sectors(map_path)[1] / UNITS_PER_METRE


def _inside(lines: np.ndarray, x: float, y: float) -> bool:
  """Even-odd rule: is (x, y) inside the polygon(s) bounded by `lines`?"""
  x1, y1, x2, y2 = lines.T
  crosses = (y1 > y) != (y2 > y)
  with np.errstate(divide="ignore", invalid="ignore"):
    xs = x1 + (y - y1) * (x2 - x1) / (y2 - y1)
  return bool(np.count_nonzero(crosses & (xs > x)) % 2)


def _distance_to_lines(lines: np.ndarray, x: float, y: float) -> float:
  a, b = lines[:, :2], lines[:, 2:]
  ab = b - a
  t = np.clip(((np.array([x, y]) - a) * ab).sum(-1) / np.maximum((ab * ab).sum(-1), 1e-9), 0, 1)
  return float(np.linalg.norm(a + t[:, None] * ab - np.array([x, y]), axis=-1).min())


def spawn_point(map_path: str, rng: np.random.Generator, clearance: float = 40.0,
                headroom: float = 72.0) -> tuple[float, float]:
  """A random (x, y) in map units inside a sector with room for the camera: at least
  `headroom` between floor and ceiling and `clearance` from every wall. Sectors are chosen with
  probability proportional to their bounding-box area."""
  sectors, blocking = _sectors(map_path)
  ok = [s for s in sectors if len(s[0]) >= 3 and s[2] - s[1] >= headroom]
  if not ok or not len(blocking):
    raise DataError(f"{map_path}: no sector with room for the camera. Fix: leave this map out "
                    "(config.data.gen.maps) or use config.data.gen.spawn='start'.")
  lo = np.array([np.minimum(s[0][:, :2], s[0][:, 2:]).min(0) for s in ok])
  hi = np.array([np.maximum(s[0][:, :2], s[0][:, 2:]).max(0) for s in ok])
  area = np.prod(hi - lo, axis=1)
  p = area / area.sum()
  for _ in range(500):
    k = rng.choice(len(ok), p=p)
    x, y = rng.uniform(lo[k], hi[k])
    if _inside(ok[k][0], x, y) and _distance_to_lines(blocking, x, y) >= clearance:
      return float(x), float(y)
  raise DataError(f"{map_path}: found no open spot for the camera in 500 tries. Fix: leave "
                  "this map out or use config.data.gen.spawn='start'.")


def camera_pose(game_variables) -> np.ndarray:
  x, y, z, angle, pitch, roll = (float(v) for v in game_variables)
  # Doom's pitch is positive looking down; roll is clockwise-positive as ours.
  return poses_lib.pose_from_yaw_pitch(np.array([x, y, z]) / UNITS_PER_METRE, np.radians(angle),
                                       -np.radians(pitch), np.radians(roll))


def resize_frame(screen: np.ndarray, height: int, width: int) -> np.ndarray:
  """Centre-crop the rendered screen to height:width and resize it (box filter)."""
  h, w = screen.shape[:2]
  if w * height > h * width:  # too wide: crop columns
    cw = int(round(h * width / height))
    x0 = (w - cw) // 2
    screen = screen[:, x0:x0 + cw]
  else:
    ch = int(round(w * height / width))
    y0 = (h - ch) // 2
    screen = screen[y0:y0 + ch]
  if screen.shape[:2] == (height, width):
    return np.ascontiguousarray(screen)
  return np.asarray(Image.fromarray(screen).resize((width, height), Image.Resampling.BOX))


class _Camera:
  """Steps the game and records frames and poses; knows the yaw, pitch and what is ahead."""

  def __init__(self, game, cfg: GenConfig, rng: np.random.Generator):
    self.game, self.cfg, self.rng = game, cfg, rng
    self.frames, self.poses = [], []
    self._vars = None
    self._depth = None
    self._record()

  def _record(self):
    state = self.game.get_state()
    if state is None:
      raise DataError("ViZDoom ended the episode unexpectedly (the level was exited). Fix: "
                      "use another seed or map.")
    self._vars = np.asarray(state.game_variables, np.float64)
    self._depth = state.depth_buffer
    self.frames.append(resize_frame(state.screen_buffer, self.cfg.height, self.cfg.width))
    self.poses.append(camera_pose(self._vars))

  @property
  def full(self) -> bool:
    return len(self.frames) >= self.cfg.frames_per_episode

  @property
  def yaw(self) -> float:  # degrees
    return float(self._vars[3])

  @property
  def pitch_up(self) -> float:  # degrees
    return -float(self._vars[4])

  @property
  def position(self) -> np.ndarray:
    return self._vars[:2].copy()

  def step(self, forward=0.0, side=0.0, yaw_rate=0.0, pitch_rate=0.0):
    """One frame: forward/side speeds, yaw change (deg, + = left) and pitch change (deg, + =
    up), spread over the frame's tics."""
    tics = self.cfg.tics_per_frame
    limit = self.cfg.max_pitch_deg
    pitch_rate = float(np.clip(pitch_rate, -limit - self.pitch_up, limit - self.pitch_up))
    self.game.make_action([float(forward), float(side), -yaw_rate / tics, pitch_rate / tics],
                          tics)
    self._record()

  def clearance(self) -> tuple[float, float, float]:
    """Nearness of what is left, ahead and right: the 10th-percentile depth value of the left,
    middle and right thirds of a band of rows just above the horizon (ViZDoom's 8-bit depth;
    small = near; about map units / 7.5). Above the horizon, so the floor in front of the
    camera does not count."""
    d = self._depth
    h, w = d.shape
    band = d[h // 2 - h // 8: h // 2]
    thirds = [band[:, :w // 3], band[:, w // 3: 2 * w // 3], band[:, 2 * w // 3:]]
    return tuple(float(np.percentile(t, 10)) for t in thirds)

  def blocked(self, threshold: float = 8.0) -> bool:  # ~60 map units, ~1.9 m
    return self.clearance()[1] < threshold


def _angle_diff(target: float, current: float) -> float:
  return (target - current + 180.0) % 360.0 - 180.0


# ------------------------------------------------------------------ the pilot's segments


def _turn_by(cam: _Camera, degrees: float, rate: float):
  """Turn by `degrees` (+ = left) at `rate` deg/frame, ending on the exact target yaw."""
  target = cam.yaw + degrees
  for _ in range(int(abs(degrees) / rate) + 8):
    remaining = _angle_diff(target, cam.yaw)
    if abs(remaining) < 0.05 or cam.full:
      return
    cam.step(yaw_rate=float(np.clip(remaining, -rate, rate)))


def _walk(cam: _Camera, frames: int, speed: float, curve: float = 0.0, side: float = 0.0) -> int:
  """Walk (speed > 0 forward, < 0 back) for up to `frames`; stops early at a wall. Returns the
  frames walked."""
  stuck = 0
  for i in range(frames):
    if cam.full or (speed > 0 and cam.blocked()):
      return i
    before = cam.position
    cam.step(forward=speed, side=side, yaw_rate=curve)
    stuck = stuck + 1 if np.linalg.norm(cam.position - before) < 0.5 else 0
    if stuck >= 3:
      return i + 1
  return frames


def _pause(cam: _Camera, frames: int):
  for _ in range(frames):
    if cam.full:
      return
    cam.step()


def _look(cam: _Camera, rng, pitch: float, rate: float, hold: int):
  for _ in range(int(abs(pitch) / rate) + 1):
    if cam.full:
      return
    cam.step(pitch_rate=float(np.clip(pitch - cam.pitch_up, -rate, rate)))
  _pause(cam, hold)
  while abs(cam.pitch_up) > 0.05 and not cam.full:
    cam.step(pitch_rate=float(np.clip(-cam.pitch_up, -rate, rate)))


def _avoid(cam: _Camera, rng):
  left, _, right = cam.clearance()
  sign = 1.0 if left > right else -1.0
  _turn_by(cam, sign * rng.uniform(60, 150), rng.uniform(4, 9))


SEGMENTS = ("walk", "turn", "look", "pause", "strafe", "back", "pan360", "look_away_back",
            "out_and_back")
_WEIGHTS = np.array([0.28, 0.1, 0.08, 0.07, 0.1, 0.05, 0.08, 0.12, 0.12])


def _segment(cam: _Camera, rng, kind: str):
  sign = 1.0 if rng.random() < 0.5 else -1.0
  if kind == "walk":
    walked = _walk(cam, int(rng.integers(15, 60)), rng.uniform(4, 12), rng.normal(0, 0.8))
    if walked < 5:
      _avoid(cam, rng)
  elif kind == "turn":
    _turn_by(cam, sign * rng.uniform(30, 120), rng.uniform(3, 8))
  elif kind == "look":
    _look(cam, rng, sign * rng.uniform(6, cam.cfg.max_pitch_deg), rng.uniform(1, 3),
          int(rng.integers(3, 10)))
  elif kind == "pause":
    _pause(cam, int(rng.integers(5, 20)))
  elif kind == "strafe":
    _walk(cam, int(rng.integers(10, 30)), 0.0, 0.0, side=sign * rng.uniform(4, 10))
  elif kind == "back":
    _walk(cam, int(rng.integers(8, 20)), -rng.uniform(4, 8))
  elif kind == "pan360":
    rate = rng.uniform(5, 10)
    _turn_by(cam, sign * 180.0, rate)
    _turn_by(cam, sign * 180.0, rate)
  elif kind == "look_away_back":
    angle, rate = sign * rng.uniform(60, 180), rng.uniform(4, 10)
    _turn_by(cam, angle, rate)
    _pause(cam, int(rng.integers(0, 10)))
    _turn_by(cam, -angle, rate)
  elif kind == "out_and_back":
    speed, rate = rng.uniform(5, 10), rng.uniform(6, 10)
    walked = _walk(cam, int(rng.integers(15, 40)), speed)
    _turn_by(cam, 180.0 * sign, rate)
    _walk(cam, walked, speed)
    _turn_by(cam, 180.0 * sign, rate)
  else:
    raise ValueError(kind)


# ------------------------------------------------------------------ captions

_PALETTE = {"grey": (110, 110, 110), "dark grey": (50, 50, 50), "brown": (110, 80, 50),
            "tan": (170, 140, 100), "green": (60, 110, 50), "red": (150, 40, 30),
            "blue": (50, 60, 140), "orange": (190, 110, 40), "white": (210, 210, 210),
            "black": (15, 15, 15)}


def caption_for(map_path: str, frames: np.ndarray) -> str:
  """A template caption of the static scene: the level, its light and its dominant colours."""
  sample = frames[:: max(1, len(frames) // 16)].reshape(-1, 3).astype(np.float32)
  names = list(_PALETTE)
  centres = np.array([_PALETTE[n] for n in names], np.float32)
  nearest = np.argmin(((sample[:, None, :] - centres[None]) ** 2).sum(-1), -1)
  counts = np.bincount(nearest, minlength=len(names))
  top = [names[i] for i in np.argsort(-counts)[:2] if counts[i] > 0]
  luma = float((sample @ np.array([0.299, 0.587, 0.114], np.float32)).mean())
  light = "dark" if luma < 35 else "dimly lit" if luma < 75 else "brightly lit"
  wad, level = map_path.split("/")
  phase = {"freedoom1": "Freedoom: Phase 1", "freedoom2": "Freedoom: Phase 2"}[wad]
  return (f"A {light} level of {phase} ({level}), a static scene of {' and '.join(top)} walls, "
          "floors and ceilings, seen by a camera moving through it.")


# ------------------------------------------------------------------ episodes


def _place(game, map_path: str, rng, spawn: str) -> None:
  """Invulnerable (damaging floors must not end the episode), at a random open spot of the map
  (spawn='random', drawn from rng) or the map's player start ('start'), landed on the floor."""
  game.send_game_command("god")
  if spawn == "random":
    x, y = spawn_point(map_path, rng)
    game.send_game_command(f"warp {x:.3f} {y:.3f}")
  elif spawn != "start":
    raise DataError(f"config.data.gen.spawn={spawn!r} is unknown. Fix: use 'random' (a "
                    "random open spot of the map) or 'start' (the map's player start).")
  game.make_action([0.0, 0.0, 0.0, 0.0], 2 * int(TICS_PER_SECOND))


def generate_episode(map_path: str, seed: int, cfg: GenConfig, name: str | None = None,
                     game=None) -> Episode:
  """One exploration episode of cfg.frames_per_episode frames on `map_path`, fully determined
  by (map_path, seed, cfg)."""
  rng = np.random.default_rng([int(seed) % (2**63)])
  own = game is None
  if own:
    game = make_game(map_path, seed, cfg.render_resolution)
  else:
    game.set_seed(int(seed) % (2**31 - 1))
    game.new_episode()
  try:
    _place(game, map_path, rng, cfg.spawn)
    cam = _Camera(game, cfg, rng)
    # a random initial heading, so episodes on one map start differently
    _turn_by(cam, rng.uniform(-180, 180), 12.0)
    while not cam.full:
      _segment(cam, rng, SEGMENTS[rng.choice(len(SEGMENTS), p=_WEIGHTS / _WEIGHTS.sum())])
  finally:
    if own:
      game.close()
  frames = np.stack(cam.frames[:cfg.frames_per_episode])
  poses = np.stack(cam.poses[:cfg.frames_per_episode])
  name = name or f"{map_path.replace('/', '-')}-{seed}"
  return make_episode(name, frames, poses, caption_for(map_path, frames), cfg.fps,
                      source=f"vizdoom:{map_path}", map_name=map_path, seed=seed)


# ------------------------------------------------------------------ scripted truth


def _open_heading(game, rng, tries: int = 8) -> None:
  """Turn to the most open of `tries` evenly spaced headings (from a random offset): the one
  whose view straight ahead is farthest (depth buffer), so scripted walks start into space."""
  offset = rng.uniform(0, 360.0 / tries)
  game.make_action([0.0, 0.0, -offset, 0.0], 1)
  best, best_depth = 0, -1.0
  for i in range(tries):
    d = game.get_state().depth_buffer
    h, w = d.shape
    ahead = float(np.percentile(d[h // 2 - h // 8: h // 2, w // 3: 2 * w // 3], 10))
    if ahead > best_depth:
      best, best_depth = i, ahead
    game.make_action([0.0, 0.0, -360.0 / tries, 0.0], 1)
  game.make_action([0.0, 0.0, -360.0 / tries * best, 0.0], 1)  # full circle, then to the best


def render_actions(map_path: str, seed: int, actions, action_scale: float, cfg: GenConfig,
                   name: str | None = None) -> Episode:
  """The truth for a scripted camera: the frames and poses the engine renders when the camera
  follows `actions` [N - 1, 13] (RELIC's channels, the motion into frames 1..N-1) from a random
  open spot of the map (seeded) facing its most open direction. Translations are action units
  of `action_scale` metres per frame, turned into the engine's movement buttons at their
  steady-state speed (so speed changes ramp over ~5 frames, as in the training episodes, and
  walls stop the camera); pan and tilt are exact. Pedestal and roll have no engine control
  here. The episode's poses are what the engine did: the actions to condition a model on are
  poses.actions_from_poses(episode.poses, action_scale)."""
  a = np.asarray(actions, np.float64)
  if a.ndim != 2 or a.shape[1] != poses_lib.ACTION_DIM:
    raise DataError(f"render_actions: actions must be [N, {poses_lib.ACTION_DIM}], got {a.shape}")
  dp, ang = poses_lib.signed_motion(a, 1.0)  # action units; angles in radians
  if np.abs(dp[:, 1]).max(initial=0) > 0 or np.abs(ang[:, 2]).max(initial=0) > 0:
    raise DataError("render_actions: the ViZDoom camera cannot pedestal (up/down) or roll. "
                    "Fix: script only dolly, truck, pan, tilt and static.")
  rng = np.random.default_rng([int(seed) % (2**63), 1])
  game = make_game(map_path, seed, cfg.render_resolution)
  try:
    _place(game, map_path, rng, "random")
    _open_heading(game, rng)
    cam = _Camera(game, dataclasses.replace(cfg, frames_per_episode=len(a) + 1), rng)
    per_frame = MOVE_UNITS_PER_TIC * cfg.tics_per_frame / UNITS_PER_METRE  # metres per unit
    # the heading and pitch track the script's running totals (closed loop), so the engine's
    # angle rounding does not accumulate: turning away and back returns to the same view
    yaw, pitch = cam.yaw, cam.pitch_up
    for (right, _, forward), (pan, tilt, _) in zip(dp, ang):
      yaw, pitch = yaw - np.degrees(pan), pitch + np.degrees(tilt)
      cam.step(forward=forward * action_scale / per_frame,
               side=right * action_scale / per_frame,
               yaw_rate=_angle_diff(yaw, cam.yaw), pitch_rate=pitch - cam.pitch_up)
  finally:
    game.close()
  frames, poses = np.stack(cam.frames), np.stack(cam.poses)
  name = name or f"{map_path.replace('/', '-')}-{seed}-scripted"
  return make_episode(name, frames, poses, caption_for(map_path, frames), cfg.fps,
                      source=f"vizdoom:{map_path}", map_name=map_path, seed=seed)
