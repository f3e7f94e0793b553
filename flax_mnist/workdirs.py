"""The workdir of a training run: one run at a time, writable, with room.

Problems that can be known before training starts are reported then, not
after the first hour.
"""

import contextlib
import fcntl
import json
import math
import os
import shutil
import socket
import tempfile
import time
from typing import Any, Iterator

import jax

from flax_mnist.errors import FlaxMnistError

LOCK_FILE = '.lock'


@contextlib.contextmanager
def locked(workdir: str) -> Iterator[None]:
  """Holds `WORKDIR/.lock` while training, so a second run on it refuses.

  The lock is the kernel's (flock): it ends with the process that held it,
  however that process died, so a stale lock file never blocks a new run.
  """
  path = os.path.join(workdir, LOCK_FILE)
  try:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
  except OSError as e:
    raise FlaxMnistError(f'{workdir}: cannot create {LOCK_FILE} ({e.strerror})') from None
  try:
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      raise FlaxMnistError(
          f'{workdir} is in use by another training ({_holder(fd)}); wait for '
          'it to end or use another --workdir') from None
    try:
      os.ftruncate(fd, 0)
      os.pwrite(fd, json.dumps({'pid': os.getpid(), 'host': socket.gethostname(),
                                'since': time.strftime('%Y-%m-%d %H:%M:%S')}).encode(), 0)
    except OSError as e:  # A full disk lets the file open but not grow.
      raise FlaxMnistError(f'{workdir}: cannot write {LOCK_FILE} ({e.strerror})') from None
    yield
  finally:
    os.close(fd)


def _holder(fd: int) -> str:
  try:
    holder = json.loads(os.pread(fd, 4096, 0))
    return f'pid {holder["pid"]} on {holder["host"]} since {holder["since"]}'
  except (OSError, ValueError, KeyError, TypeError):
    return 'it has not written its name yet'


def check_room(workdir: str, state: Any, max_checkpoints: int,
               existing: int = 0) -> None:
  """Fails now if `workdir` cannot take a file, or the checkpoints to come.

  A run holds up to `max_checkpoints + 1` at once (the newest is written
  before the oldest goes), `existing` of them already on disk.
  """
  try:
    with tempfile.TemporaryFile(dir=workdir) as probe:
      probe.write(b'flax-mnist')
      probe.flush()
      os.fsync(probe.fileno())
  except OSError as e:
    raise FlaxMnistError(f'{workdir}: cannot write here ({e.strerror})') from None
  count = max(1, max_checkpoints + 1 - existing)
  needed = state_bytes(state) * count
  free = shutil.disk_usage(workdir).free
  if free < needed:
    raise FlaxMnistError(
        f'{workdir}: {_mb(free)} free, but {count} more checkpoint(s) of this '
        f'run take about {_mb(needed)}; free some space, lower max_checkpoints '
        'or use another --workdir')


def state_bytes(state: Any) -> int:
  """Bytes of every array in `state` (a checkpoint's size, give or take metadata)."""
  return sum(math.prod(x.shape) * x.dtype.itemsize
             for x in jax.tree_util.tree_leaves(state) if hasattr(x, 'dtype'))


def _mb(size: int) -> str:
  return f'{size / 2**20:.1f} MiB'


def write_atomically(path: str, text: str) -> None:
  """Replaces `path` with `text` all at once: a crash leaves the old or the new.

  The file keeps its mode, or a new one gets the umask's, as `open` would
  give it (a shared workdir stays readable by the group).
  """
  try:
    mode = os.stat(path).st_mode & 0o7777
  except OSError:
    mode = 0o666 & ~_umask()
  try:
    fd, temporary = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(path)),
                                     prefix=f'.{os.path.basename(path)}.')
  except OSError as e:
    raise FlaxMnistError(f'{path}: cannot write ({e.strerror})') from None
  try:
    os.fchmod(fd, mode)
    with os.fdopen(fd, 'w') as f:
      f.write(text)
      f.flush()
      os.fsync(f.fileno())
    os.replace(temporary, path)
  except OSError as e:
    with contextlib.suppress(OSError):
      os.unlink(temporary)
    raise FlaxMnistError(f'{path}: cannot write ({e.strerror})') from None


def _umask() -> int:
  """The process's umask (reading it means setting it, so it is set back)."""
  mask = os.umask(0o022)
  os.umask(mask)
  return mask
