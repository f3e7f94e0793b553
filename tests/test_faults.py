"""Faults during training, made for real in child processes.

Each child is `flax-mnist train` (or `tests/fault_injection.py`, which is the
same command with one fault planted), on the tiny IDX folder; the compiled
steps are shared through a compilation cache so each start is short.
"""

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from conftest import REPO
from flax_mnist import resume

pytestmark = pytest.mark.slow

# Random kills in the SIGKILL test (more for a measurement, as in README.md).
KILL_ROUNDS = int(os.environ.get('FLAX_MNIST_KILL_ROUNDS', 4))
# keras_cnn on 240 images: 12 steps an epoch, a checkpoint and a log line
# every 4 steps. A round of kills trains at most about 16 steps (`_kill_soon`),
# each planted fault 12, so every round finds steps left to train.
RUN = ['--set', f'steps={16 * KILL_ROUNDS + 32}', '--set', 'batch_size=20',
       '--set', 'checkpoint_every=4',
       '--set', 'log_every=4', '--set', 'max_checkpoints=2']
INJECT = str(REPO / 'tests' / 'fault_injection.py')


@pytest.fixture(scope='module')
def env(tmp_path_factory) -> dict:
  cache = tmp_path_factory.mktemp('compilation_cache')
  return dict(os.environ, FLAX_MNIST_COMPILATION_CACHE=str(cache),
              JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0')


def _train_args(workdir, data_dir, *extra) -> list[str]:
  return ['train', '--preset', 'keras', '--workdir', str(workdir), '--data-dir',
          data_dir, '--no-verify', *RUN, *extra]


def _run(args, env, program=('-m', 'flax_mnist')) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, *program, *args], env=env,
                        capture_output=True, text=True, timeout=300)


def _start(args, env, program=('-m', 'flax_mnist')) -> subprocess.Popen:
  return subprocess.Popen([sys.executable, *program, *args], env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True)


def _wait_for_training(process: subprocess.Popen) -> list[str]:
  """Output lines up to the first training log line (or the process's end)."""
  lines = []
  for line in process.stdout:
    lines.append(line)
    if line.startswith('step '):
      break
  return lines


def _kill_soon(process: subprocess.Popen, rng: random.Random) -> None:
  """SIGKILL at a random moment within two log intervals of training, timed on
  this machine: a fixed delay lets a fast machine finish the run first."""
  _wait_for_training(process)
  start = time.monotonic()
  _wait_for_training(process)
  time.sleep(rng.uniform(0, 2 * (time.monotonic() - start)))
  process.kill()
  process.communicate()


def _final_state(workdir):
  return resume.restore_workdir(str(workdir))[1]


def _assert_same_state(a, b):
  for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def _logged_steps(workdir) -> list[int]:
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return [entry['step'] for entry in map(json.loads, f) if 'train_loss' in entry]


@pytest.fixture(scope='module')
def reference(tmp_path_factory, env):
  """An uninterrupted run, shared by the tests that compare against it."""
  data_dir = str(tmp_path_factory.mktemp('data'))
  from conftest import synthetic_split, write_idx
  for split, num, seed in (('train', 240, 0), ('t10k', 60, 1)):
    images, labels = synthetic_split(num, seed)
    write_idx(os.path.join(data_dir, f'{split}-images-idx3-ubyte.gz'), images)
    write_idx(os.path.join(data_dir, f'{split}-labels-idx1-ubyte.gz'), labels)
  workdir = tmp_path_factory.mktemp('reference')
  result = _run(_train_args(workdir, data_dir), env)
  assert result.returncode == 0, result.stderr
  return data_dir, workdir


def test_same_seed_gives_bitwise_identical_parameters(reference, env, tmp_path):
  data_dir, workdir = reference
  result = _run(_train_args(tmp_path, data_dir), env)
  assert result.returncode == 0, result.stderr
  _assert_same_state(_final_state(workdir), _final_state(tmp_path))


