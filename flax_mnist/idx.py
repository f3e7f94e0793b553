"""Reading and checking the four standard MNIST IDX files, with no TensorFlow.

Files may be gzipped (`NAME.gz`) or not (`NAME`). They are verified by the
md5 and sha256 of their uncompressed content, which do not depend on how a
mirror compressed them. Every problem is a `DataError` naming the file.

The package ships the four official files (`PACKAGED_DIR`, CC BY-SA 3.0, see
its README.md): the default data source, read like any other folder.
"""

import dataclasses
import gzip
import hashlib
import os
import zlib

import numpy as np

from flax_mnist.errors import DataError


@dataclasses.dataclass(frozen=True)
class IdxFile:
  name: str
  magic: int
  shape: tuple[int, ...]
  md5: str
  sha256: str
  dataset: str = 'MNIST'


# The four official files, gzipped, inside the package.
PACKAGED_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'data')

# The official files' uncompressed content (see data/README.md).
FILES = {
    'train_images': IdxFile(
        'train-images-idx3-ubyte', 0x803, (60000, 28, 28),
        '6bbc9ace898e44ae57da46a324031adb',
        'ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db'),
    'train_labels': IdxFile(
        'train-labels-idx1-ubyte', 0x801, (60000,),
        'a25bea736e30d166cdddb491f175f624',
        '65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5'),
    'test_images': IdxFile(
        't10k-images-idx3-ubyte', 0x803, (10000, 28, 28),
        '2646ac647ad5339dbf082846283269ea',
        '0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7'),
    'test_labels': IdxFile(
        't10k-labels-idx1-ubyte', 0x801, (10000,),
        '27ae3e4e09519cfbb04c329615203637',
        'ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2'),
}

_UBYTE = 0x08


def find(data_dir: str, key: str) -> str:
  """The path of file `key` in `data_dir`, gzipped or not."""
  if not os.path.isdir(data_dir):
    raise DataError(f'{data_dir}: no such folder (expected the four MNIST '
                    f'IDX files: {", ".join(f.name + "[.gz]" for f in FILES.values())})')
  name = FILES[key].name
  for candidate in (name + '.gz', name):
    path = os.path.join(data_dir, candidate)
    if os.path.isfile(path):
      return path
  raise DataError(f'{os.path.join(data_dir, name)}[.gz]: missing file')


def read_bytes(path: str) -> bytes:
  """The uncompressed content of `path`."""
  try:
    with open(path, 'rb') as f:
      raw = f.read()
  except OSError as e:
    raise DataError(f'{path}: cannot read ({e.strerror})') from None
  if not path.endswith('.gz'):
    return raw
  try:
    return gzip.decompress(raw)
  except EOFError:
    raise DataError(f'{path}: truncated gzip file (the download was cut '
                    'short?)') from None
  except (gzip.BadGzipFile, zlib.error) as e:
    raise DataError(f'{path}: not a valid gzip file ({e})') from None


def parse(path: str, content: bytes, expected: IdxFile) -> np.ndarray:
  """The array in IDX `content`, checked against the expected magic and shape."""
  if len(content) < 4:
    raise DataError(f'{path}: too short for an IDX file ({len(content)} bytes)')
  magic = int.from_bytes(content[:4], 'big')
  if magic != expected.magic:
    raise DataError(
        f'{path}: wrong IDX magic number 0x{magic:08x}, expected '
        f'0x{expected.magic:08x} (unsigned bytes, {len(expected.shape)} '
        'dimensions)')
  ndim = magic & 0xff
  header = 4 + 4 * ndim
  if len(content) < header:
    raise DataError(f'{path}: IDX header cut short')
  dims = tuple(int.from_bytes(content[4 + 4 * i:8 + 4 * i], 'big')
               for i in range(ndim))
  if dims[1:] != expected.shape[1:]:
    raise DataError(f'{path}: wrong IDX dimensions {"x".join(map(str, dims))}, '
                    f'expected Nx{"x".join(map(str, expected.shape[1:]))}')
  size = int(np.prod(dims))
  if len(content) - header != size:
    raise DataError(f'{path}: {len(content) - header} data bytes, but its '
                    f'header announces {"x".join(map(str, dims))} = {size}')
  return np.frombuffer(content, np.uint8, size, header).reshape(dims)


