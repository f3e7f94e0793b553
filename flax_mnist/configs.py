"""Training configs: one frozen dataclass, the tutorials' presets, overrides.

A preset is a function returning a `Config`; its docstring says the command,
the tutorial's figure and what was measured here. Every field can be changed
from Python (`dataclasses.replace(config, steps=2000)`) or from the command
line (`--set steps=2000`); both paths run the same validation. The module
runs over 300 lines for the presets' docstrings (command, tutorial figure,
measurements), kept beside each preset.
"""

import contextlib
import dataclasses
import functools
import math
import os
import typing
from typing import Callable, Iterable, Iterator

from flax_mnist import datasets
from flax_mnist import input_pipeline
from flax_mnist import models
from flax_mnist.errors import ConfigError, DataError, check_choice
from flax_mnist.models import DTYPES, MODELS

OPTIMIZERS = ('sgd', 'adam')
LR_SCHEDULES = ('constant', 'cosine')


def _resumable(default):
  """A field a resumed run may change: it does not alter what a step computes."""
  return dataclasses.field(default=default, metadata={'resumable': True})


@dataclasses.dataclass(frozen=True)
class Config:
  """Everything a training run depends on. Defaults are the `beginners` run.

  Fields made with `_resumable` may change when a run resumes; a setting the
  run would ignore (`adam_b1` with SGD, say) is refused.

  >>> Config(model='deep_cnn').dropout_rate  # the experts tutorial's keep_prob 0.5
  0.5
  >>> Config(warmup_steps=100)
  Traceback (most recent call last):
    ...
  flax_mnist.errors.ConfigError: warmup_steps 100 has no effect with lr_schedule 'constant' (leave it at 0)
  """

  model: str = 'softmax_regression'
  optimizer: str = 'sgd'
  learning_rate: float = 0.5
  # 'cosine': linear warmup to learning_rate, then cosine decay to 0 at the
  # run's last step.
  lr_schedule: str = 'constant'
  warmup_steps: int = 0
  adam_b1: float = 0.9
  adam_b2: float = 0.999
  adam_eps: float = 1e-8
  batch_size: int = 100
  # Length of the run: `steps` wins when both are set.
  steps: int | None = _resumable(1000)
  epochs: float | None = _resumable(None)
  # None: the model's tutorial default (models.DEFAULT_DROPOUT: 0.5 for
  # deep_cnn, 0 for the models without dropout).
  dropout_rate: float | None = None
  # Compute type of the layers; parameters and optimizer state stay float32.
  dtype: str = 'float32'
  # Training steps per jitted call (0: the backend's best, see
  # train.steps_per_dispatch); the result does not depend on it.
  steps_per_dispatch: int = _resumable(0)
  # Devices each batch is split over (data parallel; parallel.py): 0 for all
  # of them, of every process. The result does not depend on it beyond float
  # rounding, so a run may resume on another count.
  num_devices: int = _resumable(0)
  # Seed 1 is the median of the keras preset's seeds 0-4 (README).
  seed: int = 1
  log_every: int = _resumable(100)
  # 0 evaluates only at the end.
  eval_every: int = _resumable(0)
  checkpoint_every: int = _resumable(1000)
  max_checkpoints: int = _resumable(3)
  eval_batch_size: int = _resumable(1000)
  # What the data is ('mnist' or 'fashion_mnist', datasets.py) and where it
  # comes from: a folder of IDX files, else data_source: 'package' (MNIST's
  # files shipped in flax_mnist/data) or 'tfds' (in tfds_data_dir, default
  # tfds's own). Every source gives the same arrays. Configs saved before
  # `dataset` existed are MNIST's.
  dataset: str = 'mnist'
  data_dir: str | None = _resumable(None)
  data_source: str = _resumable('package')
  tfds_data_dir: str | None = _resumable(None)
  verify_data: bool = _resumable(True)

  def __post_init__(self):
    # Saved with the run, so they must mean the same from any directory.
    for name in ('data_dir', 'tfds_data_dir'):
      if isinstance(getattr(self, name), str) and getattr(self, name):
        object.__setattr__(self, name, os.path.abspath(getattr(self, name)))
    for field in dataclasses.fields(self):
      _check_type(field.name, getattr(self, field.name), _field_types()[field.name])
    check_choice('model', self.model, MODELS)
    check_choice('optimizer', self.optimizer, OPTIMIZERS)
    check_choice('lr_schedule', self.lr_schedule, LR_SCHEDULES)
    check_choice('dtype', self.dtype, DTYPES)
    check_choice('dataset', self.dataset, datasets.DATASETS)
    if self.dropout_rate is None:
      # Stored resolved, so a checkpoint's config says what ran.
      object.__setattr__(self, 'dropout_rate',
                         models.DEFAULT_DROPOUT[self.model] or 0.0)
    input_pipeline.check_source(self.data_source, self.data_dir, self.tfds_data_dir)
    positive = ['learning_rate', 'batch_size', 'log_every', 'checkpoint_every',
                'max_checkpoints', 'eval_batch_size', 'adam_eps']
    positive += [name for name in ('steps', 'epochs')
                 if getattr(self, name) is not None]
    for name in positive:
      if not getattr(self, name) > 0:
        raise ConfigError(f'{name} must be > 0, got {getattr(self, name)!r}')
    for field in dataclasses.fields(self):
      value = getattr(self, field.name)
      if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f'{field.name} must be finite, got {value}')
    if not 0 <= self.seed < 2**32:
      raise ConfigError(f'seed must be in [0, 2**32), got {self.seed}')
    for name in ('eval_every', 'warmup_steps', 'steps_per_dispatch', 'num_devices'):
      if getattr(self, name) < 0:
        raise ConfigError(f'{name} must be >= 0, got {getattr(self, name)}')
    if self.steps is None and self.epochs is None:
      raise ConfigError('set steps or epochs (both are None)')
    if not 0.0 <= self.dropout_rate < 1.0:
      raise ConfigError(
          f'dropout_rate must be in [0, 1), got {self.dropout_rate}')
    for name in ('adam_b1', 'adam_b2'):
      if not 0.0 <= getattr(self, name) < 1.0:
        raise ConfigError(f'{name} must be in [0, 1), got {getattr(self, name)}')
    self._refuse_settings_without_effect()

  def _refuse_settings_without_effect(self) -> None:
    """A setting the run would ignore is an error, not a surprise later.

    Fields left at their defaults pass: every preset and every saved config
    holds them.
    """
    models.check_dropout(self.model, self.dropout_rate)
    unused = []
    if self.optimizer != 'adam':
      unused += [(name, f'optimizer {self.optimizer!r}')
                 for name in ('adam_b1', 'adam_b2', 'adam_eps')]
    if self.lr_schedule == 'constant':
      unused.append(('warmup_steps', "lr_schedule 'constant'"))
    for name, reason in unused:
      value, default = getattr(self, name), _DEFAULTS[name]
      if value != default:
        raise ConfigError(f'{name} {value!r} has no effect with {reason} '
                          f'(leave it at {default!r})')

  @classmethod
  def resumable_fields(cls) -> tuple[str, ...]:
    """The fields a run resumed from a checkpoint may change."""
    return tuple(f.name for f in dataclasses.fields(cls)
                 if f.metadata.get('resumable'))

  def total_steps(self, num_train_examples: int) -> int:
    """The run's length in steps; epochs count whole batches only."""
    if self.steps is not None:
      return self.steps
    return math.ceil(self.epochs * self.steps_per_epoch(num_train_examples))

  def steps_per_epoch(self, num_train_examples: int) -> int:
    """Full batches in one pass: the last partial batch of each epoch is dropped."""
    if num_train_examples < self.batch_size:
      raise ConfigError(
          f'batch_size {self.batch_size} is larger than the training set '
          f'({num_train_examples} examples)')
    return num_train_examples // self.batch_size

  def to_dict(self) -> dict:
    return dataclasses.asdict(self)

  @classmethod
  def from_dict(cls, values: dict) -> 'Config':
    """A config from `to_dict` output; unknown keys are an error."""
    if not isinstance(values, dict):
      raise ConfigError(f'a config is a mapping of fields to values, got {values!r:.80}')
    unknown = set(values) - set(_field_types())
    if unknown:
      raise ConfigError(f'unknown config field(s) {", ".join(sorted(unknown))}; '
                        f'valid fields: {", ".join(_field_types())}')
    if 'data_source' not in values:
      values = _from_before_data_source(values)
    return cls(**values)