def test_killed_again_and_again_then_resumed_ends_bitwise_equal(reference, env, tmp_path):
  """SIGKILL at random moments, in a save and at its commit, then resume."""
  data_dir, workdir = reference
  args = _train_args(tmp_path, data_dir)
  rng = random.Random(0)
  killed = cut_saves = 0
  for _ in range(KILL_ROUNDS):
    process = _start(args, env)
    _kill_soon(process, rng)
    killed += process.returncode == -signal.SIGKILL
    cut_saves += _saves_cut_short(tmp_path)
  # Planted: the process kills itself while a save is being written, and
  # just before orbax renames a finished save into place.
  for fault in ('kill-during-save', 'kill-at-commit'):
    result = _run([fault, *args], env, program=(INJECT,))
    assert result.returncode == -signal.SIGKILL, result.stderr
    assert _saves_cut_short(tmp_path)
  assert killed >= KILL_ROUNDS * 3 // 4
  result = _run(args, env)
  assert result.returncode == 0, result.stderr
  _assert_same_state(_final_state(workdir), _final_state(tmp_path))
  assert _logged_steps(tmp_path) == _logged_steps(workdir)
  assert not _saves_cut_short(tmp_path)
  print(f'{killed} random kills ({cut_saves} during a save) and 2 planted, then '
        'resumed: bitwise equal')


def _saves_cut_short(workdir) -> int:
  folder = os.path.join(workdir, 'checkpoints')
  return sum('orbax-checkpoint-tmp' in name
             for name in (os.listdir(folder) if os.path.isdir(folder) else []))


@pytest.mark.parametrize('sig', [signal.SIGTERM, signal.SIGINT])
def test_a_stop_signal_saves_the_step_and_resumes_from_it(reference, env, tmp_path, sig):
  data_dir, _ = reference
  process = _start(_train_args(tmp_path, data_dir, '--set', 'steps=100000',
                               '--set', 'checkpoint_every=100000'), env)
  _wait_for_training(process)
  time.sleep(0.5)
  process.send_signal(sig)
  output = process.communicate(timeout=60)[0]
  assert process.returncode == 128 + sig
  message = output.strip().splitlines()[-1]
  assert f'stopped by {signal.Signals(sig).name} at step' in message
  step = int(message.split(' at step ')[1].split(';')[0])
  assert step > 0
  assert os.path.isdir(tmp_path / 'checkpoints' / str(step))
  result = _run(_train_args(tmp_path, data_dir, '--set', f'steps={step + 4}'), env)
  assert result.returncode == 0, result.stderr
  assert f'resuming from the checkpoint at step {step}' in result.stdout
  assert int(_final_state(tmp_path).step) == step + 4


def test_a_diverging_run_stops_naming_the_step_and_keeps_the_good_checkpoint(
    reference, env, tmp_path):
  data_dir, _ = reference
  # SGD warming up to a learning rate of 1000: NaN within a few steps (the
  # keras preset's Adam epsilon back at its default, as SGD ignores it).
  result = _run(_train_args(tmp_path, data_dir, '--set', 'optimizer=sgd',
                            '--set', 'adam_eps=1e-8',
                            '--set', 'learning_rate=1e3', '--set', 'lr_schedule=cosine',
                            '--set', 'warmup_steps=50', '--set', 'checkpoint_every=2'),
                env)
  assert result.returncode != 0
  message = result.stderr.strip().splitlines()[-1]
  assert 'training diverged: the loss is nan at step' in message, result.stderr
  bad_step = int(message.split(' at step ')[1].split(' ')[0])
  kept = sorted(int(name) for name in os.listdir(tmp_path / 'checkpoints'))
  assert kept and kept[-1] <= bad_step
  assert f'the last good checkpoint, step {kept[-1]}, is kept' in message
  state = _final_state(tmp_path)
  assert all(np.isfinite(x).all() for x in jax.tree_util.tree_leaves(state.params))


def _in_small_filesystem(script: str, size: str, env, read_only=False
                         ) -> subprocess.CompletedProcess:
  """Runs shell `script` with a fresh tmpfs of `size` at $FS (a private mount)."""
  if not shutil.which('unshare'):
    pytest.skip('needs unshare to mount a small file system')
  options = f'size={size}' + (',ro' if read_only else '')
  wrapped = f'FS=$(mktemp -d) && mount -t tmpfs -o {options} none "$FS" && {script}'
  result = subprocess.run(['unshare', '--mount', 'sh', '-c', wrapped], env=env,
                          capture_output=True, text=True, timeout=300)
  if 'mount:' in result.stderr and 'permission denied' in result.stderr.lower():
    pytest.skip('cannot mount a file system here')
  return result


def _shell(args) -> str:
  return ' '.join(f"'{a}'" for a in args)


def test_a_full_disk_before_training_is_a_clear_error(reference, env):
  data_dir, _ = reference
  train_command = _shell([sys.executable, '-m', 'flax_mnist',
                          *_train_args('WORKDIR', data_dir)]).replace("'WORKDIR'", '"$FS/run"')
  result = _in_small_filesystem(train_command, '2m', env)
  assert result.returncode == 2, result.stderr
  assert 'more checkpoint(s) of this run take about' in result.stderr
  assert 'training' not in result.stdout


