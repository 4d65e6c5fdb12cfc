"""The optimiser: known answers on hand-built units, vmap == sequential,
one compilation per sweep, temporal regularisation, errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import stviz_jax as sv
from stviz_jax import objective, optimize, regularizers
import handbuilt


def _config(steps=60, **kw):
  return handbuilt.config(steps=steps, **kw)


@pytest.fixture(scope="module")
def hand():
  return handbuilt.model()


@pytest.fixture(scope="module")
def motion_result(hand):
  return sv.visualize(hand, "motion", [0, 1, 2, 3], _config(), seed=0)


def test_rightward_unit_yields_rightward_flow(motion_result):
  flow = motion_result.inputs["flow"][0]
  u, v = flow[..., 0].mean(), flow[..., 1].mean()
  assert u > 0 and u > 10 * abs(v)


def test_leftward_unit_yields_leftward_flow(motion_result):
  flow = motion_result.inputs["flow"][1]
  u, v = flow[..., 0].mean(), flow[..., 1].mean()
  assert u < 0 and -u > 10 * abs(v)


def test_vertical_units_follow_image_axes(motion_result):
  down, up = motion_result.inputs["flow"][2], motion_result.inputs["flow"][3]
  assert down[..., 1].mean() > 10 * abs(down[..., 0].mean())
  assert up[..., 1].mean() < -10 * abs(up[..., 0].mean())


def test_flow_saturates_at_the_bound(motion_result, hand):
  bound = 160.0 * hand.spec.streams["flow"].pixel_scale
  norms = np.linalg.norm(motion_result.inputs["flow"], axis=-1)
  assert norms.max() <= bound * (1 + 1e-5)
  assert np.median(norms) > 0.5 * bound  # the linear unit pushes to the bound.


def test_red_unit_yields_red_image(hand):
  r = sv.visualize(hand, "colour", [0, 1, 2], _config(), seed=3)
  for i, channel in enumerate(range(3)):
    mean_rgb = r.inputs["rgb"][i].reshape(-1, 3).mean(0)
    assert np.argmax(mean_rgb) == channel, mean_rgb


def test_history_rises_and_activation_matches_a_fresh_forward(hand):
  c = _config()
  r = sv.visualize(hand, "motion", [0], c, seed=1)
  obj = r.history["objective"][0]
  assert obj[-5:].mean() > obj[:5].mean()
  # Result.activations is the channel objective on the returned input.
  rho, _ = hand.spec.receptive_field("motion")
  inputs = {k: jnp.asarray(v[:1]) for k, v in r.inputs.items()}
  a = hand.activations(inputs, ["motion"])["motion"][..., 0].sum() / rho ** 2
  np.testing.assert_allclose(r.activations[0], a, rtol=1e-4)


def test_vmapped_units_equal_units_one_at_a_time():
  model = sv.models.load("tiny_two_stream")
  c = _config(steps=15)
  vis = sv.Visualizer(model, "fusion", c)
  together = vis.run([2, 5, 7], seed=4, log_progress=False)
  for i, u in enumerate([2, 5, 7]):
    alone = vis.run([u], seed=4, log_progress=False)
    for s, spec in model.spec.streams.items():
      # A batched convolution sums in another order than a single one. The
      # gradients agree to 1e-7, but Adam's first steps move every pixel by
      # the learning rate in the sign of its gradient, so a pixel whose
      # gradient is ~0 may step either way, and ReLU switches carry that on:
      # nearly all pixels agree to 2e-3 B, a few to 2e-2 B.
      bound = 160.0 * spec.pixel_scale
      diff = np.abs(together.inputs[s][i] - alone.inputs[s][0])
      assert np.mean(diff <= 2e-3 * bound) >= 0.97 and diff.max() <= 2e-2 * bound, (
          s, u, np.mean(diff <= 2e-3 * bound), diff.max() / bound)
    np.testing.assert_allclose(together.activations[i], alone.activations[0], rtol=2e-3)


def test_sweep_over_chunks_compiles_once():
  model = sv.models.load("tiny_two_stream")
  vis = sv.Visualizer(model, "flow/conv2", _config(steps=3))
  r = vis.run(list(range(11)), seed=0, chunk_size=4, log_progress=False)  # 4 + 4 + 3 (padded)
  assert r.inputs["flow"].shape[0] == 11 and list(r.units) == list(range(11))
  vis.run([0, 1, 2, 3], seed=1, tv={"flow": (1.0, 10.0)}, chunk_size=4, log_progress=False)
  assert vis.trace_count == 1
  # The padded last chunk gives the same result as running those units alone.
  alone = vis.run([8, 9, 10, 10], seed=0, chunk_size=4, log_progress=False)
  np.testing.assert_allclose(r.inputs["flow"][8:], alone.inputs["flow"][:3], rtol=1e-5, atol=1e-6)


def _temporal_variation(flow):
  return np.abs(np.diff(flow, axis=1)).mean() / (np.abs(flow).mean() + 1e-12)


def test_large_gamma_makes_flow_nearly_constant_in_time():
  model = sv.models.load("tiny_two_stream")
  vis = sv.Visualizer(model, "fusion", _config(steps=80))
  free = vis.run([0, 1], seed=0, tv={"flow": (1.0, 0.0)}, log_progress=False)
  slow = vis.run([0, 1], seed=0, tv={"flow": (1.0, 1000.0)}, log_progress=False)
  assert _temporal_variation(slow.inputs["flow"]) < 0.05
  assert _temporal_variation(slow.inputs["flow"]) < 0.25 * _temporal_variation(free.inputs["flow"])


def test_redirected_relu_revives_a_dead_unit(hand):
  dead = sv.visualize(hand, "dead", [0], _config(steps=40), seed=0)
  revived = sv.visualize(hand, "dead", [0], _config(steps=40, redirect_relu_steps=20), seed=0)
  assert dead.activations[0] == 0.0
  assert revived.activations[0] > 0.0


def test_class_logit_and_neuron_objectives(hand):
  c = _config(steps=40)
  c.objective.kind = "class_logit"
  r = sv.visualize(hand, "logits", [1], c, seed=0)  # logit 1 = leftward motion.
  assert r.inputs["flow"][0, ..., 0].mean() < 0
  c.objective.kind = "neuron"
  r = sv.visualize(hand, "motion", [0], c, seed=0)
  flow = r.inputs["flow"][0]
  centre = flow[1, 7, 7]
  assert centre[0] > 0.5 * 160 * hand.spec.streams["flow"].pixel_scale
  assert centre[0] > 5 * np.abs(flow[..., 0]).mean()  # only the centre is driven.


def test_errors_name_what_is_valid(hand):
  with pytest.raises(ValueError, match="unknown layer 'conv3'; valid layers: colour, dead, motion, logits"):
    sv.visualize(hand, "conv3", [0], _config(steps=2))
  with pytest.raises(ValueError, match=r"unit\(s\) \[4\] out of range for layer 'motion': valid units are 0..3"):
    sv.visualize(hand, "motion", [4], _config(steps=2))
  with pytest.raises(ValueError, match="unknown objective.kind 'max'"):
    c = _config(steps=2)
    c.objective.kind = "max"
    sv.visualize(hand, "motion", [0], c)
  with pytest.raises(ValueError, match=r"unknown stream\(s\) \['depth'\]"):
    sv.visualize(hand, "motion", [0], _config(steps=2), tv={"depth": (1, 1)})


def test_non_finite_objective_names_unit_and_step():
  def apply(variables, inputs):
    f = jnp.log(inputs["rgb"] - 5.0)  # NaN for every input in range.
    return f.mean((1, 2, 3)), {"bad": f}

  m = sv.models.wrap(apply, {}, {"rgb": (1, 8, 8, 3)})
  with pytest.raises(FloatingPointError, match="non-finite objective for unit 2 at step 0"):
    sv.visualize(m, "bad", [2], _config(steps=3))


def test_researcher_composes_grad_and_vmap_over_the_objective(hand):
  weights = {s: regularizers.stream_weights(regularizers.paper_preset(), s, spec.pixel_scale)
             for s, spec in hand.spec.streams.items()}
  rho, _ = hand.spec.receptive_field("motion")
  terms = objective.regularized(hand.apply, objective.channel("motion", rho=rho), weights)
  f = lambda v, x, u: terms(v, x, u)["objective"]
  x = {k: jnp.zeros(s.shape) for k, s in hand.spec.streams.items()}
  grads = jax.jit(jax.vmap(jax.grad(f, argnums=1), in_axes=(None, None, 0)))(
      hand.variables, x, jnp.arange(4))
  # At x = 0 the penalties are flat, so the gradient is the unit's filter / rho^2.
  g = np.asarray(grads["flow"])
  expected = np.array(list(handbuilt.MOTION_UNITS.values()))
  np.testing.assert_allclose(g[:, 0, 0, 0, :], expected / rho ** 2, rtol=1e-5)
  assert np.all(np.asarray(grads["rgb"]) == 0)
  # Weights are an argument: the gradient wrt the weights exists too.
  gw = jax.grad(f)(hand.variables, x, 0)
  assert set(gw) == {"motion", "colour"}


def test_objectives_compose():
  acts = {"a": jnp.arange(6.0).reshape(1, 2, 3), "b": jnp.ones((1, 2, 3))}
  oa, ob = objective.channel("a"), objective.channel("b", rho=2.0, a_hat=[1.0, 2.0, 4.0])
  combo = oa - 0.5 * ob + 2 * oa
  assert combo.layers == ("a", "b")
  # channel 1 of a: 1 + 4 = 5; of b: 2 / (4 * 2) = 0.25.
  assert float(combo(acts, 1)) == pytest.approx(3 * 5 - 0.5 * 0.25)
  vals = jax.vmap(lambda u: combo(acts, u))(jnp.arange(3))
  assert vals.shape == (3,)


def test_host_loop_equals_scan():
  # Not a multiple of the calls' length: the last call skips steps.
  steps = optimize.STEPS_PER_CALL + 3
  model = sv.models.load("tiny_two_stream", size=16, frames=3, width=8)
  scan = sv.visualize(model, "fusion", [0, 3], _config(steps=steps, loop="scan"), seed=2)
  host = sv.visualize(model, "fusion", [0, 3], _config(steps=steps, loop="host"), seed=2)
  assert scan.history["objective"].shape == host.history["objective"].shape == (2, steps)
  for s, spec in model.spec.streams.items():
    np.testing.assert_allclose(host.inputs[s], scan.inputs[s], rtol=0,
                               atol=2e-3 * 160 * spec.pixel_scale)
  np.testing.assert_allclose(host.history["objective"], scan.history["objective"],
                             rtol=1e-3, atol=1e-4)
  with pytest.raises(ValueError, match="unknown loop 'gpu'; valid: auto, scan, host"):
    sv.Visualizer(model, "fusion", _config(loop="gpu"))


def test_compiled_program_does_not_depend_on_the_budget():
  # The budget is an argument of the compiled calls, so a rerun with more
  # steps compiles nothing new (and the persistent cache can serve it).
  model = handbuilt.model()
  texts = {steps: sv.Visualizer(model, "motion", _config(steps=steps)).lower_element().as_text()
           for steps in (3, optimize.STEPS_PER_CALL, 23)}
  assert len(set(texts.values())) == 1


def test_steps_past_the_budget_change_nothing():
  # Steps 7 .. 9 of the one call of a 7-step run are skipped: the state after
  # the call is the 7-step state, and the history ends at step 7.
  model = handbuilt.model()
  vis = sv.Visualizer(model, "motion", _config(steps=7))
  units = np.array([0, 2], np.int32)
  keys = jax.random.split(jax.random.PRNGKey(0), 2)
  tv = {s: (np.ones(2, np.float32), np.zeros(2, np.float32)) for s in model.spec.streams}
  args = (model.variables, units, tv)
  c = vis.compiled_units
  after_call, m = c.segment(args, c.start(keys), np.int32(0), np.int32(7))
  state = c.start(keys)
  for i in range(7):
    state, _ = c.step(args, state, np.int32(i), vis.optimizer(7))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
               after_call, state)
  assert np.all(np.asarray(m.objective)[7:] == 0) and np.all(np.asarray(m.objective)[:7] != 0)
