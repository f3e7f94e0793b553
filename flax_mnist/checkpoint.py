"""Orbax checkpoints of a run, wrapped in one place.

A checkpoint holds the `TrainState` arrays (step, parameters, optimizer state,
RNG key), a JSON record with the config and the position in the data, and the
SHA-256 of the arrays. Orbax writes each step into a temporary folder and
renames it when complete, so a save cut short is never listed; the digest
catches a checkpoint damaged after that. Restoring goes against an abstract
(shape-only) state, so no throwaway parameters are materialized, and a
checkpoint of another model is refused naming the arrays that differ.
Nothing is unpickled: arrays come from tensorstore, the rest from JSON.
"""

import hashlib
import logging
import os
import shutil
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from flax_mnist.errors import FlaxMnistError, first_line

logger = logging.getLogger(__name__)

CHECKPOINT_DIR = 'checkpoints'
# Orbax writes step N into 'N.orbax-checkpoint-tmp...' and renames it when done.
_TEMPORARY = '.orbax-checkpoint-tmp'


class Checkpointer:
  """Saves and restores the checkpoints under `WORKDIR/checkpoints`.

  >>> import flax_mnist
  >>> state = flax_mnist.create_train_state(flax_mnist.get_preset('beginners'))
  >>> with Checkpointer('runs/example') as ckpt:
  ...   ckpt.save(0, state, {'note': 'any JSON'})
  ...   ckpt.wait()
  ...   restored, record = ckpt.restore(jax.eval_shape(lambda: state))
  >>> record, int(restored.step)
  ({'note': 'any JSON'}, 0)
  """

  def __init__(self, workdir: str, max_to_keep: int = 3, *,
               read_only: bool = False):
    """`read_only` opens an existing run (and fails clearly when there is none)."""
    self.directory = os.path.join(os.path.abspath(workdir), CHECKPOINT_DIR)
    self._max_to_keep = None if read_only else max_to_keep
    self._writing: int | None = None
    if read_only and not os.path.isdir(self.directory):
      raise FlaxMnistError(f'{workdir}: no checkpoints here (train first: '
                           f'flax-mnist train --workdir {workdir} ...)')
    self._manager = ocp.CheckpointManager(
        self.directory,
        item_handlers={'state': ocp.StandardCheckpointHandler(),
                       'record': ocp.JsonCheckpointHandler(),
                       'digest': ocp.JsonCheckpointHandler()},
        # Old steps are deleted here, once a newer one is known complete:
        # orbax deletes them even when the newer save fails.
        options=ocp.CheckpointManagerOptions(
            create=not read_only))
    # One process cleans up for all: the folder is shared.
    if not read_only and jax.process_index() == 0:
      self._remove_cut_short()

  def _remove_cut_short(self) -> None:
    """Deletes the temporary folders of saves a killed process left.

    Orbax can do this too, but in the background, racing the first save.
    """
    for name in os.listdir(self.directory):
      if _TEMPORARY in name:
        shutil.rmtree(os.path.join(self.directory, name), ignore_errors=True)

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def save(self, step: int, state: Any, record: dict) -> None:
    """Starts writing; arrays are copied off the device before this returns.

    The previous save is finished first: its error, or this one's, is a
    `FlaxMnistError`, and the checkpoints already complete stay as they are.
    """
    self.wait()
    digest = {'sha256': state_digest(state)}
    self._writing = step
    with self._failing_save():
      self._manager.save(step, args=ocp.args.Composite(
          state=ocp.args.StandardSave(state),
          record=ocp.args.JsonSave(record),
          digest=ocp.args.JsonSave(digest)), force=True)

  def restore_record(self, step: int | None = None,
                     schema: dict[str, type] | None = None) -> dict:
    """The JSON record (config, data position) of `step`, default the latest;
    one without a value of each `schema` key's type is an error."""
    step = self._resolve(step)
    with self._failing_restore(step):
      record = self._manager.restore(step, args=ocp.args.Composite(
          record=ocp.args.JsonRestore()))['record']
    wrong = [key for key, kind in (schema or {}).items()
             if not isinstance(_get(record, key), kind)]
    if wrong:
      raise FlaxMnistError(f'{self.directory}/{step}: damaged checkpoint (its '
                           f'record has no valid {", ".join(wrong)})')
    return record

  def restore(self, abstract_state: Any, step: int | None = None
              ) -> tuple[Any, dict]:
    """(state shaped like `abstract_state`, record) of `step`, default the latest."""
    step = self._resolve(step)
    with self._failing_restore(step):
      saved = self._manager.item_metadata(step)['state']
    mismatch = _mismatch(getattr(saved, 'tree', None), abstract_state)
    if mismatch:
      raise FlaxMnistError(f'{self.directory}/{step}: this checkpoint does not '
                           f'fit the model and optimizer asked for: {mismatch}')
    items = {'state': ocp.args.StandardRestore(abstract_state),
             'record': ocp.args.JsonRestore()}
    # Checkpoints written before the digest existed have none to check.
    if os.path.isdir(os.path.join(self.directory, str(step), 'digest')):
      items['digest'] = ocp.args.JsonRestore()
    with self._failing_restore(step):
      restored = self._manager.restore(step, args=ocp.args.Composite(**items))
    if 'digest' in items and _get(restored['digest'], 'sha256') != state_digest(
        restored['state']):
      raise FlaxMnistError(
          f'{self.directory}/{step}: damaged checkpoint (its arrays do not match '
          'the SHA-256 written with them); delete this step to use an earlier one')
    return restored['state'], restored['record']

  def wait(self) -> None:
    """Blocks until every started save is on disk, then drops the oldest."""
    with self._failing_save():
      self._manager.wait_until_finished()
    self._writing = None
    if self._max_to_keep:
      for step in self.all_steps()[:-self._max_to_keep]:
        self._manager.delete(step)

  def close(self) -> None:
    self.wait()
    self._manager.close()

  def __enter__(self) -> 'Checkpointer':
    return self

  def __exit__(self, kind, error, traceback) -> None:
    if error is None:
      self.close()
      return
    # The error on its way out is the one to report, not a later one of a
    # save it cut short.
    try:
      self._manager.close()
    except Exception as e:  # pylint: disable=broad-except
      logger.debug('closing the checkpoints after an error: %s', e)

  def _resolve(self, step: int | None) -> int:
    if step is None:
      step = self.latest_step()
    if step is None:
      raise FlaxMnistError(f'{self.directory}: no checkpoint found')
    return step

  def _failing_save(self):
    def describe(e):
      kept = [s for s in self.all_steps() if s != self._writing]
      return (f'{self.directory}: cannot write the checkpoint of step '
              f'{self._writing} ({first_line(e, with_type=True)}); complete '
              f'checkpoints kept: {", ".join(map(str, kept)) or "none"}')
    return _wrapped(describe)

  def _failing_restore(self, step: int):
    return _wrapped(lambda e: f'{self.directory}/{step}: cannot restore this '
                              f'checkpoint ({first_line(e, with_type=True)})')


