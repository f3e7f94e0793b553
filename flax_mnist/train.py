"""The host loop: `train_and_evaluate`, around `core.train_steps`.

It reads as Flax's imagenet example does: dispatch steps, log, evaluate,
save. The data position is a function of the step (`core`'s docstring), so
a resumed run computes exactly what the uninterrupted run would have. The
helpers below keep the loop's bookkeeping (compilation, the training clock,
the finiteness check, checkpoints) out of its way; they serve only this
loop, which is why the module runs a little over 300 lines.
"""

import contextlib
import itertools
import json
import logging
import os
import time
from typing import Any

import jax
import numpy as np
import optax

from flax_mnist import checkpoint
from flax_mnist import configs
from flax_mnist import core
from flax_mnist import evaluation
from flax_mnist import input_pipeline
from flax_mnist import monitor
from flax_mnist import parallel
from flax_mnist import preemption
from flax_mnist import resume
from flax_mnist import workdirs
from flax_mnist.errors import FlaxMnistError, TrainingDiverged, TrainingStopped

logger = logging.getLogger(__name__)
logger.addFilter(parallel.PrimaryLogsOnly())


def train_and_evaluate(config: configs.Config, workdir: str,
                       data: input_pipeline.Mnist | None = None, *,
                       progress_bar: bool = False
                       ) -> tuple[core.TrainState, dict[str, Any]]:
  """Trains (resuming from `workdir`'s latest checkpoint) and evaluates.

  `data` defaults to the config's source (`input_pipeline.load`).
  Figures go to the log, `metrics.jsonl` and TensorBoard (`monitor`), and to
  terminal progress bars with `progress_bar`. Returns the final state and the
  final test metrics (`test_accuracy`, `test_loss`, `num_examples`, `step`,
  `train_seconds`, `compile_seconds`).

  >>> import dataclasses, tempfile
  >>> from flax_mnist import input_pipeline
  >>> images, labels = np.zeros((200, 784), np.float32), np.arange(200) % 10
  >>> data = input_pipeline.from_arrays((images, labels), (images, labels))
  >>> config = dataclasses.replace(configs.get_preset('beginners'), steps=4)
  >>> state, results = train_and_evaluate(config, tempfile.mkdtemp(), data)
  >>> int(state.step), results['num_examples']
  (4, 200)
  """
  dp = parallel.DataParallel.create(config.num_devices, config.batch_size)
  if data is None:
    data = resume.load_data(config)
  num_train = len(data.train_labels)
  # Before the workdir is touched: a config that does not fit the data
  # leaves nothing behind.
  config.steps_per_epoch(num_train)
  _make_folder(workdir)
  primary = parallel.is_primary()
  # Only the first process writes the run's files; orbax saves from all.
  with (workdirs.locked(workdir) if primary else contextlib.nullcontext(),
        checkpoint.Checkpointer(workdir, config.max_checkpoints) as ckpt,
        monitor.TrainMonitor(workdir, progress_bar, primary) as log):
    state, saved = resume.resume(config, ckpt, workdir, dp)
    if saved and saved['num_train'] != num_train:
      raise FlaxMnistError(
          f'{workdir} was trained on {saved["num_train"]} examples, this data '
          f'has {num_train}: resume with the same data, or use a new --workdir')
    if state is None:
      state = dp.replicate(core.create_train_state(config, num_train))
    if primary:
      workdirs.check_room(workdir, state, config.max_checkpoints,
                          len(ckpt.all_steps()))
      monitor.check_writable(workdir)
    step, total_steps = int(state.step), config.total_steps(num_train)
    steps_per_epoch = config.steps_per_epoch(num_train)
    if primary:
      workdirs.write_atomically(os.path.join(workdir, 'config.json'),
                                json.dumps(config.to_dict(), indent=2))
    log.start(config, step, total_steps)
    test, eval_batch_size = evaluation.padded_test_split(data, config, dp)
    clock = _TrainClock(saved['train_seconds'] if saved else 0.0)
    dispatcher = _Dispatcher(config, data, state.data_key, dp, clock)
    finite = _FiniteCheck(ckpt, dispatcher.schedule)
    saver = _Saver(ckpt, log, resume.record, config, num_train, clock, finite)
    if step < total_steps:
      logger.info('training %s for %d steps (%d per epoch) from step %d',
                  config.model, total_steps, steps_per_epoch, step)
    if dp.size > 1:
      logger.info('each batch split over %d %s devices (%d processes)', dp.size,
                  jax.default_backend(), jax.process_count())

    with preemption.StopRequest() as stop, dispatcher:
      for dispatch in itertools.count():
        if step >= total_steps or stop.requested(dispatch):
          break
        num_steps = _dispatch_size(step, total_steps, core.steps_per_dispatch(config),
                                   steps_per_epoch,
                                   (config.eval_every, config.checkpoint_every))
        state, metrics = dispatcher.run(state, step, num_steps)
        finite.add(step, metrics['loss'])
        first, step = step, step + num_steps

        logged = range(-first % config.log_every, num_steps, config.log_every)
        if len(logged):
          finite.check()
          _log_training(log, first, logged, jax.device_get(metrics),
                        clock.rate(state, step, config.batch_size),
                        (total_steps - step) * config.batch_size,
                        dispatcher.schedule)
        if config.eval_every and step % config.eval_every == 0 and step < total_steps:
          with clock.paused(state):
            finite.check()
            _evaluate_and_log(state, test, eval_batch_size, log, step,
                              train_seconds=clock.seconds)
        if step % config.checkpoint_every == 0 or step == total_steps:
          saver.save(state, step)

      if stop.signal_number is not None:
        if saver.saved_step != step:
          saver.save(state, step)
        ckpt.wait()
        raise TrainingStopped(
            f'stopped by {stop.name} at step {step}; its checkpoint is saved in '
            f'{ckpt.directory}: run the same command to resume',
            stop.signal_number)
    ckpt.wait()
    results = _evaluate_and_log(state, test, eval_batch_size, log, step,
                                train_seconds=clock.read(state),
                                compile_seconds=dispatcher.compile_seconds)
  return state, results


