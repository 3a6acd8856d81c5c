"""Camera poses, pose conventions and RELIC's 13-d actions. Pure numpy.

Our convention (every pose stored in shards):
  * a pose is a 4x4 **camera-to-world** matrix C = [[R, p], [0, 0, 0, 1]] in float64;
  * camera axes are OpenCV's: x right, y down, z forward (the viewing direction);
  * the world is right-handed with **z up**; positions are in metres.
  The columns of R are the camera's right, down and forward directions in world coordinates, and
  p is the camera centre.

Conversions from other conventions (`to_ours` / `from_ours`):
  * "opencv":  camera x right, y down, z forward; world axes as given (a right-handed world).
  * "opengl":  camera x right, y up, z backward (OpenGL, Blender, NeRF); right-handed world.
  * "unreal":  Unreal Engine: left-handed, z up, x forward, y right, centimetres. The camera
               looks along its local +x, +y is its right, +z its up.
  For "opencv"/"opengl" the world's up axis is named by `world_up` ("+z", "+y", "-y") and is
  rotated onto our +z; "unreal" and "ours" are always z up (world_up is ignored).

Actions (RELIC_NOTES.md, "RELIC additions"). With R_t the world-to-camera rotation of frame t
(the transpose of the pose's rotation) and p_t the camera centre:
  dP_t = R_{t-1} (p_t - p_{t-1})           camera-frame translation from frame t-1 to t
  dR_t = R_t R_{t-1}^T                     relative rotation
and the camera's own rotation in frame t-1's axes, Q_t = dR_t^T = R_{t-1} R_t^T, decomposed as
Q = Ry(pan) Rx(tilt) Rz(roll) (yaw-pitch-roll about the camera's down, right and forward axes).
action[t] is the motion *into* frame t (action[0] is "static"), in 13 non-negative channels:
   0 dolly in    (+z)    1 dolly out   (-z)     translation / scale, where scale is the mean
   2 truck left  (-x)    3 truck right (+x)     |dP| over the clip (1 for a static clip)
   4 pedestal up (-y)    5 pedestal down (+y)
   6 tilt up    (+tilt)  7 tilt down  (-tilt)   radians per frame
   8 pan left   (-pan)   9 pan right  (+pan)
  10 roll cw    (+roll) 11 roll ccw   (-roll)
  12 static: 1 when the camera neither moved (|dP| <= STATIC_TRANSLATION m) nor turned
     (every angle <= STATIC_ROTATION rad) into this frame, else 0.
Integrating the actions from the first pose gives back every pose (`integrate_actions`).

Limits (`check_poses`, `checked_actions`): besides being finite and rigid, a pose in our
convention has every coordinate of its camera centre within +-MAX_TRANSLATION (1e5 m,
100 km): larger values are a unit or export mistake, and their differences (the actions, the
network's pose input) overflow or lose all precision (a clip at 1e308 m made NaN batches).
The actions derived from a pose sequence must be finite as well.
"""

import numpy as np

ACTION_NAMES = ("dolly_in", "dolly_out", "truck_left", "truck_right", "pedestal_up",
                "pedestal_down", "tilt_up", "tilt_down", "pan_left", "pan_right", "roll_cw",
                "roll_ccw", "static")
ACTION_DIM = 13
STATIC_TRANSLATION = 1e-4  # metres per frame
STATIC_ROTATION = 1e-4     # radians per frame
CONVENTIONS = ("ours", "opencv", "opengl", "unreal")
WORLD_UPS = ("+z", "+y", "-y")
ORTHONORMAL_TOL = 1e-3
MAX_TRANSLATION = 1e5      # metres: the largest |x|, |y|, |z| of a camera centre (ours)


class PoseError(ValueError):
  """A pose array that is not a valid camera-to-world pose sequence."""


def rot_x(a):
  c, s = np.cos(a), np.sin(a)
  return np.array([[1, 0, 0], [0, c, -s], [0, s, c]], np.float64)


def rot_y(a):
  c, s = np.cos(a), np.sin(a)
  return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]], np.float64)


def rot_z(a):
  c, s = np.cos(a), np.sin(a)
  return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]], np.float64)


def euler_yxz(q: np.ndarray) -> np.ndarray:
  """(pan, tilt, roll) with q = Ry(pan) Rx(tilt) Rz(roll); q [..., 3, 3]."""
  tilt = np.arcsin(np.clip(-q[..., 1, 2], -1.0, 1.0))
  pan = np.arctan2(q[..., 0, 2], q[..., 2, 2])
  roll = np.arctan2(q[..., 1, 0], q[..., 1, 1])
  return np.stack([pan, tilt, roll], -1)