class _wrapped:
  """Turns any error but ours into a `FlaxMnistError` with `describe(error)`.

  Orbax, tensorstore and the file system raise many kinds for damaged or
  unwritable checkpoints; the original stays chained for debugging.
  """

  def __init__(self, describe):
    self.describe = describe

  def __enter__(self):
    return self

  def __exit__(self, kind, error, traceback):
    if error is None or isinstance(error, (FlaxMnistError, KeyboardInterrupt)):
      return False
    if not isinstance(error, Exception):
      return False
    raise FlaxMnistError(self.describe(error)) from error


def _get(record: Any, key: str) -> Any:
  """`record[key]`, or None where a damaged record is not even a JSON object."""
  return record.get(key) if isinstance(record, dict) else None


def state_digest(state: Any) -> str:
  """SHA-256 over every array of `state`, in tree order, with shapes.

  Integers count as int64: a fresh state's step is a Python int that orbax
  saves as int64 and restores as the abstract state's int32.
  """
  digest = hashlib.sha256()
  for leaf in jax.tree_util.tree_leaves(jax.device_get(state)):
    leaf = np.asarray(leaf)
    if leaf.dtype.kind in 'iub':
      leaf = leaf.astype(np.int64)
    digest.update(str(leaf.shape).encode())
    digest.update(np.ascontiguousarray(leaf).tobytes())
  return digest.hexdigest()


def _mismatch(saved: Any, abstract: Any, limit: int = 3) -> str:
  """'' when the trees have the same array shapes, else the first differences."""
  def arrays(tree):
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {'/'.join(_key_name(k) for k in path): tuple(x.shape)
            for path, x in leaves}

  ours, theirs = arrays(abstract), arrays(saved)
  # Shapes only: orbax casts dtypes (a fresh state's step is a Python int).
  problems = [f'{name} has shape {theirs[name]} in the checkpoint, {ours[name]} here'
              for name in ours if name in theirs and theirs[name] != ours[name]]
  problems += [f'{name} missing from the checkpoint' for name in ours
               if name not in theirs]
  problems += [f'{name} in the checkpoint is not used here' for name in theirs
               if name not in ours]
  more = f' (and {len(problems) - limit} more)' if len(problems) > limit else ''
  return '; '.join(problems[:limit]) + more


def _key_name(key) -> str:
  for attribute in ('key', 'name', 'idx'):
    if hasattr(key, attribute):
      return str(getattr(key, attribute))
  return str(key)
