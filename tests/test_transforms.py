"""Transforms: flow vectors follow rotations and scalings, streams stay aligned,
the stride jitter is the paper's, and pipelines run under jit/vmap/scan."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import stviz_jax as sv
from stviz_jax import transforms
import handbuilt


def _clip(key, t=3, h=12, w=12):
  kr, kf = jax.random.split(key)
  return {"rgb": jax.random.normal(kr, (1, h, w, 3)),
          "flow": jax.random.normal(kf, (t, h, w, 2)) + jnp.array([1.0, 0.3])}


def _angle(v):
  return np.degrees(np.arctan2(v[1], v[0]))


def test_rotating_by_90_degrees_matches_rot90_and_rotates_the_vectors():
  x = _clip(jax.random.PRNGKey(0))
  out = transforms.rotate(x, 90.0)
  # Reference: np.rot90 turns the picture counter-clockwise; a vector (u, v)
  # (x right, y down) turned counter-clockwise by 90 degrees on screen is (v, -u).
  rgb_ref = np.rot90(np.asarray(x["rgb"]), 1, axes=(1, 2))
  flow_pos = np.rot90(np.asarray(x["flow"]), 1, axes=(1, 2))
  flow_ref = np.stack([flow_pos[..., 1], -flow_pos[..., 0]], -1)
  np.testing.assert_allclose(out["rgb"], rgb_ref, atol=1e-4)
  np.testing.assert_allclose(out["flow"], flow_ref, atol=1e-4)
  # The mean motion direction turns by 90 degrees (counter-clockwise on
  # screen is a negative angle in y-down coordinates).
  before = np.asarray(x["flow"]).reshape(-1, 2).mean(0)
  after = np.asarray(out["flow"]).reshape(-1, 2).mean(0)
  assert (_angle(before) - _angle(after)) % 360 == pytest.approx(90.0, abs=1e-3)
  assert np.linalg.norm(after) == pytest.approx(np.linalg.norm(before), rel=1e-4)


def test_rotating_a_uniform_field_by_any_angle_rotates_every_vector():
  flow = jnp.broadcast_to(jnp.array([2.0, 0.0]), (2, 9, 9, 2))
  out = np.asarray(transforms.rotate({"flow": flow}, 30.0)["flow"])
  expected = 2.0 * np.array([np.cos(np.radians(30)), -np.sin(np.radians(30))])
  np.testing.assert_allclose(out.reshape(-1, 2), np.broadcast_to(expected, (162, 2)), atol=1e-5)


@pytest.mark.parametrize("s", [0.8, 1.25])
def test_scaling_a_clip_by_s_scales_its_flow_magnitudes_by_s(s):
  flow = jnp.broadcast_to(jnp.array([1.5, -0.5]), (3, 10, 10, 2))
  rgb = jax.random.uniform(jax.random.PRNGKey(1), (1, 10, 10, 3))
  out = transforms.scale({"flow": flow, "rgb": rgb}, s)
  mag = np.linalg.norm(np.asarray(out["flow"]), axis=-1)
  np.testing.assert_allclose(mag, s * np.linalg.norm([1.5, -0.5]), rtol=1e-5)
  # A radial expansion u(p) = p is invariant under zoom: s * u(p / s) = p.
  yy, xx = np.meshgrid(np.arange(10) - 4.5, np.arange(10) - 4.5, indexing="ij")
  radial = jnp.asarray(np.stack([xx, yy], -1)[None].astype(np.float32))
  zoomed = np.asarray(transforms.scale({"flow": radial}, s)["flow"])
  inner = slice(2, 8)  # away from the edge, where values are repeated.
  np.testing.assert_allclose(zoomed[0, inner, inner], np.asarray(radial)[0, inner, inner],
                             atol=1e-4)
  # Appearance is zoomed too, but its values are not multiplied.
  centre = np.asarray(transforms.scale({"rgb": rgb}, 1.0)["rgb"])
  np.testing.assert_allclose(centre, rgb, atol=1e-6)


def test_stride_jitter_is_the_papers_window_for_every_stream():
  x = _clip(jax.random.PRNGKey(2), h=15, w=15)
  key = jax.random.PRNGKey(7)
  out = transforms.jitter(4)(key, x)
  dy, dx = jax.random.randint(key, (2,), 0, 4)  # the paper's draw, as in optimize.
  for s, v in x.items():
    assert out[s].shape == (v.shape[0], 12, 12, v.shape[3])
    np.testing.assert_array_equal(out[s], np.asarray(v)[:, dy:dy + 12, dx:dx + 12])


def test_temporal_shift_moves_each_stream_by_the_same_time():
  flow = jnp.arange(4.0)[:, None, None, None] * jnp.ones((4, 2, 2, 2))
  rgb = jnp.arange(2.0)[:, None, None, None] * jnp.ones((2, 2, 2, 3))
  out = transforms.shift_time({"flow": flow, "rgb": rgb}, 0.5)  # half the clip later.
  np.testing.assert_array_equal(np.asarray(out["flow"])[:, 0, 0, 0], [0, 0, 0, 1])
  np.testing.assert_array_equal(np.asarray(out["rgb"])[:, 0, 0, 0], [0, 0])
  back = transforms.shift_time({"flow": flow}, -0.25)
  np.testing.assert_array_equal(np.asarray(back["flow"])[:, 0, 0, 0], [1, 2, 3, 3])


def test_pipeline_margins_and_parsing():
  t = transforms.parse("pad(2), jitter(5), scale(0.9,1.1), rotate(10), time_jitter(1), jitter",
                       stride_jitter=3)
  assert t.margin == -4 + 4 + 2
  assert t.name == "pad(2), jitter(5), scale(0.9,1.1), rotate(10), time_jitter(1), jitter(3)"
  x = _clip(jax.random.PRNGKey(3))
  out = t(jax.random.PRNGKey(0), x)
  assert out["flow"].shape == (3, 12 - t.margin, 12 - t.margin, 2)
  assert transforms.parse("", 3).margin == 0
  with pytest.raises(ValueError, match="unknown transform 'blur'"):
    transforms.parse("jitter, blur(2)", 3)
  with pytest.raises(ValueError, match="'scale' takes 2 argument"):
    transforms.parse("scale(1.1)", 3)
  with pytest.raises(ValueError, match="cannot parse config.transforms"):
    transforms.parse("jitter(3", 3)


def test_a_random_pipeline_is_pure_under_jit_vmap_and_scan():
  t = transforms.parse("pad(1), jitter(3), scale(0.8,1.2), rotate(20), time_jitter(1)", 1)
  x = _clip(jax.random.PRNGKey(4))
  keys = jax.random.split(jax.random.PRNGKey(5), 3)
  batched = jax.jit(jax.vmap(t, in_axes=(0, None)))(keys, x)
  for i in range(3):
    one = t(keys[i], x)
    for s in x:
      np.testing.assert_allclose(batched[s][i], one[s], atol=1e-5)

  def body(carry, k):
    y = t(k, x)
    return carry + y["flow"].mean(), None

  total, _ = jax.lax.scan(body, 0.0, keys)
  expected = sum(float(t(k, x)["flow"].mean()) for k in keys)
  assert float(total) == pytest.approx(expected, rel=1e-5)
  # Gradients flow through the warps to the inputs.
  g = jax.grad(lambda f: t(keys[0], {"flow": f, "rgb": x["rgb"]})["flow"].sum())(x["flow"])
  assert np.abs(np.asarray(g)).sum() > 0


def test_the_rightward_unit_moves_right_under_the_lucid_transforms():
  hand = handbuilt.model()
  c = sv.default_config()
  c.steps = 40
  c.transforms = "pad(2), jitter(3), scale(0.9,1.1), rotate(10), time_jitter(1), jitter"
  vis = sv.Visualizer(hand, "motion", c)
  r = vis.run([0, 2], seed=0, log_progress=False)
  right, down = r.inputs["flow"]
  assert right.shape == (3, 16, 16, 2)
  # Random rotations put zero-mean noise (~ sin theta) on the gradient of the
  # orthogonal flow component, and Adam normalises it to full-size steps, so
  # that component random-walks (measured: 4-15 degrees over seeds, for
  # rotate(5) as for rotate(10)); with jitter alone the mean is within 0.3
  # degrees. The unit's direction still wins by a wide margin.
  assert abs(_angle(right.reshape(-1, 2).mean(0))) < 30
  assert abs(_angle(down.reshape(-1, 2).mean(0)) - 90) < 30
  assert right[..., 0].mean() > 0.5 * 160 * hand.spec.streams["flow"].pixel_scale


def test_flip_mirrors_frames_and_negates_flow_u_with_one_draw_for_all_streams():
  rng = np.random.default_rng(0)
  inputs = {"rgb": jnp.asarray(rng.normal(size=(1, 6, 5, 3)), jnp.float32),
            "flow": jnp.asarray(rng.normal(size=(3, 6, 5, 2)), jnp.float32)}
  m = transforms.mirror(inputs)
  np.testing.assert_array_equal(m["rgb"], inputs["rgb"][:, :, ::-1])
  np.testing.assert_array_equal(m["flow"][..., 0], -inputs["flow"][:, :, ::-1, 0])
  np.testing.assert_array_equal(m["flow"][..., 1], inputs["flow"][:, :, ::-1, 1])
  for s in inputs:
    np.testing.assert_array_equal(transforms.mirror(m)[s], inputs[s])
  flip = transforms.parse("flip", 1)
  assert flip.margin == 0 and flip.name == "flip"
  seen = set()
  for k in range(16):
    out = flip(jax.random.PRNGKey(k), inputs)
    flipped = bool(np.array_equal(out["rgb"], m["rgb"]))
    assert flipped or np.array_equal(out["rgb"], inputs["rgb"])
    np.testing.assert_array_equal(out["flow"], (m if flipped else inputs)["flow"])
    seen.add(flipped)
  assert seen == {True, False}
