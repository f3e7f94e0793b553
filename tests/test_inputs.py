"""One check of images for every entry point: the kinds it takes, the same
answer for each, and a clear error for anything else."""

import jax
import numpy as np
import pytest

from conftest import synthetic_split
from flax_mnist import inputs
from flax_mnist.errors import DataError

PIXELS, _ = synthetic_split(6, 0)  # (6, 28, 28) uint8


@pytest.mark.parametrize('images', [
    PIXELS, PIXELS.reshape(6, 784), PIXELS[..., None], PIXELS / 255.0,
    (PIXELS / 255).astype(np.float32).reshape(6, 784), jax.numpy.asarray(PIXELS)])
def test_every_kind_gives_the_same_model_input(images):
  expected = PIXELS[..., None].astype(np.float32) / 255
  got = inputs.model_input(images)
  assert got.shape == (6, 28, 28, 1) and got.dtype == np.float32
  np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-7)
  np.testing.assert_array_equal(inputs.as_uint8(images), PIXELS[..., None])


@pytest.mark.parametrize('images,words', [
    (PIXELS * 1.0, 'floats must be in [0, 1] (uint8 images are in [0, 255]), '
                   'got values up to 255'),
    (PIXELS / 255.0 - 0.5, 'got values down to -0.5'),
    (np.full((2, 784), np.nan, np.float32), 'NaN pixels'),
    (PIXELS.reshape(6, 28 * 28, 1), 'expected shape (N, 784), (N, 28, 28) or '
                                    '(N, 28, 28, 1), got (6, 784, 1)'),
    (PIXELS[0], 'got (28, 28)'),
    (PIXELS.astype(np.int64), 'expected uint8 in [0, 255] or float in [0, 1], '
                              'got dtype int64'),
    (PIXELS > 0, 'got dtype bool'),
])
def test_anything_else_is_a_clear_error(images, words):
  for check in (inputs.model_input, inputs.as_uint8):
    with pytest.raises(DataError, match='^images: ') as error:
      check(images)
    assert words in str(error.value)


def test_labels():
  np.testing.assert_array_equal(inputs.labels(np.array([[3], [4]], np.uint8)), [3, 4])
  with pytest.raises(DataError, match=r'integers in \[0, 10\), got values from 0 to 10'):
    inputs.labels([0, 10])
  with pytest.raises(DataError, match='3 labels for 2 images'):
    inputs.labels([1, 2, 3], count=2)
  with pytest.raises(DataError, match='got float64'):
    inputs.labels([0.5])


def test_inside_jit_only_the_shape_is_checked():
  scaled = jax.jit(inputs.model_input)(PIXELS.reshape(6, 784))
  np.testing.assert_array_equal(scaled, inputs.model_input(PIXELS))
  with pytest.raises(DataError, match='expected shape'):
    jax.jit(inputs.model_input)(np.zeros((2, 10), np.float32))
