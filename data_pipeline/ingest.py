"""`relic data ingest`: externally recorded episodes (e.g. exported from Unreal Engine) -> shards.

Directory format:

```
SOURCE/
  dataset.json            optional defaults for every episode (same keys as episode.json)
  <episode_name>/         one directory per episode (sorted by name)
    frames.mp4 | frames/  the video (any container/codec PyAV reads: mp4, mkv, webm, ...) OR a
                          directory of images (png/jpg/jpeg, sorted by file name)
    poses.npy | poses.txt per-frame camera-to-world poses, [N, 4, 4] or [N, 3, 4] (.npy), or
                          N lines of 16 (or 12) whitespace-separated numbers, row-major (.txt)
    actions.npy           optional [N, 13] non-negative RELIC actions; derived from poses if absent
    episode.json          optional: {"fps": 16, "caption": "...", "convention": "opencv"|"opengl"|
                          "unreal"|"ours", "world_up": "+z"|"+y"|"-y", "units_per_metre": 1.0}
```

Details:
  * Every sub-directory of SOURCE not starting with "." is an episode, named after it.
  * The video is the one file named `frames.<ext>` (its first video stream is decoded); an image
    directory holds only png/jpg/jpeg files (hidden files aside), sorted by plain file name, so
    zero-pad the numbers (000009.png, 000010.png; names of one numbered pattern whose numbers
    are out of order in name order are refused). Images of every Pillow mode are converted to
    8-bit RGB by their range (data_pipeline/images.py: 16-bit values * 255 / 65535, alpha
    dropped, ...).
  * episode.json overrides dataset.json, which overrides the defaults: `fps` has none (it must
    be given in one of the two), `caption` "A static scene." ("" is allowed), `convention`
    "opencv", `world_up` "+z", `units_per_metre` 100 for "unreal" (centimetres) and 1 otherwise.
    For "unreal", `world_up` is ignored (Unreal is z up). Any other key is an error. Limits:
    0 < fps <= MAX_FPS, MIN_UNITS_PER_METRE <= units_per_metre <= MAX_UNITS_PER_METRE.
  * Conventions (data_pipeline/poses.py): "opencv" camera x right, y down, z forward; "opengl"
    x right, y up, z backward (Blender, NeRF); "unreal" Unreal Engine's left-handed world and
    camera (x forward, y right, z up; rotations as column-vector matrices, i.e. the transpose
    of Unreal's FMatrix); "ours" is opencv with a z-up world in metres. The rotations must be
    proper rotations (orthonormal, determinant +1) in the declared convention, the camera
    centres within +-1e5 m of the origin once converted (poses.MAX_TRANSLATION), and the
    actions derived from them finite.
  * .npy files hold one plain array of real numbers (float or integer; not an .npz archive, a
    pickle, strings, booleans or complex numbers). Given actions are at most MAX_ACTION.
  * Frames are centre-cropped to the target aspect ratio and resized (box filter).

Every problem is a `DataError` (one line) naming the episode directory or file, what is wrong
and the fix. `ingest` validates everything before the first shard is written: the settings,
the files, the poses and actions, and every frame, decoded (each image or video frame must be
readable and convertible to RGB at the target size, and their number must match the poses).
Frames are decoded twice, once to validate and once to write, so memory holds one frame at a
time while validating and one shard's episodes while writing. It then writes through
`data_pipeline.writer.write_dataset`, so a run is resumable (each shard's SHA-256 is checked
on resume and a damaged one rewritten) and a directory holding another dataset, or this
dataset from a source that changed since, is refused, naming the files that changed.
"""

import fractions
import functools
import hashlib
import json
import math
import multiprocessing
import os
import re
import warnings

import numpy as np
from PIL import Image
from tqdm import tqdm

from data_pipeline import poses as poses_lib
from data_pipeline import shards as shards_lib
from data_pipeline.doom import resize_frame
from data_pipeline.episode import DataError, Episode, make_episode
from data_pipeline.images import to_rgb8
from data_pipeline.preview import pyav
from data_pipeline.writer import write_dataset
from relic_jax.io_utils import one_line, short_repr

_short = functools.partial(short_repr, limit=60)  # a value quoted in a message

