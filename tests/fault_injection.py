"""`flax-mnist` with one fault planted: `python fault_injection.py FAULT ARGS...`.

FAULT is one of
  kill-during-save         SIGKILL while the 3rd checkpoint is being written
  kill-at-commit           SIGKILL as orbax renames the 3rd finished save into place
  fill-disk-after-save-N   once the Nth checkpoint is on disk, fill the disk
"""

import os
import signal
import sys

from flax_mnist import checkpoint, cli


def _kill():
  os.kill(os.getpid(), signal.SIGKILL)


def _after_save(n: int, action) -> None:
  save = checkpoint.Checkpointer.save
  calls = 0

  def planted(self, *args, **kwargs):
    nonlocal calls
    save(self, *args, **kwargs)
    calls += 1
    if calls == n:
      action(self)

  checkpoint.Checkpointer.save = planted


def _kill_at_commit() -> None:
  rename = os.rename
  commits = 0

  def planted(source, *args, **kwargs):
    nonlocal commits
    if 'orbax-checkpoint-tmp' in os.fspath(source):
      commits += 1
      if commits == 3:
        _kill()
    return rename(source, *args, **kwargs)

  os.rename = planted


def _fill_disk(ckpt: checkpoint.Checkpointer) -> None:
  ckpt.wait()
  with open(os.path.join(ckpt.directory, '..', 'filler'), 'wb', buffering=0) as f:
    try:
      while True:
        f.write(b'\0' * 65536)
    except OSError:
      pass


def main() -> int:
  fault, args = sys.argv[1], sys.argv[2:]
  if fault == 'kill-during-save':
    _after_save(3, lambda ckpt: _kill())
  elif fault == 'kill-at-commit':
    _kill_at_commit()
  elif fault.startswith('fill-disk-after-save-'):
    _after_save(int(fault.rsplit('-', 1)[1]), _fill_disk)
  else:
    raise SystemExit(f'unknown fault {fault!r}')
  return cli.main(args)


if __name__ == '__main__':
  sys.exit(main())
