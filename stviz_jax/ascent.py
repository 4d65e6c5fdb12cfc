"""The optimiser of activation maximisation as pure functions: `init`, `step`, `finish`.

For each stream the optimised variable is theta, whose pixels are
z = to_pixels(theta) with z = x / B (so the learning rate is unitless and the
bound is ||z(i,j,k,:)|| <= 1 per pixel). One step of gradient ascent on the
energy E (the target activation minus the paper's penalties) is

  1. x_t = fit(T_t(B * to_pixels(theta)))  the per-step input: the transforms T_t
     (by default the paper's stride jitter: a random (dy, dx) in [0, J)^2,
     the same for every stream) of the canvas, centred at the model's size;
  2. g = d E(x_t) / d theta;
  3. theta <- project(theta + adam(g))     Adam on -E, a decreasing learning
     rate; `project` maps every pixel back onto the B-ball.

`finish` gives the result: the canvas's centre, no transform, and its
activation. The functions take every input as an argument (the `Canvas`, the
optax transformation, the energy), as optax and the Flax examples write
them, so callers `jit`, `vmap` and `scan` them freely:

    canvas = ascent.Canvas(params, bounds, sizes, transform, init_rms)
    tx = ascent.optimizer(config.optimizer, config.steps)
    state = ascent.init(canvas, tx, key)
    state, metrics = ascent.step(canvas, tx, energy, state, i)   # i = 0 .. steps - 1
    x, activation = ascent.finish(canvas, measure, state)

`energy(x, i) -> {"objective", "activation", ...}` is the network pass plus
penalties for step i (`objective.regularized`); `measure(x)` the activation
reported for the result. A batch of K samples optimised jointly (diversity:
the energy couples them) is the same step on `canvas.batched()`, whose
arrays carry a leading sample axis; each sample keeps its own noise,
transforms and (elementwise) Adam moments.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, NamedTuple

import jax
import ml_collections
import optax

from stviz_jax import param as param_lib
from stviz_jax import transforms as transforms_lib

Inputs = dict[str, jax.Array]
Energy = Callable[[Inputs, jax.Array], Mapping[str, jax.Array]]


class State(NamedTuple):
  """The optimisation state of one element (or of K samples, batched)."""

  theta: dict[str, Any]
  opt_state: optax.OptState
  key: jax.Array  # the transforms' key; step i uses fold_in(key, i).


class Metrics(NamedTuple):
  objective: jax.Array
  activation: jax.Array


@dataclasses.dataclass(frozen=True)
class Canvas:
  """What is optimised per stream and how it becomes the model's input.

  Attributes:
    params: per stream, the parameterisation of a canvas larger than the model's
      input by `transform.margin` (what the transforms crop away).
    bounds: per stream, B (model input units per unit of z).
    sizes: per stream, the model's `(H, W)`.
    transform: the per-step transforms.
    init_rms: per stream, the per-pixel RMS of the initial noise, in units of B.
    batched: arrays carry a leading axis of K samples (`batched()`).
  """

  params: Mapping[str, param_lib.Param]
  bounds: Mapping[str, float]
  sizes: Mapping[str, tuple[int, int]]
  transform: transforms_lib.Transform
  init_rms: Mapping[str, float]
  is_batched: bool = False

  def batched(self) -> "Canvas":
    """The canvas of K samples: every method maps over a leading sample axis."""
    return dataclasses.replace(self, is_batched=True)

  def _one(self) -> "Canvas":
    return dataclasses.replace(self, is_batched=False)

  def init(self, key) -> tuple[dict[str, Any], jax.Array]:
    """(theta, transform key) from `key` (K keys when batched).

    Mahendran & Vedaldi: Gaussian noise rescaled to a fixed norm (per-pixel
    RMS `init_rms`); other parameterisations draw noise whose pixels have
    that RMS.
    """
    if self.is_batched:
      return jax.vmap(self._one().init)(key)
    k_init, k_transform = jax.random.split(key)
    theta = {s: self.params[s].init(jax.random.fold_in(k_init, i), self.init_rms[s])
             for i, s in enumerate(sorted(self.params))}
    return theta, k_transform

  def pixels(self, theta) -> Inputs:
    """x = B * to_pixels(theta) on the whole canvas, in model input units."""
    if self.is_batched:
      return jax.vmap(self._one().pixels)(theta)
    return {s: self.params[s].to_pixels(theta[s]) * self.bounds[s] for s in self.params}

  def fit(self, x: Inputs) -> Inputs:
    """Each stream's centre at the model's size (a no-op when the margins match)."""
    if self.is_batched:
      return jax.vmap(self._one().fit)(x)
    return {s: transforms_lib.center_crop({s: v}, *self.sizes[s])[s] for s, v in x.items()}

  def transformed(self, theta, key, step) -> Inputs:
    """The input of step `step`: the transforms, keyed by fold_in(key, step), of the canvas."""
    if self.is_batched:
      return jax.vmap(self._one().transformed, in_axes=(0, 0, None))(theta, key, step)
    return self.fit(self.transform(jax.random.fold_in(key, step), self.pixels(theta)))

  def project(self, theta):
    """Every pixel back onto the B-ball (`Param.project`)."""
    if self.is_batched:
      return jax.vmap(self._one().project)(theta)
    return {s: self.params[s].project(v) for s, v in theta.items()}

  def final(self, theta) -> Inputs:
    """The result: the centre of the canvas, no transform."""
    return self.fit(self.pixels(theta))


def optimizer(opt: ml_collections.ConfigDict, steps: int) -> optax.GradientTransformation:
  """Adam with `opt.learning_rate` decaying to `opt.final_fraction` of it over `steps`."""
  lr, end = opt.learning_rate, opt.final_fraction
  if opt.schedule == "cosine":
    schedule = optax.cosine_decay_schedule(lr, max(steps, 1), alpha=end)
  elif opt.schedule == "exponential":
    schedule = optax.exponential_decay(lr, max(steps, 1), decay_rate=end)
  elif opt.schedule == "constant":
    schedule = optax.constant_schedule(lr)
  else:
    raise ValueError(f"unknown optimizer.schedule {opt.schedule!r}; "
                     "valid: cosine, exponential, constant")
  return optax.adam(schedule, b1=opt.b1, b2=opt.b2)


def init(canvas: Canvas, tx: optax.GradientTransformation, key) -> State:
  """The initial state: noise, fresh Adam moments and the transforms' key."""
  theta, transform_key = canvas.init(key)
  return State(theta, tx.init(theta), transform_key)


def step(canvas: Canvas, tx: optax.GradientTransformation, energy: Energy,
         state: State, i) -> tuple[State, Metrics]:
  """Step `i` (traced) of gradient ascent on `energy`; returns the new state and
  the step's objective and activation (measured before the update)."""

  def loss(theta):
    terms = energy(canvas.transformed(theta, state.key, i), i)
    return -terms["objective"], terms

  grads, terms = jax.grad(loss, has_aux=True)(state.theta)
  updates, opt_state = tx.update(grads, state.opt_state, state.theta)
  theta = canvas.project(optax.apply_updates(state.theta, updates))
  return State(theta, opt_state, state.key), Metrics(terms["objective"], terms["activation"])


def finish(canvas: Canvas, measure: Callable[[Inputs], jax.Array],
           state: State) -> tuple[Inputs, jax.Array]:
  """The result of a state: its input (centre, no transform) and `measure` of it."""
  x = canvas.final(state.theta)
  return x, measure(x)
