"""MNIST as arrays, from IDX files (the package's own or a folder's) or tfds, and batches on device.

Every source returns the same `Mnist`: each split in one canonical order
(sorted by image bytes, then label), so a run is the same whichever source fed
it. Each epoch is a permutation drawn from an explicit key. Training takes
each epoch's batches as slices of a copy of the split in that order
(`ShuffledEpochs`); evaluation and `train_batch` gather them from the split
on the device. Images go in as `inputs` describes (uint8 or floats in
[0, 1], flat or 28x28) and are kept as uint8 pixels, scaled to [0, 1] as
batches are taken.
"""

import concurrent.futures
import dataclasses
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from flax_mnist import datasets
from flax_mnist import idx
from flax_mnist import inputs
from flax_mnist import parallel
from flax_mnist.errors import ConfigError, DataError, check_choice

# Where the data comes from when no folder of IDX files is given.
SOURCES = ('package', 'tfds')


@dataclasses.dataclass(frozen=True)
class Mnist:
  """Host arrays: images (N, 28, 28, 1) uint8, labels (N,) int32, each split
  in its canonical order (`load`, `from_arrays`).

  >>> load('mnist', verify=False).test_images.shape[1:]
  (28, 28, 1)
  """

  train_images: np.ndarray
  train_labels: np.ndarray
  test_images: np.ndarray
  test_labels: np.ndarray


def canonical_order(images_NHW: np.ndarray, labels_N: np.ndarray
                    ) -> tuple[np.ndarray, np.ndarray]:
  """The pairs sorted by (image bytes, label), as (N, 28, 28, 1) uint8, int32."""
  images_NHW = np.ascontiguousarray(inputs.as_uint8(images_NHW)[..., 0])
  labels_N = inputs.labels(labels_N, len(images_NHW)).astype(np.uint8)
  rows = np.concatenate([images_NHW.reshape(len(images_NHW), -1),
                         labels_N[:, None]], axis=1)
  order = np.argsort(rows.view(np.dtype((np.void, rows.shape[1]))).ravel(),
                     kind='stable')
  return images_NHW[order, :, :, None], labels_N[order].astype(np.int32)


def from_arrays(train: tuple[np.ndarray, np.ndarray],
                test: tuple[np.ndarray, np.ndarray]) -> Mnist:
  """A `Mnist` from (images, labels) pairs in any order (`inputs`' kinds).

  >>> import numpy as np
  >>> images = np.zeros((3, 784), np.float32)  # the TF tutorials' x / 255.0
  >>> data = from_arrays((images, [1, 2, 3]), (images[:1], [4]))
  >>> data.train_images.shape, data.train_images.dtype
  ((3, 28, 28, 1), dtype('uint8'))
  """
  return Mnist(*canonical_order(*train), *canonical_order(*test))


def from_idx_dir(data_dir: str, verify: bool = True,
                 dataset: str = 'mnist', test_only: bool = False) -> Mnist:
  """`dataset` (datasets.py) from a folder of its four IDX files (no
  TensorFlow involved), verified by their checksums unless `verify` is off;
  with `test_only`, only the two test files are read and the training split
  is empty."""
  expected = datasets.get(dataset)
  try:
    if test_only:
      return Mnist(np.zeros((0, 28, 28, 1), np.uint8), np.zeros(0, np.int32),
                   *canonical_order(*idx.load_split(data_dir, 'test', verify,
                                                    expected.files)))
    return from_arrays(idx.load_split(data_dir, 'train', verify, expected.files),
                       idx.load_split(data_dir, 'test', verify, expected.files))
  except DataError:
    found = datasets.identify(data_dir) if verify else None
    if found is None or found == dataset:
      raise
    raise DataError(f'{data_dir} holds {datasets.get(found).title}, not '
                    f'{expected.title}: set dataset={found} (--set '
                    f'dataset={found})') from None


def load(data_dir: str | None = None, tfds_data_dir: str | None = None,
         verify: bool = True, dataset: str = 'mnist',
         source: str = 'package', test_only: bool = False) -> Mnist:
  """`dataset` (default MNIST) from the IDX folder `data_dir` if given, else
  from `source`.

  Sources: 'package', MNIST's official files shipped in this package (always
  verified; no network, no TensorFlow), or 'tfds', tensorflow-datasets' own
  builder in `tfds_data_dir` (needs the `tfds` extra). All give the same arrays.
  `test_only` (for evaluations) skips reading the training files of an IDX
  folder.

  >>> data = load()  # the packaged MNIST
  >>> data.train_images.dtype, data.train_images.shape[1:], data.train_labels.dtype
  (dtype('uint8'), (28, 28, 1), dtype('int32'))
  """
  check_source(source, data_dir, tfds_data_dir)
  if source == 'tfds':
    # Imported here only: TensorFlow must stay out of every other source.
    from flax_mnist import tfds_source
    return from_arrays(*tfds_source.load_splits(tfds_data_dir,
                                                datasets.get(dataset).tfds_name))
  if data_dir is None:
    if dataset != 'mnist':
      raise DataError(f'the package ships MNIST only: read '
                      f'{datasets.get(dataset).title} from --data-dir DIR or '
                      '--source tfds')
    return from_idx_dir(idx.PACKAGED_DIR, True, dataset, test_only)
  return from_idx_dir(data_dir, verify, dataset, test_only)


