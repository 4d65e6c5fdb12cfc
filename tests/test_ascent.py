"""stviz_jax.ascent: the optimiser's pure init / step / finish.

Known answers (one Adam step by hand, the projection onto the B-ball, the
jitter window), the batched canvas equal to a vmap of single ones, and the
functions composing under jit / vmap / grad as a researcher would use them.
"""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from stviz_jax import ascent, param, transforms

SHAPE = (2, 6, 6, 2)  # (T, H, W, C) of the canvas.


def _canvas(jitter=1, bound=2.0):
  shape = (SHAPE[0], SHAPE[1] + jitter - 1, SHAPE[2] + jitter - 1, SHAPE[3])
  return ascent.Canvas(params={"flow": param.pixel(shape)}, bounds={"flow": bound},
                       sizes={"flow": SHAPE[1:3]}, transform=transforms.jitter(jitter),
                       init_rms={"flow": 0.1})


def _opt(lr=0.1, schedule="constant"):
  return ml_collections.ConfigDict({"learning_rate": lr, "final_fraction": 0.1,
                                    "schedule": schedule, "b1": 0.9, "b2": 0.999})


def _linear_energy(direction):
  """E(x) = <x, d>: its gradient in theta is B * d, so Adam's first step is lr * sign."""
  def energy(x, i):
    act = jnp.vdot(x["flow"], direction)
    return {"objective": act, "activation": act}
  return energy


def test_init_draws_noise_of_the_requested_rms_and_fresh_adam_moments():
  canvas, tx = _canvas(), ascent.optimizer(_opt(), 10)
  state = ascent.init(canvas, tx, jax.random.PRNGKey(0))
  z = state.theta["flow"]
  assert z.shape == SHAPE
  np.testing.assert_allclose(np.sqrt(np.mean(np.sum(z ** 2, -1))), 0.1, rtol=1e-5)
  assert all(float(jnp.abs(m).max()) == 0.0
             for m in jax.tree.leaves(state.opt_state) if m.ndim)


def test_one_step_is_adam_on_minus_the_energy_then_the_projection():
  canvas, tx = _canvas(bound=2.0), ascent.optimizer(_opt(lr=0.1), 10)
  d = jax.random.normal(jax.random.PRNGKey(1), SHAPE)
  state = ascent.init(canvas, tx, jax.random.PRNGKey(0))
  new, metrics = ascent.step(canvas, tx, _linear_energy(d), state, 0)
  # Adam's first update is -lr * g / (|g| + eps) = +lr * sign(d) for the loss -E.
  want = state.theta["flow"] + 0.1 * np.sign(d) * np.abs(2 * d) / (np.abs(2 * d) + 1e-8)
  norm = np.linalg.norm(want, axis=-1, keepdims=True)
  want = want * np.minimum(1.0, 1.0 / norm)  # ||z|| <= 1 per pixel.
  np.testing.assert_allclose(new.theta["flow"], want, rtol=1e-5, atol=1e-6)
  x0 = 2.0 * state.theta["flow"]
  np.testing.assert_allclose(metrics.activation, jnp.vdot(x0, d), rtol=1e-5)
  np.testing.assert_array_equal(new.key, state.key)


def test_many_steps_reach_the_bound_along_the_energy_gradient():
  canvas, tx = _canvas(bound=2.0), ascent.optimizer(_opt(lr=0.2), 50)
  d = jnp.zeros(SHAPE).at[..., 0].set(1.0)  # push u to the right everywhere.
  energy = _linear_energy(d)
  state = ascent.init(canvas, tx, jax.random.PRNGKey(0))
  step = jax.jit(lambda s, i: ascent.step(canvas, tx, energy, s, i))
  for i in range(50):
    state, _ = step(state, i)
  x, act = ascent.finish(canvas, lambda x: jnp.vdot(x["flow"], d), state)
  np.testing.assert_allclose(x["flow"][..., 0], 2.0, atol=1e-3)  # at B, pointing right.
  np.testing.assert_allclose(act, 2.0 * np.prod(SHAPE[:3]), rtol=1e-3)


def test_the_jitter_window_moves_with_the_step_and_the_result_is_the_centre():
  canvas = _canvas(jitter=3)
  theta = {"flow": jnp.arange(np.prod((2, 8, 8, 2)), dtype=jnp.float32).reshape(2, 8, 8, 2)}
  key = jax.random.PRNGKey(4)
  windows = {tuple(np.asarray(canvas.transformed(theta, key, i)["flow"][0, 0, 0]))
             for i in range(20)}
  assert len(windows) > 1  # the offset is drawn per step.
  for i in range(5):
    x = canvas.transformed(theta, key, i)["flow"]
    dy, dx = jax.random.randint(jax.random.fold_in(key, i), (2,), 0, 3)
    np.testing.assert_array_equal(x, 2.0 * theta["flow"][:, dy:dy + 6, dx:dx + 6])
  np.testing.assert_array_equal(canvas.final(theta)["flow"], 2.0 * theta["flow"][:, 1:7, 1:7])


