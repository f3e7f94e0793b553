"""malloc.keep_freed_memory: applied on glibc, a no-op elsewhere, same results."""

import subprocess
import sys

import numpy as np
import pytest

from flax_mnist import malloc

pytestmark = pytest.mark.skipif(not malloc.is_glibc(), reason='glibc only')

# Allocates and frees a 64 MiB block in a new thread; prints how many more
# blocks malloc had mmapped while it was held (mallinfo2's hblks).
_PROBE = '''
import ctypes, sys, threading
from flax_mnist import malloc
class Info(ctypes.Structure):
  _fields_ = [(n, ctypes.c_size_t) for n in ('arena ordblks smblks hblks hblkhd '
              'usmblks fsmblks uordblks fordblks keepcost').split()]
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.mallinfo2.restype = Info
applied = malloc.keep_freed_memory() if sys.argv[1] == 'keep' else None
def allocate():
  before = libc.mallinfo2().hblks
  block = libc.malloc(64 << 20)
  print(applied, libc.mallinfo2().hblks - before)
  libc.free(ctypes.c_void_p(block))
thread = threading.Thread(target=allocate)
thread.start()
thread.join()
'''


def _probe(mode: str) -> tuple[str, int]:
  out = subprocess.run([sys.executable, '-c', _PROBE, mode], capture_output=True,
                       text=True, check=True).stdout.split()
  return out[0], int(out[1])


def test_big_blocks_come_from_the_heap_once_applied():
  assert _probe('default') == ('None', 1)
  assert _probe('keep') == ('True', 0)


_TRAIN = '''
import sys
import numpy as np
from flax_mnist import configs, malloc, train
from conftest import synthetic_split
from flax_mnist import input_pipeline
if sys.argv[1] == 'keep':
  assert malloc.keep_freed_memory()
data = input_pipeline.from_arrays(synthetic_split(600, 0), synthetic_split(130, 1))
config = configs.Config(model='keras_cnn', optimizer='adam', learning_rate=1e-3,
                        batch_size=128, steps=8, checkpoint_every=100)
state, _ = train.train_and_evaluate(config, sys.argv[2], data)
np.save(sys.argv[3], np.concatenate(
    [np.ravel(x) for x in __import__('jax').tree_util.tree_leaves(state.params)]))
'''


@pytest.mark.slow
def test_training_is_bitwise_the_same(tmp_path):
  from conftest import REPO
  params = {}
  for mode in ('default', 'keep'):
    out = tmp_path / f'{mode}.npy'
    subprocess.run([sys.executable, '-c', _TRAIN, mode, str(tmp_path / mode), str(out)],
                   check=True, cwd=REPO / 'tests', capture_output=True)
    params[mode] = np.load(out)
  np.testing.assert_array_equal(params['default'], params['keep'])


def test_cli_applies_it(monkeypatch):
  from flax_mnist import cli
  calls = []
  monkeypatch.setattr(malloc, 'keep_freed_memory', lambda: calls.append(1) or True)
  with pytest.raises(SystemExit):
    cli.main(['--help'])
  cli.main(['summary', '--model', 'softmax_regression'])
  assert calls == [1]
