"""Objectives: what to maximise, as pure, composable functions.

An `Objective` maps the activations of one example, `{layer: (1, ..., C)}`,
and a unit index (a traced integer, so one compiled function serves every
unit) to a scalar. Objectives compose with `+`, `-` and scalar `*`::

    obj = objective.channel("fusion", rho=12) - 0.5 * objective.channel("flow/conv2", rho=8)

Beyond the paper (Lucid's vocabulary): `direction` in a layer's channel
space, `neuron` at a chosen (t, y, x), `channel_interaction`,
`class_contrast` (class A minus class B) and `diversity`, a batch term over K
samples of one unit (see `Objective.batched` and `regularized_batch`).

`regularized(model, target, weights)` turns a target into the paper's full
objective (equation 1), a pure function of `(variables, inputs, unit)`:

    E(x) = <a_l(x), e_c> / (rho_l^2 a_hat_{l,c}) - sum_streams lambda_B R_B(x) + lambda_TV R_TV(x)
"""

from __future__ import annotations

from typing import Callable, Mapping, Sequence

import jax
import jax.numpy as jnp

from stviz_jax import regularizers
from stviz_jax.models import LOGITS

Acts = Mapping[str, jax.Array]


class Objective:
  """A scalar function of `(activations, unit)` over named layers.

  `fn` scores one example (`{layer: (1, ..., C)}`). `batch_fn` scores a batch
  of K examples of the same unit (`{layer: (K, ..., C)}`); by default it is
  the sum of `fn` over the batch, and coupling terms such as `diversity`
  define their own. Sums and scalar multiples carry both, so
  `channel(l) + w * diversity(l)` is the plain channel on one example and the
  channel summed over K samples plus w times their dissimilarity on a batch.
  """

  def __init__(self, fn: Callable[[Acts, jax.Array], jax.Array],
               layers: Sequence[str], name: str,
               batch_fn: Callable[[Acts, jax.Array], jax.Array] | None = None):
    self.fn = fn
    self.layers = tuple(dict.fromkeys(layers))
    self.name = name
    self.batch_fn = batch_fn or self._sum_over_batch

  def _sum_over_batch(self, acts: Acts, unit) -> jax.Array:
    one = lambda a: self.fn({k: v[None] for k, v in a.items()}, unit)
    return jnp.sum(jax.vmap(one)({k: acts[k] for k in self.layers}))

  def __call__(self, acts: Acts, unit) -> jax.Array:
    return self.fn(acts, unit)

  def batched(self, acts: Acts, unit) -> jax.Array:
    """The objective of a batch `{layer: (K, ..., C)}` of K samples of one unit."""
    return self.batch_fn(acts, unit)

  def __add__(self, other: "Objective") -> "Objective":
    return Objective(lambda a, u: self(a, u) + other(a, u),
                     self.layers + other.layers, f"({self.name} + {other.name})",
                     lambda a, u: self.batched(a, u) + other.batched(a, u))

  def __sub__(self, other: "Objective") -> "Objective":
    return self + (-1.0) * other

  def __mul__(self, scale: float) -> "Objective":
    label = f"{scale:g}" if isinstance(scale, (int, float)) else "w"  # w: traced.
    return Objective(lambda a, u: scale * self(a, u), self.layers,
                     f"{label} * {self.name}", lambda a, u: scale * self.batched(a, u))

  __rmul__ = __mul__

  def __neg__(self) -> "Objective":
    return (-1.0) * self

  def __repr__(self) -> str:
    return f"Objective({self.name})"


def _a_hat(a_hat, unit):
  """a_hat_{l,c}: None (=1), a scalar, or a per-unit array indexed by the traced unit."""
  if a_hat is None:
    return 1.0
  a_hat = jnp.asarray(a_hat, jnp.float32)
  return a_hat if a_hat.ndim == 0 else a_hat[unit]


def channel(layer: str, rho: float = 1.0, a_hat=None) -> Objective:
  """<a_l(x), e_c> / (rho_l^2 a_hat_{l,c}): channel c summed over all locations.

  Args:
    layer: the tap name.
    rho: receptive field size rho_l of the layer (`Model.spec.receptive_field`).
    a_hat: maximum activation of each unit on a validation set (scalar or
      `(num_units,)`); None means 1, as the paper's fallback.
  """

  def fn(acts, unit):
    a = acts[layer]
    value = jnp.sum(jnp.take(a, unit, axis=-1))
    return value / (rho ** 2 * _a_hat(a_hat, unit))

  return Objective(fn, [layer], f"channel({layer})")


