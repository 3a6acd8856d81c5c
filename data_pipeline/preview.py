"""Previews of an episode dataset: an MP4 of one episode with per-frame captions (frame, time,
active actions, revisits) and a top-down PNG of its camera path over the map's walls.

A *revisit* is a frame whose camera stands where an earlier frame's stood and looks the same way
(`find_revisits`), so it sees again what that frame saw: the situations RELIC's long-horizon
memory is for. The preview shows how often and where the data has them.

  python -m data_pipeline.preview DATA_DIR OUT_DIR [--episode NAME] [--max-frames N] [--no-map]
"""

import argparse
import fractions
import io
import os
import textwrap

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from data_pipeline import doom
from data_pipeline import poses as poses_lib
from data_pipeline import shards
from data_pipeline.episode import DataError
from relic_jax.io_utils import write_bytes_atomic

ACTION_THRESHOLD = 0.05  # an action channel above this counts as active in the captions
MIN_SHORT_SIDE = 256     # videos are upscaled (integer factor) to at least this short side
VIEW_MARGIN = 5.0        # metres of map shown around the camera path
_CHUNK = 256             # rows of the pairwise pose comparison computed at once


# ------------------------------------------------------------------ revisits


def find_revisits(poses, min_gap_frames: int = 30, max_distance: float = 0.75,
                  max_angle_deg: float = 30.0, require_leave: bool = True) -> np.ndarray:
  """For each frame t, an earlier frame s it revisits, or -1: [N] int64.

  s is a candidate for t when s <= t - min_gap_frames, the camera centres are at most
  max_distance metres apart and the viewing directions (column 2 of the rotation) at most
  max_angle_deg apart. With `require_leave` the camera must also have been away from s's pose
  (too far or turned too much) at some frame between s and t, so a camera that merely stood
  still, or nodded up and down, for min_gap_frames does not count. Of the candidates, the one
  nearest in pose is returned: the smallest distance / max_distance + angle / max_angle_deg
  (the earliest on a tie). O(N^2) time, in chunks of rows (O(N) memory per row).
  """
  poses = np.asarray(poses, np.float64)
  if poses.ndim != 3 or poses.shape[1:] not in ((4, 4), (3, 4)):
    raise DataError(f"find_revisits: poses have shape {list(poses.shape)}; expected [N, 4, 4] "
                    "camera-to-world matrices. Fix: pass an episode's poses.")
  if min_gap_frames < 1 or max_distance < 0 or not 0 <= max_angle_deg <= 180:
    raise DataError(f"find_revisits: min_gap_frames={min_gap_frames}, max_distance="
                    f"{max_distance}, max_angle_deg={max_angle_deg} are out of range. Fix: use "
                    "min_gap_frames >= 1, max_distance >= 0 and 0 <= max_angle_deg <= 180.")
  n = len(poses)
  centre = poses[:, :3, 3]
  forward = poses[:, :3, 2] / np.linalg.norm(poses[:, :3, 2], axis=-1, keepdims=True)
  max_angle = np.radians(max_angle_deg)
  frame = np.arange(n)
  out = np.full(n, -1, np.int64)

  def close_and_cost(lo, hi):  # rows lo..hi against every frame
    dist = np.linalg.norm(centre[lo:hi, None] - centre[None], axis=-1)
    angle = np.arccos(np.clip(forward[lo:hi] @ forward.T, -1.0, 1.0))
    close = (dist <= max_distance) & (angle <= max_angle + 1e-9)
    return close, dist / max(max_distance, 1e-9) + angle / max(max_angle, 1e-9)

  # first_away[s]: the first frame after s whose pose is not close to s's (n if none; -1,
  # "always away", when leaving is not required).
  first_away = np.full(n, -1 if not require_leave else n, np.int64)
  if require_leave:
    for lo in range(0, n, _CHUNK):
      hi = min(n, lo + _CHUNK)
      away = ~close_and_cost(lo, hi)[0] & (frame[None] > frame[lo:hi, None])
      first_away[lo:hi] = np.where(away.any(1), away.argmax(1), n)
  for lo in range(0, n, _CHUNK):
    hi = min(n, lo + _CHUNK)
    close, cost = close_and_cost(lo, hi)
    ok = close & (frame[None] <= frame[lo:hi, None] - min_gap_frames)
    ok &= first_away[None] < frame[lo:hi, None]
    best = np.where(ok, cost, np.inf).argmin(1)
    out[lo:hi] = np.where(ok.any(1), best, -1)
  return out


# ------------------------------------------------------------------ video


