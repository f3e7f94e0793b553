import json
import re
import shutil

import jax
import numpy as np
import pytest

from conftest import REPO
from flax_mnist import checkpoint, cli, configs, core, resume
from flax_mnist.errors import FlaxMnistError


def test_round_trip_restores_against_an_abstract_state(tmp_path):
  config = configs.get_preset('experts')
  state = core.create_train_state(config)
  record = {'config': config.to_dict(), 'num_train': 60_000,
            'data_position': [3, 17]}
  with checkpoint.Checkpointer(str(tmp_path)) as ckpt:
    ckpt.save(5, state, record)
    ckpt.wait()
    assert ckpt.latest_step() == 5
  with checkpoint.Checkpointer(str(tmp_path), read_only=True) as ckpt:
    assert ckpt.restore_record() == record
    restored, restored_record = resume.restore_state(ckpt, config)
  assert restored_record == record
  for a, b in zip(jax.tree_util.tree_leaves(state), jax.tree_util.tree_leaves(restored)):
    np.testing.assert_array_equal(a, b)
  assert restored.apply_fn is not None and restored.tx is not None


def test_keeps_the_newest(tmp_path):
  state = core.create_train_state(configs.get_preset('beginners'))
  with checkpoint.Checkpointer(str(tmp_path), max_to_keep=2) as ckpt:
    for step in (1, 2, 3):
      ckpt.save(step, state, {'step': step})
    ckpt.wait()
    assert ckpt.latest_step() == 3
    assert sorted(int(p.name) for p in (tmp_path / 'checkpoints').iterdir()) == [2, 3]


def test_no_checkpoint_is_a_clear_error(tmp_path):
  with pytest.raises(FlaxMnistError, match='no checkpoints here'):
    checkpoint.Checkpointer(str(tmp_path / 'empty'), read_only=True)
  (tmp_path / 'checkpoints').mkdir()
  with checkpoint.Checkpointer(str(tmp_path), read_only=True) as ckpt:
    with pytest.raises(FlaxMnistError, match='no checkpoint found'):
      ckpt.restore_record()


def _saved(tmp_path, preset='beginners'):
  config = configs.get_preset(preset)
  state = core.create_train_state(config)
  with checkpoint.Checkpointer(str(tmp_path)) as ckpt:
    ckpt.save(1, state, {'config': config.to_dict(), 'num_train': 60_000})
  return state


def test_restoring_into_another_model_names_the_mismatch(tmp_path):
  _saved(tmp_path, 'beginners')
  with checkpoint.Checkpointer(str(tmp_path), read_only=True) as ckpt:
    with pytest.raises(FlaxMnistError, match=r'does not fit the model.*params/conv2d/bias '
                       r'missing from the checkpoint'):
      resume.restore_state(ckpt, configs.get_preset('keras'))
    with pytest.raises(FlaxMnistError, match=r'params/dense/kernel has shape \(784, 10\) '
                       r'in the checkpoint, \(784, 20\) here'):
      ckpt.restore(jax.eval_shape(lambda: {
          'params': {'dense': {'kernel': jax.numpy.zeros((784, 20)),
                               'bias': jax.numpy.zeros(10)}}}))


def test_a_damaged_checkpoint_is_refused(tmp_path):
  _saved(tmp_path, 'keras')
  biggest = max((tmp_path / 'checkpoints' / '1' / 'state').rglob('*'),
                key=lambda p: p.stat().st_size)
  content = bytearray(biggest.read_bytes())
  content[len(content) // 2] ^= 0xff
  biggest.write_bytes(bytes(content))
  with checkpoint.Checkpointer(str(tmp_path), read_only=True) as ckpt:
    with pytest.raises(FlaxMnistError, match=r'checkpoints/1: (damaged checkpoint|cannot restore)'):
      resume.restore_state(ckpt, configs.get_preset('keras'))


def test_a_save_cut_short_is_never_listed(tmp_path):
  _saved(tmp_path)
  (tmp_path / 'checkpoints' / '2.orbax-checkpoint-tmp').mkdir()
  with checkpoint.Checkpointer(str(tmp_path), read_only=True) as ckpt:
    assert ckpt.all_steps() == [1]
  with checkpoint.Checkpointer(str(tmp_path)) as ckpt:
    assert ckpt.latest_step() == 1
  assert sorted(p.name for p in (tmp_path / 'checkpoints').iterdir()) == ['1']


def test_loading_never_unpickles(tmp_path, monkeypatch):
  """No code can come out of a checkpoint: nothing in the load path unpickles."""
  import pickle
  source = '\n'.join(p.read_text() for p in (REPO / 'flax_mnist').glob('*.py'))
  risky = re.findall(r'import (?:pickle|dill|cloudpickle)|pickle\.load|allow_pickle=True|'
                     r'torch\.load|\beval\(|\bexec\(', source)
  assert not risky
  state = _saved(tmp_path, 'keras')

  def refuse(*args, **kwargs):
    raise AssertionError('something unpickled')

  monkeypatch.setattr(pickle, 'loads', refuse)
  monkeypatch.setattr(pickle, 'load', refuse)
  monkeypatch.setattr(pickle, 'Unpickler', refuse)
  _, restored = resume.restore_workdir(str(tmp_path))
  np.testing.assert_array_equal(restored.params['dense']['kernel'],
                                state.params['dense']['kernel'])


def test_orbax_configures_no_logging_and_keeps_its_chatter_down(tmp_path):
  """absl would give the root logger a handler at orbax's first line, and
  orbax says some 70 INFO lines a run."""
  import subprocess
  import sys
  script = '''if True:
    import logging, sys
    import flax_mnist
    from flax_mnist import checkpoint, configs, core
    assert not logging.root.handlers, logging.root.handlers
    state = core.create_train_state(configs.get_preset('beginners'))
    with checkpoint.Checkpointer(sys.argv[1]) as ckpt:
      ckpt.save(1, state, {'step': 1})
    assert not logging.root.handlers, logging.root.handlers
    logging.basicConfig(level=logging.INFO)
    with checkpoint.Checkpointer(sys.argv[1]) as ckpt:
      ckpt.save(2, state, {'step': 2})
      ckpt.restore_record(1)
    logging.getLogger('flax_mnist.train').info('ours')
  '''
  result = subprocess.run([sys.executable, '-c', script, str(tmp_path)],
                          capture_output=True, text=True, timeout=120)
  assert result.returncode == 0, result.stderr
  assert result.stderr.splitlines() == ['INFO:flax_mnist.train:ours']


def test_a_workdir_written_before_the_library_changes_still_restores(tmp_path, capsys):
  # tests/data/beginners_0ad506d: `flax-mnist train --preset beginners --set
  # steps=50` by commit 0ad506d (before the public API, the data source field,
  # the damage check and the compiled initialisation), its config and
  # checkpoint only, data_dir set back to the default.
  workdir = tmp_path / 'run'
  shutil.copytree(REPO / 'tests' / 'data' / 'beginners_0ad506d', workdir)
  assert cli.main(['eval', '--workdir', str(workdir), '--json']) == 0
  results = json.loads(capsys.readouterr().out)
  # What that commit's own run printed: step 50, 0.8694, loss 0.4697.
  assert results['step'] == 50 and results['test_accuracy'] == 0.8694
  assert abs(results['test_loss'] - 0.4697) < 1e-4
  assert cli.main(['train', '--preset', 'beginners', '--set', 'steps=60',
                   '--workdir', str(workdir)]) == 0
  out = capsys.readouterr().out
  assert 'resuming from the checkpoint at step 50' in out
  assert 'step 60, test accuracy' in out
