"""Where in space-time a unit looks: attribution maps per stream over (t, y, x).

Two maps, both `{stream: (T, H, W)}` in [0, 1] (each stream scaled to its own
maximum, so flow and RGB read alike), in the model's frame:

* MACO's transparency (Fel et al., NeurIPS 2023) of an optimised clip:
  A_s(t, y, x) = sum_steps sum_c |da/dx_s(t, y, x, c)|, the absolute input
  gradient of the unit's activation a at every step of the optimisation
  (pulled back through each step's transforms onto the canvas), cropped to the
  canvas's centre. MACO's objective has no penalties; here the step ascends
  E = a - penalties and the penalties' gradient is taken out of the map (it
  would light up the edges of the unit's support, where TV pushes), leaving
  the unit's own. It is computed inside the job's own optimisation when
  `config.insight.attribution` is true (`ascent.step_attributed`, one backward
  pass per step as without it), and travels with the results:
  `Visualizer.run` / `run_chunk` (a fourth output) -> `sweep.run_sweep`
  (its chunk store) -> `Result.attribution` -> `result.npz`
  (`layout.result_arrays`: `attribution_<stream>`, `(U, T, H, W)`) ->
  `Result.load` / `layout.read_result(path)["attribution"]`. With the switch
  off the program and results are the plain ones, bit for bit, and the file
  has no such arrays.
* `gradient_x_input` for real clips: |sum_c x * dE/dx|.

`stviz_jax.render.attribution_overlay(clip, map, stream)` draws either beside
its clip (MACO's picture: the clip with alpha = the map).
"""

from __future__ import annotations

from typing import Callable, Mapping, Sequence

import jax
import jax.numpy as jnp

from stviz_jax import objective as objective_lib
from stviz_jax.models import LOGITS


def normalise(maps: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
  """Each stream's map divided by its maximum (a zero map stays zero)."""
  return {s: m / jnp.maximum(jnp.max(m), 1e-30) for s, m in maps.items()}


def gradient_x_input(apply: Callable, variables, target: objective_lib.Objective,
                     units: Sequence[int] | jax.Array,
                     inputs: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
  """Gradient x input of a real clip for each unit, per stream over (t, y, x).

      A_{u,s}(t, y, x) = | sum_c x_s(t, y, x, c) d a_u / d x_s(t, y, x, c) |,

  then each (unit, stream) map scaled to max 1. a_u is the target's activation
  term (`target(acts, u)`, no penalties: a real clip is not optimised). The sum
  over channels comes before the absolute value, as the first-order share of
  a_u that pixel carries (a_u(x) - a_u(0) ~ sum A); its sign (for or against
  the unit) is dropped because the map is shown as a transparency, where
  "matters" is the question. Inputs in a centred range (flow; RGB in [-1, 1])
  make x = 0 the reference, so a pixel at 0 (no motion, mid grey) scores 0.

  Pure: jit it, or vmap it over clips.

  Args:
    apply: the model's `(variables, inputs) -> (logits, features)`.
    variables: its weights.
    target: the activation term (e.g. `Visualizer.target`).
    units: `(U,)` unit indices (vmapped).
    inputs: one clip `{stream: (T, H, W, C)}` in model input units.

  Returns:
    `{stream: (U, T, H, W)}` in [0, 1].
  """
  inputs = {s: jnp.asarray(x, jnp.float32) for s, x in inputs.items()}

  def activation(x, unit):
    logits, feats = apply(variables, {s: v[None] for s, v in x.items()})
    acts = {l: (logits if l == LOGITS else feats[l]) for l in target.layers}
    return target(acts, unit)

  def one(unit):
    grads = jax.grad(activation)(inputs, unit)
    return normalise({s: jnp.abs(jnp.sum(grads[s] * inputs[s], axis=-1)) for s in inputs})

  return jax.vmap(one)(jnp.asarray(units, jnp.int32))


def mass_share(maps: Mapping[str, jax.Array], mask: jax.Array) -> dict[str, jax.Array]:
  """The share of each map's total in `mask` (broadcast over its trailing
  (t, y, x) or (y, x) axes): e.g. how much attribution a region gets."""
  return {s: jnp.sum(m * mask, axis=(-3, -2, -1)) / jnp.maximum(
      jnp.sum(m, axis=(-3, -2, -1)), 1e-30) for s, m in maps.items()}
