"""Scripted camera actions: a small text format and built-in exploration scripts.

A script is one segment per line, `<seconds> <action>[+<action>...] [x<speed>]`, e.g.

    # look away and back
    1.0  static
    2.0  pan_left
    2.0  pan_right
    1.5  dolly_in+pan_left x0.5

Actions are RELIC's channel names (data_pipeline.poses.ACTION_NAMES). A segment sets its
channels for `seconds` of video (rounded to frames at config.generate.fps) at their default
magnitude times the speed: translations 1.0 (action units: the mean displacement per frame of
the training clips), rotations DEFAULT_TURN rad per frame. `static` sets the static channel.
"""

import numpy as np

from data_pipeline.poses import ACTION_DIM, ACTION_NAMES

DEFAULT_TURN = np.deg2rad(45.0) / 17.5  # 45 degrees per second at 17.5 fps
ROTATIONS = {"tilt_up", "tilt_down", "pan_left", "pan_right", "roll_cw", "roll_ccw"}
TRANSLATIONS = ("dolly_in", "dolly_out", "truck_left", "truck_right", "pedestal_up",
                "pedestal_down")

BUILTIN = {
    # The evaluation's defaults (config.evaluate.scripts): each comes back, more than a window
    # later, to views first seen after frame 0 ("late revisits", evaluation/revisits.py), so
    # the memory of what the model generated is tested, not only the input image.
    # 11 s, rotation only: look left, then right past the start, then back
    "look_around": "0.5 static\n2.0 pan_left\n1.0 static\n4.0 pan_right\n1.0 static\n"
                   "2.0 pan_left\n0.5 static",
    # 13 s: walk in, look left and back, walk out backwards, walk in again and look left again
    "room_visit": "0.5 static\n2.0 dolly_in\n2.0 pan_left\n2.0 pan_right\n2.0 dolly_out\n"
                  "2.0 dolly_in\n2.0 pan_left\n0.5 static",
    # 20 s: walk in, look around (half a turn and back), leave, come back, look again
    "tour_20s": "0.5 static\n2.5 dolly_in\n4.0 pan_left\n4.0 pan_right\n2.5 dolly_out\n"
                "2.5 dolly_in\n2.0 pan_left\n2.0 pan_right",
    # 40 s: walk in, a full turn, strafe out and back, walk on, look around, walk back to the
    # first stop, look around there again, walk back to the start
    "tour_40s": "0.5 static\n2.0 dolly_in\n8.0 pan_left\n2.0 truck_left\n2.0 truck_right\n"
                "2.0 dolly_in\n4.0 pan_right\n4.0 pan_left\n4.0 dolly_out\n4.0 pan_right\n"
                "4.0 pan_left\n2.0 dolly_out\n1.5 static",
    # earlier scripts (most of their revisits return to frame 0's view)
    "pan_360": "1.0 static\n8.0 pan_left\n1.0 static",
    "look_away_and_back": "1.0 static\n2.0 pan_left\n1.0 static\n2.0 pan_right\n1.0 static",
    "out_and_back": "0.5 static\n3.0 dolly_in\n4.0 pan_left\n3.0 dolly_in\n4.0 pan_left",
    "walk_and_look": "4.0 dolly_in+pan_left x0.5\n2.0 tilt_up x0.5\n2.0 tilt_down x0.5\n"
                     "4.0 dolly_in+pan_right x0.5",
    "strafe": "2.0 truck_left\n2.0 truck_right\n2.0 static",
    # 20 s: out and back (a half turn each way), then look away and back
    "explore_20s": "1.0 static\n3.0 dolly_in\n4.0 pan_left\n3.0 dolly_in\n4.0 pan_left\n"
                   "2.0 pan_right\n2.0 pan_left\n1.0 static",
    # 60 s: two out-and-back loops, strafes, two full pans and a look away and back
    "explore_60s": "1.0 static\n3.0 dolly_in\n4.0 pan_left\n3.0 dolly_in\n4.0 pan_left\n"
                   "2.0 truck_left\n2.0 truck_right\n8.0 pan_right\n"
                   "3.0 dolly_in\n4.0 pan_right\n3.0 dolly_in\n4.0 pan_right\n"
                   "2.0 pan_left\n2.0 pan_right\n8.0 pan_left\n"
                   "2.0 pan_left\n1.0 static\n2.0 pan_right\n2.0 static",
}


class ScriptError(ValueError):
  """A script line that does not parse."""


def parse(text: str, fps: float) -> np.ndarray:
  """Script text -> per-video-frame actions [N, 13] float32 (the motion into each frame)."""
  rows = []
  for num, raw in enumerate(text.splitlines(), 1):
    line = raw.split("#", 1)[0].strip()
    if not line:
      continue
    parts = line.split()
    where = f"line {num} ({raw.strip()!r})"
    if len(parts) not in (2, 3):
      raise ScriptError(f"{where}: expected `<seconds> <action>[+<action>...] [x<speed>]`")
    try:
      seconds = float(parts[0])
    except ValueError:
      raise ScriptError(f"{where}: {parts[0]!r} is not a duration in seconds") from None
    if not seconds > 0:
      raise ScriptError(f"{where}: the duration must be positive")
    speed = 1.0
    if len(parts) == 3:
      if not parts[2].startswith("x"):
        raise ScriptError(f"{where}: the speed is written x<number>, e.g. x0.5")
      try:
        speed = float(parts[2][1:])
      except ValueError:
        raise ScriptError(f"{where}: {parts[2]!r} is not a speed like x0.5") from None
      if not speed >= 0:
        raise ScriptError(f"{where}: the speed must be non-negative")
    a = np.zeros(ACTION_DIM, np.float32)
    for name in parts[1].split("+"):
      if name not in ACTION_NAMES:
        raise ScriptError(f"{where}: unknown action {name!r}; use {', '.join(ACTION_NAMES)}")
      i = ACTION_NAMES.index(name)
      a[i] = 1.0 if name == "static" else speed * (DEFAULT_TURN if name in ROTATIONS else 1.0)
    rows.append(np.tile(a, (max(1, round(seconds * fps)), 1)))
  if not rows:
    raise ScriptError("the script has no segments")
  return np.concatenate(rows)


def load(name_or_path: str, fps: float) -> np.ndarray:
  """A built-in script by name, or a script file."""
  if name_or_path in BUILTIN:
    return parse(BUILTIN[name_or_path], fps)
  try:
    with open(name_or_path) as f:
      text = f.read()
  except OSError as e:
    raise ScriptError(f"{name_or_path!r} is neither a built-in script ({', '.join(BUILTIN)}) "
                      f"nor a readable file: {e.strerror}") from None
  return parse(text, fps)


def translates(actions: np.ndarray) -> bool:
  """Whether per-frame actions [N, 13] ever move the camera's centre (a translation channel)."""
  idx = [ACTION_NAMES.index(n) for n in TRANSLATIONS]
  return bool(np.any(np.asarray(actions)[..., idx] > 0))


def to_blocks(actions: np.ndarray, frames_per_block: int) -> np.ndarray:
  """[N, 13] -> [ceil(N / F), F, 13], the last block padded with static frames."""
  n = len(actions)
  blocks = -(-n // frames_per_block)
  pad = np.zeros((blocks * frames_per_block - n, ACTION_DIM), np.float32)
  pad[:, ACTION_NAMES.index("static")] = 1.0
  return np.concatenate([actions, pad]).reshape(blocks, frames_per_block, ACTION_DIM)
