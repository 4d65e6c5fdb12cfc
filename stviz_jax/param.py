"""Parameterisations: what the optimiser moves, and how it becomes pixels.

The optimiser never sees pixels directly; it updates a parameter pytree
`theta` and the network sees `z = to_pixels(theta)` (in units of the bound B,
so `||z(i,j,k,:)|| <= 1` is the paper's constraint). Four choices, each a
`Param` built per stream for the canvas shape `(T, H, W, C)`:

* `pixel()`: z = theta (the paper; Mahendran & Vedaldi).
* `fourier(shape, decay)`: theta holds the real and imaginary parts of the
  3-D spectrum over (t, y, x) and

      z = F^{-1}[ s(f) * (theta_re + i theta_im) ],   s(f) = max(f, f_min)^{-decay} / n,

  with f = sqrt(f_t^2 + f_y^2 + f_x^2) in cycles per sample, f_min = 1 /
  max(T, H, W) and n normalising s so that white-noise theta gives unit
  per-channel pixel variance (so the learning rate keeps its pixel meaning).
  F is the orthonormal real FFT over the three axes. decay = 1 is Lucid's
  1/f image spectrum extended to space-time. Like Lucid's, theta stores the
  k_x = 0 (and W/2) planes twice (a bin and its conjugate); irfftn keeps
  their Hermitian part, so the map is exactly s * theta for 0 < k_x < W/2.
* `maco(shape, rms, magnitude, decay)`: Fel et al., "Unlocking Feature
  Visualization for Deeper Networks with MAgnitude Constrained Optimization"
  (NeurIPS 2023): theta is the phase only, z = F^{-1}[M exp(i pi theta)] with a
  fixed magnitude spectrum M (given, e.g. averaged over natural clips, or the
  1/f law), rescaled so a random-phase clip has per-pixel RMS norm `rms`.
* `decorrelated(base, matrix)`: wraps a base parameterisation of an RGB
  stream: z = base(theta) @ M^T with M the square root of the colour
  covariance (Lucid's `color_correlation_svd_sqrt` for ImageNet by default,
  or one estimated from data: `colour_covariance` of a set of clips, then
  `colour_matrix_from_covariance`), so each
  optimised channel moves along a decorrelated colour axis.

The bound B is kept in pixel space for every choice (see `Param.project`):
for the invertible ones (pixel, Fourier, decorrelated colour) the projection
is theta <- from_pixels(P_B(to_pixels(theta))), the exact Euclidean
projection of the pixels mapped back; MACO cannot change magnitudes, so its
`to_pixels` ends with the projection itself (a no-op unless a pixel exceeds
B, where it clips the vector's length and keeps its direction).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from stviz_jax import config as config_lib
from stviz_jax import regularizers

Theta = Any
_AXES = (0, 1, 2)  # (T, H, W) of a (T, H, W, C) stream.

# Lucid (lucid/optvis/param/color.py): the square root of the colour
# covariance of ImageNet pixels, from an SVD.
IMAGENET_COLOUR_SVD_SQRT = np.asarray([[0.26, 0.09, 0.02],
                                       [0.27, 0.00, -0.05],
                                       [0.27, -0.09, 0.03]], np.float32)

KINDS = ("pixel", "fourier", "maco")
COLOURS = ("none", "imagenet", "data")


@dataclasses.dataclass(frozen=True)
class Param:
  """A parameterisation of one stream's canvas of shape `shape`.

  Attributes:
    name: e.g. 'pixel', 'fourier', 'decorrelated(fourier)'.
    shape: `(T, H, W, C)` of the pixels `to_pixels` returns.
    init: `(key, rms) -> theta` whose pixels are Gaussian-like noise with
      per-pixel RMS norm `rms` (in units of B).
    to_pixels: `theta -> z`, pure and differentiable.
    project: `theta -> theta` after each step, keeping `||z|| <= 1` per pixel.
    from_pixels: `z -> theta` (exact inverse of `to_pixels`), or None.
  """

  name: str
  shape: tuple[int, int, int, int]
  init: Callable[[jax.Array, float], Theta]
  to_pixels: Callable[[Theta], jax.Array]
  project: Callable[[Theta], Theta]
  from_pixels: Callable[[jax.Array], Theta] | None = None


def _rms_norm(z: jax.Array) -> jax.Array:
  """Per-pixel RMS of the channel-vector norm: sqrt(mean_ijk sum_d z^2)."""
  return jnp.sqrt(jnp.mean(jnp.sum(z * z, axis=-1)))


def _project_in_pixels(to_pixels, from_pixels):
  return lambda theta: from_pixels(regularizers.project_to_ball(to_pixels(theta), 1.0))


def _linear_init(draw, to_pixels):
  """Draws theta and rescales it (to_pixels is linear) to the requested pixel RMS."""

  def init(key, rms):
    theta = draw(key)
    return jax.tree.map(lambda t: t * (rms / _rms_norm(to_pixels(theta))), theta)

  return init


def pixel(shape: Sequence[int]) -> Param:
  """z = theta: the paper's parameterisation (bit-for-bit its noise and projection)."""
  shape = tuple(shape)

  def init(key, rms):
    g = jax.random.normal(key, shape)
    return g / _rms_norm(g) * rms

  return Param("pixel", shape, init, lambda t: t,
               lambda t: regularizers.project_to_ball(t, 1.0), lambda z: z)


