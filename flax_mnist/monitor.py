"""Where a training run's figures go: metrics.jsonl, TensorBoard, a progress bar.

The training loop hands each logged step and each evaluation to one
`TrainMonitor`, which writes them to `metrics.jsonl`, to TensorBoard event
files in `WORKDIR/tensorboard/` (through tensorboardX, without TensorFlow;
skipped with a warning where tensorboardX is not installed), and to the
progress bar when one is drawn.

Tags: `train/loss`, `train/accuracy`, `learning_rate`, `images_per_second`
at each log line; `test/loss`, `test/accuracy` and the image
`test/mistakes` (the most confident misclassified test digits) at each
evaluation; the config as TensorBoard hparams, with the test metrics.
"""

import contextlib
import json
import logging
import os
import sys
import time
from typing import Any

import jax
import numpy as np

from flax_mnist import configs
from flax_mnist import datasets
from flax_mnist import evaluation
from flax_mnist import mistakes
from flax_mnist import progress
from flax_mnist import workdirs
from flax_mnist.errors import FlaxMnistError

logger = logging.getLogger(__name__)

METRICS_FILE = 'metrics.jsonl'
TENSORBOARD_DIR = 'tensorboard'
# The misclassified test digits shown at each evaluation.
MISTAKE_ROWS, MISTAKE_COLUMNS, MISTAKE_SCALE = 4, 8, 2
_HPARAM_METRICS = ('test/accuracy', 'test/loss')


class TrainMonitor:
  """Fans a run's figures out; `start` it once the first step is known."""

  def __init__(self, workdir: str, progress_bar: bool = False,
               primary: bool = True):
    """Only the `primary` process of a multi-process run writes or draws."""
    self.workdir = workdir
    self.progress_bar = progress_bar and primary
    self.primary = primary
    self._metrics_log = None
    self._writer = None
    self._bar = progress.NoBar()
    self._step = 0
    self._class_names = mistakes.DIGITS
    self._closing = contextlib.ExitStack()

  def start(self, config: configs.Config, step: int, total_steps: int) -> None:
    """Begins at `step`: a resumed run replaces what was logged from there."""
    self._step = step
    self._class_names = datasets.get(config.dataset).class_names
    if not self.primary:
      return
    self._metrics_log = MetricsLog(os.path.join(self.workdir, METRICS_FILE))
    self._metrics_log.drop_from(step)
    self._writer = _open_writer(os.path.join(self.workdir, TENSORBOARD_DIR), step)
    if self._writer is not None:
      self._closing.callback(self._writer.close)
      from tensorboardX import summary
      experiment, session_start, session_end = summary.hparams(
          config.to_dict(), dict.fromkeys(_HPARAM_METRICS))
      self._writer.file_writer.add_summary(experiment, step)
      self._writer.file_writer.add_summary(session_start, step)
      self._session_end = session_end
    if step < total_steps:
      self._bar = self._closing.enter_context(progress.bar(
          self.progress_bar, total_steps, 'train', 'steps', initial=step))

  def train_metrics(self, *, step: int, train_accuracy: float, train_loss: float,
                    learning_rate: float, images_per_second: float | None) -> None:
    """One logged training step (its batch's figures before the update)."""
    if not self.primary:
      return
    self._metrics_log.write(step=step, train_accuracy=train_accuracy,
                            train_loss=train_loss, learning_rate=learning_rate,
                            images_per_second=images_per_second)
    self._scalars(step, {'train/accuracy': train_accuracy, 'train/loss': train_loss,
                         'learning_rate': learning_rate,
                         'images_per_second': images_per_second})
    speed = f'{images_per_second:.0f} images/s, ' if images_per_second else ''
    self._bar.set_postfix_str(
        f'{speed}loss {train_loss:.4f}, accuracy {train_accuracy:.3g}',
        refresh=False)
    # The logged step is done; the bar trails the device by one dispatch at most.
    self._bar.update(step + 1 - self._bar.n)

  @property
  def shows_mistakes(self) -> bool:
    """Whether `test_metrics` wants the evaluation's logits: for TensorBoard's
    picture of mistakes, not in a multi-process run (whose logits are spread
    over the processes)."""
    return self._writer is not None and jax.process_count() == 1

  def test_metrics(self, results: dict[str, Any],
                   result: evaluation.Evaluation | None = None,
                   images_NHWC: jax.Array | None = None) -> None:
    """One evaluation's `results`; with `shows_mistakes`, its logits and the
    split's images (`result`, `images_NHWC`) show the mistakes."""
    step = self._step = results['step']
    if not self.primary:
      return
    self._metrics_log.write(**results)
    self._scalars(step, {'test/accuracy': results['test_accuracy'],
                         'test/loss': results['test_loss']})
    if self.shows_mistakes and result is not None and result.logits_NC is not None:
      sheet = mistakes.sheet(images_NHWC, result.labels_N, result.logits_NC,
                             rows=MISTAKE_ROWS, columns=MISTAKE_COLUMNS,
                             scale=MISTAKE_SCALE, class_names=self._class_names)
      self._writer.add_image('test/mistakes', np.asarray(sheet)[:, :, None], step,
                             dataformats='HWC')
      self._writer.flush()
    self._bar.update(step - self._bar.n)

  def flush(self) -> None:
    """Writes out the TensorBoard events so far (with each checkpoint, so
    that they are on disk as far as it is)."""
    if self._writer is not None:
      try:
        self._writer.flush()
      except OSError as e:
        raise self._event_file_error(e) from None

  def _event_file_error(self, error: OSError) -> FlaxMnistError:
    return FlaxMnistError(f'{self.workdir}/{TENSORBOARD_DIR}: cannot write '
                          f'the event file ({error.strerror})')

  def _scalars(self, step: int, values: dict[str, float | None]) -> None:
    if self._writer is not None:
      for tag, value in values.items():
        if value is not None:
          self._writer.add_scalar(tag, value, step)

  def __enter__(self) -> 'TrainMonitor':
    return self

  def __exit__(self, kind, *exc) -> None:
    if self._writer is not None and kind is None:
      # Marks the hparams session finished; an interrupted one stays open.
      self._writer.file_writer.add_summary(self._session_end, self._step)
    try:
      self._closing.__exit__(kind, *exc)
    except OSError as e:
      # An error on its way out (say a full disk at a checkpoint) is the one
      # to report, not the event file's flush that follows from it.
      if kind is None:
        raise self._event_file_error(e) from None


