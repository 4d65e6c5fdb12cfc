"""Convolutions rewritten into the forms XLA:CPU runs fast.

Two rewrites, active only inside `cpu_rewrites()` (the `Visualizer` enters it
around its steps on CPU):

1. The input gradient as a forward convolution. JAX differentiates
   `lax.conv_general_dilated` with respect to its input by a convolution whose
   kernel keeps its memory layout and swaps the roles of its input and output
   axes (HLO `dim_labels=..._01oi->...`). XLA:CPU hands forward convolutions
   (`01io`) to its fast library kernels (YNNPACK), but inside a `while` loop
   -- `lax.scan` over optimisation steps -- it leaves the `01oi` one to a slow
   generic path: one VGG-16 Adam step ran ~5x slower inside `lax.scan` than
   with this rewrite. Here the flipped, transposed kernel is materialised
   (a few hundred kB, hoisted out of the loop) and

     dL/dx = conv(dL/dy, flip(W)^T)  with stride 1 and padding
     k_eff - 1 - lo before / the remainder after.

   The weight gradient is JAX's own rule.
2. 3-D convolutions as sums of 2-D ones over the kernel's time taps: XLA:CPU
   has no fast 3-D convolution (I3D's 3x3x3 layers run 2-2.5x faster split).

Because `jax.custom_vjp` has no forward mode, the rewrites stay inside the
context; outside it `conv_general_dilated` is exactly
`lax.conv_general_dilated`, so `jvp`, `jacfwd` and Hessians of a model still
work. Zoo models build their convolutions with `layers.Conv`, which uses this
function; a wrapped user module can do the same to get the speed-up.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
from typing import Sequence

import jax
import jax.numpy as jnp
from jax import lax

_ACTIVE = contextvars.ContextVar("stviz_cpu_rewrites", default=False)


@contextlib.contextmanager
def cpu_rewrites(active: bool = True):
  """Within this context (at trace time), `conv_general_dilated` applies the rewrites."""
  token = _ACTIVE.set(active)
  try:
    yield
  finally:
    _ACTIVE.reset(token)


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None,
                         rhs_dilation=None, dimension_numbers=None,
                         feature_group_count=1, batch_group_count=1, precision=None,
                         preferred_element_type=None):
  """`lax.conv_general_dilated`, with the input gradient rewritten (module docstring).

  A 3-D convolution with more than one time tap (channels last) becomes a
  sum of 2-D ones (`_conv3d_as_2d`). The rewrite applies to plain stride-1
  convolutions (no input dilation, one
  feature and batch group, output laid out like the input: all but a few
  layers of the zoo); anything else, or any call outside
  `cpu_rewrites()`, is `lax.conv_general_dilated` unchanged. Strided
  layers keep JAX's rule because their rewritten gradient needs input
  dilation, which XLA:CPU runs on a slow generic path (I3D's stride-2 7x7x7
  `Conv3d_1a_7x7`: 6 s per step).
  """
  nd = lhs.ndim - 2
  dn = lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
  rhs_dilation = tuple(rhs_dilation or (1,) * nd)
  plain = (_ACTIVE.get() and feature_group_count == 1 and batch_group_count == 1
           and all(s == 1 for s in window_strides)
           and all(d == 1 for d in (lhs_dilation or (1,) * nd))
           and dn.lhs_spec == dn.out_spec and preferred_element_type is None)
  if not plain:
    return lax.conv_general_dilated(
        lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation, dimension_numbers,
        feature_group_count, batch_group_count, precision, preferred_element_type)
  if isinstance(padding, str):
    in_spatial = [lhs.shape[i] for i in dn.lhs_spec[2:]]
    window = [(rhs.shape[i] - 1) * d + 1 for i, d in zip(dn.rhs_spec[2:], rhs_dilation)]
    padding = lax.padtype_to_pads(in_spatial, window, window_strides, padding)
  padding = tuple((int(lo), int(hi)) for lo, hi in padding)
  if nd == 3 and dn == _NDHWC and rhs.shape[0] > 1:
    return _conv3d_as_2d(lhs, rhs, padding, rhs_dilation, precision)
  return _conv(lhs, rhs, tuple(window_strides), padding, rhs_dilation, dn, precision)


_NDHWC = lax.ConvDimensionNumbers((0, 4, 1, 2, 3), (4, 3, 0, 1, 2), (0, 4, 1, 2, 3))
_NHWC = lax.ConvDimensionNumbers((0, 3, 1, 2), (3, 2, 0, 1), (0, 3, 1, 2))


def _conv3d_as_2d(lhs, rhs, padding, rhs_dilation, precision):
  """A stride-1 3-D convolution as the sum over the kernel's k_t time taps of
  2-D convolutions of time-shifted frames (time folded into the batch).

  y[t] = sum_j conv2d(x_pad[t + j d_t], W[j]). XLA:CPU has no fast 3-D
  convolution; its 2-D ones (and their rewritten input gradients) are 2-2.5x
  faster on I3D's 3x3x3 layers (see `benchmarks/README.md`).
  """
  n, t, h, w, c = lhs.shape
  kt = rhs.shape[0]
  dt = rhs_dilation[0]
  (lo, hi), spatial_pad = padding[0], padding[1:]
  x = jnp.pad(lhs, ((0, 0), (lo, hi), (0, 0), (0, 0), (0, 0)))
  t_out = t + lo + hi - (kt - 1) * dt
  out = None
  for j in range(kt):
    frames = lax.slice_in_dim(x, j * dt, j * dt + t_out, axis=1)
    y = _conv(frames.reshape((n * t_out, h, w, c)), rhs[j], (1, 1), spatial_pad,
              rhs_dilation[1:], _NHWC, precision)
    out = y if out is None else out + y
  return out.reshape((n, t_out) + out.shape[1:])


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5, 6))
def _conv(lhs, rhs, strides, padding, rhs_dilation, dn, precision):
  return lax.conv_general_dilated(lhs, rhs, strides, padding, None, rhs_dilation, dn,
                                  precision=precision)


def _conv_fwd(lhs, rhs, strides, padding, rhs_dilation, dn, precision):
  return _conv(lhs, rhs, strides, padding, rhs_dilation, dn, precision), (lhs, rhs)


def _conv_bwd(strides, padding, rhs_dilation, dn, precision, res, g):
  lhs, rhs = res
  spatial_in = [lhs.shape[i] for i in dn.lhs_spec[2:]]
  spatial_out = [g.shape[i] for i in dn.out_spec[2:]]
  window = [rhs.shape[i] for i in dn.rhs_spec[2:]]
  # The flipped kernel with input and output channels exchanged, as a real array.
  kernel = lax.rev(rhs, dn.rhs_spec[2:])
  kernel = jnp.swapaxes(kernel, dn.rhs_spec[0], dn.rhs_spec[1])
  grad_lhs = lax.conv_general_dilated(
      g, kernel, (1,) * len(strides),
      _input_grad_padding(spatial_in, window, strides, spatial_out, padding, rhs_dilation),
      lhs_dilation=strides, rhs_dilation=rhs_dilation, dimension_numbers=dn,
      precision=precision)
  _, weight_vjp = jax.vjp(
      lambda w: lax.conv_general_dilated(lhs, w, strides, padding, None, rhs_dilation, dn,
                                         precision=precision), rhs)
  return grad_lhs, weight_vjp(g)[0]


_conv.defvjp(_conv_fwd, _conv_bwd)


def _input_grad_padding(in_shape: Sequence[int], window: Sequence[int],
                        strides: Sequence[int], out_shape: Sequence[int],
                        padding: Sequence[tuple[int, int]],
                        rhs_dilation: Sequence[int]) -> list[tuple[int, int]]:
  """Padding of the transposed convolution that gives back the input's shape.

  With the kernel's dilated extent k = (w - 1) d + 1 and the stride-dilated
  output extent o = (n_out - 1) s + 1: before k - 1 - lo, after whatever
  makes o + before + after - k + 1 = n_in (JAX's own transpose rule).
  """
  pads = []
  for n_in, w, s, n_out, (lo, _), d in zip(in_shape, window, strides, out_shape,
                                           padding, rhs_dilation):
    k = (w - 1) * d + 1
    before = k - 1 - lo
    pads.append((before, n_in + k - 1 - ((n_out - 1) * s + 1) - before))
  return pads
