import json
import os
import subprocess
import sys

import pytest

from conftest import REPO
from flax_mnist import cli


def _run(*args, timeout=300):
  return subprocess.run([sys.executable, '-m', 'flax_mnist', *args],
                        capture_output=True, text=True, cwd=REPO, timeout=timeout)


@pytest.mark.parametrize('args', [[], ['train'], ['eval'], ['summary'], ['report'],
                                  ['export'], ['data'], ['data', 'prepare'],
                                  ['data', 'verify']])
def test_help_everywhere(args, capsys):
  with pytest.raises(SystemExit) as exit_info:
    cli.main([*args, '--help'])
  assert exit_info.value.code == 0
  assert 'usage: flax-mnist' in capsys.readouterr().out


def test_summary(capsys):
  assert cli.main(['summary', '--model', 'keras_cnn']) == 0
  out = capsys.readouterr().out
  assert 'Total params: 93,322' in out and 'conv2d_1 (Conv)' in out


@pytest.mark.parametrize('args,message', [
    (['summary', '--model', 'vgg'], "invalid choice: 'vgg'"),
    (['train', '--preset', 'expert', '--workdir', 'x'], "invalid choice: 'expert'"),
])
def test_unknown_names(args, message, capsys):
  with pytest.raises(SystemExit) as exit_info:
    cli.main(args)
  assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_bad_override_is_one_line_with_no_traceback(tmp_path):
  out = _run('train', '--preset', 'beginners', '--workdir', str(tmp_path),
             '--set', 'batch_size=big')
  assert out.returncode == 2
  assert out.stderr.strip() == ("flax-mnist: error: batch_size must be an integer, "
                                "got 'big'")


def test_bad_data_is_one_line_with_no_traceback(tiny_idx_dir, tmp_path):
  out = _run('train', '--preset', 'beginners', '--workdir', str(tmp_path),
             '--data-dir', tiny_idx_dir)
  assert out.returncode == 2
  assert out.stderr.count('\n') == 1 and 'Traceback' not in out.stderr
  assert 'train-images-idx3-ubyte.gz: checksum mismatch' in out.stderr


def test_train_eval_and_resume_on_small_data(tiny_idx_dir, tmp_path, capsys):
  workdir = str(tmp_path / 'run')
  common = ['--workdir', workdir, '--data-dir', tiny_idx_dir, '--no-verify']
  assert cli.main(['train', '--preset', 'keras', *common, '--set', 'steps=20',
                   '--set', 'batch_size=16', '--set', 'log_every=5',
                   '--set', 'checkpoint_every=10']) == 0
  out = capsys.readouterr().out
  assert 'step 0, training accuracy' in out and 'step 15, training accuracy' in out
  assert 'step 20, test accuracy' in out and '(60 images)' in out
  # Without data options, eval reads the run's own data with its settings.
  assert cli.main(['eval', '--workdir', workdir, '--json']) == 0
  results = json.loads(capsys.readouterr().out)
  assert results['step'] == 20 and results['num_examples'] == 60
  assert {'test_accuracy', 'test_loss'} <= set(results)
  assert cli.main(['train', '--preset', 'keras', *common, '--set', 'steps=30',
                   '--set', 'batch_size=16', '--set', 'log_every=5',
                   '--set', 'checkpoint_every=10']) == 0
  assert 'resuming from the checkpoint at step 20' in capsys.readouterr().out


def test_eval_without_a_run(tmp_path, capsys):
  assert cli.main(['eval', '--workdir', str(tmp_path)]) == 2
  assert 'no checkpoints here' in capsys.readouterr().err


def test_data_verify(mnist_dir, tiny_idx_dir, capsys):
  assert cli.main(['data', 'verify', mnist_dir]) == 0
  assert 'matching the official checksums' in capsys.readouterr().out
  assert cli.main(['data', 'verify', tiny_idx_dir]) == 1
  assert capsys.readouterr().out.count('checksum mismatch') == 4


def test_set_reaches_the_data_fields(tiny_idx_dir, tmp_path, capsys):
  assert cli.main(['train', '--preset', 'beginners', '--workdir', str(tmp_path),
                   '--set', f'data_dir={tiny_idx_dir}', '--set', 'verify_data=false',
                   '--set', 'steps=3', '--set', 'batch_size=10']) == 0
  assert '(60 images)' in capsys.readouterr().out


@pytest.mark.parametrize('args', [
    ['train', '--preset', 'beginners', '--source', 'tfds'],
    ['train', '--preset', 'beginners', '--tfds-data-dir', 'tfds'],  # implies it
    ['data', 'prepare', 'DATA'],
])
def test_without_the_tfds_extra_one_line_says_what_to_install(
    args, mnist_dir, tmp_path, monkeypatch, capsys):
  for module in ('tensorflow', 'tensorflow_datasets'):
    monkeypatch.setitem(sys.modules, module, None)  # import raises ImportError
  args = [mnist_dir if a == 'DATA' else a for a in args]
  if args[0] == 'train':
    args += ['--workdir', str(tmp_path / 'run')]
  assert cli.main(args) == 2
  err = capsys.readouterr().err
  assert err.count('\n') == 1
  assert err.startswith('flax-mnist: error: tensorflow-datasets and TensorFlow')
  assert err.rstrip().endswith(": pip install 'flax-mnist[tfds]'")


def test_a_folder_and_tfds_are_two_sources(tiny_idx_dir, tmp_path, capsys):
  assert cli.main(['train', '--preset', 'beginners', '--workdir', str(tmp_path),
                   '--source', 'tfds', '--data-dir', tiny_idx_dir]) == 2
  assert "and data source 'tfds' are two sources" in capsys.readouterr().err


def test_train_keeps_every_compiled_program_for_the_next_run(tmp_path):
  # JAX's default keeps only programs that took a second or more to compile,
  # which no program of a small softmax-regression run does on CPU.
  cache = tmp_path / 'cache'
  done = subprocess.run(
      [sys.executable, '-m', 'flax_mnist', 'train', '--preset', 'beginners',
       '--set', 'steps=2', '-q', '--workdir', str(tmp_path / 'run')],
      capture_output=True, text=True, cwd=REPO, timeout=300,
      env={**os.environ, 'FLAX_MNIST_COMPILATION_CACHE': str(cache)})
  assert done.returncode == 0, done.stderr
  assert len([p for p in cache.iterdir() if p.name.startswith('jit_')]) >= 3
