r"""The sanity check: is a unit's picture processed like the natural clips it stands for?

Geirhos et al. (2023), "Don't trust your eyes: on the (un)reliability of
feature visualizations", show that a network can be made to answer a
feature visualisation through a path no natural image takes, and propose to
check the activation path. Here, for a unit c of layer L:

  1. the path of a clip x is its per-channel activation vector at every tap
     before L (`quality.pooled_features`: each channel's mean over positions),
     in the model's layer order (both streams' taps for a two-stream model);
  2. the unit's top natural clips n_1..n_k are the given natural clips on which
     c fires most (its activation: the channel's mean over positions);
  3. per layer l, rho_l(x, y) is Spearman's rank correlation of the two channel
     vectors (ties get their average rank: ReLU maps are full of zeros);
  4. the optimised clip o scores S(o) = mean_l mean_i rho_l(o, n_i), and each top
     natural clip n_j scores S(n_j) = mean_l mean_{i != j} rho_l(n_j, n_i) (its
     agreement with the other top clips);
  5. the picture is flagged when S(o) < min_j S(n_j) - MARGIN: it is processed
     less like the unit's natural clips than every one of those clips is. The
     margin (0.05) keeps a picture that ties with clips agreeing perfectly
     (S = 1.00 against 0.999) from being flagged for rounding.

The first layer of the model has no tap before it; its own layer is the path.

API:

    report = check(model, layer, units, optimised, natural, top_k=8)
    report.to_json()   # {unit: {layers, correlation, natural, score, natural_score,
                       #         natural_min, flag, why, top_clips}}
    spearman(a, b)                                         # pure, ties averaged
"""

from __future__ import annotations

import dataclasses
from typing import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from stviz_jax import quality
from stviz_jax.insight import motion
from stviz_jax.models import LOGITS

MARGIN = 0.05  # of Spearman's rho, below the least agreeing top clip.


def average_ranks(x: jax.Array) -> jax.Array:
  """Ranks 1..C of the last axis, tied values sharing their average rank.

  With the values sorted, x_i has `left` values below it and `right` at or
  below it, so its average rank is (left + right + 1) / 2: O(C log C) per
  vector (a layer of 832 channels, a whole layer of units, fits).
  """
  def one(v):
    s = jnp.sort(v)
    left = jnp.searchsorted(s, v, side="left")
    right = jnp.searchsorted(s, v, side="right")
    return (left + right + 1) / 2.0

  return jnp.vectorize(one, signature="(n)->(n)")(x)


def _unit_ranks(x: jax.Array) -> jax.Array:
  """Average ranks centred and scaled to unit norm (0 for a constant vector):
  Spearman's rho of two vectors is the dot product of theirs."""
  r = average_ranks(x)
  r = r - r.mean(-1, keepdims=True)
  norm = jnp.sqrt(jnp.sum(r * r, -1, keepdims=True))
  return jnp.where(norm > 0, r / jnp.where(norm > 0, norm, 1.0), 0.0)


def spearman(a: jax.Array, b: jax.Array) -> jax.Array:
  """Spearman's rank correlation over the last axis (broadcasting); 0 for a constant vector."""
  return jnp.sum(_unit_ranks(a) * _unit_ranks(b), -1)


def path_layers(model, layer: str) -> tuple[str, ...]:
  """The taps before `layer` in the model's order (the layer itself if it is the first)."""
  order = [l for l in model.spec.layers if l != LOGITS]
  if layer == LOGITS:
    return tuple(order) or (LOGITS,)
  before = tuple(order[:order.index(layer)]) if layer in order else ()
  return before or (layer,)


