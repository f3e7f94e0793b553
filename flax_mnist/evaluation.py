"""Evaluation: one forward pass and its metrics, for every caller.

`forward` is the model in evaluation mode; `eval_step` adds the loss and
correct counts of a batch. `evaluate` runs them over plain arrays of any
length (padding them itself), and `evaluate_split` over a split on the
device, keeping the logits when asked: the training loop's evaluations, the
TensorBoard mistakes, `report` and `Predictor` all use this one path.
"""

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from flax_mnist import configs
from flax_mnist import input_pipeline
from flax_mnist import inputs
from flax_mnist import parallel
from flax_mnist import progress
from flax_mnist import resume


def forward(apply_fn, params, images: jax.Array) -> jax.Array:
  """The logits of `images` (any of `inputs`' kinds), with dropout off."""
  return apply_fn({'params': params}, images, train=False)


@jax.jit
def _eval_batch(state, batch: dict[str, jax.Array]
                ) -> tuple[dict[str, jax.Array], jax.Array]:
  logits = forward(state.apply_fn, state.params, batch['image'])
  losses = optax.softmax_cross_entropy_with_integer_labels(logits, batch['label'])
  mask = batch['mask'] if 'mask' in batch else jnp.ones(len(logits), bool)
  sums = {'loss_sum': jnp.sum(losses * mask),
          'correct': jnp.sum((jnp.argmax(logits, -1) == batch['label']) & mask),
          'count': jnp.sum(mask)}
  return sums, logits


def eval_step(state, batch: dict[str, Any]) -> dict[str, jax.Array]:
  """Sums of loss and correct predictions over `batch`'s rows: `'image'`,
  `'label'` and, for padded batches, `'mask'` (False rows are not counted).

  >>> import numpy as np
  >>> from flax_mnist import configs, core
  >>> state = core.create_train_state(configs.get_preset('beginners'))
  >>> sums = eval_step(state, {'image': np.zeros((4, 28, 28), np.uint8),
  ...                          'label': np.array([0, 0, 1, 2])})
  >>> int(sums['correct']), int(sums['count'])  # zero weights answer 0
  (2, 4)
  """
  images = inputs.model_input(batch['image'], "batch['image']")
  checked = {'image': images,
             'label': inputs.labels(batch['label'], len(images), "batch['label']")}
  if 'mask' in batch:
    checked['mask'] = jnp.asarray(batch['mask'], bool)
  return _eval_batch(state, checked)[0]


@functools.partial(jax.jit, static_argnames=('batch_size', 'sharding'))
def _eval_slice(state, split: input_pipeline.Split, index: int, total: Any,
                batch_size: int, sharding: jax.sharding.Sharding | None
                ) -> tuple[dict[str, jax.Array], jax.Array]:
  """`total` plus the sums of `split`'s batch `index`, and its logits: one
  program, where the slice, the batch and the sum would compile three."""
  sums, logits = _eval_batch(
      state, input_pipeline.batch_slice(split, index, batch_size, sharding))
  return jax.tree_util.tree_map(jnp.add, total, sums), logits


@dataclasses.dataclass(frozen=True)
class Evaluation:
  """`metrics` (accuracy, loss, num_examples) and, when kept, the (N, 10)
  float32 logits and (N,) labels of the real (unpadded) examples."""

  metrics: dict[str, float]
  logits_NC: np.ndarray | None = None
  labels_N: np.ndarray | None = None


