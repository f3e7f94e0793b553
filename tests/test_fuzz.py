"""Fuzzing what reads outside input: nothing but the documented errors comes out.

The IDX reader and the image preprocessing raise `DataError`, the checkpoint
loader `FlaxMnistError`; anything else escaping is a bug.
"""

import gzip
import io
import os
import shutil
import tempfile

import jax
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from hypothesis.extra import numpy as hnp
from PIL import Image

from conftest import synthetic_split
from flax_mnist import checkpoint, configs, core, idx, preprocess, resume
from flax_mnist.errors import DataError, FlaxMnistError

pytestmark = pytest.mark.slow

# Examples per fuzzed input (FLAX_MNIST_FUZZ_EXAMPLES for a longer search).
EXAMPLES = int(os.environ.get('FLAX_MNIST_FUZZ_EXAMPLES', 150))
FUZZ = settings(max_examples=EXAMPLES, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture])
IMAGES = idx.FILES['test_images']


def _idx_header(magic: int, dims: list[int]) -> bytes:
  return magic.to_bytes(4, 'big') + b''.join(d.to_bytes(4, 'big') for d in dims)


@st.composite
def idx_contents(draw) -> bytes:
  """Mostly well-formed headers with wrong parts, and plain garbage."""
  if draw(st.booleans()):
    return draw(st.binary(max_size=64))
  magic = draw(st.sampled_from([IMAGES.magic, 0x801, 0x804, 0x80d]) |
               st.integers(0, 2**32 - 1))
  dims = draw(st.lists(st.sampled_from([0, 1, 2, 28, 2**31, 2**32 - 1]) |
                       st.integers(0, 2**32 - 1), max_size=4))
  return _idx_header(magic, dims) + draw(st.binary(max_size=2 * 28 * 28))


@FUZZ
@given(content=idx_contents(), zipped=st.booleans(), cut=st.integers(0, 64))
def test_idx_reader(content, zipped, cut):
  raw = gzip.compress(content) if zipped else content
  raw = raw[:len(raw) - cut] if zipped and cut else raw
  with tempfile.TemporaryDirectory() as folder:
    path = f'{folder}/t10k-images-idx3-ubyte' + ('.gz' if zipped else '')
    with open(path, 'wb') as f:
      f.write(raw)
    try:
      array = idx.load_file(folder, 'test_images', verify=False)
    except DataError:
      return
  assert array.dtype == np.uint8 and array.shape[1:] == (28, 28)


@pytest.fixture(scope='module')
def saved_run(tmp_path_factory):
  """A keras_cnn checkpoint written by the library."""
  workdir = tmp_path_factory.mktemp('run')
  config = configs.get_preset('keras')
  state = core.create_train_state(config, 600)
  with checkpoint.Checkpointer(str(workdir)) as ckpt:
    ckpt.save(1, state, {'config': config.to_dict(), 'num_train': 600,
                         'data_position': [0, 1]})
  files = sorted(str(p.relative_to(workdir)) for p in workdir.rglob('*') if p.is_file())
  return workdir, state, files


@settings(FUZZ, max_examples=max(10, EXAMPLES // 4))
@given(data=st.data())
def test_checkpoint_loader(saved_run, data):
  """One file of a checkpoint damaged: a clear error, or the very same state."""
  workdir, state, files = saved_run
  name = data.draw(st.sampled_from(files))
  with tempfile.TemporaryDirectory() as folder:
    shutil.copytree(workdir, folder, dirs_exist_ok=True)
    path = f'{folder}/{name}'
    content = bytearray(open(path, 'rb').read())
    damage = data.draw(st.sampled_from(['flip', 'truncate', 'empty', 'garbage']))
    if damage == 'flip' and content:
      at = data.draw(st.integers(0, len(content) - 1))
      content[at] ^= data.draw(st.integers(1, 255))
    elif damage == 'truncate':
      content = content[:data.draw(st.integers(0, max(0, len(content) - 1)))]
    elif damage == 'empty':
      content = bytearray()
    else:
      content = bytearray(data.draw(st.binary(min_size=1, max_size=256)))
    with open(path, 'wb') as f:
      f.write(content)
    try:
      _, restored = resume.restore_workdir(folder)
    except FlaxMnistError:
      return
  for a, b in zip(jax.tree_util.tree_leaves(state), jax.tree_util.tree_leaves(restored)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def _png(array: np.ndarray) -> bytes:
  out = io.BytesIO()
  Image.fromarray(array).save(out, format='PNG')
  return out.getvalue()


_DIGIT = _png(255 - synthetic_split(1, 0)[0][0])


@FUZZ
@given(data=st.data())
def test_image_files(data):
  """Damaged pictures of digits, and random bytes, as files."""
  if data.draw(st.booleans()):
    content = bytearray(_DIGIT)
    for _ in range(data.draw(st.integers(1, 8))):
      content[data.draw(st.integers(0, len(content) - 1))] = data.draw(st.integers(0, 255))
    content = bytes(content[:data.draw(st.integers(0, len(content)))])
  else:
    content = data.draw(st.binary(max_size=512))
  with tempfile.NamedTemporaryFile(suffix='.png') as f:
    f.write(content)
    f.flush()
    try:
      prepared = preprocess.prepare(f.name)
    except DataError:
      return
  assert prepared.image.shape == (28, 28) and prepared.image.dtype == np.uint8


@FUZZ
@given(array=hnp.arrays(
    st.sampled_from([np.uint8, np.uint16, np.float32, np.float64, bool, np.int32]),
    hnp.array_shapes(min_dims=1, max_dims=4, max_side=40)))
def test_image_arrays(array):
  """Arrays of any dtype and shape, NaN and infinities included."""
  try:
    prepared = preprocess.prepare(array)
  except DataError:
    return
  assert prepared.image.shape == (28, 28) and prepared.image.dtype == np.uint8
