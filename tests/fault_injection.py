"""`flax-mnist` with one fault planted: `python fault_injection.py FAULT ARGS...`.

FAULT is one of
  kill-during-save         SIGKILL while the 3rd checkpoint is being written
  kill-at-commit           SIGKILL as orbax renames the 3rd finished save into place
  fill-disk-after-save-N   once the Nth checkpoint is on disk, fill the disk

or `python fault_injection.py damage KIND ROUNDS PRISTINE WORKDIR DATA_DIR IMAGE`:
ROUNDS times, for each of `eval`, `predict` and `train`, WORKDIR made anew
from the run in PRISTINE with its latest checkpoint damaged (KIND, one of
`DAMAGES`) and the command run in this process; 'exit CODE' on stdout after each.
"""

import gc
import os
import pathlib
import shutil
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


def _array_files(checkpoint: pathlib.Path) -> list[pathlib.Path]:
  """The data files of a checkpoint's arrays, largest first."""
  return sorted((checkpoint / 'state' / 'ocdbt.process_0' / 'd').iterdir(),
                key=lambda p: -p.stat().st_size)


DAMAGES = {
    'delete-array': lambda c: _array_files(c)[0].unlink(),
    'truncate-array': lambda c: os.truncate(_array_files(c)[0],
                                            _array_files(c)[0].stat().st_size // 2),
    'delete-manifest': lambda c: (c / 'state' / 'manifest.ocdbt').unlink(),
    'delete-metadata': lambda c: (c / 'state' / '_METADATA').unlink(),
}


def damage(workdir: str, kind: str) -> int:
  """Damages `workdir`'s latest checkpoint; returns its step."""
  steps = [int(p.name) for p in pathlib.Path(workdir, 'checkpoints').iterdir()
           if p.name.isdigit()]
  DAMAGES[kind](pathlib.Path(workdir, 'checkpoints', str(max(steps))))
  return max(steps)


def _damaged_runs(kind: str, rounds: str, pristine: str, workdir: str,
                  data_dir: str, image: str) -> int:
  commands = {
      'eval': ['eval', '--workdir', workdir],
      'predict': ['predict', '--workdir', workdir, image],
      'train': ['train', '--preset', 'beginners', '--workdir', workdir,
                '--data-dir', data_dir, '--no-verify', '--quiet', '--set',
                'steps=30', '--set', 'checkpoint_every=10'],
  }
  for _ in range(int(rounds)):
    for command in commands.values():
      shutil.rmtree(workdir, ignore_errors=True)
      shutil.copytree(pristine, workdir)
      damage(workdir, kind)
      code = cli.main(command)
      # Whatever orbax left pending would print its tracebacks now.
      gc.collect()
      print(f'exit {code}', flush=True)
  return 0


def main() -> int:
  fault, args = sys.argv[1], sys.argv[2:]
  if fault == 'damage':
    return _damaged_runs(*args)
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
