"""Space-time attribution: MACO's transparency accumulated inside the job's own
optimisation, gradient x input for real clips, and their overlay pictures.

Known answer: a hand-built net whose units read only the top-left quadrant of
their stream puts (nearly) all attribution there. With attribution off the
optimisation is main's (ecbc45c) bit for bit, with no extra output.
"""

import os

import jax.numpy as jnp
import numpy as np
import pytest

import stviz_jax as sv
from stviz_jax import layout, models, render, sweep
from stviz_jax.data import synthetic
from stviz_jax.insight import attribution
import handbuilt

REFERENCE = os.path.join(os.path.dirname(__file__), "data", "main_ecbc45c_handbuilt_motion.npz")
QUADRANT = np.zeros((16, 16), np.float32)
QUADRANT[:8, :8] = 1.0


def _quadrant_apply(variables, inputs):
  """Unit 0: rightward flow, unit 1: red, both summed over the top-left quadrant only."""
  flow = jnp.einsum("nthwc,c->nthw", inputs["flow"], variables["motion"])
  red = jnp.einsum("nthwc,c->nthw", inputs["rgb"], variables["colour"])
  quad = jnp.stack([flow.sum(1), red.sum(1)], -1) * QUADRANT[None, :, :, None]
  return quad.mean((1, 2)), {"quad": quad[:, None]}


@pytest.fixture(scope="module")
def quadrant_model():
  variables = {"motion": jnp.asarray([1.0, 0.0]), "colour": jnp.asarray([1.0, -0.5, -0.5])}
  return models.wrap(_quadrant_apply, variables, {"rgb": handbuilt.RGB, "flow": handbuilt.FLOW},
                     name="quadrant")


def _config(steps, attribution_on, **kw):
  c = handbuilt.config(steps=steps, jitter=False, progress_bar=False, **kw)
  c.insight = dict(attribution=attribution_on)
  return c


