"""A procedural, non-Doom episode source for the tests: a small room rendered first-person by a
pinhole camera from exact poses, written in the ingest format (data_pipeline/ingest.py).

The room is a box 6 m x 5 m x 2.6 m (x east, y north, z up, metres: our world) with four walls
of different colours and patterns, a checkered floor, a gridded ceiling, a pillar and a crate.
Each pixel's ray (OpenCV camera axes: x right, y down, z forward) is cast against the room's
planes and the boxes in vectorised numpy, rendered at twice the size and box-averaged (so
textures do not shimmer as the camera moves): a 64x64 frame takes ~2 ms.

Camera paths are made to revisit views, as the ViZDoom pilot's look-away-and-back and
out-and-back segments are (data_pipeline/doom.py): after a short pause, a chain of excursions
that each come back to where they started ("pan": turn 60-100 degrees and back; "walk": walk
out 1.2-1.6 m and back, facing the same way; "peek": walk out, turn and back, walk back),
joined by moves to a new spot (a turn and a walk that do not return). The plan "drift" never
comes back (slow walks and turns onwards): an episode without revisits, for the evaluation's
no-revisit case. Speeds are the tiny data's: about 1 m/s walking and 50-75 degrees/s turning at
17.5 frames per second (config.generate.fps and generate.action_scale = 0.06 m per frame).

  render(pose, size)          one frame [size, size, 3] uint8 of a camera-to-world pose (ours)
  camera_path(n, rng, plan)   poses [n, 4, 4] of a seeded path
  write_source(root, ...)     an ingest-format source directory of episodes; deterministic per
                              seed; poses written in another convention (default "opengl" with
                              a y-up world) so ingestion's conversion is exercised
"""

import os

import numpy as np

from data_pipeline import ingest as ingest_lib
from data_pipeline import poses as poses_lib

FPS = 17.5
ROOM = np.array([6.0, 5.0, 2.6])      # the room's far corner; the near one is the origin
EYE_HEIGHT = 1.5                      # metres
HFOV_DEG = 75.0
CLEARANCE = 0.45                      # metres a camera keeps from walls and boxes
WALK_PER_FRAME = 0.06                 # metres (~1 m/s at 17.5 fps, the action scale)
CAPTION = ("A small room with a red striped wall, a blue checkered wall, a green wall with a "
           "window, a yellow wall, a grey pillar and an orange crate.")
PLANS = ("tour", "drift")

# Boxes inside the room: (low corner, high corner, base colour, material)
BOXES = (
    (np.array([4.0, 1.0, 0.0]), np.array([4.5, 1.5, 2.6]), (0.55, 0.55, 0.6), "bands"),
    (np.array([1.2, 3.4, 0.0]), np.array([2.0, 4.1, 0.9]), (0.95, 0.55, 0.15), "crate"),
)
# Room faces, keyed by (axis, side): side 0 the low plane (x = 0 ...), 1 the high one.
ROOM_FACES = {
    (0, 0): ((0.85, 0.2, 0.2), "stripes"),   # west wall: red, vertical stripes
    (0, 1): ((0.2, 0.35, 0.9), "checker"),   # east wall: blue, checker
    (1, 0): ((0.25, 0.75, 0.3), "window"),   # south wall: green, a window
    (1, 1): ((0.9, 0.85, 0.25), "diagonal"),  # north wall: yellow, diagonal stripes
    (2, 0): ((0.5, 0.5, 0.5), "checker"),    # floor
    (2, 1): ((0.9, 0.9, 0.85), "grid"),      # ceiling
}
LIGHT = np.array([0.4, 0.25, 0.88]) / np.linalg.norm([0.4, 0.25, 0.88])


