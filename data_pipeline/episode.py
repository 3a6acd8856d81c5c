"""An episode: the frames of one camera trajectory with its exact poses, actions and caption."""

import dataclasses

import numpy as np

from data_pipeline import poses as poses_lib


class DataError(ValueError):
  """Bad data: a corrupt shard, an invalid episode, a dataset that does not match its config.
  The message names the file or field and the fix."""


@dataclasses.dataclass
class Episode:
  """frames [N, H, W, 3] uint8; poses [N, 4, 4] float64 camera-to-world in our convention
  (data_pipeline/poses.py); actions [N, 13] float32, normalised by action_scale (metres per
  frame); one caption for the static scene; source says where it came from, seed and map how
  it was made (seed -1 and map "" for ingested data)."""
  name: str
  frames: np.ndarray
  poses: np.ndarray
  actions: np.ndarray
  action_scale: float
  caption: str
  fps: float
  source: str
  map: str = ""
  seed: int = -1

  def __len__(self) -> int:
    return len(self.frames)

  def metadata(self) -> dict:
    """Everything but the per-frame arrays (goes into the shard index and the manifest).
    translation_per_frame: the mean camera displacement per frame in metres (0 for a camera
    that only turns; action_scale is then 1.0, a unit, not a measurement)."""
    dp, _ = poses_lib.relative_motion(np.asarray(self.poses, np.float64))
    return {"name": self.name, "num_frames": len(self), "height": int(self.frames.shape[1]),
            "width": int(self.frames.shape[2]), "action_scale": float(self.action_scale),
            "translation_per_frame": float(np.linalg.norm(dp, axis=-1).mean()),
            "caption": self.caption, "fps": float(self.fps), "source": self.source,
            "map": self.map, "seed": int(self.seed)}


def make_episode(name, frames, poses, caption, fps, source, map_name="", seed=-1,
                 actions=None) -> Episode:
  """Validates the arrays and derives the actions from the poses when none are given."""
  frames = np.asarray(frames)
  if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
    raise DataError(f"episode {name}: frames must be uint8 [N, H, W, 3], got {frames.dtype} "
                    f"{list(frames.shape)}. Fix: give RGB frames with values 0..255.")
  if len(frames) < 2:
    raise DataError(f"episode {name}: {len(frames)} frame(s); an episode needs at least 2.")
  try:
    poses = poses_lib.check_poses(poses, f"episode {name}: pose")
    derived, scale = poses_lib.checked_actions(poses, f"episode {name}: pose")
  except poses_lib.PoseError as e:
    raise DataError(str(e)) from e
  if len(poses) != len(frames):
    raise DataError(f"episode {name}: {len(frames)} frames but {len(poses)} poses. Fix: give "
                    "exactly one camera-to-world pose per frame.")
  if not (np.isfinite(fps) and fps > 0):
    raise DataError(f"episode {name}: fps={fps} must be a positive number.")
  if actions is None:
    actions = derived
  else:
    actions = np.asarray(actions, np.float32)
    if actions.shape != (len(frames), poses_lib.ACTION_DIM):
      raise DataError(f"episode {name}: actions have shape {list(actions.shape)}, expected "
                      f"[{len(frames)}, {poses_lib.ACTION_DIM}] (one 13-d action per frame, "
                      "see the README's action table). Fix: correct them or leave them out to "
                      "derive them from the poses.")
    if not np.isfinite(actions).all():
      i = int(np.argmax(~np.isfinite(actions).all(-1)))
      raise DataError(f"episode {name}: action[{i}] is not finite ({actions[i].tolist()}).")
    if (actions < 0).any():
      i = int(np.argmax((actions < 0).any(-1)))
      raise DataError(f"episode {name}: action[{i}] has a negative magnitude "
                      f"({actions[i].tolist()}); RELIC's actions are non-negative, one channel "
                      "per direction. Fix: split signed values into the +/- channels.")
  return Episode(name=name, frames=frames, poses=poses, actions=actions,
                 action_scale=float(scale), caption=str(caption), fps=float(fps), source=source,
                 map=map_name, seed=int(seed))
