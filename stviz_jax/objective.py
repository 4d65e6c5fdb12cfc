"""Objectives: what to maximise, as pure, composable functions.

An `Objective` maps the activations of one example, `{layer: (1, ..., C)}`,
and a unit index (a traced integer, so one compiled function serves every
unit) to a scalar. Objectives compose with `+`, `-` and scalar `*`::

    obj = objective.channel("fusion", rho=12) - 0.5 * objective.channel("flow/conv2", rho=8)

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
  """A scalar function of `(activations, unit)` over named layers."""

  def __init__(self, fn: Callable[[Acts, jax.Array], jax.Array],
               layers: Sequence[str], name: str):
    self.fn = fn
    self.layers = tuple(dict.fromkeys(layers))
    self.name = name

  def __call__(self, acts: Acts, unit) -> jax.Array:
    return self.fn(acts, unit)

  def __add__(self, other: "Objective") -> "Objective":
    return Objective(lambda a, u: self(a, u) + other(a, u),
                     self.layers + other.layers, f"({self.name} + {other.name})")

  def __sub__(self, other: "Objective") -> "Objective":
    return self + (-1.0) * other

  def __mul__(self, scale: float) -> "Objective":
    return Objective(lambda a, u: scale * self(a, u), self.layers,
                     f"{scale:g} * {self.name}")

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


def class_logit(a_hat=None) -> Objective:
  """The pre-softmax score of class c (the unit indexes the classes)."""

  def fn(acts, unit):
    return jnp.sum(jnp.take(acts[LOGITS], unit, axis=-1)) / _a_hat(a_hat, unit)

  return Objective(fn, [LOGITS], "class_logit")


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
    batched = {k: v[None] for k, v in inputs.items()}
    logits, feats = apply(variables, batched)
    acts = {l: (logits if l == LOGITS else feats[l]) for l in target.layers}
    activation = target(acts, unit)
    penalty = 0.0
    for stream, x in inputs.items():
      kappa, gamma = (tv or {}).get(stream, (None, None))
      penalty = penalty + regularizers.penalty(x, weights[stream], kappa, gamma)
    return {"activation": activation, "penalty": penalty,
            "objective": activation - penalty}

  return terms
