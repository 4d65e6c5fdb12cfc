"""Picture quality: is a visualisation an explanation or an adversarial pattern?

A high activation says only that the network responds to a picture; it does
not say that a person can read it. Four measures tell the two apart, each a
pure, batched function of the optimised inputs (`Result.inputs`):

* **Transform robustness** (`robustness`): the unit's response under a fixed,
  seeded set of random transforms the optimisation did not use (random
  resized crop of 70-100 % of the area, horizontal flip with the flow's
  horizontal component negated, temporal roll, Gaussian blur up to sigma
  1.5 px). A picture of a chessboard is still a chessboard when cropped or
  blurred slightly; a pixel-exact adversarial pattern is not. For class units
  the class rank under each transform (rank 1 = still classified as the
  class), for every unit the share of its activation kept.
* **Naturalness** (`spectral_slope`): the slope of the radially averaged power
  spectrum of the frames (and of the flow magnitude) in log-log axes. Natural
  images fall off as 1/f^2 (slope about -2), white noise is flat (0), a
  blurred or grey picture falls off much faster. The target is two-sided:
  `SLOPE_RANGE`, neither noise nor blur.
* **Plausibility** (`feature_distance`, MACO's measure for video): the
  distance between the optimised clip's pooled intermediate features and
  those of real clips of the same class, relative to how far real clips lie
  from each other.
* **Temporal behaviour** (`temporal_variation`, `flow_speed`): how much the
  clip changes from frame to frame and how fast its flow moves, the quantity
  the paper's temporal regulariser gamma controls.

`assess` gathers them per unit for one `Result` (the job's `summary.json`),
`summarise` reduces them to the pass/fail block of a run's index.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from stviz_jax.models import LOGITS, Model, conv

# Two-sided naturalness target for the spectral slope of the frames (natural
# photographs lie around -2; below -2.7 the picture is blurred or flat grey,
# above -1.5 it is dominated by fine noise).
SLOPE_RANGE = (-2.7, -1.5)
# Goal for class units: still rank 1 under at least this share of the transforms.
ROBUST_GOAL = 0.9
FLOW_STREAMS = ("flow",)


# --- naturalness ---------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def _radial_bins(height: int, width: int) -> tuple[np.ndarray, np.ndarray, int]:
  """Integer radius (in cycles per image of the shorter side) of each rfft2 bin, and the fit range."""
  fy = np.fft.fftfreq(height)[:, None] * min(height, width)
  fx = np.fft.rfftfreq(width)[None, :] * min(height, width)
  radius = np.rint(np.sqrt(fy ** 2 + fx ** 2)).astype(np.int32)
  n = min(height, width) // 2  # radii 1..n: up to Nyquist, no corners.
  radius = np.where(radius > n, 0, radius)  # corners and DC share the unused bin 0.
  counts = np.bincount(radius.ravel(), minlength=n + 1).astype(np.float32)
  return radius, counts, n


def radial_power(images: jax.Array) -> jax.Array:
  """Radially averaged power spectrum of `(..., H, W)` images: `(..., n)` for radii 1..n.

  Each image has its mean removed and a 2-D Hann window applied (so the
  picture's border does not add a spurious 1/f^2 edge spectrum).
  """
  h, w = images.shape[-2:]
  radius, counts, n = _radial_bins(h, w)
  window = np.outer(np.hanning(h), np.hanning(w)).astype(np.float32)
  x = images - jnp.mean(images, axis=(-2, -1), keepdims=True)
  power = jnp.abs(jnp.fft.rfft2(x * window)) ** 2
  flat = power.reshape(power.shape[:-2] + (-1,))
  sums = jnp.zeros(flat.shape[:-1] + (n + 1,), flat.dtype).at[..., radius.ravel()].add(flat)
  return (sums / np.maximum(counts, 1))[..., 1:]


def power_slope(images: jax.Array) -> jax.Array:
  """Least-squares slope of log power against log frequency, `(..., T, H, W)` -> `(...)`.

  The power spectrum is averaged over the T images of a clip first. White
  noise gives about 0, a 1/f^2 image -2.
  """
  p = jnp.mean(radial_power(images), axis=-2)
  n = p.shape[-1]
  logf = np.log(np.arange(1, n + 1, dtype=np.float32))
  logf = logf - logf.mean()
  logp = jnp.log(jnp.maximum(p, 1e-30))
  return jnp.sum((logp - logp.mean(axis=-1, keepdims=True)) * logf, axis=-1) / np.sum(logf ** 2)


def spectral_slope(x: jax.Array, stream: str = "rgb") -> jax.Array:
  """Spectral slope of clips `(..., T, H, W, C)`: of the luminance (mean over
  channels) for appearance, of the magnitude sqrt(u^2 + v^2) for flow."""
  if stream in FLOW_STREAMS:
    images = jnp.sqrt(jnp.sum(x * x, axis=-1) + 1e-12)
  else:
    images = jnp.mean(x, axis=-1)
  return power_slope(images)


def slope_ok(slope: float, slope_range: tuple[float, float] = SLOPE_RANGE) -> bool:
  return bool(slope_range[0] <= slope <= slope_range[1])


# --- temporal behaviour -----------------------------------------------------------


def temporal_variation(x: jax.Array) -> jax.Array:
  """RMS frame-to-frame change over the RMS of the clip about its mean, `(..., T, H, W, C)` -> `(...)`.

  0 for a still clip; about sqrt(2) for frames independent of each other.
  """
  if x.shape[-4] < 2:
    return jnp.zeros(x.shape[:-4])
  diff = jnp.sqrt(jnp.mean(jnp.diff(x, axis=-4) ** 2, axis=(-4, -3, -2, -1)))
  spread = jnp.sqrt(jnp.mean((x - jnp.mean(x, axis=(-4, -3, -2, -1), keepdims=True)) ** 2,
                             axis=(-4, -3, -2, -1)))
  return diff / jnp.maximum(spread, 1e-12)


def flow_speed(flow: jax.Array) -> jax.Array:
  """Mean flow magnitude sqrt(u^2 + v^2) of `(..., T, H, W, 2)` flow, in the stream's units."""
  return jnp.mean(jnp.sqrt(jnp.sum(flow * flow, axis=-1)), axis=(-3, -2, -1))


# --- transform robustness ---------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class TransformSet:
  """N fixed random transforms of a `(T, H, W, C)` clip (arrays of shape `(N,)`).

  side: crop side as a fraction of H and W (area side^2 in [min_area, 1]);
  top, left: crop offsets as fractions of H and W; flip: 1 = mirror left-right;
  roll: frames rolled in time; sigma: Gaussian blur in pixels (0 = none).
  """

  side: np.ndarray
  top: np.ndarray
  left: np.ndarray
  flip: np.ndarray
  roll: np.ndarray
  sigma: np.ndarray

  def __len__(self) -> int:
    return len(self.side)

  def describe(self, i: int) -> str:
    return (f"crop {self.side[i] ** 2:.0%} at ({self.top[i]:.2f}, {self.left[i]:.2f}), "
            f"{'flip, ' if self.flip[i] else ''}roll {int(self.roll[i])}, "
            f"blur {self.sigma[i]:.2f}px")


def transform_set(n: int = 16, frames: int = 8, seed: int = 0, min_area: float = 0.7,
                  max_sigma: float = 1.5) -> TransformSet:
  """The seeded evaluation transforms (the same for every unit and run with the same seed)."""
  if n < 1:
    raise ValueError(f"transform_set needs n >= 1, got {n}")
  rng = np.random.default_rng(seed)
  side = np.sqrt(rng.uniform(min_area, 1.0, n))
  return TransformSet(
      side=side.astype(np.float32),
      top=(rng.uniform(0, 1, n) * (1 - side)).astype(np.float32),
      left=(rng.uniform(0, 1, n) * (1 - side)).astype(np.float32),
      flip=rng.integers(0, 2, n).astype(np.int32),
      roll=rng.integers(0, max(frames, 1), n).astype(np.int32),
      sigma=rng.uniform(0, max_sigma, n).astype(np.float32))


_BLUR_RADIUS = 4  # pixels each side: covers 2.7 sigma at sigma = 1.5.


def _blur(x: jax.Array, sigma) -> jax.Array:
  """Separable Gaussian blur of `(T, H, W, C)` over H and W (edge-padded); sigma traced."""
  k = jnp.arange(-_BLUR_RADIUS, _BLUR_RADIUS + 1, dtype=jnp.float32)
  w = jnp.exp(-0.5 * (k / jnp.maximum(sigma, 1e-3)) ** 2)
  w = w / jnp.sum(w)
  r = _BLUR_RADIUS
  for axis in (1, 2):
    pad = [(0, 0)] * 4
    pad[axis] = (r, r)
    xp = jnp.pad(x, pad, mode="edge")
    n = x.shape[axis]
    x = sum(w[i] * jax.lax.slice_in_dim(xp, i, i + n, axis=axis) for i in range(2 * r + 1))
  return x


def apply_transform(inputs: Mapping[str, jax.Array], side, top, left, flip, roll, sigma,
                    vector_streams: Sequence[str] = FLOW_STREAMS) -> dict[str, jax.Array]:
  """One evaluation transform (traced parameters) of every stream of one clip `(T, H, W, C)`.

  The crop is resized back to (H, W) (bilinear), so flow vectors are scaled
  by 1 / side; a flip mirrors the frames and negates the flow's u.
  """
  out = {}
  for s, x in inputs.items():
    _, h, w, _ = x.shape
    scale = 1.0 / side
    y = jax.image.scale_and_translate(
        x, x.shape, (1, 2), jnp.stack([scale, scale]),
        jnp.stack([-top * h * scale, -left * w * scale]), method="linear", antialias=False)
    vector = s in vector_streams
    if vector:
      y = y * scale
    mirrored = y[:, :, ::-1]
    if vector:
      mirrored = mirrored * jnp.asarray([-1.0, 1.0], y.dtype)
    y = jnp.where(flip > 0, mirrored, y)
    y = jnp.roll(y, roll, axis=0)
    out[s] = _blur(y, sigma)
  return out


@functools.cache
def _compiled_responses():
  """`_responses` jitted (`apply` and `layer` static) with the options the
  convolution rewrites are measured with (`conv.compiler_options`)."""
  return jax.jit(_responses, static_argnums=(0, 1), compiler_options=conv.compiler_options())


def _responses(apply, layer: str, variables, inputs, units, ts):
  """`(N, U)` responses (and `(N, U)` class ranks for 'logits') under N transforms.

  The N x U transformed clips form one batch (vmap), and on CPU the network
  runs with `conv.cpu_rewrites` (3-D convolutions as 2-D ones, which
  XLA:CPU runs 2-3x faster), as in the optimisation.
  """

  def one(t):
    side, top, left, flip, roll, sigma = t
    x = jax.vmap(lambda clip: apply_transform(clip, side, top, left, flip, roll, sigma))(inputs)
    with conv.cpu_rewrites(jax.default_backend() == "cpu"):
      feats = apply(variables, x)
    scores = feats[0] if layer == LOGITS else feats[1][layer]
    if layer != LOGITS:
      scores = jnp.mean(scores, axis=tuple(range(1, scores.ndim - 1)))
    own = jnp.take_along_axis(scores, units[:, None], axis=1)
    rank = 1 + jnp.sum(scores > own, axis=1)
    return own[:, 0], rank

  return jax.vmap(one)(ts)


_CLIPS_PER_CALL = 16  # transformed clips per compiled call (bounds the memory).


def robustness(model: Model, layer: str, inputs: Mapping[str, np.ndarray],
               units: Sequence[int], transforms: TransformSet | None = None
               ) -> dict[str, np.ndarray]:
  """The units' responses to their optimised clips under `transforms`.

  Args:
    model: the network.
    layer: the unit's layer ('logits' for class units).
    inputs: stream -> `(U, T, H, W, C)` clips, clip i optimised for `units[i]`.
    units: `(U,)` unit indices.
    transforms: the evaluation set (`transform_set(frames=T)` if None).

  Returns:
    'response' `(U,)` on the clips as given; 'transformed' `(U, N)` under
    each transform; 'kept' `(U, N)` their ratio (1 = unchanged); for 'logits'
    also 'rank' `(U,)` and 'transformed_rank' `(U, N)` (1 = top class).
  """
  units_j = jnp.asarray(np.asarray(units, np.int32))
  inputs = {s: jnp.asarray(v, jnp.float32) for s, v in inputs.items()}
  frames = next(iter(inputs.values())).shape[1]
  ts = transforms or transform_set(frames=frames)
  # Transform 0 is the identity (the clips as given); one compilation for all.
  identity = dict(side=1.0, top=0.0, left=0.0, flip=0, roll=0, sigma=0.0)
  params = tuple(np.concatenate([[identity[f.name]], getattr(ts, f.name)])
                 .astype(getattr(ts, f.name).dtype) for f in dataclasses.fields(TransformSet))
  # Chunks of transforms, the last padded with the identity: one compilation.
  n = len(params[0])
  per_call = max(1, _CLIPS_PER_CALL // len(units_j))
  pad = -n % per_call
  params = tuple(np.concatenate([p, np.repeat(p[:1], pad)]) for p in params)
  outs = [_compiled_responses()(model.apply, layer, model.variables, inputs, units_j,
                                tuple(jnp.asarray(p[i:i + per_call]) for p in params))
          for i in range(0, n + pad, per_call)]
  resp, rank = (np.concatenate([np.asarray(o[k]) for o in outs])[:n].T for k in range(2))
  base = resp[:, 0]
  out = {"response": base, "transformed": resp[:, 1:],
         "kept": resp[:, 1:] / np.where(np.abs(base) > 1e-12, base, 1e-12)[:, None]}
  if layer == LOGITS:
    out.update(rank=rank[:, 0], transformed_rank=rank[:, 1:])
  return out


# --- plausibility in feature space ------------------------------------------------


def pooled_features(model: Model, inputs: Mapping[str, np.ndarray], layers: Sequence[str],
                    batch: int = 8) -> dict[str, np.ndarray]:
  """`{layer: (N, C)}` features averaged over their space-time positions.

  Batches of `batch` clips, the last padded by repeating its final clip, so
  every batch has one shape (one compilation).
  """
  n = len(next(iter(inputs.values())))
  size = max(1, min(int(batch), n))
  out = {l: [] for l in layers}
  for i in range(0, n, size):
    idx = np.minimum(np.arange(i, i + size), n - 1)
    valid = min(size, n - i)
    feats = model.activations({s: jnp.asarray(np.asarray(v)[idx]) for s, v in inputs.items()},
                              layers)
    for l in layers:
      f = feats[l]
      f = jnp.mean(f, axis=tuple(range(1, f.ndim - 1))) if f.ndim > 2 else f
      out[l].append(np.asarray(f)[:valid])
  return {l: np.concatenate(v) for l, v in out.items()}


def _cosine_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  a = a / np.maximum(np.linalg.norm(a, axis=-1, keepdims=True), 1e-12)
  b = b / np.maximum(np.linalg.norm(b, axis=-1, keepdims=True), 1e-12)
  return 1.0 - np.sum(a * b, axis=-1)


def feature_distance(model: Model, inputs: Mapping[str, np.ndarray],
                     reference: Mapping[str, np.ndarray], layers: Sequence[str]
                     ) -> dict[str, np.ndarray]:
  """MACO's plausibility for video: how far optimised clips lie from real ones.

  Per layer, the cosine distance between each optimised clip's pooled
  features and the mean pooled features of the `reference` clips (real clips
  of the unit's class), divided by the mean distance of the reference clips
  themselves to their mean (leave-one-out), so 1 means "as close as a typical
  real clip", larger is less plausible.

  Returns:
    `{layer: (U,)}` relative distances (needs at least 2 reference clips).
  """
  n_ref = len(next(iter(reference.values())))
  if n_ref < 2:
    raise ValueError(f"feature_distance needs at least 2 reference clips, got {n_ref}")
  opt = pooled_features(model, inputs, layers)
  ref = pooled_features(model, reference, layers)
  out = {}
  for l in layers:
    mean = ref[l].mean(axis=0)
    loo = (ref[l].sum(axis=0)[None] - ref[l]) / (n_ref - 1)
    scale = float(np.mean(_cosine_distance(ref[l], loo)))
    out[l] = _cosine_distance(opt[l], mean[None]) / max(scale, 1e-12)
  return out


# --- per unit and per run -----------------------------------------------------------


def assess(model: Model, layer: str, inputs: Mapping[str, np.ndarray], units: Sequence[int],
           transforms: TransformSet | None = None,
           reference: Mapping[int, Mapping[str, np.ndarray]] | None = None,
           feature_layers: Sequence[str] = ()) -> dict[str, dict]:
  """Every measure for each unit of one result, as JSON-ready numbers.

  Args:
    model, layer, inputs, units: as for `robustness`.
    transforms: the evaluation set (default `transform_set(frames=T)`).
    reference: optional `{unit: real clips of its class}` for `feature_distance`.
    feature_layers: the layers of `feature_distance` (default: `layer`'s
      predecessors are not guessed; pass them).

  Returns:
    `{str(unit): {...}}` with 'robust' (share of transforms keeping rank 1
    for class units, else keeping at least half the activation), 'kept'
    (median share of the activation kept), for class units 'median_rank';
    per stream 'slope_<stream>' and 'temporal_variation_<stream>'; for flow
    streams 'flow_speed'; and 'plausibility' when reference clips are given.
  """
  rob = robustness(model, layer, inputs, units, transforms)
  out = {}
  for i, u in enumerate(units):
    q = {"kept": float(np.median(rob["kept"][i]))}
    if "rank" in rob:
      q["robust"] = float(np.mean(rob["transformed_rank"][i] == 1))
      q["median_rank"] = float(np.median(rob["transformed_rank"][i]))
    else:
      q["robust"] = float(np.mean(rob["kept"][i] >= 0.5))
    out[str(int(u))] = q
  for stream, x in inputs.items():
    x = jnp.asarray(x, jnp.float32)
    slopes = np.asarray(spectral_slope(x, stream))
    tv = np.asarray(temporal_variation(x))
    speed = np.asarray(flow_speed(x)) if stream in FLOW_STREAMS else None
    for i, u in enumerate(units):
      q = out[str(int(u))]
      q[f"slope_{stream}"] = float(slopes[i])
      q[f"temporal_variation_{stream}"] = float(tv[i])
      if speed is not None:
        q["flow_speed"] = float(speed[i])
  if reference and feature_layers:
    for i, u in enumerate(units):
      ref = reference.get(int(u))
      if ref is None:
        continue
      d = feature_distance(model, {s: v[i:i + 1] for s, v in inputs.items()}, ref,
                           feature_layers)
      out[str(int(u))]["plausibility"] = {l: float(v[0]) for l, v in d.items()}
  return out


def passes(q: Mapping[str, float], class_unit: bool,
           slope_range: tuple[float, float] = SLOPE_RANGE) -> bool:
  """The readable-picture goal for one unit: class units robust (>= `ROBUST_GOAL`
  of the transforms keep rank 1) and every appearance stream's slope in range."""
  ok = all(slope_ok(v, slope_range) for k, v in q.items()
           if k.startswith("slope_") and k[6:] not in FLOW_STREAMS)
  if class_unit:
    ok = ok and q["robust"] >= ROBUST_GOAL
  return ok


def summarise(per_unit: Mapping[str, Mapping[str, float]], class_units: bool) -> dict:
  """One setting's units reduced to the index's `quality` block."""
  qs = list(per_unit.values())
  slopes = [v for q in qs for k, v in q.items()
            if k.startswith("slope_") and k[6:] not in FLOW_STREAMS]
  out = {"units": len(qs),
         "passing": sum(passes(q, class_units) for q in qs),
         "min_robust": min(q["robust"] for q in qs),
         "median_kept": float(np.median([q["kept"] for q in qs]))}
  if slopes:
    out["slope_range"] = [min(slopes), max(slopes)]
  return out


def describe(q: Mapping[str, float], class_unit: bool) -> str:
  """One line for a picture's label, e.g. 'robust 94% (median rank 1) · slope -2.1 ok'."""
  parts = [f"robust {q['robust']:.0%}"
           + (f" (median rank {q['median_rank']:g})" if class_unit and "median_rank" in q else
              f" (kept {q['kept']:.0%})")]
  for k, v in q.items():
    if k.startswith("slope_"):
      stream = k[6:]
      tag = "" if stream in FLOW_STREAMS else (" ok" if slope_ok(v) else
                                               (" noisy" if v > SLOPE_RANGE[1] else " smooth"))
      parts.append(f"slope {stream} {v:.1f}{tag}")
  if "flow_speed" in q:
    parts.append(f"flow speed {q['flow_speed']:.2g}")
  return " · ".join(parts)