def compose_yxz(angles: np.ndarray) -> np.ndarray:
  """Inverse of `euler_yxz`: angles [..., 3] (pan, tilt, roll) -> [..., 3, 3]."""
  angles = np.asarray(angles, np.float64)
  pan, tilt, roll = angles[..., 0], angles[..., 1], angles[..., 2]
  ca, sa, cb, sb, cc, sc = (np.cos(pan), np.sin(pan), np.cos(tilt), np.sin(tilt), np.cos(roll),
                            np.sin(roll))
  ry = np.zeros(angles.shape[:-1] + (3, 3))
  ry[..., 0, 0], ry[..., 0, 2], ry[..., 1, 1], ry[..., 2, 0], ry[..., 2, 2] = ca, sa, 1, -sa, ca
  rx = np.zeros_like(ry)
  rx[..., 0, 0], rx[..., 1, 1], rx[..., 1, 2], rx[..., 2, 1], rx[..., 2, 2] = 1, cb, -sb, sb, cb
  rz = np.zeros_like(ry)
  rz[..., 0, 0], rz[..., 0, 1], rz[..., 1, 0], rz[..., 1, 1], rz[..., 2, 2] = cc, -sc, sc, cc, 1
  return ry @ rx @ rz


def pose_from_yaw_pitch(position, yaw, pitch_up, roll=0.0) -> np.ndarray:
  """Our camera-to-world pose for a camera at `position` (metres, z up) looking along yaw
  (radians, counter-clockwise from +x) and pitch_up (radians, positive = looking up)."""
  cy, sy, cp, sp = np.cos(yaw), np.sin(yaw), np.cos(pitch_up), np.sin(pitch_up)
  forward = np.array([cy * cp, sy * cp, sp])
  right = np.array([sy, -cy, 0.0])
  down = np.cross(forward, right)
  r = np.stack([right, down, forward], 1) @ rot_z(roll)
  pose = np.eye(4)
  pose[:3, :3], pose[:3, 3] = r, position
  return pose


# ------------------------------------------------------------------ validation


def check_poses(poses, name: str = "poses",
                max_translation: float | None = MAX_TRANSLATION) -> np.ndarray:
  """Returns poses as float64 [N, 4, 4], or raises PoseError naming the first bad frame.
  `max_translation` bounds every coordinate of the camera centres (metres in our convention);
  None skips that check (poses in another convention's units, checked again once converted)."""
  poses = np.asarray(poses)
  if poses.dtype.kind not in "iuf":
    raise PoseError(f"{name} has dtype {poses.dtype}; expected real numbers. Fix: write float64 "
                    "camera-to-world matrices.")
  if poses.ndim != 3 or poses.shape[1:] not in ((4, 4), (3, 4)):
    raise PoseError(f"{name} has shape {poses.shape}; expected [N, 4, 4] (or [N, 3, 4]) "
                    "camera-to-world matrices. Fix: write one 4x4 matrix per frame.")
  poses = poses.astype(np.float64)
  if poses.shape[1] == 3:
    bottom = np.broadcast_to(np.array([0, 0, 0, 1.0]), (len(poses), 1, 4))
    poses = np.concatenate([poses, bottom], 1)
  bad = ~np.isfinite(poses).all(axis=(1, 2))
  if bad.any():
    i = int(np.argmax(bad))
    raise PoseError(f"{name}[{i}] is not finite ({poses[i].tolist()}). Fix: remove or repair "
                    "that frame's pose.")
  bottom_bad = np.abs(poses[:, 3] - np.array([0, 0, 0, 1.0])).max(-1) > 1e-6
  if bottom_bad.any():
    i = int(np.argmax(bottom_bad))
    raise PoseError(f"{name}[{i}] has last row {poses[i, 3].tolist()}, not [0, 0, 0, 1]. "
                    "Fix: write rigid camera-to-world matrices.")
  r = poses[:, :3, :3]
  with np.errstate(all="ignore"):  # huge entries overflow to inf: refused below, by frame
    err = np.abs(np.swapaxes(r, 1, 2) @ r - np.eye(3)).max((1, 2))
    det = np.linalg.det(r)
  bad = ~((err <= ORTHONORMAL_TOL) & (np.abs(det - 1) <= ORTHONORMAL_TOL))  # NaN: bad
  if bad.any():
    i = int(np.argmax(bad))
    raise PoseError(f"{name}[{i}]: the rotation is not orthonormal with determinant +1 "
                    f"(max |R^T R - I| = {err[i]:.3g}, det = {det[i]:.4g}; tolerance "
                    f"{ORTHONORMAL_TOL}). Fix: write pure rotations (no scale or shear) in the "
                    "pose convention you declared; a determinant of -1 usually means the wrong "
                    "convention.")
  if max_translation is not None:
    far = np.abs(poses[:, :3, 3]).max(-1) > max_translation
    if far.any():
      i = int(np.argmax(far))
      raise PoseError(f"{name}[{i}] has its camera centre at {poses[i, :3, 3].tolist()} m, "
                      f"beyond the limit of +-{max_translation:g} m per coordinate (larger "
                      "values are a unit mistake and overflow the actions). Fix: give positions "
                      "in the declared units (units_per_metre converts them to metres) or "
                      "repair that frame's pose.")
  return poses