def _make_folder(workdir: str) -> None:
  try:
    os.makedirs(workdir, exist_ok=True)
  except OSError as e:
    raise FlaxMnistError(f'{workdir}: cannot create the workdir ({e.strerror})') from None


class _Dispatcher:
  """Runs `core.train_steps` from any step: the epochs' shuffled copies it
  needs, and each new dispatch length's compilation timed apart from training.
  A context manager, for the thread that makes the next epoch's copy."""

  def __init__(self, config: configs.Config, data: input_pipeline.Mnist,
               data_key: jax.Array, dp: parallel.DataParallel,
               clock: '_TrainClock'):
    self._config = config
    self._epochs = input_pipeline.ShuffledEpochs(
        data.train_images, data.train_labels, data_key, dp.replicated)
    total_steps = config.total_steps(len(data.train_labels))
    self._steps_per_epoch = config.steps_per_epoch(len(data.train_labels))
    self._last_epoch = (total_steps - 1) // self._steps_per_epoch
    self._batch_sharding = dp.batch
    self._clock = clock
    self._in_flight = parallel.InFlight()
    self._compiled = set()
    self.compile_seconds = 0.0
    # Compiled now: run eagerly at the first log line, its many small ops
    # would each compile there, inside the training time.
    self.schedule = jax.jit(core.learning_rate_schedule(config, total_steps))
    self.schedule(0)

  def __enter__(self) -> '_Dispatcher':
    return self

  def __exit__(self, *exc_info) -> None:
    self._epochs.__exit__(*exc_info)

  def run(self, state: core.TrainState, step: int, num_steps: int
          ) -> tuple[core.TrainState, dict[str, jax.Array]]:
    """`num_steps` steps from `step` (the state's), within its epoch, `state`
    donated."""
    epoch, index = divmod(step, self._steps_per_epoch)
    args = (state, self._epochs.get(epoch, prefetch=epoch < self._last_epoch), index)
    kwargs = dict(num_steps=num_steps, batch_size=self._config.batch_size,
                  batch_sharding=self._batch_sharding)
    if num_steps in self._compiled:
      state, metrics = core.train_steps(*args, **kwargs)
    else:
      # A new dispatch length's compilation and first run (GPU module
      # loading, autotuning) count as compile time, not training time.
      with self._clock.paused(state):
        start = time.perf_counter()
        state, metrics = jax.block_until_ready(core.train_steps(*args, **kwargs))
        self.compile_seconds += time.perf_counter() - start
      self._compiled.add(num_steps)
    self._in_flight.add(metrics)
    return state, metrics


def _log_training(log: monitor.TrainMonitor, first: int, logged: range,
                  metrics: dict[str, np.ndarray], rate: float | None,
                  images_left: int, schedule: optax.Schedule) -> None:
  """The log lines of a dispatch's steps `first + i` for `i` in `logged`."""
  for i in logged:
    logger.info('step %d, training accuracy %g, loss %.4f%s', first + i,
                metrics['accuracy'][i], metrics['loss'][i],
                _speed(rate, images_left))
    log.train_metrics(step=first + i, train_accuracy=float(metrics['accuracy'][i]),
                      train_loss=float(metrics['loss'][i]),
                      learning_rate=float(schedule(first + i)),
                      images_per_second=rate)


def _evaluate_and_log(state, test, batch_size, log: monitor.TrainMonitor, step,
                      **timings) -> dict[str, Any]:
  """One evaluation of the test split, logged; its logits only where the
  monitor shows the mistakes."""
  result = evaluation.evaluate_split(state, test, batch_size,
                                     progress_bar=log.progress_bar,
                                     keep_logits=log.shows_mistakes)
  results = {'step': step, **evaluation.as_test_metrics(result.metrics), **timings}
  logger.info('step %d, test accuracy %g, test loss %.4f (%d images)', step,
              results['test_accuracy'], results['test_loss'],
              results['num_examples'])
  log.test_metrics(results, result, test.images_NHWC)
  return results


