"""Shared fixtures: the real MNIST (shipped in the package), Fashion-MNIST
(FLAX_MNIST_FASHION_DIR) and small data made here."""

import dataclasses
import gzip
import os
import pathlib

import numpy as np
import pytest

import digits
from flax_mnist import configs, idx, input_pipeline, preprocess, train

REPO = pathlib.Path(__file__).resolve().parent.parent
# Fashion-MNIST's four IDX files, where Debian's dataset-fashion-mnist puts them.
FASHION_MNIST_DIR = os.environ.get('FLAX_MNIST_FASHION_DIR',
                                   '/usr/share/datasets/fashion-mnist')
# Steps of the keras preset the suite's model gets (about 96% on MNIST's
# test set): full training is too long for CI.
TRAIN_STEPS = 300


@pytest.fixture(scope='session')
def mnist_dir() -> str:
  """The folder of the four real IDX files: the package's own."""
  return idx.PACKAGED_DIR


@pytest.fixture(scope='session')
def fashion_mnist_dir() -> str:
  if not os.path.isdir(FASHION_MNIST_DIR):
    pytest.skip(f'Fashion-MNIST not found at {FASHION_MNIST_DIR} (apt-get install '
                'dataset-fashion-mnist, or set FLAX_MNIST_FASHION_DIR)')
  return FASHION_MNIST_DIR


@pytest.fixture(scope='session')
def digit_input() -> np.ndarray:
  """The MNIST input made from `digits.on_paper()`, which the inputs made from
  the same digit otherwise (other formats, lighting, framing) should match."""
  return preprocess.prepare(digits.on_paper()).image


@pytest.fixture(scope='session')
def keras_workdir(tmp_path_factory, mnist_dir) -> str:
  """The keras preset trained `TRAIN_STEPS` steps, once per session, with a
  checkpoint halfway as well as at the end."""
  config = dataclasses.replace(configs.get_preset('keras'), epochs=None,
                               steps=TRAIN_STEPS, data_dir=mnist_dir,
                               log_every=TRAIN_STEPS,
                               checkpoint_every=TRAIN_STEPS // 2)
  data = input_pipeline.from_idx_dir(mnist_dir)
  # Its final evaluation needs no more than a tenth of the test set.
  data = dataclasses.replace(data, test_images=data.test_images[:1000],
                             test_labels=data.test_labels[:1000])
  path = str(tmp_path_factory.mktemp('keras'))
  train.train_and_evaluate(config, path, data)
  return path


def write_idx(path: str, array: np.ndarray, magic: int | None = None) -> None:
  """`array` (uint8) as an IDX file; gzipped when `path` ends in .gz."""
  array = np.asarray(array, np.uint8)
  magic = 0x800 + array.ndim if magic is None else magic
  header = magic.to_bytes(4, 'big') + b''.join(
      d.to_bytes(4, 'big') for d in array.shape)
  content = header + array.tobytes()
  opener = gzip.open if path.endswith('.gz') else open
  with opener(path, 'wb') as f:
    f.write(content)


def synthetic_split(num: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
  """Learnable fake digits: class k lights a 4x4 block at its own place, plus noise."""
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, 10, num).astype(np.uint8)
  images = rng.integers(0, 60, (num, 28, 28)).astype(np.uint8)
  for i, label in enumerate(labels):
    row, col = divmod(int(label), 5)
    images[i, 4 + 10 * row:8 + 10 * row, 2 + 5 * col:6 + 5 * col] = 255
  return images, labels


def make_idx_dir(folder: pathlib.Path) -> str:
  """Writes four small gzipped IDX files (not the official content) into
  `folder`; read them with verify=False."""
  folder.mkdir(parents=True, exist_ok=True)
  for split, num, seed in (('train', 240, 0), ('t10k', 60, 1)):
    images, labels = synthetic_split(num, seed)
    write_idx(str(folder / f'{split}-images-idx3-ubyte.gz'), images)
    write_idx(str(folder / f'{split}-labels-idx1-ubyte.gz'), labels)
  return str(folder)


@pytest.fixture
def tiny_idx_dir(tmp_path) -> str:
  """A folder of four small gzipped IDX files (not the official content)."""
  return make_idx_dir(tmp_path)


@pytest.fixture(scope='session')
def tiny_mnist() -> input_pipeline.Mnist:
  return input_pipeline.from_arrays(synthetic_split(600, 0), synthetic_split(130, 1))


@pytest.fixture(scope='session')
def keras_server(keras_workdir, tmp_path_factory):
  """`flax-mnist serve --workdir KERAS_WORKDIR`, on the default host."""
  import serving  # It needs httpx, from the test extra.
  with serving.serving(tmp_path_factory.mktemp('serve'), '--workdir',
                       keras_workdir) as server:
    yield server
