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
    zero-pad the numbers (000009.png, 000010.png).
  * episode.json overrides dataset.json, which overrides the defaults: `fps` has none (it must
    be given in one of the two), `caption` "A static scene." ("" is allowed), `convention`
    "opencv", `world_up` "+z", `units_per_metre` 100 for "unreal" (centimetres) and 1 otherwise.
    For "unreal", `world_up` is ignored (Unreal is z up). Any other key is an error.
  * Conventions (data_pipeline/poses.py): "opencv" camera x right, y down, z forward; "opengl"
    x right, y up, z backward (Blender, NeRF); "unreal" Unreal Engine's left-handed world and
    camera (x forward, y right, z up; rotations as column-vector matrices, i.e. the transpose
    of Unreal's FMatrix); "ours" is opencv with a z-up world in metres. The rotations must be
    proper rotations (orthonormal, determinant +1) in the declared convention.
  * Frames are centre-cropped to the target aspect ratio and resized (box filter).

Every problem is a `DataError` naming the episode directory or file, what is wrong and the fix.
`ingest` checks all episodes (files, json, poses, actions, frame counts from the container)
before anything is written; it then writes through `data_pipeline.writer.write_dataset`, so a
run is resumable and a directory holding another dataset is refused.
"""

import fractions
import functools
import hashlib
import json
import os
import warnings

import numpy as np
from PIL import Image

from data_pipeline import poses as poses_lib
from data_pipeline import shards as shards_lib
from data_pipeline.doom import resize_frame
from data_pipeline.episode import DataError, Episode, make_episode
from data_pipeline.preview import pyav
from data_pipeline.writer import write_dataset

DATASET_JSON = "dataset.json"
EPISODE_JSON = "episode.json"
SETTINGS_KEYS = ("fps", "caption", "convention", "world_up", "units_per_metre")
DEFAULT_CAPTION = "A static scene."
IMAGE_EXTS = (".png", ".jpg", ".jpeg")
POSE_FILES = ("poses.npy", "poses.txt")
ACTIONS_FILE = "actions.npy"
FRAMES = "frames"


# ------------------------------------------------------------------ settings


def _read_json(path: str) -> dict:
  try:
    with open(path) as f:
      obj = json.load(f)
  except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
    raise DataError(f"{path} cannot be read as JSON ({e}). Fix: write a JSON object such as "
                    '{"fps": 16, "caption": "..."}.') from e
  if not isinstance(obj, dict):
    raise DataError(f"{path} holds a {type(obj).__name__}, not a JSON object. Fix: write an "
                    'object such as {"fps": 16, "caption": "..."}.')
  return _check_settings(obj, path)


def _is_number(v) -> bool:
  return isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v)


def _check_settings(s: dict, where: str) -> dict:
  unknown = sorted(set(s) - set(SETTINGS_KEYS))
  if unknown:
    raise DataError(f"{where}: unknown key {unknown[0]!r}. Fix: use only the keys "
                    f"{', '.join(SETTINGS_KEYS)}.")
  for key in ("fps", "units_per_metre"):
    if key in s and not (_is_number(s[key]) and s[key] > 0):
      raise DataError(f"{where}: {key}={s[key]!r} must be a positive number. Fix: e.g. "
                      f'"{key}": {16 if key == "fps" else 1.0}.')
  if "caption" in s and not isinstance(s["caption"], str):
    raise DataError(f"{where}: caption={s['caption']!r} must be a string. Fix: write the scene "
                    "description as a JSON string.")
  if "convention" in s and s["convention"] not in poses_lib.CONVENTIONS:
    raise DataError(f"{where}: convention {s['convention']!r} is unknown. Fix: use one of "
                    f"{', '.join(poses_lib.CONVENTIONS)}.")
  if "world_up" in s and s["world_up"] not in poses_lib.WORLD_UPS:
    raise DataError(f"{where}: world_up {s['world_up']!r} is unknown. Fix: use one of "
                    f"{', '.join(poses_lib.WORLD_UPS)}.")
  return dict(s)


def read_defaults(source: str) -> dict:
  """The settings in SOURCE/dataset.json ({} when there is none)."""
  path = os.path.join(source, DATASET_JSON)
  return _read_json(path) if os.path.isfile(path) else {}


def episode_settings(path: str, defaults: dict) -> dict:
  """The complete settings of the episode at `path`: episode.json over `defaults` over the
  format's defaults."""
  s = dict(_check_settings(defaults, "dataset defaults"))
  ep_json = os.path.join(path, EPISODE_JSON)
  if os.path.isfile(ep_json):
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
    (files if os.path.splitext(n)[1].lower() in IMAGE_EXTS else bad).append(n)
  if bad:
    raise DataError(f"{full} holds {bad[0]!r}, which is not a png/jpg/jpeg image. Fix: keep "
                    "only the frame images there (other formats: convert them to png).")
  if not files:
    raise DataError(f"{full} holds no images. Fix: put one png/jpg image per frame there.")
  return "images", [os.path.join(full, n) for n in files]


def _open_video(file: str):
  try:
    container = pyav().open(file)
  except Exception as e:  # av raises many FFmpeg error types
    raise DataError(f"{file} cannot be opened as a video ({e}). Fix: re-export it (e.g. H.264 "
                    "mp4) or give the frames as a directory of images.") from e
  if not container.streams.video:
    container.close()
    raise DataError(f"{file} has no video stream. Fix: re-export the video.")
  return container


def _count_video_frames(file: str) -> int:
  """The number of frames (non-empty packets of the first video stream), without decoding."""
  container = _open_video(file)
  try:
    stream = container.streams.video[0]
    return sum(1 for p in container.demux(stream) if p.size > 0)
  except Exception as e:
    raise DataError(f"{file} cannot be read as a video ({e}). Fix: re-export it (e.g. H.264 "
                    "mp4) or give the frames as a directory of images.") from e
  finally:
    container.close()


def _decode_video(file: str, height: int, width: int) -> np.ndarray:
  container = _open_video(file)
  try:
    stream = container.streams.video[0]
    stream.thread_type = "AUTO"
    frames = [resize_frame(f.to_ndarray(format="rgb24"), height, width)
              for f in container.decode(stream)]
  except Exception as e:
    raise DataError(f"{file} cannot be decoded ({e}). Fix: re-export it (e.g. H.264 mp4) or "
                    "give the frames as a directory of images.") from e
  finally:
    container.close()
  if not frames:
    raise DataError(f"{file} holds no frames. Fix: re-export the video.")
  return np.stack(frames)


def _read_images(files: list[str], height: int, width: int) -> np.ndarray:
  frames = []
  for file in files:
    try:
      with Image.open(file) as im:
        rgb = np.asarray(im.convert("RGB"))
    except Exception as e:  # PIL raises OSError, ValueError, SyntaxError ...
      raise DataError(f"{file} cannot be read as an image ({e}). Fix: re-export it as png.") \
          from e
    frames.append(resize_frame(rgb, height, width))
  return np.stack(frames)


def _find_poses(path: str) -> str:
  found = [n for n in POSE_FILES if os.path.isfile(os.path.join(path, n))]
  if not found:
    raise DataError(f"episode {path}: no poses file. Fix: add poses.npy ([N, 4, 4] "
                    "camera-to-world matrices) or poses.txt (one row-major 4x4 matrix, 16 "
                    "numbers, per line).")
  if len(found) > 1:
    raise DataError(f"episode {path}: both poses.npy and poses.txt. Fix: keep only one.")
  return os.path.join(path, found[0])


def _load_array(file: str) -> np.ndarray:
  try:
    return np.load(file, allow_pickle=False)
  except (OSError, ValueError, EOFError) as e:
    raise DataError(f"{file} cannot be read as a .npy array ({e}). Fix: save it with "
                    "numpy.save.") from e


def _unreal_hint(poses: np.ndarray) -> str:
  """A hint when 4x4 poses look transposed (translation in the last row, Unreal's FMatrix)."""
  if poses.ndim != 3 or poses.shape[1:] != (4, 4) or not np.isfinite(poses).all():
    return ""
  last_col_ok = np.abs(poses[:, :, 3] - np.array([0, 0, 0, 1.0])).max() < 1e-6
  if last_col_ok and np.abs(poses[:, 3, :3]).max() > 0:
    return (" The matrices look transposed (translation in the last row, as in Unreal's "
            "FMatrix): write their transposes.")
  return ""


def load_poses(file: str, settings: dict) -> np.ndarray:
  """Poses [N, 4, 4] in our convention from poses.npy / poses.txt in `settings`' convention;
  validated in the source convention first."""
  if file.endswith(".txt"):
    try:
      with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "empty input file": reported below
        rows = np.loadtxt(file, dtype=np.float64, ndmin=2)
    except (OSError, ValueError) as e:
      raise DataError(f"{file} cannot be parsed ({e}). Fix: write one pose per line, 16 (or "
                      "12) whitespace-separated numbers, row-major.") from e
    if rows.shape[0] == 0 or rows.shape[1] not in (12, 16):
      raise DataError(f"{file} has {rows.shape[0]} lines of {rows.shape[1]} numbers. Fix: "
                      "write one pose per line, 16 (or 12) numbers, row-major.")
    raw = rows.reshape(len(rows), rows.shape[1] // 4, 4)
  else:
    raw = _load_array(file)
    if not np.issubdtype(raw.dtype, np.number) or np.issubdtype(raw.dtype, np.complexfloating):
      raise DataError(f"{file} has dtype {raw.dtype}; expected real numbers. Fix: save float64 "
                      "camera-to-world matrices.")
  try:
    checked = poses_lib.check_poses(raw, f"{file} (convention {settings['convention']!r}): pose")
  except poses_lib.PoseError as e:
    raise DataError(f"{e}{_unreal_hint(raw)}") from e
  try:
    ours = poses_lib.to_ours(checked, settings["convention"], settings["world_up"],
                             float(settings["units_per_metre"]))
    return poses_lib.check_poses(ours, f"{file}: pose (converted to ours)")
  except poses_lib.PoseError as e:
    raise DataError(f"{file}: {e}") from e


def load_actions(file: str, num_frames: int) -> np.ndarray:
  """actions.npy [N, 13], checked (shape, finite, non-negative)."""
  actions = _load_array(file)
  d = poses_lib.ACTION_DIM
  if actions.shape != (num_frames, d) or not np.issubdtype(actions.dtype, np.number):
    raise DataError(f"{file} has shape {list(actions.shape)} ({actions.dtype}), expected "
                    f"[{num_frames}, {d}] numbers (one 13-d action per frame). Fix: correct it, "
                    "or delete it to derive the actions from the poses.")
  actions = actions.astype(np.float32)
  finite = np.isfinite(actions).all(-1)
  if not finite.all():
    i = int(np.argmax(~finite))
    raise DataError(f"{file}: action[{i}] is not finite ({actions[i].tolist()}). Fix: repair "
                    "it, or delete the file to derive the actions from the poses.")
  neg = (actions < 0).any(-1)
  if neg.any():
    i = int(np.argmax(neg))
    raise DataError(f"{file}: action[{i}] has a negative value ({actions[i].tolist()}); RELIC "
                    "actions are non-negative, one channel per direction. Fix: split signed "
                    "values into the +/- channels, or delete the file to derive the actions "
                    "from the poses.")
  return actions


def _count_mismatch(path: str, what: str, n_frames: int, n_poses: int) -> DataError:
  return DataError(f"episode {path}: {n_frames} frames ({what}) but {n_poses} poses. Fix: give "
                   "exactly one camera-to-world pose per frame.")


# ------------------------------------------------------------------ episodes


def check_episode(path: str, defaults: dict) -> int:
  """The light check of an episode directory (settings, files, poses, actions, the frame count
  from the video container or the image list) without decoding frames; returns the number of
  frames."""
  _check_dir(path)
  settings = episode_settings(path, defaults)
  kind, frames = _find_frames(path)
  n = _count_video_frames(frames) if kind == "video" else len(frames)
  poses_file = _find_poses(path)
  poses = load_poses(poses_file, settings)
  if n != len(poses):
    raise _count_mismatch(path, frames if kind == "video" else f"images in {FRAMES}/", n,
                          len(poses))
  if n < 2:
    raise DataError(f"episode {path}: {n} frame(s); an episode needs at least 2.")
  actions_file = os.path.join(path, ACTIONS_FILE)
  if os.path.isfile(actions_file):
    load_actions(actions_file, n)
  return n


def read_episode(path: str, defaults: dict, height: int, width: int) -> Episode:
  """Reads the episode directory `path` (see the module docstring) into an Episode with frames
  resized to height x width and poses in our convention."""
  _check_dir(path)
  name = os.path.basename(os.path.normpath(path))
  settings = episode_settings(path, defaults)
  kind, frame_src = _find_frames(path)
  poses = load_poses(_find_poses(path), settings)
  if kind == "video":
    frames = _decode_video(frame_src, height, width)
  else:
    frames = _read_images(frame_src, height, width)
  if len(frames) != len(poses):
    raise _count_mismatch(path, frame_src if kind == "video" else f"images in {FRAMES}/",
                          len(frames), len(poses))
  actions_file = os.path.join(path, ACTIONS_FILE)
  actions = load_actions(actions_file, len(frames)) if os.path.isfile(actions_file) else None
  return make_episode(name, frames, poses, settings["caption"], float(settings["fps"]),
                      source=f"ingest:{name}", map_name="", seed=-1, actions=actions)


def list_episodes(source: str) -> list[str]:
  """The episode directories of `source`, sorted by name."""
  if not os.path.isdir(source):
    raise DataError(f"source directory {source} does not exist. Fix: point it at the directory "
                    "holding one sub-directory per episode.")
  names = sorted(n for n in os.listdir(source)
                 if not n.startswith(".") and os.path.isdir(os.path.join(source, n)))
  if not names:
    raise DataError(f"source directory {source} holds no episode directories. Fix: put each "
                    "episode (frames + poses) in its own sub-directory.")
  return [os.path.join(source, n) for n in names]


def fingerprint(source: str, episode_dirs: list[str]) -> str:
  """sha256 over the relative names and sizes of dataset.json and every episode's files, and
  the contents of the small ones (poses, actions, json; not frames). No timestamps, so a copied
  source still resumes."""
  h = hashlib.sha256()
  files = [os.path.join(source, DATASET_JSON)]
  for d in episode_dirs:
    for root, dirs, names in os.walk(d):
      dirs.sort()
      files.extend(os.path.join(root, n) for n in sorted(names))
  for f in files:
    if os.path.isfile(f):
      rel = os.path.relpath(f, source).replace(os.sep, "/")
      h.update(f"{rel}\t{os.path.getsize(f)}\n".encode())
      if os.path.dirname(rel).count("/") == 0 and not os.path.basename(f).startswith("frames"):
        with open(f, "rb") as fh:
          h.update(hashlib.sha256(fh.read()).digest())
  return h.hexdigest()


def _read_job(defaults: dict, height: int, width: int, job: list[str]) -> list[Episode]:
  return [read_episode(p, defaults, height, width) for p in job]


def ingest(source: str, out_dir: str, height: int, width: int, codec: str = "jpeg",
           quality: int = 95, episodes_per_shard: int = 4, workers: int = 1,
           progress: bool = True) -> dict:
  """Checks every episode of `source`, then writes them as shards to `out_dir` (resumable).
  Returns the manifest plus this run's "timing"."""
  for key, v in (("height", height), ("width", width), ("episodes_per_shard",
                                                         episodes_per_shard)):
    if not (isinstance(v, (int, np.integer)) and v > 0):
      raise DataError(f"{key}={v!r} must be a positive integer.")
  if codec not in shards_lib.CODECS:
    raise DataError(f"image codec {codec!r} is unknown. Fix: use one of "
                    f"{', '.join(shards_lib.CODECS)}.")
  if not 1 <= quality <= 100:
    raise DataError(f"jpeg quality {quality} is outside 1..100. Fix: use e.g. 95.")
  dirs = list_episodes(source)
  defaults = read_defaults(source)
  for d in dirs:  # everything that can be checked cheaply, before anything is written
    check_episode(d, defaults)
  config = {"source": "ingest", "source_dir": os.path.basename(os.path.abspath(source)),
            "height": int(height), "width": int(width), "codec": codec,
            "jpeg_quality": int(quality), "episodes_per_shard": int(episodes_per_shard),
            "episodes": [os.path.basename(d) for d in dirs],
            "fingerprint": fingerprint(source, dirs)}
  jobs = [dirs[i:i + episodes_per_shard] for i in range(0, len(dirs), episodes_per_shard)]
  return write_dataset(out_dir, config, jobs,
                       functools.partial(_read_job, defaults, int(height), int(width)),
                       codec=codec, quality=int(quality), workers=workers, progress=progress)


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