def frequencies(shape: Sequence[int]) -> np.ndarray:
  """f = sqrt(f_t^2 + f_y^2 + f_x^2) on the `rfftn` grid of a (T, H, W) canvas, cycles/sample."""
  t, h, w = shape[:3]
  ft = np.fft.fftfreq(t)[:, None, None]
  fy = np.fft.fftfreq(h)[None, :, None]
  fx = np.fft.rfftfreq(w)[None, None, :]
  return np.sqrt(ft ** 2 + fy ** 2 + fx ** 2)


def _rfft_weights(shape: Sequence[int]) -> np.ndarray:
  """How many bins of the full spectrum each `rfftn` bin stands for (1 or 2)."""
  w = shape[2]
  weights = np.full(w // 2 + 1, 2.0)
  weights[0] = 1.0
  if w % 2 == 0:
    weights[-1] = 1.0
  return np.broadcast_to(weights, (shape[0], shape[1], w // 2 + 1))


def spectrum_scale(shape: Sequence[int], decay: float = 1.0) -> np.ndarray:
  """s(f) = max(f, 1 / max(T, H, W))^-decay / n on the `rfftn` grid, `(T, H, W//2+1)`.

  n makes the mean of s^2 over the full spectrum 1, so theta of unit variance
  gives pixels of unit variance per channel (Parseval with the orthonormal FFT).
  """
  f = frequencies(shape)
  s = np.maximum(f, 1.0 / max(shape[:3])) ** (-float(decay))
  weights = _rfft_weights(shape)
  n = np.sqrt(np.sum(weights * s ** 2) / np.sum(weights))
  return (s / n).astype(np.float32)


def _irfft3(spectrum, shape):
  return jnp.fft.irfftn(spectrum, s=shape[:3], axes=_AXES, norm="ortho")


def _rfft3(z):
  return jnp.fft.rfftn(z, axes=_AXES, norm="ortho")


def fourier(shape: Sequence[int], decay: float = 1.0) -> Param:
  """The 1/f^decay space-time Fourier parameterisation (see the module docstring).

  theta has shape `(2, T, H, W//2+1, C)`: real and imaginary parts.
  """
  shape = tuple(shape)
  scale = jnp.asarray(spectrum_scale(shape, decay))[..., None]
  spec_shape = (2, shape[0], shape[1], shape[2] // 2 + 1, shape[3])

  def to_pixels(theta):
    return _irfft3(scale * jax.lax.complex(theta[0], theta[1]), shape)

  def from_pixels(z):
    spec = _rfft3(z) / scale
    return jnp.stack([spec.real, spec.imag]).astype(jnp.float32)

  init = _linear_init(lambda key: jax.random.normal(key, spec_shape), to_pixels)
  return Param(f"fourier(decay={decay:g})", shape, init, to_pixels,
               _project_in_pixels(to_pixels, from_pixels), from_pixels)


def maco(shape: Sequence[int], rms: float, magnitude: np.ndarray | None = None,
         decay: float = 1.0) -> Param:
  """Magnitude-constrained Fourier optimisation: only the phase is optimised.

  Args:
    shape: `(T, H, W, C)` canvas.
    rms: per-pixel RMS norm (units of B) of a random-phase clip; the fixed
      magnitude is rescaled to it, so it sets the clip's energy for good.
    magnitude: `(T, H, W//2+1)` or `(T, H, W//2+1, C)` magnitude spectrum,
      e.g. `|rfftn(clip)|` averaged over a dataset; None = `spectrum_scale`.
    decay: exponent of the default 1/f^decay magnitude.

  Returns:
    A `Param` whose theta is the phase in units of pi, `(T, H, W//2+1, C)`
    (so an Adam step of the usual learning rate, ~0.05, turns a phase by
    ~0.16 rad, and 60 steps can reach any phase); `from_pixels` returns the
    phase of a clip (exact only for clips with this magnitude).
  """
  shape = tuple(shape)
  rfft_shape = (shape[0], shape[1], shape[2] // 2 + 1)
  if magnitude is None:
    magnitude = spectrum_scale(shape, decay)
  magnitude = np.asarray(magnitude, np.float32)
  if magnitude.shape == rfft_shape:
    magnitude = np.repeat(magnitude[..., None], shape[3], axis=-1)
  if magnitude.shape != rfft_shape + (shape[3],):
    raise ValueError(f"maco magnitude has shape {magnitude.shape}; expected {rfft_shape} "
                     f"or {rfft_shape + (shape[3],)} for a canvas {shape}")
  phase_shape = rfft_shape + (shape[3],)

  def unclipped(theta, mag):
    return _irfft3(mag * jnp.exp(1j * np.pi * theta), shape)

  # Calibrate the magnitude on a fixed random phase (deterministic, no data).
  probe = jax.random.uniform(jax.random.PRNGKey(0), phase_shape, minval=-1.0, maxval=1.0)
  mag = jnp.asarray(magnitude)
  mag = mag * (rms / _rms_norm(unclipped(probe, mag)))

  def to_pixels(theta):
    return regularizers.project_to_ball(unclipped(theta, mag), 1.0)

  def init(key, rms_unused):
    del rms_unused  # the energy is fixed by the magnitude.
    return jax.random.uniform(key, phase_shape, minval=-1.0, maxval=1.0)

  def from_pixels(z):
    return (jnp.angle(_rfft3(z)) / np.pi).astype(jnp.float32)

  return Param("maco", shape, init, to_pixels, lambda t: t, from_pixels)


def colour_covariance(rgb) -> np.ndarray:
  """The 3x3 covariance of the pixel colours of `rgb` (`(..., 3)`, e.g. a batch of clips).

  Put it in `config.param.colour_covariance` (flattened) with `param.colour = 'data'`.
  """
  flat = np.asarray(rgb, np.float64).reshape(-1, 3)
  if flat.shape[0] < 2:
    raise ValueError(f"colour_covariance needs at least 2 pixels, got {flat.shape[0]}")
  return np.cov(flat, rowvar=False)


def colour_matrix_from_covariance(cov: np.ndarray) -> np.ndarray:
  """M = U sqrt(S) / max_col ||U sqrt(S)|| from the SVD cov = U S U^T (Lucid's recipe).

  Args:
    cov: `(3, 3)` covariance of pixel colours, e.g. from the dataset statistics.
  """
  cov = np.asarray(cov, np.float64)
  if cov.shape != (3, 3) or not np.allclose(cov, cov.T, atol=1e-6 * np.abs(cov).max()):
    raise ValueError(f"colour covariance must be a symmetric 3x3 matrix, got shape {cov.shape}")
  u, s, _ = np.linalg.svd(cov)
  m = u * np.sqrt(np.maximum(s, 0.0))
  return _normalise_colour(m)


def _normalise_colour(m: np.ndarray) -> np.ndarray:
  m = np.asarray(m, np.float64)
  return (m / np.max(np.linalg.norm(m, axis=0))).astype(np.float32)


def imagenet_colour_matrix() -> np.ndarray:
  """Lucid's `color_correlation_normalized`: the SVD square root over its largest column norm."""
  return _normalise_colour(IMAGENET_COLOUR_SVD_SQRT)


def decorrelated(base: Param, matrix: np.ndarray | None = None) -> Param:
  """z = base(theta) @ M^T: colours optimised along decorrelated axes.

  Args:
    base: the parameterisation of a 3-channel stream.
    matrix: `(3, 3)` M; None = `imagenet_colour_matrix()`. Must be invertible.
  """
  if base.shape[-1] != 3:
    raise ValueError(f"decorrelated colour needs 3 channels, the stream has {base.shape[-1]}")
  m = imagenet_colour_matrix() if matrix is None else np.asarray(matrix, np.float32)
  if m.shape != (3, 3) or abs(np.linalg.det(m.astype(np.float64))) < 1e-8:
    raise ValueError(f"colour matrix must be an invertible 3x3 matrix, got {m.tolist()}")
  mt = jnp.asarray(m.T)
  mt_inv = jnp.asarray(np.linalg.inv(m.T.astype(np.float64)).astype(np.float32))

  def to_pixels(theta):
    return base.to_pixels(theta) @ mt

  if base.from_pixels is None:
    from_pixels = None
  else:
    from_pixels = lambda z: base.from_pixels(z @ mt_inv)
  if base.name == "maco":
    # MACO's base already clips; clip again after the colour mix, no inverse needed.
    to_pixels_clipped = lambda t: regularizers.project_to_ball(to_pixels(t), 1.0)
    return Param(f"decorrelated({base.name})", base.shape, base.init, to_pixels_clipped,
                 base.project, from_pixels)
  init = _linear_init(lambda key: base.init(key, 1.0), to_pixels)
  return Param(f"decorrelated({base.name})", base.shape, init, to_pixels,
               _project_in_pixels(to_pixels, from_pixels), from_pixels)


def build(cfg, stream: str, shape: Sequence[int], rms: float) -> Param:
  """The parameterisation named by `cfg` (`config.param`) for one stream's canvas.

  Colour decorrelation applies to 3-channel streams only (flow keeps its own axes).

  Args:
    cfg: `config.param` with `kind` (pixel | fourier | maco), `decay`,
      `colour` (none | imagenet | data) and `colour_covariance` (3x3, for 'data').
    stream: the stream's name (for errors).
    shape: `(T, H, W, C)` canvas.
    rms: initial per-pixel RMS norm in units of B (MACO's fixed energy).
  """
  cfg = config_lib.complete(cfg, config_lib.default_config().param)
  kind = cfg.kind
  if kind == "pixel":
    base = pixel(shape)
  elif kind == "fourier":
    base = fourier(shape, cfg.decay)
  elif kind == "maco":
    base = maco(shape, rms, decay=cfg.decay)
  else:
    raise ValueError(f"unknown param.kind {kind!r}; valid: {', '.join(KINDS)}")
  colour = cfg.colour
  if colour not in COLOURS:
    raise ValueError(f"unknown param.colour {colour!r}; valid: {', '.join(COLOURS)}")
  if colour == "none" or shape[-1] != 3:
    return base
  if colour == "imagenet":
    return decorrelated(base)
  cov = np.asarray(cfg.colour_covariance or (), np.float64)
  if cov.size != 9:
    raise ValueError(f"param.colour='data' needs param.colour_covariance (a 3x3 colour "
                     f"covariance of stream {stream!r}), got {cov.tolist()}")
  return decorrelated(base, colour_matrix_from_covariance(cov.reshape(3, 3)))
