"""A classical camera-motion estimator: the image similarity (zoom and shift) between two frames,
mapped to (dolly, pan, tilt) by a linear calibration on training episodes. Numpy only.

For frames a, b (grey, [H, W]) it finds, by exhaustive search, the zoom about the image centre
s and the shift (dy, dx) in pixels that best map a onto b (the highest normalised
cross-correlation of the centre crop, a margin of MAX_SHIFT_FRACTION of the width kept for
shifts): a pan shifts the image sideways, a tilt up and down, and walking forwards zooms it
in (log s grows with the distance walked over the scene's depth). The calibration is three
least-squares slopes fitted on the training episodes' true motions of the same frame pairs:

  dolly (metres, camera z) = c_z * log s,   pan = k_x * dx,   tilt = k_y * dy   (radians)

Truck, pedestal and roll are not estimated (0): at 64x64 a sideways step is indistinguishable
from a small pan. The learned estimator (pose_estimation.PoseNet) fits its 7 training episodes
but does not generalise to the held-out maps' scripted motion (it reads pans as translation);
this one has no appearance to overfit, and it runs on any frames, generated ones included.
"""

import numpy as np

LOG_SCALES = np.linspace(-0.1, 0.1, 11)  # zooms searched: about +-10%, 2% apart
MAX_SHIFT_FRACTION = 0.19  # horizontal search +-19% of the width (12 px at 64: > 10 degrees)
MAX_TILT_FRACTION = 0.06   # vertical search +-6% of the height (4 px at 64)
CHUNK = 64                 # frame pairs per vectorised search
_LUMA = np.array([0.299, 0.587, 0.114])


def _zoom(frames_NHW, scale: float):
  """Each frame zoomed by `scale` about its centre: output pixel p samples the input at
  c + (p - c) / scale, bilinearly, edges repeated."""
  n, h, w = frames_NHW.shape

  def axis(size):
    c = (size - 1) / 2
    x = np.clip(c + (np.arange(size) - c) / scale, 0, size - 1)
    i0 = np.minimum(np.floor(x).astype(int), size - 2)
    return i0, x - i0
  y0, fy = axis(h)
  x0, fx = axis(w)
  rows = frames_NHW[:, y0] * (1 - fy)[:, None] + frames_NHW[:, y0 + 1] * fy[:, None]
  return rows[:, :, x0] * (1 - fx) + rows[:, :, x0 + 1] * fx


def features(a, b) -> np.ndarray:
  """Frames a, b [N, H, W, 3] -> [N, 3]: (log zoom, dy, dx in pixels) of the similarity that
  best maps each a onto its b. The correlations of all shifts at once by FFT (the zoomed
  crop, zero-mean and unit-norm, against b; each of b's windows divided by its own norm)."""
  a = np.asarray(a, np.float64) @ _LUMA
  b = np.asarray(b, np.float64) @ _LUMA
  n, h, w = a.shape
  mx, my = max(1, round(MAX_SHIFT_FRACTION * w)), max(1, round(MAX_TILT_FRACTION * h))
  if h <= 2 * mx or w <= 2 * mx:
    raise ValueError(f"frames of {h}x{w} are too small for the similarity search (margin {mx} "
                     "pixels). Fix: use frames of at least 16x16.")
  ch, cw = h - 2 * mx, w - 2 * mx
  rows = slice(mx - my, mx + my + 1)  # the vertical shifts searched
  ones = np.zeros((h, w))
  ones[:ch, :cw] = 1.0

  def xcorr(fb, kernel):  # [n, H, W]: sum_ij kernel[ij] b[i + u, j + v] at every (u, v)
    return np.fft.irfft2(np.conj(np.fft.rfft2(kernel)) * fb, s=(h, w))[:, rows, :2 * mx + 1]
  out = np.zeros((n, 3))
  for lo in range(0, n, CHUNK):
    hi = min(n, lo + CHUNK)
    bb = b[lo:hi] - b[lo:hi].mean((1, 2), keepdims=True)
    fb, fb2 = np.fft.rfft2(bb), np.fft.rfft2(bb * bb)
    s1, s2 = xcorr(fb, ones[None]), xcorr(fb2, ones[None])
    norm = np.sqrt(np.maximum(s2 - s1 * s1 / (ch * cw), 0.0)) + 1e-6
    best = np.full(hi - lo, -np.inf)
    for ls in LOG_SCALES:
      za = _zoom(a[lo:hi], float(np.exp(ls)))[:, mx:mx + ch, mx:mx + cw]
      za = za - za.mean((1, 2), keepdims=True)
      za /= np.sqrt((za * za).sum((1, 2), keepdims=True)) + 1e-6
      kernel = np.zeros((hi - lo, h, w))
      kernel[:, :ch, :cw] = za
      score = (xcorr(fb, kernel) / norm).reshape(hi - lo, -1)
      k = score.argmax(1)
      top = score[np.arange(hi - lo), k]
      better = top > best
      best = np.where(better, top, best)
      dy, dx = np.divmod(k, 2 * mx + 1)
      out[lo:hi][better] = np.stack([np.full(hi - lo, ls), dy - my, dx - mx], 1)[better]
  return out


def calibrate(feats, targets) -> dict:
  """Least-squares slopes from features [P, 3] to the true motions [P, 6] (translation xyz,
  pan, tilt, roll) of the same pairs: {"dolly_per_log_zoom", "pan_per_px", "tilt_per_px"} and
  the correlations behind them."""
  feats, targets = np.asarray(feats, np.float64), np.asarray(targets, np.float64)

  def slope(x, y):
    return float(x @ y / (x @ x)) if x @ x > 0 else 0.0

  def corr(x, y):
    return float(np.corrcoef(x, y)[0, 1]) if x.std() > 0 and y.std() > 0 else 0.0
  return {"dolly_per_log_zoom": slope(feats[:, 0], targets[:, 2]),
          "pan_per_px": slope(feats[:, 2], targets[:, 3]),
          "tilt_per_px": slope(feats[:, 1], targets[:, 4]),
          "corr_dolly": corr(feats[:, 0], targets[:, 2]),
          "corr_pan": corr(feats[:, 2], targets[:, 3]),
          "corr_tilt": corr(feats[:, 1], targets[:, 4])}


def motion(feats, calibration: dict) -> tuple[np.ndarray, np.ndarray]:
  """Features [N, 3] -> (translation [N, 3] metres, (pan, tilt, roll) [N, 3] radians)."""
  feats = np.asarray(feats, np.float64)
  dp = np.zeros((len(feats), 3))
  ang = np.zeros((len(feats), 3))
  dp[:, 2] = calibration["dolly_per_log_zoom"] * feats[:, 0]
  ang[:, 0] = calibration["pan_per_px"] * feats[:, 2]
  ang[:, 1] = calibration["tilt_per_px"] * feats[:, 1]
  return dp, ang
