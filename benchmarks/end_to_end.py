"""Whole processes, as a user times them: flax-mnist against PyTorch and TensorFlow.

    python benchmarks/end_to_end.py [--batch-sizes 32 128] [--repeats 3]
        [--data-dir ../shared/mnist] [--reference-python PATH]
        [--out results.json] [--smoke]

For each batch size, runs one keras_cnn epoch plus the test set as three
commands, in turn, `--repeats` times:
- flax-mnist: `flax-mnist train --preset keras --set epochs=1
  --set batch_size=B -q --data-dir DIR` (a new workdir each time);
- pytorch: torch_keras.py, the same network in plain PyTorch;
- tensorflow: tf_keras.py, the Keras tutorial's own code (left out, with a
  note, when TensorFlow is not installed).
Each row is one command's medians: wall, user and system seconds and minor
page faults of the whole process (imports, data, compilation, training,
evaluation), its test accuracy, and flax-mnist's wall and system time over
it. An untimed first flax-mnist run fills its compilation cache, as a
user's second run would find it.
"""

import json
import os
import pathlib
import resource
import statistics
import subprocess
import sys
import tempfile
import time

import common

HERE = pathlib.Path(__file__).resolve().parent


def commands(batch_size: int, data_dir: str, workdir: str, smoke: bool,
             reference_python: str = sys.executable) -> dict[str, list[str]]:
  length = ['--set', 'steps=3'] if smoke else ['--set', 'epochs=1']
  reference = ['--data-dir', data_dir, '--batch-size', str(batch_size),
               *(['--max-steps', '3'] if smoke else [])]
  return {
      'flax-mnist': [sys.executable, '-m', 'flax_mnist', 'train', '--preset', 'keras',
                     *length, '--set', f'batch_size={batch_size}', '-q',
                     '--data-dir', data_dir, '--workdir', workdir],
      'pytorch': [reference_python, str(HERE / 'torch_keras.py'), *reference],
      'tensorflow': [reference_python, str(HERE / 'tf_keras.py'), *reference],
  }


def run(command: list[str]) -> dict | None:
  """Wall, CPU seconds and faults of one child process; None if TF is missing."""
  before = resource.getrusage(resource.RUSAGE_CHILDREN)
  start = time.perf_counter()
  done = subprocess.run(command, capture_output=True, text=True)
  wall = time.perf_counter() - start
  after = resource.getrusage(resource.RUSAGE_CHILDREN)
  if done.returncode == 3 and 'TensorFlow is not installed' in done.stderr:
    return None
  if done.returncode:
    raise SystemExit(f'{" ".join(command)} failed:\n{done.stderr[-3000:]}')
  last = done.stdout.strip().splitlines()[-1]
  if last.startswith('{'):
    accuracy = json.loads(last)['test_accuracy']
  else:
    # flax-mnist -q: 'step N: test accuracy A, test loss L (...)'
    accuracy = float(last.split('test accuracy ')[1].split(',')[0])
  return {'wall_s': wall, 'user_s': after.ru_utime - before.ru_utime,
          'sys_s': after.ru_stime - before.ru_stime,
          'minor_faults': after.ru_minflt - before.ru_minflt,
          'test_accuracy': accuracy}


def main():
  parser = common.arguments(__doc__)
  parser.add_argument('--batch-sizes', nargs='+', type=int, default=[32, 128])
  parser.add_argument('--repeats', type=int, default=3)
  parser.add_argument('--data-dir', default=common.DEFAULT_DATA_DIR)
  parser.add_argument('--reference-python', default=sys.executable,
                      help="the interpreter of the PyTorch and TensorFlow scripts")
  args = parser.parse_args()
  repeats = 1 if args.smoke else args.repeats
  batch_sizes = args.batch_sizes[:1] if args.smoke else args.batch_sizes
  rows, notes = [], []
  if args.reference_python != sys.executable:
    version = subprocess.run(
        [args.reference_python, '-c', 'import platform; print(platform.python_version())'],
        capture_output=True, text=True, check=True).stdout.strip()
    notes.append(f'pytorch and tensorflow ran on Python {version} '
                 f'({args.reference_python})')
  for batch_size in batch_sizes:
    runs: dict[str, list[dict]] = {}
    with tempfile.TemporaryDirectory() as tmp:
      for repeat in range(-1 if not args.smoke else 0, repeats):
        for name, command in commands(batch_size, args.data_dir,
                                      os.path.join(tmp, f'run{repeat}'),
                                      args.smoke, args.reference_python).items():
          if repeat < 0 and name != 'flax-mnist':
            continue
          result = run(command)
          if result is None:
            if repeat == 0:
              notes.append(f'tensorflow left out: {name} needs TensorFlow')
            continue
          if repeat >= 0:
            runs.setdefault(name, []).append(result)
            print(f'batch {batch_size} {name} run {repeat}: '
                  + json.dumps({k: round(v, 4) for k, v in result.items()}), flush=True)
    ours = {k: statistics.median(r[k] for r in runs['flax-mnist'])
            for k in ('wall_s', 'sys_s')}
    for name, results in runs.items():
      row = {'batch': batch_size, 'command': name, 'runs': len(results)}
      row |= {k: statistics.median(r[k] for r in results) for k in results[0]}
      row['ours_wall_ratio'] = ours['wall_s'] / row['wall_s']
      row['ours_sys_ratio'] = ours['sys_s'] / max(row['sys_s'], 1e-3)
      rows.append(row)
  for note in dict.fromkeys(notes):
    print(note)
  common.report('end_to_end', rows, list(rows[0]), args.out, notes=notes,
                unit='medians; *_ratio = flax-mnist / command (below 1: flax-mnist is faster)')


if __name__ == '__main__':
  main()
