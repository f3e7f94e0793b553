"""Data parallelism: 1 vs 8 devices, 1 vs 2 processes, checkpoints across counts.

Several devices need XLA_FLAGS before JAX starts, and several processes need
processes: these tests run Python in subprocesses, on tiny data.
"""

import json
import os
import signal
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from conftest import REPO
from flax_mnist import evaluation, parallel, resume
from flax_mnist.errors import ConfigError

pytestmark = pytest.mark.slow

# Runs in a subprocess with 8 CPU devices; prints one JSON object.
_EIGHT_DEVICES = r'''
import dataclasses, json, sys, tempfile
sys.path.insert(0, 'tests')
import jax, numpy as np
from conftest import synthetic_split
from flax_mnist import configs, input_pipeline, parallel, train
from flax_mnist.errors import ConfigError

data = input_pipeline.from_arrays(synthetic_split(600, 0), synthetic_split(130, 1))
out = {'devices': jax.device_count()}

def run(config, workdir=None):
  state, results = train.train_and_evaluate(config, workdir or tempfile.mkdtemp(), data)
  return jax.device_get(state.params), results

def max_diff(a, b):
  return max(float(np.max(np.abs(x - y)))
             for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)))

# Softmax regression, SGD 0.5, batch 96 (12 a device): a few hundred steps,
# 100 per dispatch.
beginners = dataclasses.replace(configs.get_preset('beginners'), steps=300, batch_size=96,
                                eval_batch_size=50)
# keras_cnn, step by step on CPU. Adam amplifies the devices' other order of
# summation: measured 8e-7 apart up to step 10, then 1.7e-5 at 18 and 8.5e-4
# at 48 (as a one-ulp change to one weight does), so compare at step 12.
keras = dataclasses.replace(configs.get_preset('keras'), epochs=None, steps=12,
                            log_every=1000, eval_batch_size=50)
for name, config in (('beginners', beginners), ('keras', keras)):
  (one, one_results), (eight, eight_results) = (
      run(dataclasses.replace(config, num_devices=n)) for n in (1, 8))
  out[name] = {'max_diff': max_diff(one, eight),
               'accuracy': [one_results['test_accuracy'], eight_results['test_accuracy']],
               'loss': [one_results['test_loss'], eight_results['test_loss']]}

# 48 one-step dispatches: more in flight than XLA:CPU's per-device limit of 32
# unless the loop paces itself (it deadlocked without).
_, paced = run(dataclasses.replace(keras, steps=48, num_devices=8))
out['paced_steps'] = paced['step']

# A run stopped at step 150 resumes on the other device count.
whole, _ = run(dataclasses.replace(beginners, num_devices=1))
for first, second in ((8, 1), (1, 8)):
  workdir = tempfile.mkdtemp()
  run(dataclasses.replace(beginners, steps=150, num_devices=first), workdir)
  resumed, _ = run(dataclasses.replace(beginners, num_devices=second), workdir)
  out[f'resume_{first}_on_{second}'] = max_diff(whole, resumed)

try:
  train.train_and_evaluate(dataclasses.replace(beginners, num_devices=8,
                                               batch_size=60), tempfile.mkdtemp(), data)
except ConfigError as e:
  out['batch_error'] = str(e)
print(json.dumps(out))
'''


def _python(code: str, devices: int = 1, **popen) -> subprocess.Popen:
  env = {**os.environ, 'PYTHONPATH': str(REPO), 'FLAX_MNIST_COMPILATION_CACHE': '',
         'JAX_PLATFORMS': 'cpu',
         'XLA_FLAGS': f'--xla_force_host_platform_device_count={devices}'}
  return subprocess.Popen([sys.executable, *code], cwd=REPO, env=env, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, **popen)


@pytest.fixture(scope='module')
def eight_devices() -> dict:
  process = _python(['-c', _EIGHT_DEVICES], devices=8)
  out, err = process.communicate(timeout=300)
  assert process.returncode == 0, err[-3000:]
  return json.loads(out.splitlines()[-1])


def test_8_devices_end_with_the_parameters_of_1(eight_devices):
  assert eight_devices['devices'] == 8
  # Measured: 1.8e-7 (300 steps) and 8e-7 (12 steps).
  for name, tolerance in (('beginners', 1e-6), ('keras', 1e-5)):
    result = eight_devices[name]
    assert result['max_diff'] < tolerance, (name, result)
    assert result['accuracy'][0] == result['accuracy'][1], (name, result)
    assert result['loss'][0] == pytest.approx(result['loss'][1], rel=tolerance)


def test_many_dispatches_over_8_devices_do_not_deadlock(eight_devices):
  assert eight_devices['paced_steps'] == 48


def test_checkpoints_restore_on_another_device_count(eight_devices):
  for first, second in ((8, 1), (1, 8)):
    assert eight_devices[f'resume_{first}_on_{second}'] < 1e-6


def test_a_batch_that_does_not_split_over_the_devices_is_an_error(eight_devices):
  assert eight_devices['batch_error'] == (
      'batch_size 60 does not split over 8 devices: use a multiple of 8, or '
      'set num_devices')