@dataclasses.dataclass
class SanityReport:
  """Activation-path agreement of each unit's picture with its top natural clips.

  Attributes:
    layer: the units' layer.
    units: `(U,)`.
    layers: the path's taps.
    correlation: `(U, L)` mean rho_l(o, n_i) of the optimised clip.
    natural: `(U, L)` mean over the top clips of their mean rho_l with the others.
    score, natural_score, natural_min: `(U,)` S(o), mean_j S(n_j), min_j S(n_j).
    top_clips: `(U, k)` indices of the top natural clips (best first).
  """

  layer: str
  units: np.ndarray
  layers: tuple[str, ...]
  correlation: np.ndarray
  natural: np.ndarray
  score: np.ndarray
  natural_score: np.ndarray
  natural_min: np.ndarray
  top_clips: np.ndarray

  @property
  def flags(self) -> np.ndarray:
    """`(U,)` True where the picture is processed unlike every top natural clip."""
    return self.score < self.natural_min - MARGIN

  def why(self, i: int) -> str:
    worst = int(np.argmin(self.correlation[i] - self.natural[i]))
    if self.flags[i]:
      return (f"its path agrees with the unit's top natural clips less ({self.score[i]:.2f}) "
              f"than each of them agrees with the others (at least {self.natural_min[i]:.2f}); "
              f"most unlike them at {self.layers[worst]}")
    return (f"its path agrees with the unit's top natural clips ({self.score[i]:.2f}) as well "
            f"as one of them does (lowest {self.natural_min[i]:.2f})")

  def to_json(self) -> dict[str, dict]:
    return {str(int(u)): {
        "layers": list(self.layers),
        "correlation": [round(float(v), 4) for v in self.correlation[i]],
        "natural": [round(float(v), 4) for v in self.natural[i]],
        "score": float(self.score[i]), "natural_score": float(self.natural_score[i]),
        "natural_min": float(self.natural_min[i]), "flag": bool(self.flags[i]),
        "why": self.why(i), "top_clips": [int(j) for j in self.top_clips[i]]}
        for i, u in enumerate(self.units)}


@jax.jit
def _scores(opt: jax.Array, top: jax.Array):
  """opt `(L, C)`, top `(L, k, C)` of one unit and layer group -> per-layer means.

  Each vector is ranked once; the correlations are dot products of its
  scaled ranks (`_unit_ranks`).
  """
  ro, rt = _unit_ranks(opt), _unit_ranks(top)
  with_opt = jnp.einsum("lc,lkc->lk", ro, rt).mean(-1)             # (L,)
  pair = jnp.einsum("lic,ljc->lij", rt, rt)                          # (L, k, k)
  k = top.shape[1]
  self_corr = jnp.diagonal(pair, axis1=-2, axis2=-1)                 # 1, or 0 if constant
  each = (pair.sum(-1) - self_corr) / jnp.maximum(k - 1, 1)          # (L, k), self excluded
  return with_opt, each


def check(model, layer: str, units: Sequence[int], optimised: Mapping[str, np.ndarray],
          natural: Mapping[str, np.ndarray], *, top_k: int = 8,
          layers: Sequence[str] | None = None, batch_size: int = 16) -> SanityReport:
  """The sanity check of the units' optimised clips (module docstring).

  Args:
    model: a `stviz_jax.models.Model`.
    layer: the units' layer (a tap or 'logits').
    units: `(U,)` unit indices.
    optimised: `{stream: (U, T, H, W, C)}` each unit's picture (a `Result`'s inputs).
    natural: `{stream: (N, T, H, W, C)}` natural clips, N >= 2.
    top_k: the top natural clips per unit compared with (at least 2).
    layers: the path's taps (default: `path_layers(model, layer)`).
    batch_size: clips per network call.
  """
  units = np.asarray(units, np.int32).ravel()
  n = next(iter(natural.values())).shape[0] if natural else 0
  k = min(int(top_k), n)
  if k < 2:
    raise ValueError(f"the sanity check needs at least 2 natural clips and top_k >= 2 "
                     f"(got {n} clips, top_k={top_k})")
  layers = tuple(layers) if layers else path_layers(model, layer)
  for l in layers:
    if l != LOGITS:
      model.spec.check_layer(l)
  for s in model.spec.streams:
    if s not in optimised or np.shape(optimised[s])[0] != units.size:
      raise ValueError(f"optimised clips of stream {s!r}: give (U={units.size}, T, H, W, C) "
                       f"for every stream of {sorted(model.spec.streams)}")
  acts = motion.unit_activations(model, layer, units, natural, batch_size=batch_size)
  top = np.argsort(-acts, axis=1, kind="stable")[:, :k]               # (U, k)
  nat = quality.pooled_features(model, natural, layers, batch_size)
  opt = quality.pooled_features(model, optimised, layers, batch_size)
  corr = np.zeros((units.size, len(layers)), np.float32)
  each = np.zeros((units.size, len(layers), k), np.float32)
  for g, l in enumerate(layers):
    # vmapped over units: one compilation per layer width.
    c, e = jax.vmap(lambda o, t: _scores(o[None], t[None]))(
        jnp.asarray(opt[l]), jnp.asarray(nat[l][top]))
    corr[:, g], each[:, g] = np.asarray(c)[:, 0], np.asarray(e)[:, 0]
  per_clip = each.mean(1)                                              # (U, k)
  return SanityReport(layer=layer, units=units, layers=layers, correlation=corr,
                      natural=each.mean(2), score=corr.mean(1),
                      natural_score=per_clip.mean(1), natural_min=per_clip.min(1),
                      top_clips=top)
