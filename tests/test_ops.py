import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flax_mnist import ops


@pytest.mark.parametrize('padding', ['VALID', 'SAME'])
@pytest.mark.parametrize('size', [26, 11, 7])
def test_max_pool_matches_flax_values_and_gradients(padding, size):
  x = jax.random.normal(jax.random.PRNGKey(size), (3, size, size, 4))
  expected = nn.max_pool(x, (2, 2), strides=(2, 2), padding=padding)
  np.testing.assert_array_equal(ops.max_pool(x, 2, padding), expected)
  # Random inputs have no ties, so both pick the same element.
  grad = jax.grad(lambda x: jnp.sum(jnp.sin(ops.max_pool(x, 2, padding))))(x)
  reference = jax.grad(lambda x: jnp.sum(jnp.sin(
      nn.max_pool(x, (2, 2), strides=(2, 2), padding=padding))))(x)
  np.testing.assert_array_equal(grad, reference)


@pytest.mark.parametrize('padding', ['VALID', 'SAME'])
def test_max_pool_ties_share_the_gradient_as_a_max_reduction_does(padding):
  # Small integers after a ReLU: many blocks hold two, three or four maxima.
  x = jnp.maximum(jax.random.randint(jax.random.PRNGKey(0), (2, 9, 9, 3), -2, 3), 0)
  x = x.astype(jnp.float32)
  pooled = 5 if padding == 'SAME' else 4
  g = jax.random.normal(jax.random.PRNGKey(1), (2, pooled, pooled, 3))

  def reduction(x):
    if padding == 'SAME':
      x = jnp.pad(x, ((0, 0), (0, 1), (0, 1), (0, 0)), constant_values=-jnp.inf)
    x = x[:, :x.shape[1] // 2 * 2, :x.shape[2] // 2 * 2]
    return x.reshape(2, x.shape[1] // 2, 2, x.shape[2] // 2, 2, 3).max(axis=(2, 4))

  y, vjp = jax.vjp(lambda x: ops.max_pool(x, 2, padding), x)
  y_ref, vjp_ref = jax.vjp(reduction, x)
  np.testing.assert_array_equal(y, y_ref)
  np.testing.assert_array_equal(vjp(g)[0], vjp_ref(g)[0])
  blocks = np.asarray(x)[:, :8, :8].reshape(2, 4, 2, 4, 2, 3)
  maxima = (blocks == blocks.max(axis=(2, 4), keepdims=True)).sum(axis=(2, 4))
  assert {2, 3, 4} <= set(maxima.ravel())


def test_max_pool_rejects_unknown_padding():
  with pytest.raises(ValueError, match='padding'):
    ops.max_pool(jnp.zeros((1, 4, 4, 1)), 2, 'FULL')


def _xla_conv(x, k, padding):
  return jax.lax.conv_general_dilated(
      x, k, (1, 1), padding, dimension_numbers=('NHWC', 'HWIO', 'NHWC'))


# Batches of 4 and 50: on jaxlib 0.12 the one over 32 images sums the kernel
# gradient over chunks (12, 13, 13 and 12 images).
@pytest.mark.parametrize('kernel, padding, batch', [
    (3, 'VALID', 4), (4, 'VALID', 4), (5, 'VALID', 50), (5, 'SAME', 4), (4, 'SAME', 4),
    (5, 'SAME', 50)])
def test_conv2d_matches_xla_values_and_gradients(kernel, padding, batch):
  kx, kk, kg = jax.random.split(jax.random.PRNGKey(kernel), 3)
  x = jax.random.normal(kx, (batch, 13, 13, 3))
  k = jax.random.normal(kk, (kernel, kernel, 3, 5))

  y = ops.conv2d(x, k, padding)
  np.testing.assert_allclose(y, _xla_conv(x, k, padding), rtol=1e-5, atol=1e-5)
  g = jax.random.normal(kg, y.shape)
  dx, dk = jax.vjp(lambda x, k: ops.conv2d(x, k, padding), x, k)[1](g)
  rdx, rdk = jax.vjp(lambda x, k: _xla_conv(x, k, padding), x, k)[1](g)
  np.testing.assert_allclose(dx, rdx, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(dk, rdk, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize('kernel, padding', [(5, 'SAME'), (3, 'VALID')])
def test_one_channel_conv2d_matches_xla_values_and_gradients(kernel, padding):
  # The first layers' case, computed on CPU as the sum of shifted images.
  kx, kk, kg = jax.random.split(jax.random.PRNGKey(kernel), 3)
  x = jax.random.uniform(kx, (8, 28, 28, 1))
  k = jax.random.normal(kk, (kernel, kernel, 1, 32))

  y, vjp = jax.vjp(jax.jit(lambda x, k: ops.conv2d(x, k, padding)), x, k)
  np.testing.assert_allclose(y, _xla_conv(x, k, padding), rtol=1e-5, atol=1e-5)
  g = jax.random.normal(kg, y.shape)
  _, xla_vjp = jax.vjp(lambda x, k: _xla_conv(x, k, padding), x, k)
  for ours, theirs in zip(vjp(g), xla_vjp(g)):
    np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize('batch', [1, 100, 128])
def test_matmul_matches_xla_values_and_gradients(batch):
  kx, kk, kg = jax.random.split(jax.random.PRNGKey(batch), 3)
  x = jax.random.uniform(kx, (batch, 784))
  k = jax.random.normal(kk, (784, 10))
  y, vjp = jax.vjp(jax.jit(ops.matmul), x, k)
  np.testing.assert_array_equal(y, x @ k)
  g = jax.random.normal(kg, y.shape)
  dx, dk = vjp(g)
  rdx, rdk = jax.vjp(lambda x, k: x @ k, x, k)[1](g)
  np.testing.assert_allclose(dx, rdx, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(dk, rdk, rtol=1e-5, atol=1e-4)


def test_dense_dot_general_keeps_dense_parameters_and_values():
  x = jax.random.uniform(jax.random.PRNGKey(0), (5, 784))
  stock, ours = nn.Dense(10), nn.Dense(10, dot_general=ops.dense_dot_general)
  params = stock.init(jax.random.PRNGKey(1), x)
  assert jax.tree.map(jnp.shape, ours.init(jax.random.PRNGKey(1), x)) == \
      jax.tree.map(jnp.shape, params)
  np.testing.assert_array_equal(ours.apply(params, x), stock.apply(params, x))


@pytest.mark.parametrize('precision, shape', [(None, (2, 3, 784)), ('highest', (2, 784))])
def test_dense_dot_general_rejects_other_products(precision, shape):
  layer = nn.Dense(10, dot_general=ops.dense_dot_general, precision=precision)
  with pytest.raises(ValueError, match=r"\(B, I\) @ \(I, O\)"):
    layer.init(jax.random.PRNGKey(0), jnp.ones(shape))
