"""The library used as a new user would, from `import flax_mnist` with the
TensorFlow tutorials in mind: each way it once gave a wrong answer, or an
error about something else, without a clear word."""

import dataclasses

import jax
import numpy as np
import pytest

import flax_mnist
from flax_mnist.errors import ConfigError, DataError


def _keras(**changes) -> flax_mnist.Config:
  return dataclasses.replace(flax_mnist.get_preset('keras'), epochs=None,
                             steps=20, batch_size=20, log_every=10,
                             checkpoint_every=20, eval_batch_size=50, **changes)


@pytest.fixture(scope='module')
def trained(tiny_mnist, tmp_path_factory):
  return flax_mnist.train_and_evaluate(
      _keras(), str(tmp_path_factory.mktemp('keras')), tiny_mnist)


def test_predictor_takes_the_tutorials_floats(trained, tiny_mnist):
  state, _ = trained
  predictor = flax_mnist.Predictor.from_state(state)
  pixels = tiny_mnist.test_images[:70]
  as_uint8 = predictor.probabilities_of_inputs(pixels)
  as_floats = predictor.probabilities_of_inputs(
      (pixels / 255.0).astype(np.float32).reshape(-1, 784))
  np.testing.assert_allclose(as_floats, as_uint8, atol=1e-6)
  assert np.mean(as_uint8.argmax(1) == tiny_mnist.test_labels[:70]) > 0.5
  with pytest.raises(DataError, match='floats must be in'):
    predictor.probabilities_of_inputs(pixels * 1.0)


def test_predictor_from_state_is_the_workdirs(trained, tiny_mnist, tmp_path):
  state, _ = trained
  workdir = str(tmp_path / 'run')
  flax_mnist.train_and_evaluate(_keras(), workdir, tiny_mnist)
  images = tiny_mnist.test_images[:5]
  np.testing.assert_array_equal(
      flax_mnist.Predictor(workdir).probabilities_of_inputs(images),
      flax_mnist.Predictor.from_state(state).probabilities_of_inputs(images))
  config, restored = flax_mnist.restore_workdir(workdir)
  assert config == _keras() and int(restored.step) == 20


def test_from_arrays_and_to_device_keep_float_pixels(tiny_mnist, tmp_path):
  train = (tiny_mnist.train_images[:, :, :, 0] / 255.0, tiny_mnist.train_labels)
  test = (tiny_mnist.test_images.reshape(-1, 784) / 255.0, tiny_mnist.test_labels)
  data = flax_mnist.from_arrays(train, test)
  np.testing.assert_array_equal(data.train_images, tiny_mnist.train_images)
  np.testing.assert_array_equal(data.test_images, tiny_mnist.test_images)
  split = flax_mnist.to_device(*test)
  np.testing.assert_array_equal(split.images_NHWC, tiny_mnist.test_images)


@pytest.mark.parametrize('model', list(flax_mnist.MODELS))
def test_models_take_every_shape_and_kind(model, tiny_mnist):
  module = flax_mnist.create_model(model)
  params = flax_mnist.init_params(module, jax.random.PRNGKey(0))
  pixels = tiny_mnist.test_images[:4]
  expected = module.apply({'params': params}, pixels)
  for images in (pixels.reshape(4, 784), pixels[..., 0], pixels / 255.0,
                 (pixels / 255.0).reshape(4, 784).astype(np.float32)):
    np.testing.assert_allclose(module.apply({'params': params}, images), expected,
                               atol=1e-5)
  with pytest.raises(DataError, match=r'expected shape \(N, 784\)'):
    module.apply({'params': params}, pixels.reshape(4, 392, 2))


def test_evaluate_takes_plain_arrays_of_any_length(trained, tiny_mnist):
  state, results = trained
  pixels, labels = tiny_mnist.test_images[..., 0], tiny_mnist.test_labels  # load_split's shape
  plain = flax_mnist.evaluate(state, pixels, labels, batch_size=50)  # 130: not a multiple
  assert plain == {'accuracy': results['test_accuracy'],
                   'loss': pytest.approx(results['test_loss'], rel=1e-6),
                   'num_examples': 130}
  assert flax_mnist.evaluate(state, pixels[:7] / 255.0, labels[:7])['num_examples'] == 7
  sums = flax_mnist.eval_step(state, {'image': pixels[:20], 'label': labels[:20]})
  assert int(sums['count']) == 20


