"""User images (ingested frames, `relic generate --image`, `relic play` uploads) -> uint8 RGB.

`Image.convert("RGB")` is right for 8-bit modes but clips the others: a 16-bit grayscale PNG
(values 0..65535) becomes pure white. `to_rgb8` scales every mode by its range instead:

  * "I;16", "I;16L", "I;16B", "I;16N" (16-bit grayscale): value * 255 / 65535.
  * "I" (32-bit signed integers): Pillow opens 16-bit PNG and TIFF files in this mode too, so
    an image whose values all lie in 0..65535 is read as 16-bit (value * 255 / 65535); one
    with larger values is scaled from 0..2**31 - 1, negative values clip to 0.
  * "F" (32-bit float): an image whose maximum is at most 1 holds intensities in [0, 1]
    (value * 255, negatives clip to 0); otherwise it holds 0..255 levels (clipped to 0..255).
    NaN becomes 0.
  * "1", "L", "P", "RGB", "RGBX", "CMYK", "YCbCr", "LAB", "HSV": Pillow's own conversion
    (palette lookup, colour-space conversion; 16-bit RGB PNGs are opened as "RGB", already
    scaled to 8 bits by Pillow).
  * "LA", "La", "PA", "RGBA", "RGBa": the colour without its alpha channel; transparency is
    dropped, not composited over a background (a frame has no background to show through).
Gray modes are replicated into the three channels. Rounding is to the nearest level.
"""

import numpy as np
from PIL import Image

from data_pipeline.episode import DataError

U16_MAX = 65535.0
I32_MAX = 2.0**31 - 1
_16BIT = ("I;16", "I;16L", "I;16B", "I;16N")
_PILLOW = ("1", "L", "P", "RGB", "RGBX", "CMYK", "YCbCr", "LAB", "HSV", "LA", "PA", "RGBA",
           "RGBa")


def _gray_to_rgb(levels: np.ndarray) -> np.ndarray:
  """float levels 0..255 [H, W] -> uint8 [H, W, 3]."""
  g = np.rint(np.clip(levels, 0.0, 255.0)).astype(np.uint8)
  return np.repeat(g[..., None], 3, axis=-1)


def to_rgb8(image: Image.Image) -> np.ndarray:
  """Any Pillow image -> uint8 [H, W, 3], each mode scaled by its range (module docstring).
  Decodes the pixels (the caller's errors for a damaged file surface here)."""
  mode = image.mode
  if mode in _16BIT:
    return _gray_to_rgb(np.asarray(image).astype(np.float64) * (255.0 / U16_MAX))
  if mode == "I":
    v = np.asarray(image).astype(np.float64)
    top = U16_MAX if v.size == 0 or (v.min() >= 0 and v.max() <= U16_MAX) else I32_MAX
    return _gray_to_rgb(v * (255.0 / top))
  if mode == "F":
    v = np.nan_to_num(np.asarray(image).astype(np.float64), nan=0.0)
    unit = v.size == 0 or v.max() <= 1.0
    return _gray_to_rgb(v * 255.0 if unit else v)
  if mode == "La":  # Pillow cannot convert it; its first band is the (premultiplied) gray
    return _gray_to_rgb(np.asarray(image.getchannel(0)).astype(np.float64))
  if mode in _PILLOW:
    return np.asarray(image.convert("RGB"))
  raise DataError(f"image mode {mode!r} is not supported (supported: "
                  f"{', '.join(_16BIT + ('I', 'F', 'La') + _PILLOW)}). Fix: save the image as an "
                  "8- or 16-bit RGB or grayscale png.")
