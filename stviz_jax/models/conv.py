"""Convolutions rewritten into the forms XLA:CPU runs fast.

Three rewrites, active only inside `cpu_rewrites()` (the `Visualizer` enters it
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
2. 3-D convolutions as sums of 2-D ones over the kernel's time taps (on
   large frames their input gradient one 2-D convolution for all taps):
   XLA:CPU has no fast 3-D convolution (I3D's 3x3x3 layers run 2-2.5x faster
   split).
3. Space-to-depth for strided 3-D convolutions of few input channels (I3D's
   7x7x7 stride-2 RGB stem), as TPU stems do: the padded input's s_t x s_h x
   s_w blocks become channels (3 -> 24) and the zero-padded kernel's taps
   regroup likewise (7 -> 4 per axis), giving a stride-1 convolution that
   takes rewrites 1 and 2 (kernels at least as long as the stride; shorter
   ones would multiply zeros). Its input gradient is then forward 2-D
   convolutions plus a reshape, instead of JAX's input-dilated rule.
Programs using them compile with `compiler_options()` (on CPU
`CPU_COMPILER_OPTIONS`: XLA:CPU's YNNPACK fusions off), so convolutions run
on XLA's Eigen kernels, which measured 1.2-1.6x faster on these layers (one 3x3 64 -> 192 convolution over 32
frames of 28 x 28: 22 against 34 ms; the I3D step of
`benchmarks/speed_video.py` 1.18x, the VGG-16 fusion step 1.27x). YNNPACK's
kernels also slow down 2-2.5x per image once one call's output outgrows the
caches, which a fourth rewrite (batches in pieces of 1 MiB outputs) used to
work around; Eigen's do not.

Every kernel these rewrites derive from the weights (flipped, transposed,
regrouped) passes an optimisation barrier (`_invariant`), so XLA builds it
once per compiled call, outside the optimisation's loop, not every step.

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
import itertools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

_ACTIVE = contextvars.ContextVar("stviz_cpu_rewrites", default=False)
# Rewrite 3 on/off (trace time); a switch so benchmarks can measure what it buys.
_SPACE_TO_DEPTH = contextvars.ContextVar("stviz_space_to_depth", default=True)
# Strided 3-D convolutions with fewer input channels than this take rewrite 3
# (more channels: the phases of `_strided_input_grad` are fast already).
SPACE_TO_DEPTH_MAX_CHANNELS = 16
# XLA:CPU compile options for programs using the rewrites (module docstring).
# An empty list of YNN fusion types switches them all off.
CPU_COMPILER_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": ""}
# Rewrite 2: the input gradient of a 3-D convolution over frames of at least
# this many pixels is one 2-D convolution for all time taps (`_time_taps_bwd`).
TAPS_TOGETHER_MIN_PIXELS = 28 * 28


@contextlib.contextmanager
def _setting(var: contextvars.ContextVar, value):
  token = var.set(value)
  try:
    yield
  finally:
    var.reset(token)


def cpu_rewrites(active: bool = True):
  """Within this context (at trace time), `conv_general_dilated` applies the rewrites."""
  return _setting(_ACTIVE, active)


def space_to_depth(active: bool = True):
  """Within this context (at trace time), rewrite 3 (module docstring) is on or off."""
  return _setting(_SPACE_TO_DEPTH, active)


@functools.cache
def _cpu_options_accepted() -> bool:
  """Whether this XLA compiles with `CPU_COMPILER_OPTIONS` (an XLA that dropped
  a debug option rejects it; the programs then compile as they are)."""
  try:
    jax.jit(lambda x: x + 1, compiler_options=CPU_COMPILER_OPTIONS).lower(
        np.float32(0)).compile()
  except Exception:  # XLA's error type for an unknown option varies by version.
    return False
  return True


def compiler_options() -> dict | None:
  """XLA options for programs using the rewrites (the `Visualizer`'s step, the
  quality check): on CPU those they were measured with (`CPU_COMPILER_OPTIONS`),
  elsewhere none."""
  if jax.default_backend() != "cpu" or not _cpu_options_accepted():
    return None
  return dict(CPU_COMPILER_OPTIONS)


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None,
                         rhs_dilation=None, dimension_numbers=None,
                         feature_group_count=1, batch_group_count=1, precision=None,
                         preferred_element_type=None):
  """`lax.conv_general_dilated`, rewritten inside `cpu_rewrites()` (module docstring).

  Rewritten: convolutions without input dilation, with one feature and batch
  group and the output laid out like the input (every zoo layer); strided
  ones also need channels-last layout and no kernel dilation. Their input
  gradient becomes forward convolutions (stride 1: one; strided: one per
  output phase, `_strided_input_grad`), and a stride-1 3-D convolution with
  more than one time tap becomes a sum of 2-D ones (`_conv3d_as_2d`). A
  strided 3-D one with under `SPACE_TO_DEPTH_MAX_CHANNELS` input channels
  and kernels no shorter than the stride becomes a stride-1 one on blocks
  first (`_space_to_depth_conv`).
  Anything else, or any call outside `cpu_rewrites()`, is
  `lax.conv_general_dilated` unchanged.
  """
  nd = lhs.ndim - 2
  dn = lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
  rhs_dilation = tuple(rhs_dilation or (1,) * nd)
  strided = any(s != 1 for s in window_strides)
  plain = (_ACTIVE.get() and feature_group_count == 1 and batch_group_count == 1
           and all(d == 1 for d in (lhs_dilation or (1,) * nd))
           and dn.lhs_spec == dn.out_spec and preferred_element_type is None
           and not (strided and (dn != _channels_last(nd) or any(d != 1 for d in rhs_dilation))))
  if not plain:
    return lax.conv_general_dilated(
        lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation, dimension_numbers,
        feature_group_count, batch_group_count, precision, preferred_element_type)
  if isinstance(padding, str):
    in_spatial = [lhs.shape[i] for i in dn.lhs_spec[2:]]
    window = [(rhs.shape[i] - 1) * d + 1 for i, d in zip(dn.rhs_spec[2:], rhs_dilation)]
    padding = lax.padtype_to_pads(in_spatial, window, window_strides, padding)
  padding = tuple((int(lo), int(hi)) for lo, hi in padding)
  if (nd == 3 and strided and _SPACE_TO_DEPTH.get()
      and lhs.shape[-1] < SPACE_TO_DEPTH_MAX_CHANNELS
      and all(rhs.shape[i] >= s for i, s in zip(dn.rhs_spec[2:], window_strides))):
    return _space_to_depth_conv(lhs, rhs, tuple(window_strides), padding, precision)
  if nd == 3 and dn == _channels_last(3) and rhs.shape[0] > 1 and not strided:
    return _conv3d_as_2d(lhs, rhs, padding, rhs_dilation, precision)
  return _conv(lhs, rhs, tuple(window_strides), padding, rhs_dilation, dn, precision)


def _channels_last(nd: int) -> lax.ConvDimensionNumbers:
  """Flax's layout: inputs (N, *spatial, C), kernels (*spatial, I, O)."""
  spatial = tuple(range(1, nd + 1))
  return lax.ConvDimensionNumbers((0, nd + 1) + spatial, (nd + 1, nd) + tuple(range(nd)),
                                  (0, nd + 1) + spatial)


