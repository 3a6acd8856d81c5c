"""The keyboard as RELIC's 13 actions, and a played session as a replayable action script.

Keys are the browser's `KeyboardEvent.code` names, so the layout does not matter:

  W / S        dolly in / out            A / D       truck left / right
  R / F        pedestal up / down        Q / E       roll counter-clockwise / clockwise
  arrows       pan left / right, tilt up / down
  Shift        twice the speed           nothing     static

Several keys at once add their channels; two opposite keys (W and S) cancel. A block's video
frames all take the keys held when the block starts, at the magnitudes an action script gives
them (`inference/scripts.parse`: translations `speed`, rotations `speed * DEFAULT_TURN`), so a
played session written by `to_script` replays exactly with `relic generate --actions=FILE`.
"""

import numpy as np

from data_pipeline.poses import ACTION_DIM, ACTION_NAMES
from relic_jax.inference.scripts import DEFAULT_TURN, ROTATIONS

KEYS = {
    "KeyW": "dolly_in", "KeyS": "dolly_out", "KeyA": "truck_left", "KeyD": "truck_right",
    "KeyR": "pedestal_up", "KeyF": "pedestal_down", "KeyQ": "roll_ccw", "KeyE": "roll_cw",
    "ArrowLeft": "pan_left", "ArrowRight": "pan_right", "ArrowUp": "tilt_up",
    "ArrowDown": "tilt_down",
}
FAST_KEYS = ("ShiftLeft", "ShiftRight")
ALL_KEYS = frozenset(KEYS) | frozenset(FAST_KEYS)
FAST = 2.0          # Shift's factor
MAX_SPEED = 4.0     # the largest speed a client may ask for (before Shift)
OPPOSITE = {"dolly_in": "dolly_out", "truck_left": "truck_right", "pedestal_up": "pedestal_down",
            "roll_ccw": "roll_cw", "pan_left": "pan_right", "tilt_up": "tilt_down"}
STATIC = ACTION_NAMES.index("static")


def channels(keys) -> list[str]:
  """The action channels the held keys ask for (opposites cancel), in ACTION_NAMES order."""
  wanted = {KEYS[k] for k in keys if k in KEYS}
  for a, b in OPPOSITE.items():
    if a in wanted and b in wanted:
      wanted -= {a, b}
  return [n for n in ACTION_NAMES if n in wanted]


def action_vector(keys, speed: float = 1.0) -> np.ndarray:
  """Held keys and the base speed -> one video frame's action [13] float32, as
  `scripts.parse` makes a segment `<names> x<speed>` (Shift doubles the speed)."""
  speed = float(speed) * (FAST if any(k in keys for k in FAST_KEYS) else 1.0)
  a = np.zeros(ACTION_DIM, np.float32)
  names = channels(keys)
  if not names:
    a[STATIC] = 1.0
    return a
  for n in names:
    a[ACTION_NAMES.index(n)] = speed * (DEFAULT_TURN if n in ROTATIONS else 1.0)
  return a


def _segment(a: np.ndarray) -> tuple[str, float]:
  """An action vector -> (its script names, its speed)."""
  if a[STATIC] == 1.0 and not np.any(np.delete(a, STATIC)):
    return "static", 1.0
  names = [n for i, n in enumerate(ACTION_NAMES) if a[i] > 0 and n != "static"]
  first = names[0]
  value = float(a[ACTION_NAMES.index(first)])
  speed = value / float(DEFAULT_TURN) if first in ROTATIONS else value
  return "+".join(names), float(speed)


def to_script(actions: np.ndarray, fps: float) -> str:
  """Per-video-frame actions [N, 13] (each a `action_vector`) -> script text that
  `scripts.parse(text, fps)` turns back into the same array: one line per run of equal
  frames, its duration and speed written at full precision."""
  actions = np.asarray(actions, np.float32)
  lines, start = [], 0
  for i in range(1, len(actions) + 1):
    if i == len(actions) or not np.array_equal(actions[i], actions[start]):
      names, speed = _segment(actions[start])
      n = i - start
      lines.append(f"{n / fps!r} {names}" + ("" if names == "static" else f" x{speed!r}"))
      start = i
  return "\n".join(lines) + "\n"