def test_deep_cnn_defaults_to_the_tutorials_dropout():
  assert flax_mnist.create_model('deep_cnn').dropout_rate == 0.5
  assert flax_mnist.Config(model='deep_cnn').dropout_rate == 0.5
  assert flax_mnist.get_preset('experts').dropout_rate == 0.5
  assert flax_mnist.Config().dropout_rate == 0.0


def test_settings_without_effect_are_refused():
  with pytest.raises(ConfigError, match='dropout_rate 0.5 has no effect: keras_cnn'):
    _keras(dropout_rate=0.5)
  with pytest.raises(ConfigError, match="adam_b1 0.8 has no effect with optimizer 'sgd'"):
    flax_mnist.Config(adam_b1=0.8)
  with pytest.raises(ConfigError, match="warmup_steps 10 has no effect with lr_schedule"):
    flax_mnist.Config(warmup_steps=10)
  with pytest.raises(ConfigError, match='has no effect'):
    flax_mnist.create_model('softmax_regression', dropout_rate=0.1)
  # Every preset, and saved configs holding the defaults, still load.
  for name in flax_mnist.PRESETS:
    config = flax_mnist.get_preset(name)
    assert flax_mnist.Config.from_dict(config.to_dict()) == config
  old = flax_mnist.Config().to_dict() | {'dropout_rate': 0.0}
  assert flax_mnist.Config.from_dict(old) == flax_mnist.Config()


def test_create_train_state_takes_a_key():
  config = flax_mnist.get_preset('keras')
  a = flax_mnist.create_train_state(config, key=jax.random.PRNGKey(5))
  b = flax_mnist.create_train_state(config, key=jax.random.PRNGKey(5))
  c = flax_mnist.create_train_state(config)
  np.testing.assert_array_equal(a.params['dense']['kernel'], b.params['dense']['kernel'])
  assert not np.array_equal(a.params['dense']['kernel'], c.params['dense']['kernel'])
  np.testing.assert_array_equal(c.rng, jax.random.PRNGKey(config.seed))


def test_train_step_leaves_the_callers_state_and_varies_dropout(tiny_mnist):
  config = dataclasses.replace(_keras(model='deep_cnn'), dropout_rate=0.5)
  state = flax_mnist.create_train_state(config, 600)
  batch = {'image': tiny_mnist.train_images[:20], 'label': tiny_mnist.train_labels[:20]}
  key = jax.random.PRNGKey(3)
  one, _ = flax_mnist.train_step(state, batch, key)
  again, _ = flax_mnist.train_step(state, batch, key)  # `state` was not donated
  jax.tree_util.tree_map(np.testing.assert_array_equal, one.params, again.params)
  # The same key at the next step draws another dropout mask.
  later = state.replace(step=state.step + 1)
  other, _ = flax_mnist.train_step(later, batch, key)
  assert not np.array_equal(other.params['fc1']['kernel'], one.params['fc1']['kernel'])


@pytest.mark.parametrize('model', ['deep_cnn', 'softmax_regression'])
def test_a_hand_written_loop_ends_where_train_and_evaluate_does(model, tiny_mnist,
                                                                tmp_path):
  # 600 examples / batch 40 = 15 steps per epoch: 20 steps cross an epoch.
  config = dataclasses.replace(_keras(model=model), batch_size=40, steps_per_dispatch=1)
  if model == 'softmax_regression':
    config = dataclasses.replace(config, optimizer='sgd', learning_rate=0.5,
                                 adam_eps=1e-8)
  library, _ = flax_mnist.train_and_evaluate(config, str(tmp_path), tiny_mnist)
  state = flax_mnist.create_train_state(config, 600)
  train = flax_mnist.to_device(tiny_mnist.train_images, tiny_mnist.train_labels)
  for step in range(config.steps):
    batch = flax_mnist.train_batch(train, state.data_key, step, config.batch_size)
    state, _ = flax_mnist.train_step(state, batch)
  jax.tree_util.tree_map(np.testing.assert_array_equal, library.params, state.params)
  jax.tree_util.tree_map(np.testing.assert_array_equal, library.opt_state,
                         state.opt_state)
