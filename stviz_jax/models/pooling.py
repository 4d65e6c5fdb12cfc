"""Max pooling as reshapes and element-wise maxima.

`max_pool(x, kernel, stride, padding)` has the values of
`lax.reduce_window(x, -inf, max, ...)`, but XLA:CPU runs reduce_window's
gradient (select-and-scatter) several times slower than the equivalent
element-wise code, and the activation-maximisation step back-propagates
through every pool. So:

* windows that tile the input exactly (VGG's 2x2 / 2) are a reshape and a
  max over the window axes;
* any other box is separable, max over a box = the max along one axis after
  another, each a maximum of k strided slices of the (-inf padded) input.

At tied maxima the gradient is shared among the tied inputs instead of going
to one of them; both are subgradients of max, and after a ReLU ties are zeros
whose gradient the ReLU stops anyway.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
from jax import lax


def max_pool(x: jax.Array, kernel: Sequence[int], stride: Sequence[int],
             padding: Sequence[tuple[int, int]]) -> jax.Array:
  """Max over windows `kernel` every `stride` of `x (B, *spatial, C)`, padded with -inf.

  Args:
    x: `(B, *spatial, C)`.
    kernel, stride: one entry per spatial axis.
    padding: `(lo, hi)` per spatial axis; padded positions never win a max.

  Returns:
    `(B, *out, C)` with `out_i = (n_i + lo_i + hi_i - k_i) // s_i + 1`, the
    values of `lax.reduce_window` with the same arguments.
  """
  spatial = x.shape[1:-1]
  if not len(kernel) == len(stride) == len(padding) == len(spatial):
    raise ValueError(f"max_pool: kernel {tuple(kernel)}, stride {tuple(stride)} and "
                     f"padding {tuple(padding)} need one entry per spatial axis of "
                     f"{tuple(spatial)}")
  if (tuple(kernel) == tuple(stride) and not any(lo or hi for lo, hi in padding)
      and all(n % k == 0 for n, k in zip(spatial, kernel))):
    return _tiled_max(x, kernel)
  for axis, (k, s, (lo, hi)) in enumerate(zip(kernel, stride, padding), start=1):
    x = _max_along(x, axis, k, s, lo, hi)
  return x


def _tiled_max(x: jax.Array, kernel: Sequence[int]) -> jax.Array:
  """Max over non-overlapping windows that tile `x` exactly: reshape, reduce."""
  shape = [x.shape[0]]
  for n, k in zip(x.shape[1:-1], kernel):
    shape += [n // k, k]
  y = x.reshape(shape + [x.shape[-1]])
  return y.max(axis=tuple(range(2, 2 * len(kernel) + 1, 2)))


def _max_along(x: jax.Array, axis: int, k: int, s: int, lo: int, hi: int) -> jax.Array:
  """1-D max pooling of `x` along `axis`: the maximum of k strided slices."""
  if k == 1 and s == 1 and lo == hi == 0:
    return x
  if lo or hi:
    pads = [(0, 0, 0)] * x.ndim
    pads[axis] = (lo, hi, 0)
    x = lax.pad(x, jnp.array(-jnp.inf, x.dtype), pads)
  n = x.shape[axis]
  out = (n - k) // s + 1
  if out < 1:
    raise ValueError(f"max_pool: window {k} is larger than the padded extent {n} of "
                     f"axis {axis}")
  slices = [lax.slice_in_dim(x, j, j + (out - 1) * s + 1, s, axis) for j in range(k)]
  y = slices[0]
  for other in slices[1:]:
    y = jnp.maximum(y, other)
  return y