def _open_writer(logdir: str, step: int):
  """A tensorboardX writer that starts the event files over from `step`."""
  try:
    tensorboardX = _import_tensorboardx()
  except ImportError:
    logger.warning('tensorboardX is not installed: no TensorBoard event files '
                   '(pip install tensorboardX)')
    return None
  # TensorBoard drops earlier files' events from `purge_step` on, so a resumed
  # run's steps are not shown twice. The start step in the file name orders
  # files that open within the same second (the name holds whole seconds).
  try:
    return tensorboardX.SummaryWriter(logdir, purge_step=step,
                                      filename_suffix=f'.{step:09d}')
  except OSError as e:
    raise FlaxMnistError(f'{logdir}: cannot write the event files there '
                         f'({e.strerror}); it must be a folder') from None


def _import_tensorboardx():
  """tensorboardX, without importing PyTorch where that is installed.

  tensorboardX's writer imports torch only for its type hints, which costs
  every command a second or more of its start.
  """
  if 'torch' in sys.modules or 'tensorboardX' in sys.modules:
    import tensorboardX
    return tensorboardX
  sys.modules['torch'] = None  # `import torch` raises ImportError meanwhile
  try:
    import tensorboardX
  finally:
    del sys.modules['torch']
  return tensorboardX


def check_writable(workdir: str) -> None:
  """Fails now, before training, where TensorBoard's folder cannot be one."""
  logdir = os.path.join(workdir, TENSORBOARD_DIR)
  if os.path.lexists(logdir) and not os.path.isdir(logdir):
    raise FlaxMnistError(f'{logdir}: not a folder (the event files go there): '
                         'move it away, or use another --workdir')


class MetricsLog:
  """One JSON object per line in `path`, appended and flushed at once."""

  def __init__(self, path: str):
    self.path = path

  def write(self, **values) -> None:
    try:
      with open(self.path, 'a') as f:
        f.write(json.dumps({'time': time.time(), **values}) + '\n')
    except OSError as e:
      raise FlaxMnistError(f'{self.path}: cannot write ({e.strerror})') from None

  def entries(self) -> list[dict[str, Any]]:
    """Every entry, in order; a line cut short by a killed process is skipped,
    and so, with one warning, are lines that are not entries (other bytes
    than UTF-8, other JSON, a value of the wrong type)."""
    try:
      with open(self.path, 'rb') as f:
        lines = f.readlines()
    except OSError as e:
      raise FlaxMnistError(f'{self.path}: cannot read ({e.strerror})') from None
    entries = [_entry(line) for line in lines if line.endswith(b'\n')]
    bad = [i + 1 for i, entry in enumerate(entries) if entry is None]
    if bad:
      logger.warning('%s: skipped %d damaged line(s) (%s%s): not a JSON entry '
                     'with a whole-number step and numbers', self.path, len(bad),
                     'line ' + ', '.join(map(str, bad[:5])),
                     ', ...' if len(bad) > 5 else '')
    return [entry for entry in entries if entry is not None]

  def drop_from(self, step: int) -> None:
    """Forgets entries from `step` on: a run resumed there logs them again."""
    if os.path.exists(self.path):
      workdirs.write_atomically(self.path, ''.join(
          json.dumps(entry) + '\n' for entry in self.entries()
          if entry['step'] < step))


def _entry(line: bytes) -> dict[str, Any] | None:
  """The entry a line holds, or None where it holds none."""
  try:
    entry = json.loads(line.decode('utf-8'))
  except ValueError:  # UnicodeDecodeError too.
    return None
  if not (isinstance(entry, dict) and type(entry.get('step')) is int and
          all(value is None or type(value) in (int, float)
              for value in entry.values())):
    return None
  return entry
