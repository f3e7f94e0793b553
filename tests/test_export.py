"""Round trips of the exported models: StableHLO in a fresh process that
imports only jax and numpy, ONNX in onnxruntime, against the JAX model on all
10,000 test images."""

import dataclasses
import json
import subprocess
import sys

import numpy as np
import pytest

from flax_mnist import cli, configs, export, idx, input_pipeline, predict, train

# Each model trained briefly: the round trips need a model, not a good one.
RUNS = {'softmax_regression': ('beginners', 300), 'keras_cnn': ('keras', 300),
        'deep_cnn': ('experts', 200), 'fast_cnn': ('fast', 300)}

# Loads the file and classifies the images with jax and numpy alone, at two
# batch sizes; fails if anything else got imported.
_CLIENT = '''
import sys
import jax
import numpy as np
model, images, out = sys.argv[1:]
with open(model, 'rb') as f:
  exported = jax.export.deserialize(bytearray(f.read()))
images = np.load(images)
probabilities = np.asarray(exported.call(images))
assert np.allclose(exported.call(images[:3]), probabilities[:3], rtol=0, atol=1e-6)
np.save(out, probabilities)
others = sorted({name.split('.')[0] for name in sys.modules} &
                {'flax', 'flax_mnist', 'optax', 'orbax', 'tensorflow', 'torch'})
assert not others, others
'''


@pytest.fixture(scope='module')
def test_images(mnist_dir) -> np.ndarray:
  return idx.load_split(mnist_dir, 'test')[0]


@pytest.fixture(scope='module', params=[
    # The CNNs' round trips (Conv and MaxPool) are in the full suite; the
    # fast tier's README test exports a CNN too.
    name if name == 'softmax_regression' else pytest.param(name, marks=pytest.mark.slow)
    for name in RUNS])
def run(request, tmp_path_factory, mnist_dir, test_images):
  """(workdir, the JAX model's probabilities of all test images)."""
  preset, steps = RUNS[request.param]
  config = dataclasses.replace(configs.get_preset(preset), epochs=None,
                               steps=steps, log_every=steps, data_dir=mnist_dir)
  data = input_pipeline.from_idx_dir(mnist_dir)
  # The run's own final evaluation needs no more than a tenth of the test set.
  data = dataclasses.replace(data, test_images=data.test_images[:1000],
                             test_labels=data.test_labels[:1000])
  workdir = str(tmp_path_factory.mktemp(request.param))
  train.train_and_evaluate(config, workdir, data)
  probabilities = predict.Predictor(workdir).probabilities_of_inputs(test_images)
  return workdir, probabilities


def test_onnx_in_onnxruntime(run, test_images, tmp_path):
  onnxruntime = pytest.importorskip('onnxruntime')
  workdir, expected = run
  path = export.export_workdir(workdir, 'onnx', str(tmp_path / 'model.onnx'))
  session = onnxruntime.InferenceSession(path, providers=['CPUExecutionProvider'])
  [given] = session.get_inputs()
  assert (given.name, given.type, given.shape) == ('images', 'tensor(uint8)',
                                                   ['N', 28, 28])
  metadata = session.get_modelmeta().custom_metadata_map
  assert 'uint8, shape (N, 28, 28)' in metadata['input']
  assert json.loads(metadata['class_names']) == list('0123456789')
  probabilities, = session.run(['probabilities'], {'images': test_images})
  assert probabilities.shape == (10_000, 10) and probabilities.dtype == np.float32
  print(f'onnxruntime: largest difference {np.abs(probabilities - expected).max():.2g}')
  assert np.array_equal(probabilities.argmax(1), expected.argmax(1))
  np.testing.assert_allclose(probabilities, expected, rtol=0, atol=1e-5)


def test_stablehlo_in_a_process_with_only_jax_and_numpy(run, test_images, tmp_path):
  workdir, expected = run
  path = export.export_workdir(workdir, 'stablehlo', str(tmp_path / 'model.shlo'))
  with open(path + '.json') as f:
    assert json.load(f)['output'].startswith('probabilities: float32, shape (N, 10)')
  np.save(tmp_path / 'images.npy', test_images)
  subprocess.run([sys.executable, '-c', _CLIENT, path, str(tmp_path / 'images.npy'),
                  str(tmp_path / 'out.npy')], check=True, cwd=tmp_path, timeout=300)
  probabilities = np.load(tmp_path / 'out.npy')
  print(f'StableHLO: largest difference {np.abs(probabilities - expected).max():.2g}')
  assert np.array_equal(probabilities.argmax(1), expected.argmax(1))
  np.testing.assert_allclose(probabilities, expected, rtol=0, atol=1e-6)


@pytest.fixture(scope='module')
def small_run(tmp_path_factory) -> str:
  """A few steps of softmax regression on small data."""
  from conftest import synthetic_split
  data = input_pipeline.from_arrays(synthetic_split(200, 0), synthetic_split(50, 1))
  config = dataclasses.replace(configs.get_preset('beginners'), steps=3,
                               batch_size=20, dtype='bfloat16')
  workdir = str(tmp_path_factory.mktemp('small'))
  train.train_and_evaluate(config, workdir, data)
  return workdir


def test_cli_default_path(small_run, capsys):
  assert cli.main(['export', '--workdir', small_run, '--format', 'stablehlo']) == 0
  assert capsys.readouterr().out == f'wrote {small_run}/model.stablehlo\n'


@pytest.mark.parametrize('make_args,message', [
    (lambda run, tmp: ['--workdir', str(tmp), '--format', 'onnx'],
     'no checkpoints here'),
    (lambda run, tmp: ['--workdir', run, '--format', 'tflite'],
     "unknown export format 'tflite'; choose one of: stablehlo, onnx"),
    (lambda run, tmp: ['--workdir', run, '--format', 'stablehlo',
                       '--out', str(tmp / 'a_file' / 'model.shlo')],
     'a_file/model.shlo: cannot write the exported model (Not a directory)'),
    # Its bfloat16 layers are not what a float32 ONNX graph computes.
    (lambda run, tmp: ['--workdir', run, '--format', 'onnx'],
     'this run computes in bfloat16'),
])
def test_bad_input_is_one_line(small_run, tmp_path, capsys, make_args, message):
  pytest.importorskip('onnx')
  (tmp_path / 'a_file').write_text('')
  assert cli.main(['export', *make_args(small_run, tmp_path)]) == 2
  err = capsys.readouterr().err
  assert err.startswith('flax-mnist: error: ') and err.count('\n') == 1
  assert message in err
