"""Softmax regression's SGD steps as a hand-written native kernel: how far
C++ gets past the library's XLA step, and past the Flax-examples loop.

    python benchmarks/native_softmax.py [--repeats 3] [--seconds 5]
        [--out results.json] [--smoke]

Not the library, and not a candidate for it without a decision: the kernel
(`native/softmax_sgd.cc`, AVX-512 intrinsics, built here with g++ against
jaxlib's XLA FFI headers) runs `core.train_steps`' 100 steps a dispatch as
one XLA FFI call, on the same batches, read through each epoch's order from
the split on the device where the library copies each epoch, on one thread
(`native_1`) or two (`native_2`, the second a task on XLA's thread pool).
It rounds differently from XLA's products (its sums run in another order).

First one epoch of the real MNIST at batch 100 with each, from the same
zeros: the test accuracy and the largest kernel difference from the
library's. Then `compare.py`'s softmax rows, at batch 100 and 128: native_2,
native_1, flax-mnist and the Flax-examples loop, each measurement a process
of its own, alternated, medians; ratios are native_2's, and the `*_vs_flax_examples`
columns each implementation's median to the loop's. `--smoke`: batch 8, a
few steps. Needs x86-64 with AVX-512 and g++.

About 5 minutes on 2 cores. On 2 AMD EPYC (Zen 4) cores, 2026-12-02: the
three end the epoch with the same test accuracy, 0.9156, and native_2 is
4.87x the Flax-examples loop at batch 100 and 4.42x at 128 (flax-mnist
3.38x and 2.77x); see benchmarks/README.md.
"""

import ctypes
import functools
import hashlib
import pathlib
import shutil
import subprocess
import tempfile
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

import common
import compare
import throughput
from flax_mnist import configs, core, evaluation, input_pipeline

SOURCE = pathlib.Path(__file__).resolve().parent / 'native' / 'softmax_sgd.cc'
TARGET = 'flax_mnist_bench_softmax_sgd'
IMPLEMENTATIONS = ('native_2', 'native_1', 'flax_mnist', 'flax_examples')
LEARNING_RATE = throughput.optimizer_config('softmax_regression')['learning_rate']


def has_avx512() -> bool:
  try:
    return 'avx512f' in pathlib.Path('/proc/cpuinfo').read_text().split()
  except OSError:
    return False


def build() -> pathlib.Path:
  """The kernel's shared library, compiled once per source and jaxlib."""
  if not has_avx512():
    raise SystemExit('the native kernel needs an x86-64 CPU with AVX-512')
  compiler = shutil.which('g++')
  if compiler is None:
    raise SystemExit('the native kernel needs g++')
  flags = ['-O3', '-march=native', '-ffp-contract=off', '-std=c++17', '-shared',
           '-fPIC', '-isystem', jax.ffi.include_dir()]
  digest = hashlib.sha256(SOURCE.read_bytes() + ' '.join(flags).encode()).hexdigest()
  library = pathlib.Path(tempfile.gettempdir()) / 'flax_mnist_bench' / f'{digest[:16]}.so'
  if not library.exists():
    library.parent.mkdir(parents=True, exist_ok=True)
    partial = library.with_suffix(f'.{digest[16:24]}.tmp')
    done = subprocess.run([compiler, *flags, str(SOURCE), '-o', str(partial)],
                          capture_output=True, text=True)
    if done.returncode:
      raise SystemExit(f'building {SOURCE.name} failed:\n{done.stderr[-3000:]}')
    partial.replace(library)
  return library


@functools.cache
def register() -> None:
  library = ctypes.cdll.LoadLibrary(str(build()))
  jax.ffi.register_ffi_target(TARGET, jax.ffi.pycapsule(library.SoftmaxSgd),
                              platform='cpu')


class Epoch(NamedTuple):
  """The training split, on the device once, and one epoch's order of it."""
  images_NP: jax.Array
  labels_N: jax.Array
  order_N: jax.Array


class ShuffledOrders(input_pipeline.ShuffledEpochs):
  """`ShuffledEpochs` whose epochs are orders, not copies: the kernel reads
  each batch's rows where they lie (an epoch's copy takes 18-30 ms on 2 cores,
  as long as the kernel's whole epoch)."""

  def __init__(self, images: np.ndarray, labels: np.ndarray, data_key: jax.Array):
    super().__init__(images, labels, data_key)
    self._split = jax.device_put((self._images.reshape(len(self._labels), -1),
                                  self._labels))

  def _copy(self, epoch: int) -> Epoch:
    order = input_pipeline.epoch_permutation(self._data_key, epoch, len(self._labels))
    return Epoch(*self._split, jax.device_put(order))


