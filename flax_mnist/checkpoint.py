"""Orbax checkpoints of a run, wrapped in one place.

A checkpoint holds the `TrainState` arrays (step, parameters, optimizer state,
RNG key), a JSON record with the config and the position in the data, and the
SHA-256 of the arrays. Orbax writes each step into a temporary folder and
renames it when complete, so a save cut short is never listed; the digest
catches a checkpoint damaged after that. Restoring goes against an abstract
(shape-only) state, so no throwaway parameters are materialized, and a
checkpoint of another model is refused naming the arrays that differ.
Nothing is unpickled: arrays come from tensorstore, the rest from JSON.

A checkpoint whose files are missing or cut short is found before orbax reads
it (`damage`), named with the newest intact one; training moves it aside to
`WORKDIR/damaged_checkpoints/` and resumes from that one.

The module runs over 300 lines because all that knows orbax stays in it:
its manager, its temporary folder names, the tensorstore files the damage
check reads and the absl logging it brings.
"""

import errno
import hashlib
import logging
import os
import re
import shutil
from typing import Any

from absl import logging as absl_logging
import jax
import numpy as np
import tensorstore as ts

from flax_mnist import workdirs
from flax_mnist.errors import FlaxMnistError, first_line

logger = logging.getLogger(__name__)


def _absl_log(level: int, msg: str, *args, **kwargs) -> None:
  """`absl.logging.log` without its `logging.basicConfig()`.

  orbax logs through absl, which configures the root logger at the first
  message when nothing else has: an application's own `basicConfig` after
  that does nothing. Here the message goes to the 'absl' logger alone, as
  any library's, and reaches whatever handlers the application sets up.
  """
  converter = absl_logging.converter
  standard = (converter.STANDARD_DEBUG - (level - 1) if level > converter.ABSL_DEBUG
              else converter.absl_to_standard(max(level, converter.ABSL_FATAL)))
  absl_logging.get_absl_logger().log(standard, msg, *args, **kwargs)


absl_logging.log = _absl_log
absl_logging.ABSLLogger.register_frame_to_skip(__file__, _absl_log.__name__)
# Dependencies' chatter at INFO, for a user who turns INFO on for this
# library's lines: orbax's some 70 lines a run (each save, restore and wait),
# JAX's about backends it did not find (TPU, say). Their warnings still show;
# a level set before this import is kept.
for _name in ('absl', 'jax._src.xla_bridge'):
  if logging.getLogger(_name).level == logging.NOTSET:
    logging.getLogger(_name).setLevel(logging.WARNING)

import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top,wrong-import-position

