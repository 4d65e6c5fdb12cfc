"""Clip-seeded accentuation: what in a real clip drives a unit.

Hamblin, Fel et al. (2024), "Feature Accentuation": instead of noise, the
optimisation starts from a real clip x_0 (every stream: RGB and flow) and
maximises the unit while staying near it,

    theta* = argmax_theta  E(x(theta)) - w D(theta, theta_0),
    D(theta, theta_0) = sum_streams sum (theta - theta_0)^2 / (H W eta^2),

with E the paper's regularised objective (`objective.regularized`: the same
regularisers, transforms, parameterisation, optimiser and steps as the
Visualizer's config), theta_0 = from_pixels(P_B(x_0 / B)) (`ascent.init_at`;
the canvas margin the transforms crop away is the seed's edge padding; a seed
pixel beyond the bound B is projected onto the B-ball, as every step would)
and D (`ascent.distance`) a squared distance in the parameterisation's own
space (z = x / B for pixels, the 1/f-scaled spectrum for fourier; maco, whose
magnitude is fixed, cannot start from a clip and raises).

The scale of D. Adam moves every element by about its learning rate eta per
step whatever the gradient's scale, so D counts distance in steps of the
run's `optimizer.learning_rate` (eta, 0.05 of B by default), and like the
paper's penalties (lambda = 1 / (H W ...)) it is summed over frames and
channels and averaged over the frame's pixels: D = T C when every element of
a T-frame, C-channel stream is one step away from the seed. At a stationary
point dE/dtheta = w dD/dtheta, i.e. per element theta - theta_0 = (H W eta^2 /
2w) dE/dtheta. A class logit of a globally pooled net is itself an average
over the frame, so for class units this does not depend on the frame size;
a channel objective sums over the layer's positions (over rho^2), so there w
must grow with the layer's size (the hand-built linear units of the tests,
summing 16 x 16 x 3 positions, still move far from a seed at w = 1e4). With
this scale w of order 1 is, for class units, the range where the seed bends
but survives; measured on the
synthetic net (`synthetic_two_stream`, 100 steps, defaults otherwise), a 'red
right' clip accentuated toward 'red left':

    w      flow direction   rgb / flow relative distance   'red left' logit
    0.5    6 -> 153 deg     0.23 / 0.95                    -5.8 -> 20.3
    1      6 -> 112 deg     0.14 / 0.63                    -5.8 -> 10.3
    1e4    6 ->   6 deg     0.071 / 0.001 (the projection)  -5.8 -> -5.8

(toward 'green up' at w = 0.5 the flow turns to 276 deg, up.) w = 0 is the
plain optimisation started at the seed. The table is for the default
learning rate: D is divided by eta^2, so at another learning rate the same w
weighs the seed (0.05 / eta)^2 as much at the optimum (and the steps bound how
far a run gets before it).

Class units (layer 'logits', `objective.kind = 'class_logit'`): accentuating a
clip of class A toward class B shows what the net would need to see to call it
B, the paper's confusion analysis made concrete.

API:

    vis = Visualizer(model, "logits", config)          # its compile cache
    acc = accentuate(vis, units, seeds, weight, seed=0, tv=None)
    acc.inputs, acc.seeds          # {stream: (U, T, H, W, C)}, model input units
    acc.seed_activations, acc.activations             # (U,) before / after
    acc.distances                  # {stream: (U,)} analysis.relative_distance to the seed
    acc.result()                   # a Result (save, show, render, measure)

One compilation (`Visualizer.compiled_accentuation`) serves every unit, clip
and weight of a layer: all three are traced.
"""

from __future__ import annotations

import dataclasses
from typing import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from stviz_jax import analysis
from stviz_jax import optimize
from stviz_jax.optimize import Visualizer
from stviz_jax.plan import a_hat_given
from stviz_jax.result import Result