def matches(content: bytes, expected: IdxFile) -> bool:
  """Whether `content` is the official file's content (md5 and sha256)."""
  return (hashlib.md5(content).hexdigest() == expected.md5 and
          hashlib.sha256(content).hexdigest() == expected.sha256)


def check_content(path: str, content: bytes, expected: IdxFile) -> None:
  """Raise unless `content` is the official file's content (md5 and sha256)."""
  if not matches(content, expected):
    raise DataError(
        f'{path}: checksum mismatch: uncompressed md5 '
        f'{hashlib.md5(content).hexdigest()}, expected {expected.md5} (the '
        f'official {expected.dataset} {expected.name}); pass '
        'verify_data=False (--no-verify) for other IDX data')


def load_file(data_dir: str, key: str, verify: bool = True,
              files: dict[str, IdxFile] = FILES) -> np.ndarray:
  """One of the four `files` (default MNIST's) as a uint8 array, optionally
  checksum-verified."""
  path = find(data_dir, key)
  content = read_bytes(path)
  array = parse(path, content, files[key])
  if verify:
    if not matches(content, files[key]):
      _check_not_another(path, content, key, files)
      check_content(path, content, files[key])
  elif any(array.shape == other.shape for name, other in files.items()
           if name != key):
    # Unverified, a file shaped as another official one is checked for being
    # it, so swapped files are refused even then.
    _check_not_another(path, content, key, files)
  return array


def _check_not_another(path: str, content: bytes, key: str,
                       files: dict[str, IdxFile]) -> None:
  """Raise if `content` is another of the official `files`: swapped files
  would train on the test set and test on the training set."""
  for name, other in files.items():
    if name != key and matches(content, other):
      raise DataError(
          f'{path}: this is the {name.replace("_", "-")} file (the official '
          f'{other.name}, by its checksums), not {files[key].name}: the files '
          'are swapped or misnamed; rename them')


def load_split(data_dir: str, split: str, verify: bool = True,
               files: dict[str, IdxFile] = FILES
               ) -> tuple[np.ndarray, np.ndarray]:
  """(images_NHW uint8, labels_N uint8) of split 'train' or 'test'.

  >>> images, labels = load_split('mnist', 'test', verify=False)  # a tiny stand-in
  >>> images.dtype, images.shape[1:], labels.dtype
  (dtype('uint8'), (28, 28), dtype('uint8'))
  """
  images = load_file(data_dir, f'{split}_images', verify, files)
  labels = load_file(data_dir, f'{split}_labels', verify, files)
  _check_pair(data_dir, split, images, labels)
  return images, labels


def _check_pair(data_dir: str, split: str, images: np.ndarray,
                labels: np.ndarray) -> None:
  """Counts agree and labels are digits (the files were found already)."""
  labels_path = find(data_dir, f'{split}_labels')
  if len(images) != len(labels):
    raise DataError(f'{find(data_dir, split + "_images")}: {len(images)} images '
                    f'but {labels_path} has {len(labels)} labels')
  if labels.size and labels.max() > 9:
    raise DataError(f'{labels_path}: label {labels.max()} out of range 0-9')


def verify_dir(data_dir: str, files: dict[str, IdxFile] = FILES) -> list[str]:
  """Every problem with the folder's four `files` (default MNIST's); empty
  when all is well."""
  if not os.path.isdir(data_dir):
    return [f'{data_dir}: no such folder']
  problems, arrays = [], {}
  for key in files:
    try:
      arrays[key] = load_file(data_dir, key, verify=True, files=files)
    except DataError as e:
      problems.append(str(e))
  for split in ('train', 'test'):
    pair = arrays.get(f'{split}_images'), arrays.get(f'{split}_labels')
    if pair[0] is not None and pair[1] is not None:
      try:
        _check_pair(data_dir, split, *pair)
      except DataError as e:
        problems.append(str(e))
  return problems
