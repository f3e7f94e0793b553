"""The training loop: a pure jitted `train_step`, `eval_step`, and `train_and_evaluate`.

Randomness comes only from `config.seed`: the state holds one root key; step
`s` drops out with `fold_in(dropout_key, s)` and epoch `e` is shuffled with
`fold_in(data_key, e)`. So a run resumed from a checkpoint computes exactly
what the uninterrupted run would have.
"""

import contextlib
import dataclasses
import functools
import json
import logging
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax.training import train_state

from flax_mnist import checkpoint
from flax_mnist import configs
from flax_mnist import input_pipeline
from flax_mnist import models
from flax_mnist import monitor
from flax_mnist import parallel
from flax_mnist import preemption
from flax_mnist import progress
from flax_mnist import workdirs
from flax_mnist.errors import (ConfigError, FlaxMnistError, TrainingDiverged,
                               TrainingStopped)

logger = logging.getLogger(__name__)
logger.addFilter(parallel.PrimaryLogsOnly())

# What a checkpoint's record must hold to be restored.
_RECORD = {'config': dict, 'num_train': int}

# fold_in constants that split the root key into independent streams.
_INIT, _DROPOUT, _DATA = 0, 1, 2


class TrainState(train_state.TrainState):
  """Flax's TrainState plus the run's root PRNG key."""

  rng: jax.Array


def learning_rate_schedule(config: configs.Config, total_steps: int
                           ) -> optax.Schedule:
  """The learning rate of each step: constant, or warmup then cosine decay."""
  if config.lr_schedule == 'constant':
    return optax.constant_schedule(config.learning_rate)
  return optax.warmup_cosine_decay_schedule(
      0.0, config.learning_rate, config.warmup_steps,
      max(total_steps, config.warmup_steps + 1))


def make_optimizer(config: configs.Config, total_steps: int
                   ) -> optax.GradientTransformation:
  """The config's optimizer as an optax chain ending in the learning rate."""
  direction = {
      'sgd': [],
      'adam': [optax.scale_by_adam(b1=config.adam_b1, b2=config.adam_b2,
                                   eps=config.adam_eps)],
  }[config.optimizer]
  if config.lr_schedule == 'constant':
    # Keeps the optimizer state of constant-rate checkpoints unchanged.
    rate = optax.scale_by_learning_rate(config.learning_rate)
  else:
    rate = optax.scale_by_learning_rate(learning_rate_schedule(config, total_steps))
  return optax.chain(*direction, rate)


def create_train_state(config: configs.Config, num_train: int = 60_000
                       ) -> TrainState:
  """A fresh state: parameters initialised from `config.seed`.

  `num_train` (the training set's size) sets the length of an epochs-based
  learning-rate schedule; nothing else depends on it.
  """
  root = jax.random.PRNGKey(config.seed)
  model = models.create_model(config.model, dropout_rate=config.dropout_rate,
                              dtype=config.dtype)
  params = models.init_params(model, jax.random.fold_in(root, _INIT))
  return TrainState.create(apply_fn=model.apply, params=params,
                           tx=make_optimizer(config, config.total_steps(num_train)),
                           rng=root)