def test_attribution_off_is_mains_optimisation_bit_for_bit_with_no_extra_output():
  ref = np.load(REFERENCE)  # main at ecbc45c: handbuilt 'motion' [0, 2], 12 steps, seed 3.
  # One vmapped chunk of both units, as main ran chunk_size=0 then (it is now one unit
  # per call on CPU: chunks.auto_chunk_size; vmapped and single-unit programs differ in
  # the last bits).
  c = handbuilt.config(steps=12, chunk_size=2)
  c.insight = dict(attribution=False)
  vis = sv.Visualizer(handbuilt.model(), "motion", c)
  r = vis.run([0, 2], seed=3, log_progress=False)
  # The same optimisation as main's then, to float32 rounding: the steps now
  # run as calls of `optimize.STEPS_PER_CALL` with the budget traced (a cond
  # per step, the schedule's budget an argument), which XLA fuses differently
  # in the last bits (measured: 4.8e-7 at most). On against off below is exact.
  for k in r.inputs:
    np.testing.assert_allclose(r.inputs[k], ref[f"inputs_{k}"], rtol=1e-5, atol=1e-6)
  for k in r.history:
    np.testing.assert_allclose(r.history[k], ref[f"history_{k}"], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(r.activations, ref["activations"], rtol=1e-5, atol=1e-6)
  assert r.attribution is None and vis.trace_count == 1
  assert len(vis.run_chunk(np.array([0, 2]), [vis.settings()] * 2, seed=3)) == 3
  # Attribution on: the same optimisation (the maps come from its own gradients).
  c.insight = dict(attribution=True)
  on = sv.Visualizer(handbuilt.model(), "motion", c).run([0, 2], seed=3, log_progress=False)
  for k in r.inputs:
    np.testing.assert_array_equal(on.inputs[k], r.inputs[k])
  assert {k: v.shape for k, v in on.attribution.items()} == {"flow": (2, 3, 16, 16),
                                                             "rgb": (2, 1, 16, 16)}


def test_transparency_of_a_quadrant_unit_lies_in_the_quadrant(quadrant_model):
  vis = sv.Visualizer(quadrant_model, "quad", _config(30, True))
  r = vis.run([0, 1], seed=0, log_progress=False)
  a = r.attribution
  for unit, stream in ((0, "flow"), (1, "rgb")):
    m = a[stream][unit]
    assert m.min() >= 0 and m.max() == pytest.approx(1.0)
    share = float(attribution.mass_share({stream: m}, QUADRANT)[stream])
    assert share > 0.9, (unit, stream, share)  # measured: 1.000 (flow), 1.000 (rgb).
  # The stream a unit does not read has no attribution (not rounding noise scaled up).
  assert a["rgb"][0].max() == 0 and a["flow"][1].max() == 0


def test_transparency_uses_the_canvas_centre_under_jitter_and_fourier(quadrant_model):
  c = _config(10, True, transforms="jitter(4)")
  c.param.kind = "fourier"
  r = sv.Visualizer(quadrant_model, "quad", c).run([0], seed=0, log_progress=False)
  m = r.attribution["flow"][0]
  assert m.shape == (3, 16, 16) and np.isfinite(m).all()
  share = float(attribution.mass_share({"flow": m}, QUADRANT)["flow"])
  assert share > 0.6, share  # measured 0.741: the jitter window blurs the support by 3 px.
  # The map rides on the optimisation through jax.vjp of to_pixels: the same steps.
  c.insight = dict(attribution=False)
  off = sv.Visualizer(quadrant_model, "quad", c).run([0], seed=0, log_progress=False)
  for k in off.inputs:
    np.testing.assert_allclose(r.inputs[k], off.inputs[k], rtol=0, atol=1e-6)  # measured: equal.


def test_gradient_x_input_of_a_quadrant_unit(quadrant_model):
  rng = np.random.default_rng(0)
  clip = {"rgb": rng.uniform(-1, 1, (1, 16, 16, 3)).astype(np.float32),
          "flow": rng.normal(0, 2, (3, 16, 16, 2)).astype(np.float32)}
  target = sv.objective.channel("quad")
  maps = attribution.gradient_x_input(quadrant_model.apply, quadrant_model.variables, target,
                                      [0, 1], clip)
  assert maps["flow"].shape == (2, 3, 16, 16) and maps["rgb"].shape == (2, 1, 16, 16)
  assert float(attribution.mass_share({"f": maps["flow"][0]}, QUADRANT)["f"]) > 0.9
  assert float(attribution.mass_share({"r": maps["rgb"][1]}, QUADRANT)["r"]) > 0.9
  # |sum_c x g|: unit 0 weights u only, so the map is |u| in the quadrant, scaled.
  expect = np.abs(clip["flow"][..., 0]) * QUADRANT
  np.testing.assert_allclose(maps["flow"][0], expect / expect.max(), atol=1e-6)


def test_one_compilation_over_chunks_and_the_maps_survive_save_load_and_resume(
    quadrant_model, tmp_path):
  c = _config(5, True)
  vis = sv.Visualizer(quadrant_model, "quad", c)
  r = vis.run([0, 1, 0], seed=0, chunk_size=2, log_progress=False)  # 2 chunks, padded.
  assert vis.trace_count == 1
  path = str(tmp_path / layout.RESULT_FILE)
  r.save(path)
  back = sv.Result.load(path)
  for s in r.attribution:
    np.testing.assert_array_equal(back.attribution[s], r.attribution[s])
  assert layout.read_result(path)["attribution"]["flow"].shape == (3, 3, 16, 16)
  assert layout.read_result(path, inputs=False)["attribution_shapes"] == {
      "flow": (3, 16, 16), "rgb": (1, 16, 16)}
  c.chunk_size = 1
  state = str(tmp_path / "state")
  first = sweep.run_sweep(vis, [0, 1], [{}], c, state)[0]
  again = sweep.run_sweep(vis, [0, 1], [{}], c, state)[0]  # every chunk restored.
  for s in first.attribution:
    np.testing.assert_array_equal(again.attribution[s], first.attribution[s])
    np.testing.assert_allclose(first.attribution[s], r.attribution[s][:2], atol=1e-5)
  off = _config(5, False)
  # Chunks saved without maps (e.g. by a version before them) are recomputed, not mixed in.
  c_off = _config(5, False)
  c_off.chunk_size = 1
  old = str(tmp_path / "old_state")
  sweep.run_sweep(sv.Visualizer(quadrant_model, "quad", c_off), [0, 1], [{}], c_off, old)
  mixed = sweep.run_sweep(vis, [0, 1], [{}], c_off, old)[0]
  np.testing.assert_array_equal(mixed.attribution["flow"], first.attribution["flow"])
  r_off = sv.Visualizer(quadrant_model, "quad", off).run([0], log_progress=False)
  r_off.save(path)
  assert sv.Result.load(path).attribution is None
  assert not any(k.startswith("attribution") for k in np.load(path).files)


def test_overlay_frames_and_alpha(tmp_path):
  rng = np.random.default_rng(1)
  flow = rng.normal(0, 1, (3, 16, 16, 2)).astype(np.float32)
  m = np.zeros((3, 16, 16), np.float32)
  m[:, :8, :8] = rng.uniform(0.2, 1.0, (3, 8, 8))
  rgba = render.attribution_rgba(flow, m, "flow")
  assert rgba.shape == (3, 16, 16, 4) and rgba.dtype == np.uint8
  assert (rgba[:, 8:, :, 3] == 0).all() and (rgba[:, :, 8:, 3] == 0).all()
  assert rgba[..., 3].max() == 255
  frames = render.attribution_overlay(flow, m, "flow", target_size=64, gap=4, labels=False)
  assert frames.dtype == np.uint8 and frames.shape == (3, 64, 3 * 64 + 8, 3)
  labelled = render.attribution_overlay(flow, m, "flow", target_size=64, gap=4)
  assert labelled.shape == (3, 16 + 64, 3 * 64 + 8, 3)
  np.testing.assert_array_equal(labelled[:, 16:], frames)
  assert (labelled[:, :16] < 128).any()  # the panel names are drawn.
  seen = frames[:, :, 64 + 4:128 + 4]
  assert (seen[:, 32:, :] == 0).all()  # alpha 0 fades to the black background.
  written = render.save_frames(str(tmp_path / "overlay"), frames, ("png", "gif"))
  assert os.path.getsize(written["gif"]) > 0
  with pytest.raises(ValueError, match=r"attribution map has shape \(2, 16, 16\); valid"):
    render.attribution_overlay(flow, m[:2], "flow")


def test_gradient_x_input_of_a_real_clip_finds_the_moving_object():
  net = models.load("synthetic_two_stream")
  clip = synthetic.make_clip(synthetic.MotionClass("red", 0), seed=1,
                             classes=synthetic.grid_classes())
  x = {k: np.asarray(v) for k, v in synthetic.model_inputs(clip).items()}
  unit = net.labels.index("red right")
  maps = attribution.gradient_x_input(net.apply, net.variables, sv.objective.class_logit(),
                                      [unit], x)
  mask = clip["mask"][:-1]  # the object's coverage in each flow frame.
  share = float(attribution.mass_share({"flow": maps["flow"][0]}, mask)["flow"])
  # Measured: 0.956 of the flow map on the object, which covers 0.126 of the frame
  # (flow is 0 off the object, so x * g is too; edge pixels count by their coverage).
  assert share > 0.9 and mask.mean() < 0.2, (share, mask.mean())
