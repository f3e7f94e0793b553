import dataclasses

import pytest

from flax_mnist import configs
from flax_mnist.errors import ConfigError


def test_presets_match_the_tutorials():
  beginners, experts, keras = (configs.get_preset(n)
                               for n in ('beginners', 'experts', 'keras'))
  assert (beginners.model, beginners.optimizer, beginners.learning_rate,
          beginners.batch_size, beginners.steps) == (
              'softmax_regression', 'sgd', 0.5, 100, 1000)
  assert (experts.model, experts.optimizer, experts.learning_rate,
          experts.batch_size, experts.steps, experts.dropout_rate) == (
              'deep_cnn', 'adam', 1e-4, 50, 20_000, 0.5)
  assert (keras.model, keras.optimizer, keras.learning_rate, keras.batch_size,
          keras.epochs, keras.adam_eps) == ('keras_cnn', 'adam', 1e-3, 32, 5, 1e-7)
  assert keras.total_steps(60_000) == 5 * 1875


@pytest.mark.parametrize('name', list(configs.PRESETS))
def test_preset_docstrings_give_command_and_figures(name):
  doc = configs.PRESETS[name].__doc__
  assert f'flax-mnist train --preset {name}' in doc
  assert ('Tutorial:' in doc or 'Target:' in doc) and 'Measured here' in doc


def test_overrides_parse_by_field_type():
  config = configs.apply_overrides(configs.get_preset('keras'), [
      'steps=2000', 'batch_size=128', 'learning_rate=3e-4', 'epochs=none',
      'verify_data=false', 'model=deep_cnn', 'dropout_rate=0.25'])
  assert (config.steps, config.batch_size, config.learning_rate, config.epochs,
          config.verify_data, config.model, config.dropout_rate) == (
              2000, 128, 3e-4, None, False, 'deep_cnn', 0.25)


def test_steps_win_over_epochs():
  config = configs.apply_overrides(configs.get_preset('keras'), ['steps=7'])
  assert config.total_steps(60_000) == 7


@pytest.mark.parametrize('assignment,message', [
    ('stpes=5', "unknown config field 'stpes'; valid fields: model, optimizer"),
    ('steps', 'expected KEY=VALUE'),
    ('steps=ten', 'steps must be an integer'),
    ('steps=0', 'steps must be > 0'),
    ('batch_size=-3', 'batch_size must be > 0'),
    ('learning_rate=fast', 'learning_rate must be a number'),
    ('model=resnet', "unknown model 'resnet'; choose one of: softmax_regression, deep_cnn, keras_cnn"),
    ('optimizer=rmsprop', "unknown optimizer 'rmsprop'; choose one of: sgd, adam"),
    ('dropout_rate=1', r'dropout_rate must be in \[0, 1\)'),
    ('verify_data=maybe', 'verify_data must be true or false'),
    ('epochs=inf', 'epochs must be finite'),
    ('seed=-1', r'seed must be in \[0, 2\*\*32\)'),
    ('seed=4294967296', r'seed must be in \[0, 2\*\*32\)'),
])
def test_bad_overrides_are_clear_errors(assignment, message):
  with pytest.raises(ConfigError, match=message):
    configs.apply_overrides(configs.get_preset('beginners'), [assignment])


def test_python_replace_is_validated_too():
  with pytest.raises(ConfigError, match='batch_size must be int'):
    dataclasses.replace(configs.get_preset('beginners'), batch_size='128')
  with pytest.raises(ConfigError, match='set steps or epochs'):
    dataclasses.replace(configs.get_preset('beginners'), steps=None)


def test_unknown_preset_lists_choices():
  with pytest.raises(ConfigError, match='beginners, experts, keras'):
    configs.get_preset('expert')


def test_dict_round_trip_and_unknown_keys():
  config = configs.get_preset('experts')
  assert configs.Config.from_dict(config.to_dict()) == config
  with pytest.raises(ConfigError, match='unknown config field'):
    configs.Config.from_dict({**config.to_dict(), 'colour': 'red'})


def test_batch_larger_than_data():
  with pytest.raises(ConfigError, match='larger than the training set'):
    configs.get_preset('beginners').steps_per_epoch(50)


@pytest.mark.parametrize('saved, source', [
    ({'data_dir': None, 'tfds_data_dir': None}, ('package', None, None)),
    ({'data_dir': None, 'tfds_data_dir': '/t'}, ('tfds', None, '/t')),
    ({'data_dir': '/d', 'tfds_data_dir': '/t'}, ('package', '/d', None)),
])
def test_a_config_saved_before_data_source_still_loads(saved, source):
  # Such a config read tfds when data_dir was None, and data_dir won over
  # tfds_data_dir; the packaged files give tfds's arrays.
  old = {k: v for k, v in configs.get_preset('keras').to_dict().items()
         if k != 'data_source'}
  config = configs.Config.from_dict({**old, **saved})
  assert (config.data_source, config.data_dir, config.tfds_data_dir) == source
  assert dataclasses.replace(config, data_source='package', data_dir=None,
                             tfds_data_dir=None) == configs.get_preset('keras')


def test_data_source_is_validated():
  with pytest.raises(ConfigError, match="data_dir /d and data source 'tfds'"):
    configs.apply_overrides(configs.get_preset('beginners'),
                            ['data_source=tfds', 'data_dir=/d'])