def test_more_devices_than_there_are_is_an_error():
  count = jax.device_count()
  with pytest.raises(ConfigError, match=rf'num_devices {count + 1}: only {count} '):
    parallel.DataParallel.create(count + 1, 32)
  assert parallel.DataParallel.create(1, 7).mesh is None


def test_bad_process_settings_are_config_errors(monkeypatch):
  monkeypatch.setenv(parallel.ENV_NUM_PROCESSES, 'two')
  with pytest.raises(ConfigError, match='FLAX_MNIST_NUM_PROCESSES must be an integer'):
    parallel.initialize('127.0.0.1:1234', process_id=0)


def test_in_flight_waits_for_the_oldest_dispatch(monkeypatch):
  waited = []
  monkeypatch.setattr(jax, 'block_until_ready', waited.append)
  in_flight = parallel.InFlight(limit=2)
  for i in range(4):
    in_flight.add(i)
  assert waited == [0, 1]


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _train_command(workdir, data_dir, *extra) -> list[str]:
  return ['-m', 'flax_mnist', 'train', '--preset', 'keras', '--workdir', str(workdir),
          '--data-dir', data_dir, '--no-verify', '--set', 'batch_size=16',
          '--set', 'log_every=5', '--set', 'eval_batch_size=50', *extra]


def _processes(workdir, data_dir, *extra) -> list[subprocess.Popen]:
  """Process 1, then process 0, of a two-process run on 127.0.0.1."""
  address = f'127.0.0.1:{_free_port()}'
  return [_python(_train_command(workdir, data_dir, '--coordinator-address', address,
                                 '--num-processes', '2', '--process-id', str(i),
                                 '--heartbeat-timeout', '10', *extra))
          for i in (1, 0)]


def test_two_processes_train_and_resume_as_one_process_of_two_devices(tiny_idx_dir,
                                                                    tmp_path):
  steps = ['--set', 'steps=30', '--set', 'checkpoint_every=15']
  devices = _python(_train_command(tmp_path / 'devices', tiny_idx_dir, *steps), devices=2)
  # Stopped at step 15, then resumed: orbax restores in both processes.
  outputs = []
  for extra in (['--set', 'steps=15'], []):
    processes = _processes(tmp_path / 'processes', tiny_idx_dir, *steps, *extra)
    outputs.append([p.communicate(timeout=300) for p in processes])
    assert [p.returncode for p in processes] == [0, 0], outputs[-1]
  devices.communicate(timeout=300)
  assert devices.returncode == 0
  second, first = outputs[-1]
  assert 'resuming from the checkpoint at step 15' in first[0]
  assert 'each batch split over 2 cpu devices (2 processes)' in first[0]
  assert 'step 30, test accuracy' in first[0]
  assert 'accuracy' not in second[0] + second[1]  # process 1 logs nothing
  assert sorted(os.listdir(tmp_path / 'processes' / 'checkpoints')) == ['15', '30']
  # Restored here on one device, whatever count saved them.
  states = [resume.restore_workdir(str(tmp_path / name))[1]
            for name in ('processes', 'devices')]
  # The same program split the same way over two devices: the same result
  # (measured: the same bits; other core counts may round differently).
  close = lambda a, b: np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)
  jax.tree_util.tree_map(close, *(jax.device_get((s.params, s.opt_state))
                                  for s in states))
  metrics = [json.loads(line) for line in open(tmp_path / 'processes' / 'metrics.jsonl')]
  assert [m['step'] for m in metrics if 'train_loss' in m] == list(range(0, 30, 5))
  assert metrics[-1]['test_accuracy'] == evaluation.evaluate_workdir(
      str(tmp_path / 'devices'))['test_accuracy']


def test_a_dead_process_fails_the_others_at_once(tiny_idx_dir, tmp_path):
  survivor, victim = _processes(tmp_path, tiny_idx_dir, '--set', 'steps=100000')
  # Process 0 hosts the coordination service: the harder one to lose.
  while 'step 10,' not in (line := victim.stdout.readline()):
    assert line, victim.communicate()[1][-3000:]
  victim.send_signal(signal.SIGKILL)
  _, err = survivor.communicate(timeout=60)
  assert survivor.returncode == 2, err[-3000:]
  assert 'flax-mnist: error: process 1 of 2 stopped: ' in err
  assert 'has another process of the run died?' in err
  victim.communicate()


def test_sigterm_to_one_process_stops_all_at_one_saved_step(tiny_idx_dir, tmp_path):
  other, first = _processes(tmp_path, tiny_idx_dir, '--set', 'steps=100000',
                            '--set', 'checkpoint_every=100000')
  while 'step 10,' not in (line := first.stdout.readline()):
    assert line, first.communicate()[1][-3000:]
  other.send_signal(signal.SIGTERM)
  outputs = [p.communicate(timeout=60) for p in (other, first)]
  assert [p.returncode for p in (other, first)] == [143, 143], outputs
  message = outputs[1][1].strip().splitlines()[-1]
  assert 'stopped by SIGTERM at step' in message, outputs
  step = int(message.split(' at step ')[1].split(';')[0])
  assert os.listdir(tmp_path / 'checkpoints') == [str(step)]
  assert int(resume.restore_workdir(str(tmp_path))[1].step) == step
