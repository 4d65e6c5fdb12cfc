"""Max pooling as reshapes and element-wise maxima equals lax.reduce_window.

Values always; gradients wherever the maxima are unique (random inputs), in
1-3 spatial dimensions, tiling and overlapping windows, with -inf padding.
"""


import jax
import jax.numpy as jnp
import numpy as np
import pytest

from stviz_jax.models import pooling

CASES = [
    ((8, 6), (2, 2), (2, 2), ((0, 0), (0, 0))),            # tiles: reshape path
    ((4, 6, 6), (2, 3, 2), (2, 3, 2), ((0, 0),) * 3),      # tiles, 3-D
    ((9, 7), (3, 3), (2, 2), ((1, 1), (0, 1))),            # overlapping, padded
    ((5, 9, 9), (3, 3, 3), (1, 1, 1), ((1, 1),) * 3),      # I3D Branch_3 (SAME, stride 1)
    ((6, 9, 9), (1, 3, 3), (1, 2, 2), ((0, 0), (1, 1), (1, 1))),  # I3D MaxPool3d_2a
    ((7, 8, 8), (3, 3, 3), (2, 2, 2), ((1, 1), (0, 1), (0, 1))),  # I3D MaxPool3d_4a
    ((11,), (3,), (2,), ((0, 0),)),                        # 1-D, ragged end
]


def _reference(x, kernel, stride, padding):
  return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, *kernel, 1), (1, *stride, 1),
                               [(0, 0), *padding, (0, 0)])


@pytest.mark.parametrize("spatial,kernel,stride,padding", CASES)
def test_values_and_gradients_equal_reduce_window(spatial, kernel, stride, padding):
  x = jax.random.normal(jax.random.PRNGKey(len(spatial)), (2, *spatial, 3))
  want, ref_vjp = jax.vjp(lambda v: _reference(v, kernel, stride, padding), x)
  got, vjp = jax.vjp(lambda v: pooling.max_pool(v, kernel, stride, padding), x)
  np.testing.assert_array_equal(got, want)
  ct = jax.random.normal(jax.random.PRNGKey(9), want.shape)
  np.testing.assert_allclose(vjp(ct)[0], ref_vjp(ct)[0], rtol=1e-6, atol=1e-6)


def test_bad_arguments_name_what_is_wrong():
  x = jnp.zeros((1, 4, 4, 1))
  with pytest.raises(ValueError, match="one entry per spatial axis"):
    pooling.max_pool(x, (2,), (2, 2), ((0, 0), (0, 0)))
  with pytest.raises(ValueError, match="window 5 is larger than the padded extent 4"):
    pooling.max_pool(x, (5, 5), (1, 1), ((0, 0), (0, 0)))


@pytest.mark.parametrize("spatial,kernel,stride,padding", CASES)
def test_compact_gradient_is_reduce_windows_also_at_ties(spatial, kernel, stride, padding):
  """Inside `pooling.compact_gradient()` the gradient keeps one window position per
  output and routes to the first maximum in row-major order, as reduce_window's
  does: equal to it bit for bit, on inputs with many ties (small integers)."""
  x = jax.random.randint(jax.random.PRNGKey(3), (2, *spatial, 3), 0, 3).astype(jnp.float32)
  want, ref_vjp = jax.vjp(lambda v: _reference(v, kernel, stride, padding), x)
  with pooling.compact_gradient():
    got, vjp = jax.vjp(lambda v: pooling.max_pool(v, kernel, stride, padding), x)
    jitted = jax.jit(jax.grad(lambda v: jnp.sum(pooling.max_pool(v, kernel, stride,
                                                                  padding) ** 2)))(x)
  np.testing.assert_array_equal(got, want)
  # Integer cotangents: sums of overlapping windows are exact in any order.
  ct = jax.random.randint(jax.random.PRNGKey(9), want.shape, -8, 8).astype(jnp.float32)
  np.testing.assert_array_equal(vjp(ct)[0], ref_vjp(ct)[0])
  np.testing.assert_array_equal(jitted, ref_vjp(2 * want)[0])


def test_compact_pool_keeps_one_byte_per_output():
  """The only residual of the compact gradient is an int8 window code the size
  of the output (what `jax.vjp` closes over), not the input's float slices."""
  x = jnp.zeros((1, 8, 16, 16, 32))
  with pooling.compact_gradient():
    _, vjp = jax.vjp(lambda v: pooling.max_pool(v, (3, 3, 3), (2, 2, 2), ((1, 1),) * 3), x)
  kept = [leaf for leaf in jax.tree_util.tree_leaves(vjp) if hasattr(leaf, "dtype")]
  assert [(leaf.dtype, leaf.shape) for leaf in kept] == [(jnp.int8, (1, 4, 8, 8, 32))]
  with pooling.compact_gradient(), pytest.raises(ValueError, match="window 5 is larger"):
    pooling.max_pool(jnp.zeros((1, 4, 4, 1)), (5, 5), (1, 1), ((0, 0), (0, 0)))