DATASET_JSON = "dataset.json"
EPISODE_JSON = "episode.json"
SETTINGS_KEYS = ("fps", "caption", "convention", "world_up", "units_per_metre")
DEFAULT_CAPTION = "A static scene."
IMAGE_EXTS = (".png", ".jpg", ".jpeg")
POSE_FILES = ("poses.npy", "poses.txt")
ACTIONS_FILE = "actions.npy"
FRAMES = "frames"
MAX_FPS = 1000.0                # frames per second: more is a unit mistake (e.g. milliseconds)
MIN_UNITS_PER_METRE = 1e-6      # 1 unit = 1000 km
MAX_UNITS_PER_METRE = 1e6       # 1 unit = 1 micrometre
MAX_ACTION = 1e6                # per channel: translations are ~1, rotations radians per frame
NPY_MAGIC = b"\x93NUMPY"
ZIP_MAGIC = b"PK\x03\x04"


# ------------------------------------------------------------------ settings


def _read_json(path: str) -> dict:
  try:
    with open(path, "rb") as f:
      obj = json.loads(f.read().decode("utf-8"))
  except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
    raise DataError(f"{path} cannot be read as JSON ({one_line(e)}). Fix: write a UTF-8 JSON "
                    'object such as {"fps": 16, "caption": "..."}.') from None
  if not isinstance(obj, dict):
    raise DataError(f"{path} holds a {type(obj).__name__}, not a JSON object. Fix: write an "
                    'object such as {"fps": 16, "caption": "..."}.')
  return _check_settings(obj, path)


def _is_number(v) -> bool:
  if isinstance(v, bool) or not isinstance(v, (int, float)):
    return False
  try:
    return math.isfinite(float(v))
  except OverflowError:  # an int beyond float's range
    return False


def _check_settings(s: dict, where: str) -> dict:
  unknown = sorted(set(s) - set(SETTINGS_KEYS))
  if unknown:
    raise DataError(f"{where}: unknown key {_short(unknown[0])}. Fix: use only the keys "
                    f"{', '.join(SETTINGS_KEYS)}.")
  limits = {"fps": (0.0, MAX_FPS, 16), "units_per_metre": (MIN_UNITS_PER_METRE,
                                                           MAX_UNITS_PER_METRE, 1.0)}
  for key, (low, high, example) in limits.items():
    if key not in s:
      continue
    v = s[key]
    if not (_is_number(v) and v > 0):
      raise DataError(f"{where}: {key}={_short(v)} must be a positive number. Fix: e.g. "
                      f'"{key}": {example}.')
    if not low <= v <= high:
      raise DataError(f"{where}: {key}={_short(v)} is outside {low:g}..{high:g}. Fix: give "
                      f'the real value, e.g. "{key}": {example}.')
  if "caption" in s:
    caption = s["caption"]
    if not isinstance(caption, str):
      raise DataError(f"{where}: caption={_short(caption)} must be a string. Fix: write the "
                      "scene description as a JSON string.")
    try:
      caption.encode("utf-8")
    except UnicodeEncodeError:
      raise DataError(f"{where}: the caption holds an unpaired UTF-16 surrogate "
                      f"({_short(caption)}), which is not text. Fix: write it as plain UTF-8 "
                      "text.") from None
  if "convention" in s and s["convention"] not in poses_lib.CONVENTIONS:
    raise DataError(f"{where}: convention {_short(s['convention'])} is unknown. Fix: use one "
                    f"of {', '.join(poses_lib.CONVENTIONS)}.")
  if "world_up" in s and s["world_up"] not in poses_lib.WORLD_UPS:
    raise DataError(f"{where}: world_up {_short(s['world_up'])} is unknown. Fix: use one of "
                    f"{', '.join(poses_lib.WORLD_UPS)}.")
  return dict(s)


def _settings_file(path: str) -> str | None:
  """`path` if it is a settings file, None if absent; a DataError if it is something else."""
  if not os.path.lexists(path):
    return None
  if not os.path.isfile(path):
    raise DataError(f"{path} is not a file. Fix: make it a JSON file (or remove it).")
  return path


def read_defaults(source: str) -> dict:
  """The settings in SOURCE/dataset.json ({} when there is none)."""
  path = _settings_file(os.path.join(source, DATASET_JSON))
  return _read_json(path) if path else {}