_DEFAULTS = {f.name: f.default for f in dataclasses.fields(Config)}


def _from_before_data_source(values: dict) -> dict:
  """A config saved before `data_source` existed, as it now reads.

  tfds was the default source then; the packaged files give the same arrays,
  so only a run that named a tfds data dir (and no IDX folder) stays on tfds.
  """
  if values.get('data_dir') is None and values.get('tfds_data_dir') is not None:
    return {**values, 'data_source': 'tfds'}
  return {**values, 'data_source': 'package', 'tfds_data_dir': None}


def beginners() -> Config:
  """'MNIST for ML beginners': softmax regression, SGD 0.5, batch 100, 1,000 steps.

  Command: flax-mnist train --preset beginners --workdir runs/beginners
  Tutorial: "about 92%".
  Measured here: 0.9164 test accuracy, 3.2-3.5 s wall time for the whole
  command with the compilation cache off (2 CPU cores, JAX 0.10.2, the
  packaged MNIST; 3.1 s on JAX 0.12); seed 0 gives 0.9167.
  On Fashion-MNIST (--set dataset=fashion_mnist): 0.7701 in 4.0 s; its
  brighter images want a lower rate (learning_rate=0.1: 0.8215).
  """
  return Config()


def experts() -> Config:
  """'Deep MNIST for experts': deep_cnn, Adam 1e-4, batch 50, 20,000 steps.

  Command: flax-mnist train --preset experts --workdir runs/experts
  Tutorial: 99.2%.
  Measured here: 0.9932 test accuracy, 34 min wall time on 2 CPU cores
  (about 500 images/s). With XLA's own pooling and convolution gradients
  (other float32 rounding): 0.9925 (seed 1) and 0.9907 (seed 0).
  On Fashion-MNIST (--set dataset=fashion_mnist): 0.9123 in 17.8 min.
  """
  return Config(model='deep_cnn', optimizer='adam', learning_rate=1e-4,
                batch_size=50, steps=20_000, dropout_rate=0.5,
                checkpoint_every=2_000)


