"""Image-quality metrics on uint8 or [0, 1] float frames, numpy only.

psnr: 10 log10(MAX^2 / MSE) per image, MAX = 1 for [0, 1] images (255 for uint8).
ssim: Wang et al. (2004) structural similarity with an 11x11 Gaussian window (sigma 1.5),
K1 = 0.01, K2 = 0.03, on the luma (ITU-R BT.601) of RGB images, averaged over the valid window
positions (no padding), as the common reference implementations compute it.
"""

import numpy as np

_LUMA = np.array([0.299, 0.587, 0.114], np.float64)


def _as_unit(x) -> np.ndarray:
  x = np.asarray(x)
  if x.dtype == np.uint8:
    return x.astype(np.float64) / 255.0
  return x.astype(np.float64)


def psnr(a, b) -> np.ndarray:
  """PSNR in dB of image pairs [..., H, W, C] (per leading index); inf for identical images."""
  a, b = _as_unit(a), _as_unit(b)
  if a.shape != b.shape:
    raise ValueError(f"psnr: shapes differ, {a.shape} vs {b.shape}. Fix: compare equal-size "
                     "images.")
  mse = ((a - b) ** 2).mean(axis=(-3, -2, -1))
  with np.errstate(divide="ignore"):
    return 10.0 * np.log10(1.0 / mse)


def _gaussian_window(size=11, sigma=1.5) -> np.ndarray:
  x = np.arange(size) - (size - 1) / 2
  g = np.exp(-x ** 2 / (2 * sigma ** 2))
  return g / g.sum()


def _filter_valid(img: np.ndarray, g: np.ndarray) -> np.ndarray:
  """Separable 'valid' correlation of [..., H, W] with the 1-D window g on both axes."""
  k = len(g)
  h, w = img.shape[-2:]
  rows = sum(g[i] * img[..., i:h - k + 1 + i, :] for i in range(k))
  return sum(g[i] * rows[..., :, i:w - k + 1 + i] for i in range(k))


def ssim(a, b) -> np.ndarray:
  """SSIM of image pairs [..., H, W, 3] (luma) or [..., H, W, 1], per leading index."""
  a, b = _as_unit(a), _as_unit(b)
  if a.shape != b.shape:
    raise ValueError(f"ssim: shapes differ, {a.shape} vs {b.shape}.")
  if a.shape[-3] < 11 or a.shape[-2] < 11:
    raise ValueError(f"ssim needs images of at least 11x11, got {a.shape[-3:-1]}.")
  ya = a @ _LUMA if a.shape[-1] == 3 else a[..., 0]
  yb = b @ _LUMA if b.shape[-1] == 3 else b[..., 0]
  g = _gaussian_window()
  c1, c2 = 0.01 ** 2, 0.03 ** 2
  mu_a, mu_b = _filter_valid(ya, g), _filter_valid(yb, g)
  saa = _filter_valid(ya * ya, g) - mu_a ** 2
  sbb = _filter_valid(yb * yb, g) - mu_b ** 2
  sab = _filter_valid(ya * yb, g) - mu_a * mu_b
  s = ((2 * mu_a * mu_b + c1) * (2 * sab + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (saa + sbb + c2))
  return s.mean(axis=(-2, -1))


def flat_colour(frames) -> np.ndarray:
  """Each frame [N, H, W, 3] uint8 replaced by its own mean colour: what a blur that keeps
  only the colour scores, the reference generated frames must beat to show a scene."""
  frames = np.asarray(frames)
  mean = frames.reshape(len(frames), -1, frames.shape[-1]).mean(1).round().astype(np.uint8)
  return np.broadcast_to(mean[:, None, None, :], frames.shape)


def flat_colour_psnr(frames) -> float:
  """Mean PSNR (dB, capped at 100) of `flat_colour` against the frames themselves."""
  return float(np.mean(np.minimum(psnr(frames, flat_colour(frames)), 100.0)))
