"""The three networks of the TensorFlow MNIST tutorials, and the `fast`
preset's small one, as pure Linen modules.

Every model maps images to logits of shape (B, 10). The images are what
`inputs.model_input` takes (uint8 in [0, 255] or float in [0, 1]; (B, 784),
(B, 28, 28) or (B, 28, 28, 1)), so a model never guesses. Layer names follow the tutorials, so parameter trees
read like the original code (`conv1`, `fc1`, ...) and Keras's summary
(`conv2d`, `dense_1`, ...).
"""

import functools
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from flax_mnist import inputs
from flax_mnist import ops
from flax_mnist.errors import ConfigError, check_choice

NUM_CLASSES = 10


class MaxPool(nn.Module):
  """2x2 max-pooling as its own layer, so summaries list it like Keras does."""

  window: int = 2
  padding: str = 'VALID'
  pool: Callable[[jax.Array, int, str], jax.Array] = ops.max_pool

  @nn.compact
  def __call__(self, x_BHWC: jax.Array) -> jax.Array:
    return self.pool(x_BHWC, self.window, self.padding)


class Conv(nn.Module):
  """`nn.Conv` (stride 1, same parameters and names) over `ops.conv2d`.

  `dtype` is the compute type (e.g. bfloat16); parameters stay float32.
  """

  features: int
  kernel_size: tuple[int, int]
  padding: str = 'SAME'
  kernel_init: Callable = nn.initializers.lecun_normal()
  bias_init: Callable = nn.initializers.zeros
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x_BHWC: jax.Array) -> jax.Array:
    kernel = self.param('kernel', self.kernel_init,
                        (*self.kernel_size, x_BHWC.shape[-1], self.features))
    bias = self.param('bias', self.bias_init, (self.features,))
    y = ops.conv2d(x_BHWC.astype(self.dtype), kernel.astype(self.dtype),
                   self.padding)
    return y + bias.astype(self.dtype)


class Flatten(nn.Module):
  """Flattens all but the batch axis."""

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    return x.reshape((x.shape[0], -1))


class SoftmaxRegression(nn.Module):
  """'MNIST for ML beginners': y = softmax(xW + b), W and b start at zero.

  `dot_general` is the product `nn.Dense` computes xW with (None: its own).
  """

  dtype: jnp.dtype = jnp.float32
  dot_general: Callable | None = ops.dense_dot_general

  @nn.compact
  def __call__(self, images_BHWC: jax.Array, *, train: bool = False) -> jax.Array:
    del train  # No dropout: the same function in training and evaluation.
    x = Flatten(name='flatten')(inputs.model_input(images_BHWC))
    return nn.Dense(NUM_CLASSES, kernel_init=nn.initializers.zeros,
                    dtype=self.dtype, dot_general=self.dot_general,
                    name='dense')(x).astype(jnp.float32)


# The experts tutorial's weight_variable and bias_variable.
_TUTORIAL_CONV = dict(kernel_init=nn.initializers.truncated_normal(stddev=0.1),
                      bias_init=nn.initializers.constant(0.1), padding='SAME')
_TutorialDense = functools.partial(
    nn.Dense, kernel_init=nn.initializers.truncated_normal(stddev=0.1),
    bias_init=nn.initializers.constant(0.1))


class _CNN(nn.Module):
  """What the CNNs share: the compute `dtype`, and the convolution and pooling
  (the library's, or Flax's stock ones in `FLAX_STOCK_MODELS`)."""

  dtype: jnp.dtype = jnp.float32
  conv: Callable[..., nn.Module] = Conv
  pool: Callable[[jax.Array, int, str], jax.Array] = ops.max_pool


class DeepCNN(_CNN):
  """'Deep MNIST for experts': two 5x5 SAME conv/pool blocks, fc 1024, dropout."""

  dropout_rate: float = 0.5

  @nn.compact
  def __call__(self, images_BHWC: jax.Array, *, train: bool = False) -> jax.Array:
    conv = functools.partial(self.conv, **_TUTORIAL_CONV, dtype=self.dtype)
    dense = functools.partial(_TutorialDense, dtype=self.dtype)
    pool = functools.partial(MaxPool, padding='SAME', pool=self.pool)
    x = nn.relu(conv(32, (5, 5), name='conv1')(inputs.model_input(images_BHWC)))
    x = pool(name='pool1')(x)
    x = nn.relu(conv(64, (5, 5), name='conv2')(x))
    x = pool(name='pool2')(x)
    x = Flatten(name='flatten')(x)
    x = nn.relu(dense(1024, name='fc1')(x))
    x = nn.Dropout(self.dropout_rate, deterministic=not train,
                   name='dropout')(x)
    return dense(NUM_CLASSES, name='fc2')(x).astype(jnp.float32)


# Keras's defaults: Glorot-uniform kernels, zero biases, VALID padding.
_KERAS_CONV = dict(kernel_init=nn.initializers.glorot_uniform(), padding='VALID')
_KerasDense = functools.partial(
    nn.Dense, kernel_init=nn.initializers.glorot_uniform())


