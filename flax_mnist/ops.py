"""Convolution, max-pooling and a matrix product with gradients that are fast
on XLA:CPU.

The values are the usual float32 ones; only how they are computed changes.
XLA:CPU runs `reduce_window`'s gradient (`select_and_scatter`) far slower
than the forward pass, its reductions' kernels (jaxlib 0.12 runs them in
YNNPACK) keep XLA from fusing them with the ReLU and bias around them, and
the kernel gradient of a convolution (a convolution contracting over the
batch) runs slower per image the larger the batch; measured in
benchmarks/README.md. Here pooling is the elementwise max of the window's
strided slices, with the max reduction's own gradient written elementwise,
and on CPU the kernel gradient is XLA's own summed over chunks of the
batch (jaxlib 0.12), or one matrix product of gathered patches (older
jaxlib), a VALID convolution's input gradient one matrix product whose
kernel taps are summed back in place, and a one-channel convolution (the
first layer's) the sum of its kernel's taps times the shifted images
(jaxlib 0.12). Other backends keep XLA's own convolutions; the pooling is
the same on every backend. The matrix product (softmax regression's) pads a
narrow kernel to 16 columns on CPU, and computes its kernel gradient there
as (g^T @ x)^T, which XLA:CPU runs in YNNPACK, and not as x^T @ g, which it
leaves to Eigen's slower kernel.
"""

import functools
import operator

import jax
import jax.numpy as jnp
import numpy as np

_DIMENSIONS = ('NHWC', 'HWIO', 'NHWC')
# jaxlib 0.12's XLA:CPU computes the kernel gradient faster than the patches
# (deep_cnn's train step at batch 128: 71 against 84 ms on 2 Xeon cores);
# jaxlib 0.10's far slower (its conv2 kernel gradient: 45 against 33 ms).
_KERNEL_GRAD_BY_PATCHES_ON_CPU = jax.__version_info__ < (0, 12)
# jaxlib 0.12's XLA:CPU kernel gradient falls out of cache as the batch grows:
# in chunks of at most 16 images, summed, the train step at batch 128 takes
# 59-62 against 78-82 ms (deep_cnn) and 20 against 24-26 ms (keras_cnn) on 2
# Xeon cores; up to 32 images one piece is as fast (keras_cnn at 32).
_KERNEL_GRAD_CHUNK = 16
_CPU_MIN_COLUMNS = 16
# jaxlib 0.12's XLA:CPU runs a one-channel convolution slower than the sum of
# its taps times the shifted images. jaxlib 0.10's does not for deep_cnn:
# with the sum its train step at batch 128 takes 112 against 103 ms (keras_cnn
# 25 against 27).
_ONE_CHANNEL_CONV_AS_SUM_ON_CPU = jax.__version_info__ >= (0, 12)


def _window_slices(x_BHWC: jax.Array, window: int) -> list[jax.Array]:
  """Element (i, j) of every `window` x `window` block, one array per (i, j)."""
  return [x_BHWC[:, i::window, j::window]
          for i in range(window) for j in range(window)]


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _block_max(x_BHWC: jax.Array, window: int) -> jax.Array:
  return functools.reduce(jnp.maximum, _window_slices(x_BHWC, window))


def _block_max_fwd(x_BHWC, window):
  y_BHWC = _block_max(x_BHWC, window)
  return y_BHWC, (x_BHWC, y_BHWC)


def _block_max_bwd(window, residuals, g_BHWC):
  # A max reduction's own gradient (ties share it equally), bit for bit, as
  # elementwise ops that XLA fuses with the layers around them.
  x_BHWC, y_BHWC = residuals
  ties = functools.reduce(operator.add, [
      (part == y_BHWC).astype(g_BHWC.dtype) for part in _window_slices(x_BHWC, window)])
  batch, height, width, channels = y_BHWC.shape
  blocks = x_BHWC.reshape(batch, height, window, width, window, channels)
  at_max = blocks == y_BHWC[:, :, None, :, None, :]
  dx = jnp.where(at_max, (g_BHWC / ties)[:, :, None, :, None, :], 0)
  return (dx.reshape(x_BHWC.shape),)


