"""One device against N, and one process against two: the parameters and accuracy.

    python benchmarks/data_parallel.py [--devices 2 4 8] [--steps 100 300]

Trains each preset for `--steps` steps from the same seed on one device, on
each of `--devices` devices, and (on CPU) as two processes of half the most
devices each on 127.0.0.1, the batch rounded up to split over them all.
Reports each run's largest parameter difference from the one-device run and
its test accuracy on all 10,000 test images. The control, one device with
1e-7 added to one weight at the start, shows how far rounding-sized noise
alone carries a run: devices add in another order, so they differ by
rounding. On CPU the devices are virtual (`jax_num_cpu_devices`); elsewhere
they must exist.
"""

import dataclasses
import itertools
import math
import os
import socket
import subprocess
import sys
import tempfile
import unittest.mock

import jax
import numpy as np

import common


def run_processes(preset: str, config, devices: int, data_dir: str,
                  workdir: str) -> None:
  """`flax-mnist train` as two processes of `devices // 2` CPU devices each."""
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    address = f'127.0.0.1:{s.getsockname()[1]}'
  overrides = [f'{key}={getattr(config, key)}' for key in
               ('steps', 'batch_size', 'log_every', 'checkpoint_every')]
  env = {**os.environ, 'PYTHONPATH': str(common.REPO),
         'XLA_FLAGS': f'--xla_force_host_platform_device_count={devices // 2}'}
  processes = [subprocess.Popen(
      [sys.executable, '-m', 'flax_mnist', 'train', '--preset', preset,
       '--workdir', workdir, '--data-dir', data_dir,
       *(arg for o in overrides for arg in ('--set', o)),
       '--coordinator-address', address, '--num-processes', '2',
       '--process-id', str(i)], env=env, cwd=common.REPO,
      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
      for i in (0, 1)]
  for p in processes:
    _, err = p.communicate()
    if p.returncode:
      raise SystemExit(f'the two-process run failed:\n{err[-3000:]}')


def nudged(create_train_state):
  """`create_train_state` with 1e-7, float32's rounding at 1, added to one weight.

  The control: how far rounding-sized noise alone carries a run.
  """

  def create(*args, **kwargs):
    state = create_train_state(*args, **kwargs)
    leaves, tree = jax.tree_util.tree_flatten(state.params)
    leaves[-1] = leaves[-1].at[(0,) * leaves[-1].ndim].add(1e-7)
    return state.replace(params=jax.tree_util.tree_unflatten(tree, leaves))

  return create


def max_diff(a, b) -> float:
  return max(float(np.max(np.abs(x - y)))
             for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)))


def main():
  parser = common.arguments(__doc__)
  parser.add_argument('--devices', type=int, nargs='+', default=[2, 4, 8])
  parser.add_argument('--steps', type=int, nargs='+', default=[100, 300])
  parser.add_argument('--presets', nargs='+', default=['beginners', 'keras'])
  parser.add_argument('--data-dir', default=common.DEFAULT_DATA_DIR)
  args = parser.parse_args()
  if args.smoke:
    args.devices, args.steps, args.presets = [2], [20], ['keras']
  most = max(args.devices)
  # Before anything starts JAX's CPU backend; accelerators ignore it.
  jax.config.update('jax_num_cpu_devices', most)
  from flax_mnist import configs, core, evaluation, resume, train
  data = common.mnist(args.data_dir, args.smoke)
  cpu = jax.default_backend() == 'cpu'
  rows, multiple = [], math.lcm(*args.devices)
  for preset, steps in itertools.product(args.presets, args.steps):
    base = configs.get_preset(preset)
    config = dataclasses.replace(
        base, epochs=None, steps=steps, log_every=steps, checkpoint_every=steps,
        batch_size=-(-base.batch_size // multiple) * multiple)
    results = {}
    runs = [('1 device', 1, core.create_train_state),
            ('1 device, 1 weight +1e-7', 1, nudged(core.create_train_state)),
            *((f'{n} devices', n, core.create_train_state) for n in args.devices)]
    for name, devices, create in runs:
      with tempfile.TemporaryDirectory() as workdir, \
           unittest.mock.patch.object(core, 'create_train_state', create):
        state, metrics = train.train_and_evaluate(
            dataclasses.replace(config, num_devices=devices), workdir, data)
        results[name] = jax.device_get(state.params), metrics['test_accuracy']
    if cpu and not args.smoke:
      with tempfile.TemporaryDirectory() as workdir:
        run_processes(preset, config, most, args.data_dir, workdir)
        params = jax.device_get(resume.restore_workdir(workdir)[1].params)
        results[f'2 processes x {most // 2}'] = (
            params, evaluation.evaluate_workdir(workdir)['test_accuracy'])
    for name, (params, accuracy) in results.items():
      rows.append({'preset': preset, 'run': name, 'batch': config.batch_size,
                   'steps': steps, 'test_accuracy': accuracy,
                   'max_param_diff': max_diff(results['1 device'][0], params)})
  common.report('data_parallel', rows, ['preset', 'run', 'batch', 'steps',
                                        'test_accuracy', 'max_param_diff'], args.out)


if __name__ == '__main__':
  main()
