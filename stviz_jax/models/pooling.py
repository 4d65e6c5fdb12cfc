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

Inside `compact_gradient()` (the `Visualizer` enters it around its steps)
the same maxima also give the position of each window's maximum (an int8
code for windows of up to 127 positions), which is all the gradient keeps: it
routes each output's cotangent to that input, the first maximum in row-major
window order, exactly `reduce_window`'s gradient, gathered phase by phase in
element-wise passes. The gradient of element-wise maxima keeps every strided
slice and a float tie weight per slice (I3D to `Mixed_4f` at 16 x 112 x 112:
61 MB of the 152 MB a unit needed). `jax.custom_vjp` has no forward mode, so
outside the context `max_pool` stays plain JAX (`jvp`, Hessians).
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import itertools
import math
from typing import Sequence

import jax
import jax.numpy as jnp
from jax import lax

_COMPACT = contextvars.ContextVar("stviz_compact_pool_gradient", default=False)


@contextlib.contextmanager
def compact_gradient(active: bool = True):
  """Within this context (at trace time), `max_pool`'s gradient keeps only the
  window position of each maximum (module docstring)."""
  token = _COMPACT.set(active)
  try:
    yield
  finally:
    _COMPACT.reset(token)


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
  if _COMPACT.get():
    padding = tuple((int(lo), int(hi)) for lo, hi in padding)
    return _indexed_max_pool(tuple(spatial), tuple(kernel), tuple(stride), padding)(x)
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


@functools.lru_cache(maxsize=None)
def _indexed_max_pool(spatial, kernel, stride, padding):
  """`max_pool` for inputs of this spatial shape, whose gradient keeps only the
  window position of each maximum (module docstring)."""
  nd = len(spatial)
  padded = [n + lo + hi for n, (lo, hi) in zip(spatial, padding)]
  outs = [(n - k) // s + 1 for n, k, s in zip(padded, kernel, stride)]
  for axis, (n, k, o) in enumerate(zip(padded, kernel, outs), start=1):
    if o < 1:
      raise ValueError(f"max_pool: window {k} is larger than the padded extent {n} of "
                       f"axis {axis}")
  # Position j of a window, row-major: sum_a j_a * prod(kernel[a + 1:]).
  radix = [math.prod(kernel[a + 1:]) for a in range(nd)]
  code_dtype = jnp.int8 if math.prod(kernel) <= 127 else jnp.int32

  def forward(x):
    v = lax.pad(x, jnp.array(-jnp.inf, x.dtype),
                [(0, 0, 0)] + [(lo, hi, 0) for lo, hi in padding] + [(0, 0, 0)])
    code = jnp.zeros((), code_dtype)
    # The last axis first: the axis reduced last decides ties first, so the
    # winner is the first maximum in row-major window order.
    for a in reversed(range(nd)):
      k, s, o = kernel[a], stride[a], outs[a]
      if k == 1 and s == 1:
        continue
      take = lambda t, j: lax.slice_in_dim(t, j, j + (o - 1) * s + 1, s, a + 1)
      best, best_code = take(v, 0), take(jnp.broadcast_to(code, v.shape), 0)
      for j in range(1, k):
        candidate = take(v, j)
        better = candidate > best  # strict: an earlier position keeps a tie.
        best = jnp.where(better, candidate, best)
        best_code = jnp.where(better, take(jnp.broadcast_to(code, v.shape), j)
                              + jnp.asarray(j * radix[a], code_dtype), best_code)
      v, code = best, best_code
    return v, jnp.broadcast_to(code, v.shape)

  @jax.custom_vjp
  def pool(x):
    return forward(x)[0]

  # The gradient gathers: padded input i = b s + r (per axis: block b, phase r)
  # receives g[b - m] where that output's maximum sat at window position
  # j = r + m s. Per phase that is a sum of shifted slices of g and the code,
  # one element-wise pass; the phases are interleaved at the end.
  blocks = [-(-n // s) for n, s in zip(padded, stride)]
  reach = [-(-k // s) for k, s in zip(kernel, stride)]  # most outputs over one input

  def pool_bwd(code, g):
    widths = [(0, 0)] + [(m - 1, b - o) for m, b, o in zip(reach, blocks, outs)] + [(0, 0)]
    g = jnp.pad(g, widths)
    code = jnp.pad(code, widths, constant_values=-1)  # never a window position
    phases = []
    for rs in itertools.product(*(range(s) for s in stride)):
      total = jnp.zeros((g.shape[0], *blocks, g.shape[-1]), g.dtype)
      for ms in itertools.product(*(range(len(range(r, k, s)))
                                    for r, k, s in zip(rs, kernel, stride))):
        j = sum((r + m * s) * w for r, m, s, w in zip(rs, ms, stride, radix))
        window = (slice(None),) + tuple(slice(top - 1 - m, top - 1 - m + b) for top, m, b
                                        in zip(reach, ms, blocks)) + (slice(None),)
        total = total + jnp.where(code[window] == j, g[window], jnp.zeros((), g.dtype))
      phases.append(total)
    # (N, *blocks, phases, C) -> (N, b_1, s_1, ..., b_d, s_d, C) -> the unpadded input.
    y = jnp.stack(phases, axis=-2).reshape((g.shape[0], *blocks, *stride, g.shape[-1]))
    order = [0] + [a for i in range(nd) for a in (1 + i, 1 + nd + i)] + [1 + 2 * nd]
    y = y.transpose(order).reshape((g.shape[0], *(b * s for b, s in zip(blocks, stride)),
                                    g.shape[-1]))
    crop = tuple(slice(lo, lo + n) for (lo, _), n in zip(padding, spatial))
    return (y[(slice(None),) + crop + (slice(None),)],)

  pool.defvjp(forward, pool_bwd)  # the residual: the window codes
  return pool
