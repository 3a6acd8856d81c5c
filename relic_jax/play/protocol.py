"""`relic play`'s websocket messages, checked before anything acts on them.

The browser sends JSON text messages, one object each, with a "type":

  {"type": "start", "start": <index of /starts> | "upload", "image": <base64 PNG/JPEG, for
   "upload">, "caption": str, "mode": "relic" | "window" | "full"}
  {"type": "keys", "keys": [KeyboardEvent.code, ...], "speed": number}   the keys held now
  {"type": "mode", "mode": ...}      switch the memory live (rebuilt from the frames so far)
  {"type": "reset"}                  back to the session's start
  {"type": "record", "on": bool}     record from now to MP4 + a replayable action script

The server answers with binary messages (one JPEG per video frame, as decoded) and JSON text
messages: "ready" (the start list, limits), "started", "stats" (after each block: FPS,
latency, memory fill, camera path), "mode", "recorded", "capacity" and "error". A malformed
message (not JSON, wrong types, unknown keys, NaN or huge speeds, oversized payloads) gets an
"error" message naming the problem, and the session goes on.
"""

import base64
import binascii
import io
import json
import math

import numpy as np
from PIL import Image

from data_pipeline.images import to_rgb8
from relic_jax.play.controls import ALL_KEYS, MAX_SPEED

MODES = ("relic", "window", "full")
MAX_TEXT_BYTES = 16 * 1024          # any message but a start with an uploaded image
MAX_UPLOAD_BYTES = 8 * 1024 * 1024  # the uploaded image file (base64 adds a third)
MAX_MESSAGE_BYTES = MAX_TEXT_BYTES + MAX_UPLOAD_BYTES * 4 // 3 + 1024
MAX_IMAGE_PIXELS = 4096 * 4096
MAX_CAPTION = 1000                  # characters
MAX_KEYS = 16


class ProtocolError(ValueError):
  """A client message the server will not act on; its text goes back in an "error" frame."""


def _field(msg: dict, name: str, kind, what: str):
  if name not in msg:
    raise ProtocolError(f"'{msg['type']}' needs \"{name}\" ({what})")
  value = msg[name]
  if kind is float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
  elif kind is int:
    ok = isinstance(value, int) and not isinstance(value, bool)
  else:
    ok = isinstance(value, kind)
  if not ok:
    raise ProtocolError(f"\"{name}\" must be {what}, not {type(value).__name__}")
  return value


def decode_image(data: str) -> np.ndarray:
  """A base64 PNG/JPEG -> uint8 [H, W, 3] (every mode scaled by its range, 16-bit too:
  data_pipeline/images.py); ProtocolError for anything else or too large."""
  if len(data) > MAX_UPLOAD_BYTES * 4 // 3 + 4:
    raise ProtocolError(f"the image is over {MAX_UPLOAD_BYTES // 2**20} MiB")
  try:
    raw = base64.b64decode(data.split(",", 1)[-1], validate=True)
  except (binascii.Error, ValueError):
    raise ProtocolError("\"image\" is not base64 data") from None
  try:
    img = Image.open(io.BytesIO(raw))
    if img.format not in ("PNG", "JPEG"):
      raise ProtocolError(f"the image is {img.format}, not PNG or JPEG")
    w, h = img.size  # read from the header, before any pixel is decoded
    if w * h > MAX_IMAGE_PIXELS:
      raise ProtocolError(f"the image is {w}x{h}, over {MAX_IMAGE_PIXELS:,} pixels")
    return to_rgb8(img)
  except ProtocolError:
    raise
  except Image.DecompressionBombError:
    raise ProtocolError(f"the image is over {MAX_IMAGE_PIXELS:,} pixels") from None
  except Exception as e:  # PIL's errors for a damaged file have several classes
    raise ProtocolError(f"the image cannot be read ({type(e).__name__})") from None


def parse(raw, num_starts: int) -> dict:
  """A websocket text message -> a checked message dict (see the module docstring)."""
  if not isinstance(raw, str):
    raise ProtocolError("send JSON text messages, not binary")
  if len(raw) > MAX_MESSAGE_BYTES:
    raise ProtocolError(f"the message is {len(raw):,} bytes, over the {MAX_MESSAGE_BYTES:,} "
                        "allowed")
  try:
    msg = json.loads(raw, parse_constant=lambda c: float("nan"))
  except (json.JSONDecodeError, RecursionError):
    raise ProtocolError("the message is not JSON") from None
  if not isinstance(msg, dict) or not isinstance(msg.get("type"), str):
    raise ProtocolError("a message is a JSON object with a \"type\"")
  kind = msg["type"]
  if kind != "start" and len(raw) > MAX_TEXT_BYTES:
    raise ProtocolError(f"the message is {len(raw):,} bytes, over the {MAX_TEXT_BYTES:,} "
                        "allowed (only a start may carry an image)")
  if kind == "keys":
    keys = _field(msg, "keys", list, "a list of KeyboardEvent.code names")
    if len(keys) > MAX_KEYS or not all(isinstance(k, str) for k in keys):
      raise ProtocolError(f"\"keys\" must be at most {MAX_KEYS} key names")
    unknown = sorted(set(keys) - ALL_KEYS)
    if unknown:
      raise ProtocolError(f"unknown key {unknown[0]!r}: the controls are "
                          f"{', '.join(sorted(ALL_KEYS))}")
    speed = float(_field(msg, "speed", float, "a number")) if "speed" in msg else 1.0
    if not math.isfinite(speed) or not 0 < speed <= MAX_SPEED:
      raise ProtocolError(f"\"speed\" must be in (0, {MAX_SPEED}], not {speed}")
    return {"type": kind, "keys": frozenset(keys), "speed": speed}
  if kind == "mode":
    mode = _field(msg, "mode", str, "a memory mode")
    if mode not in MODES:
      raise ProtocolError(f"unknown memory mode {mode!r}: use one of {', '.join(MODES)}")
    return {"type": kind, "mode": mode}
  if kind == "record":
    return {"type": kind, "on": _field(msg, "on", bool, "true or false")}
  if kind == "reset":
    return {"type": kind}
  if kind == "start":
    start = msg.get("start")
    out = {"type": kind, "mode": msg.get("mode", "relic")}
    if not isinstance(out["mode"], str) or out["mode"] not in MODES:
      raise ProtocolError(f"unknown memory mode {str(out['mode'])[:40]!r}: use one of "
                          f"{', '.join(MODES)}")
    caption = msg.get("caption", "")
    if not isinstance(caption, str) or len(caption) > MAX_CAPTION:
      raise ProtocolError(f"\"caption\" must be text of at most {MAX_CAPTION} characters")
    out["caption"] = caption
    if start == "upload":
      out["image"] = decode_image(_field(msg, "image", str, "a base64 PNG or JPEG"))
    elif isinstance(start, int) and not isinstance(start, bool) and 0 <= start < num_starts:
      out["start"] = start
    else:
      raise ProtocolError(f"\"start\" must be a start's index (0..{num_starts - 1}) or "
                          "\"upload\" with an \"image\"")
    return out
  raise ProtocolError(f"unknown message type {kind[:40]!r}: use start, keys, mode, reset or "
                      "record")