def episode_settings(path: str, defaults: dict) -> dict:
  """The complete settings of the episode at `path`: episode.json over `defaults` over the
  format's defaults."""
  s = dict(_check_settings(defaults, "dataset defaults"))
  ep_json = os.path.join(path, EPISODE_JSON)
  if _settings_file(ep_json):
    s.update(_read_json(ep_json))
  if "fps" not in s:
    raise DataError(f"episode {path}: no fps given. Fix: add \"fps\" to {ep_json} or to "
                    f"{DATASET_JSON} in the source directory.")
  s.setdefault("caption", DEFAULT_CAPTION)
  s.setdefault("convention", "opencv")
  s.setdefault("world_up", "+z")
  if s["convention"] == "unreal":
    s["world_up"] = "+z"  # ignored: Unreal is z up
  s.setdefault("units_per_metre", 100.0 if s["convention"] == "unreal" else 1.0)
  return s


# ------------------------------------------------------------------ files


def _check_dir(path: str) -> None:
  if not os.path.isdir(path):
    raise DataError(f"episode directory {path} does not exist or is not a directory. Fix: "
                    "give one directory per episode holding frames and poses.")


def _find_frames(path: str) -> tuple[str, str | list[str]]:
  """("video", file) or ("images", [files])."""
  candidates = sorted(n for n in os.listdir(path)
                      if n == FRAMES or (n.startswith(FRAMES + ".") and
                                         os.path.isfile(os.path.join(path, n))))
  if not candidates:
    raise DataError(f"episode {path}: no frames. Fix: add a video frames.mp4 (or frames.mkv, "
                    "frames.webm, ...) or a frames/ directory of png/jpg images.")
  if len(candidates) > 1:
    raise DataError(f"episode {path}: several frame sources ({', '.join(candidates)}). Fix: "
                    "keep exactly one video frames.<ext> or one frames/ directory.")
  full = os.path.join(path, candidates[0])
  if not os.path.isdir(full):
    return "video", full
  files, bad = [], []
  for n in sorted(os.listdir(full)):
    if n.startswith("."):
      continue
    ok = (os.path.splitext(n)[1].lower() in IMAGE_EXTS
          and os.path.isfile(os.path.join(full, n)))
    (files if ok else bad).append(n)
  if bad:
    raise DataError(f"{full} holds {_short(bad[0])}, which is not a png/jpg/jpeg image file. "
                    "Fix: keep only the frame images there (other formats: convert them to "
                    "png).")
  if not files:
    raise DataError(f"{full} holds no images. Fix: put one png/jpg image per frame there.")
  _check_numeric_order(full, files)
  return "images", [os.path.join(full, n) for n in files]


def _check_numeric_order(directory: str, names: list[str]) -> None:
  """Frames are taken in plain name order; numbered names that are not zero-padded (2.png
  after 10.png) would silently shuffle the frames against their poses, so they are refused."""
  stems = [os.path.splitext(n)[0] for n in names]
  if len({re.sub(r"\d+", "#", s) for s in stems}) != 1:
    return  # not one numbered pattern (frame_#.png): nothing to compare
  values = [tuple(int(d) for d in re.findall(r"\d+", s)) for s in stems]  # date_time: both
  if not values[0]:
    return
  for a, b, x, y in zip(names, names[1:], values, values[1:]):
    if y < x:
      raise DataError(f"{directory}: {a!r} comes before {b!r} in name order (the order frames "
                      "are read in) but its number is larger: the numbers are not zero-padded. "
                      "Fix: zero-pad them (000009.png, 000010.png).")


def _open_video(file: str):
  try:
    container = pyav().open(file)
  except Exception as e:  # av raises many FFmpeg error types
    raise DataError(f"{file} cannot be opened as a video ({one_line(e)}). Fix: re-export it "
                    "(e.g. H.264 mp4) or give the frames as a directory of images.") from None
  if not container.streams.video:
    container.close()
    raise DataError(f"{file} has no video stream. Fix: re-export the video.")
  return container


def _fit(rgb: np.ndarray, height: int, width: int, where: str) -> np.ndarray:
  """Centre-crop and resize (doom.resize_frame), refusing an image too small to crop."""
  h, w = rgb.shape[:2]
  crop = min(h, round(w * height / width)) if w * height <= h * width else min(
      w, round(h * width / height))
  if h < 1 or w < 1 or crop < 1:
    raise DataError(f"{where}: the image is {w}x{h} pixels, too small to crop to the "
                    f"{width}x{height} frame's aspect. Fix: export larger frames.")
  return resize_frame(rgb, height, width)