def checked_actions(poses, name: str = "poses") -> tuple[np.ndarray, float]:
  """`actions_from_poses(poses)`, refused (PoseError naming the first frame) when an action is
  not finite: the training batches would hold NaN."""
  with np.errstate(all="ignore"):  # overflow is reported below, with the frame
    actions, scale = actions_from_poses(poses)
  bad = ~np.isfinite(actions).all(-1)
  if bad.any() or not np.isfinite(scale):
    i = int(np.argmax(bad))
    raise PoseError(f"{name}[{i}]: the action derived from the motion into this frame is not "
                    f"finite ({actions[i].tolist()}, translation scale {scale:g}). Fix: repair "
                    "the poses around that frame (finite positions within "
                    f"+-{MAX_TRANSLATION:g} m, rigid rotations).")
  return actions, scale


# ------------------------------------------------------------------ conventions

# camera-axis change: columns = the source camera's axes expressed in ours (x right, y down,
# z forward), so R_ours = R_src @ CAM[src]^T ... see to_ours.
_CAM = {
    "ours": np.eye(3),
    "opencv": np.eye(3),
    "opengl": np.diag([1.0, -1.0, -1.0]),
    # Unreal camera: x forward, y right, z up -> ours (right, down, forward) = (y, -z, x)
    "unreal": np.array([[0, 1, 0], [0, 0, -1], [1, 0, 0]], np.float64),
}
_WORLD_UP = {  # rotation taking the source world into a z-up world
    "+z": np.eye(3),
    "+y": rot_x(np.pi / 2),    # y up -> z up
    "-y": rot_x(-np.pi / 2),   # y down -> z up
}
# Unreal's left-handed world (x forward, y right, z up) -> right-handed: flip y.
_UNREAL_WORLD = np.diag([1.0, -1.0, 1.0])


def _world_and_camera(convention: str, world_up: str):
  if convention not in CONVENTIONS:
    raise PoseError(f"pose convention {convention!r} is unknown. Fix: use one of "
                    f"{', '.join(CONVENTIONS)}.")
  if world_up not in WORLD_UPS:
    raise PoseError(f"world_up {world_up!r} is unknown. Fix: use one of {', '.join(WORLD_UPS)}.")
  if convention == "unreal":
    return _UNREAL_WORLD, _CAM["unreal"]
  if convention == "ours":  # z up by definition
    return np.eye(3), _CAM["ours"]
  return _WORLD_UP[world_up], _CAM[convention]


def to_ours(poses, convention: str, world_up: str = "+z", units_per_metre: float = 1.0):
  """Camera-to-world poses [N, 4, 4] in `convention` -> ours (see the module docstring).

  A world vector v_src becomes W v_src in our world; a camera-frame vector c_src becomes
  A c_src in our camera frame. So R_ours = W R_src A^T and p_ours = W p_src / units_per_metre.
  """
  poses = np.asarray(poses, np.float64)
  w, a = _world_and_camera(convention, world_up)
  out = np.zeros_like(poses)
  out[..., :3, :3] = w @ poses[..., :3, :3] @ a.T
  out[..., :3, 3] = poses[..., :3, 3] @ w.T / units_per_metre
  out[..., 3, 3] = 1.0
  return out


def from_ours(poses, convention: str, world_up: str = "+z", units_per_metre: float = 1.0):
  """The inverse of `to_ours`."""
  poses = np.asarray(poses, np.float64)
  w, a = _world_and_camera(convention, world_up)
  out = np.zeros_like(poses)
  out[..., :3, :3] = w.T @ poses[..., :3, :3] @ a
  out[..., :3, 3] = poses[..., :3, 3] @ w * units_per_metre
  out[..., 3, 3] = 1.0
  return out


