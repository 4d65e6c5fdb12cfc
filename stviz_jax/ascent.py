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

Two variants share the step. `init_at(canvas, tx, key, pixels)` starts from
a given clip instead of noise (feature accentuation), and `step`'s
`theta_penalty` subtracts a function of theta itself, e.g.
`w * distance(canvas, theta, theta_seed)`. `step_attributed` is `step` that
also returns |da/dx| of the unit's activation a on the canvas pixels (MACO's
transparency), from the same backward pass: the gradient is taken w.r.t. the
canvas pixels x = B z and pulled back to theta through `to_pixels`
(`jax.vjp`, no second network pass).

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
import jax.numpy as jnp
import ml_collections
import optax

from stviz_jax import param as param_lib
from stviz_jax import regularizers
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
    return self.transformed_pixels(self.pixels(theta), key, step)

  def transformed_pixels(self, x: Inputs, key, step) -> Inputs:
    """`transformed` of canvas pixels `x` (model input units) rather than of theta."""
    return self.fit(self.transform(jax.random.fold_in(key, step), x))

  def pad(self, x: Inputs) -> Inputs:
    """Model-sized pixels `(T, H, W, C)` grown to the canvas by edge padding, placed
    where `fit` crops the centre (so `fit(pad(x)) == x`)."""
    out = {}
    for s, v in x.items():
      t, h, w, c = self.params[s].shape
      if v.shape != (t, self.sizes[s][0], self.sizes[s][1], c):
        raise ValueError(f"stream {s!r}: seed has shape {tuple(v.shape)}; valid: "
                         f"{(t, *self.sizes[s], c)} (the model's input)")
      dy, dx = h - v.shape[1], w - v.shape[2]
      out[s] = jnp.pad(v, ((0, 0), (dy // 2, dy - dy // 2), (dx // 2, dx - dx // 2), (0, 0)),
                       mode="edge")
    return out

  def project(self, theta):
    """Every pixel back onto the B-ball (`Param.project`)."""
    if self.is_batched:
      return jax.vmap(self._one().project)(theta)
    return {s: self.params[s].project(v) for s, v in theta.items()}

  def final(self, theta) -> Inputs:
    """The result: the centre of the canvas, no transform."""
    return self.fit(self.pixels(theta))


def optimizer(opt: ml_collections.ConfigDict, steps) -> optax.GradientTransformation:
  """Adam with `opt.learning_rate` decaying to `opt.final_fraction` of it over `steps`.

  `steps` may be traced (a jitted optimisation whose budget is an argument,
  so one compilation serves every budget); the schedules are optax's
  formulas written for that (optax's constructors need a Python count):

    cosine       lr ((1 - end) (1 + cos(pi min(n, steps) / steps)) / 2 + end)
    exponential  lr end^(n / steps)
    constant     lr
  """
  lr, end = opt.learning_rate, opt.final_fraction
  if opt.schedule == "cosine":
    def schedule(count):
      total = jnp.maximum(jnp.asarray(steps, jnp.float32), 1.0)
      count = jnp.minimum(count, total)
      return lr * ((1 - end) * (0.5 * (1 + jnp.cos(jnp.pi * count / total))) + end)
  elif opt.schedule == "exponential":
    def schedule(count):
      total = jnp.maximum(jnp.asarray(steps, jnp.float32), 1.0)
      return jnp.where(count <= 0, lr, lr * jnp.power(end, count / total))
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


def init_at(canvas: Canvas, tx: optax.GradientTransformation, key, pixels: Inputs) -> State:
  """The state whose canvas is the clip `pixels` (feature accentuation's start).

  theta = from_pixels(P_B(pad(x) / B)) per stream: the seed `x` (model-sized,
  in model input units) edge-padded to the canvas (the margin the transforms
  crop away) and, where a pixel exceeds the bound, projected onto the B-ball as
  every step would. Fresh Adam moments; `key` keys the transforms as in `init`.

  Raises:
    ValueError: naming the stream when its parameterisation has no
      `from_pixels` (maco: its magnitude is fixed, so a clip is not reachable).
  """
  if canvas.is_batched:
    raise ValueError("init_at takes one canvas; vmap it over seeds instead of batched()")
  for s, p in canvas.params.items():
    # MACO's from_pixels keeps only the phase: its clip is not the seed.
    if p.from_pixels is None or "maco" in p.name:
      raise ValueError(f"stream {s!r}: param {p.name!r} cannot start from a clip (no exact "
                       "from_pixels); valid: pixel, fourier (any colour)")
  padded = canvas.pad({s: pixels[s] for s in canvas.params})
  theta = {s: canvas.params[s].from_pixels(
      regularizers.project_to_ball(padded[s] / canvas.bounds[s], 1.0))
      for s in canvas.params}
  _, transform_key = jax.random.split(key)
  return State(theta, tx.init(theta), transform_key)


def distance(canvas: Canvas, theta, theta_seed, step_size: float) -> jax.Array:
  """D(theta, theta_0) = sum_streams sum (theta - theta_0)^2 / (H W eta^2).

  A squared distance in the parameterisation's own space (z = x / B for
  pixels; the spectrum's coefficients for fourier) counted in optimiser steps
  eta = `step_size` (Adam moves each element by about its learning rate per
  step, whatever the gradient's scale) and normalised like the paper's
  penalties (lambda = 1 / (H W), H W the model's frame): summed over frames
  and channels, averaged over the frame's pixels. So D = T C when every
  element of a T-frame, C-channel stream is one step from the seed. See
  `stviz_jax.insight.accentuate` for why this scale.
  """
  total = 0.0
  for s in canvas.params:
    h, w = canvas.sizes[s]
    d = jax.tree.map(lambda a, b: jnp.sum(jnp.square(a - b)), theta[s], theta_seed[s])
    total = total + sum(jax.tree.leaves(d)) / (h * w * step_size ** 2)
  return total


def step(canvas: Canvas, tx: optax.GradientTransformation, energy: Energy,
         state: State, i, theta_penalty: Callable | None = None) -> tuple[State, Metrics]:
  """Step `i` (traced) of gradient ascent on `energy`; returns the new state and
  the step's objective and activation (measured before the update).

  With `theta_penalty(theta) -> scalar` the ascended quantity is
  energy - theta_penalty (the reported objective too).
  """

  def loss(theta):
    terms = energy(canvas.transformed(theta, state.key, i), i)
    if theta_penalty is not None:
      terms = dict(terms, objective=terms["objective"] - theta_penalty(theta))
    return -terms["objective"], terms

  grads, terms = jax.grad(loss, has_aux=True)(state.theta)
  return _update(canvas, tx, state, grads), Metrics(terms["objective"], terms["activation"])


def step_attributed(canvas: Canvas, tx: optax.GradientTransformation, energy: Energy,
                    state: State, i, penalty: Callable[[Inputs], jax.Array] | None = None
                    ) -> tuple[State, Metrics, Inputs]:
  """`step`, plus per stream sum_c |da/dx| `(T, H', W')` on the whole canvas x = B z.

  a = objective + penalty: with `penalty(x_t)` the energy's penalties of the
  step's input (objective = activation - penalty), a is the unit's activation,
  so the map shows where the unit looks, not where the regularisers push (TV
  would light up the edges of the unit's support); None = the objective's own
  gradient. The step itself is `step`'s: the objective's gradient on the
  canvas pixels, pulled back to theta through `to_pixels` (`jax.vjp`; for
  pixels the theta gradient is B times it), so both come from one network
  pass; the penalties' gradient costs no network pass.
  """
  pixels, pull = jax.vjp(canvas.pixels, state.theta)

  def loss(x):
    terms = energy(canvas.transformed_pixels(x, state.key, i), i)
    return -terms["objective"], terms

  grads_x, terms = jax.grad(loss, has_aux=True)(pixels)
  (grads,) = pull(grads_x)
  unit_grads = grads_x
  if penalty is not None:
    # -d objective/dx - d penalty/dx = -d activation/dx (the sign goes in |.|).
    pen = jax.grad(lambda x: penalty(canvas.transformed_pixels(x, state.key, i)))(pixels)
    unit_grads = jax.tree.map(_difference, grads_x, pen)
  saliency = {s: jnp.sum(jnp.abs(g), axis=-1) for s, g in unit_grads.items()}
  return (_update(canvas, tx, state, grads), Metrics(terms["objective"], terms["activation"]),
          saliency)


def _difference(a, b):
  """a - b, with differences below 1e-5 of the stream's largest |a| + |b| set to 0:
  where the unit does not look, a and b cancel up to rounding (of the largest
  terms, as TV's gradient is itself a difference), a residue the map's
  normalisation would scale up to 1."""
  d = a - b
  return jnp.where(jnp.abs(d) <= 1e-5 * jnp.max(jnp.abs(a) + jnp.abs(b)), 0.0, d)


def _update(canvas, tx, state, grads) -> State:
  updates, opt_state = tx.update(grads, state.opt_state, state.theta)
  theta = canvas.project(optax.apply_updates(state.theta, updates))
  return State(theta, opt_state, state.key)


def finish(canvas: Canvas, measure: Callable[[Inputs], jax.Array],
           state: State) -> tuple[Inputs, jax.Array]:
  """The result of a state: its input (centre, no transform) and `measure` of it."""
  x = canvas.final(state.theta)
  return x, measure(x)
