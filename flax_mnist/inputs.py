"""What the library accepts as images and labels, checked in one place.

Images are uint8 in [0, 255] or floating point in [0, 1] (the TensorFlow
tutorials' `x / 255.0`), shaped (N, 784), (N, 28, 28) or (N, 28, 28, 1);
both kinds of the same pictures give the same answer. Anything else (floats
outside [0, 1], NaN, another shape or dtype) is a `DataError` naming what was
expected, never a silent cast. Every entry point that takes images (the
models, `train_step`, `evaluate`, `Predictor`, `from_arrays`, `to_device`)
goes through these functions.
"""

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from flax_mnist.errors import DataError

SHAPES = '(N, 784), (N, 28, 28) or (N, 28, 28, 1)'
_KINDS = 'uint8 in [0, 255] or float in [0, 1]'
_INVERSE_255 = np.float32(1) / np.float32(255)


def _array(images: Any) -> np.ndarray | jax.Array:
  return images if isinstance(images, jax.Array) else np.asarray(images)


def _shape_NHWC(images, name: str) -> tuple[int, int, int, int]:
  shape = tuple(images.shape)
  if (len(shape) == 2 and shape[1:] == (784,) or len(shape) == 3 and
      shape[1:] == (28, 28) or len(shape) == 4 and shape[1:] == (28, 28, 1)):
    return shape[0], 28, 28, 1
  raise DataError(f'{name}: expected shape {SHAPES}, got {shape}')


def _check_floats(images, name: str) -> None:
  """Range and NaN checks, where the values are known (not inside `jit`)."""
  if isinstance(images, jax.core.Tracer) or not images.size:
    return
  low, high, nan = jax.device_get((images.min(), images.max(),
                                   jnp.isnan(images).any()
                                   if isinstance(images, jax.Array)
                                   else np.isnan(images).any()))
  if nan:
    raise DataError(f'{name}: NaN pixels ({_KINDS} expected)')
  if low < 0 or high > 1:
    bound = f'down to {low:g}' if low < 0 else f'up to {high:g}'
    raise DataError(f'{name}: floats must be in [0, 1] (uint8 images are in '
                    f'[0, 255]), got values {bound}')


def _check_dtype(images, name: str) -> None:
  if images.dtype != np.uint8 and not jnp.issubdtype(images.dtype, jnp.floating):
    raise DataError(f'{name}: expected {_KINDS}, got dtype {images.dtype}')


def model_input(images: Any, name: str = 'images') -> np.ndarray | jax.Array:
  """`images` as the models take them: float32 in [0, 1], (N, 28, 28, 1).

  uint8 pixels are scaled by 1/255; host arrays stay on the host, device
  arrays on the device; inside `jit` the values are not checked.

  >>> pixels = np.arange(784).astype(np.uint8).reshape(1, 784)
  >>> np.allclose(model_input(pixels), model_input(pixels / 255.0), rtol=1e-7, atol=0)
  True
  >>> model_input(pixels).shape
  (1, 28, 28, 1)
  >>> model_input(pixels * 1.0)
  Traceback (most recent call last):
    ...
  flax_mnist.errors.DataError: images: floats must be in [0, 1] (uint8 images are in [0, 255]), got values up to 255
  """
  images = _array(images)
  _check_dtype(images, name)
  shape = _shape_NHWC(images, name)
  xp = np if isinstance(images, np.ndarray) else jnp
  if images.dtype == np.uint8:
    # XLA compiles `x / 255` as `x * (1 / 255)`; written so, host and device
    # inputs agree bit for bit.
    return xp.reshape(images, shape).astype(xp.float32) * _INVERSE_255
  _check_floats(images, name)
  return xp.reshape(images, shape).astype(xp.float32)


def as_uint8(images: Any, name: str = 'images') -> np.ndarray:
  """`images` as (N, 28, 28, 1) uint8 host pixels, how the data is stored.

  Floats in [0, 1] are rounded to the nearest of the 256 levels, which gives
  back exactly the uint8 pixels that `x / 255.0` was made from.
  """
  images = _array(images)
  _check_dtype(images, name)
  shape = _shape_NHWC(images, name)
  images = np.asarray(images)
  if images.dtype == np.uint8:
    return images.reshape(shape)
  _check_floats(images, name)
  return np.rint(images.astype(np.float64) * 255).astype(np.uint8).reshape(shape)


def labels(labels_N: Any, count: int | None = None,
           name: str = 'labels') -> np.ndarray:
  """Integer class labels in [0, 10) as (N,) int32; `count` checks N."""
  labels_N = np.asarray(labels_N)
  if labels_N.ndim == 2 and labels_N.shape[1] == 1:
    labels_N = labels_N[:, 0]
  if labels_N.ndim != 1 or not (np.issubdtype(labels_N.dtype, np.integer)):
    raise DataError(f'{name}: expected (N,) integers in [0, 10), got '
                    f'{labels_N.dtype} of shape {labels_N.shape}')
  if labels_N.size and (labels_N.min() < 0 or labels_N.max() > 9):
    raise DataError(f'{name}: expected integers in [0, 10), got values from '
                    f'{labels_N.min()} to {labels_N.max()}')
  if count is not None and len(labels_N) != count:
    raise DataError(f'{name}: {len(labels_N)} labels for {count} images')
  return labels_N.astype(np.int32)