class _Saver:
  """Saves checkpoints of finite states, with their record."""

  def __init__(self, ckpt: checkpoint.Checkpointer, log: monitor.TrainMonitor,
               record, config: configs.Config, num_train: int,
               clock: '_TrainClock', finite: '_FiniteCheck'):
    self._ckpt, self._log, self._record = ckpt, log, record
    self._config, self._num_train = config, num_train
    self._clock, self._finite = clock, finite
    self.saved_step = ckpt.latest_step()

  def save(self, state: core.TrainState, step: int) -> None:
    with self._clock.paused(state):
      self._finite.check(state)
      self._log.flush()
      self._ckpt.save(step, state, self._record(self._config, self._num_train,
                                                step, self._clock.seconds))
    self.saved_step = step


class _FiniteCheck:
  """Stops a diverging run before anything non-finite is saved.

  Each dispatch's losses stay on the device until the loop syncs anyway
  (log lines, evaluations, checkpoints), so checking costs no extra waits.
  """

  def __init__(self, ckpt: checkpoint.Checkpointer, schedule: optax.Schedule):
    self._ckpt = ckpt
    self._schedule = schedule
    self._pending = []

  def add(self, first_step: int, losses: jax.Array) -> None:
    self._pending.append((first_step, losses))
    if len(self._pending) >= 100:
      self.check()

  def check(self, state: core.TrainState | None = None) -> None:
    """Raises `TrainingDiverged` at the first non-finite loss (or parameter)."""
    values = jax.device_get([losses for _, losses in self._pending])
    for (first, _), losses in zip(self._pending, values):
      bad = np.flatnonzero(~np.isfinite(losses))
      if bad.size:
        self._fail(f'the loss is {losses[bad[0]]} at step {first + bad[0]}',
                   first + bad[0])
    self._pending.clear()
    if state is not None and not _all_finite(state.params):
      self._fail(f'the parameters are not finite after step {int(state.step)}',
                 int(state.step) - 1)

  def _fail(self, what: str, step: int):
    self._ckpt.wait()
    kept = self._ckpt.all_steps()
    last = (f'the last good checkpoint, step {kept[-1]}, is kept' if kept
            else 'no checkpoint had been saved')
    raise TrainingDiverged(
        f'training diverged: {what} (learning rate '
        f'{float(self._schedule(step)):g}); stopped there and {last}. Lower '
        'learning_rate, or start again in a new --workdir')


def _all_finite(tree) -> bool:
  # On the host: a program for this costs 0.3 s of compilation in every run,
  # the copy a few ms at each checkpoint, which copies the parameters anyway.
  return all(np.isfinite(x).all()
             for x in jax.tree_util.tree_leaves(jax.device_get(tree)))


class _TrainClock:
  """Seconds spent in training steps: not compiling, evaluating or saving.

  Reading it waits for the device, so it is read only where the loop syncs
  anyway (log lines, evaluations, checkpoints).
  """

  def __init__(self, seconds: float = 0.0):
    self.seconds = seconds
    self._since = time.perf_counter()
    self._last_rate_at = None  # (step, seconds) of the last `rate`

  def read(self, state) -> float:
    jax.block_until_ready(state)
    now = time.perf_counter()
    self.seconds += now - self._since
    self._since = now
    return self.seconds

  def rate(self, state, step: int, batch_size: int) -> float | None:
    """Images per second since the last call; None at the first, before
    which the clock held only set-up."""
    seconds = self.read(state)
    last, self._last_rate_at = self._last_rate_at, (step, seconds)
    if last is None or seconds <= last[1]:
      return None
    return (step - last[0]) * batch_size / (seconds - last[1])

  @contextlib.contextmanager
  def paused(self, state):
    self.read(state)
    yield
    self._since = time.perf_counter()


def _dispatch_size(step: int, total_steps: int, chunk: int,
                   steps_per_epoch: int, every: tuple[int, ...]) -> int:
  """Steps in the next dispatch: up to `chunk`, ending at each multiple of
  `every` (evaluations, checkpoints), at the epoch's end and at the run's.
  Shorter dispatches are powers of two, so few lengths compile.
  """
  size = min(chunk, total_steps - step, steps_per_epoch - step % steps_per_epoch)
  for period in every:
    if period:
      size = min(size, period - step % period)
  return size if size == chunk else 1 << (size.bit_length() - 1)


def _speed(images_per_second: float | None, images_left: int) -> str:
  """' (N images/s, M:SS left)', or '' while the rate is unknown."""
  if not images_per_second:
    return ''
  minutes, seconds = divmod(round(images_left / images_per_second), 60)
  return f' ({images_per_second:.0f} images/s, {minutes}:{seconds:02d} left)'