CHECKPOINT_DIR = 'checkpoints'
# Where training moves a damaged checkpoint: kept for a look, out of orbax's way.
DAMAGED_DIR = 'damaged_checkpoints'
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
    self._intact: set[int] = set()
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

  def damage(self, step: int) -> str | None:
    """What is wrong with the files of checkpoint `step`, or None when every
    array reads back (the digest, checked at restore, vouches for the values).

    The arrays are read one at a time and synchronously: orbax reads them all
    at once on an event loop and, when one read fails, closes the loop with
    the others still pending, whose coroutines print tracebacks ("Event loop
    is closed") when they are collected, as late as the interpreter's exit.
    """
    if step in self._intact:
      return None
    problem = _damage(os.path.join(self.directory, str(step)))
    if problem is None:
      self._intact.add(step)
    return problem

  def resume_step(self, move_damaged: bool = True) -> int | None:
    """The newest intact step (None for no checkpoints), for training to
    resume from; newer damaged ones are moved to `WORKDIR/damaged_checkpoints/`
    (by the process that `move_damaged`), each with a warning."""
    steps = self.all_steps()
    for step in reversed(steps):
      problem = self.damage(step)
      if problem is None:
        return step
      moved = self._move_aside(step) if move_damaged else None
      logger.warning('%s/%d: damaged checkpoint (%s)%s; resuming from an earlier '
                     'one', self.directory, step, problem,
                     f', moved to {moved}' if moved else '')
    if steps:
      raise FlaxMnistError(
          f'{self.directory}: every checkpoint is damaged (steps '
          f'{", ".join(map(str, steps))}); train again in a new --workdir')
    return None

  def _move_aside(self, step: int) -> str:
    folder = os.path.join(os.path.dirname(self.directory), DAMAGED_DIR)
    target, copy = os.path.join(folder, str(step)), 1
    while os.path.exists(target):
      copy += 1
      target = os.path.join(folder, f'{step}-{copy}')
    try:
      os.makedirs(folder, exist_ok=True)
      os.rename(os.path.join(self.directory, str(step)), target)
    except OSError as e:
      raise FlaxMnistError(f'{self.directory}/{step}: damaged checkpoint, and it '
                           f'cannot be moved aside ({e.strerror})') from None
    self._manager.reload()
    return target

  def _check_intact(self, step: int) -> None:
    """Raises, naming the newest intact step, if checkpoint `step` is damaged."""
    problem = self.damage(step)
    if problem is None:
      return
    earlier = next((s for s in reversed(self.all_steps())
                    if s < step and self.damage(s) is None), None)
    raise FlaxMnistError(f'{self.directory}/{step}: {_damaged(problem, step, earlier)}')

  def save(self, step: int, state: Any, record: dict) -> None:
    """Starts writing; arrays are copied off the device before this returns.

    The previous save is finished first: its error, or this one's, is a
    `FlaxMnistError`, and the checkpoints already complete stay as they are.
    """
    self.wait()
    digest = {'sha256': state_digest(state)}
    self._writing = step
    with self._failing_save():
      self._check_room(state)
      self._manager.save(step, args=ocp.args.Composite(
          state=ocp.args.StandardSave(state),
          record=ocp.args.JsonSave(record),
          digest=ocp.args.JsonSave(digest)), force=True)

  def _check_room(self, state: Any) -> None:
    """Raises ENOSPC now if the checkpoint cannot fit.

    Orbax's threads would otherwise each fail part way, some of them printing
    their tracebacks after the error is reported.
    """
    if shutil.disk_usage(self.directory).free < workdirs.state_bytes(state):
      raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

  def restore_record(self, step: int | None = None,
                     schema: dict[str, type] | None = None) -> dict:
    """The JSON record (config, data position) of `step`, default the latest;
    one without a value of each `schema` key's type is an error."""
    step = self._resolve(step)
    self._check_intact(step)
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
    self._check_intact(step)
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
      earlier = next((s for s in reversed(self.all_steps())
                      if s < step and self.damage(s) is None), None)
      raise FlaxMnistError(f'{self.directory}/{step}: ' + _damaged(
          'its arrays do not match the SHA-256 written with them', step, earlier,
          moved=False))
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


def _damaged(problem: str, step: int, earlier: int | None, moved: bool = True) -> str:
  """The one line for a damaged checkpoint: what, and the way forward."""
  if earlier is None:
    return f'damaged checkpoint ({problem}), and no intact earlier one'
  forward = ('train on this workdir to resume from it (this one is moved aside)'
             if moved else 'delete this step to use it')
  return (f'damaged checkpoint ({problem}); the newest intact one is step '
          f'{earlier}: {forward}')


def _damage(folder: str) -> str | None:
  """What is missing or unreadable among the files of one checkpoint's arrays."""
  state = os.path.join(folder, 'state')
  for name in ('_METADATA', 'manifest.ocdbt'):
    if not os.path.isfile(os.path.join(state, name)):
      return f'state/{name} is missing'
  kvstore = {'driver': 'ocdbt', 'base': f'file://{state}/'}
  name = None
  try:
    keys = ts.KvStore.open(kvstore).result().list().result()
    names = sorted({key.decode().rsplit('/', 1)[0] for key in keys
                    if key.endswith((b'/.zarray', b'/zarr.json'))})
    if not names:
      return 'no arrays in state/'
    for name in names:
      driver = 'zarr3' if f'{name}/zarr.json'.encode() in keys else 'zarr'
      ts.open({'driver': driver, 'kvstore': {**kvstore, 'path': name + '/'}},
              open=True).result().read().result()
  except Exception as e:  # pylint: disable=broad-except
    # tensorstore: 'CODE: Error reading "KEY" in OCDBT database at ...: why'.
    why = re.sub(r'^\w+: Error reading .*? at local file "[^"]*": ', '',
                 first_line(e))
    what = f'array {name}' if name else 'the array index'
    return f'{what} cannot be read: {why}'
  return None


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