def test_a_read_only_workdir_is_a_clear_error(reference, env):
  data_dir, _ = reference
  train_command = _shell([sys.executable, '-m', 'flax_mnist',
                          *_train_args('WORKDIR', data_dir)]).replace("'WORKDIR'", '"$FS"')
  result = _in_small_filesystem(train_command, '2m', env, read_only=True)
  assert result.returncode == 2, result.stderr
  assert 'Read-only file system' in result.stderr.strip().splitlines()[-1]


def test_a_disk_filling_up_during_a_save_keeps_the_earlier_checkpoints(reference, env):
  data_dir, _ = reference
  # Room for the two kept checkpoints and the third being written; after the
  # third save the planted fault fills the disk.
  args = _train_args('WORKDIR', data_dir, '--set', 'log_every=1000')
  script = (_shell([sys.executable, INJECT, 'fill-disk-after-save-3', *args])
            .replace("'WORKDIR'", '"$FS/run"') + '; echo "exit $?"; ' +
            _shell([sys.executable, '-m', 'flax_mnist', 'eval', '--workdir', 'WORKDIR',
                    '--json']).replace("'WORKDIR'", '"$FS/run"'))
  result = _in_small_filesystem(script, '6m', env)
  assert 'exit 2' in result.stdout, result.stderr
  # One line, and nothing after it: found before orbax starts writing, the
  # full disk leaves none of its threads to fail part way and print.
  lines = result.stderr.splitlines()
  assert len(lines) == 1, result.stderr
  error, = lines
  assert error.startswith('flax-mnist: error: ') and 'No space left on device' in error
  assert 'complete checkpoints kept: 8, 12' in error
  evaluated = json.loads(result.stdout.strip().splitlines()[-1])
  assert evaluated['step'] == 12


@pytest.fixture(scope='module')
def checkpointed(reference, env, tmp_path_factory):
  """(data_dir, a beginners run with checkpoints at steps 10, 20 and 30)."""
  data_dir, _ = reference
  workdir = tmp_path_factory.mktemp('checkpointed')
  result = _run(['train', '--preset', 'beginners', '--workdir', str(workdir),
                 '--data-dir', data_dir, '--no-verify', '--set', 'steps=30',
                 '--set', 'checkpoint_every=10'], env)
  assert result.returncode == 0, result.stderr
  return data_dir, str(workdir)


DAMAGE_ROUNDS = 10


@pytest.mark.parametrize('kind', ['delete-array', 'truncate-array',
                                  'delete-manifest', 'delete-metadata'])
def test_a_damaged_checkpoint_file_is_one_line_naming_the_intact_one(
    checkpointed, env, tmp_path, kind):
  """eval and predict: one line each time; train: moves it aside and resumes."""
  from PIL import Image
  data_dir, pristine = checkpointed
  image = str(tmp_path / 'digit.png')
  Image.new('L', (28, 28)).save(image)
  workdir = str(tmp_path / 'run')
  result = _run(['damage', kind, str(DAMAGE_ROUNDS), pristine, workdir, data_dir,
                 image], env, program=(INJECT,))
  codes = [line for line in result.stdout.splitlines() if line.startswith('exit ')]
  assert codes == ['exit 2', 'exit 2', 'exit 0'] * DAMAGE_ROUNDS, result.stderr
  errors = result.stderr.splitlines()
  # Nothing but one line per eval and per predict: no traceback, no log.
  assert len(errors) == 2 * DAMAGE_ROUNDS, result.stderr
  expected = (f'flax-mnist: error: {workdir}/checkpoints/30: damaged checkpoint (')
  for line in errors:
    assert line.startswith(expected), line
    assert line.endswith('; the newest intact one is step 20: train on this '
                         'workdir to resume from it (this one is moved aside)'), line
  assert 'does not fit' not in result.stderr
  # The last round's train: said so, resumed from 20, kept the damaged one.
  assert f'{workdir}/checkpoints/30: damaged checkpoint' in result.stdout
  assert f'moved to {workdir}/damaged_checkpoints/30' in result.stdout
  assert 'step 30: test accuracy' in result.stdout
  assert os.path.isdir(os.path.join(workdir, 'damaged_checkpoints', '30'))
  assert int(_final_state(workdir).step) == 30
