import jax
import numpy as np
import pytest

from flax_mnist import checkpoint, configs, train
from flax_mnist.errors import FlaxMnistError


def test_round_trip_restores_against_an_abstract_state(tmp_path):
  config = configs.get_preset('experts')
  state = train.create_train_state(config)
  record = {'config': config.to_dict(), 'num_train': 60_000,
            'data_position': [3, 17]}
  with checkpoint.Checkpointer(str(tmp_path)) as ckpt:
    ckpt.save(5, state, record)
    ckpt.wait()
    assert ckpt.latest_step() == 5
  with checkpoint.Checkpointer(str(tmp_path), read_only=True) as ckpt:
    assert ckpt.restore_record() == record
    restored, restored_record = train.restore_state(ckpt, config)
  assert restored_record == record
  for a, b in zip(jax.tree_util.tree_leaves(state), jax.tree_util.tree_leaves(restored)):
    np.testing.assert_array_equal(a, b)
  assert restored.apply_fn is not None and restored.tx is not None


def test_keeps_the_newest(tmp_path):
  state = train.create_train_state(configs.get_preset('beginners'))
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
