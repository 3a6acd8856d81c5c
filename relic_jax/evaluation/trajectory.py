"""Camera-trajectory metrics for action following, numpy only.

Poses are camera-to-world 4x4 matrices [N, 4, 4]. A trajectory estimated from generated frames
is known only up to a similarity (monocular: unknown scale, and its own world frame), so it is
first aligned to the reference by the Sim(3) that best maps its camera centres onto the
reference's (Umeyama 1991, least squares), then compared by the relative pose error:

  umeyama(src, dst)      s, R, t minimising sum_i |dst_i - (s R src_i + t)|^2
  align_sim3(est, ref)   est's poses moved by that transform (rotations by R, centres by
                         s R c + t), and the transform
  rpe(est, ref, delta)   per pair (i, i + delta): E = (ref_i^-1 ref_{i+delta})^-1
                         (est_i^-1 est_{i+delta}); translation error |t(E)| and rotation error
                         angle(R(E)) in degrees, averaged over pairs (RMSE for translation,
                         mean for rotation, as the usual RPE definitions report them)
"""

import numpy as np


def umeyama(src, dst, with_scale: bool = True):
  """(s, R [3, 3], t [3]) with dst ~ s R src + t for point sets [N, 3] (N >= 3, not all on a
  line for a unique rotation)."""
  src, dst = np.asarray(src, np.float64), np.asarray(dst, np.float64)
  if src.shape != dst.shape or src.ndim != 2 or src.shape[1] != 3 or len(src) < 2:
    raise ValueError(f"umeyama: need two [N, 3] point sets of equal shape, N >= 2; got "
                     f"{src.shape} and {dst.shape}")
  mu_s, mu_d = src.mean(0), dst.mean(0)
  xs, xd = src - mu_s, dst - mu_d
  cov = xd.T @ xs / len(src)
  u, d, vt = np.linalg.svd(cov)
  sign = np.eye(3)
  if np.linalg.det(u) * np.linalg.det(vt) < 0:
    sign[2, 2] = -1.0  # a reflection is not a rotation
  r = u @ sign @ vt
  var_s = (xs ** 2).sum() / len(src)
  s = float(np.trace(np.diag(d) @ sign) / var_s) if with_scale and var_s > 0 else 1.0
  return s, r, mu_d - s * r @ mu_s


def align_sim3(est, ref, with_scale: bool = True):
  """est's poses [N, 4, 4] aligned to ref's by the Umeyama similarity of their camera centres
  -> (aligned poses, (s, R, t))."""
  est, ref = np.asarray(est, np.float64), np.asarray(ref, np.float64)
  s, r, t = umeyama(est[:, :3, 3], ref[:, :3, 3], with_scale)
  out = est.copy()
  out[:, :3, :3] = r @ est[:, :3, :3]
  out[:, :3, 3] = s * est[:, :3, 3] @ r.T + t
  return out, (s, r, t)


def _inv(p):
  out = np.zeros_like(p)
  rt = np.swapaxes(p[..., :3, :3], -1, -2)
  out[..., :3, :3] = rt
  out[..., :3, 3] = -np.einsum("...ij,...j->...i", rt, p[..., :3, 3])
  out[..., 3, 3] = 1.0
  return out


def rotation_angle_deg(r) -> np.ndarray:
  """Angle of rotation matrices [..., 3, 3] in degrees."""
  c = (np.trace(r, axis1=-2, axis2=-1) - 1.0) / 2.0
  return np.degrees(np.arccos(np.clip(c, -1.0, 1.0)))


def rpe(est, ref, delta: int = 1, align: bool = True) -> dict:
  """Relative pose error of est against ref (both [N, 4, 4], camera-to-world), after a Sim(3)
  alignment when `align`: {"rpe_trans": RMSE of the translation errors (ref's units),
  "rpe_rot": mean rotation error (degrees), "pairs": how many (i, i + delta)}."""
  est, ref = np.asarray(est, np.float64), np.asarray(ref, np.float64)
  if est.shape != ref.shape or est.ndim != 3 or est.shape[1:] != (4, 4):
    raise ValueError(f"rpe: need two [N, 4, 4] pose arrays of equal shape; got {est.shape} and "
                     f"{ref.shape}")
  if not 1 <= delta < len(est):
    raise ValueError(f"rpe: delta={delta} needs 1 <= delta < N={len(est)}")
  if align:
    est, _ = align_sim3(est, ref)
  rel_ref = _inv(ref[:-delta]) @ ref[delta:]
  rel_est = _inv(est[:-delta]) @ est[delta:]
  err = _inv(rel_ref) @ rel_est
  trans = np.linalg.norm(err[:, :3, 3], axis=-1)
  return {"rpe_trans": float(np.sqrt(np.mean(trans ** 2))),
          "rpe_rot": float(np.mean(rotation_angle_deg(err[:, :3, :3]))),
          "pairs": int(len(err))}