def check_source(source: str, data_dir: str | None,
                 tfds_data_dir: str | None) -> None:
  """Raises a `ConfigError` unless the options name one source."""
  check_choice('data source', source, SOURCES)
  if source == 'tfds' and data_dir is not None:
    raise ConfigError(f"data_dir {data_dir} and data source 'tfds' are two "
                      'sources: give one')
  if source != 'tfds' and tfds_data_dir is not None:
    raise ConfigError(f"tfds_data_dir {tfds_data_dir} is for data source "
                      f"'tfds', not {source!r}")


class Split(NamedTuple):
  """One split on the device: uint8 images, int32 labels, and a validity mask.

  >>> to_device(np.zeros((3, 784), np.uint8), [1, 2, 3], multiple=2).mask_N.tolist()
  [True, True, True, False]
  """

  images_NHWC: jax.Array
  labels_N: jax.Array
  mask_N: jax.Array


def to_device(images: np.ndarray, labels: np.ndarray, multiple: int = 1,
              sharding: jax.sharding.Sharding | None = None) -> Split:
  """The split on the default device, padded to a multiple of `multiple`.

  `images` are any of `inputs`' kinds, kept as uint8. Padded rows have mask
  False, so evaluation can use equal-sized batches and still count every real
  example exactly once. With `sharding` (the same host arrays in every
  process) the split is a global array laid out by it.

  >>> split = to_device(np.ones((5, 28, 28), np.float32), [0, 1, 2, 3, 4], multiple=4)
  >>> split.images_NHWC.shape, int(split.images_NHWC.max()), int(split.mask_N.sum())
  ((8, 28, 28, 1), 255, 5)
  """
  images = inputs.as_uint8(images)
  labels = inputs.labels(labels, len(images))
  pad = -len(images) % multiple
  mask = np.arange(len(images) + pad) < len(images)
  images = np.concatenate([images, np.zeros((pad, *images.shape[1:]), images.dtype)])
  labels = np.concatenate([labels, np.zeros((pad,), labels.dtype)])
  return _put((images, labels, mask), sharding)


def _put(arrays: tuple[np.ndarray, ...], sharding: jax.sharding.Sharding | None
         ) -> Split:
  if sharding is None:
    return Split(*jax.device_put(arrays))
  return Split(*(parallel.put(x, sharding) for x in arrays))


def epoch_permutation(data_key: jax.Array, epoch: int,
                      num_examples: int) -> np.ndarray:
  """The order of epoch `epoch`: a function of the key and the epoch only,
  `jax.random.permutation(jax.random.fold_in(data_key, epoch), num_examples)`.

  It is computed as JAX does it, rounds of stable sorts by random 32-bit keys,
  with JAX's keys and numpy's sort: 2 ms for MNIST's 60,000 where XLA:CPU's
  sort takes 9-25 ms (tests/test_input_pipeline.py checks it equals JAX's).

  >>> order = epoch_permutation(jax.random.PRNGKey(0), 3, 5)
  >>> sorted(order.tolist())
  [0, 1, 2, 3, 4]
  """
  order = np.arange(num_examples, dtype=np.int32)
  positions = np.arange(num_examples, dtype=np.uint64)
  for sort_keys in np.asarray(_sort_keys(data_key, epoch, num_examples)):
    # Each position in the low bits makes the keys unique, so numpy's fast
    # unstable sort gives the stable order.
    ranked = np.sort(sort_keys.astype(np.uint64) << np.uint64(32) | positions)
    order = order[(ranked & np.uint64(0xFFFFFFFF)).astype(np.intp)]
  return order


@functools.partial(jax.jit, static_argnums=2)
def _sort_keys(data_key: jax.Array, epoch: int | jax.Array, num_examples: int
               ) -> jax.Array:
  """The random keys of each of `jax.random.permutation`'s sorting rounds."""
  # The number of rounds as jax.random's `_shuffle` sets it.
  rounds = int(np.ceil(3 * np.log(max(1, num_examples)) /
                       np.log(np.iinfo(np.uint32).max)))
  key, keys = jax.random.fold_in(data_key, epoch), []
  for _ in range(rounds):
    key, subkey = jax.random.split(key)
    keys.append(jax.random.bits(subkey, (num_examples,), jnp.uint32))
  return jnp.stack(keys) if keys else jnp.zeros((0, num_examples), jnp.uint32)


@functools.partial(jax.jit, static_argnames=('batch_size', 'sharding'))
def batch_at(split: Split, order: jax.Array, index: int | jax.Array,
             batch_size: int, sharding: jax.sharding.Sharding | None = None
             ) -> dict[str, jax.Array]:
  """Batch `index` of the examples listed in `order`."""
  return gather(split, jax.lax.dynamic_slice_in_dim(order, index * batch_size,
                                                    batch_size), sharding)


