"""Measurements on known inputs: hue, flow direction/magnitude, temporal variation."""

import colorsys

import jax
import numpy as np
import pytest

from stviz_jax import analysis
from stviz_jax.optimize import Result


@pytest.mark.parametrize("rgb, hue", [
    ((1, 0, 0), 0), ((1, 1, 0), 60), ((0, 1, 0), 120), ((0, 1, 1), 180),
    ((0, 0, 1), 240), ((1, 0, 1), 300)])
def test_hue_of_primaries_and_secondaries(rgb, hue):
  h, c = analysis.hue_chroma(np.asarray(rgb, np.float32))
  assert float(analysis.angle_difference(h, hue)) < 1e-3
  assert float(c) > 0.8


def test_hue_matches_hsv_within_the_known_bound():
  # The opponent-plane hue differs from HSV's hexagonal hue by at most 1.12 deg.
  rgb = np.random.default_rng(0).uniform(size=(500, 3)).astype(np.float32)
  hsv = np.asarray([colorsys.rgb_to_hsv(*c)[0] * 360 for c in rgb])
  h, c = analysis.hue_chroma(rgb)
  ok = np.asarray(c) > 0.05  # hue is ill-conditioned for near-grey colours.
  err = np.asarray(analysis.angle_difference(h, hsv))[ok]
  assert err.max() < 1.2, err.max()


def test_hue_is_invariant_to_offset_and_positive_scale():
  rng = np.random.default_rng(1)
  img = rng.uniform(-1, 1, size=(8, 8, 3)).astype(np.float32)
  h0 = analysis.dominant_hue(img)
  for scale, offset in [(3.0, 0.0), (0.1, -5.0), (127.5, 127.5)]:
    h1 = analysis.dominant_hue(img * scale + offset)
    assert float(analysis.angle_difference(h0, h1)) < 1e-2


def test_dominant_hue_prefers_the_colour_with_most_chroma_and_ignores_grey():
  img = np.full((20, 20, 3), 0.5, np.float32)  # grey background: no vote.
  img[:10, :8] = (0.9, 0.1, 0.1)     # 80 red pixels
  img[10:, :4] = (0.1, 0.1, 0.9)     # 40 blue pixels
  img[10:, 10:] = (0.55, 0.5, 0.5)   # 100 almost-grey pixels with a weak red tint
  assert float(analysis.angle_difference(analysis.dominant_hue(img), 0.0)) < 1.0
  img[:10, :8] = 0.5  # without the red patch, blue has the most chroma.
  assert float(analysis.angle_difference(analysis.dominant_hue(img), 240.0)) < 1.0
  # Clip axes are reduced too: (T, H, W, 3).
  clip = np.stack([img, img])
  assert float(analysis.angle_difference(analysis.dominant_hue(clip), 240.0)) < 1.0


def test_dominant_hue_wraps_around_red():
  img = np.zeros((2, 1, 3), np.float32)
  img[0, 0] = (1.0, 0.0, 0.1)  # hue ~355
  img[1, 0] = (1.0, 0.1, 0.0)  # hue ~5
  h = analysis.dominant_hue(img)
  assert float(analysis.angle_difference(h, 0.0)) < 1.0


@pytest.mark.parametrize("uv, direction", [
    ((1, 0), 0), ((0, 1), 90), ((-1, 0), 180), ((0, -1), 270), ((1, 1), 45),
    ((-1, -1), 225)])
def test_flow_direction_convention_y_down(uv, direction):
  # v > 0 moves down the image (rows increase), which is 90 degrees.
  flow = np.broadcast_to(np.asarray(uv, np.float32), (3, 4, 4, 2))
  assert float(analysis.angle_difference(analysis.flow_direction(flow), direction)) < 1e-3
  assert abs(float(analysis.flow_magnitude(flow)) - np.hypot(*uv)) < 1e-5