def _pattern(kind: str, u, v):
  """Brightness factor in [0.35, 1] of a material at face coordinates (u, v) in metres."""
  if kind == "stripes":
    return np.where((np.floor(u / 0.35) % 2) == 0, 1.0, 0.55)
  if kind == "checker":
    return np.where(((np.floor(u / 0.5) + np.floor(v / 0.5)) % 2) == 0, 1.0, 0.5)
  if kind == "diagonal":
    return np.where((np.floor((u + v) / 0.4) % 2) == 0, 1.0, 0.6)
  if kind == "grid":
    return np.where((np.abs(u / 0.6 - np.round(u / 0.6)) < 0.08)
                    | (np.abs(v / 0.6 - np.round(v / 0.6)) < 0.08), 0.45, 1.0)
  if kind == "window":  # a light square with a dark frame, on horizontal bands
    inside = (np.abs(u - 2.5) < 0.9) & (np.abs(v - 1.5) < 0.55)
    frame = (np.abs(u - 2.5) < 1.0) & (np.abs(v - 1.5) < 0.65) & ~inside
    base = np.where((np.floor(v / 0.3) % 2) == 0, 0.85, 0.65)
    return np.where(inside, 1.0, np.where(frame, 0.35, base))
  if kind == "bands":
    return np.where((np.floor(v / 0.25) % 2) == 0, 1.0, 0.6)
  if kind == "crate":  # planks with a dark edge
    edge = (np.minimum(u % 0.4, 0.4 - u % 0.4) < 0.04) | (np.minimum(v % 0.3, 0.3 - v % 0.3)
                                                          < 0.03)
    return np.where(edge, 0.4, 1.0)
  raise ValueError(f"unknown material {kind!r}")


def _box_hits(o, d, lo, hi):
  """Slab test of rays o + t d [N, 3] against the box [lo, hi] from outside: t [N] (inf where
  missed) and the hit face's axis [N]."""
  with np.errstate(divide="ignore", invalid="ignore"):
    t1, t2 = (lo - o) / d, (hi - o) / d
  near, far = np.minimum(t1, t2), np.maximum(t1, t2)
  near = np.where(np.isnan(near), -np.inf, near)
  far = np.where(np.isnan(far), np.inf, far)
  t_near, t_far = near.max(1), far.min(1)
  hit = (t_near <= t_far) & (t_near > 1e-6)
  return np.where(hit, t_near, np.inf), near.argmax(1)


def cast(o, d):
  """Colours [N, 3] in [0, 1] of rays from points o [N, 3] along directions d [N, 3]."""
  o, d = np.broadcast_to(o, d.shape), np.asarray(d, np.float64)
  with np.errstate(divide="ignore"):
    t_axes = np.where(d > 0, (ROOM - o) / d, np.where(d < 0, -o / d, np.inf))
  axis = t_axes.argmin(1)
  t = t_axes[np.arange(len(d)), axis]
  side = (d[np.arange(len(d)), axis] > 0).astype(int)
  n = len(d)
  base = np.zeros((n, 3))
  factor = np.ones(n)
  normal = np.zeros((n, 3))
  normal[np.arange(n), axis] = np.where(side == 1, -1.0, 1.0)
  hit_box = np.full(n, -1)
  for b, (lo, hi, _, _) in enumerate(BOXES):
    tb, ab = _box_hits(o, d, lo, hi)
    closer = tb < t
    t = np.where(closer, tb, t)
    axis = np.where(closer, ab, axis)
    hit_box = np.where(closer, b, hit_box)
    nb = np.zeros((n, 3))
    nb[np.arange(n), ab] = -np.sign(d[np.arange(n), ab])
    normal = np.where(closer[:, None], nb, normal)
  p = o + t[:, None] * d
  # face coordinates: the two world axes in the face's plane (horizontal first, then z)
  uv_axes = np.array([[1, 2], [0, 2], [0, 1]])[axis]
  u = p[np.arange(n), uv_axes[:, 0]]
  v = p[np.arange(n), uv_axes[:, 1]]
  for (ax, sd), (colour, kind) in ROOM_FACES.items():
    m = (hit_box < 0) & (axis == ax) & (side == sd)
    base[m], factor[m] = colour, _pattern(kind, u[m], v[m])
  for b, (lo, _, colour, kind) in enumerate(BOXES):
    m = hit_box == b
    base[m], factor[m] = colour, _pattern(kind, u[m] - lo[uv_axes[m, 0]], v[m])
  shade = 0.55 + 0.45 * np.abs(normal @ LIGHT)
  fog = np.exp(-0.06 * t)
  return np.clip(base * (factor * shade * fog)[:, None], 0.0, 1.0)