@dataclasses.dataclass
class Accentuation:
  """Units of one layer accentuated in seed clips.

  Attributes:
    layer: the layer.
    units: `(U,)` unit indices.
    inputs: stream -> `(U, T, H, W, C)` accentuated clips, model input units.
    seeds: stream -> `(U, T, H, W, C)` the clips they started from (as given).
    activations: `(U,)` the target on the accentuated clip (centre, no transform).
    seed_activations: `(U,)` the target on the seed (after the B-ball projection).
    distances: stream -> `(U,)` `analysis.relative_distance(input, seed)`.
    history: 'objective' (E - w D) and 'activation' per step, `(U, steps)`.
    weight: `(U,)` w per unit.
    seed: the transforms' seed (unit u uses fold_in(PRNGKey(seed), u)).
    settings: the regularisation `{stream: (kappa, gamma)}` used.
    a_hat_given: whether the target is normalised by a given a_hat.
    class_names: the model's class names when `layer` is 'logits'.
  """

  layer: str
  units: np.ndarray
  inputs: dict[str, np.ndarray]
  seeds: dict[str, np.ndarray]
  activations: np.ndarray
  seed_activations: np.ndarray
  distances: dict[str, np.ndarray]
  history: dict[str, np.ndarray]
  weight: np.ndarray
  seed: int
  settings: dict[str, tuple[float, float]]
  a_hat_given: bool = False
  class_names: tuple[str, ...] | None = dataclasses.field(default=None, repr=False,
                                                          compare=False)

  def result(self) -> Result:
    """The accentuated clips as a `Result` (to save, render, measure or show)."""
    return Result(layer=self.layer, units=self.units, inputs=self.inputs,
                  activations=self.activations, history=self.history,
                  a_hat_given=self.a_hat_given,
                  seed=self.seed, settings=self.settings, class_names=self.class_names)


def _seed_batch(vis: Visualizer, seeds: Mapping[str, np.ndarray], n: int) -> dict:
  """`{stream: (n, T, H, W, C)}` float32 from clips given for all units or per unit."""
  missing = set(vis.streams) - set(seeds)
  extra = set(seeds) - set(vis.streams)
  if missing or extra:
    raise ValueError(f"seeds have streams {sorted(seeds)}; valid: exactly "
                     f"{sorted(vis.streams)}")
  out = {}
  for s, spec in vis.streams.items():
    x = np.asarray(seeds[s], np.float32)
    if x.shape == spec.shape:
      x = np.broadcast_to(x, (n,) + x.shape)
    if x.shape != (n,) + spec.shape:
      raise ValueError(f"seeds[{s!r}] has shape {x.shape}; valid: {spec.shape} (all units) "
                       f"or {(n,) + spec.shape} (one clip per unit)")
    if not np.all(np.isfinite(x)):
      raise ValueError(f"seeds[{s!r}] contains NaN or infinite values")
    out[s] = x
  return out


def accentuate(vis: Visualizer, units: Sequence[int], seeds: Mapping[str, np.ndarray],
               weight: float | Sequence[float] = 1.0, seed: int = 0,
               tv: Mapping[str, tuple[float, float]] | None = None) -> Accentuation:
  """Accentuates `units` of `vis.layer` in real clips (see the module docstring).

  Args:
    vis: a `Visualizer` (its config's parameterisation, transforms,
      regularisers, optimiser, steps and target are used).
    units: the units (vmapped; class indices for 'logits').
    seeds: `{stream: (T, H, W, C)}` one clip for every unit, or
      `{stream: (U, T, H, W, C)}` one per unit, in model input units; every
      stream of the model.
    weight: w >= 0, one for all units or one per unit (traced: no recompilation).
    seed: unit u's transforms are keyed by fold_in(PRNGKey(seed), u).
    tv: optional `{stream: (kappa, gamma)}` overriding the config.

  Returns:
    An `Accentuation`.
  """
  units = np.asarray(units, np.int32).ravel()
  if units.size == 0:
    raise ValueError("accentuate: no units given")
  vis.model.spec.check_units(vis.layer, units)
  n = units.size
  clips = _seed_batch(vis, seeds, n)
  weights = np.broadcast_to(np.asarray(weight, np.float32), (n,)).copy()
  if not np.all(np.isfinite(weights)) or np.any(weights < 0):
    raise ValueError(f"accentuate: weight must be finite and >= 0, got {weights.tolist()}")
  settings = vis.settings(tv)
  base = jax.random.PRNGKey(seed)
  keys = jax.vmap(lambda u: jax.random.fold_in(base, u))(jnp.asarray(units))
  tv_arr = {s: tuple(jnp.full((n,), settings[s][j], jnp.float32) for j in range(2))
            for s in vis.streams}
  x, act, hist, before = vis.compiled_accentuation(
      f"{vis.layer}: accentuate {n} unit(s)", vis.model.variables, jnp.asarray(units),
      (keys, clips), tv_arr, jnp.asarray(weights))
  optimize.check_finite(np.asarray(hist["objective"]), units, "accentuate: ", "the seed clip")
  x = {s: np.asarray(v) for s, v in x.items()}
  distances = {s: np.asarray(jax.vmap(analysis.relative_distance)(x[s], clips[s]))
               for s in x}
  return Accentuation(layer=vis.layer, units=units, inputs=x, seeds=clips,
                      activations=np.asarray(act), seed_activations=np.asarray(before),
                      distances=distances, history={k: np.asarray(v) for k, v in hist.items()},
                      weight=weights, seed=seed, settings=settings,
                      a_hat_given=a_hat_given(vis.config), class_names=vis.class_names)

