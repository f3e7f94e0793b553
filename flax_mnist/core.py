"""The pure core of training: the state, its optimizer, and the train steps.

Randomness comes only from the state's root key (`create_train_state`'s
`key`, by default `config.seed`'s): step `s` drops out with
`fold_in(state.dropout_key, s)`, folded in inside the step as Flax's wmt
example does, and epoch `e` is shuffled with `fold_in(state.data_key, e)`
(`input_pipeline.train_batch`). So a hand-written loop over `train_step`, a
run resumed from a checkpoint and an uninterrupted `train_and_evaluate` all
compute the same steps.
"""

import functools

import jax
import jax.numpy as jnp
import optax
from flax.training import train_state

from flax_mnist import configs
from flax_mnist import input_pipeline
from flax_mnist import inputs
from flax_mnist import models

# fold_in constants that split the root key into independent streams.
_INIT, _DROPOUT, _DATA = 0, 1, 2

# The initial state is computed once, so LLVM's O1 is enough on CPU: a CNN's
# state compiles in 0.3-0.7 s instead of 0.9-1.7 s on 2 cores, to bitwise the same
# values (tests/test_train.py).
_INIT_CPU_COMPILER_OPTIONS = {'xla_backend_optimization_level': 1}


class TrainState(train_state.TrainState):
  """Flax's TrainState plus the run's root PRNG key, from which every
  stream of randomness is derived.

  >>> state = create_train_state(configs.get_preset('beginners'))
  >>> int(state.step), state.rng.shape, state.data_key.shape
  (0, (2,), (2,))
  """

  rng: jax.Array

  @property
  def dropout_key(self) -> jax.Array:
    """The key `train_step` folds each step's number into."""
    return jax.random.fold_in(self.rng, _DROPOUT)

  @property
  def data_key(self) -> jax.Array:
    """The key of the epochs' shuffles (`input_pipeline.train_batch`)."""
    return jax.random.fold_in(self.rng, _DATA)


def learning_rate_schedule(config: configs.Config, total_steps: int
                           ) -> optax.Schedule:
  """The learning rate of each step: constant, or warmup then cosine decay.

  >>> schedule = learning_rate_schedule(configs.get_preset('fast'), 936)
  >>> [round(float(schedule(s)), 6) for s in (0, 93, 936)]
  [0.0, 0.006, 0.0]
  """
  if config.lr_schedule == 'constant':
    return optax.constant_schedule(config.learning_rate)
  return optax.warmup_cosine_decay_schedule(
      0.0, config.learning_rate, config.warmup_steps,
      max(total_steps, config.warmup_steps + 1))


def make_optimizer(config: configs.Config, total_steps: int
                   ) -> optax.GradientTransformation:
  """The config's optimizer as an optax chain ending in the learning rate.

  >>> tx = make_optimizer(configs.get_preset('keras'), 1000)  # Adam, Keras's eps
  >>> type(tx.init({'w': jnp.zeros(3)})[0]).__name__
  'ScaleByAdamState'
  """
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


def create_train_state(config: configs.Config, num_train: int = 60_000, *,
                       key: jax.Array | None = None) -> TrainState:
  """A fresh state: parameters initialised from `key` (default: the config's seed).

  `num_train` (the training set's size) sets the length of an epochs-based
  learning-rate schedule; nothing else depends on it.

  >>> state = create_train_state(configs.get_preset('beginners'))
  >>> int(state.step), state.params['dense']['kernel'].shape
  (0, (784, 10))
  """
  root = jax.random.PRNGKey(config.seed) if key is None else key
  model = models.create_model(config.model, dropout_rate=config.dropout_rate,
                              dtype=config.dtype)
  tx = make_optimizer(config, config.total_steps(num_train))

  # One compiled program: run op by op, the initialisers and the optimizer's
  # zeros compile some 60 tiny programs, about 2 s on 2 CPU cores. The values
  # are bitwise the same.
  def create(root):
    params = models.init_params(model, jax.random.fold_in(root, _INIT))
    return TrainState.create(apply_fn=model.apply, params=params, tx=tx, rng=root)

  on_cpu = jax.default_backend() == 'cpu'
  options = _INIT_CPU_COMPILER_OPTIONS if on_cpu and not _staged() else None
  return jax.jit(create, compiler_options=options)(root)


