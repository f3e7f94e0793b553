"""Finding the digit in a picture (`flax_mnist.preprocess`): MNIST's format,
MNIST itself passed through, lighting, shadows, pens, framing, specks, and
blank pictures."""

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

import digits
from flax_mnist import idx, preprocess
from flax_mnist.errors import DataError


def _stroke_width(image: np.ndarray) -> float:
  """The MNIST measure preprocess normalizes: 2 * area / perimeter over half."""
  return preprocess._stroke_width(image > 127)


def test_output_is_mnist_shaped(digit_input):
  assert digit_input.shape == (28, 28) and digit_input.dtype == np.uint8
  rows, cols = np.flatnonzero(digit_input.any(1)), np.flatnonzero(digit_input.any(0))
  assert max(rows[-1] - rows[0], cols[-1] - cols[0]) + 1 == 20
  assert np.all(np.abs(np.subtract(ndimage.center_of_mass(digit_input / 255.), 14)) <= 0.5)
  assert digit_input.max() == 255 and digit_input[0].max() == 0
  assert 2.2 <= _stroke_width(digit_input) <= 4.0


def test_mnist_itself_passes_through_unchanged(mnist_dir):
  images, _ = idx.load_split(mnist_dir, 'test')
  images = np.asarray(images).reshape(-1, 28, 28)[:500]
  for image in images:
    assert preprocess.looks_like_mnist(image / 255.)
    np.testing.assert_array_equal(preprocess.prepare(image).image, image)


def test_light_on_dark_is_inverted(digit_input):
  assert digits.iou(preprocess.prepare(255 - digits.on_paper()).image, digit_input) > 0.9


def test_lighting_and_shadow_are_removed(digit_input):
  coverage = digits.coverage()
  h, w = coverage.shape
  yy, xx = np.mgrid[0:h, 0:w]
  gradient = 1 - 0.5 * xx / w
  shadow = 1 - 0.5 / (1 + np.exp(-(yy - 0.6 * xx - 40) / 3))  # A sharp edge.
  noise = np.random.default_rng(1).normal(0, 0.02, (h, w))
  paper = 0.9 * gradient * shadow + noise
  photo = paper * (1 - 0.85 * coverage)
  assert digits.iou(preprocess.prepare(np.clip(photo, 0, 1)).image, digit_input) > 0.8


@pytest.mark.parametrize('pen', [2.0, 4.0, 25.0])
def test_strokes_are_made_mnist_wide(pen):
  image = preprocess.prepare(digits.on_paper(size=(240, 240), pen=pen)).image
  assert 2.3 <= _stroke_width(image) <= 3.7


def test_small_off_centre_digit(digit_input):
  page = np.full((600, 800), 230, np.uint8)
  page[420:580, 20:220] = digits.on_paper()
  assert digits.iou(preprocess.prepare(page).image, digit_input) > 0.8


def test_specks_and_stray_marks_are_ignored(digit_input):
  page = np.full((400, 400), 230, np.uint8)
  page[100:260, 120:320] = digits.on_paper()
  rng = np.random.default_rng(0)
  for y, x in rng.integers(0, 396, (30, 2)):
    page[y:y + 2, x:x + 2] = 40
  page[10:20, 360:390] = 40  # A mark in a far corner.
  assert digits.iou(preprocess.prepare(page).image, digit_input) > 0.85


def test_tiny_image():
  tiny = np.asarray(Image.fromarray(digits.on_paper(1)).resize((8, 8), Image.Resampling.BOX))
  image = preprocess.prepare(tiny).image
  assert image.shape == (28, 28) and image.max() == 255


@pytest.mark.parametrize('make', [
    lambda: np.full((100, 100), 255, np.uint8),
    lambda: np.zeros((100, 100), np.uint8),
    lambda: np.full((28, 28), 0, np.uint8),
    lambda: np.clip(np.random.default_rng(0).normal(0.8, 0.03, (300, 400)) *
                    np.linspace(0.6, 1, 400), 0, 1),
])
def test_blank_images_have_no_digit(make):
  with pytest.raises(DataError, match='no digit found'):
    preprocess.prepare(make())




def test_prepare_keeps_the_picture_it_read():
  picture = digits.on_paper()
  prepared = preprocess.prepare(picture)
  np.testing.assert_array_equal(prepared.original, picture)
  np.testing.assert_array_equal(prepared.image, preprocess.to_mnist(picture / 255.))


def test_too_small_for_a_digit():
  with pytest.raises(DataError, match=r'30x7 pixels .* too small to hold a digit'):
    preprocess.to_mnist(np.zeros((7, 30)))