def native_train_steps(state: core.TrainState, epoch: Epoch,
                       index: int | jax.Array, *, num_steps: int, batch_size: int,
                       threads: int) -> tuple[core.TrainState, dict[str, jax.Array]]:
  """`core.train_steps` for softmax regression with SGD 0.5, in the kernel:
  the same batches, from `ShuffledOrders`' epochs."""
  dense = state.params['dense']
  call = jax.ffi.ffi_call(
      TARGET, (jax.ShapeDtypeStruct(dense['kernel'].shape, jnp.float32),
               jax.ShapeDtypeStruct(dense['bias'].shape, jnp.float32),
               jax.ShapeDtypeStruct((num_steps,), jnp.float32),
               jax.ShapeDtypeStruct((num_steps,), jnp.float32)),
      input_output_aliases={0: 0, 1: 1})
  kernel, bias, loss, accuracy = call(
      dense['kernel'], dense['bias'], *epoch, jnp.asarray(index, jnp.int32),
      num_steps=np.int32(num_steps), batch_size=np.int32(batch_size),
      learning_rate=np.float32(LEARNING_RATE),
      threads=np.int32(threads))
  params = {'dense': {'kernel': kernel, 'bias': bias}}
  return (state.replace(step=state.step + num_steps, params=params),
          {'loss': loss, 'accuracy': accuracy})


@functools.cache
def train_steps_on(threads: int):
  """`native_train_steps` on `threads`, jitted as `core.train_steps` is."""
  register()
  return jax.jit(functools.partial(native_train_steps, threads=threads),
                 donate_argnums=0, static_argnames=('num_steps', 'batch_size'))


def measure(implementation: str, model: str, batch_size: int, seconds: float,
            steps: int) -> float:
  """images/s of one implementation, in this process."""
  if not implementation.startswith('native_'):
    return compare.measure(implementation, model, batch_size, seconds, steps)
  dispatch = core.steps_per_dispatch(configs.Config(model=model))
  return throughput.measure(model, batch_size, 'float32', dispatch, seconds,
                            compare.NUM_EXAMPLES, train_steps_on(int(implementation[-1])),
                            ShuffledOrders)['images_per_s']


def one_epoch(data: input_pipeline.Mnist, batch_size: int, smoke: bool) -> list[dict]:
  """Each implementation's test accuracy after one epoch from the same state."""
  config = configs.Config(model='softmax_regression', batch_size=batch_size,
                          **throughput.optimizer_config('softmax_regression'))
  dispatch = 2 if smoke else core.steps_per_dispatch(config)
  dispatches = len(data.train_labels) // batch_size // dispatch
  rows, library_kernel = [], None
  for name, train_steps, epochs_type in [
      ('flax_mnist', core.train_steps, input_pipeline.ShuffledEpochs),
      ('native_1', train_steps_on(1), ShuffledOrders),
      ('native_2', train_steps_on(2), ShuffledOrders)]:
    state = core.create_train_state(config, len(data.train_labels))
    with epochs_type(data.train_images, data.train_labels,
                     jax.random.PRNGKey(0)) as epochs:
      for i in range(dispatches):
        state, metrics = train_steps(state, epochs.get(0, prefetch=False),
                                     i * dispatch, num_steps=dispatch,
                                     batch_size=batch_size)
    kernel = np.asarray(state.params['dense']['kernel'])
    library_kernel = kernel if library_kernel is None else library_kernel
    test = evaluation.evaluate(state, data.test_images, data.test_labels)
    rows.append({'implementation': name, 'steps': int(state.step),
                 'last_loss': float(metrics['loss'][-1]),
                 'test_accuracy': test['accuracy'],
                 'kernel_max_difference': float(np.abs(kernel - library_kernel).max())})
  return rows


def main():
  parser = common.arguments(__doc__)
  parser.add_argument('--data-dir', default=common.DEFAULT_DATA_DIR)
  args = compare.parse_arguments(parser, 5.0, 'the four')
  if compare.run_case(args, measure):
    return
  register()
  epoch_batch = 8 if args.smoke else throughput.PRESET_BATCH['softmax_regression']
  accuracy = one_epoch(common.mnist(args.data_dir, args.smoke), epoch_batch, args.smoke)
  print(common.format_table(accuracy, list(accuracy[0])), flush=True)
  seconds, repeats = (0.0, 1) if args.smoke else (args.seconds, args.repeats)
  rows = []
  for batch_size in [8] if args.smoke else [100, 128]:
    row = compare.compare('softmax_regression', batch_size, seconds, repeats,
                          args.smoke, IMPLEMENTATIONS, __file__)
    for name in IMPLEMENTATIONS[:-1]:
      row[f'{name}_vs_flax_examples'] = row[name] / row['flax_examples']
    rows.append(row)
  columns = ['model', 'batch', *IMPLEMENTATIONS, 'vs_flax_mnist',
             *(f'{name}_vs_flax_examples' for name in IMPLEMENTATIONS[:-1])]
  common.report('native_softmax', rows, columns, args.out, one_epoch=accuracy,
                unit='images/s, medians of alternated processes; vs_* = native_2 / other')


if __name__ == '__main__':
  main()