def _video_frames(file: str, height: int, width: int):
  """Yields the video's frames, each fitted to height x width, one at a time."""
  container = _open_video(file)
  i = 0
  try:
    stream = container.streams.video[0]
    stream.thread_type = "AUTO"
    for frame in container.decode(stream):
      rgb = frame.to_ndarray(format="rgb24")
      yield _fit(rgb, height, width, f"{file} frame {i}")
      i += 1
  except DataError:
    raise
  except Exception as e:  # FFmpeg's decoding errors have many classes
    raise DataError(f"{file}: frame {i} cannot be decoded ({one_line(e)}). Fix: re-export the "
                    "video (e.g. H.264 mp4) or give the frames as a directory of images.") \
        from None
  finally:
    container.close()
  if i == 0:
    raise DataError(f"{file} holds no frames. Fix: re-export the video.")


def _image_frames(files: list[str], height: int, width: int):
  """Yields the images, each converted to RGB (data_pipeline/images.py) and fitted."""
  for i, file in enumerate(files):
    try:
      with Image.open(file) as im:
        rgb = to_rgb8(im)
    except Exception as e:  # PIL raises OSError, ValueError, SyntaxError, DecompressionBomb...
      raise DataError(f"{file} (frame {i}) cannot be read as an image ({one_line(e)}). Fix: "
                      "re-export it as png.") from None
    yield _fit(rgb, height, width, f"{file} (frame {i})")


def _frames(kind: str, src, height: int, width: int):
  return _video_frames(src, height, width) if kind == "video" else _image_frames(
      src, height, width)


def _find_poses(path: str) -> str:
  found = [n for n in POSE_FILES if os.path.lexists(os.path.join(path, n))]
  if not found:
    raise DataError(f"episode {path}: no poses file. Fix: add poses.npy ([N, 4, 4] "
                    "camera-to-world matrices) or poses.txt (one row-major 4x4 matrix, 16 "
                    "numbers, per line).")
  if len(found) > 1:
    raise DataError(f"episode {path}: both poses.npy and poses.txt. Fix: keep only one.")
  file = os.path.join(path, found[0])
  if not os.path.isfile(file):
    raise DataError(f"{file} is not a file. Fix: write the poses there.")
  return file


def _load_array(file: str) -> np.ndarray:
  """A plain .npy array of real numbers; a DataError for anything else (an .npz archive, a
  pickle, text, an object/string/bool/complex array, a damaged file)."""
  fix = "Fix: save one array of float64 numbers with numpy.save."
  try:
    with open(file, "rb") as f:
      magic = f.read(len(NPY_MAGIC))
      if magic.startswith(ZIP_MAGIC):
        raise DataError(f"{file} is an .npz archive (numpy.savez), not a .npy array. Fix: save "
                        "the array itself with numpy.save (or load the archive and save the "
                        "array it holds).")
      if magic != NPY_MAGIC:
        raise DataError(f"{file} is not a .npy file (no numpy header; a pickle or text file "
                        f"named .npy?). {fix}")
      f.seek(0)
      version = np.lib.format.read_magic(f)
      read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                     else np.lib.format.read_array_header_2_0)
      _, _, dtype = read_header(f)
      if dtype.kind not in "iuf":
        raise DataError(f"{file} holds an array of dtype {dtype}, not real numbers (float or "
                        f"integer). {fix}")
      f.seek(0)
      with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return np.load(f, allow_pickle=False)
  except DataError:
    raise
  except (OSError, ValueError, EOFError, TypeError) as e:  # damaged header or data
    raise DataError(f"{file} cannot be read as a .npy array ({one_line(e)}). {fix}") from None


def _unreal_hint(poses: np.ndarray) -> str:
  """A hint when 4x4 poses look transposed (translation in the last row, Unreal's FMatrix)."""
  if poses.ndim != 3 or poses.shape[1:] != (4, 4) or not np.isfinite(poses).all():
    return ""
  last_col_ok = np.abs(poses[:, :, 3] - np.array([0, 0, 0, 1.0])).max() < 1e-6
  if last_col_ok and np.abs(poses[:, 3, :3]).max() > 0:
    return (" The matrices look transposed (translation in the last row, as in Unreal's "
            "FMatrix): write their transposes.")
  return ""


