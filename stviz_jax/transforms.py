"""Per-step random transforms of aligned appearance and motion inputs.

A `Transform` maps `(key, inputs)` to new inputs, where `inputs` is a dict
stream -> `(T, H, W, C)`. Every stream gets the same draw, so appearance and
motion stay aligned, and geometric transforms act on flow *vectors* too: a
flow field u(p) transformed by the spatial map p -> A p (rotation R_theta or
scale s about the centre) becomes

    u'(p) = A u(A^{-1} p),

i.e. rotating a clip rotates its motion vectors and scaling it by s scales
the motion magnitudes by s. Image axes: x to the right, y down; a positive
angle turns the picture counter-clockwise on screen (like `np.rot90`), which
turns a rightward vector (1, 0) into an upward one (0, -1).

Transforms are pure and keyed with `jax.random`, so they run inside
`lax.scan` and `jax.vmap`. `compose` chains them (Lucid's `transforms`
list); the paper's stride-tied jitter is `jitter(J)` with J = stride_l.
`Transform.margin` is how many pixels a transform removes from H and W
(jitter J: J - 1; pad p: -2p), so the optimiser sizes its canvas to make the
last output exactly the model's input size.
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Callable, Mapping, Sequence

import jax
import jax.numpy as jnp

Inputs = Mapping[str, jax.Array]
VECTOR_STREAMS = ("flow",)  # streams whose channels are (u, v) pairs.


@dataclasses.dataclass(frozen=True)
class Transform:
  """`fn(key, inputs) -> inputs`; `margin` pixels removed from H and W; a name."""

  fn: Callable[[jax.Array, Inputs], dict]
  margin: int
  name: str

  def __call__(self, key, inputs: Inputs) -> dict:
    return self.fn(key, inputs)


def compose(*transforms: Transform) -> Transform:
  """Applies `transforms` in order; one transform gets the key unchanged, several a split."""
  transforms = tuple(transforms)
  if not transforms:
    return Transform(lambda key, x: dict(x), 0, "identity")
  if len(transforms) == 1:
    return transforms[0]

  def fn(key, inputs):
    keys = jax.random.split(key, len(transforms))
    out = dict(inputs)
    for k, t in zip(keys, transforms):
      out = t(k, out)
    return out

  return Transform(fn, sum(t.margin for t in transforms),
                   ", ".join(t.name for t in transforms))


# --- jitter and pad ----------------------------------------------------------


def crop(inputs: Inputs, dy, dx, height: int, width: int) -> dict:
  """The (height, width) window at offset (dy, dx) (traced) of every stream."""
  return {s: jax.lax.dynamic_slice(x, (0, dy, dx, 0), (x.shape[0], height, width, x.shape[3]))
          for s, x in inputs.items()}


def center_crop(inputs: Inputs, height: int, width: int) -> dict:
  """The central (height, width) window, offset ((H - height) // 2, (W - width) // 2)."""
  out = {}
  for s, x in inputs.items():
    h, w = x.shape[1], x.shape[2]
    if h < height or w < width:
      raise ValueError(f"stream {s!r} is {h}x{w} after the transforms, smaller than the "
                       f"model's {height}x{width}; use less padding or less jitter")
    out[s] = x[:, (h - height) // 2:(h - height) // 2 + height,
               (w - width) // 2:(w - width) // 2 + width]
  return out


def jitter(size: int) -> Transform:
  """A random (H - size + 1, W - size + 1) window, offset (dy, dx) uniform in [0, size)^2.

  With size = stride_l this is the paper's jitter (the same offset for every stream).
  """
  size = int(size)
  if size < 1:
    raise ValueError(f"jitter size must be >= 1, got {size}")

  def fn(key, inputs):
    dy, dx = jax.random.randint(key, (2,), 0, size)
    return {s: jax.lax.dynamic_slice(
        x, (0, dy, dx, 0), (x.shape[0], x.shape[1] - size + 1, x.shape[2] - size + 1,
                            x.shape[3])) for s, x in inputs.items()}

  return Transform(fn, size - 1, f"jitter({size})")


def pad(width: int, mode: str = "constant") -> Transform:
  """Pads H and W by `width` on each side: zeros ('constant') or edge values ('edge')."""
  if mode not in ("constant", "edge"):
    raise ValueError(f"pad mode {mode!r}; valid: constant, edge")
  width = int(width)

  def fn(key, inputs):
    del key
    return {s: jnp.pad(x, ((0, 0), (width, width), (width, width), (0, 0)), mode=mode)
            for s, x in inputs.items()}

  return Transform(fn, -2 * width, f"pad({width})")


# --- geometric warps ---------------------------------------------------------


def _warp(x: jax.Array, matrix: jax.Array, vector: bool) -> jax.Array:
  """x'(p) = A x(A^{-1} p) about the centre, bilinear, edge values outside.

  `matrix` is A acting on (x, y) image coordinates; flow (u, v) pairs are
  multiplied by A when `vector`.
  """
  t, h, w, c = x.shape
  inv = jnp.linalg.inv(matrix)
  yy, xx = jnp.meshgrid(jnp.arange(h, dtype=jnp.float32) - (h - 1) / 2.0,
                        jnp.arange(w, dtype=jnp.float32) - (w - 1) / 2.0, indexing="ij")
  src_x = inv[0, 0] * xx + inv[0, 1] * yy + (w - 1) / 2.0
  src_y = inv[1, 0] * xx + inv[1, 1] * yy + (h - 1) / 2.0
  sample = lambda img: jax.scipy.ndimage.map_coordinates(img, [src_y, src_x], order=1,
                                                          mode="nearest")
  # (T, H, W, C) -> (T, C, H, W) -> sample each plane.
  planes = jnp.moveaxis(x, -1, 1)
  warped = jax.vmap(jax.vmap(sample))(planes)
  out = jnp.moveaxis(warped, 1, -1)
  if vector:
    if c % 2:
      raise ValueError(f"a vector stream needs (u, v) channel pairs, got {c} channels")
    uv = out.reshape(t, h, w, c // 2, 2)
    out = jnp.einsum("ij,thwkj->thwki", matrix, uv).reshape(t, h, w, c)
  return out


def _rotation(angle_rad) -> jax.Array:
  """R_theta on (x, y) with y down: counter-clockwise on screen for theta > 0."""
  c, s = jnp.cos(angle_rad), jnp.sin(angle_rad)
  return jnp.stack([jnp.stack([c, s]), jnp.stack([-s, c])])


def rotate(inputs: Inputs, degrees, vector_streams: Sequence[str] = VECTOR_STREAMS) -> dict:
  """Rotates every stream by `degrees` (traced) about its centre; flow vectors rotate too."""
  a = _rotation(jnp.deg2rad(jnp.asarray(degrees, jnp.float32)))
  return {s: _warp(x, a, s in vector_streams) for s, x in inputs.items()}


def scale(inputs: Inputs, factor, vector_streams: Sequence[str] = VECTOR_STREAMS) -> dict:
  """Zooms every stream by `factor` (traced) about its centre; flow vectors scale by it."""
  f = jnp.asarray(factor, jnp.float32)
  a = jnp.eye(2, dtype=jnp.float32) * f
  return {s: _warp(x, a, s in vector_streams) for s, x in inputs.items()}


def random_rotate(max_degrees: float,
                  vector_streams: Sequence[str] = VECTOR_STREAMS) -> Transform:
  """Rotation by an angle uniform in [-max_degrees, max_degrees]."""

  def fn(key, inputs):
    angle = jax.random.uniform(key, (), minval=-max_degrees, maxval=max_degrees)
    return rotate(inputs, angle, vector_streams)

  return Transform(fn, 0, f"rotate({max_degrees:g})")


def random_scale(low: float, high: float,
                 vector_streams: Sequence[str] = VECTOR_STREAMS) -> Transform:
  """Zoom by a factor uniform in [low, high]."""
  if not 0 < low <= high:
    raise ValueError(f"scale range must satisfy 0 < low <= high, got ({low}, {high})")

  def fn(key, inputs):
    factor = jax.random.uniform(key, (), minval=low, maxval=high)
    return scale(inputs, factor, vector_streams)

  return Transform(fn, 0, f"scale({low:g},{high:g})")


# --- time --------------------------------------------------------------------


def shift_time(inputs: Inputs, fraction) -> dict:
  """Shifts every stream in time by `fraction` (traced, in [-1, 1]) of the longest
  stream's length, rounded in each stream's own frames, repeating the edge frames.

  Streams sampled at different rates (RGB frames, flow stacks) thus move by the
  same time, not the same number of frames.
  """
  out = {}
  for s, x in inputs.items():
    t = x.shape[0]
    shift = jnp.round(fraction * t).astype(jnp.int32)
    idx = jnp.clip(jnp.arange(t) - shift, 0, t - 1)
    out[s] = jnp.take(x, idx, axis=0)
  return out


def temporal_jitter(max_shift: int) -> Transform:
  """A shift in time uniform in {-max_shift, ..., max_shift} frames of the longest stream."""
  max_shift = int(max_shift)

  def fn(key, inputs):
    t_max = max(x.shape[0] for x in inputs.values())
    shift = jax.random.randint(key, (), -max_shift, max_shift + 1)
    return shift_time(inputs, shift / t_max)

  return Transform(fn, 0, f"time_jitter({max_shift})")


def mirror(inputs: Inputs, vector_streams: Sequence[str] = VECTOR_STREAMS) -> dict:
  """Every stream mirrored left-right; flow's horizontal component u negated."""
  out = {}
  for s, x in inputs.items():
    y = x[:, :, ::-1]
    out[s] = y * jnp.asarray([-1.0, 1.0], y.dtype) if s in vector_streams else y
  return out


def random_flip(vector_streams: Sequence[str] = VECTOR_STREAMS) -> Transform:
  """A left-right mirror with probability 1/2 (`mirror`), the same draw for every stream.

  Video networks are trained with random flips, so a picture of what a unit
  has learned should not depend on its handedness; optimising under flips
  keeps class evidence that only one chirality carries out of the picture.
  """

  def fn(key, inputs):
    flip = jax.random.bernoulli(key)
    flipped = mirror(inputs, vector_streams)
    return {s: jnp.where(flip, flipped[s], x) for s, x in inputs.items()}

  return Transform(fn, 0, "flip")


# --- configuration -----------------------------------------------------------

NAMES = ("jitter", "pad", "scale", "rotate", "time_jitter", "flip")
_ITEM = re.compile(r"\s*([a-z_]+)\s*(?:\(([^)]*)\))?\s*(?:,|$)")


def parse(spec: str, stride_jitter: int,
          vector_streams: Sequence[str] = VECTOR_STREAMS) -> Transform:
  """Builds the pipeline named by `config.transforms`.

  Example: "pad(4), jitter(8), scale(0.9,1.1), rotate(10), time_jitter(1), jitter".
  A bare "jitter" is the paper's stride-tied jitter of size `stride_jitter`.

  Args:
    spec: comma-separated items `name` or `name(args)` (names: jitter, pad,
      scale, rotate, time_jitter, flip); "" = none.
    stride_jitter: the paper's J = round(jitter_fraction * stride_l) (1 = off).
    vector_streams: streams whose channels are flow (u, v) pairs.
  """
  items, pos = [], 0
  spec = spec.strip()
  while pos < len(spec):
    m = _ITEM.match(spec, pos)
    if not m or m.end() == pos:
      raise ValueError(f"cannot parse config.transforms {spec!r} at {spec[pos:]!r}; "
                       f"expected items like 'jitter', 'pad(4)', 'scale(0.9,1.1)'")
    items.append((m.group(1), m.group(2)))
    pos = m.end()
  out = []
  for name, args in items:
    item = f"{name}({args})" if args is not None else name
    try:
      vals = [float(a) for a in args.split(",")] if args and args.strip() else []
    except ValueError:
      raise ValueError(f"config.transforms item {item!r} of {spec!r}: arguments must be "
                       f"numbers, e.g. 'pad(4)', 'scale(0.9,1.1)', 'rotate(10)'") from None
    if not all(math.isfinite(v) for v in vals):
      raise ValueError(f"config.transforms item {item!r} of {spec!r}: arguments must be "
                       "finite numbers")
    n_args = {"jitter": (0, 1), "pad": (1,), "scale": (2,), "rotate": (1,),
              "time_jitter": (1,), "flip": (0,)}.get(name)
    if n_args is None:
      raise ValueError(f"unknown transform {name!r} in config.transforms; valid: "
                       f"{', '.join(NAMES)}")
    if len(vals) not in n_args:
      raise ValueError(f"config.transforms item {item!r}: transform {name!r} takes "
                       f"{' or '.join(map(str, n_args))} argument(s), got {len(vals)} "
                       f"in {spec!r}")
    if name == "jitter":
      out.append(jitter(int(vals[0]) if vals else stride_jitter))
    elif name == "pad":
      out.append(pad(int(vals[0])))
    elif name == "scale":
      out.append(random_scale(vals[0], vals[1], vector_streams))
    elif name == "rotate":
      out.append(random_rotate(vals[0], vector_streams))
    elif name == "flip":
      out.append(random_flip(vector_streams))
    else:
      out.append(temporal_jitter(int(vals[0])))
  return compose(*out)
