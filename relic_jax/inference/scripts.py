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
Text after `#` is a comment.

Limits (a script beyond them is refused with a ScriptError naming the line, not run):
  * a duration is a finite number of seconds > 0; each segment lasts at least one frame;
  * a speed is a finite number in [0, MAX_SPEED] (10 times the default magnitude, 450 degrees
    per second; `relic play` records at most 8: MAX_SPEED times Shift in play/controls.py);
  * the whole script lasts at most MAX_SECONDS (one hour) of video, at a frame rate of at most
    MAX_FPS (config.generate.fps's limit, 240: so a script is at most 864,000 frames, 45 MB);
  * a script file is UTF-8 text (no NUL bytes) of at most MAX_FILE_BYTES.
`parse` returns a finite float32 array [N, 13] with every entry in [0, MAX_SPEED].
"""

import math

import numpy as np

from data_pipeline.poses import ACTION_DIM, ACTION_NAMES
from relic_jax.config.validation import LIMITS

DEFAULT_TURN = np.deg2rad(45.0) / 17.5  # 45 degrees per second at 17.5 fps
MAX_SPEED = 10.0                 # x<speed>: at most 10 times the default magnitude
MAX_SECONDS = 3600.0             # the whole script: at most one hour of video
MAX_FPS = LIMITS["generate.fps"]  # config.generate.fps's limit (17.5 by default)
MAX_FILE_BYTES = 16 * 2**20      # a script file (an hour recorded frame by frame is ~3 MB)
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
  """A script that does not parse or is beyond the limits (one line: what, where, the fix)."""


def _short(text: str, limit: int = 60) -> str:
  """repr of a piece of the script, cut: a message stays one readable line."""
  return repr(text if len(text) <= limit else text[:limit] + "...")


def _number(text: str) -> float | None:
  try:
    return float(text)
  except ValueError:
    return None


def parse(text: str, fps: float) -> np.ndarray:
  """Script text -> per-video-frame actions [N, 13] float32 (the motion into each frame)."""
  try:
    fps = float(fps)
  except (TypeError, ValueError):
    fps = math.nan
  if not (math.isfinite(fps) and 0 < fps <= MAX_FPS):
    raise ScriptError(f"fps={fps!r} must be a positive number of at most {MAX_FPS:g}. Fix: set "
                      "config.generate.fps, e.g. 17.5.")
  if "\x00" in text:
    raise ScriptError("the script holds NUL characters: it is not a text file. Fix: write one "
                      "segment per line, `<seconds> <action>[+<action>...] [x<speed>]`.")
  max_frames = max(1, round(MAX_SECONDS * fps))
  rows, total = [], 0
  for num, raw in enumerate(text.splitlines(), 1):
    line = raw.split("#", 1)[0].strip()
    if not line:
      continue
    parts = line.split()
    where = f"line {num} ({_short(raw.strip())})"
    if len(parts) not in (2, 3):
      raise ScriptError(f"{where}: expected `<seconds> <action>[+<action>...] [x<speed>]`")
    seconds = _number(parts[0])
    if seconds is None:
      raise ScriptError(f"{where}: {_short(parts[0])} is not a duration in seconds")
    if not (math.isfinite(seconds) and seconds > 0):
      raise ScriptError(f"{where}: the duration must be positive and finite, not {seconds!r}")
    if seconds > MAX_SECONDS:
      raise ScriptError(f"{where}: {seconds:g} s is over the limit of {MAX_SECONDS:g} s for a "
                        "whole script. Fix: shorten it.")
    speed = 1.0
    if len(parts) == 3:
      if not parts[2].startswith("x"):
        raise ScriptError(f"{where}: the speed is written x<number>, e.g. x0.5")
      speed = _number(parts[2][1:])
      if speed is None:
        raise ScriptError(f"{where}: {_short(parts[2])} is not a speed like x0.5")
      if not (math.isfinite(speed) and 0 <= speed <= MAX_SPEED):
        raise ScriptError(f"{where}: the speed must be non-negative and at most {MAX_SPEED:g} "
                          f"(times the default magnitude), not {speed!r}. Fix: e.g. x0.5 or x2.")
    a = np.zeros(ACTION_DIM, np.float32)
    for name in parts[1].split("+"):
      if name not in ACTION_NAMES:
        raise ScriptError(f"{where}: unknown action {_short(name)}; use "
                          f"{', '.join(ACTION_NAMES)}")
      i = ACTION_NAMES.index(name)
      a[i] = 1.0 if name == "static" else speed * (DEFAULT_TURN if name in ROTATIONS else 1.0)
    n = max(1, round(seconds * fps))
    total += n
    if total > max_frames:
      raise ScriptError(f"{where}: the script reaches {total / fps:.6g} s here, over the limit "
                        f"of {MAX_SECONDS:g} s ({max_frames} frames at {fps:g} fps). Fix: "
                        "shorten it, or generate several videos.")
    rows.append(np.tile(a, (n, 1)))
  if not rows:
    raise ScriptError("the script has no segments")
  return np.concatenate(rows)


def load(name_or_path: str, fps: float) -> np.ndarray:
  """A built-in script by name, or a script file (UTF-8 text, at most MAX_FILE_BYTES)."""
  if name_or_path in BUILTIN:
    return parse(BUILTIN[name_or_path], fps)
  try:
    with open(name_or_path, "rb") as f:
      data = f.read(MAX_FILE_BYTES + 1)
  except (OSError, ValueError) as e:  # ValueError: a NUL character in the path
    reason = e.strerror if isinstance(e, OSError) else str(e)
    raise ScriptError(f"{name_or_path!r} is neither a built-in script ({', '.join(BUILTIN)}) "
                      f"nor a readable file: {reason}") from None
  if len(data) > MAX_FILE_BYTES:
    raise ScriptError(f"{name_or_path!r} is over {MAX_FILE_BYTES // 2**20} MiB, too large for a "
                      "script (an hour of video is a few MB). Fix: pass the script file.")
  try:
    text = data.decode("utf-8-sig")
  except UnicodeDecodeError as e:
    raise ScriptError(f"{name_or_path!r} is not UTF-8 text (byte {data[e.start]:#04x} at offset "
                      f"{e.start}). Fix: pass a text script, one segment per line, "
                      "`<seconds> <action>[+<action>...] [x<speed>]`.") from None
  try:
    return parse(text, fps)
  except ScriptError as e:
    raise ScriptError(f"{name_or_path!r}: {e}") from None


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
