"""Measurements on optimised inputs, so claims about them become numbers.

Each function takes ONE example (any array shape ending in the channel axis,
e.g. an appearance image `(H, W, 3)` or clip `(T, H, W, 3)`, a flow video
`(T, H, W, 2)`) and reduces over everything else; they are pure `jnp`
functions, so `jax.vmap` maps them over units. `measure(result)` does that
for a whole `stviz_jax.Result`.

Conventions (as `stviz_jax.data.synthetic`): flow channels are (u, v) in
pixels per frame, u positive rightward, v positive **downward** (image y
axis). Directions are atan2(v, u) in degrees in [0, 360): 0 = rightward,
90 = downward, 180 = leftward, 270 = upward. Hues are in degrees in
[0, 360): red 0, yellow 60, green 120, cyan 180, blue 240, magenta 300.
"""

from __future__ import annotations

import math
from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np

_SQRT3_2 = math.sqrt(3.0) / 2.0


def _deg(radians):
  return jnp.mod(jnp.rad2deg(radians), 360.0)


def angle_difference(a, b):
  """|a - b| on the circle, in degrees in [0, 180]."""
  d = jnp.mod(jnp.asarray(a) - jnp.asarray(b), 360.0)
  return jnp.minimum(d, 360.0 - d)


def hue_chroma(rgb: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Per-pixel hue (degrees) and chroma of RGB values `(..., 3)`.

  Uses the opponent-colour plane: alpha = R - (G + B) / 2,
  beta = sqrt(3)/2 (G - B); hue = atan2(beta, alpha), chroma = |(alpha, beta)|.
  This agrees with HSV hue at the primaries and secondaries. Both are
  unchanged by adding the same value to all channels and hue is unchanged by
  a positive scaling, so raw model inputs (any value range, mean-subtracted
  or min-max rendered) give the same hue.
  """
  r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
  alpha = r - 0.5 * (g + b)
  beta = _SQRT3_2 * (g - b)
  return _deg(jnp.arctan2(beta, alpha)), jnp.hypot(alpha, beta)


def dominant_hue(image: jax.Array, bins: int = 36) -> jax.Array:
  """The hue carrying the most chroma in an appearance image or clip `(..., 3)`.

  A histogram of per-pixel hue weighted by chroma, smoothed circularly with a
  [1, 2, 1] kernel; the peak bin is refined to the chroma-weighted circular
  mean of the hues within half a bin plus one bin of the peak. Grey pixels
  (chroma 0) do not vote, so background and clutter do not matter.

  Returns:
    Degrees in [0, 360) (0 when the image has no chroma at all).
  """
  hue, chroma = hue_chroma(jnp.reshape(image, (-1, 3)))
  width = 360.0 / bins
  idx = jnp.floor(hue / width).astype(jnp.int32) % bins
  hist = jnp.zeros(bins).at[idx].add(chroma)
  smooth = 2 * hist + jnp.roll(hist, 1) + jnp.roll(hist, -1)
  peak = (jnp.argmax(smooth) + 0.5) * width
  near = angle_difference(hue, peak) <= 1.5 * width
  w = chroma * near
  rad = jnp.deg2rad(hue)
  return _deg(jnp.arctan2(jnp.sum(w * jnp.sin(rad)), jnp.sum(w * jnp.cos(rad))))


def mean_flow(flow: jax.Array) -> jax.Array:
  """The mean flow vector `(u, v)` of a flow video `(..., 2)` (pixels/frame)."""
  return jnp.mean(jnp.reshape(flow, (-1, 2)), axis=0)


def flow_direction(flow: jax.Array) -> jax.Array:
  """Mean flow direction atan2(mean v, mean u), degrees in [0, 360); 90 = downward."""
  u, v = mean_flow(flow)
  return _deg(jnp.arctan2(v, u))


def flow_magnitude(flow: jax.Array) -> jax.Array:
  """|mean flow vector|: the net displacement per frame, in pixels."""
  return jnp.linalg.norm(mean_flow(flow))


def mean_speed(flow: jax.Array) -> jax.Array:
  """Mean per-pixel flow magnitude (unlike `flow_magnitude`, opposite motions add)."""
  return jnp.mean(jnp.linalg.norm(flow, axis=-1))


def direction_coherence(flow: jax.Array) -> jax.Array:
  """`flow_magnitude / mean_speed` in [0, 1]: 1 when every pixel moves the same way."""
  return flow_magnitude(flow) / jnp.maximum(mean_speed(flow), 1e-12)


def temporal_variation(flow: jax.Array) -> jax.Array:
  """Relative temporal variation of a video `(T, H, W, C)`, T >= 2.

  sum_t ||x_{t+1} - x_t||^2 / sum_t ||x_t||^2: the energy of the temporal
  derivative (what gamma in R_TV penalises) relative to the signal energy, so
  it does not fall merely because a result is weaker. 0 for a constant video;
  2 on average for independent frames of equal energy.
  """
  if flow.ndim != 4 or flow.shape[0] < 2:
    raise ValueError(f"temporal_variation needs a (T, H, W, C) video with T >= 2, "
                     f"got shape {flow.shape}")
  dt = jnp.diff(flow, axis=0)
  return jnp.sum(dt * dt) / jnp.maximum(jnp.sum(flow[:-1] * flow[:-1]), 1e-30)


def relative_distance(a: jax.Array, b: jax.Array) -> jax.Array:
  """||a - b|| / (0.5 (||a|| + ||b||)): 0 for equal inputs, 2 for a = -b."""
  num = jnp.linalg.norm(jnp.ravel(a - b))
  return num / jnp.maximum(0.5 * (jnp.linalg.norm(jnp.ravel(a)) +
                                  jnp.linalg.norm(jnp.ravel(b))), 1e-30)


def measure_inputs(inputs: Mapping[str, jax.Array]) -> dict[str, np.ndarray]:
  """Per-unit measurements of a batch `{stream: (U, T, H, W, C)}`.

  3-channel streams get `<stream>_hue`; 2-channel (flow) streams get
  `<stream>_direction`, `_magnitude`, `_speed`, `_coherence` and, with T >= 2,
  `_temporal_variation`.
  """
  out = {}
  for stream, x in inputs.items():
    x = jnp.asarray(x)
    if x.shape[-1] == 3:
      out[f"{stream}_hue"] = _per_unit(dominant_hue)(x)
    elif x.shape[-1] == 2:
      out[f"{stream}_direction"] = _per_unit(flow_direction)(x)
      out[f"{stream}_magnitude"] = _per_unit(flow_magnitude)(x)
      out[f"{stream}_speed"] = _per_unit(mean_speed)(x)
      out[f"{stream}_coherence"] = _per_unit(direction_coherence)(x)
      if x.ndim == 5 and x.shape[1] >= 2:
        out[f"{stream}_temporal_variation"] = _per_unit(temporal_variation)(x)
  return {k: np.asarray(v) for k, v in out.items()}


_PER_UNIT = {}


def _per_unit(fn):
  # One compiled vmap per measurement (jit caches per input shape).
  if fn not in _PER_UNIT:
    _PER_UNIT[fn] = jax.jit(jax.vmap(fn))
  return _PER_UNIT[fn]


def measure(result) -> dict[str, np.ndarray]:
  """`measure_inputs` of a `stviz_jax.Result`, plus its `units`."""
  return dict(units=np.asarray(result.units), **measure_inputs(result.inputs))
