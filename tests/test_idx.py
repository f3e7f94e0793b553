import gzip
import os
import shutil

import numpy as np
import pytest

from conftest import synthetic_split, write_idx
from flax_mnist import idx, input_pipeline
from flax_mnist.errors import DataError


def test_real_mnist_verifies_and_loads(mnist_dir):
  assert idx.verify_dir(mnist_dir) == []
  images, labels = idx.load_split(mnist_dir, 'test')
  assert images.shape == (10000, 28, 28) and labels.shape == (10000,)
  assert images.dtype == np.uint8 and set(np.unique(labels)) == set(range(10))


def test_uncompressed_files_give_the_same_arrays(tiny_idx_dir, tmp_path):
  plain = tmp_path / 'plain'
  plain.mkdir()
  for name in os.listdir(tiny_idx_dir):
    if name.endswith('.gz'):
      with gzip.open(os.path.join(tiny_idx_dir, name)) as f:
        (plain / name.removesuffix('.gz')).write_bytes(f.read())
  a = input_pipeline.from_idx_dir(tiny_idx_dir, verify=False)
  b = input_pipeline.from_idx_dir(str(plain), verify=False)
  for field in ('train_images', 'train_labels', 'test_images', 'test_labels'):
    np.testing.assert_array_equal(getattr(a, field), getattr(b, field))


def _load(folder, verify=False):
  return input_pipeline.from_idx_dir(folder, verify=verify)


def test_missing_folder(tmp_path):
  with pytest.raises(DataError, match='no such folder'):
    _load(str(tmp_path / 'nowhere'))


def test_missing_file(tiny_idx_dir):
  path = os.path.join(tiny_idx_dir, 't10k-labels-idx1-ubyte.gz')
  os.remove(path)
  with pytest.raises(DataError, match=r't10k-labels-idx1-ubyte\[\.gz\]: missing file'):
    _load(tiny_idx_dir)


def test_truncated_gzip(tiny_idx_dir):
  path = os.path.join(tiny_idx_dir, 'train-images-idx3-ubyte.gz')
  data = open(path, 'rb').read()
  open(path, 'wb').write(data[:len(data) // 2])
  with pytest.raises(DataError, match='train-images-idx3-ubyte.gz: truncated gzip'):
    _load(tiny_idx_dir)


def test_not_gzip(tiny_idx_dir):
  path = os.path.join(tiny_idx_dir, 'train-labels-idx1-ubyte.gz')
  open(path, 'wb').write(b'this is not gzip at all')
  with pytest.raises(DataError, match='train-labels-idx1-ubyte.gz: not a valid gzip'):
    _load(tiny_idx_dir)


def test_wrong_magic(tiny_idx_dir):
  images, _ = synthetic_split(240, 0)
  path = os.path.join(tiny_idx_dir, 'train-images-idx3-ubyte.gz')
  write_idx(path, images, magic=0x0d03)  # float data, not unsigned bytes
  with pytest.raises(DataError, match='train-images-idx3-ubyte.gz: wrong IDX magic number 0x00000d03'):
    _load(tiny_idx_dir)


def test_labels_file_in_place_of_images(tiny_idx_dir):
  shutil.copy(os.path.join(tiny_idx_dir, 't10k-labels-idx1-ubyte.gz'),
              os.path.join(tiny_idx_dir, 't10k-images-idx3-ubyte.gz'))
  with pytest.raises(DataError, match='t10k-images-idx3-ubyte.gz: wrong IDX magic'):
    _load(tiny_idx_dir)


def test_wrong_dimensions(tiny_idx_dir):
  path = os.path.join(tiny_idx_dir, 'train-images-idx3-ubyte.gz')
  write_idx(path, np.zeros((240, 32, 32), np.uint8))
  with pytest.raises(DataError, match='wrong IDX dimensions 240x32x32, expected Nx28x28'):
    _load(tiny_idx_dir)


def test_size_disagrees_with_header(tiny_idx_dir):
  path = os.path.join(tiny_idx_dir, 't10k-images-idx3-ubyte.gz')
  with gzip.open(path) as f:
    content = f.read()
  with gzip.open(path, 'wb') as f:
    f.write(content[:-100])
  with pytest.raises(DataError, match='header announces 60x28x28'):
    _load(tiny_idx_dir)


def test_count_mismatch(tiny_idx_dir):
  _, labels = synthetic_split(59, 1)
  write_idx(os.path.join(tiny_idx_dir, 't10k-labels-idx1-ubyte.gz'), labels)
  with pytest.raises(DataError, match='60 images but .*t10k-labels-idx1-ubyte.gz has 59 labels'):
    _load(tiny_idx_dir)


def test_label_out_of_range(tiny_idx_dir):
  write_idx(os.path.join(tiny_idx_dir, 't10k-labels-idx1-ubyte.gz'),
            np.full(60, 11, np.uint8))
  with pytest.raises(DataError, match='label 11 out of range'):
    _load(tiny_idx_dir)


def test_checksum_mismatch(tiny_idx_dir):
  with pytest.raises(DataError, match='train-images-idx3-ubyte.gz: checksum mismatch'):
    _load(tiny_idx_dir, verify=True)


def test_verify_dir_reports_every_problem(tiny_idx_dir):
  os.remove(os.path.join(tiny_idx_dir, 't10k-images-idx3-ubyte.gz'))
  problems = idx.verify_dir(tiny_idx_dir)
  assert len(problems) == 4
  assert any('t10k-images-idx3-ubyte[.gz]: missing file' in p for p in problems)
  assert sum('checksum mismatch' in p for p in problems) == 3


def test_a_damaged_copy_of_the_real_data(mnist_dir, tmp_path):
  for name in os.listdir(mnist_dir):
    if name.endswith('.gz'):
      shutil.copy(os.path.join(mnist_dir, name), tmp_path / name)
  path = tmp_path / 't10k-images-idx3-ubyte.gz'
  with gzip.open(path) as f:
    content = bytearray(f.read())
  content[5000] ^= 0xff  # one flipped pixel
  with gzip.open(path, 'wb') as f:
    f.write(bytes(content))
  problems = idx.verify_dir(str(tmp_path))
  assert len(problems) == 1 and 'checksum mismatch' in problems[0]


def test_swapped_train_and_test_files_are_named_and_refused(mnist_dir, tmp_path):
  for split, other in (('train', 't10k'), ('t10k', 'train')):
    for kind in ('images-idx3', 'labels-idx1'):
      os.symlink(os.path.join(mnist_dir, f'{other}-{kind}-ubyte.gz'),
                 tmp_path / f'{split}-{kind}-ubyte.gz')
  for verify in (True, False):
    with pytest.raises(DataError, match=r'train-images-idx3-ubyte.gz: this is the '
                       r'test-images file .*swapped'):
      input_pipeline.from_idx_dir(str(tmp_path), verify=verify)
