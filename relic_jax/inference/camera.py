"""Camera poses from actions, in JAX (the streaming generator integrates the user's actions).

The same conventions and formulas as `data_pipeline.poses` (pure numpy; the tests check the two
agree): our camera-to-world poses, RELIC's 13 action channels, Q = Ry(pan) Rx(tilt) Rz(roll).
Translations are in action units times `scale` (metres per unit: the clip's mean displacement
per frame in training, config.generate.action_scale at generation).
"""

import jax.numpy as jnp


def signed_motion(actions, scale):
  """[..., 13] -> camera-frame translation [..., 3] (metres) and (pan, tilt, roll) [..., 3]."""
  a = actions.astype(jnp.float32)
  s = a[..., 0:12:2] - a[..., 1:12:2]  # dolly, truck-left, pedestal-up, tilt, pan-left, roll
  dp = jnp.stack([-s[..., 1], -s[..., 2], s[..., 0]], -1) * scale
  ang = jnp.stack([-s[..., 4], s[..., 3], s[..., 5]], -1)
  return dp, ang


def compose_yxz(angles):
  pan, tilt, roll = angles[..., 0], angles[..., 1], angles[..., 2]
  ca, sa, cb, sb, cc, sc = (jnp.cos(pan), jnp.sin(pan), jnp.cos(tilt), jnp.sin(tilt),
                            jnp.cos(roll), jnp.sin(roll))
  z, o = jnp.zeros_like(pan), jnp.ones_like(pan)
  ry = jnp.stack([jnp.stack([ca, z, sa], -1), jnp.stack([z, o, z], -1),
                  jnp.stack([-sa, z, ca], -1)], -2)
  rx = jnp.stack([jnp.stack([o, z, z], -1), jnp.stack([z, cb, -sb], -1),
                  jnp.stack([z, sb, cb], -1)], -2)
  rz = jnp.stack([jnp.stack([cc, -sc, z], -1), jnp.stack([sc, cc, z], -1),
                  jnp.stack([z, z, o], -1)], -2)
  return ry @ rx @ rz


def integrate(c2w_B44, actions_BN13, scale):
  """Poses [B, N, 4, 4] of N new frames, each action being the motion into its frame, from the
  pose of the frame before them: p_t = p_{t-1} + R_{t-1} dP_t, R_t = R_{t-1} Q_t. scale: a
  number, or [B, 1, 1] (one per example)."""
  dp, ang = signed_motion(actions_BN13, scale)
  q = compose_yxz(ang)
  r, p = c2w_B44[:, :3, :3], c2w_B44[:, :3, 3]
  out = []
  for t in range(actions_BN13.shape[1]):  # static: a block's frames
    p = p + jnp.einsum("bij,bj->bi", r, dp[:, t])
    r = r @ q[:, t]
    pose = jnp.concatenate([jnp.concatenate([r, p[:, :, None]], -1),
                            jnp.broadcast_to(jnp.asarray([[0.0, 0.0, 0.0, 1.0]]),
                                             (r.shape[0], 1, 4))], -2)
    out.append(pose)
  return jnp.stack(out, 1)


def pose_features(poses_BN44):
  """The DiT's 12-d pose input: the flattened 3x4 extrinsics (poses relative to frame 0)."""
  return poses_BN44[..., :3, :].reshape(*poses_BN44.shape[:-2], 12)
