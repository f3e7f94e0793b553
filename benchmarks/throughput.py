"""Training-step throughput and compile time of each model, as the library runs it.

    python benchmarks/throughput.py [--out results.json] [--smoke]

For each model, batch size (its preset's: the tutorials' 100, 50 and 32, fast's
128; and 128; on an accelerator also 1,024 and 4,096), compute dtype and steps
per dispatch: images/s, ms per step, the compile time of `core.train_steps`,
and the achieved TFLOP/s (6 flops per multiply-add of the weighted layers per
image: 5.0 TFLOP per epoch for deep_cnn). Softmax regression trains with SGD
0.5, the CNNs with Adam 1e-4 (the rate does not change the speed), on batches in
a shuffled order as in training.
Images are random: speed does not depend on pixel values.
"""

import time
from typing import Callable, NamedTuple

import jax
import numpy as np

import common
from flax_mnist import configs, core, input_pipeline, summary

TUTORIALS = ('softmax_regression', 'deep_cnn', 'keras_cnn')
# Each model's batch size in its preset: the tutorials' own, and fast's.
PRESET_BATCH = {config.model: config.batch_size
                for config in (preset() for preset in configs.PRESETS.values())}


def optimizer_config(model: str) -> dict:
  """SGD 0.5 for softmax regression, as its tutorial; Adam 1e-4 for the CNNs."""
  if model == 'softmax_regression':
    return dict(optimizer='sgd', learning_rate=0.5)
  return dict(optimizer='adam', learning_rate=1e-4)


class RandomTraining(NamedTuple):
  """A fresh state and `core.train_steps` bound to random images on the device."""
  state: core.TrainState
  run: Callable  # run(state, step): `dispatch` steps from step `step`
  lowered: jax.stages.Lowered
  dispatch: int


def random_mnist(num_examples: int) -> tuple[np.ndarray, np.ndarray]:
  """`num_examples` random uint8 images and labels, the same on every call."""
  rng = np.random.default_rng(0)
  return (rng.integers(0, 256, (num_examples, 28, 28, 1), np.uint8),
          rng.integers(0, 10, num_examples).astype(np.int32))


def random_training(model: str, batch_size: int, dtype: str, dispatch: int,
                    num_examples: int, train_steps: Callable = core.train_steps,
                    epochs_type: type = input_pipeline.ShuffledEpochs
                    ) -> RandomTraining:
  """Epochs are cut to whole dispatches, so each epoch's shuffled copy counts
  in the time at least as often as in training. `train_steps` is called as
  `core.train_steps` is, on the epochs of an `epochs_type` (by default
  `input_pipeline.ShuffledEpochs`)."""
  config = configs.Config(model=model, batch_size=batch_size, dtype=dtype,
                          **optimizer_config(model))
  epochs = epochs_type(*random_mnist(num_examples), jax.random.PRNGKey(0))
  dispatch = min(dispatch, num_examples // batch_size)
  dispatches_per_epoch = num_examples // batch_size // dispatch
  state = core.create_train_state(config, num_examples)
  kwargs = dict(num_steps=dispatch, batch_size=batch_size)

  def run(state, step):
    epoch, index = divmod(step // dispatch, dispatches_per_epoch)
    return train_steps(state, epochs.get(epoch), index * dispatch, **kwargs)

  return RandomTraining(state, run,
                        train_steps.lower(state, epochs.get(0), 0, **kwargs),
                        dispatch)


def measure(model: str, batch_size: int, dtype: str, dispatch: int,
            min_seconds: float, num_examples: int,
            train_steps: Callable = core.train_steps,
            epochs_type: type = input_pipeline.ShuffledEpochs) -> dict:
  training = random_training(model, batch_size, dtype, dispatch, num_examples,
                             train_steps, epochs_type)
  state, dispatch = training.state, training.dispatch
  flops = 6 * summary.multiply_adds(model) * batch_size
  start = time.perf_counter()
  training.lowered.compile()
  compile_seconds = time.perf_counter() - start
  state, _ = training.run(state, 0)
  jax.block_until_ready(state)
  steps, start = 0, time.perf_counter()
  while time.perf_counter() - start < min_seconds or steps < 3 * dispatch:
    state, _ = training.run(state, steps)
    steps += dispatch
    if steps % (10 * dispatch) == 0:
      jax.block_until_ready(state)
  jax.block_until_ready(state)
  seconds = time.perf_counter() - start
  return {'model': model, 'batch': batch_size, 'dtype': dtype,
          'steps_per_dispatch': dispatch,
          'images_per_s': steps * batch_size / seconds,
          'ms_per_step': 1e3 * seconds / steps,
          'compile_s': compile_seconds,
          'tflop_per_s': flops * steps / seconds / 1e12}


def main():
  parser = common.arguments(__doc__)
  common.add_models_argument(parser, TUTORIALS)
  parser.add_argument('--batch-sizes', nargs='+', type=int,
                      help="default: the preset's size and 128 (accelerators: "
                      'also 1024 and 4096)')
  parser.add_argument('--dtypes', nargs='+',
                      help='default float32 (accelerators: also bfloat16)')
  parser.add_argument('--dispatch', nargs='+', type=int,
                      help='steps per dispatch; default 1 and 100')
  parser.add_argument('--seconds', type=float, default=3.0,
                      help='time each case for at least this long')
  args = parser.parse_args()
  accelerator = jax.default_backend() != 'cpu'
  dtypes = args.dtypes or (['float32', 'bfloat16'] if accelerator else ['float32'])
  dispatches = args.dispatch or [1, 100]
  num_examples, seconds = 60_000, args.seconds
  if args.smoke:
    num_examples, seconds, dispatches = 512, 0.0, dispatches[:1]
  rows = []
  for model in args.models:
    sizes = args.batch_sizes or sorted(
        {PRESET_BATCH[model], 128} | ({1024, 4096} if accelerator else set()))
    if args.smoke:
      sizes = [8]
    for batch_size in sizes:
      for dtype in dtypes:
        for dispatch in dispatches:
          rows.append(measure(model, batch_size, dtype, dispatch, seconds,
                              num_examples))
          print(common.format_table(rows[-1:], list(rows[-1])), flush=True)
  common.report('throughput', rows,
                ['model', 'batch', 'dtype', 'steps_per_dispatch', 'images_per_s',
                 'ms_per_step', 'compile_s', 'tflop_per_s'], args.out)


if __name__ == '__main__':
  main()
