import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flax_mnist import models
from flax_mnist import ops
from flax_mnist.errors import ConfigError


def _params(name):
  return models.init_params(models.create_model(name), jax.random.PRNGKey(0))


@pytest.mark.parametrize('name,count', [('softmax_regression', 7_850),
                                        ('deep_cnn', 3_274_634),
                                        ('keras_cnn', 93_322),
                                        ('fast_cnn', 80_202)])
def test_parameter_counts(name, count):
  assert models.count_params(_params(name)) == count


def test_keras_cnn_layer_by_layer():
  params = _params('keras_cnn')
  counts = [models.count_params(params[layer]) for layer in
            ('conv2d', 'conv2d_1', 'conv2d_2', 'dense', 'dense_1')]
  assert counts == [320, 18_496, 36_928, 36_928, 650]


@pytest.mark.parametrize('name', list(models.MODELS))
def test_logits_shape(name):
  model = models.create_model(name)
  images = jnp.zeros((3, 28, 28, 1))
  logits = model.apply({'params': _params(name)}, images)
  assert logits.shape == (3, 10)


def test_initialisations_follow_the_tutorials():
  beginners = _params('softmax_regression')['dense']
  assert not np.any(beginners['kernel']) and not np.any(beginners['bias'])
  experts = _params('deep_cnn')
  for layer in ('conv1', 'conv2', 'fc1', 'fc2'):
    kernel = np.asarray(experts[layer]['kernel'])
    # tf.truncated_normal(stddev=0.1) redraws beyond two standard deviations.
    assert np.abs(kernel).max() <= 0.2 + 1e-6
    np.testing.assert_array_equal(experts[layer]['bias'], np.float32(0.1))
  fc1 = np.asarray(experts['fc1']['kernel'])
  assert 0.08 < fc1.std() < 0.095  # 0.1 * std of N(0,1) truncated to [-2, 2]
  keras = _params('keras_cnn')
  for layer, fan_in, fan_out in (('conv2d', 9, 288), ('dense', 576, 64)):
    limit = np.sqrt(6 / (fan_in + fan_out))  # Glorot uniform
    assert np.abs(keras[layer]['kernel']).max() <= limit
    assert np.abs(keras[layer]['kernel']).max() > 0.9 * limit
    assert not np.any(keras[layer]['bias'])


def test_dropout_only_while_training():
  model = models.create_model('deep_cnn', dropout_rate=0.5)
  params = _params('deep_cnn')
  images = jax.random.uniform(jax.random.PRNGKey(1), (4, 28, 28, 1))
  evaluate = lambda: model.apply({'params': params}, images)
  np.testing.assert_array_equal(evaluate(), evaluate())
  trained = [model.apply({'params': params}, images, train=True,
                         rngs={'dropout': jax.random.PRNGKey(k)}) for k in (0, 1)]
  assert not np.allclose(trained[0], trained[1])
  assert not np.allclose(trained[0], evaluate())


def test_unknown_model_lists_choices():
  with pytest.raises(ConfigError, match='softmax_regression, deep_cnn, keras_cnn'):
    models.create_model('resnet')


def test_stock_softmax_regression_keeps_dense_own_product():
  x = jnp.ones((2, 784))
  ours, stock = models.SoftmaxRegression(), models.FLAX_STOCK_MODELS['softmax_regression']()
  params = ours.init(jax.random.PRNGKey(0), x)
  assert stock.dot_general is None and ours.dot_general is ops.dense_dot_general
  np.testing.assert_array_equal(stock.apply(params, x), ours.apply(params, x))