def evaluate_split(state, split: input_pipeline.Split, batch_size: int, *,
                   progress_bar: bool = False, keep_logits: bool = False
                   ) -> Evaluation:
  """Loss and accuracy over every example of `split` (padded by `to_device`
  to a multiple of `batch_size`).

  A split replicated over a mesh (`DataParallel.replicate`) is evaluated with
  each batch split over the mesh's devices; its logits can be kept only in a
  single-process run.
  """
  if len(split.labels_N) % batch_size:
    raise ValueError(f'{len(split.labels_N)} rows do not split into batches of '
                     f'{batch_size}: pad with to_device(..., multiple={batch_size})')
  dp = parallel.DataParallel.of(split.labels_N)
  if batch_size % dp.size:
    raise ValueError(f'batches of {batch_size} do not split over {dp.size} devices')
  count = len(split.labels_N) // batch_size
  in_flight, logits = parallel.InFlight(), []
  total = {'loss_sum': np.float32(0), 'correct': np.int32(0), 'count': np.int32(0)}
  with progress.bar(progress_bar, count, 'evaluating', 'batches', leave=False) as bar:
    for i in range(count):
      total, batch_logits = _eval_slice(state, split, i, total, batch_size, dp.batch)
      if keep_logits:
        logits.append(batch_logits)
      in_flight.add(total)
      bar.update(1)
  total = jax.device_get(total)
  count = int(total['count'])
  metrics = {'accuracy': float(total['correct']) / count,
             'loss': float(total['loss_sum']) / count, 'num_examples': count}
  if not keep_logits:
    return Evaluation(metrics)
  real = np.asarray(split.mask_N)
  return Evaluation(metrics,
                    np.concatenate(jax.device_get(logits)).astype(np.float32)[real],
                    np.asarray(split.labels_N)[real])


def padded_split(images, labels, batch_size: int,
                 dp: parallel.DataParallel = parallel.DataParallel()
                 ) -> tuple[input_pipeline.Split, int]:
  """`images` and `labels` on `dp`'s devices, padded for evaluation, and the
  batch size to evaluate them with.

  The batch is at most the examples' count, rounded up to split over `dp`'s
  devices: padded rows are not counted, so the results do not change.
  """
  batch_size = -(-min(batch_size, max(len(labels), 1)) // dp.size) * dp.size
  return (input_pipeline.to_device(images, labels, batch_size, dp.replicated),
          batch_size)


def padded_test_split(data: input_pipeline.Mnist, config: configs.Config,
               dp: parallel.DataParallel = parallel.DataParallel()
               ) -> tuple[input_pipeline.Split, int]:
  """`data`'s test split, padded for `config.eval_batch_size`, and that size."""
  return padded_split(data.test_images, data.test_labels, config.eval_batch_size, dp)


def evaluate(state, images, labels, batch_size: int = 1000, *,
             progress_bar: bool = False) -> dict[str, float]:
  """Accuracy and mean loss of `state`'s model on `images` (any of `inputs`'
  kinds, any number) and their integer `labels`, and `num_examples`.

  >>> import numpy as np
  >>> from flax_mnist import configs, core
  >>> state = core.create_train_state(configs.get_preset('beginners'))
  >>> evaluate(state, np.zeros((3, 784), np.float32), [0, 1, 2])  # zero weights
  {'accuracy': 0.333..., 'loss': 2.302..., 'num_examples': 3}
  """
  dp = parallel.DataParallel.of(jax.tree_util.tree_leaves(state.params)[0])
  split, batch_size = padded_split(images, labels, batch_size, dp)
  return evaluate_split(state, split, batch_size, progress_bar=progress_bar).metrics


def evaluate_workdir(workdir: str, *, progress_bar: bool = False, **data_fields
                     ) -> dict[str, Any]:
  """Test metrics (`step`, `test_accuracy`, `test_loss`, `num_examples`) of
  `workdir`'s latest checkpoint, on the data `resume.restore_with_data` picks.

  >>> sorted(evaluate_workdir('runs/beginners'))  # on the data it was trained on
  ['num_examples', 'step', 'test_accuracy', 'test_loss']
  """
  config, state, data = resume.restore_with_data(workdir, **data_fields)
  test, batch_size = padded_test_split(data, config)
  return {'step': int(state.step),
          **as_test_metrics(evaluate_split(state, test, batch_size,
                                      progress_bar=progress_bar).metrics)}


def as_test_metrics(metrics: dict[str, float]) -> dict[str, float]:
  """`metrics` named as the test set's: `test_accuracy`, `test_loss`."""
  return {('test_' + k if k in ('accuracy', 'loss') else k): v
          for k, v in metrics.items()}
