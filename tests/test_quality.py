"""Picture-quality measures on inputs whose answer is known."""

import jax.numpy as jnp
import numpy as np
import pytest

from stviz_jax import models, quality

import handbuilt


def _power_law_images(n, size, exponent, seed=0):
  """Images whose amplitude spectrum is 1/f^exponent (power 1/f^(2 exponent)), random phase."""
  rng = np.random.default_rng(seed)
  fy = np.fft.fftfreq(size)[:, None]
  fx = np.fft.fftfreq(size)[None]
  f = np.sqrt(fy ** 2 + fx ** 2)
  f[0, 0] = 1.0
  spectrum = (rng.normal(size=(n, size, size)) + 1j * rng.normal(size=(n, size, size))) / f ** exponent
  return np.real(np.fft.ifft2(spectrum)).astype(np.float32)


@pytest.mark.parametrize("exponent,slope,tol", [(1.0, -2.0, 0.1), (0.0, 0.0, 0.1),
                                                (1.5, -3.0, 0.15)])
def test_spectral_slope_of_power_laws(exponent, slope, tol):
  img = _power_law_images(4, 112, exponent)
  clip = np.repeat(img[None, :, :, :, None], 3, axis=-1)  # (1, T=4, H, W, 3) grey
  got = float(quality.spectral_slope(jnp.asarray(clip))[0])
  assert abs(got - slope) < tol, got


def test_flow_slope_uses_magnitude_and_batches():
  img = _power_law_images(3, 64, 1.0)
  flow = np.stack([img, np.zeros_like(img)], -1)  # u = the 1/f^2 image; |f| = |u|.
  batch = np.stack([flow, 2 * flow])
  slopes = np.asarray(quality.spectral_slope(jnp.asarray(batch), "flow"))
  assert slopes.shape == (2,)
  np.testing.assert_allclose(slopes[0], slopes[1], atol=1e-4)  # scale-free.
  # |u| of a 1/f^2 field is rougher than u itself but far from white noise.
  assert -2.6 < slopes[0] < -1.0


def test_slope_range_is_two_sided():
  assert quality.slope_ok(-2.0)
  assert not quality.slope_ok(-0.2)  # noise
  assert not quality.slope_ok(-3.5)  # blur / grey


def test_temporal_variation_and_flow_speed():
  rng = np.random.default_rng(0)
  still = np.repeat(rng.normal(size=(1, 1, 8, 8, 3)), 5, axis=1)
  noise = rng.normal(size=(1, 5, 8, 8, 3))
  assert float(quality.temporal_variation(jnp.asarray(still))[0]) == pytest.approx(0, abs=1e-6)
  assert float(quality.temporal_variation(jnp.asarray(noise))[0]) == pytest.approx(
      np.sqrt(2), rel=0.15)
  flow = np.zeros((2, 3, 4, 4, 2), np.float32)
  flow[0, ..., 0] = 3.0
  flow[1, ..., 1] = -4.0
  np.testing.assert_allclose(quality.flow_speed(jnp.asarray(flow)), [3.0, 4.0])


def test_transform_set_is_seeded_and_in_range():
  a, b = quality.transform_set(32, frames=8, seed=3), quality.transform_set(32, frames=8, seed=3)
  np.testing.assert_array_equal(a.sigma, b.sigma)
  assert (a.side ** 2 >= 0.7 - 1e-6).all() and (a.side <= 1).all()
  assert (a.top + a.side <= 1 + 1e-6).all() and (a.sigma <= 1.5).all()
  assert set(np.unique(a.flip)) == {0, 1} and (0 <= a.roll).all() and (a.roll < 8).all()
  assert "crop" in a.describe(0)


def test_identity_transform_changes_nothing_and_flip_negates_flow_u():
  rng = np.random.default_rng(0)
  clip = {"rgb": jnp.asarray(rng.normal(size=(2, 8, 8, 3)), jnp.float32),
          "flow": jnp.asarray(rng.normal(size=(2, 8, 8, 2)), jnp.float32)}
  same = quality.apply_transform(clip, 1.0, 0.0, 0.0, 0, 0, 0.0)
  for s in clip:
    np.testing.assert_allclose(same[s], clip[s], atol=1e-5)
  flipped = quality.apply_transform(clip, 1.0, 0.0, 0.0, 1, 0, 0.0)
  np.testing.assert_allclose(flipped["rgb"], clip["rgb"][:, :, ::-1], atol=1e-5)
  np.testing.assert_allclose(flipped["flow"][..., 0], -clip["flow"][:, :, ::-1, 0], atol=1e-5)
  np.testing.assert_allclose(flipped["flow"][..., 1], clip["flow"][:, :, ::-1, 1], atol=1e-5)
  # A crop of half the side, resized back, doubles the flow vectors (p -> 2p).
  const = {"flow": jnp.ones((1, 8, 8, 2))}
  np.testing.assert_allclose(quality.apply_transform(const, 0.5, 0.25, 0.25, 0, 0, 0.0)["flow"],
                             2.0, atol=1e-5)


