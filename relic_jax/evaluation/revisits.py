"""Which frames of an evaluation case test the memory, and where consistency is measured.

All on the truth's camera-to-world poses [N, 4, 4], with one closeness rule throughout: two
poses are close when their camera centres are at most `max_distance` metres apart and their
viewing directions at most `max_angle_deg` apart (config.evaluate.revisit_distance and
revisit_angle_deg).

  revisits (data_pipeline.preview.find_revisits)  frame t revisits s when s is at least
      `min_gap` frames earlier (older than the uncompressed window when t is generated), the
      poses are close, and the camera left s's pose in between (some frame between them is not
      close to s): a camera that stood still does not revisit anything
  late_revisits     the revisits whose earlier visit s is NOT close to frame 0 (a view first
      seen after frame 0; t is not close to frame 0 either). Frame 0 is the input image, which
      `relic`, `full` and `window_sink` keep forever, so only these revisits can show a memory
      of what the model itself generated
  consistency_mask  of the revisits, those where the generated video also left: some generated
      frame between s and t is within `LEAVE_MARGIN_DB` of the truth's farthest frame from s in
      PSNR. A video that stands still (copy_last) never leaves, so it has no consistency to
      report, rather than a perfect one
"""

import numpy as np

from relic_jax.evaluation import metrics as img_metrics

# A generated video has left the first visit's view when one of its frames between the two
# visits is this close (dB, PSNR against the first visit) to the truth's farthest frame. The
# truth's farthest frame after a 90-degree turn is ~10-14 dB from the first visit on the tiny
# maps; a still video is at infinity.
LEAVE_MARGIN_DB = 10.0


def close_to(poses, ref_pose, max_distance: float, max_angle_deg: float) -> np.ndarray:
  """[N] bool: which poses are close to ref_pose (the closeness rule above)."""
  poses = np.asarray(poses, np.float64)
  ref_pose = np.asarray(ref_pose, np.float64)
  dist = np.linalg.norm(poses[:, :3, 3] - ref_pose[:3, 3], axis=-1)
  fwd = poses[:, :3, 2] / np.linalg.norm(poses[:, :3, 2], axis=-1, keepdims=True)
  ref_fwd = ref_pose[:3, 2] / np.linalg.norm(ref_pose[:3, 2])
  angle = np.degrees(np.arccos(np.clip(fwd @ ref_fwd, -1.0, 1.0)))
  return (dist <= max_distance) & (angle <= max_angle_deg + 1e-9)


def late_revisits(poses, revisits, max_distance: float, max_angle_deg: float) -> np.ndarray:
  """[N] int: revisits[t] where neither t nor the frame it revisits is close to frame 0's
  pose; -1 elsewhere."""
  revisits = np.asarray(revisits)
  near_start = close_to(poses, np.asarray(poses)[0], max_distance, max_angle_deg)
  late = (revisits >= 0) & ~near_start & ~near_start[np.maximum(revisits, 0)]
  return np.where(late, revisits, -1)


def _psnr_to(frames, frame) -> np.ndarray:
  """PSNR of each of frames [n, H, W, 3] against one frame, capped at 100 dB."""
  return np.minimum(img_metrics.psnr(frames, np.broadcast_to(frame, frames.shape)), 100.0)


def consistency_mask(video, truth_frames, revisits) -> np.ndarray:
  """[N] bool: the revisit frames t (revisits[t] = s >= 0) at which the generated video left
  s's view between s and t (see the module docstring)."""
  revisits = np.asarray(revisits)
  out = np.zeros(len(revisits), bool)
  hit = np.flatnonzero(revisits >= 0)
  away = {}  # s -> (generated, true) PSNR of frames s + 1 .. last revisit of s, against s
  for s in np.unique(revisits[hit]):
    last = hit[revisits[hit] == s].max()
    gen = _psnr_to(video[s + 1:last], video[s])
    true = _psnr_to(truth_frames[s + 1:last], truth_frames[s])
    away[s] = (gen, true)
  for t in hit:
    s = revisits[t]
    gen, true = away[s]
    n = t - s - 1  # the frames strictly between the visits
    if n > 0:
      out[t] = gen[:n].min() <= true[:n].min() + LEAVE_MARGIN_DB
  return out