class KerasCNN(_CNN):
  """The TF2 Keras tutorial's Sequential CNN (93,322 parameters)."""

  @nn.compact
  def __call__(self, images_BHWC: jax.Array, *, train: bool = False) -> jax.Array:
    del train
    conv = functools.partial(self.conv, **_KERAS_CONV, dtype=self.dtype)
    dense = functools.partial(_KerasDense, dtype=self.dtype)
    pool = functools.partial(MaxPool, pool=self.pool)
    x = nn.relu(conv(32, (3, 3), name='conv2d')(inputs.model_input(images_BHWC)))
    x = pool(name='max_pooling2d')(x)
    x = nn.relu(conv(64, (3, 3), name='conv2d_1')(x))
    x = pool(name='max_pooling2d_1')(x)
    x = nn.relu(conv(64, (3, 3), name='conv2d_2')(x))
    x = Flatten(name='flatten')(x)
    x = nn.relu(dense(64, name='dense')(x))
    return dense(NUM_CLASSES, name='dense_1')(x).astype(jnp.float32)


class FastCNN(_CNN):
  """The `fast` preset's small CNN (80,202 parameters), not a tutorial's.

  Two VALID 5x5 convolutions of 16 and 32 channels, each max-pooled before
  its ReLU (the same values on a quarter of the elements), a dense layer of
  128 and the output layer. Sized for XLA:CPU: a 24-channel first
  convolution runs at 7,100 images/s against 10,100 for 16 on 2 Xeon cores
  (batch 128), and the hidden layer buys about 0.1% of test accuracy for 5%
  more time (benchmarks/README.md).
  """

  @nn.compact
  def __call__(self, images_BHWC: jax.Array, *, train: bool = False) -> jax.Array:
    del train
    conv = functools.partial(self.conv, **_KERAS_CONV, dtype=self.dtype)
    pool = functools.partial(MaxPool, pool=self.pool)
    x = conv(16, (5, 5), name='conv1')(inputs.model_input(images_BHWC))
    x = nn.relu(pool(name='pool1')(x))
    x = nn.relu(pool(name='pool2')(conv(32, (5, 5), name='conv2')(x)))
    x = Flatten(name='flatten')(x)
    x = nn.relu(nn.Dense(128, dtype=self.dtype, name='fc1')(x))
    return nn.Dense(NUM_CLASSES, dtype=self.dtype, name='fc2')(x).astype(jnp.float32)


MODELS: dict[str, Callable[..., nn.Module]] = {
    'softmax_regression': SoftmaxRegression,
    'deep_cnn': DeepCNN,
    'keras_cnn': KerasCNN,
    'fast_cnn': FastCNN,
}
DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}


def flax_max_pool(x_BHWC: jax.Array, window: int, padding: str) -> jax.Array:
  """`nn.max_pool` with `ops.max_pool`'s signature (the textbook Flax layer)."""
  size = (window, window)
  return nn.max_pool(x_BHWC, size, strides=size, padding=padding)


# The same networks built from Flax's stock `nn.Conv`, `nn.max_pool` and
# `nn.Dense` product: the reference that benchmarks/compare.py measures the
# library against.
FLAX_STOCK_MODELS: dict[str, Callable[..., nn.Module]] = {
    'softmax_regression': functools.partial(SoftmaxRegression, dot_general=None),
    'deep_cnn': functools.partial(DeepCNN, conv=nn.Conv, pool=flax_max_pool),
    'keras_cnn': functools.partial(KerasCNN, conv=nn.Conv, pool=flax_max_pool),
    'fast_cnn': functools.partial(FastCNN, conv=nn.Conv, pool=flax_max_pool),
}


# The tutorials' dropout: the experts tutorial's keep_prob 0.5; the others have none.
DEFAULT_DROPOUT = {'softmax_regression': None, 'deep_cnn': 0.5, 'keras_cnn': None,
                   'fast_cnn': None}


def create_model(name: str, *, dropout_rate: float | None = None,
                 dtype: str = 'float32') -> nn.Module:
  """The model called `name`, computing in `dtype` (parameters stay float32).

  `dropout_rate` defaults to the tutorial's (`DEFAULT_DROPOUT`); a model
  without dropout takes only 0 or None.

  >>> create_model('deep_cnn').dropout_rate
  0.5
  >>> create_model('keras_cnn', dropout_rate=0.5)
  Traceback (most recent call last):
    ...
  flax_mnist.errors.ConfigError: dropout_rate 0.5 has no effect: keras_cnn has no dropout
  """
  check_choice('model', name, MODELS)
  check_choice('dtype', dtype, DTYPES)
  check_dropout(name, dropout_rate)
  if DEFAULT_DROPOUT[name] is None:
    return MODELS[name](dtype=DTYPES[dtype])
  rate = DEFAULT_DROPOUT[name] if dropout_rate is None else dropout_rate
  return MODELS[name](dropout_rate=rate, dtype=DTYPES[dtype])


def check_dropout(name: str, dropout_rate: float | None) -> None:
  """Refuses a dropout rate that `name` would ignore."""
  if DEFAULT_DROPOUT[name] is None and dropout_rate:
    raise ConfigError(f'dropout_rate {dropout_rate} has no effect: {name} has '
                      'no dropout')


def init_params(model: nn.Module, key: jax.Array) -> dict:
  """Fresh parameters for a (1, 28, 28, 1) input.

  >>> params = init_params(create_model('softmax_regression'), jax.random.key(0))
  >>> jax.tree_util.tree_map(jnp.shape, params)
  {'dense': {'bias': (10,), 'kernel': (784, 10)}}
  """
  return model.init(key, jnp.zeros((1, 28, 28, 1), jnp.float32))['params']


def count_params(params) -> int:
  """The number of scalars in a parameter tree.

  >>> count_params(init_params(create_model('keras_cnn'), jax.random.key(0)))
  93322
  """
  return sum(x.size for x in jax.tree_util.tree_leaves(params))
