"""The training loop: a pure jitted `train_step`, `eval_step`, and `train_and_evaluate`.

Randomness comes only from `config.seed`: the state holds one root key; step
`s` drops out with `fold_in(dropout_key, s)` and epoch `e` is shuffled with
`fold_in(data_key, e)`. So a run resumed from a checkpoint computes exactly
what the uninterrupted run would have.
"""

import dataclasses
import functools
import json
import logging
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax.training import train_state

from flax_mnist import checkpoint
from flax_mnist import configs
from flax_mnist import input_pipeline
from flax_mnist import models
from flax_mnist.errors import ConfigError

logger = logging.getLogger(__name__)

# fold_in constants that split the root key into independent streams.
_INIT, _DROPOUT, _DATA = 0, 1, 2


class TrainState(train_state.TrainState):
  """Flax's TrainState plus the run's root PRNG key."""

  rng: jax.Array


def make_optimizer(config: configs.Config) -> optax.GradientTransformation:
  """The config's optimizer as an optax chain ending in the learning rate."""
  direction = {
      'sgd': [],
      'adam': [optax.scale_by_adam(b1=config.adam_b1, b2=config.adam_b2,
                                   eps=config.adam_eps)],
  }[config.optimizer]
  return optax.chain(*direction, optax.scale_by_learning_rate(config.learning_rate))


def create_train_state(config: configs.Config) -> TrainState:
  """A fresh state: parameters initialised from `config.seed`."""
  root = jax.random.PRNGKey(config.seed)
  model = models.create_model(config.model, dropout_rate=config.dropout_rate)
  params = models.init_params(model, jax.random.fold_in(root, _INIT))
  return TrainState.create(apply_fn=model.apply, params=params,
                           tx=make_optimizer(config), rng=root)


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


@jax.jit
def eval_step(state: TrainState, batch: dict[str, jax.Array]) -> dict[str, jax.Array]:
  """Sums of loss and correct predictions over the batch's real (masked-in) rows."""
  logits = state.apply_fn({'params': state.params}, batch['image'], train=False)
  losses = optax.softmax_cross_entropy_with_integer_labels(logits, batch['label'])
  mask = batch['mask']
  return {'loss_sum': jnp.sum(losses * mask),
          'correct': jnp.sum((jnp.argmax(logits, -1) == batch['label']) & mask),
          'count': jnp.sum(mask)}


