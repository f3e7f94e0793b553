"""Where one training step's time goes, layer by layer, against PyTorch's same ops.

    python benchmarks/step_profile.py [--models keras_cnn] [--batch-sizes 32 128]
        [--out results.json] [--smoke]

For each model and batch size (default its preset's and 128), one row per
piece, in milliseconds (median of repeated runs, each jitted on its own):
- every convolution: its forward pass, input gradient and kernel gradient
  (the library's `ops.conv2d`, so on CPU the kernel gradient by patches);
- every pooling, dropout and dense layer: forward and both gradients;
- adam: optax's Adam update of the whole parameter tree (SGD for softmax
  regression);
- host: dispatching a jitted identity on the train state (the per-step cost of
  handing the pytree to XLA);
- step: the library's whole training step (`core.train_steps`, one step);
- rest: step minus every piece above: ReLUs, the loss, the batch slice and
  what XLA fuses or fails to fuse across layers (0 when the pieces, timed
  apart, add up to more than the step).
Each piece's time is less that of a jitted call doing nothing (dispatch).
`pytorch` is the same op in PyTorch on every core
(`torch.ops.aten.convolution_backward` for the gradients, `torch.optim.Adam`,
the whole step from compare.py), and `ratio` is flax-mnist's time over it.
"""

import functools
import os
import statistics
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

import common
import compare
import throughput
from flax_mnist import configs, core, models


def median_ms(fn, min_seconds: float) -> float:
  """Median milliseconds of `fn()` (which must block until done)."""
  fn()
  times, start = [], time.perf_counter()
  while time.perf_counter() - start < min_seconds or len(times) < 3:
    t = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t)
  return 1e3 * statistics.median(times)


def jax_ms(fn, args, min_seconds: float) -> float:
  """Median ms of jitted `fn(*args)`, less a jitted call that does nothing."""
  compiled = jax.jit(fn).lower(*args).compile()
  ms = median_ms(lambda: jax.block_until_ready(compiled(*args)), min_seconds)
  return max(ms - _empty_call_ms(), 0.0)


@functools.cache
def _empty_call_ms() -> float:
  compiled = jax.jit(lambda x: x + 1).lower(jnp.float32(0)).compile()
  x = jnp.float32(0)
  return median_ms(lambda: jax.block_until_ready(compiled(x)), 0.2)


def layers(model_name: str, batch_size: int) -> list[tuple[str, nn.Module, tuple]]:
  """(name, unbound module, input shape) of each top-level layer, in call order."""
  model = models.create_model(model_name)  # the tutorial's dropout, if any
  found = []

  def record(next_fun, args, kwargs, context):
    module = context.module
    if context.method_name == '__call__' and len(module.path) == 1:
      found.append((module.name, module.clone(parent=None, name=None),
                    args[0].shape))
    return next_fun(*args, **kwargs)

  def init(images_BHWC):
    with nn.intercept_methods(record):
      return model.init(jax.random.PRNGKey(0), images_BHWC, train=True)

  jax.eval_shape(init, jax.ShapeDtypeStruct((batch_size, 28, 28, 1), jnp.float32))
  return found


def layer_rows(name, module, shape, seconds) -> list[dict]:
  """flax-mnist's ms for one layer's forward and gradients."""
  key = jax.random.PRNGKey(0)
  x = jax.random.uniform(key, shape)
  variables = module.init({'params': key, 'dropout': key}, x)
  params = variables.get('params', {})

  def apply(p, x):
    kwargs = {}
    if isinstance(module, nn.Dropout):
      kwargs = dict(rngs={'dropout': key})
    return module.apply({'params': p}, x, **kwargs)

  y = jax.eval_shape(apply, params, x)
  g = jnp.ones(y.shape, y.dtype)
  rows = [(f'{name} forward', jax_ms(apply, (params, x), seconds))]
  if isinstance(module, models.Conv):
    rows.append((f'{name} input grad', jax_ms(
        lambda p, x, g: jax.vjp(lambda x: apply(p, x), x)[1](g), (params, x, g), seconds)))
    rows.append((f'{name} kernel grad', jax_ms(
        lambda p, x, g: jax.vjp(lambda p: apply(p, x), p)[1](g), (params, x, g), seconds)))
  else:
    rows.append((f'{name} gradients', jax_ms(
        lambda p, x, g: jax.vjp(apply, p, x)[1](g), (params, x, g), seconds)))
  return [{'piece': piece, 'flax_mnist_ms': ms} for piece, ms in rows]


