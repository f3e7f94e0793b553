"""Every benchmark's smoke mode: each script still runs and writes its JSON."""

import json
import shutil
import subprocess
import sys

import jax
import pytest

from conftest import REPO
from flax_mnist import models

pytestmark = pytest.mark.slow

SCRIPTS = {
    'throughput.py': [],
    'compare.py': [],
    'time_to_accuracy.py': ['--presets', 'beginners', 'fast', '--data-dir'],
    'fast_search.py': ['--validation', '100', '--data-dir'],
    'data_parallel.py': ['--data-dir'],
    'serve_load.py': ['--data-dir'],
    'end_to_end.py': ['--data-dir'],
    'step_profile.py': ['--models', 'softmax_regression', 'keras_cnn'],
    'step_trace.py': ['--models', 'softmax_regression', 'keras_cnn'],
    'native_softmax.py': [],
}


def _has_avx512() -> bool:
  try:
    with open('/proc/cpuinfo') as f:
      return 'avx512f' in f.read().split()
  except OSError:
    return False


@pytest.mark.parametrize('script', sorted(SCRIPTS))
def test_smoke(script, tmp_path, request):
  if script in ('compare.py', 'end_to_end.py'):
    pytest.importorskip('torch')
  if script == 'native_softmax.py' and not (_has_avx512() and shutil.which('g++')):
    pytest.skip('the native kernel needs AVX-512 and g++')
  args = SCRIPTS[script]
  if args[-1:] == ['--data-dir']:
    args = [*args, request.getfixturevalue('mnist_dir')]
  out = tmp_path / 'results.json'
  run = subprocess.run(
      [sys.executable, str(REPO / 'benchmarks' / script), '--smoke', '--out', str(out),
       *args], capture_output=True, text=True, timeout=600)
  assert run.returncode == 0, run.stderr[-3000:]
  results = json.loads(out.read_text())
  assert results['rows'] and results['environment']['jax']
  assert results['environment']['device'] and results['environment']['cpu']
  numbers = [v for row in results['rows'] for v in row.values()
             if isinstance(v, float)]
  assert all(v == v and v >= 0 for v in numbers)
  if script == 'native_softmax.py':
    # Both thread counts train as the library does, to rounding.
    library, *native = results['one_epoch']
    for row in native:
      assert row['steps'] == library['steps']
      assert row['kernel_max_difference'] < 1e-5
      assert abs(row['test_accuracy'] - library['test_accuracy']) <= 0.002


def test_an_unknown_model_is_a_clear_error():
  run = subprocess.run(
      [sys.executable, str(REPO / 'benchmarks' / 'step_profile.py'), '--smoke',
       '--models', 'fast'], capture_output=True, text=True, timeout=300)
  assert run.returncode == 2
  assert "invalid choice: 'fast'" in run.stderr and 'fast_cnn' in run.stderr


@pytest.mark.parametrize('model', sorted(models.MODELS))
def test_the_pytorch_reference_is_the_library_network(model, monkeypatch):
  pytest.importorskip('torch')
  monkeypatch.syspath_prepend(str(REPO / 'benchmarks'))
  import compare
  network = compare.pytorch_network(model)
  ours = models.init_params(models.create_model(model), jax.random.key(0))
  assert sum(p.numel() for p in network.parameters()) == models.count_params(ours)
