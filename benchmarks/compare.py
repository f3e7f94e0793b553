"""The library against the code users would otherwise copy, alternated.

    pip install torch==2.13.0        # benchmark-only; never a library dependency
    python benchmarks/compare.py [--repeats 3] [--seconds 10] [--models ...]
        [--out results.json] [--smoke]

For each model (the tutorials' three unless `--models` adds fast_cnn) at its
preset's batch size and at 128, trains on the same 60,000 random images with
the same optimizer (Adam 1e-4; SGD 0.5 for softmax regression) and reports
images/s of:
- flax-mnist: `core.train_steps`, data on the device, its default steps per
  dispatch;
- flax-examples: the loop of Flax's Linen examples/mnist (host numpy batches
  of a float32 array, one jitted gradient step and one jitted update per
  batch), with stock `nn.Conv`, `nn.max_pool` and `nn.Dense`'s own product;
- pytorch: the same network in PyTorch (tensors in memory, one permutation
  per epoch), using every core.
Each measurement is a process of its own, and the three take turns, in
reverse order every other round, for `--repeats` rounds. A row gives each
one's median, the ratios of flax-mnist's median to the others', and the
lowest and highest ratio within one round. Each trains for at least
`--seconds`: flax-mnist in its dispatches, the references in rounds of one
epoch for softmax regression (600 steps at batch 100, 468 at 128), and for
a CNN of half as many steps as flax-mnist took in the first round (at
least 20). Until 2026-12-02 the references trained one such round only: a
softmax epoch, 0.1-0.3 s, which one slow stretch could halve. `--smoke`:
one round at the tutorial's batch size, 3 steps each (9 processes, about a
minute).
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import common
import throughput
from flax_mnist import configs, core, models

NUM_EXAMPLES = 60_000


def timed(run, batch_size: int, steps: int, seconds: float) -> float:
  """images/s of `run(first, count)`, which returns when its steps are done:
  two steps to compile, then rounds of `steps` until `seconds` have passed."""
  run(0, 2)
  done, start = 0, time.perf_counter()
  while done == 0 or time.perf_counter() - start < seconds:
    run(2 + done, steps)
    done += steps
  return done * batch_size / (time.perf_counter() - start)


def flax_examples_loop(model: str, batch_size: int, images, labels, steps: int,
                       seconds: float = 0.0) -> float:
  """images/s of Flax's Linen MNIST example loop (apply_model + update_model)."""
  module = models.FLAX_STOCK_MODELS[model]()
  opt = throughput.optimizer_config(model)
  tx = {'sgd': optax.sgd, 'adam': optax.adam}[opt['optimizer']](opt['learning_rate'])
  params = module.init(jax.random.PRNGKey(0), jnp.ones([1, 28, 28, 1]))['params']
  state = core.TrainState.create(apply_fn=module.apply, params=params, tx=tx,
                                  rng=jax.random.PRNGKey(0))

  @jax.jit
  def apply_model(state, images, labels, step):
    def loss_fn(params):
      # The key is made inside the jitted step: one made on the host each
      # step would add a dispatch the example (whose models have no
      # dropout) does not have.
      key = jax.random.fold_in(jax.random.PRNGKey(0), step)
      logits = state.apply_fn({'params': params}, images, train=True,
                              rngs={'dropout': key})
      one_hot = jax.nn.one_hot(labels, 10)
      return jnp.mean(optax.softmax_cross_entropy(logits, one_hot)), logits
    (loss, logits), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    return grads, loss, jnp.mean(jnp.argmax(logits, -1) == labels)

  @jax.jit
  def update_model(state, grads):
    return state.apply_gradients(grads=grads)

  images = images.astype(np.float32) / 255.0
  rng = np.random.default_rng(0)
  perms = rng.permutation(len(images))[:len(images) // batch_size * batch_size]
  perms = perms.reshape(-1, batch_size)

  def run(first, count):
    nonlocal state
    for i in range(first, first + count):
      perm = perms[i % len(perms)]
      grads, _, _ = apply_model(state, images[perm], labels[perm], i)
      state = update_model(state, grads)
    jax.block_until_ready(state)

  return timed(run, batch_size, steps, seconds)


def pytorch_network(model: str):
  """The library's network `model` in PyTorch (NCHW), as a user would write it."""
  from torch import nn
  return {
      'softmax_regression': lambda: nn.Sequential(nn.Flatten(), nn.Linear(784, 10)),
      'deep_cnn': lambda: nn.Sequential(
          nn.Conv2d(1, 32, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
          nn.Conv2d(32, 64, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
          nn.Flatten(), nn.Linear(3136, 1024), nn.ReLU(), nn.Dropout(0.5),
          nn.Linear(1024, 10)),
      'keras_cnn': lambda: nn.Sequential(
          nn.Conv2d(1, 32, 3), nn.ReLU(), nn.MaxPool2d(2),
          nn.Conv2d(32, 64, 3), nn.ReLU(), nn.MaxPool2d(2),
          nn.Conv2d(64, 64, 3), nn.ReLU(), nn.Flatten(),
          nn.Linear(576, 64), nn.ReLU(), nn.Linear(64, 10)),
      'fast_cnn': lambda: nn.Sequential(
          nn.Conv2d(1, 16, 5), nn.MaxPool2d(2), nn.ReLU(),
          nn.Conv2d(16, 32, 5), nn.MaxPool2d(2), nn.ReLU(),
          nn.Flatten(), nn.Linear(512, 128), nn.ReLU(), nn.Linear(128, 10)),
  }[model]()


def pytorch_loop(model: str, batch_size: int, images, labels, steps: int,
                 seconds: float = 0.0) -> float:
  """images/s of the same network and optimizer in PyTorch."""
  import torch
  from torch import nn
  torch.set_num_threads(os.cpu_count())
  torch.manual_seed(0)
  network = pytorch_network(model)
  opt = throughput.optimizer_config(model)
  optimizer = {'sgd': torch.optim.SGD, 'adam': torch.optim.Adam}[opt['optimizer']](
      network.parameters(), lr=opt['learning_rate'])
  x_all = torch.from_numpy(images).permute(0, 3, 1, 2).float().div_(255.0)
  y_all = torch.from_numpy(labels).long()
  order = torch.randperm(len(x_all))

  def run(first, count):
    for i in range(first, first + count):
      ids = order[(i * batch_size) % (len(order) - batch_size):][:batch_size]
      optimizer.zero_grad(set_to_none=True)
      loss = nn.functional.cross_entropy(network(x_all[ids]), y_all[ids])
      loss.backward()
      optimizer.step()

  network.train()
  return timed(run, batch_size, steps, seconds)


IMPLEMENTATIONS = ('flax_mnist', 'flax_examples', 'pytorch')


def measure(implementation: str, model: str, batch_size: int, seconds: float,
            steps: int) -> float:
  """images/s of one implementation, in this process."""
  if implementation == 'flax_mnist':
    return throughput.measure(model, batch_size, 'float32',
                              core.steps_per_dispatch(configs.Config(model=model)),
                              seconds, NUM_EXAMPLES)['images_per_s']
  loop = {'flax_examples': flax_examples_loop, 'pytorch': pytorch_loop}[implementation]
  return loop(model, batch_size, *throughput.random_mnist(NUM_EXAMPLES), steps,
              seconds)


def measure_in_process(implementation: str, model: str, batch_size: int,
                       seconds: float, steps: int, script: str = __file__) -> float:
  """`measure` in a new Python process, so that no run shares threads, caches
  or allocations with another; `script` is the benchmark whose `--case` runs it."""
  command = [sys.executable, script, '--case', implementation, model,
             str(batch_size), '--seconds', str(seconds), '--steps', str(steps)]
  done = subprocess.run(command, capture_output=True, text=True)
  if done.returncode:
    raise SystemExit(f'{" ".join(command)} failed:\n{done.stderr[-3000:]}')
  return json.loads(done.stdout.strip().splitlines()[-1])['images_per_s']


def compare(model: str, batch_size: int, seconds: float, repeats: int,
            smoke: bool, implementations: tuple[str, ...] = IMPLEMENTATIONS,
            script: str = __file__) -> dict:
  """One row: every implementation `repeats` times, alternated, and medians;
  the ratios are the first implementation's to each other's."""
  runs: dict[str, list[float]] = {name: [] for name in implementations}
  ours = implementations[0]
  fewest = 3 if smoke else 20
  steps = fewest if smoke else NUM_EXAMPLES // batch_size
  for repeat in range(repeats):
    order = implementations if repeat % 2 == 0 else implementations[::-1]
    for name in order:
      runs[name].append(measure_in_process(name, model, batch_size, seconds, steps,
                                           script))
      if repeat == 0 and name == ours and model != 'softmax_regression':
        # About `seconds` for a reference half as fast.
        steps = max(fewest, int(runs[name][0] * seconds / batch_size / 2))
    print(f'{model} batch {batch_size} round {repeat}: '
          + json.dumps({name: round(runs[name][-1]) for name in implementations}),
          flush=True)
  row = {'model': model, 'batch': batch_size, 'rounds': repeats}
  row |= {name: statistics.median(runs[name]) for name in implementations}
  for name in implementations[1:]:
    row[f'vs_{name}'] = row[ours] / row[name]
    ratios = [mine / other for mine, other in zip(runs[ours], runs[name])]
    row[f'vs_{name}_lowest'], row[f'vs_{name}_highest'] = min(ratios), max(ratios)
  return row | {f'{name}_runs': runs[name] for name in implementations}


def parse_arguments(parser: argparse.ArgumentParser, seconds: float,
                    rounds_of: str) -> argparse.Namespace:
  """`--seconds`, `--repeats` and the hidden `--case` of one measurement
  (`measure_in_process`) added to `parser`, and its arguments parsed."""
  parser.add_argument('--seconds', type=float, default=seconds,
                      help='train each implementation for at least this long')
  parser.add_argument('--repeats', type=int, default=3, help=f'rounds of {rounds_of}')
  parser.add_argument('--case', nargs=3, metavar=('IMPLEMENTATION', 'MODEL', 'BATCH'),
                      help=argparse.SUPPRESS)
  parser.add_argument('--steps', type=int, help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.repeats < 1:
    parser.error('--repeats must be at least 1')
  if args.case and args.steps is None:
    parser.error('--case needs --steps')
  return args


def run_case(args: argparse.Namespace, measure_case=measure) -> bool:
  """With `--case`, prints its measurement (`measure_case`'s) and says so."""
  if not args.case:
    return False
  name, model, batch_size = args.case
  print(json.dumps({'images_per_s': measure_case(name, model, int(batch_size),
                                                 args.seconds, args.steps)}))
  return True


def main():
  parser = common.arguments(__doc__)
  common.add_models_argument(parser, throughput.TUTORIALS)
  args = parse_arguments(parser, 10.0, 'the three implementations')
  if run_case(args):
    return
  seconds, repeats = (0.0, 1) if args.smoke else (args.seconds, args.repeats)
  rows = []
  for model in args.models:
    # Smoke mode: the tutorial's batch only, as each case costs three process starts.
    batch_sizes = {throughput.PRESET_BATCH[model]} | (set() if args.smoke else {128})
    for batch_size in sorted(batch_sizes):
      rows.append(compare(model, batch_size, seconds, repeats, args.smoke))
  columns = ['model', 'batch', *IMPLEMENTATIONS]
  columns += [f'vs_{name}{end}' for name in IMPLEMENTATIONS[1:]
              for end in ('', '_lowest', '_highest')]
  common.report('compare', rows, columns, args.out,
                unit='images/s, medians of alternated processes; vs_* = flax_mnist / other')


if __name__ == '__main__':
  main()