def torch_layer_ms(module, shape, seconds) -> dict[str, float]:
  """PyTorch's ms for the same layer (NCHW, as PyTorch runs it)."""
  import torch
  from torch.nn import functional as F
  x_nhwc = torch.rand(shape)
  if isinstance(module, models.Conv):
    kh, kw = module.kernel_size
    x = x_nhwc.permute(0, 3, 1, 2).contiguous()
    w = torch.rand(module.features, shape[-1], kh, kw)
    padding = (kh // 2, kw // 2) if module.padding == 'SAME' else (0, 0)
    y = F.conv2d(x, w, padding=padding)
    g = torch.ones_like(y)

    def grad(mask):
      return lambda: torch.ops.aten.convolution_backward(
          g, x, w, [module.features], [1, 1], list(padding), [1, 1], False, [0, 0],
          1, mask)

    return {'forward': median_ms(lambda: F.conv2d(x, w, padding=padding), seconds),
            'input grad': median_ms(grad([True, False, False]), seconds),
            'kernel grad': median_ms(grad([False, True, True]), seconds)}
  if isinstance(module, models.MaxPool):
    x = x_nhwc.permute(0, 3, 1, 2).contiguous()
    forward = lambda x: F.max_pool2d(x, 2, ceil_mode=module.padding == 'SAME')
  elif isinstance(module, nn.Dense):
    x = x_nhwc
    w = torch.rand(module.features, shape[-1])
    b = torch.rand(module.features)
    forward = lambda x: F.linear(x, w, b)
    w.requires_grad_()
    b.requires_grad_()
  elif isinstance(module, nn.Dropout):
    x = x_nhwc
    forward = lambda x: F.dropout(x, module.rate, training=True)
  else:
    return {}
  x = x.requires_grad_()
  y = forward(x)
  g = torch.ones_like(y)

  def gradients():
    forward(x).backward(g)

  with torch.no_grad():
    fwd = median_ms(lambda: forward(x), seconds)
  return {'forward': fwd, 'gradients': max(median_ms(gradients, seconds) - fwd, 0.0)}


def optimizer_ms(config, seconds, torch_too: bool) -> tuple[float, float | None]:
  """(optax's, torch.optim's or None) ms for one update of the model's
  parameters."""
  state = core.create_train_state(config)
  grads = jax.tree_util.tree_map(jnp.ones_like, state.params)
  ours = jax_ms(lambda s, g: s.apply_gradients(grads=g), (state, grads), seconds)
  if not torch_too:
    return ours, None
  import torch
  tensors = [torch.zeros(x.shape, requires_grad=True)
             for x in jax.tree_util.tree_leaves(state.params)]
  for t in tensors:
    t.grad = torch.ones_like(t)
  kind = torch.optim.Adam if config.optimizer == 'adam' else torch.optim.SGD
  optimizer = kind(tensors, lr=config.learning_rate)
  return ours, median_ms(optimizer.step, seconds)


def host_ms(config, seconds) -> float:
  """ms to dispatch a jitted identity on the (donated) train state."""
  identity = jax.jit(lambda s: s, donate_argnums=0)
  state = [core.create_train_state(config)]

  def call():
    state[0] = jax.block_until_ready(identity(state[0]))

  return median_ms(call, seconds)


def profile(model_name: str, batch_size: int, seconds: float, torch_too: bool
            ) -> list[dict]:
  config = configs.Config(model=model_name, batch_size=batch_size,
                          **throughput.optimizer_config(model_name))
  rows = []
  for name, module, shape in layers(model_name, batch_size):
    if isinstance(module, models.Flatten):
      continue
    ours = layer_rows(name, module, shape, seconds)
    theirs = torch_layer_ms(module, shape, seconds) if torch_too else {}
    for row in ours:
      row['pytorch_ms'] = theirs.get(row['piece'].split(' ', 1)[1])
      rows.append(row)
  adam, torch_adam = optimizer_ms(config, seconds, torch_too)
  rows.append({'piece': config.optimizer, 'flax_mnist_ms': adam,
               'pytorch_ms': torch_adam})
  rows.append({'piece': 'host', 'flax_mnist_ms': host_ms(config, seconds),
               'pytorch_ms': None})
  step = throughput.measure(model_name, batch_size, 'float32',
                            core.steps_per_dispatch(config), seconds,
                            60_000 if seconds else 512)['ms_per_step']
  torch_step = None
  if torch_too:
    rng = np.random.default_rng(0)
    steps = max(5, int(seconds * 1e3 / step))
    rate = compare.pytorch_loop(
        model_name, batch_size, rng.integers(0, 256, (4096, 28, 28, 1), np.uint8),
        rng.integers(0, 10, 4096).astype(np.int32), steps)
    torch_step = 1e3 * batch_size / rate
  parts = sum(r['flax_mnist_ms'] for r in rows)
  rows.append({'piece': 'rest', 'flax_mnist_ms': max(step - parts, 0.0),
               'pytorch_ms': None})
  rows.append({'piece': 'step', 'flax_mnist_ms': step, 'pytorch_ms': torch_step})
  for row in rows:
    row['ratio'] = (row['flax_mnist_ms'] / row['pytorch_ms']
                    if row['pytorch_ms'] else None)
    row.update(model=model_name, batch=batch_size)
  return rows


def main():
  parser = common.arguments(__doc__)
  common.add_models_argument(parser, throughput.TUTORIALS)
  parser.add_argument('--batch-sizes', nargs='+', type=int,
                      help="default: the preset's and 128")
  parser.add_argument('--seconds', type=float, default=0.3,
                      help='time each piece for about this long')
  parser.add_argument('--no-torch', action='store_true', help='skip PyTorch')
  args = parser.parse_args()
  try:
    import torch
    torch.set_num_threads(os.cpu_count())
    torch_too = not args.no_torch
  except ImportError:
    print('step_profile.py: PyTorch is not installed: no pytorch column')
    torch_too = False
  seconds = 0.0 if args.smoke else args.seconds
  rows = []
  for model_name in args.models:
    sizes = args.batch_sizes or sorted({throughput.PRESET_BATCH[model_name], 128})
    for batch_size in ([8] if args.smoke else sizes):
      rows += profile(model_name, batch_size, seconds, torch_too)
      print(f'{model_name}, batch {batch_size}:')
      print(common.format_table([r for r in rows if r['model'] == model_name
                                 and r['batch'] == batch_size],
                                ['piece', 'flax_mnist_ms', 'pytorch_ms', 'ratio']),
            flush=True)
  common.report('profile', rows, ['model', 'batch', 'piece', 'flax_mnist_ms',
                                  'pytorch_ms', 'ratio'], args.out,
                unit='ms per training step; ratio = flax_mnist / pytorch')


if __name__ == '__main__':
  main()
