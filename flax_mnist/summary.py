"""A Keras-style `model.summary()` table for any of the library's models."""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from flax_mnist import models

_WIDTHS = (29, 26, 10)


def layer_rows(name: str) -> list[tuple[str, str, tuple[int, ...], int]]:
  """(layer, type, output shape without batch, parameter count), in call order.

  Runs under `jax.eval_shape`, so nothing is computed or allocated.
  """
  model = models.create_model(name)
  layers = []

  def record(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    module = context.module
    if context.method_name == '__call__' and len(module.path) == 1:
      layers.append((module.name, type(module).__name__, out.shape[1:]))
    return out

  def init(images_BHWC):
    with nn.intercept_methods(record):
      return model.init(jax.random.PRNGKey(0), images_BHWC)['params']

  params = jax.eval_shape(init, jax.ShapeDtypeStruct((1, 28, 28, 1), jnp.float32))
  return [(layer, kind, shape, models.count_params(params.get(layer, {})))
          for layer, kind, shape in layers]


def multiply_adds(name: str) -> int:
  """Multiply-adds of one image's forward pass through the weighted layers.

  A training step costs about 6 flops per multiply-add per image (2 forward,
  4 for the two gradients).
  """
  total = 0
  for _, _, shape, count in layer_rows(name):
    if count:
      positions = math.prod(shape[:-1])
      total += (count - shape[-1]) * positions
  return total


def format_summary(name: str) -> str:
  """The table Keras prints for `model.summary()`, for model `name`.

  >>> print(format_summary('softmax_regression'))  # doctest: +NORMALIZE_WHITESPACE
  Model: "softmax_regression"
  ...
  dense (Dense)                (None, 10)                7850
  ...
  Total params: 7,850
  ...
  """
  rows = layer_rows(name)
  total = sum(row[3] for row in rows)

  def line(*cells):
    return ''.join(f'{cell:<{w}}' for cell, w in zip(cells, _WIDTHS)).rstrip()

  rule, double = '_' * sum(_WIDTHS), '=' * sum(_WIDTHS)
  out = [f'Model: "{name}"', rule,
         line('Layer (type)', 'Output Shape', 'Param #'), double]
  for i, (layer, kind, shape, count) in enumerate(rows):
    out.append(line(f'{layer} ({kind})', str((None, *shape)), str(count)))
    out.append(double if i == len(rows) - 1 else rule)
  out += [f'Total params: {total:,}', f'Trainable params: {total:,}',
          'Non-trainable params: 0', rule]
  return '\n'.join(out)