_block_max.defvjp(_block_max_fwd, _block_max_bwd)


def max_pool(x_BHWC: jax.Array, window: int, padding: str) -> jax.Array:
  """Max over non-overlapping `window` x `window` blocks (stride = window).

  'VALID' drops the rows and columns that do not fill a block, 'SAME' pads
  them with -inf, as `nn.max_pool` does. Ties share the gradient equally.
  """
  _, height, width, _ = x_BHWC.shape
  if padding == 'SAME':
    pad_h, pad_w = -height % window, -width % window
    x_BHWC = jnp.pad(x_BHWC, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)),
                     constant_values=-jnp.inf)
  elif padding != 'VALID':
    raise ValueError(f"padding must be 'SAME' or 'VALID', got {padding!r}")
  _, height, width, _ = x_BHWC.shape
  return _block_max(
      x_BHWC[:, :height // window * window, :width // window * window], window)


def _padding(kernel_shape: tuple[int, ...], padding: str) -> list[tuple[int, int]]:
  """Explicit (low, high) padding of the two spatial axes."""
  if padding == 'VALID':
    return [(0, 0), (0, 0)]
  if padding == 'SAME':
    return [((k - 1) // 2, k // 2) for k in kernel_shape[:2]]
  raise ValueError(f"padding must be 'SAME' or 'VALID', got {padding!r}")


def _conv(x_BHWC, kernel_HWIO, padding):
  return jax.lax.conv_general_dilated(
      x_BHWC, kernel_HWIO, (1, 1), _padding(kernel_HWIO.shape, padding),
      dimension_numbers=_DIMENSIONS)


def _kernel_grad_by_patches(x_BHWC, g_BHWO, kernel_shape, padding):
  """d loss / d kernel as (patches of x)^T @ g: one gather, one matmul."""
  kh, kw, c_in, c_out = kernel_shape
  x_BHWC = jnp.pad(x_BHWC, ((0, 0), *_padding(kernel_shape, padding), (0, 0)))
  batch, height, width, _ = x_BHWC.shape
  out_h, out_w = height - kh + 1, width - kw + 1
  rows, cols, di, dj = np.meshgrid(np.arange(out_h), np.arange(out_w),
                                   np.arange(kh), np.arange(kw), indexing='ij')
  flat_ids = ((rows + di) * width + cols + dj).reshape(-1)
  patches = x_BHWC.reshape(batch, height * width, c_in)[:, flat_ids]
  patches = patches.reshape(batch * out_h * out_w, kh * kw * c_in)
  return (patches.T @ g_BHWO.reshape(-1, c_out)).reshape(kernel_shape)


def _input_grad_by_matmul(g_BHWO: jax.Array, kernel_HWIO: jax.Array) -> jax.Array:
  """d loss / d x of a VALID convolution: g @ kernel^T, each tap added back at its offset."""
  kh, kw, c_in, c_out = kernel_HWIO.shape
  batch, out_h, out_w, _ = g_BHWO.shape
  taps = g_BHWO.reshape(-1, c_out) @ kernel_HWIO.reshape(-1, c_out).T
  taps = taps.reshape(batch, out_h, out_w, kh, kw, c_in)
  return functools.reduce(operator.add, [
      jnp.pad(taps[:, :, :, i, j], ((0, 0), (i, kh - 1 - i), (j, kw - 1 - j), (0, 0)))
      for i in range(kh) for j in range(kw)])


def _xla_kernel_grad(x_BHWC, g_BHWO, kernel_shape, padding):
  kernel = jnp.zeros(kernel_shape, x_BHWC.dtype)  # the gradient is linear in g
  return jax.vjp(lambda k: _conv(x_BHWC, k, padding), kernel)[1](g_BHWO)[0]


def _kernel_grad_in_chunks(x_BHWC, g_BHWO, kernel_shape, padding):
  """XLA's kernel gradient over batch chunks of about `_KERNEL_GRAD_CHUNK`, summed."""
  batch = x_BHWC.shape[0]
  if batch <= 2 * _KERNEL_GRAD_CHUNK:
    return _xla_kernel_grad(x_BHWC, g_BHWO, kernel_shape, padding)
  # Without the barrier XLA fuses the layers that made x (the pooling and ReLU
  # before a convolution) into each chunk's copy, and computes them once per
  # chunk (fast_cnn's train step at batch 128 5% slower).
  x_BHWC = jax.lax.optimization_barrier(x_BHWC)
  bounds = np.linspace(0, batch, -(-batch // _KERNEL_GRAD_CHUNK) + 1).round().astype(int)
  return functools.reduce(operator.add, (
      _xla_kernel_grad(x_BHWC[a:b], g_BHWO[a:b], kernel_shape, padding)
      for a, b in zip(bounds[:-1], bounds[1:])))


def _one_channel_conv(x_BHWC, kernel_HWIO, padding):
  """A one-channel float32 convolution as the sum of its taps times the
  shifted images: one elementwise fusion, which jaxlib 0.12's XLA:CPU runs
  faster than its convolution kernel (train steps at batch 128, 2 Xeon
  cores: deep_cnn 3%, keras_cnn 5% and fast_cnn 14% faster)."""
  kh, kw, _, c_out = kernel_HWIO.shape
  x_BHWC = jnp.pad(x_BHWC, ((0, 0), *_padding(kernel_HWIO.shape, padding), (0, 0)))
  out_h, out_w = x_BHWC.shape[1] - kh + 1, x_BHWC.shape[2] - kw + 1
  taps_TO = kernel_HWIO.reshape(kh * kw, c_out)
  y_BHWO = functools.reduce(operator.add, [
      x_BHWC[:, i:i + out_h, j:j + out_w] * taps_TO[i * kw + j]
      for i in range(kh) for j in range(kw)])
  # Without the barrier XLA fuses the sum into each strided slice of the
  # pooling after it and computes it once per slice (deep_cnn 1.33x slower).
  return jax.lax.optimization_barrier(y_BHWO)


def _conv_forward(x_BHWC, kernel_HWIO, padding):
  if (not _ONE_CHANNEL_CONV_AS_SUM_ON_CPU or kernel_HWIO.shape[2] != 1 or
      x_BHWC.dtype != jnp.float32):
    return _conv(x_BHWC, kernel_HWIO, padding)
  return jax.lax.platform_dependent(
      x_BHWC, kernel_HWIO, cpu=functools.partial(_one_channel_conv, padding=padding),
      default=functools.partial(_conv, padding=padding))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def conv2d(x_BHWC: jax.Array, kernel_HWIO: jax.Array, padding: str) -> jax.Array:
  """Stride-1 2-D convolution (cross-correlation), NHWC input, HWIO kernel."""
  return _conv_forward(x_BHWC, kernel_HWIO, padding)


def _conv2d_fwd(x_BHWC, kernel_HWIO, padding):
  return _conv_forward(x_BHWC, kernel_HWIO, padding), (x_BHWC, kernel_HWIO)


def _conv2d_bwd(padding, residuals, g_BHWO):
  x_BHWC, kernel_HWIO = residuals
  _, xla_vjp = jax.vjp(lambda x, k: _conv(x, k, padding), x_BHWC, kernel_HWIO)
  kernel_grad = (_kernel_grad_by_patches if _KERNEL_GRAD_BY_PATCHES_ON_CPU
                 else _kernel_grad_in_chunks)

  def cpu(g):
    # A VALID convolution's input gradient pads g by the kernel's size less
    # one, which XLA:CPU leaves to Eigen's slower kernel (not YNNPACK's).
    dx = (_input_grad_by_matmul(g, kernel_HWIO) if padding == 'VALID'
          else xla_vjp(g)[0])
    return dx, kernel_grad(x_BHWC, g, kernel_HWIO.shape, padding)

  return jax.lax.platform_dependent(g_BHWO, cpu=cpu, default=xla_vjp)


conv2d.defvjp(_conv2d_fwd, _conv2d_bwd)


def _matmul(x_BI, kernel_IO):
  return jax.lax.dot_general(x_BI, kernel_IO, (((1,), (0,)), ((), ())))


def _cpu_product(x_BI, kernel_IO):
  # XLA:CPU's YNNPACK computes a narrow product faster with its kernel padded
  # to 16 zero-filled columns: softmax regression's train step (10 columns)
  # 6-8% faster at batch 128 on 2 Xeon cores, bit for bit the same values.
  columns = kernel_IO.shape[1]
  if columns >= _CPU_MIN_COLUMNS:
    return _matmul(x_BI, kernel_IO)
  padded_IO = jnp.pad(kernel_IO, ((0, 0), (0, _CPU_MIN_COLUMNS - columns)))
  return _matmul(x_BI, padded_IO)[:, :columns]


def _product(x_BI, kernel_IO):
  return jax.lax.platform_dependent(x_BI, kernel_IO, cpu=_cpu_product,
                                    default=_matmul)


@jax.custom_vjp
def matmul(x_BI: jax.Array, kernel_IO: jax.Array) -> jax.Array:
  """x @ kernel for (B, I) and (I, O) arrays, the product `nn.Dense` computes.

  Reverse mode only (a custom VJP), like `conv2d`.

  >>> x, kernel = jnp.ones((2, 3)), jnp.ones((3, 4))
  >>> float(jax.grad(lambda k: matmul(x, k).sum())(kernel)[0, 0])
  2.0
  """
  return _product(x_BI, kernel_IO)


def _matmul_fwd(x_BI, kernel_IO):
  return _product(x_BI, kernel_IO), (x_BI, kernel_IO)


def _matmul_bwd(residuals, g_BO):
  x_BI, kernel_IO = residuals
  _, xla_vjp = jax.vjp(_matmul, x_BI, kernel_IO)

  def cpu(g_BO):
    # x^T @ g contracts the batch, the leading axis of both; XLA:CPU runs it
    # in Eigen (55-59 us for softmax regression at batch 100 on 2 Xeon cores).
    # g^T @ x, then transposed, runs in YNNPACK (11 us). The barriers keep
    # XLA's algebraic simplifier from folding the transposes back into x^T @ g.
    barrier = jax.lax.optimization_barrier
    kernel_grad = barrier(barrier(g_BO.T) @ x_BI).T
    return xla_vjp(g_BO)[0], kernel_grad.astype(kernel_IO.dtype)

  return jax.lax.platform_dependent(g_BO, cpu=cpu, default=xla_vjp)


matmul.defvjp(_matmul_fwd, _matmul_bwd)


def dense_dot_general(lhs: jax.Array, rhs: jax.Array, dimension_numbers,
                      precision=None, preferred_element_type=None) -> jax.Array:
  """`matmul` as `nn.Dense`'s `dot_general`, for 2-D inputs.

  >>> import flax.linen as nn
  >>> layer = nn.Dense(4, dot_general=dense_dot_general)
  >>> params = layer.init(jax.random.PRNGKey(0), jnp.ones((2, 3)))
  >>> layer.apply(params, jnp.ones((2, 3))).shape
  (2, 4)
  """
  if (dimension_numbers != (((1,), (0,)), ((), ())) or lhs.ndim != 2 or
      rhs.ndim != 2 or precision is not None or preferred_element_type is not None):
    raise ValueError(
        "dense_dot_general computes only nn.Dense's (B, I) @ (I, O) product, "
        f'got {lhs.shape} and {rhs.shape} with {dimension_numbers}, '
        f'precision={precision}, preferred_element_type={preferred_element_type}')
  return matmul(lhs, rhs)