def _font(size: int):
  try:
    return ImageFont.load_default(size=size)
  except TypeError:  # Pillow < 10.1: a fixed bitmap font
    return ImageFont.load_default()


def _wrap(draw, text: str, font, width: int) -> list[str]:
  """Lines of `text` (split on newlines) wrapped to fit `width` pixels."""
  out = []
  for line in str(text).split("\n"):
    words = line.split(" ")
    cur = ""
    for word in words:
      trial = f"{cur} {word}" if cur else word
      if cur and draw.textlength(trial, font=font) > width:
        out.append(cur)
        cur = word
      else:
        cur = trial
    out.append(cur)
  return out


class VideoUnavailable(DataError):
  """PyAV (FFmpeg) is not installed, so no video can be written."""


def pyav():
  """PyAV, imported on first use: it loads FFmpeg, and most stages write no video."""
  try:
    import av  # noqa: PLC0415 (heavy; only when a video is read or written)
  except ImportError as e:
    raise VideoUnavailable(f"PyAV cannot be imported ({e}), so no video can be read or "
                           "written. Fix: `pip install av` (a relic_jax dependency).") from e
  return av


def _codec() -> str:
  av = pyav()
  for name in ("libx264", "mpeg4"):
    try:
      av.codec.Codec(name, "w")
      return name
    except Exception:  # not built into this FFmpeg
      continue
  raise DataError("PyAV's FFmpeg has neither libx264 nor mpeg4 for writing. Fix: install a "
                  "PyAV wheel with its bundled FFmpeg (`pip install av`).")


