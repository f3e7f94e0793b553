import json
import os
import signal
import subprocess
import sys
import types

import pytest

from flax_mnist import configs, core, train, workdirs
from flax_mnist.errors import FlaxMnistError

HOLD_LOCK = """
import sys, time
from flax_mnist import workdirs
with workdirs.locked(sys.argv[1]):
  print('held', flush=True)
  time.sleep(600)
"""


def test_a_second_training_on_the_workdir_refuses(tmp_path, tiny_mnist):
  config = configs.get_preset('beginners')
  with workdirs.locked(str(tmp_path)):
    with pytest.raises(FlaxMnistError, match=rf'in use by another training \(pid {os.getpid()} on '):
      train.train_and_evaluate(config, str(tmp_path), tiny_mnist)


def test_the_lock_of_a_killed_process_does_not_block(tmp_path):
  holder = subprocess.Popen([sys.executable, '-c', HOLD_LOCK, str(tmp_path)],
                            stdout=subprocess.PIPE, text=True)
  try:
    assert holder.stdout.readline() == 'held\n'
    with pytest.raises(FlaxMnistError, match=f'pid {holder.pid} '):
      with workdirs.locked(str(tmp_path)):
        pass
  finally:
    holder.send_signal(signal.SIGKILL)
    holder.wait()
  assert json.load(open(tmp_path / workdirs.LOCK_FILE))['pid'] == holder.pid
  with workdirs.locked(str(tmp_path)):
    assert json.load(open(tmp_path / workdirs.LOCK_FILE))['pid'] == os.getpid()


def test_check_room_counts_the_checkpoints_to_come(tmp_path, monkeypatch):
  state = core.create_train_state(configs.get_preset('experts'))
  size = workdirs.state_bytes(state)
  # Parameters, Adam's two moments, the PRNG key, Adam's step count and the
  # state's own step (an int32 array, as in every saved state).
  assert size == 3 * 3_274_634 * 4 + 2 * 4 + 4 + 4
  free = 2.5 * size
  monkeypatch.setattr(workdirs.shutil, 'disk_usage',
                      lambda path: types.SimpleNamespace(free=free))
  workdirs.check_room(str(tmp_path), state, max_checkpoints=1)
  workdirs.check_room(str(tmp_path), state, max_checkpoints=3, existing=2)
  with pytest.raises(FlaxMnistError, match=r'free, but 4 more checkpoint\(s\) of this run'):
    workdirs.check_room(str(tmp_path), state, max_checkpoints=3)


def test_write_atomically_replaces_whole(tmp_path):
  path = tmp_path / 'config.json'
  workdirs.write_atomically(str(path), 'old')
  workdirs.write_atomically(str(path), 'new')
  assert path.read_text() == 'new'
  assert os.listdir(tmp_path) == ['config.json']
  with pytest.raises(FlaxMnistError, match='cannot write'):
    workdirs.write_atomically(str(tmp_path / 'missing' / 'x.json'), 'text')