def _staged() -> bool:
  """Whether this call is being traced into a program (`jax.jit`,
  `jax.eval_shape`), where jax refuses a nested jit's compiler options."""
  return isinstance(jax.device_put(0), jax.core.Tracer)


def cross_entropy_loss(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Mean softmax cross-entropy of integer `labels` under `logits`.

  >>> float(cross_entropy_loss(jnp.zeros((2, 10)), jnp.array([3, 7])))  # log(10)
  2.302585...
  """
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def _train_step(state: TrainState, batch: dict[str, jax.Array],
                dropout_key: jax.Array) -> tuple[TrainState, dict[str, jax.Array]]:
  """The step itself: pure, traced by `train_step` and by `train_steps`."""
  rng = jax.random.fold_in(dropout_key, state.step)

  def loss_fn(params):
    logits = state.apply_fn({'params': params}, batch['image'], train=True,
                            rngs={'dropout': rng})
    return cross_entropy_loss(logits, batch['label']), logits

  (loss, logits), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  accuracy = jnp.mean(jnp.argmax(logits, -1) == batch['label'])
  return state.apply_gradients(grads=grads), {'loss': loss, 'accuracy': accuracy}


# XLA:CPU vectorizes with 256-bit registers unless told otherwise. 512 bits
# (where the CPU has them) make softmax regression's train step 4-6% faster
# on 2 Xeon cores, bit for bit the same; other backends ignore the option.
_COMPILER_OPTIONS = {'xla_cpu_prefer_vector_width': 512}
_jitted_train_step = jax.jit(_train_step, compiler_options=_COMPILER_OPTIONS)


def train_step(state: TrainState, batch: dict[str, jax.Array],
               dropout_key: jax.Array | None = None
               ) -> tuple[TrainState, dict[str, jax.Array]]:
  """One optimizer step on `batch` (`'image'`, `'label'`); its metrics are
  those of the batch before the update.

  Step `s` drops out with `fold_in(dropout_key, s)` (default key:
  `state.dropout_key`), so passing the same key every step is right, and a
  loop over `input_pipeline.train_batch` ends where `train_and_evaluate`
  does, bit for bit. `state` is not donated: the caller may keep it.

  >>> import numpy as np
  >>> state = create_train_state(configs.get_preset('beginners'))
  >>> batch = {'image': np.zeros((100, 784), np.float32), 'label': np.zeros(100, int)}
  >>> new, metrics = train_step(state, batch)
  >>> int(new.step), float(metrics['accuracy'])  # zero weights: ties go to digit 0
  (1, 1.0)
  """
  images = inputs.model_input(batch['image'], "batch['image']")
  batch = {'image': images,
           'label': inputs.labels(batch['label'], len(images), "batch['label']")}
  key = state.dropout_key if dropout_key is None else dropout_key
  return _jitted_train_step(state, batch, key)


@functools.partial(jax.jit, donate_argnums=0, compiler_options=_COMPILER_OPTIONS,
                   static_argnames=('num_steps', 'batch_size', 'batch_sharding'))
def train_steps(state: TrainState, epoch: input_pipeline.Split,
                index: int | jax.Array, *, num_steps: int, batch_size: int,
                batch_sharding: jax.sharding.Sharding | None = None
                ) -> tuple[TrainState, dict[str, jax.Array]]:
  """The loop's fast path: `num_steps` train steps in one dispatch, from
  batch `index` of `epoch`, `state` donated.

  `epoch` is the training split in that epoch's order
  (`input_pipeline.ShuffledEpochs`), and the steps stay inside it. Each step
  is `train_step`'s, on `input_pipeline.train_batch`'s batch. Returns the
  metrics of every step, stacked. With `batch_sharding` each batch is split
  over its devices and the metrics are the global batch's.
  """

  def one_step(state, position):
    batch = input_pipeline.batch_slice(epoch, position, batch_size, batch_sharding)
    return _train_step(state, batch, state.dropout_key)

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