def write_video(path: str, frames, fps: float, captions_per_frame=None, scale: int | None = None,
                highlight=None) -> str:
  """Writes frames [N, H, W, 3] uint8 to an MP4 (H.264, or MPEG-4 part 2 without libx264).

  Frames are upscaled by the integer `scale` (nearest neighbour; default: the smallest factor
  that makes the short side >= MIN_SHORT_SIDE) and padded to even sizes. `captions_per_frame`
  (N strings, "\\n" for line breaks) are drawn in a strip under each frame; where `highlight`
  (N bools) is true the strip is red. Written atomically; returns `path`.
  """
  frames = np.asarray(frames)
  if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8 or not len(frames):
    raise DataError(f"write_video: frames are {frames.dtype} {list(frames.shape)}. Fix: pass "
                    "uint8 RGB frames [N, H, W, 3] with N >= 1.")
  n, h, w = frames.shape[:3]
  if not (np.isfinite(fps) and fps > 0):
    raise DataError(f"write_video: fps={fps} must be a positive number.")
  for name, seq in (("captions_per_frame", captions_per_frame), ("highlight", highlight)):
    if seq is not None and len(seq) != n:
      raise DataError(f"write_video: {len(seq)} {name} for {n} frames. Fix: give one per frame.")
  scale = int(scale) if scale else max(1, -(-MIN_SHORT_SIDE // min(h, w)))
  if scale < 1:
    raise DataError(f"write_video: scale={scale} must be a positive integer.")
  sw, sh = w * scale, h * scale
  font_size = max(12, min(20, sw // 19))
  font = _font(font_size)
  line_h = font_size + 4
  lines = None
  if captions_per_frame is not None:
    probe = ImageDraw.Draw(Image.new("RGB", (8, 8)))
    lines = [_wrap(probe, c, font, sw - 8) for c in captions_per_frame]
  strip = 0 if lines is None else max(len(l) for l in lines) * line_h + 6
  out_w, out_h = sw + sw % 2, sh + strip + (sh + strip) % 2

  av = pyav()
  codec = _codec()
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  tmp = f"{path}.tmp-{os.getpid()}"
  try:
    with av.open(tmp, "w", format="mp4") as container:
      stream = container.add_stream(codec, rate=fractions.Fraction(fps).limit_denominator(1001))
      stream.width, stream.height, stream.pix_fmt = out_w, out_h, "yuv420p"
      if codec == "libx264":
        stream.options = {"crf": "18", "preset": "medium"}
      else:
        stream.bit_rate = 8 * out_w * out_h * int(np.ceil(fps))
      for t in range(n):
        canvas = np.zeros((out_h, out_w, 3), np.uint8)
        canvas[:sh, :sw] = frames[t].repeat(scale, 0).repeat(scale, 1)
        if lines is not None:
          red = highlight is not None and bool(highlight[t])
          img = Image.new("RGB", (out_w, out_h - sh), (120, 20, 20) if red else (24, 24, 24))
          draw = ImageDraw.Draw(img)
          for i, line in enumerate(lines[t]):
            draw.text((4, 3 + i * line_h), line, fill=(235, 235, 235), font=font)
          canvas[sh:] = np.asarray(img)
        for packet in stream.encode(av.VideoFrame.from_ndarray(canvas, format="rgb24")):
          container.mux(packet)
      for packet in stream.encode(None):
        container.mux(packet)
    with open(tmp, "rb+") as f:
      os.fsync(f.fileno())
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)
  return path


# ------------------------------------------------------------------ top-down plot


def plot_trajectory(path: str, poses, revisits, walls=None, title: str = "") -> str:
  """A top-down PNG of the camera path: x, y in metres coloured by frame, start and end,
  heading arrows every ~N/40 frames, revisit frames (red) linked to the frames they revisit,
  and the map's walls [L, 4] (x1, y1, x2, y2) in grey if given. Atomic write; returns `path`."""
  # matplotlib: a heavy optional dependency (slow to import), only when a plot is drawn
  from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: PLC0415
  from matplotlib.collections import LineCollection  # noqa: PLC0415
  from matplotlib.figure import Figure  # noqa: PLC0415
  from matplotlib.lines import Line2D  # noqa: PLC0415

  poses = np.asarray(poses, np.float64)
  revisits = np.asarray(revisits)
  n = len(poses)
  if poses.ndim != 3 or n < 1 or revisits.shape != (n,):
    raise DataError(f"plot_trajectory: poses {list(poses.shape)} and revisits "
                    f"{list(revisits.shape)} do not match. Fix: pass [N, 4, 4] poses and the "
                    "[N] result of find_revisits on them.")
  xy = poses[:, :2, 3]
  lo, hi = xy.min(0), xy.max(0)
  # a square view of the path with room around it for the nearby walls
  half = 0.5 * float(max((hi - lo).max(), 1.0)) + max(VIEW_MARGIN, 0.25 * float((hi - lo).max()))
  centre = 0.5 * (lo + hi)

  fig = Figure(figsize=(8.0, 7.2), dpi=110)
  FigureCanvasAgg(fig)
  ax = fig.add_subplot(1, 1, 1)
  handles = []
  if walls is not None and len(walls):
    walls = np.asarray(walls, np.float64).reshape(-1, 4)
    ax.add_collection(LineCollection(walls.reshape(-1, 2, 2), colors="0.55", linewidths=0.9,
                                     zorder=1))
    handles.append(Line2D([], [], color="0.55", lw=0.9, label="walls"))
  time = np.arange(n)
  if n > 1:
    segs = np.stack([xy[:-1], xy[1:]], 1)
    path_lc = LineCollection(segs, cmap="viridis", linewidths=2.2, zorder=3)
    path_lc.set_array(time[:-1].astype(np.float64))
    path_lc.set_clim(0, n - 1)
    ax.add_collection(path_lc)
    cbar = fig.colorbar(path_lc, ax=ax, fraction=0.046, pad=0.03)
    cbar.set_label("frame")
  handles.append(Line2D([], [], color="tab:green", lw=2.2, label="camera path (colour = frame)"))

  fwd = poses[:, :2, 2]
  norm = np.linalg.norm(fwd, axis=-1, keepdims=True)
  fwd = np.where(norm > 1e-6, fwd / np.maximum(norm, 1e-12), 0.0)
  step = max(1, n // 40)
  idx = np.arange(0, n, step)
  length = 0.035 * 2 * half
  ax.quiver(xy[idx, 0], xy[idx, 1], fwd[idx, 0] * length, fwd[idx, 1] * length, time[idx],
            cmap="viridis", clim=(0, max(n - 1, 1)), angles="xy", scale_units="xy", scale=1,
            width=0.004, headwidth=4, headlength=5, zorder=4, edgecolor="k", linewidth=0.3)
  handles.append(Line2D([], [], color="0.3", marker=r"$\rightarrow$", ms=12, lw=0,
                        label=f"heading (every {step} frames)"))

  hit = np.flatnonzero(revisits >= 0)
  if len(hit):
    links = np.stack([xy[hit], xy[revisits[hit]]], 1)
    ax.add_collection(LineCollection(links, colors="tab:red", linewidths=0.6, alpha=0.5,
                                     zorder=5))
    ax.scatter(xy[hit, 0], xy[hit, 1], s=16, facecolors="none", edgecolors="tab:red",
               linewidths=0.9, zorder=6)
    ax.scatter(xy[revisits[hit], 0], xy[revisits[hit], 1], s=10, c="tab:red", marker="x",
               linewidths=0.8, zorder=6)
    handles.append(Line2D([], [], color="tab:red", marker="o", mfc="none", lw=0.6,
                          label=f"revisit ({len(hit)} frames) -> earlier frame (x)"))
  ax.scatter(*xy[0], s=110, c="tab:green", edgecolors="k", marker="o", zorder=7)
  ax.scatter(*xy[-1], s=110, c="gold", edgecolors="k", marker="s", zorder=7)
  handles.append(Line2D([], [], color="tab:green", marker="o", mec="k", ms=9, lw=0,
                        label="start"))
  handles.append(Line2D([], [], color="gold", marker="s", mec="k", ms=9, lw=0, label="end"))

  ax.set_xlim(centre[0] - half, centre[0] + half)
  ax.set_ylim(centre[1] - half, centre[1] + half)
  ax.set_aspect("equal", adjustable="box")
  ax.set_xlabel("x (m)")
  ax.set_ylabel("y (m)")
  ax.grid(True, color="0.9", lw=0.5, zorder=0)
  ax.set_title(title or f"camera path, {n} frames", fontsize=10)
  ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=3,
            fontsize=8, frameon=False)
  fig.tight_layout()
  buf = io.BytesIO()
  fig.savefig(buf, format="png")
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  write_bytes_atomic(path, buf.getvalue())
  return path


# ------------------------------------------------------------------ preview


def frame_captions(actions, revisits, fps: float,
                   threshold: float = ACTION_THRESHOLD) -> list[str]:
  """Per frame: "frame t/N  s.ss s", the actions above `threshold`, and "REVISIT of frame s"
  if any."""
  names = poses_lib.ACTION_NAMES
  n = len(actions)
  out = []
  for t in range(n):
    active = [names[i] for i in np.flatnonzero(np.asarray(actions[t]) > threshold)]
    text = f"frame {t}/{n - 1}  {t / fps:5.2f} s\n{', '.join(active) or '-'}"
    if revisits[t] >= 0:
      text += f"\nREVISIT of frame {int(revisits[t])}"
    out.append(text)
  return out


def preview(data_dir: str, out_dir: str, episode: str | None = None,
            max_frames: int | None = None, with_map: bool = True) -> dict:
  """Writes <out_dir>/<episode>.mp4 and <episode>_topdown.png for one episode of a dataset
  (default: the manifest's first) and returns {"video", "topdown", "frames", "revisits",
  "episode", "caption"}; "revisits" counts the frames that revisit an earlier one. Walls are
  drawn for ViZDoom episodes when `with_map` (this starts a ViZDoom instance)."""
  if episode is None:
    entries = shards.episode_entries(shards.read_manifest(data_dir))
    if not entries:
      raise DataError(f"{data_dir} holds no episodes. Fix: generate some with `relic data`.")
    episode = entries[0][1]["name"]
  ep = shards.load_episode(data_dir, episode)
  n = len(ep) if max_frames is None else min(len(ep), int(max_frames))
  if n < 1:
    raise DataError(f"preview: max_frames={max_frames} leaves no frames. Fix: use >= 1.")
  frames, poses, actions = ep.frames[:n], ep.poses[:n], ep.actions[:n]
  revisits = find_revisits(poses)
  walls = None
  if with_map and ep.source.startswith("vizdoom:"):
    walls = doom.map_geometry(ep.map or ep.source[len("vizdoom:"):])
  stem = ep.name.replace(os.sep, "-")
  os.makedirs(out_dir, exist_ok=True)
  video = os.path.join(out_dir, f"{stem}.mp4")
  topdown = os.path.join(out_dir, f"{stem}_topdown.png")
  write_video(video, frames, ep.fps, frame_captions(actions, revisits, ep.fps),
              highlight=revisits >= 0)
  count = int((revisits >= 0).sum())
  where = ep.map or ep.source
  plot_trajectory(topdown, poses, revisits, walls,
                  title=f"{ep.name} ({where}): {n} frames at {ep.fps:g} fps, {count} revisit "
                        "frames\n" + textwrap.shorten(ep.caption, 110))
  return {"video": video, "topdown": topdown, "frames": n, "revisits": count,
          "episode": ep.name, "caption": ep.caption}


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("data_dir")
  p.add_argument("out_dir")
  p.add_argument("--episode", default=None, help="episode name (default: the first)")
  p.add_argument("--max-frames", type=int, default=None)
  p.add_argument("--no-map", action="store_true", help="do not draw the map's walls")
  a = p.parse_args(argv)
  result = preview(a.data_dir, a.out_dir, a.episode, a.max_frames, not a.no_map)
  for k, v in result.items():
    print(f"{k}: {v}")


if __name__ == "__main__":
  main()
