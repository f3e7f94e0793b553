"""tfds paths, each in a subprocess whose sockets all fail: proof of no network use."""

import subprocess
import sys

import pytest

from conftest import REPO

pytest.importorskip('tensorflow_datasets')

_NO_NETWORK = '''
import socket
def _refuse(*args, **kwargs):
  raise OSError('network disabled by the test')
socket.socket.connect = _refuse
socket.create_connection = _refuse
socket.getaddrinfo = _refuse
'''


def _python(code: str, timeout: int = 600) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, '-c', _NO_NETWORK + code],
                        capture_output=True, text=True, cwd=REPO, timeout=timeout)


def test_prepare_then_tfds_load_gives_the_idx_examples(mnist_dir, tmp_path):
  code = f'''
import numpy as np
import tensorflow_datasets as tfds
from flax_mnist import input_pipeline, tfds_source
tfds_source.prepare({mnist_dir!r}, {str(tmp_path)!r})
(train, test) = tfds.as_numpy(tfds.load('mnist', data_dir={str(tmp_path)!r},
    split=['train', 'test'], batch_size=-1, as_supervised=True))
from_tfds = input_pipeline.from_arrays(train, test)
from_idx = input_pipeline.from_idx_dir({mnist_dir!r})
for field in ('train_images', 'train_labels', 'test_images', 'test_labels'):
  np.testing.assert_array_equal(getattr(from_tfds, field), getattr(from_idx, field))
assert len(from_tfds.train_labels) == 60000 and len(from_tfds.test_labels) == 10000
# The library's own tfds source reads the prepared dataset too.
again = input_pipeline.load(tfds_data_dir={str(tmp_path)!r}, source='tfds')
np.testing.assert_array_equal(again.test_images, from_idx.test_images)
print('same examples')
'''
  out = _python(code)
  assert out.returncode == 0 and 'same examples' in out.stdout, out.stderr[-3000:]


@pytest.mark.slow
def test_prepare_builds_tfds_fashion_mnist_from_debians_files(fashion_mnist_dir,
                                                             tmp_path):
  code = f'''
import numpy as np
from flax_mnist import input_pipeline, tfds_source
tfds_source.prepare({fashion_mnist_dir!r}, {str(tmp_path)!r}, dataset='fashion_mnist')
from_tfds = input_pipeline.load(tfds_data_dir={str(tmp_path)!r}, dataset='fashion_mnist',
                               source='tfds')
from_idx = input_pipeline.from_idx_dir({fashion_mnist_dir!r}, dataset='fashion_mnist')
for field in ('train_images', 'train_labels', 'test_images', 'test_labels'):
  np.testing.assert_array_equal(getattr(from_tfds, field), getattr(from_idx, field))
print('same examples')
'''
  out = _python(code)
  assert out.returncode == 0 and 'same examples' in out.stdout, out.stderr[-3000:]


def test_prepare_refuses_damaged_files(tiny_idx_dir, tmp_path):
  out = _python(f'''
from flax_mnist import tfds_source
from flax_mnist.errors import DataError
try:
  tfds_source.prepare({tiny_idx_dir!r}, {str(tmp_path)!r})
except DataError as e:
  print('error:', e)
''')
  assert 'train-images-idx3-ubyte.gz: checksum mismatch' in out.stdout, out.stderr[-2000:]


def test_no_network_error_says_how_to_work_offline(tmp_path):
  out = subprocess.run(
      [sys.executable, '-c', _NO_NETWORK + 'import sys\nfrom flax_mnist.cli import main\n'
       f'sys.exit(main(["train", "--preset", "beginners", "--workdir", {str(tmp_path / "w")!r}, '
       f'"--source", "tfds", "--tfds-data-dir", {str(tmp_path / "tfds")!r}]))'],
      capture_output=True, text=True, cwd=REPO, timeout=300)
  assert out.returncode == 2, out.stderr[-2000:]
  error = [l for l in out.stderr.splitlines() if l.startswith('flax-mnist: error:')]
  assert len(error) == 1 and 'leave out --source tfds' in error[0]
  assert '--data-dir DIR' in error[0]
  assert 'flax-mnist data prepare DIR' in error[0]
  assert 'Traceback' not in out.stderr


def test_tensorflow_says_nothing_on_stderr():
  """Not its oneDNN banner nor its CPU-instructions line, at import."""
  result = _python('from flax_mnist import tfds_source\ntfds_source._tfds()\n')
  assert result.returncode == 0, result.stderr
  assert result.stderr == ''