def _space_to_depth_conv(lhs, rhs, strides, padding, precision):
  """A strided, undilated channels-last convolution as a stride-1 one on blocks.

  Per axis (stride s, kernel k, padding lo, n_out outputs), with K = ceil(k / s),
  the input padded to L = s (n_out + K - 1) and the kernel zero-padded to s K
  taps: y[q] = sum_{j<K, r<s} x_pad[(q + j) s + r] w[j s + r], a stride-1
  "VALID" correlation of x_blk[b, r] = x_pad[b s + r] with w_blk[j, r] =
  w[j s + r], the block offsets r (and the channels) folded into channels.
  """
  nd = lhs.ndim - 2
  n, c_in, c_out = lhs.shape[0], lhs.shape[-1], rhs.shape[-1]
  spatial, window = lhs.shape[1:-1], rhs.shape[:nd]
  taps = [-(-k // s) for k, s in zip(window, strides)]
  outs = [(size + lo + hi - k) // s + 1 for size, k, s, (lo, hi)
          in zip(spatial, window, strides, padding)]
  lengths = [s * (o + kk - 1) for s, o, kk in zip(strides, outs, taps)]
  # Negative "after" pads crop inputs no output reads.
  x = lax.pad(lhs, jnp.zeros((), lhs.dtype),
              [(0, 0, 0)] + [(lo, length - lo - size, 0) for (lo, _), length, size
                             in zip(padding, lengths, spatial)] + [(0, 0, 0)])
  blocks = [length // s for length, s in zip(lengths, strides)]
  x = x.reshape((n,) + tuple(d for b, s in zip(blocks, strides) for d in (b, s)) + (c_in,))
  x = x.transpose((0,) + tuple(range(1, 2 * nd, 2)) + tuple(range(2, 2 * nd + 1, 2))
                  + (2 * nd + 1,))
  x = x.reshape((n, *blocks, -1))
  w = jnp.pad(rhs, [(0, s * kk - k) for k, s, kk in zip(window, strides, taps)]
              + [(0, 0), (0, 0)])
  w = w.reshape(tuple(d for kk, s in zip(taps, strides) for d in (kk, s)) + (c_in, c_out))
  w = w.transpose(tuple(range(0, 2 * nd, 2)) + tuple(range(1, 2 * nd, 2))
                  + (2 * nd, 2 * nd + 1))
  w = _invariant(w.reshape((*taps, -1, c_out)))
  return conv_general_dilated(x, w, (1,) * nd, [(0, 0)] * nd,
                              dimension_numbers=_channels_last(nd), precision=precision)


def _invariant(kernel):
  """`kernel`, computed once per compiled call rather than once per step.

  The rewritten kernels (flipped and transposed, regrouped into blocks) are
  functions of the weights alone, but XLA's loop-invariant code motion never
  hoists reverses, transposes and reshapes on their own ("not worth hoisting
  individually"), so inside the optimisation's loop they were rebuilt every
  step (I3D: 16 ms of thunk time in a 160 ms step). An optimisation barrier
  is worth hoisting, and takes its operands along.
  """
  return lax.optimization_barrier(kernel)


def _stride1_conv(lhs, rhs, padding, precision):
  """A stride-1 channels-last convolution in XLA:CPU's fast form (3-D split to 2-D)."""
  nd = lhs.ndim - 2
  if nd == 3 and rhs.shape[0] > 1:
    return _conv3d_as_2d(lhs, rhs, padding, (1, 1, 1), precision)
  return _plain(lhs, rhs, (1,) * nd, padding, (1,) * nd, _channels_last(nd), precision)


def _conv3d_as_2d(lhs, rhs, padding, rhs_dilation, precision):
  """A stride-1 3-D convolution as 2-D convolutions over time taps (time
  folded into the batch): y[t] = sum_j conv2d(x_pad[t + j d_t], W[j]).

  XLA:CPU has no fast 3-D convolution; its 2-D ones are 2-2.5x faster on
  I3D's 3x3x3 layers (see `benchmarks/README.md`). On large frames the input
  gradient is one 2-D convolution for all taps (`_time_taps_bwd`).
  """
  return _time_taps(lhs, rhs, tuple(padding), tuple(rhs_dilation), precision)


def _time_taps_forward(lhs, rhs, padding, rhs_dilation, precision):
  n, t, h, w, c = lhs.shape
  kt, dt = rhs.shape[0], rhs_dilation[0]
  (lo, hi), spatial_pad = padding[0], padding[1:]
  x = jnp.pad(lhs, ((0, 0), (lo, hi), (0, 0), (0, 0), (0, 0)))
  t_out = t + lo + hi - (kt - 1) * dt
  out = None
  for j in range(kt):
    frames = lax.slice_in_dim(x, j * dt, j * dt + t_out, axis=1)
    y = _plain(frames.reshape((n * t_out, h, w, c)), rhs[j], (1, 1), spatial_pad,
               rhs_dilation[1:], _channels_last(2), precision)
    out = y if out is None else out + y
  return out.reshape((n, t_out) + out.shape[1:])


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _time_taps(lhs, rhs, padding, rhs_dilation, precision):
  return _time_taps_forward(lhs, rhs, padding, rhs_dilation, precision)


def _time_taps_fwd(lhs, rhs, padding, rhs_dilation, precision):
  return _time_taps_forward(lhs, rhs, padding, rhs_dilation, precision), (lhs, rhs)


def _time_taps_bwd(padding, rhs_dilation, precision, res, g):
  """dL/dx by forward 2-D convolutions of g with the taps' flipped kernels,
  then the shifted sum over taps. On frames of at least
  `TAPS_TOGETHER_MIN_PIXELS` the taps' kernels sit side by side in one
  convolution with k_t C outputs, which ran faster than k_t calls there
  (I3D's Conv3d_2c_3x3, 28 x 28: 0.67x the time of the layer's step) and
  slower on small frames (7 x 7: 1.22x). The weight gradient is JAX's rule."""
  lhs, rhs = res
  grad_rhs = jax.vjp(lambda w: lax.conv_general_dilated(
      lhs, w, (1, 1, 1), padding, None, rhs_dilation, _channels_last(3),
      precision=precision), rhs)[1](g)[0]
  n, t, h, w, c = lhs.shape
  kt, dt = rhs.shape[0], rhs_dilation[0]
  lo, spatial_pad = padding[0][0], padding[1:]
  t_out = g.shape[1]
  pads = _input_grad_padding((h, w), rhs.shape[1:3], (1, 1), g.shape[2:4], spatial_pad,
                             rhs_dilation[1:])
  # (k_t, k_h, k_w, C, O) -> flipped in space, input and output exchanged.
  kernels = jnp.swapaxes(lax.rev(rhs, (1, 2)), -1, -2)
  frames = g.reshape((n * t_out,) + g.shape[2:])
  conv = lambda kernel: _plain(frames, _invariant(kernel), (1, 1), pads,
                               rhs_dilation[1:], _channels_last(2), precision)
  if h * w >= TAPS_TOGETHER_MIN_PIXELS:
    z = conv(jnp.moveaxis(kernels, 0, 3).reshape(rhs.shape[1:3] + (rhs.shape[-1], kt * c)))
    taps = jnp.moveaxis(z.reshape((n, t_out, h, w, kt, c)), 4, 0)
  else:
    taps = [conv(kernels[j]).reshape((n, t_out, h, w, c)) for j in range(kt)]
  # Tap j of output frame q fed padded input frame q + j d_t.
  x_pad = sum(jnp.pad(taps[j], ((0, 0), (j * dt, (kt - 1 - j) * dt), (0, 0), (0, 0),
                                (0, 0))) for j in range(kt))
  return lax.slice_in_dim(x_pad, lo, lo + t, axis=1), grad_rhs


_time_taps.defvjp(_time_taps_fwd, _time_taps_bwd)


def _plain(lhs, rhs, strides, padding, rhs_dilation, dn, precision):
  """`lax.conv_general_dilated` without input dilation and groups."""
  return lax.conv_general_dilated(lhs, rhs, strides, padding, None, rhs_dilation, dn,
                                  precision=precision)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5, 6))
def _conv(lhs, rhs, strides, padding, rhs_dilation, dn, precision):
  return _plain(lhs, rhs, strides, padding, rhs_dilation, dn, precision)


def _conv_fwd(lhs, rhs, strides, padding, rhs_dilation, dn, precision):
  return _conv(lhs, rhs, strides, padding, rhs_dilation, dn, precision), (lhs, rhs)


def _conv_bwd(strides, padding, rhs_dilation, dn, precision, res, g):
  lhs, rhs = res
  conv = lambda x, w: _plain(x, w, strides, padding, rhs_dilation, dn, precision)
  grad_rhs = jax.vjp(lambda w: conv(lhs, w), rhs)[1](g)[0]  # JAX's rule
  spatial_in = [lhs.shape[i] for i in dn.lhs_spec[2:]]
  if all(s == 1 for s in strides):
    # The flipped kernel with input and output channels exchanged, as a real array.
    kernel = lax.rev(rhs, dn.rhs_spec[2:])
    kernel = _invariant(jnp.swapaxes(kernel, dn.rhs_spec[0], dn.rhs_spec[1]))
    window = [rhs.shape[i] for i in dn.rhs_spec[2:]]
    spatial_out = [g.shape[i] for i in dn.out_spec[2:]]
    pads = _input_grad_padding(spatial_in, window, strides, spatial_out, padding,
                               rhs_dilation)
    return _plain(g, kernel, strides, pads, rhs_dilation, dn, precision), grad_rhs
  # A 3-D input of few channels (I3D's RGB clip) reaches here only with
  # space-to-depth off or a kernel shorter than the stride, and keeps JAX's
  # rule: its phases are dozens of 2-D convolutions with 3 output channels,
  # which measured 4x slower than the rule inside lax.scan.
  if len(strides) < 3 or lhs.shape[-1] >= 16:
    return _strided_input_grad(g, rhs, strides, padding, spatial_in, precision), grad_rhs
  return jax.vjp(lambda x: conv(x, rhs), lhs)[1](g)[0], grad_rhs


_conv.defvjp(_conv_fwd, _conv_bwd)


def _strided_input_grad(g, rhs, strides, padding, in_shape, precision):
  """dL/dx of a strided, undilated channels-last convolution, as one stride-1
  forward convolution per output phase, interleaved.

  Per axis (stride s, kernel taps k, low padding lo), input i = q s + r - lo
  with r = (i + lo) mod s receives sum_m g[q - m] w[r + m s]: a correlation
  of g with the flipped sub-kernel w[r::s]. JAX's rule is one convolution
  with input dilation s instead, which XLA:CPU runs on a slow generic path
  (I3D's 7x7x7 stride-2 first layer: 0.12 s of a 0.35 s step).
  """
  nd = len(strides)
  n, c_in = g.shape[0], rhs.shape[-2]
  axes = []
  for size, k, s, (lo, _), o in zip(in_shape, rhs.shape[:nd], strides, padding,
                                    g.shape[1:-1]):
    phases = []
    for r in range(s):
      taps = len(range(r, k, s))
      q_min = -((r - lo) // s)            # ceil((lo - r) / s): first output feeding phase r
      first = q_min * s + r - lo          # its first input index, in [0, s)
      count = max(0, -(-(size - first) // s))
      pad = (taps - 1 - q_min, count + taps - 1 - o - (taps - 1 - q_min))
      phases.append((r, taps, first, count, pad))
    axes.append(phases)
  blocks = [-(-size // s) for size, s in zip(in_shape, strides)]  # ceil(n / s)
  pieces = {}
  for combo in itertools.product(*axes):
    counts = [count for _, _, _, count, _ in combo]
    if any(taps == 0 or count == 0 for _, taps, _, count, _ in combo):
      v = jnp.zeros((n, *counts, c_in), g.dtype)
    else:
      kernel = rhs[tuple(slice(r, None, s) for (r, *_), s in zip(combo, strides))]
      kernel = _invariant(jnp.swapaxes(lax.rev(kernel, tuple(range(nd))), -1, -2))
      gp = lax.pad(g, jnp.zeros((), g.dtype),
                   [(0, 0, 0)] + [(lo, hi, 0) for *_, (lo, hi) in combo] + [(0, 0, 0)])
      v = _stride1_conv(gp, kernel, [(0, 0)] * nd, precision)
    v = jnp.pad(v, [(0, 0)] + [(0, b - cnt) for b, cnt in zip(blocks, counts)] + [(0, 0)])
    pieces[tuple(first for _, _, first, _, _ in combo)] = v
  # (N, *blocks, s_1 * ... * s_d, C) -> (N, b_1, s_1, ..., b_d, s_d, C) -> crop to the input.
  y = jnp.stack([pieces[idx] for idx in itertools.product(*(range(s) for s in strides))],
                axis=-2)
  y = y.reshape((n, *blocks, *strides, c_in))
  order = [0] + [a for i in range(nd) for a in (1 + i, 1 + nd + i)] + [1 + 2 * nd]
  y = y.transpose(order).reshape((n, *(b * s for b, s in zip(blocks, strides)), c_in))
  return y[(slice(None),) + tuple(slice(0, size) for size in in_shape)]


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
