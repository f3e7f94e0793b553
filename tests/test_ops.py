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


def test_max_pool_rejects_unknown_padding():
  with pytest.raises(ValueError, match='padding'):
    ops.max_pool(jnp.zeros((1, 4, 4, 1)), 2, 'FULL')


# Batches of 4 and 50: on jaxlib 0.12 the one over 32 images sums the kernel
# gradient over chunks (12, 13, 13 and 12 images).
@pytest.mark.parametrize('kernel, padding, batch', [(3, 'VALID', 4), (5, 'SAME', 4),
                                                    (4, 'SAME', 4), (5, 'SAME', 50)])
def test_conv2d_matches_xla_values_and_gradients(kernel, padding, batch):
  kx, kk, kg = jax.random.split(jax.random.PRNGKey(kernel), 3)
  x = jax.random.normal(kx, (batch, 13, 13, 3))
  k = jax.random.normal(kk, (kernel, kernel, 3, 5))

  def reference(x, k):
    return jax.lax.conv_general_dilated(
        x, k, (1, 1), padding, dimension_numbers=('NHWC', 'HWIO', 'NHWC'))

  y = ops.conv2d(x, k, padding)
  np.testing.assert_allclose(y, reference(x, k), rtol=1e-5, atol=1e-5)
  g = jax.random.normal(kg, y.shape)
  dx, dk = jax.vjp(lambda x, k: ops.conv2d(x, k, padding), x, k)[1](g)
  rdx, rdk = jax.vjp(reference, x, k)[1](g)
  np.testing.assert_allclose(dx, rdx, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(dk, rdk, rtol=1e-4, atol=1e-3)
