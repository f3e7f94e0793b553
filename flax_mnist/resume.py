"""Resuming and restoring: a workdir's checkpoints back into a `TrainState`.

A checkpoint holds the state and a record (the config, the training set's
size, the seconds trained). A run resumes only under a config that computes
the same steps: the fields marked resumable in `configs.Config` may change,
nothing else.
"""

import contextlib
import dataclasses
import logging

import jax

from flax_mnist import checkpoint
from flax_mnist import configs
from flax_mnist import core
from flax_mnist import input_pipeline
from flax_mnist import parallel
from flax_mnist.errors import ConfigError

logger = logging.getLogger(__name__)
logger.addFilter(parallel.PrimaryLogsOnly())

# What a checkpoint's record must hold to be restored.
RECORD = {'config': dict, 'num_train': int}


def record(config: configs.Config, num_train: int, step: int,
           train_seconds: float) -> dict:
  """The record saved beside each checkpoint's state.

  `data_position` (epoch, batch) follows from the step; it is kept for the
  readers of checkpoints written before it did.
  """
  return {'config': config.to_dict(), 'num_train': num_train,
          'data_position': list(divmod(step, config.steps_per_epoch(num_train))),
          'train_seconds': train_seconds}


def check_resumable(saved: configs.Config, config: configs.Config, step: int,
                    num_train: int, workdir: str) -> None:
  """Raises `ConfigError` unless `config` may resume `saved`'s run at `step`."""
  total = config.total_steps(num_train)
  if step > total:
    raise ConfigError(
        f'{workdir} is already at step {step}, past the {total} steps asked for: '
        'nothing to train (evaluate it with flax-mnist eval), or use a new '
        '--workdir to train a shorter run')
  if (saved.lr_schedule != 'constant' and
      saved.total_steps(num_train) != config.total_steps(num_train)):
    raise ConfigError(
        f'{workdir} holds a run whose {saved.lr_schedule} learning-rate schedule '
        f'ends at step {saved.total_steps(num_train)}: its length cannot change')
  resumable = configs.Config.resumable_fields()
  changed = [f'{f.name} {getattr(saved, f.name)!r} -> {getattr(config, f.name)!r}'
             for f in dataclasses.fields(config)
             if f.name not in resumable
             and getattr(saved, f.name) != getattr(config, f.name)]
  if changed:
    raise ConfigError(
        f'{workdir} holds a run with another config ({"; ".join(changed)}); '
        f'use a new --workdir, or change only: {", ".join(sorted(resumable))}')


def resume(config: configs.Config, ckpt: checkpoint.Checkpointer, workdir: str,
           dp: parallel.DataParallel) -> tuple[core.TrainState | None, dict | None]:
  """(None, None) for a new run, or the latest checkpoint's state and record."""
  step = ckpt.resume_step(move_damaged=parallel.is_primary())
  if step is None:
    return None, None
  latest = ckpt.restore_record(step, schema=RECORD)
  check_resumable(configs.Config.from_dict(latest['config']), config, step,
                  latest['num_train'], workdir)
  state, saved = restore_state(ckpt, config, step, dp=dp)
  logger.info('resuming from the checkpoint at step %d', int(state.step))
  return state, saved


def restore_state(ckpt: checkpoint.Checkpointer, config: configs.Config,
                  step: int | None = None,
                  dp: parallel.DataParallel = parallel.DataParallel()
                  ) -> tuple[core.TrainState, dict]:
  """The state saved at `step` (default the latest) and its record.

  The state goes on `dp`'s devices, whatever device count saved it.
  """
  num_train = ckpt.restore_record(step, schema=RECORD)['num_train']
  abstract = jax.eval_shape(lambda: core.create_train_state(config, num_train))
  return ckpt.restore(dp.abstract(abstract), step)


def restore_workdir(workdir: str) -> tuple[configs.Config, core.TrainState]:
  """The config and state of `workdir`'s latest checkpoint.

  >>> config, state = restore_workdir('runs/beginners')
  >>> config.model, int(state.step) == config.steps
  ('softmax_regression', True)
  """
  with checkpoint.Checkpointer(workdir, read_only=True) as ckpt:
    config = configs.Config.from_dict(ckpt.restore_record(schema=RECORD)['config'])
    state, _ = restore_state(ckpt, config)
  return config, state


def restore_with_data(workdir: str, **data_fields
                      ) -> tuple[configs.Config, core.TrainState, input_pipeline.Mnist]:
  """`workdir`'s latest config and state, and the data to evaluate it on
  (its test split only, where the files allow).

  `data_fields` (`data_dir`, `data_source`, `tfds_data_dir`, `verify_data`)
  replace the run's own; by default the data the run was trained on is read.
  """
  config, state = restore_workdir(workdir)
  source_fields = ('data_dir', 'data_source', 'tfds_data_dir')
  saved = not set(source_fields) & set(data_fields)
  if not saved:
    # A new source replaces the whole old one, whose other options are unset.
    defaults = configs.Config()
    data_fields = {**{name: getattr(defaults, name) for name in source_fields},
                   **data_fields}
  config = dataclasses.replace(config, **data_fields)
  with configs.saved_data_source(workdir) if saved else contextlib.nullcontext():
    return config, state, load_data(config, test_only=True)


def load_data(config: configs.Config, test_only: bool = False
              ) -> input_pipeline.Mnist:
  """The data `config` names: its dataset from its source (`test_only`: the
  test split, where the source allows)."""
  return input_pipeline.load(config.data_dir, config.tfds_data_dir,
                             config.verify_data, config.dataset,
                             config.data_source, test_only)