def neuron(layer: str, location: Sequence[int] | None = None, a_hat=None) -> Objective:
  """a_{l,c} at one spatiotemporal location (default: the centre) / a_hat_{l,c}."""

  def fn(acts, unit):
    a = jnp.take(acts[layer], unit, axis=-1)[0]  # drop the batch axis.
    idx = tuple((n - 1) // 2 for n in a.shape) if location is None else tuple(location)
    if len(idx) != a.ndim:
      raise ValueError(f"neuron location {tuple(idx)} has {len(idx)} axes; layer "
                       f"{layer!r} has spatial shape {a.shape}")
    return a[idx] / _a_hat(a_hat, unit)

  return Objective(fn, [layer], f"neuron({layer})")


CLASS_SCORES = ("logit", "log_prob")


def class_logit(a_hat=None, score: str = "logit") -> Objective:
  """The score of class c (the unit indexes the classes).

  `score='logit'`: the pre-softmax score (the paper). `score='log_prob'`: its
  log-softmax, logit_c - logsumexp(logits): raising it means beating the
  other classes, not raising every logit, and its gradient fades once the
  class dominates, leaving the regularisers to simplify the picture.
  """
  if score not in CLASS_SCORES:
    raise ValueError(f"unknown objective.class_score {score!r}; valid: {', '.join(CLASS_SCORES)}")

  def fn(acts, unit):
    logits = acts[LOGITS]
    if score == "log_prob":
      logits = jax.nn.log_softmax(logits, axis=-1)
    return jnp.sum(jnp.take(logits, unit, axis=-1)) / _a_hat(a_hat, unit)

  return Objective(fn, [LOGITS], "class_logit")


def direction(layer: str, vectors, rho: float = 1.0, a_hat=None,
              cosine: bool = False) -> Objective:
  """sum_p <a_l(x)(p), d_c> / (rho_l^2 a_hat_{l,c}): a direction in channel space.

  Lucid's `direction`: the activation vector at every location projected on d.
  With `cosine`, the sum of cos(a_l(x)(p), d_c) * ||a_l(x)(p)|| is replaced by
  sum_p <a(p), d> * cos(a(p), d) (Lucid's `direction_cossim` with power 1),
  which rewards alignment as well as length.

  Args:
    layer: the tap.
    vectors: `(C,)` one direction, or `(K, C)`: row c is d_c for unit c (so
      the vmapped units of a sweep visit K directions).
    rho, a_hat: as in `channel`.
    cosine: weight each location by its cosine with d.
  """
  vectors = jnp.asarray(vectors, jnp.float32)
  if vectors.ndim not in (1, 2):
    raise ValueError(f"direction vectors for layer {layer!r} must be (C,) or (K, C), "
                     f"got shape {vectors.shape}")

  def fn(acts, unit):
    a = acts[layer]
    d = vectors if vectors.ndim == 1 else vectors[unit]
    if a.shape[-1] != d.shape[-1]:
      raise ValueError(f"direction has {d.shape[-1]} channels; layer {layer!r} has "
                       f"{a.shape[-1]}")
    dots = a @ d
    if cosine:
      norms = jnp.sqrt(jnp.sum(a * a, -1) * jnp.sum(d * d) + 1e-12)
      dots = dots * jnp.maximum(dots / norms, 0.0)
    return jnp.sum(dots) / (rho ** 2 * _a_hat(a_hat, unit))

  return Objective(fn, [layer], f"direction({layer})")


def channel_interaction(layer: str, suppress, weight: float = 1.0, rho: float = 1.0,
                        a_hat=None) -> Objective:
  """channel_c - weight * channel_k: excite unit c while suppressing unit k.

  Args:
    layer: the tap.
    suppress: k, one channel index, or a `(num_units,)` table whose entry c
      is the channel suppressed while maximising c.
    weight: how strongly k is suppressed.
    rho, a_hat: as in `channel` (a_hat of the suppressed channel is looked up
      at k when given per unit).
  """
  table = jnp.asarray(suppress, jnp.int32)

  def fn(acts, unit):
    a = acts[layer]
    k = table if table.ndim == 0 else table[unit]
    up = jnp.sum(jnp.take(a, unit, axis=-1)) / _a_hat(a_hat, unit)
    down = jnp.sum(jnp.take(a, k, axis=-1)) / _a_hat(a_hat, k)
    return (up - weight * down) / rho ** 2

  return Objective(fn, [layer], f"channel_interaction({layer})")


def class_contrast(other, weight: float = 1.0, a_hat=None) -> Objective:
  """logit_A - weight * logit_B, A the unit: what makes the net say A rather than B.

  The paper's Figures 13-15 compare class units that are confused
  (PlayingCello vs PlayingViolin); maximising the difference shows what
  separates them.

  Args:
    other: class B, one index or a `(num_classes,)` table (entry A = its B).
    weight: 1 for the plain difference.
    a_hat: per-class normalisers (as in `class_logit`).
  """
  # The class scores are one location (rho = 1): a channel interaction of them.
  return Objective(channel_interaction(LOGITS, other, weight, 1.0, a_hat).fn, [LOGITS],
                   "class_contrast")


def gram_matrices(a: jax.Array) -> jax.Array:
  """G_k = A_k^T A_k / ||A_k^T A_k||_F for a batch `(K, ..., C)` (A_k: positions x C)."""
  flat = a.reshape(a.shape[0], -1, a.shape[-1])
  g = jnp.einsum("kpc,kpd->kcd", flat, flat)
  return g / jnp.sqrt(jnp.sum(g * g, axis=(1, 2), keepdims=True) + 1e-20)


def diversity(layer: str) -> Objective:
  """-(1/K) sum_{i != j} <G_i, G_j>: dissimilarity of K samples' Gram matrices.

  Lucid's `diversity` (Olah et al., "Feature Visualization", 2017) with the
  sign flipped so that it is maximised: each sample's layer activations
  A_k (positions x channels) give a style matrix G_k = A_k^T A_k, normalised
  to unit Frobenius norm; the term is minus their mean pairwise cosine
  similarity. Positions run over (t, y, x), so samples differing in motion
  style count as different. On one example it is 0 (no pairs); it only acts
  through `Objective.batched`, e.g. in `Visualizer.run_diverse`.
  """

  def batch_fn(acts, unit):
    del unit
    g = gram_matrices(acts[layer])
    k = g.shape[0]
    sims = jnp.einsum("icd,jcd->ij", g, g)
    return -(jnp.sum(sims) - jnp.trace(sims)) / k

  return Objective(lambda acts, unit: jnp.zeros((), jnp.float32), [layer],
                   f"diversity({layer})", batch_fn)


def penalties(inputs, weights, tv=None):
  """Sum over streams (and samples, if batched) of lambda_B R_B + lambda_TV R_TV: the
  part of equation (1) `regularized` subtracts from the activation."""
  total = 0.0
  for stream, x in inputs.items():
    kappa, gamma = (tv or {}).get(stream, (None, None))
    total = total + jnp.sum(regularizers.penalty(x, weights[stream], kappa, gamma))
  return total


def _terms(apply, target_fn, target_layers, weights, variables, batch, inputs, unit, tv):
  """Equation (1) of `inputs` as the dict `regularized` documents; `batch` is what the
  network sees (`inputs` with a leading batch axis)."""
  logits, feats = apply(variables, batch)
  acts = {l: (logits if l == LOGITS else feats[l]) for l in target_layers}
  activation = target_fn(acts, unit)
  penalty = penalties(inputs, weights, tv)
  return {"activation": activation, "penalty": penalty, "objective": activation - penalty}


def regularized_batch(apply: Callable, target: Objective,
                      weights: Mapping[str, regularizers.StreamWeights]):
  """Equation (1) summed over a batch of K samples of one unit, plus batch terms.

  Returns:
    `terms(variables, inputs, unit, tv=None) -> dict` with `inputs`
    `{stream: (K, T, H, W, C)}`; `activation` is `target.batched` (the sum of
    the per-sample targets plus coupling terms such as `diversity`),
    `penalty` the sum over samples and streams, `objective` their difference.
  """

  def terms(variables, inputs, unit, tv=None):
    return _terms(apply, target.batched, target.layers, weights, variables, dict(inputs),
                  inputs, unit, tv)

  return terms


def regularized(apply: Callable, target: Objective,
                weights: Mapping[str, regularizers.StreamWeights]):
  """The full objective of equation (1) as a pure function.

  Args:
    apply: the model's `(variables, inputs) -> (logits, features)`.
    target: the activation term.
    weights: per-stream regulariser weights (`regularizers.stream_weights`).

  Returns:
    `terms(variables, inputs, unit, tv=None) -> dict` where `inputs` is one
    example, `{stream: (T, H, W, C)}`, and `tv` optionally overrides
    `{stream: (kappa, gamma)}` with (traced) values. The dict holds
    `activation` (the target term), `penalty` (sum over streams) and
    `objective = activation - penalty`, the quantity maximised.
  """

  def terms(variables, inputs, unit, tv=None):
    batch = {k: v[None] for k, v in inputs.items()}
    return _terms(apply, target, target.layers, weights, variables, batch, inputs, unit, tv)

  return terms