# ------------------------------------------------------------------ actions


def relative_motion(poses) -> tuple[np.ndarray, np.ndarray]:
  """Per frame t >= 1: camera-frame translation dP_t [N-1, 3] (metres) and the rotation angles
  (pan, tilt, roll) [N-1, 3] (radians) of the motion from frame t-1 to t."""
  poses = np.asarray(poses, np.float64)
  r_w2c = np.swapaxes(poses[:, :3, :3], 1, 2)
  dp = np.einsum("nij,nj->ni", r_w2c[:-1], poses[1:, :3, 3] - poses[:-1, :3, 3])
  q = r_w2c[:-1] @ poses[1:, :3, :3]  # Q_t = R_{t-1} R_t^T = dR_t^T
  return dp, euler_yxz(q)


def actions_from_poses(poses, scale: float | None = None) -> tuple[np.ndarray, float]:
  """RELIC's 13-d actions [N, 13] (float32) of a clip of poses [N, 4, 4], and the translation
  scale they were normalised by: `scale` metres per action unit if given (generation and
  evaluation: config.generate.action_scale), else the clip's mean displacement per frame
  (training clips)."""
  poses = np.asarray(poses, np.float64)
  n = len(poses)
  actions = np.zeros((n, ACTION_DIM), np.float32)
  actions[:1, 12] = 1.0
  if n < 2:
    return actions, 1.0 if scale is None else float(scale)
  dp, ang = relative_motion(poses)
  norms = np.linalg.norm(dp, axis=-1)
  if scale is None:
    scale = float(norms.mean())
    if scale <= STATIC_TRANSLATION:
      scale = 1.0
  elif not scale > 0:
    raise PoseError(f"actions_from_poses: scale must be positive, got {scale}")
  scale = float(scale)
  t = dp / scale
  # channel pairs: (+, -) of dolly (z), truck (x: left is -x), pedestal (y: up is -y)
  signed = np.stack([t[:, 2], -t[:, 0], -t[:, 1], ang[:, 1], -ang[:, 0], ang[:, 2]], -1)
  actions[1:, 0:12:2] = np.maximum(signed, 0)
  actions[1:, 1:12:2] = np.maximum(-signed, 0)
  static = (norms <= STATIC_TRANSLATION) & (np.abs(ang).max(-1) <= STATIC_ROTATION)
  actions[1:, 12] = static
  return actions, scale


def signed_motion(actions, scale: float) -> tuple[np.ndarray, np.ndarray]:
  """Back from 13-d actions [N, 13] to camera-frame translation [N, 3] (metres) and angles
  (pan, tilt, roll) [N, 3]."""
  a = np.asarray(actions, np.float64)
  s = a[:, 0:12:2] - a[:, 1:12:2]  # dolly, truck-left, pedestal-up, tilt, pan-left, roll
  dp = np.stack([-s[:, 1], -s[:, 2], s[:, 0]], -1) * scale
  ang = np.stack([-s[:, 4], s[:, 3], s[:, 5]], -1)
  return dp, ang


def integrate_actions(first_pose, actions, scale: float) -> np.ndarray:
  """Poses [N, 4, 4] from the first pose and the actions: p_t = p_{t-1} + R_{t-1}^T dP_t,
  R_t = dR_t R_{t-1} (world-to-camera rotations)."""
  dp, ang = signed_motion(actions, scale)
  q = compose_yxz(ang)
  poses = np.zeros((len(dp), 4, 4))
  poses[0] = first_pose
  c2w = np.asarray(first_pose, np.float64)[:3, :3]
  p = np.asarray(first_pose, np.float64)[:3, 3]
  for t in range(1, len(dp)):
    p = p + c2w @ dp[t]
    c2w = c2w @ q[t]
    poses[t, :3, :3], poses[t, :3, 3], poses[t, 3, 3] = c2w, p, 1.0
  return poses


def relative_to_first(poses) -> np.ndarray:
  """Poses relative to the first frame: C_0^{-1} C_t (frame 0 becomes the identity)."""
  poses = np.asarray(poses, np.float64)
  inv0 = np.linalg.inv(poses[0])
  return inv0[None] @ poses


def pose_features(poses) -> np.ndarray:
  """The network's pose input [N, 12]: the flattened 3x4 camera-to-first-frame extrinsics."""
  return relative_to_first(poses)[:, :3, :].reshape(len(poses), 12).astype(np.float32)