def keras() -> Config:
  """The TF2 Keras CNN tutorial: keras_cnn, Adam 1e-3 (Keras defaults), batch 32, 5 epochs.

  Command: flax-mnist train --preset keras --workdir runs/keras
  Tutorial: 99.01%.
  Measured here: 0.9913 test accuracy, 45 s wall time (2 Xeon cores, Python
  3.12, jax 0.12); 0.9899 in 1.75 min on Python 3.11 before the VALID
  convolutions' input gradient became one matmul. With XLA's own pooling
  and convolution gradients (the same function, other float32 rounding)
  seeds 0-4 gave 0.9877, 0.9909, 0.9922, 0.9913, 0.9907 in 2.4 min: the
  default seed, 1, was their median.
  On Fashion-MNIST (--set dataset=fashion_mnist): 0.8950 in 80 s.
  """
  return Config(model='keras_cnn', optimizer='adam', learning_rate=1e-3,
                adam_eps=1e-7, batch_size=32, steps=None, epochs=5,
                checkpoint_every=1_875)


def fast() -> Config:
  """The least wall time to 99.2%: fast_cnn, batch 128, Adam (0.7, 0.9) to 6e-3, cosine, 2 epochs.

  Command: flax-mnist train --preset fast --workdir runs/fast
  Target: 99.2% in the least wall time on a CPU. A small network of its own
  (`models.FastCNN`, not a tutorial's), a 10% linear warmup to 6e-3 and
  cosine decay to 0 over 2 epochs of batch 128 (936 steps), Adam with betas
  (0.7, 0.9) as in MNIST speed records. Chosen from short runs of seeds 1
  and 2 (benchmarks/README.md): 2.5 epochs without the hidden layer fell
  short of 99.2% on one seed. On 10,000 held-out training examples
  (`fast_search.py --validation 10000`, seeds 1-5) 1.5, 1.75 and 2 epochs
  reach medians of 0.9894, 0.9901 and 0.9906, so 2 epochs it is.
  Measured here (Python 3.12, jax 0.12): on 2 Xeon cores seeds 1-5 give
  0.9929, 0.9916, 0.9933, 0.9928 and 0.9916 (median 0.9928), the whole
  command 11.1-11.7 s, or 15.2 s with an empty compilation cache; on 2 EPYC
  Zen 4 cores 0.9928, 0.9925, 0.9926, 0.9929 and 0.9921 (median 0.9926),
  15.4-21.5 s with an empty cache (medians 16.0-19.0 s in five sets of 5).
  """
  return Config(model='fast_cnn', optimizer='adam', learning_rate=6e-3,
                lr_schedule='cosine', warmup_steps=93, adam_b1=0.7, adam_b2=0.9,
                batch_size=128, steps=None, epochs=2, checkpoint_every=468)


