"""The datasets a run can train on (`Config.dataset`): MNIST and Fashion-MNIST.

Both are four IDX files of 28x28 uint8 images and labels 0-9 under the same
names, told apart by the checksums of their uncompressed content. Each also
names its tensorflow-datasets builder and its ten classes.
"""

import dataclasses

from flax_mnist import idx
from flax_mnist.errors import DataError, check_choice


@dataclasses.dataclass(frozen=True)
class Dataset:
  """`name` is the config value, `title` how people write it."""

  name: str
  title: str
  tfds_name: str
  class_names: tuple[str, ...]
  files: dict[str, idx.IdxFile]


def _fashion_file(key: str, md5: str, sha256: str) -> idx.IdxFile:
  return dataclasses.replace(idx.FILES[key], md5=md5, sha256=sha256,
                             dataset='Fashion-MNIST')


# Fashion-MNIST's uncompressed content, computed from Debian's
# dataset-fashion-mnist files. Debian re-wrote the gzip headers (no file name,
# another mtime) but kept the compressed data: with the original name and
# mtime put back, each file is byte for byte the one tensorflow-datasets
# registers (url_checksums/fashion_mnist.txt), so these are Zalando's.
_FASHION_FILES = {
    'train_images': _fashion_file(
        'train_images', 'f4a8712d7a061bf5bd6d2ca38dc4d50a',
        'c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888'),
    'train_labels': _fashion_file(
        'train_labels', '9018921c3c673c538a1fc5bad174d6f9',
        'bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9'),
    'test_images': _fashion_file(
        'test_images', '8181f5470baa50b63fa0f6fddb340f0a',
        '5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b'),
    'test_labels': _fashion_file(
        'test_labels', '15d484375f8d13e6eb1aabb0c3f46965',
        '0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34'),
}

DATASETS = {
    'mnist': Dataset('mnist', 'MNIST', 'mnist', tuple('0123456789'), idx.FILES),
    # The labels' names, as Zalando and tfds give them.
    'fashion_mnist': Dataset(
        'fashion_mnist', 'Fashion-MNIST', 'fashion_mnist',
        ('T-shirt/top', 'Trouser', 'Pullover', 'Dress', 'Coat', 'Sandal',
         'Shirt', 'Sneaker', 'Bag', 'Ankle boot'), _FASHION_FILES),
}


def get(name: str) -> Dataset:
  check_choice('dataset', name, DATASETS)
  return DATASETS[name]


def identify(data_dir: str) -> str | None:
  """The dataset whose training images `data_dir` holds, if any."""
  try:
    content = idx.read_bytes(idx.find(data_dir, 'train_images'))
  except DataError:
    return None
  for dataset in DATASETS.values():
    if idx.matches(content, dataset.files['train_images']):
      return dataset.name
  return None