def gather(split: Split, ids: jax.Array,
           sharding: jax.sharding.Sharding | None = None) -> dict[str, jax.Array]:
  """The examples `ids` of `split` as a batch: images scaled to [0, 1] as
  the models take them, labels, mask.

  With `sharding` (inside `jit`) each device gathers only its own rows.
  """
  if sharding is not None:
    ids = jax.lax.with_sharding_constraint(ids, sharding)
  return _batch(split.images_NHWC[ids], split.labels_N[ids], split.mask_N[ids],
                sharding)


@functools.partial(jax.jit, static_argnames=('batch_size', 'sharding'))
def batch_slice(split: Split, index: int | jax.Array, batch_size: int,
                sharding: jax.sharding.Sharding | None = None
                ) -> dict[str, jax.Array]:
  """Rows `[index * batch_size, (index + 1) * batch_size)` of `split` as a
  batch, like `gather`'s: a `ShuffledEpochs` epoch's batch `index`, or an
  evaluation batch.

  >>> split = to_device(np.zeros((6, 784), np.uint8), np.arange(6))
  >>> batch_slice(split, 1, batch_size=2)['label'].tolist()
  [2, 3]
  """
  rows = [jax.lax.dynamic_slice_in_dim(x, index * batch_size, batch_size)
          for x in split]
  return _batch(*rows, sharding)


def _batch(images_BHWC: jax.Array, labels_B: jax.Array, mask_B: jax.Array,
           sharding: jax.sharding.Sharding | None) -> dict[str, jax.Array]:
  batch = {'image': inputs.model_input(images_BHWC), 'label': labels_B,
           'mask': mask_B}
  if sharding is not None:
    batch = jax.lax.with_sharding_constraint(batch, sharding)
  return batch


class ShuffledEpochs:
  """The training split as each epoch takes it: epoch `e` is a copy of the
  examples in the order `epoch_permutation(data_key, e, n)`, on the device,
  so that its batches are slices (`batch_slice`) where `train_batch` gathers.

  XLA:CPU gathers a batch's rows at half numpy's speed, on both cores, and
  that cost half of softmax regression's step; numpy copies a whole epoch in
  8 ms. The next epoch's copy is made in a background thread while this one
  trains. Use it as a context manager, which ends that thread.

  >>> images, labels = np.zeros((6, 784), np.uint8), np.arange(6)
  >>> with ShuffledEpochs(images, labels, jax.random.PRNGKey(0)) as epochs:
  ...   order = epoch_permutation(jax.random.PRNGKey(0), 2, 6)
  ...   bool((epochs.get(2).labels_N == order).all())
  True
  """

  def __init__(self, images: np.ndarray, labels: np.ndarray, data_key: jax.Array,
               sharding: jax.sharding.Sharding | None = None):
    self._images = inputs.as_uint8(images)
    self._labels = inputs.labels(labels, len(self._images))
    self._data_key = data_key
    self._sharding = sharding
    self._pool = concurrent.futures.ThreadPoolExecutor(1, 'shuffled-epochs')
    self._current: tuple[int, Split] | None = None
    self._next: tuple[int, concurrent.futures.Future] | None = None

  def get(self, epoch: int, prefetch: bool = True) -> Split:
    """Epoch `epoch`'s copy; with `prefetch`, the next one is started."""
    if self._current is None or self._current[0] != epoch:
      if self._next is not None and self._next[0] == epoch:
        split = self._next[1].result()
      else:
        split = self._copy(epoch)
      self._current, self._next = (epoch, split), None
    if prefetch and self._next is None:
      self._next = (epoch + 1, self._pool.submit(self._copy, epoch + 1))
    return self._current[1]

  def _copy(self, epoch: int) -> Split:
    order = epoch_permutation(self._data_key, epoch, len(self._labels))
    return _put((self._images[order], self._labels[order],
                 np.ones(len(order), bool)), self._sharding)

  def __enter__(self) -> 'ShuffledEpochs':
    return self

  def __exit__(self, *exc_info) -> None:
    self._pool.shutdown(wait=True, cancel_futures=True)


def train_batch(split: Split, data_key: jax.Array, step: int, batch_size: int
                ) -> dict[str, jax.Array]:
  """The batch that training step `step` takes: epoch `step // steps_per_epoch`
  shuffled by `data_key` (`TrainState.data_key`), in batches of `batch_size`
  (an epoch's last partial batch dropped).

  >>> split = to_device(np.zeros((10, 784), np.uint8), np.arange(10))
  >>> batch = train_batch(split, jax.random.PRNGKey(0), 7, batch_size=4)  # epoch 3
  >>> sorted(batch), batch['image'].shape
  (['image', 'label', 'mask'], (4, 28, 28, 1))
  """
  epoch, index = divmod(step, len(split.labels_N) // batch_size)
  order = epoch_permutation(data_key, epoch, len(split.labels_N))
  return batch_at(split, order, index, batch_size)