PRESETS: dict[str, Callable[[], Config]] = {
    'beginners': beginners, 'experts': experts, 'keras': keras, 'fast': fast}


def get_preset(name: str) -> Config:
  """The preset called `name` (`PRESETS`).

  >>> config = get_preset('keras')
  >>> config.model, config.optimizer, config.batch_size, config.epochs
  ('keras_cnn', 'adam', 32, 5)
  """
  check_choice('preset', name, PRESETS)
  return PRESETS[name]()


def apply_overrides(config: Config, assignments: Iterable[str]) -> Config:
  """`config` with each 'KEY=VALUE' applied, values parsed by the field's type.

  >>> apply_overrides(Config(), ['steps=2_000', 'seed=0']).steps
  2000
  """
  types = _field_types()
  changes = {}
  for assignment in assignments:
    key, sep, text = assignment.partition('=')
    key = key.strip()
    if not sep:
      raise ConfigError(f'expected KEY=VALUE, got {assignment!r}')
    if key not in types:
      raise ConfigError(f'unknown config field {key!r}; valid fields: '
                        f'{", ".join(types)}')
    changes[key] = _parse(key, text.strip(), types[key])
  return dataclasses.replace(config, **changes)


@contextlib.contextmanager
def saved_data_source(workdir: str) -> Iterator[None]:
  """Says, in a `DataError` from within, that the data's place came from the
  run's saved config."""
  try:
    yield
  except DataError as e:
    raise DataError(f"{e} (the data source saved in {workdir}'s config: give "
                    '--data-dir or --tfds-data-dir to read another)') from None


@functools.cache
def _field_types() -> dict[str, object]:
  return typing.get_type_hints(Config)


def _base_types(annotation) -> tuple[type, ...]:
  return tuple(t for t in typing.get_args(annotation) or (annotation,))


def _parse(key: str, text: str, annotation):
  types = _base_types(annotation)
  if type(None) in types and text.lower() in ('none', 'null', ''):
    return None
  if bool in types:
    if text.lower() in ('true', '1', 'yes'):
      return True
    if text.lower() in ('false', '0', 'no'):
      return False
    raise ConfigError(f'{key} must be true or false, got {text!r}')
  for kind, name in ((int, 'an integer'), (float, 'a number')):
    if kind in types:
      try:
        return kind(text.replace('_', ''))
      except ValueError:
        raise ConfigError(f'{key} must be {name}, got {text!r}') from None
  return text


def _check_type(key: str, value, annotation) -> None:
  types = _base_types(annotation)
  if value is None and type(None) in types:
    return
  if isinstance(value, bool) and bool not in types:
    ok = False
  elif float in types and isinstance(value, int):
    ok = True
  else:
    ok = isinstance(value, tuple(t for t in types if t is not type(None)))
  if not ok:
    names = ' or '.join(t.__name__ for t in types)
    raise ConfigError(f'{key} must be {names}, got {value!r}')
