"""Fashion-MNIST beside MNIST: its checksums, the config field, training on it,
and class names wherever a run's predictions are shown."""

import dataclasses
import hashlib
import json
import os

import numpy as np
import pytest
from PIL import Image

from conftest import synthetic_split
from flax_mnist import (cli, configs, datasets, idx, input_pipeline, mistakes,
                        predict, preprocess, train)
from flax_mnist.errors import ConfigError, DataError

# The gzip headers of Zalando's files: Debian's copies dropped the file name
# and changed the mtime, and kept everything after the header.
_ZALANDO_MTIMES = {'train-images-idx3-ubyte.gz': 1504176606,
                   'train-labels-idx1-ubyte.gz': 1504176606,
                   't10k-images-idx3-ubyte.gz': 1504176627,
                   't10k-labels-idx1-ubyte.gz': 1504176627}


def test_debians_files_are_the_ones_tfds_registers(fashion_mnist_dir):
  tfds = pytest.importorskip('tensorflow_datasets')
  registered = os.path.join(os.path.dirname(tfds.__file__), 'url_checksums',
                            'fashion_mnist.txt')
  with open(registered) as f:
    checksums = {line.split('\t')[3].strip(): line.split('\t')[1:3]
                 for line in f if line.strip()}
  for name, mtime in _ZALANDO_MTIMES.items():
    with open(os.path.join(fashion_mnist_dir, name), 'rb') as f:
      debian = f.read()
    header = (b'\x1f\x8b\x08\x08' + mtime.to_bytes(4, 'little') + b'\x00\x03' +
              name.removesuffix('.gz').encode() + b'\x00')
    original = header + debian[10:]
    assert [str(len(original)), hashlib.sha256(original).hexdigest()] == checksums[name]


def test_verified_by_their_own_checksums(fashion_mnist_dir, mnist_dir, capsys):
  fashion = datasets.get('fashion_mnist')
  assert idx.verify_dir(fashion_mnist_dir, fashion.files) == []
  assert cli.main(['data', 'verify', fashion_mnist_dir, '--dataset',
                   'fashion_mnist']) == 0
  assert 'all four Fashion-MNIST files' in capsys.readouterr().out
  # Each dataset's files fail the other's checksums, and say what they are.
  assert len(idx.verify_dir(fashion_mnist_dir)) == 4
  with pytest.raises(DataError, match='holds Fashion-MNIST, not MNIST: set '
                                      'dataset=fashion_mnist'):
    input_pipeline.load(fashion_mnist_dir)
  with pytest.raises(DataError, match='holds MNIST, not Fashion-MNIST'):
    input_pipeline.load(mnist_dir, dataset='fashion_mnist')


def test_the_config_field():
  assert configs.Config().dataset == 'mnist'
  config = configs.apply_overrides(configs.get_preset('keras'),
                                   ['dataset=fashion_mnist'])
  assert configs.Config.from_dict(config.to_dict()).dataset == 'fashion_mnist'
  # Configs saved before the field existed are MNIST's.
  old = {k: v for k, v in config.to_dict().items() if k != 'dataset'}
  assert configs.Config.from_dict(old).dataset == 'mnist'
  with pytest.raises(ConfigError, match="unknown dataset 'emnist'; choose one of: "
                                        'mnist, fashion_mnist'):
    dataclasses.replace(config, dataset='emnist')


def test_a_run_cannot_resume_on_another_dataset(tmp_path):
  data = input_pipeline.from_arrays(synthetic_split(100, 0), synthetic_split(20, 1))
  config = dataclasses.replace(configs.get_preset('beginners'), steps=2, batch_size=10)
  train.train_and_evaluate(config, str(tmp_path), data)
  with open(tmp_path / 'config.json') as f:
    assert json.load(f)['dataset'] == 'mnist'
  with pytest.raises(ConfigError, match="dataset 'mnist' -> 'fashion_mnist'"):
    train.train_and_evaluate(dataclasses.replace(config, steps=4,
                                                 dataset='fashion_mnist'),
                             str(tmp_path), data)


@pytest.fixture(scope='module')
def fashion_run(tmp_path_factory, fashion_mnist_dir) -> str:
  """The beginners preset on Fashion-MNIST, from Debian's files."""
  workdir = str(tmp_path_factory.mktemp('fashion'))
  assert cli.main(['train', '--preset', 'beginners', '--workdir', workdir,
                   '--data-dir', fashion_mnist_dir, '--set', 'dataset=fashion_mnist',
                   '--quiet']) == 0
  return workdir


def test_beginners_on_fashion_mnist(fashion_run, capsys):
  assert cli.main(['eval', '--workdir', fashion_run, '--json']) == 0
  results = json.loads(capsys.readouterr().out)
  # 0.7701 on 2 CPU cores (README): the tutorial's learning rate, 0.5, is
  # high for Fashion-MNIST's brighter images.
  assert results['num_examples'] == 10_000 and results['test_accuracy'] > 0.7


def _product_photo(image_HW: np.ndarray, margin: tuple[int, int, int, int]
                   ) -> np.ndarray:
  """A Fashion-MNIST image as the photo it came from: dark on white, larger,
  in a frame with white margins (top, bottom, left, right)."""
  large = np.asarray(Image.fromarray(255 - image_HW).resize((112, 112),
                                                           Image.Resampling.BICUBIC))
  return np.pad(large, ((margin[0], margin[1]), (margin[2], margin[3])),
                constant_values=255)


def test_predict_names_the_classes_of_photos(fashion_run, fashion_mnist_dir,
                                             tmp_path, capsys):
  images, labels = idx.load_split(fashion_mnist_dir, 'test',
                                  files=datasets.get('fashion_mnist').files)
  predictor = predict.Predictor(fashion_run)
  direct = predictor.probabilities_of_inputs(images[:100]).argmax(1)
  rng = np.random.default_rng(0)
  for i in range(100):
    Image.fromarray(_product_photo(images[i], rng.integers(5, 60, 4))).save(
        tmp_path / f'{i:03d}.png')
  predictions = predictor.predict_files([str(tmp_path)])
  agree = np.mean([p.digit for p in predictions] == direct)
  assert agree >= 0.85, agree
  # A Fashion-MNIST image itself is used as it is.
  np.testing.assert_array_equal(preprocess.to_fashion_mnist(images[0] / 255), images[0])
  assert cli.main(['predict', '--workdir', fashion_run, '--json',
                   str(tmp_path / '000.png')]) == 0
  result = json.loads(capsys.readouterr().out)
  assert result['label'] == datasets.get('fashion_mnist').class_names[result['digit']]
  assert [t['label'] for t in result['top3']][0] == result['label']


def test_mistakes_sheet_shows_class_names():
  rng = np.random.default_rng(0)
  images = rng.integers(0, 255, (12, 28, 28, 1), np.uint8)
  labels = np.arange(12) % 10
  names = datasets.get('fashion_mnist').class_names
  sheet = mistakes.sheet(images, labels, rng.normal(size=(12, 10)), rows=2,
                         columns=3, scale=2, class_names=names)
  digits = mistakes.sheet(images, labels, rng.normal(size=(12, 10)), rows=2,
                          columns=3, scale=2)
  # Wider cells for the names, and two caption lines.
  assert sheet.width > digits.width and sheet.height == digits.height + 2 * 16


def test_report_of_a_fashion_mnist_run(fashion_run, tmp_path):
  pytest.importorskip('matplotlib')
  from flax_mnist import report
  path = report.write_report(fashion_run, str(tmp_path))
  assert all((tmp_path / name).is_file() for name in report.PICTURES)
  assert os.path.basename(path) == 'report.html'
