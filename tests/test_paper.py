"""The paper under a digit (`flax_mnist.paper`): which side the ink is on, the
ink map with lighting divided out, and Otsu's threshold."""

import numpy as np

import digits
from flax_mnist import paper


def _lit(coverage: np.ndarray) -> np.ndarray:
  """Dark ink (85% of the light) on paper lit from the left, fading to half."""
  h, w = coverage.shape
  lighting = 0.9 * (1 - 0.5 * np.mgrid[0:h, 0:w][1] / w)
  return lighting * (1 - 0.85 * coverage)


def test_which_side_the_ink_is():
  photo = _lit(digits.coverage())
  assert paper.is_light(photo) and paper.is_light(digits.on_paper() / 255)
  assert not paper.is_light(1 - photo)
  assert not paper.is_light(1 - digits.on_paper() / 255)


def test_ink_is_the_same_in_the_light_and_in_the_dark():
  coverage = digits.coverage()
  ink = paper.ink(_lit(coverage), 0.3 * min(coverage.shape))
  # The lighting halves from left to right; the ink map does not see it.
  assert np.abs(ink[coverage == 0]).max() < 0.05
  assert np.abs(ink[coverage == 1] - 0.85).max() < 0.01


def test_otsu_splits_two_classes():
  rng = np.random.default_rng(0)
  values = np.clip(np.concatenate([rng.normal(0.2, 0.03, 500),
                                   rng.normal(0.7, 0.03, 500)]), 0, 1)
  above = values > paper.otsu(values)
  assert above[:500].mean() < 0.01 and above[500:].all()
  assert paper.otsu(np.full(50, 0.4)) == 1.0