def _ray_directions(size: int, supersample: int) -> np.ndarray:
  """Camera-frame directions [(size * supersample)^2, 3] of the pixel centres (OpenCV axes)."""
  n = size * supersample
  f = (n / 2) / np.tan(np.radians(HFOV_DEG) / 2)
  c = np.arange(n) + 0.5 - n / 2
  yy, xx = np.meshgrid(c, c, indexing="ij")
  return np.stack([xx / f, yy / f, np.ones_like(xx)], -1).reshape(-1, 3)


def render(pose, size: int = 64, supersample: int = 2) -> np.ndarray:
  """The frame [size, size, 3] uint8 the camera-to-world pose (ours) sees."""
  pose = np.asarray(pose, np.float64)
  d = _ray_directions(size, supersample) @ pose[:3, :3].T
  rgb = cast(pose[:3, 3], d).reshape(size, supersample, size, supersample, 3).mean((1, 3))
  return np.round(255 * rgb).astype(np.uint8)


# ------------------------------------------------------------------ camera paths


def free_distance(position, yaw: float) -> float:
  """Metres a camera at `position` can walk along the horizontal heading `yaw` before it comes
  within CLEARANCE of a wall or a box."""
  d = np.array([[np.cos(yaw), np.sin(yaw), 0.0]])
  o = np.asarray(position, np.float64)[None]
  with np.errstate(divide="ignore"):
    t_room = np.where(d > 0, (ROOM - CLEARANCE - o) / d,
                      np.where(d < 0, (CLEARANCE - o) / d, np.inf)).min()
  t = t_room
  for lo, hi, _, _ in BOXES:  # boxes grown by the clearance
    tb, _ = _box_hits(o, d, lo - CLEARANCE, hi + CLEARANCE)
    t = min(t, float(tb[0]))
  return max(0.0, float(t))


class _Walker:
  """A camera state (position, yaw) and the poses it has taken, one per frame."""

  def __init__(self, position, yaw: float, pitch: float):
    self.p, self.yaw, self.pitch = np.asarray(position, np.float64), float(yaw), float(pitch)
    self.poses = [poses_lib.pose_from_yaw_pitch(self.p, self.yaw, self.pitch)]

  def _emit(self):
    self.poses.append(poses_lib.pose_from_yaw_pitch(self.p, self.yaw, self.pitch))

  def hold(self, frames: int):
    for _ in range(frames):
      self._emit()

  def turn(self, angle: float, rate: float):
    """Turns by `angle` radians (counter-clockwise +) at `rate` radians per frame."""
    n = max(1, int(np.ceil(abs(angle) / rate)))
    start = self.yaw
    for k in range(1, n + 1):
      self.yaw = start + angle * k / n
      self._emit()

  def walk(self, distance: float, step: float = WALK_PER_FRAME):
    """Walks `distance` metres along the heading (negative: backwards)."""
    n = max(1, int(np.ceil(abs(distance) / step)))
    start = self.p.copy()
    heading = np.array([np.cos(self.yaw), np.sin(self.yaw), 0.0])
    for k in range(1, n + 1):
      self.p = start + heading * distance * k / n
      self._emit()


def _start(rng) -> tuple[np.ndarray, float]:
  """A random open spot and heading with at least 1 m free ahead."""
  for _ in range(1000):
    p = np.array([rng.uniform(CLEARANCE, ROOM[0] - CLEARANCE),
                  rng.uniform(CLEARANCE, ROOM[1] - CLEARANCE), EYE_HEIGHT])
    yaw = rng.uniform(-np.pi, np.pi)
    inside_box = any(np.all(p[:2] > lo[:2] - CLEARANCE) and np.all(p[:2] < hi[:2] + CLEARANCE)
                     for lo, hi, _, _ in BOXES)
    if not inside_box and free_distance(p, yaw) > 1.0:
      return p, yaw
  raise RuntimeError("no open spot found")  # cannot happen in this room


