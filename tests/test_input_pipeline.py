import os
import re
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import synthetic_split, write_idx
from flax_mnist import idx, input_pipeline
from flax_mnist.errors import ConfigError, DataError


def test_canonical_order_ignores_input_order():
  images, labels = synthetic_split(300, 3)
  shuffled = np.random.default_rng(0).permutation(300)
  a = input_pipeline.canonical_order(images, labels)
  b = input_pipeline.canonical_order(images[shuffled], labels[shuffled])
  np.testing.assert_array_equal(a[0], b[0])
  np.testing.assert_array_equal(a[1], b[1])
  assert a[0].shape == (300, 28, 28, 1) and a[0].dtype == np.uint8
  assert a[1].dtype == np.int32
  # Same multiset of (image, label) pairs.
  pairs = lambda im, lb: sorted(x.tobytes() + bytes([int(y)]) for x, y in zip(im, lb))
  assert pairs(a[0], a[1]) == pairs(images[..., None], labels)


def test_epoch_permutation_is_a_function_of_key_and_epoch():
  key = jax.random.PRNGKey(7)
  first = input_pipeline.epoch_permutation(key, 0, 100)
  np.testing.assert_array_equal(first, input_pipeline.epoch_permutation(key, 0, 100))
  assert not np.array_equal(first, input_pipeline.epoch_permutation(key, 1, 100))
  assert sorted(np.asarray(first).tolist()) == list(range(100))


@pytest.mark.parametrize('num_examples', [1, 5, 1600, 1700, 60_000])  # 0, 1, 2 rounds
@pytest.mark.parametrize('key', [jax.random.PRNGKey(7), jax.random.key(3)], ids=['raw', 'typed'])
def test_epoch_permutation_is_jax_random_permutation(key, num_examples):
  for epoch in (0, 5):
    np.testing.assert_array_equal(
        input_pipeline.epoch_permutation(key, epoch, num_examples),
        jax.random.permutation(jax.random.fold_in(key, epoch), num_examples))


def test_batches_cover_an_epoch_once(tiny_mnist):
  split = input_pipeline.to_device(tiny_mnist.train_images, tiny_mnist.train_labels)
  order = input_pipeline.epoch_permutation(jax.random.PRNGKey(0), 0, 600)
  seen = []
  for i in range(600 // 50):
    batch = input_pipeline.batch_at(split, order, i, 50)
    assert batch['image'].shape == (50, 28, 28, 1)
    assert batch['image'].dtype == jnp.float32
    assert 0.0 <= float(batch['image'].min()) and float(batch['image'].max()) <= 1.0
    seen.append(np.asarray(order[i * 50:(i + 1) * 50]))
    np.testing.assert_array_equal(
        batch['label'], tiny_mnist.train_labels[np.asarray(seen[-1])])
  assert sorted(np.concatenate(seen).tolist()) == list(range(600))


def test_to_device_pads_with_a_mask(tiny_mnist):
  split = input_pipeline.to_device(tiny_mnist.test_images, tiny_mnist.test_labels, 60)
  assert len(split.labels_N) == 180 and int(split.mask_N.sum()) == 130
  assert not np.any(split.mask_N[130:])


def test_the_packaged_mnist_is_the_default_source(mnist_dir):
  data = input_pipeline.load()
  assert (len(data.train_labels), len(data.test_labels)) == (60000, 10000)
  assert mnist_dir == idx.PACKAGED_DIR
  same = input_pipeline.load(mnist_dir)
  for field in ('train_images', 'train_labels', 'test_images', 'test_labels'):
    np.testing.assert_array_equal(getattr(data, field), getattr(same, field))


def test_the_packaged_mnist_is_verified_whatever_is_asked(tmp_path, monkeypatch):
  damaged = tmp_path / 'data'
  damaged.mkdir()
  for name in os.listdir(idx.PACKAGED_DIR):
    if name.endswith('.gz'):
      shutil.copy(os.path.join(idx.PACKAGED_DIR, name), damaged / name)
  _, labels = idx.load_split(str(damaged), 'test')
  labels = labels.copy()
  labels[0] = (labels[0] + 1) % 10
  write_idx(str(damaged / 't10k-labels-idx1-ubyte.gz'), labels)
  monkeypatch.setattr(idx, 'PACKAGED_DIR', str(damaged))
  with pytest.raises(DataError, match='t10k-labels-idx1-ubyte.gz: checksum mismatch'):
    input_pipeline.load(verify=False)


@pytest.mark.parametrize('options, message', [
    (dict(source='tfds', data_dir='d'), "data_dir d and data source 'tfds' are two sources"),
    (dict(tfds_data_dir='t'), "tfds_data_dir t is for data source 'tfds', not 'package'"),
    (dict(source='hub'), "unknown data source 'hub'; choose one of: package, tfds"),
])
def test_one_source_at_a_time(options, message):
  with pytest.raises(ConfigError, match=re.escape(message)):
    input_pipeline.load(**options)


def test_the_package_ships_mnist_only():
  with pytest.raises(DataError, match='the package ships MNIST only: read '
                                      'Fashion-MNIST from --data-dir DIR or --source tfds'):
    input_pipeline.load(dataset='fashion_mnist')


def test_shuffled_epochs_are_the_split_in_each_epochs_order(tiny_mnist):
  key = jax.random.PRNGKey(3)
  images, labels = tiny_mnist.train_images, tiny_mnist.train_labels
  with input_pipeline.ShuffledEpochs(images, labels, key) as epochs:
    for epoch in (0, 1, 4):  # 1 was made ahead, 4 is a jump (a resume)
      order = input_pipeline.epoch_permutation(key, epoch, len(labels))
      split = epochs.get(epoch)
      np.testing.assert_array_equal(split.images_NHWC, images[order])
      np.testing.assert_array_equal(split.labels_N, labels[order])
      assert bool(split.mask_N.all())
      batch = input_pipeline.batch_slice(split, 2, batch_size=50)
      np.testing.assert_array_equal(batch['label'], labels[order[100:150]])
