"""Trajectory metrics (evaluation/trajectory.py) against known answers."""

import numpy as np
import pytest

from relic_jax.evaluation import trajectory as tj


def _rot(axis, deg):
  a = np.radians(deg)
  c, s = np.cos(a), np.sin(a)
  if axis == "y":
    return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])
  if axis == "z":
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])
  return np.array([[1, 0, 0], [0, c, -s], [0, s, c]])


def _pose(r, t):
  p = np.eye(4)
  p[:3, :3], p[:3, 3] = r, t
  return p


def _random_rotation(rng):
  q, _ = np.linalg.qr(rng.standard_normal((3, 3)))
  return q * np.sign(np.linalg.det(q))


def _walk(n=30, seed=0):
  """A curvy camera walk: forward steps while panning and tilting."""
  rng = np.random.default_rng(seed)
  poses, p = [], np.eye(4)
  for _ in range(n):
    step = _pose(_rot("y", rng.uniform(-10, 10)) @ _rot("x", rng.uniform(-3, 3)),
                 [rng.uniform(-0.2, 0.2), 0.0, rng.uniform(0.5, 1.0)])
    p = p @ step
    poses.append(p)
  return np.stack(poses)


def test_umeyama_recovers_a_known_similarity():
  rng = np.random.default_rng(1)
  src = rng.standard_normal((20, 3))
  r, s, t = _random_rotation(rng), 2.5, np.array([1.0, -2.0, 0.5])
  dst = s * src @ r.T + t
  s_, r_, t_ = tj.umeyama(src, dst)
  assert s_ == pytest.approx(s, rel=1e-10)
  np.testing.assert_allclose(r_, r, atol=1e-10)
  np.testing.assert_allclose(t_, t, atol=1e-10)
  s1, _, _ = tj.umeyama(src, dst, with_scale=False)
  assert s1 == 1.0
  # a reflected target still yields a proper rotation
  _, r_ref, _ = tj.umeyama(src, src * np.array([1, 1, -1]))
  assert np.linalg.det(r_ref) == pytest.approx(1.0)


def test_rpe_is_zero_for_a_similar_copy_and_sees_drift():
  ref = _walk()
  rng = np.random.default_rng(2)
  r, s, t = _random_rotation(rng), 0.3, np.array([5.0, 1.0, -3.0])
  sim = ref.copy()
  sim[:, :3, :3] = r @ ref[:, :3, :3]
  sim[:, :3, 3] = s * ref[:, :3, 3] @ r.T + t
  out = tj.rpe(sim, ref)
  assert out["rpe_trans"] < 1e-9 and out["rpe_rot"] < 1e-5 and out["pairs"] == 29
  assert tj.rpe(sim, ref, align=False)["rpe_trans"] > 0.1  # alignment is what removed it
  # a known drift: each step of the estimate turns 2 degrees more (yaw) and slides 0.1 to the
  # side, in the camera frame
  est = [ref[0]]
  for i in range(1, len(ref)):
    rel = np.linalg.inv(ref[i - 1]) @ ref[i]
    drift = _pose(_rot("y", 2.0), [0.1, 0.0, 0.0])
    est.append(est[-1] @ rel @ drift)
  out = tj.rpe(np.stack(est), ref, align=False)
  assert out["rpe_rot"] == pytest.approx(2.0, abs=1e-6)
  assert out["rpe_trans"] == pytest.approx(0.1, abs=1e-9)
  # delta > 1 compounds it: two steps of drift are further from the truth than one
  two = tj.rpe(np.stack(est), ref, delta=2, align=False)
  assert two["rpe_rot"] > out["rpe_rot"] and two["pairs"] == 28


def test_rotation_angle_and_bad_inputs():
  assert tj.rotation_angle_deg(_rot("z", 37.0)) == pytest.approx(37.0)
  assert tj.rotation_angle_deg(np.eye(3)) == pytest.approx(0.0, abs=1e-6)
  with pytest.raises(ValueError, match="equal shape"):
    tj.rpe(np.zeros((5, 4, 4)), np.zeros((6, 4, 4)))
  with pytest.raises(ValueError, match="delta=5"):
    tj.rpe(_walk(5), _walk(5), delta=5)
  with pytest.raises(ValueError, match=r"\[N, 3\]"):
    tj.umeyama(np.zeros((4, 2)), np.zeros((4, 2)))