def cross_entropy_loss(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Mean softmax cross-entropy of integer `labels` under `logits`."""
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


@functools.partial(jax.jit, donate_argnums=0)
def train_step(state: TrainState, batch: dict[str, jax.Array], rng: jax.Array
               ) -> tuple[TrainState, dict[str, jax.Array]]:
  """One optimizer step; metrics are those of the batch before the update."""

  def loss_fn(params):
    logits = state.apply_fn({'params': params}, batch['image'], train=True,
                            rngs={'dropout': rng})
    return cross_entropy_loss(logits, batch['label']), logits

  (loss, logits), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  accuracy = jnp.mean(jnp.argmax(logits, -1) == batch['label'])
  return state.apply_gradients(grads=grads), {'loss': loss, 'accuracy': accuracy}


@functools.partial(jax.jit, donate_argnums=0,
                   static_argnames=('num_steps', 'batch_size', 'steps_per_epoch',
                                    'batch_sharding'))
def train_steps(state: TrainState, train: input_pipeline.Split,
                orders_2N: jax.Array, index: int | jax.Array,
                dropout_key: jax.Array, *, num_steps: int, batch_size: int,
                steps_per_epoch: int,
                batch_sharding: jax.sharding.Sharding | None = None
                ) -> tuple[TrainState, dict[str, jax.Array]]:
  """`num_steps` train steps in one dispatch, from batch `index` of an epoch.

  `orders_2N` holds this epoch's order and the next one's, so the steps may
  cross one epoch boundary (`num_steps <= steps_per_epoch`). Step `s` drops
  out with `fold_in(dropout_key, s)`, as the step-by-step loop does. Returns
  the metrics of every step, stacked. With `batch_sharding` each batch is
  split over its devices and the metrics are the global batch's.
  """

  def one_step(state, position):
    # One slice of the flattened orders: indexing a row first would copy it.
    start = ((position // steps_per_epoch) * orders_2N.shape[1] +
             (position % steps_per_epoch) * batch_size)
    ids = jax.lax.dynamic_slice_in_dim(orders_2N.reshape(-1), start, batch_size)
    batch = input_pipeline.gather(train, ids, batch_sharding)
    return train_step(state, batch, jax.random.fold_in(dropout_key, state.step))

  if num_steps == 1:
    # XLA:CPU runs a step 25% slower inside a one-trip loop than outside it.
    state, metrics = one_step(state, index)
    return state, jax.tree_util.tree_map(lambda x: x[None], metrics)
  return jax.lax.scan(one_step, state, index + jnp.arange(num_steps))


def steps_per_dispatch(config: configs.Config) -> int:
  """`config.steps_per_dispatch`, or the default measured best for the backend.

  Accelerators idle between small dispatches, so they run up to 100 steps per
  call. XLA:CPU runs a convolutional step inside `lax.scan` 10-30% slower than
  on its own (benchmarks/README.md), and the convolutions take far longer than
  a dispatch, so there the CNNs go step by step and softmax regression, whose
  step is shorter than its dispatch, 100 at a time.
  """
  if config.steps_per_dispatch:
    return config.steps_per_dispatch
  if jax.default_backend() == 'cpu' and config.model != 'softmax_regression':
    return 1
  return 100


@jax.jit
def eval_step(state: TrainState, batch: dict[str, jax.Array]) -> dict[str, jax.Array]:
  """Sums of loss and correct predictions over the batch's real (masked-in) rows."""
  logits = state.apply_fn({'params': state.params}, batch['image'], train=False)
  losses = optax.softmax_cross_entropy_with_integer_labels(logits, batch['label'])
  mask = batch['mask']
  return {'loss_sum': jnp.sum(losses * mask),
          'correct': jnp.sum((jnp.argmax(logits, -1) == batch['label']) & mask),
          'count': jnp.sum(mask)}


@jax.jit
def _add(a: Any, b: Any) -> Any:
  return jax.tree_util.tree_map(jnp.add, a, b)


def evaluate(state: TrainState, split: input_pipeline.Split, batch_size: int,
             progress_bar: bool = False) -> dict[str, float]:
  """Loss and accuracy over every example of `split` (padded by `to_device`).

  A split replicated over a mesh (`DataParallel.replicate`) is evaluated with
  each batch split over the mesh's devices.
  """
  if len(split.labels_N) % batch_size:
    raise ValueError(f'{len(split.labels_N)} rows do not split into batches of '
                     f'{batch_size}: pad with to_device(..., multiple={batch_size})')
  dp = parallel.DataParallel.of(split.labels_N)
  if batch_size % dp.size:
    raise ValueError(f'batches of {batch_size} do not split over {dp.size} devices')
  order = dp.replicate(np.arange(len(split.labels_N)))
  count = len(split.labels_N) // batch_size
  in_flight, total = parallel.InFlight(), None
  with progress.bar(progress_bar, count, 'evaluating', 'batches', leave=False) as bar:
    for i in range(count):
      sums = eval_step(state, input_pipeline.batch_at(split, order, i, batch_size,
                                                      dp.batch))
      total = sums if total is None else _add(total, sums)
      in_flight.add(total)
      bar.update(1)
  total = jax.device_get(total)
  count = int(total['count'])
  return {'test_accuracy': float(total['correct']) / count,
          'test_loss': float(total['loss_sum']) / count,
          'num_examples': count}


def _test_split(data: input_pipeline.Mnist, config: configs.Config,
                dp: parallel.DataParallel = parallel.DataParallel()
                ) -> tuple[input_pipeline.Split, int]:
  """The test split on device, padded for the eval batch size, and that size.

  The eval batch is rounded up to split over `dp`'s devices: padded rows are
  not counted, so the results do not change.
  """
  batch_size = -(-min(config.eval_batch_size, len(data.test_labels)) // dp.size) * dp.size
  return (input_pipeline.to_device(data.test_images, data.test_labels, batch_size,
                                   dp.replicated), batch_size)


def train_and_evaluate(config: configs.Config, workdir: str,
                       data: input_pipeline.Mnist | None = None, *,
                       progress_bar: bool = False
                       ) -> tuple[TrainState, dict[str, Any]]:
  """Trains (resuming from `workdir`'s latest checkpoint) and evaluates.

  `data` defaults to the config's source (`input_pipeline.load`).
  Figures go to the log, `metrics.jsonl` and TensorBoard (`monitor`), and to
  terminal progress bars with `progress_bar`. Returns the final state and the
  final test metrics.
  """
  try:
    os.makedirs(workdir, exist_ok=True)
  except OSError as e:
    raise FlaxMnistError(f'{workdir}: cannot create the workdir ({e.strerror})') from None
  dp = parallel.DataParallel.create(config.num_devices, config.batch_size)
  primary = parallel.is_primary()
  # Only the first process writes the run's files; orbax saves from all.
  with (workdirs.locked(workdir) if primary else contextlib.nullcontext(),
        checkpoint.Checkpointer(workdir, config.max_checkpoints) as ckpt,
        monitor.TrainMonitor(workdir, progress_bar, primary) as log):
    # A refused resume should not wait for the data to load.
    state, record = _start(config, ckpt, workdir, dp)
    if data is None:
      data = _load_data(config)
    num_train = len(data.train_labels)
    if record and record['num_train'] != num_train:
      raise FlaxMnistError(
          f'{workdir} was trained on {record["num_train"]} examples, this data '
          f'has {num_train}: resume with the same data, or use a new --workdir')
    if state is None:
      state = dp.replicate(create_train_state(config, num_train))
    if primary:
      workdirs.check_room(workdir, state, config.max_checkpoints,
                          len(ckpt.all_steps()))
    epoch, index = record['data_position'] if record else (0, 0)
    step = int(state.step)
    if primary:
      workdirs.write_atomically(os.path.join(workdir, 'config.json'),
                                json.dumps(config.to_dict(), indent=2))
    steps_per_epoch = config.steps_per_epoch(num_train)
    total_steps = config.total_steps(num_train)
    log.start(config, step, total_steps)
    train = input_pipeline.to_device(data.train_images, data.train_labels,
                                     sharding=dp.replicated)
    test, eval_batch_size = _test_split(data, config, dp)
    if dp.size > 1:
      logger.info('each batch split over %d %s devices (%d processes)', dp.size,
                  jax.default_backend(), jax.process_count())
    # Compiled now: run eagerly at the first log line, its many small ops
    # would each compile there, inside the training time.
    schedule = jax.jit(learning_rate_schedule(config, total_steps))
    schedule(step)
    dropout_key = jax.random.fold_in(state.rng, _DROPOUT)
    data_key = jax.random.fold_in(state.rng, _DATA)
    if step < total_steps:
      logger.info('training %s for %d steps (%d per epoch) from step %d',
                  config.model, total_steps, steps_per_epoch, step)
    if dp.size > 1:
      logger.info('each batch split over %d %s devices (%d processes)', dp.size,
                  jax.default_backend(), jax.process_count())
    chunk = steps_per_dispatch(config)
    in_flight = parallel.InFlight()
    orders_epoch, orders = None, None
    clock = _TrainClock(record.get('train_seconds', 0.0) if record else 0.0)
    compiled, compile_seconds = set(), 0.0
    last_log = None
    finite = _FiniteCheck(ckpt, schedule)
    saved = ckpt.latest_step()
    in_flight = parallel.InFlight()

    def save():
      nonlocal saved
      with clock.paused(state):
        finite.check(state)
        ckpt.save(step, state, {'config': config.to_dict(), 'num_train': num_train,
                                'data_position': [epoch, index],
                                'train_seconds': clock.seconds})
      saved = step

    with preemption.StopRequest() as stop:
      dispatches = 0
      while step < total_steps and not stop.requested(dispatches):
        dispatches += 1
        if index == steps_per_epoch:
          epoch, index = epoch + 1, 0
        if orders_epoch != epoch:
          orders_epoch = epoch
          orders = jnp.stack([input_pipeline.epoch_permutation(data_key, e, num_train)
                              for e in (epoch, epoch + 1)])
        num_steps = _dispatch_size(step, total_steps, chunk, steps_per_epoch,
                                   (config.eval_every, config.checkpoint_every))
        args = (state, train, orders, index, dropout_key)
        kwargs = dict(num_steps=num_steps, batch_size=config.batch_size,
                      steps_per_epoch=steps_per_epoch, batch_sharding=dp.batch)
        if num_steps in compiled:
          state, metrics = train_steps(*args, **kwargs)
        else:
          # A new dispatch length's compilation and first run (GPU module
          # loading, autotuning) count as compile time, not training time.
          with clock.paused(state):
            start = time.perf_counter()
            state, metrics = jax.block_until_ready(train_steps(*args, **kwargs))
            compile_seconds += time.perf_counter() - start
          compiled.add(num_steps)
        in_flight.add(metrics)
        finite.add(step, metrics['loss'])
        first, step, index = step, step + num_steps, index + num_steps
        if index > steps_per_epoch:
          epoch, index = epoch + 1, index - steps_per_epoch
        logged = range(-first % config.log_every, num_steps, config.log_every)
        if len(logged):
          finite.check()
          metrics = jax.device_get(metrics)
          seconds = clock.read(state)
          # The first line has no rate: before it the clock held only set-up.
          rate = ((step - last_log[0]) * config.batch_size / (seconds - last_log[1])
                  if last_log and seconds > last_log[1] else None)
          last_log = (step, seconds)
          for i in logged:
            logger.info('step %d, training accuracy %g, loss %.4f%s', first + i,
                        metrics['accuracy'][i], metrics['loss'][i],
                        _speed(rate, (total_steps - step) * config.batch_size))
            log.train_metrics(step=first + i,
                              train_accuracy=float(metrics['accuracy'][i]),
                              train_loss=float(metrics['loss'][i]),
                              learning_rate=float(schedule(first + i)),
                              images_per_second=rate)
        if config.eval_every and step % config.eval_every == 0 and step < total_steps:
          with clock.paused(state):
            finite.check()
            _evaluate_and_log(state, test, eval_batch_size, log, step,
                              train_seconds=clock.seconds)
        if step % config.checkpoint_every == 0 or step == total_steps:
          save()
      if stop.signal_number is not None:
        if saved != step:
          save()
        ckpt.wait()
        raise TrainingStopped(
            f'stopped by {stop.name} at step {step}; its checkpoint is saved in '
            f'{ckpt.directory}: run the same command to resume',
            stop.signal_number)
    ckpt.wait()
    results = _evaluate_and_log(state, test, eval_batch_size, log, step,
                                train_seconds=clock.read(state),
                                compile_seconds=compile_seconds)
  return state, results


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

  def check(self, state: TrainState | None = None) -> None:
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


@jax.jit
def _all_finite(tree) -> jax.Array:
  return jnp.all(jnp.array([jnp.all(jnp.isfinite(x))
                            for x in jax.tree_util.tree_leaves(tree)]))


class _TrainClock:
  """Seconds spent in training steps: not compiling, evaluating or saving.

  Reading it waits for the device, so it is read only where the loop syncs
  anyway (log lines, evaluations, checkpoints).
  """

  def __init__(self, seconds: float = 0.0):
    self.seconds = seconds
    self._since = time.perf_counter()

  def read(self, state) -> float:
    jax.block_until_ready(state)
    now = time.perf_counter()
    self.seconds += now - self._since
    self._since = now
    return self.seconds

  @contextlib.contextmanager
  def paused(self, state):
    self.read(state)
    yield
    self._since = time.perf_counter()


def _dispatch_size(step: int, total_steps: int, chunk: int,
                   steps_per_epoch: int, every: tuple[int, ...]) -> int:
  """Steps in the next dispatch: up to `chunk`, ending at each multiple of
  `every` (evaluations, checkpoints) and at the run's end, and within one
  epoch boundary. Shorter dispatches are powers of two, so few lengths compile.
  """
  size = min(chunk, total_steps - step, steps_per_epoch)
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


def _start(config: configs.Config, ckpt: checkpoint.Checkpointer, workdir: str,
           dp: parallel.DataParallel) -> tuple[TrainState, dict | None]:
  """(None, None) for a new run, or the latest checkpoint's state and record."""
  if ckpt.latest_step() is None:
    return None, None
  latest = ckpt.restore_record(schema=_RECORD | {'data_position': list})
  saved, num_train = configs.Config.from_dict(latest['config']), latest['num_train']
  if (saved.lr_schedule != 'constant' and
      saved.total_steps(num_train) != config.total_steps(num_train)):
    raise ConfigError(
        f'{workdir} holds a run whose {saved.lr_schedule} learning-rate schedule '
        f'ends at step {saved.total_steps(num_train)}: its length cannot change')
  changed = [f'{f.name} {getattr(saved, f.name)!r} -> {getattr(config, f.name)!r}'
             for f in dataclasses.fields(config)
             if f.name not in configs.RESUMABLE_FIELDS
             and getattr(saved, f.name) != getattr(config, f.name)]
  if changed:
    raise ConfigError(
        f'{workdir} holds a run with another config ({"; ".join(changed)}); '
        'use a new --workdir, or change only: '
        f'{", ".join(sorted(configs.RESUMABLE_FIELDS))}')
  state, record = restore_state(ckpt, config, dp=dp)
  logger.info('resuming from the checkpoint at step %d', int(state.step))
  return state, record


def restore_state(ckpt: checkpoint.Checkpointer, config: configs.Config,
                  step: int | None = None,
                  dp: parallel.DataParallel = parallel.DataParallel()
                  ) -> tuple[TrainState, dict]:
  """The state saved at `step` (default the latest) and its record.

  The state goes on `dp`'s devices, whatever device count saved it.
  """
  num_train = ckpt.restore_record(step, schema=_RECORD)['num_train']
  abstract = jax.eval_shape(lambda: create_train_state(config, num_train))
  return ckpt.restore(dp.abstract(abstract), step)


def restore_workdir(workdir: str) -> tuple[configs.Config, TrainState]:
  """The config and state of `workdir`'s latest checkpoint."""
  with checkpoint.Checkpointer(workdir, read_only=True) as ckpt:
    config = configs.Config.from_dict(ckpt.restore_record(schema=_RECORD)['config'])
    state, _ = restore_state(ckpt, config)
  return config, state


def _evaluate_and_log(state, test, batch_size, log: monitor.TrainMonitor, step,
                      **timings) -> dict[str, Any]:
  results = {'step': step, **evaluate(state, test, batch_size, log.progress_bar),
             **timings}
  logger.info('step %d, test accuracy %g, test loss %.4f (%d images)', step,
              results['test_accuracy'], results['test_loss'],
              results['num_examples'])
  log.test_metrics(state, test, batch_size, results)
  return results


def restore_with_data(workdir: str, **data_fields
                      ) -> tuple[configs.Config, TrainState, input_pipeline.Mnist]:
  """`workdir`'s latest config and state, and the data to evaluate it on.

  `data_fields` (`data_dir`, `data_source`, `tfds_data_dir`, `verify_data`)
  replace the run's own; by default the data the run was trained on is read.
  """
  config, state = restore_workdir(workdir)
  source_fields = ('data_dir', 'data_source', 'tfds_data_dir')
  if set(source_fields) & set(data_fields):
    # A new source replaces the whole old one, whose other options are unset.
    defaults = configs.Config()
    data_fields = {**{name: getattr(defaults, name) for name in source_fields},
                   **data_fields}
  config = dataclasses.replace(config, **data_fields)
  return config, state, _load_data(config)


def _load_data(config: configs.Config) -> input_pipeline.Mnist:
  return input_pipeline.load(config.data_dir, config.tfds_data_dir,
                             config.verify_data, config.dataset,
                             config.data_source)


def evaluate_workdir(workdir: str, *, progress_bar: bool = False, **data_fields
                     ) -> dict[str, Any]:
  """Test metrics of `workdir`'s latest checkpoint, on the data that
  `restore_with_data` picks."""
  config, state, data = restore_with_data(workdir, **data_fields)
  test, batch_size = _test_split(data, config)
  return {'step': int(state.step), **evaluate(state, test, batch_size, progress_bar)}
