"""Image metrics against known answers."""

import numpy as np
import pytest

from relic_jax.evaluation import metrics


def test_psnr_known_answers():
  a = np.full((2, 16, 16, 3), 0.5)
  for d in (0.1, 0.01):
    assert metrics.psnr(a, a + d) == pytest.approx([-20 * np.log10(d)] * 2)
  assert np.isinf(metrics.psnr(a, a)).all()
  u = np.zeros((8, 8, 3), np.uint8)
  assert metrics.psnr(u, u + 255) == pytest.approx(0.0)  # uint8 images scale by 255
  with pytest.raises(ValueError, match="shapes differ"):
    metrics.psnr(a, a[:, :8])


def test_ssim_known_answers():
  rng = np.random.default_rng(0)
  img = rng.uniform(size=(32, 32, 3))
  assert metrics.ssim(img, img) == pytest.approx(1.0)
  # constant images: the variance terms are 0, so SSIM = (2 a b + C1) / (a^2 + b^2 + C1)
  a, b, c1 = 0.3, 0.6, 0.01 ** 2
  got = metrics.ssim(np.full((16, 16, 1), a), np.full((16, 16, 1), b))
  assert got == pytest.approx((2 * a * b + c1) / (a * a + b * b + c1))
  # negated contrast around the same mean gives a negative structure term
  assert metrics.ssim(img[..., :1], 1.0 - img[..., :1]) < 0
  noisy = np.clip(img + rng.normal(0, 0.1, img.shape), 0, 1)
  assert 0.0 < metrics.ssim(img, noisy) < metrics.ssim(img, (img + noisy) / 2) < 1.0
