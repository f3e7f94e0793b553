"""Runs every ```python block of README.md, on tiny data.

Each block runs in its own namespace, from a folder that holds what the README
has the reader make first (`runs/keras`, trained and exported to both formats;
`a.jpg`, `photos/`) and the values it leaves to the reader (`pil_image`,
`array`, `images`). Where a block trains for real, its step count and data
folder are swapped for tiny ones (`TINY`).
"""

import dataclasses
import importlib.util
import re

import numpy as np
import pytest
from PIL import Image

import flax_mnist
from conftest import REPO, make_idx_dir, synthetic_split
from flax_mnist import export
from snippets import blocks, draw_digit, run

README = REPO / 'README.md'
BLOCKS = blocks(README.read_text())
TRAIN_STEPS = 4
# The README's text, and what the test runs instead.
TINY = {"steps=2000, data_dir='../shared/mnist'":
        f'steps={TRAIN_STEPS}, data_dir=DATA_DIR, verify_data=False'}


@pytest.fixture(scope='module')
def readme_dir(tmp_path_factory):
  """The folder the README's examples run from."""
  work = tmp_path_factory.mktemp('readme')
  data_dir = make_idx_dir(work / 'mnist')
  draw_digit(work / 'a.jpg')
  (work / 'photos').mkdir()
  draw_digit(work / 'photos' / 'seven.png')
  config = dataclasses.replace(flax_mnist.get_preset('keras'), epochs=None,
                               steps=TRAIN_STEPS, data_dir=data_dir,
                               verify_data=False)
  workdir = str(work / 'runs' / 'keras')
  flax_mnist.train_and_evaluate(config, workdir)
  formats = ['stablehlo'] + (['onnx'] if importlib.util.find_spec('onnx') else [])
  for name in formats:
    export.export_workdir(workdir, name)
  return work


def _readers_values(work) -> dict:
  """The names the README's examples leave to the reader."""
  pil_image = Image.open(work / 'a.jpg')
  return {'DATA_DIR': str(work / 'mnist'), 'pil_image': pil_image,
          'array': np.asarray(pil_image.convert('L')),
          'images': synthetic_split(7, 2)[0].reshape(-1, 784)}


def test_the_tiny_stand_ins_are_the_readmes():
  code = '\n'.join(BLOCKS)
  for text in TINY:
    assert code.count(text) == 1, text


@pytest.mark.parametrize('index', range(len(BLOCKS)),
                         ids=[f'block {i + 1}' for i in range(len(BLOCKS))])
def test_block_runs(index, readme_dir, monkeypatch, capsys):
  code = BLOCKS[index]
  if 'import onnxruntime' in code or 'onnxruntime.' in code:
    pytest.importorskip('onnxruntime')
  for text, tiny in TINY.items():
    code = code.replace(text, tiny)
  monkeypatch.chdir(readme_dir)
  namespace = {'__name__': 'readme', **_readers_values(readme_dir)}
  run(code, namespace, f'{README.name}: python block {index + 1}')
  printed = capsys.readouterr().out
  if 'train_and_evaluate(' in code:
    assert int(namespace['state'].step) == TRAIN_STEPS
    assert float(printed) == namespace['results']['test_accuracy']
  if 'Predictor(' in code:
    assert namespace['probabilities'].shape == (3, 10)
    assert [p.error for p in namespace['predictions']] == [None, None]
    assert namespace['inputs'].shape == (7, 10)
  if 'model.call(' in code or 'session.run(' in code:
    assert re.search(r'^\[(\d )*\d\]$', printed, re.M), printed