def _load_text_poses(file: str) -> np.ndarray:
  fix = "Fix: write one pose per line, 16 (or 12) whitespace-separated numbers, row-major."
  try:
    with open(file, "rb") as f:
      text = f.read().decode("utf-8")
  except (OSError, UnicodeDecodeError) as e:
    raise DataError(f"{file} cannot be read as UTF-8 text ({one_line(e)}). {fix}") from None
  rows = []
  for num, line in enumerate(text.splitlines(), 1):
    line = line.split("#", 1)[0].strip()
    if not line:
      continue
    fields = line.split()
    if len(fields) not in (12, 16):
      raise DataError(f"{file} line {num} has {len(fields)} numbers, expected 16 (or 12). {fix}")
    try:
      rows.append([float(x) for x in fields])
    except ValueError:
      bad = next(x for x in fields if not _parses(x))
      raise DataError(f"{file} line {num}: {_short(bad)} is not a number. {fix}") from None
  if not rows:
    raise DataError(f"{file} holds no poses. {fix}")
  widths = {len(r) for r in rows}
  if len(widths) > 1:
    raise DataError(f"{file} mixes lines of 12 and 16 numbers. {fix}")
  arr = np.array(rows, np.float64)
  return arr.reshape(len(rows), arr.shape[1] // 4, 4)


def _parses(x: str) -> bool:
  try:
    float(x)
    return True
  except ValueError:
    return False


def load_poses(file: str, settings: dict) -> np.ndarray:
  """Poses [N, 4, 4] in our convention from poses.npy / poses.txt in `settings`' convention;
  validated in the source convention first, then (positions within poses.MAX_TRANSLATION,
  finite derived actions) once converted."""
  raw = _load_text_poses(file) if file.endswith(".txt") else _load_array(file)
  if raw.ndim >= 1 and len(raw) == 0:
    raise DataError(f"{file} holds no poses (shape {raw.shape}). Fix: write one camera-to-world "
                    "pose per frame.")
  convention = settings["convention"]
  try:
    checked = poses_lib.check_poses(raw, f"{file} (convention {convention!r}): pose",
                                    max_translation=None)
  except poses_lib.PoseError as e:
    raise DataError(f"{e}{_unreal_hint(raw)}") from None
  units = float(settings["units_per_metre"])
  where = f"{file} (converted to our convention, in metres with units_per_metre={units:g}): pose"
  try:
    with np.errstate(all="ignore"):  # overflow: the converted poses are checked just below
      ours = poses_lib.to_ours(checked, convention, settings["world_up"], units)
    ours = poses_lib.check_poses(ours, where)
    poses_lib.checked_actions(ours, where)
  except poses_lib.PoseError as e:
    raise DataError(str(e)) from None
  return ours


def load_actions(file: str, num_frames: int) -> np.ndarray:
  """actions.npy [N, 13], checked (shape, real numbers, finite, non-negative, <= MAX_ACTION)."""
  actions = _load_array(file)
  d = poses_lib.ACTION_DIM
  if actions.shape != (num_frames, d):
    raise DataError(f"{file} has shape {list(actions.shape)} ({actions.dtype}), expected "
                    f"[{num_frames}, {d}] numbers (one 13-d action per frame). Fix: correct it, "
                    "or delete it to derive the actions from the poses.")
  with np.errstate(over="ignore"):  # beyond float32's range: inf, refused below
    actions = actions.astype(np.float32)
  finite = np.isfinite(actions).all(-1)
  if not finite.all():
    i = int(np.argmax(~finite))
    raise DataError(f"{file}: action[{i}] is not finite as float32 ({actions[i].tolist()}). "
                    "Fix: repair it, or delete the file to derive the actions from the poses.")
  neg = (actions < 0).any(-1)
  if neg.any():
    i = int(np.argmax(neg))
    raise DataError(f"{file}: action[{i}] has a negative value ({actions[i].tolist()}); RELIC "
                    "actions are non-negative, one channel per direction. Fix: split signed "
                    "values into the +/- channels, or delete the file to derive the actions "
                    "from the poses.")
  big = (actions > MAX_ACTION).any(-1)
  if big.any():
    i = int(np.argmax(big))
    raise DataError(f"{file}: action[{i}] has a value over {MAX_ACTION:g} "
                    f"({actions[i].tolist()}); RELIC actions are about 1 (translations, in "
                    "units of the mean step) or radians per frame. Fix: repair it, or delete "
                    "the file to derive the actions from the poses.")
  return actions


def _count_mismatch(path: str, what: str, n_frames: int, n_poses: int) -> DataError:
  return DataError(f"episode {path}: {n_frames} frames ({what}) but {n_poses} poses. Fix: give "
                   "exactly one camera-to-world pose per frame.")


# ------------------------------------------------------------------ episodes


def _load_episode(path: str, defaults: dict, height: int, width: int, keep: bool):
  """Everything of the episode at `path`, checked: (settings, frames [N, H, W, 3] uint8 or, when
  not `keep`, None (each frame is decoded, checked and dropped), poses, actions or None)."""
  _check_dir(path)
  settings = episode_settings(path, defaults)
  kind, frame_src = _find_frames(path)
  poses = load_poses(_find_poses(path), settings)
  frames, n = [], 0
  for frame in _frames(kind, frame_src, height, width):
    n += 1
    if keep:
      frames.append(frame)
  what = (f"decoded from {frame_src}; a damaged or truncated video decodes fewer"
          if kind == "video" else f"images in {FRAMES}/")
  if n != len(poses):
    raise _count_mismatch(path, what, n, len(poses))
  if n < 2:
    raise DataError(f"episode {path}: {n} frame(s); an episode needs at least 2. Fix: give at "
                    "least 2 frames and poses, or remove the episode directory.")
  actions_file = os.path.join(path, ACTIONS_FILE)
  actions = load_actions(actions_file, n) if os.path.lexists(actions_file) else None
  return settings, (np.stack(frames) if keep else None), poses, actions


def check_episode(path: str, defaults: dict, height: int = 64, width: int = 64) -> int:
  """Validates the episode directory `path` completely (settings, files, poses, actions, and
  every frame decoded, converted and fitted to height x width) without keeping its frames;
  returns the number of frames."""
  _, _, poses, _ = _load_episode(path, defaults, height, width, keep=False)
  return len(poses)


def read_episode(path: str, defaults: dict, height: int, width: int) -> Episode:
  """Reads the episode directory `path` (see the module docstring) into an Episode with frames
  resized to height x width and poses in our convention."""
  settings, frames, poses, actions = _load_episode(path, defaults, height, width, keep=True)
  name = os.path.basename(os.path.normpath(path))
  return make_episode(name, frames, poses, settings["caption"], float(settings["fps"]),
                      source=f"ingest:{name}", map_name="", seed=-1, actions=actions)


def list_episodes(source: str) -> list[str]:
  """The episode directories of `source`, sorted by name."""
  if not os.path.exists(source):
    raise DataError(f"source directory {source} does not exist. Fix: point --source at the "
                    "directory holding one sub-directory per episode.")
  if not os.path.isdir(source):
    raise DataError(f"source {source} is a file, not a directory. Fix: point --source at the "
                    "directory holding one sub-directory per episode.")
  names = sorted(n for n in os.listdir(source)
                 if not n.startswith(".") and os.path.isdir(os.path.join(source, n)))
  if not names:
    raise DataError(f"source directory {source} holds no episode directories. Fix: put each "
                    "episode (frames + poses) in its own sub-directory.")
  return [os.path.join(source, n) for n in names]


def _source_walk(source: str, episode_dirs: list[str]) -> list[str]:
  files = [os.path.join(source, DATASET_JSON)]
  for d in episode_dirs:
    for root, dirs, names in os.walk(d):
      dirs.sort()
      files.extend(os.path.join(root, n) for n in sorted(names))
  return [f for f in files if os.path.isfile(f)]


def _small_file(rel: str) -> bool:
  """Whether the fingerprint covers the file's contents: the files directly in an episode
  directory (and dataset.json), but not the frames."""
  return os.path.dirname(rel).count("/") == 0 and not os.path.basename(rel).startswith(FRAMES)


def _file_digest(path: str) -> bytes:
  try:
    with open(path, "rb") as fh:
      return hashlib.sha256(fh.read()).digest()
  except OSError as e:
    raise DataError(f"{path} cannot be read ({e.strerror}). Fix: make it readable, or move it "
                    "out of the source directory.") from None


def fingerprint(source: str, episode_dirs: list[str]) -> str:
  """sha256 over the relative names and sizes of dataset.json and every episode's files, and
  the contents of the small ones (poses, actions, json; not frames). No timestamps, so a copied
  source still resumes."""
  h = hashlib.sha256()
  for f in _source_walk(source, episode_dirs):
    rel = os.path.relpath(f, source).replace(os.sep, "/")
    h.update(f"{rel}\t{os.path.getsize(f)}\n".encode())
    if _small_file(rel):
      h.update(_file_digest(f))
  return h.hexdigest()


def source_files(source: str, episode_dirs: list[str]) -> dict[str, str]:
  """What the fingerprint covers, by name, so that a changed source can be reported as the
  files that changed (data_pipeline/writer.py): each small file's size and SHA-256, and per
  directory inside an episode (frames/) its file count, total size and a hash of its names and
  sizes. Kept per directory, not per frame, so the record stays small."""
  out, dirs = {}, {}
  for f in _source_walk(source, episode_dirs):
    rel = os.path.relpath(f, source).replace(os.sep, "/")
    size = os.path.getsize(f)
    if _small_file(rel):
      out[rel] = f"{size} bytes, sha256 {_file_digest(f).hex()[:12]}"
    elif rel.count("/") == 1:  # frames.mp4
      out[rel] = f"{size} bytes"
    else:
      top = "/".join(rel.split("/")[:2]) + "/"
      dirs.setdefault(top, []).append((rel[len(top):], size))
  for top, entries in dirs.items():
    listing = hashlib.sha256("".join(f"{n}\t{s}\n" for n, s in entries).encode()).hexdigest()
    out[top] = (f"{len(entries)} files, {sum(s for _, s in entries)} bytes, listing "
                f"{listing[:12]}")
  return out


def _check_job(defaults: dict, height: int, width: int, path: str) -> int:
  return check_episode(path, defaults, height, width)


def _read_job(defaults: dict, height: int, width: int, job: list[str]) -> list[Episode]:
  return [read_episode(p, defaults, height, width) for p in job]


def validate(dirs: list[str], defaults: dict, height: int, width: int, workers: int = 1,
             progress: bool = True) -> list[int]:
  """check_episode for every episode directory (in `workers` processes), in order; the first
  problem (in episode order) is raised. Returns the frame counts."""
  check = functools.partial(_check_job, defaults, height, width)
  bar = tqdm(total=len(dirs), unit="episodes", desc="validating", dynamic_ncols=True) \
      if progress else None
  pool = None
  try:
    if workers <= 1 or len(dirs) <= 1:
      results = map(check, dirs)
    else:
      pool = multiprocessing.get_context("spawn").Pool(min(workers, len(dirs)))
      results = pool.imap(check, dirs)
    counts = []
    for n in results:
      counts.append(n)
      if bar is not None:
        bar.update(1)
    return counts
  finally:
    if pool is not None:
      pool.terminate()
    if bar is not None:
      bar.close()


def ingest(source: str, out_dir: str, height: int, width: int, codec: str = "jpeg",
           quality: int = 95, episodes_per_shard: int = 4, workers: int = 1,
           progress: bool = True) -> dict:
  """Validates every episode of `source` completely (every frame decoded), then writes them as
  shards to `out_dir` (resumable). Returns the manifest plus this run's "timing"."""
  for key, v in (("height", height), ("width", width), ("episodes_per_shard",
                                                         episodes_per_shard)):
    if not (isinstance(v, (int, np.integer)) and v > 0):
      raise DataError(f"{key}={v!r} must be a positive integer.")
  if codec not in shards_lib.CODECS:
    raise DataError(f"image codec {codec!r} is unknown. Fix: use one of "
                    f"{', '.join(shards_lib.CODECS)}.")
  if not 1 <= quality <= 100:
    raise DataError(f"jpeg quality {quality} is outside 1..100. Fix: use e.g. 95.")
  src_abs, out_abs = os.path.realpath(source), os.path.realpath(out_dir)
  if out_abs == src_abs or out_abs.startswith(src_abs + os.sep):
    raise DataError(f"the dataset directory {out_dir} is inside the source directory {source} "
                    "(it would be read as an episode next time). Fix: write the dataset "
                    "elsewhere (another --workdir or config.data.dir).")
  dirs = list_episodes(source)
  defaults = read_defaults(source)
  validate(dirs, defaults, int(height), int(width), workers, progress)  # before any write
  config = {"source": shards_lib.INGESTED, "source_dir": os.path.basename(os.path.abspath(source)),
            "height": int(height), "width": int(width), "codec": codec,
            "jpeg_quality": int(quality), "episodes_per_shard": int(episodes_per_shard),
            "episodes": [os.path.basename(d) for d in dirs],
            "fingerprint": fingerprint(source, dirs)}
  jobs = [dirs[i:i + episodes_per_shard] for i in range(0, len(dirs), episodes_per_shard)]
  return write_dataset(out_dir, config, jobs,
                       functools.partial(_read_job, defaults, int(height), int(width)),
                       codec=codec, quality=int(quality), workers=workers, progress=progress,
                       source_files=source_files(source, dirs))


# ------------------------------------------------------------------ export


def _write_video(file: str, frames: np.ndarray, fps: float) -> None:
  if frames.shape[1] % 2 or frames.shape[2] % 2:
    raise DataError(f"{file}: frames of {frames.shape[1]}x{frames.shape[2]} cannot be stored "
                    "as a yuv420p video. Fix: use even sizes, or as_video=False.")
  rate = fractions.Fraction(fps).limit_denominator(1001)
  av = pyav()
  with av.open(file, "w") as container:
    codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
    stream = container.add_stream(codec, rate=rate)
    stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
    if codec == "libx264":
      stream.options = {"crf": "12"}
    else:
      stream.bit_rate = 8 * frames.shape[1] * frames.shape[2] * max(int(fps), 1)
    for frame in frames:
      for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
        container.mux(packet)
    for packet in stream.encode():
      container.mux(packet)


def export_episode(path: str, frames, poses_ours, fps: float, caption: str,
                   convention: str = "opencv", world_up: str = "+z",
                   units_per_metre: float | None = None, as_video: bool = False, actions=None,
                   poses_as_text: bool = False) -> None:
  """Writes an episode directory in the ingest format: frames/ as png images (or frames.mp4
  when `as_video`), poses (given in our convention) converted to `convention` as poses.npy (or
  poses.txt), actions.npy when given, and episode.json. `units_per_metre` defaults to the
  format's default (100 for "unreal", else 1)."""
  frames = np.asarray(frames)
  if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
    raise DataError(f"{path}: frames must be uint8 [N, H, W, 3], got {frames.dtype} "
                    f"{list(frames.shape)}. Fix: give RGB frames with values 0..255.")
  try:
    ours = poses_lib.check_poses(poses_ours, f"{path}: pose")
    if units_per_metre is None:
      units_per_metre = 100.0 if convention == "unreal" else 1.0
    src = poses_lib.from_ours(ours, convention, world_up, units_per_metre)
  except poses_lib.PoseError as e:
    raise DataError(str(e)) from e
  if len(src) != len(frames):
    raise DataError(f"{path}: {len(frames)} frames but {len(src)} poses. Fix: give one pose "
                    "per frame.")
  if os.path.isdir(path) and os.listdir(path):
    raise DataError(f"{path} exists and is not empty. Fix: export to a new directory.")
  os.makedirs(path, exist_ok=True)
  if as_video:
    _write_video(os.path.join(path, "frames.mp4"), frames, fps)
  else:
    os.makedirs(os.path.join(path, FRAMES))
    for i, frame in enumerate(frames):
      Image.fromarray(frame).save(os.path.join(path, FRAMES, f"{i:06d}.png"))
  if poses_as_text:
    np.savetxt(os.path.join(path, "poses.txt"), src.reshape(len(src), 16), fmt="%.17g")
  else:
    np.save(os.path.join(path, "poses.npy"), src)
  if actions is not None:
    np.save(os.path.join(path, ACTIONS_FILE), np.asarray(actions, np.float32))
  settings = {"fps": float(fps), "caption": str(caption), "convention": convention,
              "units_per_metre": float(units_per_metre)}
  if convention != "unreal":
    settings["world_up"] = world_up
  with open(os.path.join(path, EPISODE_JSON), "w") as f:
    json.dump(settings, f, indent=2)
