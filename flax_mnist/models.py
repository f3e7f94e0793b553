"""The three networks of the TensorFlow MNIST tutorials, as pure Linen modules.

Every model maps `images_BHWC` (float32 in [0, 1], shape (B, 28, 28, 1)) to
logits of shape (B, 10). Layer names follow the tutorials, so parameter trees
read like the original code (`conv1`, `fc1`, ...) and Keras's summary
(`conv2d`, `dense_1`, ...).
"""

import functools
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from flax_mnist.errors import check_choice

NUM_CLASSES = 10


class MaxPool(nn.Module):
  """2x2 max-pooling as its own layer, so summaries list it like Keras does."""

  window: int = 2
  padding: str = 'VALID'

  @nn.compact
  def __call__(self, x_BHWC: jax.Array) -> jax.Array:
    size = (self.window, self.window)
    return nn.max_pool(x_BHWC, size, strides=size, padding=self.padding)


class Flatten(nn.Module):
  """Flattens all but the batch axis."""

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    return x.reshape((x.shape[0], -1))


class SoftmaxRegression(nn.Module):
  """'MNIST for ML beginners': y = softmax(xW + b), W and b start at zero."""

  @nn.compact
  def __call__(self, images_BHWC: jax.Array, *, train: bool = False) -> jax.Array:
    del train  # No dropout: the same function in training and evaluation.
    x = Flatten(name='flatten')(images_BHWC)
    return nn.Dense(NUM_CLASSES, kernel_init=nn.initializers.zeros,
                    name='dense')(x)


# The experts tutorial's weight_variable and bias_variable.
_TutorialConv = functools.partial(
    nn.Conv, kernel_init=nn.initializers.truncated_normal(stddev=0.1),
    bias_init=nn.initializers.constant(0.1), padding='SAME')
_TutorialDense = functools.partial(
    nn.Dense, kernel_init=nn.initializers.truncated_normal(stddev=0.1),
    bias_init=nn.initializers.constant(0.1))


class DeepCNN(nn.Module):
  """'Deep MNIST for experts': two 5x5 SAME conv/pool blocks, fc 1024, dropout."""

  dropout_rate: float = 0.5

  @nn.compact
  def __call__(self, images_BHWC: jax.Array, *, train: bool = False) -> jax.Array:
    x = nn.relu(_TutorialConv(32, (5, 5), name='conv1')(images_BHWC))
    x = MaxPool(padding='SAME', name='pool1')(x)
    x = nn.relu(_TutorialConv(64, (5, 5), name='conv2')(x))
    x = MaxPool(padding='SAME', name='pool2')(x)
    x = Flatten(name='flatten')(x)
    x = nn.relu(_TutorialDense(1024, name='fc1')(x))
    x = nn.Dropout(self.dropout_rate, deterministic=not train,
                   name='dropout')(x)
    return _TutorialDense(NUM_CLASSES, name='fc2')(x)


# Keras's defaults: Glorot-uniform kernels, zero biases, VALID padding.
_KerasConv = functools.partial(
    nn.Conv, kernel_init=nn.initializers.glorot_uniform(), padding='VALID')
_KerasDense = functools.partial(
    nn.Dense, kernel_init=nn.initializers.glorot_uniform())


class KerasCNN(nn.Module):
  """The TF2 Keras tutorial's Sequential CNN (93,322 parameters)."""

  @nn.compact
  def __call__(self, images_BHWC: jax.Array, *, train: bool = False) -> jax.Array:
    del train
    x = nn.relu(_KerasConv(32, (3, 3), name='conv2d')(images_BHWC))
    x = MaxPool(name='max_pooling2d')(x)
    x = nn.relu(_KerasConv(64, (3, 3), name='conv2d_1')(x))
    x = MaxPool(name='max_pooling2d_1')(x)
    x = nn.relu(_KerasConv(64, (3, 3), name='conv2d_2')(x))
    x = Flatten(name='flatten')(x)
    x = nn.relu(_KerasDense(64, name='dense')(x))
    return _KerasDense(NUM_CLASSES, name='dense_1')(x)


MODELS: dict[str, Callable[..., nn.Module]] = {
    'softmax_regression': SoftmaxRegression,
    'deep_cnn': DeepCNN,
    'keras_cnn': KerasCNN,
}


def create_model(name: str, *, dropout_rate: float = 0.0) -> nn.Module:
  """The model called `name`; `dropout_rate` applies to models with dropout."""
  check_choice('model', name, MODELS)
  if name == 'deep_cnn':
    return DeepCNN(dropout_rate=dropout_rate)
  return MODELS[name]()


def init_params(model: nn.Module, key: jax.Array) -> dict:
  """Fresh parameters for a (1, 28, 28, 1) input."""
  return model.init(key, jnp.zeros((1, 28, 28, 1), jnp.float32))['params']


def count_params(params) -> int:
  """The number of scalars in a parameter tree."""
  return sum(x.size for x in jax.tree_util.tree_leaves(params))