def evaluate(state: TrainState, split: input_pipeline.Split, batch_size: int
             ) -> dict[str, float]:
  """Loss and accuracy over every example of `split` (padded by `to_device`)."""
  order = jnp.arange(len(split.labels_N))
  sums = [eval_step(state, input_pipeline.batch_at(split, order, i, batch_size))
          for i in range(len(order) // batch_size)]
  total = jax.device_get(jax.tree_util.tree_map(lambda *x: sum(x), *sums))
  count = int(total['count'])
  return {'test_accuracy': float(total['correct']) / count,
          'test_loss': float(total['loss_sum']) / count,
          'num_examples': count}


def train_and_evaluate(config: configs.Config, workdir: str,
                       data: input_pipeline.Mnist | None = None
                       ) -> tuple[TrainState, dict[str, Any]]:
  """Trains (resuming from `workdir`'s latest checkpoint) and evaluates.

  `data` defaults to `config.data_dir` (IDX files) or tensorflow-datasets.
  Returns the final state and the final test metrics.
  """
  if data is None:
    data = input_pipeline.load(config.data_dir, config.tfds_data_dir,
                               config.verify_data)
  num_train = len(data.train_labels)
  steps_per_epoch = config.steps_per_epoch(num_train)
  total_steps = config.total_steps(num_train)
  os.makedirs(workdir, exist_ok=True)
  train = input_pipeline.to_device(data.train_images, data.train_labels)
  test = input_pipeline.to_device(data.test_images, data.test_labels,
                                  config.eval_batch_size)
  metrics_log = MetricsLog(os.path.join(workdir, 'metrics.jsonl'))

  with checkpoint.Checkpointer(workdir, config.max_checkpoints) as ckpt:
    state, (epoch, index) = _start(config, ckpt, workdir)
    step = int(state.step)
    with open(os.path.join(workdir, 'config.json'), 'w') as f:
      json.dump(config.to_dict(), f, indent=2)
    dropout_key = jax.random.fold_in(state.rng, _DROPOUT)
    data_key = jax.random.fold_in(state.rng, _DATA)
    if step < total_steps:
      logger.info('training %s for %d steps (%d per epoch) from step %d',
                  config.model, total_steps, steps_per_epoch, step)
    order = None
    window_start, window_steps = time.perf_counter(), 0
    while step < total_steps:
      if index == steps_per_epoch:
        epoch, index = epoch + 1, 0
      if order is None or index == 0:
        order = input_pipeline.epoch_permutation(data_key, epoch, num_train)
      batch = input_pipeline.batch_at(train, order, index, config.batch_size)
      state, metrics = train_step(state, batch,
                                  jax.random.fold_in(dropout_key, step))
      step, index, window_steps = step + 1, index + 1, window_steps + 1
      if (step - 1) % config.log_every == 0:
        metrics = jax.device_get(metrics)
        # The first window of a process includes compilation: no rate for it.
        rate = (window_steps * config.batch_size /
                (time.perf_counter() - window_start)) if window_steps > 1 else None
        window_start, window_steps = time.perf_counter(), 0
        logger.info('step %d, training accuracy %g, loss %.4f%s', step - 1,
                    metrics['accuracy'], metrics['loss'],
                    _speed(rate, (total_steps - step) * config.batch_size))
        metrics_log.write(step=step - 1, train_accuracy=float(metrics['accuracy']),
                          train_loss=float(metrics['loss']), images_per_second=rate)
      if config.eval_every and step % config.eval_every == 0 and step < total_steps:
        _evaluate_and_log(state, test, config, metrics_log, step)
      if step % config.checkpoint_every == 0 or step == total_steps:
        ckpt.save(step, state, _record(config, epoch, index))
    ckpt.wait()
    results = _evaluate_and_log(state, test, config, metrics_log, step)
  return state, results


def _speed(images_per_second: float | None, images_left: int) -> str:
  """' (N images/s, M:SS left)', or '' while the rate is unknown."""
  if not images_per_second:
    return ''
  minutes, seconds = divmod(round(images_left / images_per_second), 60)
  return f' ({images_per_second:.0f} images/s, {minutes}:{seconds:02d} left)'


def _start(config: configs.Config, ckpt: checkpoint.Checkpointer, workdir: str
           ) -> tuple[TrainState, tuple[int, int]]:
  """The state and (epoch, batch index) to start from: the latest checkpoint's, or new."""
  if ckpt.latest_step() is None:
    return create_train_state(config), (0, 0)
  saved = configs.Config.from_dict(ckpt.restore_record()['config'])
  changed = [f'{f.name} {getattr(saved, f.name)!r} -> {getattr(config, f.name)!r}'
             for f in dataclasses.fields(config)
             if f.name not in configs.RESUMABLE_FIELDS
             and getattr(saved, f.name) != getattr(config, f.name)]
  if changed:
    raise ConfigError(
        f'{workdir} holds a run with another config ({"; ".join(changed)}); '
        'use a new --workdir, or change only: '
        f'{", ".join(sorted(configs.RESUMABLE_FIELDS))}')
  state, record = restore_state(ckpt, config)
  logger.info('resuming from the checkpoint at step %d', int(state.step))
  return state, tuple(record['data_position'])


def restore_state(ckpt: checkpoint.Checkpointer, config: configs.Config,
                  step: int | None = None) -> tuple[TrainState, dict]:
  """The state saved at `step` (default the latest) and its record."""
  abstract = jax.eval_shape(lambda: create_train_state(config))
  return ckpt.restore(abstract, step)


def _record(config: configs.Config, epoch: int, index: int) -> dict:
  return {'config': config.to_dict(), 'data_position': [epoch, index]}


def _evaluate_and_log(state, test, config, metrics_log, step) -> dict[str, Any]:
  results = {'step': step, **evaluate(state, test, config.eval_batch_size)}
  logger.info('step %d, test accuracy %g, test loss %.4f (%d images)', step,
              results['test_accuracy'], results['test_loss'],
              results['num_examples'])
  metrics_log.write(**results)
  return results


class MetricsLog:
  """Appends one JSON object per line to `path`, flushed at once."""

  def __init__(self, path: str):
    self.path = path

  def write(self, **values) -> None:
    with open(self.path, 'a') as f:
      f.write(json.dumps({'time': time.time(), **values}) + '\n')


def evaluate_workdir(workdir: str, data_dir: str | None = None,
                     tfds_data_dir: str | None = None, verify_data: bool = True
                     ) -> dict[str, Any]:
  """Test metrics of `workdir`'s latest checkpoint.

  Without `data_dir` or `tfds_data_dir`, reads the data the run was trained on.
  """
  with checkpoint.Checkpointer(workdir, read_only=True) as ckpt:
    config = configs.Config.from_dict(ckpt.restore_record()['config'])
    state, _ = restore_state(ckpt, config)
  if data_dir is None and tfds_data_dir is None:
    data_dir, tfds_data_dir = config.data_dir, config.tfds_data_dir
  data = input_pipeline.load(data_dir, tfds_data_dir, verify_data)
  test = input_pipeline.to_device(data.test_images, data.test_labels,
                                  config.eval_batch_size)
  return {'step': int(state.step), **evaluate(state, test, config.eval_batch_size)}