def test_magnitude_speed_and_coherence_of_opposite_motions():
  flow = np.zeros((2, 4, 4, 2), np.float32)
  flow[:, :2, :, 0] = 2.0   # top half moves right at 2 px/frame
  flow[:, 2:, :, 0] = -2.0  # bottom half moves left
  assert abs(float(analysis.flow_magnitude(flow))) < 1e-6
  assert abs(float(analysis.mean_speed(flow)) - 2.0) < 1e-6
  assert abs(float(analysis.direction_coherence(flow))) < 1e-6
  flow[:, 2:, :, 0] = 2.0
  assert abs(float(analysis.direction_coherence(flow)) - 1.0) < 1e-6


def test_temporal_variation_known_values():
  rng = np.random.default_rng(2)
  frame = rng.normal(size=(5, 5, 2)).astype(np.float32)
  constant = np.stack([frame] * 4)
  assert float(analysis.temporal_variation(constant)) == 0.0
  alternating = np.stack([frame, -frame, frame, -frame])
  # ||x_{t+1} - x_t||^2 = 4 ||x||^2 for each of the 3 differences.
  np.testing.assert_allclose(float(analysis.temporal_variation(alternating)), 4.0, rtol=1e-5)
  # Scale-free: a weaker video with the same shape of change measures the same.
  np.testing.assert_allclose(float(analysis.temporal_variation(0.01 * alternating)), 4.0,
                             rtol=1e-5)
  ramp = np.stack([frame * (1 + 0.1 * t) for t in range(3)])
  want = 2 * 0.01 / (1.0 + 1.1 ** 2)
  np.testing.assert_allclose(float(analysis.temporal_variation(ramp)), want, rtol=1e-5)
  with pytest.raises(ValueError, match="T >= 2"):
    analysis.temporal_variation(frame[None])


def test_relative_distance():
  a = np.ones((2, 3, 3, 3), np.float32)
  assert float(analysis.relative_distance(a, a)) == 0.0
  np.testing.assert_allclose(float(analysis.relative_distance(a, -a)), 2.0, rtol=1e-6)
  np.testing.assert_allclose(float(analysis.relative_distance(a, 1.1 * a)),
                             0.1 / 1.05, rtol=1e-5)


def test_measure_result_matches_per_unit_functions_and_round_trips(tmp_path):
  rng = np.random.default_rng(3)
  rgb = rng.normal(size=(3, 1, 6, 6, 3)).astype(np.float32)
  flow = rng.normal(size=(3, 4, 6, 6, 2)).astype(np.float32) + np.float32([0.0, 1.0])
  result = Result(layer="logits", units=np.arange(3), inputs={"rgb": rgb, "flow": flow},
                  activations=np.zeros(3), history={}, a_hat_given=False, seed=0,
                  settings={"flow": (1.0, 1.0)})
  path = str(tmp_path / "r.npz")
  result.save(path)
  m = analysis.measure(Result.load(path))
  assert set(m) == {"units", "rgb_hue", "flow_direction", "flow_magnitude", "flow_speed",
                    "flow_coherence", "flow_temporal_variation"}
  for i in range(3):
    np.testing.assert_allclose(m["rgb_hue"][i], analysis.dominant_hue(rgb[i]), atol=1e-3)
    np.testing.assert_allclose(m["flow_direction"][i], analysis.flow_direction(flow[i]),
                               atol=1e-3)
    np.testing.assert_allclose(m["flow_temporal_variation"][i],
                               analysis.temporal_variation(flow[i]), rtol=1e-5)
  # Flow biased downward: mean direction near 90 degrees.
  assert np.all(np.asarray(analysis.angle_difference(m["flow_direction"], 90)) < 30)


def test_measurements_are_jit_and_vmap_compatible():
  flow = np.random.default_rng(4).normal(size=(5, 3, 4, 4, 2)).astype(np.float32)
  direct = np.asarray([analysis.flow_direction(f) for f in flow])
  np.testing.assert_allclose(jax.jit(jax.vmap(analysis.flow_direction))(flow), direct,
                             atol=1e-3)
  imgs = np.random.default_rng(5).uniform(size=(5, 4, 4, 3)).astype(np.float32)
  direct = np.asarray([analysis.dominant_hue(i) for i in imgs])
  np.testing.assert_allclose(jax.jit(jax.vmap(analysis.dominant_hue))(imgs), direct,
                             atol=1e-3)
