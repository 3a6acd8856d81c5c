"""The evaluation's two pictures of one look-away-and-back case (README figures):

  results/look_away.gif   generated with memory | window only | truth, side by side, labelled,
                          at half the frame rate and twice the size
  results/frames.png      rows truth | VAE (the full VAE's reconstruction: what the latents
                          keep) | generated, at a few times: what the model makes of the scene
"""

import io
import os

import numpy as np
from PIL import Image, ImageDraw

from relic_jax.io_utils import write_bytes_atomic

LABEL_H = 12  # pixels of the label strip above each panel (before scaling)


def _labelled(frames: np.ndarray, label: str) -> np.ndarray:
  n, h, w, _ = frames.shape
  strip = Image.new("RGB", (w, LABEL_H), (255, 255, 255))
  ImageDraw.Draw(strip).text((2, 0), label, fill=(0, 0, 0))
  strip = np.broadcast_to(np.asarray(strip)[None], (n, LABEL_H, w, 3))
  return np.concatenate([strip, frames], axis=1)


def side_by_side(panels: list[tuple[str, np.ndarray]]) -> np.ndarray:
  """[(label, frames [N, H, W, 3] uint8)] -> labelled frames joined left to right (the
  shortest panel's length), a 2-pixel white gap between panels."""
  n = min(len(f) for _, f in panels)
  out = []
  for i, (label, frames) in enumerate(panels):
    out.append(_labelled(np.asarray(frames[:n], np.uint8), label))
    if i < len(panels) - 1:
      out.append(np.full((n, out[-1].shape[1], 2, 3), 255, np.uint8))
  return np.concatenate(out, axis=2)


def write_gif(path: str, frames: np.ndarray, fps: float, every: int = 2, scale: int = 2) -> str:
  """Frames [N, H, W, 3] uint8 -> an endlessly looping GIF of every `every`-th frame, scaled
  by `scale` (nearest neighbour), written atomically."""
  frames = np.asarray(frames)[::every]
  frames = frames.repeat(scale, axis=1).repeat(scale, axis=2)
  images = [Image.fromarray(f) for f in frames]
  buf = io.BytesIO()
  images[0].save(buf, format="GIF", save_all=True, append_images=images[1:],
                 duration=int(round(1000 * every / fps)), loop=0, optimize=False)
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  write_bytes_atomic(path, buf.getvalue())
  return path


def frames_figure(path: str, rows: list[tuple[str, np.ndarray]], times_s: list[float],
                  fps: float) -> str:
  """A grid PNG: one row per (label, frames), one column per time (seconds), nearest frames."""
  import matplotlib  # noqa: PLC0415 (heavy; only when a figure is drawn)
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # noqa: PLC0415
  n = min(len(f) for _, f in rows)
  idx = [min(int(round(t * fps)), n - 1) for t in times_s]
  fig, axes = plt.subplots(len(rows), len(idx), figsize=(1.3 * len(idx), 1.4 * len(rows)),
                           squeeze=False)
  for r, (label, frames) in enumerate(rows):
    for c, i in enumerate(idx):
      ax = axes[r][c]
      ax.imshow(frames[i], interpolation="nearest")
      ax.set_xticks([])
      ax.set_yticks([])
      if r == 0:
        ax.set_title(f"{i / fps:.1f} s", fontsize=8)
      if c == 0:
        ax.set_ylabel(label, fontsize=8)
  buf = io.BytesIO()
  fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
  plt.close(fig)
  write_bytes_atomic(path, buf.getvalue())
  return path