RGB = models.StreamSpec(4, 16, 16, 3, (-1.0, 1.0))
# A pixel-exact pattern: a checkerboard of +-1 (one pixel per square).
CHECKER = np.indices((16, 16)).sum(0) % 2 * 2.0 - 1.0


def _pattern_model():
  """Class 0 fires for the exact checkerboard, class 1 for overall brightness, class 2 is a constant 0.5."""

  def apply(variables, inputs):
    x = inputs["rgb"]
    pattern = jnp.mean(x * variables["checker"][None, None, :, :, None], axis=(1, 2, 3, 4))
    bright = jnp.mean(x, axis=(1, 2, 3, 4))
    logits = jnp.stack([pattern, bright, jnp.full_like(bright, 0.5)], -1)
    return logits, {"pattern": pattern[:, None, None, None, None]}

  return models.wrap(apply, {"checker": jnp.asarray(CHECKER, jnp.float32)}, {"rgb": RGB},
                     labels=("checkerboard", "bright", "constant"))


def test_robustness_tells_a_pixel_exact_pattern_from_a_robust_picture():
  model = _pattern_model()
  exact = np.broadcast_to(CHECKER[None, :, :, None], (4, 16, 16, 3))
  bright = np.ones((4, 16, 16, 3))
  inputs = {"rgb": np.stack([exact, bright]).astype(np.float32)}
  ts = quality.transform_set(16, frames=4, seed=0)
  rob = quality.robustness(model, models.LOGITS, inputs, [0, 1], ts)
  np.testing.assert_array_equal(rob["rank"], [1, 1])  # both classified as their class as given.
  assert rob["transformed_rank"].shape == (2, 16)
  assert np.mean(rob["transformed_rank"][0] == 1) < 0.5  # the exact pattern loses its class,
  assert np.all(rob["transformed_rank"][1] == 1)  # the robust picture keeps it.
  q = quality.assess(model, models.LOGITS, inputs, [0, 1], ts)
  assert q["0"]["robust"] < 0.5 <= q["1"]["robust"] == 1.0
  assert q["1"]["median_rank"] == 1 and q["0"]["median_rank"] > 1
  assert "slope_rgb" in q["0"] and "temporal_variation_rgb" in q["0"]
  s = quality.summarise(q, class_units=True)
  assert s["units"] == 2 and s["min_robust"] == q["0"]["robust"]


def test_channel_robustness_is_the_activation_kept():
  model = handbuilt.model()
  flow = np.zeros((1,) + handbuilt.FLOW.shape, np.float32)
  flow[..., 0] = 5.0  # rightward everywhere
  inputs = {"rgb": np.zeros((1,) + handbuilt.RGB.shape, np.float32), "flow": flow}
  ts = quality.transform_set(16, frames=3, seed=1)
  rob = quality.robustness(model, "motion", inputs, [0], ts)  # unit 0: rightward.
  # A flip turns rightward motion leftward: the unit loses it (kept <= 0); crops enlarge it.
  flips = ts.flip.astype(bool)
  assert (rob["kept"][0][flips] < 0).all()
  np.testing.assert_allclose(rob["kept"][0][~flips], 1 / ts.side[~flips], rtol=1e-4)


def test_feature_distance_is_relative_to_real_clips():
  model = handbuilt.model()
  rng = np.random.default_rng(0)

  def clips(direction, n):
    flow = np.zeros((n,) + handbuilt.FLOW.shape, np.float32)
    flow[..., 0] = direction * 5 + rng.normal(scale=1.0, size=flow.shape[:-1])
    flow[..., 1] = rng.normal(scale=1.0, size=flow.shape[:-1])
    return {"rgb": rng.uniform(-1, 1, (n,) + handbuilt.RGB.shape).astype(np.float32),
            "flow": flow}

  reference = clips(+1, 6)
  near, far = clips(+1, 1), clips(-1, 1)
  d = quality.feature_distance(model, {s: np.concatenate([near[s], far[s]]) for s in near},
                               reference, ["motion"])["motion"]
  assert d[0] < 3 and d[1] > 10 * d[0]
  with pytest.raises(ValueError, match="at least 2 reference"):
    quality.feature_distance(model, near, clips(1, 1), ["motion"])


def test_describe_labels_a_unit():
  text = quality.describe({"robust": 0.94, "kept": 0.8, "median_rank": 1.0,
                           "slope_rgb": -2.1, "slope_flow": -0.5, "flow_speed": 1.5}, True)
  assert text.startswith("robust 94% (median rank 1)") and "slope rgb -2.1 ok" in text
  assert "noisy" in quality.describe({"robust": 0.1, "kept": 0.1, "slope_rgb": -0.5}, False)
