"""MNIST through tensorflow-datasets, and `data prepare` for machines with no network.

Both need the `tfds` extra (`pip install 'flax-mnist[tfds]'`). The only
module that imports TensorFlow or tfds, and only when called.
TensorFlow is hidden from every GPU first, so it never takes accelerator
memory away from JAX.

`prepare` fills tfds's download cache with a folder's IDX files (verified by
their uncompressed content) and lets tfds build its own `mnist` from them, so
that `tfds.load('mnist')` works offline for any code on the machine. tfds
trusts a cached download filed under the registered checksum, which is why a
re-compressed but identical train-images file is accepted here.
"""

import gzip
import logging
import os
import shutil
import socket
import urllib.parse
import urllib.request

import numpy as np

from flax_mnist import datasets
from flax_mnist import idx
from flax_mnist import progress
from flax_mnist.errors import DataError, first_line

logger = logging.getLogger(__name__)

_OFFLINE_HINT = ('with no internet, leave out --source tfds to train from the '
                 'MNIST shipped in flax-mnist, or use a folder of the four IDX '
                 'files with --data-dir DIR, or run `flax-mnist data prepare '
                 'DIR` once to build tfds\'s mnist from it')
_INSTALL_HINT = "pip install 'flax-mnist[tfds]'"


def _tfds():
  """tensorflow_datasets, with TensorFlow kept off the GPUs and quiet."""
  # TensorFlow's C++ INFO lines go to stderr at import, oneDNN's banner even
  # below TF_CPP_MIN_LOG_LEVEL; it only reads files here, so oneDNN's other
  # rounding changes nothing. Values the user set are kept.
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '1')
  os.environ.setdefault('TF_ENABLE_ONEDNN_OPTS', '0')
  try:
    import tensorflow as tf
    import tensorflow_datasets as tfds
  except ImportError as e:
    raise DataError(f'tensorflow-datasets and TensorFlow are needed here but '
                    f'cannot be imported ({first_line(e)}): {_INSTALL_HINT}'
                    ) from None
  try:
    tf.config.set_visible_devices([], 'GPU')
  except RuntimeError:
    pass  # TensorFlow was already initialised by the caller; its choice stands.
  return tfds


def load_splits(data_dir: str | None = None, name: str = 'mnist'
                ) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
  """((train images, labels), (test images, labels)) from tfds's `name`
  (`mnist` or `fashion_mnist`).

  Downloads and prepares it on first use, into `data_dir` (default: tfds's).
  """
  tfds = _tfds()
  builder = tfds.builder(name, data_dir=data_dir)
  if not builder.is_prepared():
    _check_reachable(builder)
    try:
      builder.download_and_prepare()
    except Exception as e:  # tfds raises many types for a failed download.
      reason = str(e).strip().splitlines()[0] if str(e).strip() else ''
      raise DataError(
          f'could not download {name} with tensorflow-datasets into '
          f'{builder.data_dir} ({type(e).__name__}: {reason[:200]}); '
          f'{_OFFLINE_HINT}') from None
  splits = tfds.as_numpy(builder.as_dataset(
      split=['train', 'test'], batch_size=-1, as_supervised=True))
  return tuple((images, labels) for images, labels in splits)


def _check_reachable(builder) -> None:
  """Fails at once, not after tfds's many retries, when the data host is unreachable."""
  url = urllib.parse.urlsplit(next(iter(builder.url_infos)))
  if urllib.request.getproxies().get(url.scheme):
    return  # Only the proxy can tell; let tfds try.
  try:
    socket.create_connection((url.hostname, url.port or 443), timeout=10).close()
  except OSError as e:
    raise DataError(f'cannot reach {url.hostname} to download {builder.name} with '
                    f'tensorflow-datasets ({e}); {_OFFLINE_HINT}') from None


def prepare(idx_dir: str, data_dir: str | None = None,
            progress_bar: bool = False, dataset: str = 'mnist') -> str:
  """Builds tfds's `dataset` in `data_dir` from the IDX files in `idx_dir`.

  Returns the prepared dataset's folder. No network is used. Each step is
  logged; with `progress_bar` the file checks and tfds's build draw bars,
  without it tfds's own bars are turned off (a process-wide tfds setting).
  """
  tfds = _tfds()
  files = datasets.get(dataset).files
  with progress.bar(progress_bar, len(files), 'checking', 'files') as bar:
    for key, expected in files.items():
      path = idx.find(idx_dir, key)
      idx.check_content(path, idx.read_bytes(path), expected)
      logger.info('%s: the official %s %s', path, expected.dataset, expected.name)
      bar.update(1)
  from etils import epath
  from tensorflow_datasets.core.download import resource
  tfds.display_progress_bar(progress_bar)
  builder = tfds.builder(datasets.get(dataset).tfds_name, data_dir=data_dir)
  if builder.is_prepared():
    return builder.data_dir
  # Where download_and_prepare looks by default, so later loads find it too.
  download_dir = os.path.join(builder.data_dir_root, 'downloads')
  for url, url_info in builder.url_infos.items():
    name = url_info.filename.removesuffix('.gz')
    key = next(k for k, f in files.items() if f.name == name)
    cached = os.path.join(download_dir, builder.name,
                          resource.get_dl_fname(url, url_info.checksum))
    os.makedirs(os.path.dirname(cached), exist_ok=True)
    _write_gzipped(idx.find(idx_dir, key), cached)
    resource.write_info_file(url=url, path=epath.Path(cached),
                             dataset_name=builder.name,
                             original_fname=url_info.filename, url_info=url_info)
  logger.info("building tensorflow-datasets' %s in %s", builder.name,
              builder.data_dir)
  try:
    builder.download_and_prepare(download_dir=download_dir)
  except Exception as e:  # tfds's own errors have no common base class.
    raise DataError(f'tensorflow-datasets could not build {builder.name} in '
                    f'{builder.data_dir} ({type(e).__name__}: {e})') from None
  return builder.data_dir


def _write_gzipped(source: str, destination: str) -> None:
  """`source` as a gzip file at `destination` (tfds extracts by the .gz name)."""
  if source.endswith('.gz'):
    shutil.copyfile(source, destination)
    return
  with open(source, 'rb') as f, gzip.open(destination, 'wb') as out:
    shutil.copyfileobj(f, out)