def test_a_batched_canvas_with_a_summed_energy_is_k_independent_runs():
  """One step serves both: K samples with an uncoupled energy equal a vmap of single steps."""
  canvas, tx = _canvas(jitter=2), ascent.optimizer(_opt(schedule="cosine"), 8)
  d = jax.random.normal(jax.random.PRNGKey(1), SHAPE)
  keys = jax.random.split(jax.random.PRNGKey(0), 3)

  single = jax.vmap(lambda k: ascent.init(canvas, tx, k))(keys)
  batched = ascent.init(canvas.batched(), tx, keys)
  np.testing.assert_array_equal(single.theta["flow"], batched.theta["flow"])

  def summed(x, i):
    act = jnp.sum(jax.vmap(lambda xk: jnp.vdot(xk, d))(x["flow"]))
    return {"objective": act, "activation": act}

  for i in range(4):
    single, _ = jax.vmap(lambda s: ascent.step(canvas, tx, _linear_energy(d), s, i))(single)
    batched, _ = ascent.step(canvas.batched(), tx, summed, batched, i)
  np.testing.assert_allclose(single.theta["flow"], batched.theta["flow"], rtol=1e-6, atol=1e-7)
  xs, _ = ascent.finish(canvas.batched(), jax.vmap(lambda x: x["flow"].sum()), batched)
  assert xs["flow"].shape == (3,) + SHAPE


def test_the_step_composes_with_grad_for_meta_gradients():
  """The step is differentiable in its inputs: d(activation after a step)/d(initial theta)."""
  canvas, tx = _canvas(bound=10.0), optax.sgd(0.01)
  d = jax.random.normal(jax.random.PRNGKey(1), SHAPE)
  state = ascent.init(canvas, tx, jax.random.PRNGKey(0))

  def after_one_step(theta):
    s, _ = ascent.step(canvas, tx, _linear_energy(d), state._replace(theta=theta), 0)
    return jnp.vdot(canvas.final(s.theta)["flow"], d)

  g = jax.grad(after_one_step)(state.theta)["flow"]
  np.testing.assert_allclose(g, 10.0 * d, rtol=1e-4)  # inside the ball: theta + const.


def test_unknown_schedule_names_the_field():
  with pytest.raises(ValueError, match="optimizer.schedule 'linear'.*cosine, exponential"):
    ascent.optimizer(_opt(schedule="linear"), 10)


def test_step_attributed_is_step_plus_the_activation_gradient_on_the_canvas():
  canvas, tx = _canvas(jitter=3), ascent.optimizer(_opt(), 10)
  d = jax.random.normal(jax.random.PRNGKey(1), SHAPE)
  state = ascent.init(canvas, tx, jax.random.PRNGKey(0))
  lam = 0.3
  penalty = lambda x: lam * jnp.sum(x["flow"] ** 2)

  def energy(x, i):
    act = jnp.vdot(x["flow"], d)
    return {"objective": act - penalty(x), "activation": act}

  new, metrics = ascent.step(canvas, tx, energy, state, 4)
  new_a, metrics_a, saliency = ascent.step_attributed(canvas, tx, energy, state, 4, penalty)
  np.testing.assert_allclose(new_a.theta["flow"], new.theta["flow"], rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(metrics_a.objective, metrics.objective, rtol=1e-6)
  # dE_act/dx on the canvas: d placed in step 4's jitter window, 0 outside it.
  x = canvas.pixels(state.theta)
  _, pull = jax.vjp(lambda v: canvas.transformed_pixels({"flow": v}, state.key, 4)["flow"],
                    x["flow"])
  want = np.abs(np.asarray(pull(d)[0])).sum(-1)
  assert saliency["flow"].shape == canvas.params["flow"].shape[:3]
  np.testing.assert_allclose(saliency["flow"], want, rtol=1e-5, atol=1e-6)
  assert (want == 0).any()  # the window leaves part of the canvas unseen.


def test_theta_penalty_and_distance():
  canvas, tx = _canvas(), ascent.optimizer(_opt(), 10)
  state = ascent.init(canvas, tx, jax.random.PRNGKey(0))
  seed = jax.tree.map(jnp.zeros_like, state.theta)
  # D counts squared steps per pixel of the frame: sum theta^2 / (H W eta^2).
  want = float(jnp.sum(state.theta["flow"] ** 2)) / (6 * 6 * 0.1 ** 2)
  np.testing.assert_allclose(ascent.distance(canvas, state.theta, seed, 0.1), want, rtol=1e-6)
  near = lambda theta: 1e6 * ascent.distance(canvas, theta, state.theta, 0.1)
  _, m = ascent.step(canvas, tx, _linear_energy(jnp.ones(SHAPE)), state, 0, theta_penalty=near)
  _, m0 = ascent.step(canvas, tx, _linear_energy(jnp.ones(SHAPE)), state, 0)
  np.testing.assert_allclose(m.objective, m0.objective)  # D = 0 at the seed.


@pytest.mark.parametrize("schedule", ["cosine", "exponential", "constant"])
def test_optimizer_with_traced_steps_is_optax_adam(schedule):
  # The budget may be traced (one compilation for every budget); the
  # updates are optax's Adam with optax's own schedule over that budget.
  opt = ml_collections.ConfigDict(dict(learning_rate=0.05, final_fraction=0.1, b1=0.9,
                                       b2=0.999, schedule=schedule))
  steps = 12
  reference = {"cosine": optax.cosine_decay_schedule(0.05, steps, alpha=0.1),
               "exponential": optax.exponential_decay(0.05, steps, decay_rate=0.1),
               "constant": optax.constant_schedule(0.05)}[schedule]
  grads = jnp.linspace(-1.0, 2.0, 5)

  def updates(tx):
    state = tx.init(grads)

    def body(state, _):
      u, state = tx.update(grads, state)
      return state, u

    return jax.lax.scan(body, state, None, length=steps + 3)[1]

  ours = jax.jit(lambda n: updates(ascent.optimizer(opt, n)))(jnp.int32(steps))
  np.testing.assert_allclose(ours, updates(optax.adam(reference, b1=0.9, b2=0.999)),
                             rtol=2e-6, atol=1e-9)
