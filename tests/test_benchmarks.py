"""Every benchmark's smoke mode: each script still runs and writes its JSON."""

import json
import subprocess
import sys

import pytest

from conftest import MNIST_DIR, REPO

SCRIPTS = {
    'throughput.py': [],
    'compare.py': [],
    'time_to_accuracy.py': ['--presets', 'beginners', 'fast', '--data-dir', MNIST_DIR],
    'fast_search.py': ['--data-dir', MNIST_DIR],
}


@pytest.mark.parametrize('script', sorted(SCRIPTS))
def test_smoke(script, tmp_path):
  if script == 'compare.py':
    pytest.importorskip('torch')
  out = tmp_path / 'results.json'
  run = subprocess.run(
      [sys.executable, str(REPO / 'benchmarks' / script), '--smoke', '--out', str(out),
       *SCRIPTS[script]], capture_output=True, text=True, timeout=600)
  assert run.returncode == 0, run.stderr[-3000:]
  results = json.loads(out.read_text())
  assert results['rows'] and results['environment']['jax']
  assert results['environment']['device'] and results['environment']['cpu']
  numbers = [v for row in results['rows'] for v in row.values()
             if isinstance(v, float)]
  assert all(v == v and v >= 0 for v in numbers)