def camera_path(n: int, rng: np.random.Generator, plan: str = "tour") -> np.ndarray:
  """Camera-to-world poses [n, 4, 4] (ours) of a seeded path (plans: the module docstring)."""
  if plan not in PLANS:
    raise ValueError(f"plan {plan!r} is unknown. Fix: use one of {', '.join(PLANS)}.")
  p, yaw = _start(rng)
  w = _Walker(p, yaw, np.radians(rng.uniform(-6.0, 2.0)))
  turn_rate = lambda: np.radians(rng.uniform(50.0, 75.0)) / FPS
  w.hold(int(rng.integers(5, 10)))
  while len(w.poses) < n:
    if plan == "drift":  # onwards only: slow turns one way and walks into new space
      w.turn(np.radians(rng.uniform(25.0, 45.0)), np.radians(20.0) / FPS)
      w.walk(min(0.8, free_distance(w.p, w.yaw)))
      continue
    free = free_distance(w.p, w.yaw)
    kind = rng.choice(["pan", "walk", "peek"] if free > 0.9 else ["pan"])
    if kind == "pan":
      angle = np.radians(rng.uniform(60.0, 100.0)) * rng.choice([-1, 1])
      rate = turn_rate()
      w.turn(angle, rate)
      w.hold(int(rng.integers(2, 8)))
      w.turn(-angle, rate)
    elif kind == "walk":  # out and back, facing the same way (dolly in, then out)
      d = min(rng.uniform(1.2, 1.6), free)
      w.walk(d)
      w.hold(int(rng.integers(3, 8)))
      w.walk(-d)
    else:  # peek: walk out, look aside and back, walk back
      d = min(rng.uniform(0.6, 1.2), free)
      w.walk(d)
      angle = np.radians(rng.uniform(50.0, 90.0)) * rng.choice([-1, 1])
      rate = turn_rate()
      w.turn(angle, rate)
      w.turn(-angle, rate)
      w.walk(-d)
    w.hold(int(rng.integers(2, 6)))
    # move on to a new spot: a turn and a walk that do not come back
    w.turn(np.radians(rng.uniform(40.0, 140.0)) * rng.choice([-1, 1]), turn_rate())
    w.walk(min(rng.uniform(0.3, 1.0), free_distance(w.p, w.yaw)))
  return np.stack(w.poses[:n])


# ------------------------------------------------------------------ the source directory


def make_episode(index: int, frames: int, size: int = 64, seed: int = 0,
                 plan: str = "tour") -> dict:
  """Episode `index` of a seed: {"name", "frames" [N, size, size, 3] uint8, "poses" [N, 4, 4]
  (ours), "caption", "plan"}."""
  rng = np.random.default_rng([seed, index])
  poses = camera_path(frames, rng, plan)
  return {"name": f"room{index:03d}", "frames": np.stack([render(p, size) for p in poses]),
          "poses": poses, "caption": CAPTION, "plan": plan}


def write_source(root: str, episodes: int = 4, frames: int = 110, size: int = 64,
                 seed: int = 0, convention: str = "opengl", world_up: str = "+y",
                 fps: float = FPS, plans: tuple[str, ...] = ("tour",)) -> list[dict]:
  """Writes `episodes` episodes of `frames` frames (episode i follows plans[i % len(plans)])
  as an ingest source directory at `root` (data_pipeline.ingest.export_episode: png frames,
  poses in `convention` / `world_up`, episode.json with fps and caption). Returns the
  episodes as `make_episode` gives them (poses in our convention), each with its "path"."""
  out = []
  for i in range(episodes):
    ep = make_episode(i, frames, size, seed, plans[i % len(plans)])
    ep["path"] = os.path.join(root, ep["name"])
    ingest_lib.export_episode(ep["path"], ep["frames"], ep["poses"], fps, ep["caption"],
                              convention=convention, world_up=world_up)
    out.append(ep)
  return out
