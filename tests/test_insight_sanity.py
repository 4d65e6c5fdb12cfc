"""The sanity check (`stviz_jax.insight.sanity`, after Geirhos et al. 2023): a hand-built
unit with a natural path and a fooling circuit, whose fooling pattern is flagged while a
picture using the natural path is not; Spearman with ties against scipy; one-line errors."""

import jax.numpy as jnp
import numpy as np
import pytest

from stviz_jax import models
from stviz_jax.insight import sanity

RGB = models.StreamSpec(1, 16, 16, 3, (-1.0, 1.0))
GAINS = np.linspace(0.5, 2.0, 16, dtype=np.float32)
BIASES = np.linspace(-0.4, 0.2, 16, dtype=np.float32)


def _apply(variables, inputs):
  """conv1: 16 brightness channels relu(g_i * luminance + b_i) (the natural path) and a
  checkerboard detector (a 2x2 +-1 kernel, never excited by smooth clips); the unit sums
  the brightness channels and, with a large weight, the checkerboard channel (the fooling
  circuit, in the spirit of Geirhos et al.'s manipulated networks)."""
  del variables
  lum = inputs["rgb"].mean(-1)                                     # (N, 1, H, W)
  bright = models.relu(lum[..., None] * GAINS + BIASES)            # (N, 1, H, W, 16)
  checker = (lum[:, :, :-1, :-1] - lum[:, :, 1:, :-1] - lum[:, :, :-1, 1:]
             + lum[:, :, 1:, 1:])
  checker = jnp.pad(models.relu(jnp.abs(checker) - 0.1), ((0, 0), (0, 0), (0, 1), (0, 1)))
  conv1 = jnp.concatenate([bright, checker[..., None]], -1)
  unit = (bright.sum(-1) + 40.0 * checker)[..., None]
  return unit.mean((1, 2, 3)), {"conv1": conv1, "unit": unit}


def _model():
  return models.wrap(_apply, {}, {"rgb": RGB}, layers=("conv1", "unit"), name="fooled")


def _blobs(n, seed=0):
  """Natural clips: smooth bright Gaussian blobs of random place, size and brightness."""
  rng = np.random.default_rng(seed)
  y, x = np.mgrid[:16, :16]
  out = np.empty((n,) + RGB.shape, np.float32)
  for i in range(n):
    cy, cx, s, a = rng.uniform(4, 12), rng.uniform(4, 12), rng.uniform(2, 5), rng.uniform(0.3, 1)
    blob = a * np.exp(-((y - cy) ** 2 + (x - cx) ** 2) / (2 * s * s)) - 0.2
    out[i] = np.clip(blob[None, :, :, None] + rng.normal(0, 0.01, (1, 16, 16, 3)), -1, 1)
  return {"rgb": out}


def _checkerboard(amplitude=0.3):
  y, x = np.mgrid[:16, :16]
  board = amplitude * np.where((y + x) % 2 == 0, 1.0, -1.0)
  return np.broadcast_to(board[None, :, :, None], RGB.shape).astype(np.float32)


def test_fooling_pattern_is_flagged_and_a_natural_path_picture_is_not():
  model = _model()
  natural = _blobs(32)
  fooling = _checkerboard()
  # The fooling pattern drives the unit far above every natural clip ...
  acts = np.asarray(model.activations({"rgb": np.concatenate([natural["rgb"], fooling[None]])},
                                      ["unit"])["unit"]).mean((1, 2, 3, 4))
  assert acts[-1] > 3 * acts[:-1].max()
  # ... and a bright smooth picture drives it through the natural path.
  bright = np.full(RGB.shape, 0.9, np.float32)
  report = sanity.check(model, "unit", [0, 0], {"rgb": np.stack([fooling, bright])},
                        natural, top_k=8)
  assert report.layers == ("conv1",)
  out = report.to_json()
  assert list(out) == ["0"]  # both rows are unit 0: the JSON keeps the last.
  assert bool(report.flags[0]) and not bool(report.flags[1])
  assert report.score[0] < report.natural_min[0] < report.score[1] + 0.05
  assert "less" in report.why(0) and "conv1" in report.why(0)
  assert len(report.top_clips[0]) == 8


def test_the_top_clips_agree_with_each_other():
  report = sanity.check(_model(), "unit", [0], {"rgb": np.full((1,) + RGB.shape, 0.9, np.float32)},
                        _blobs(16), top_k=4)
  assert report.natural_min[0] > 0.8 and not report.flags[0]


def test_spearman_matches_scipy_with_ties():
  stats = pytest.importorskip("scipy.stats")
  rng = np.random.default_rng(0)
  for _ in range(20):
    a = np.maximum(rng.normal(size=40), 0).round(1)  # ReLU-like: many ties at 0.
    b = np.maximum(a + rng.normal(size=40), 0).round(1)
    assert float(sanity.spearman(jnp.asarray(a), jnp.asarray(b))) == pytest.approx(
        stats.spearmanr(a, b).statistic, abs=1e-5)
  assert float(sanity.spearman(jnp.zeros(5), jnp.arange(5.0))) == 0.0


def test_path_layers_are_the_taps_before_the_unit():
  model = models.load("synthetic_two_stream")
  assert sanity.path_layers(model, "fusion") == ("rgb/conv1", "rgb/conv2", "flow/conv1",
                                                 "flow/conv2")
  assert sanity.path_layers(model, "rgb/conv1") == ("rgb/conv1",)
  assert sanity.path_layers(model, "logits")[-1] == "fusion"


@pytest.mark.parametrize("natural, optimised, message", [
    (1, 1, "needs at least 2 natural clips"),
    (8, 2, r"optimised clips of stream 'rgb': give \(U=1, T, H, W, C\)"),
])
def test_bad_inputs_get_one_line(natural, optimised, message):
  with pytest.raises(ValueError, match=message):
    sanity.check(_model(), "unit", [0], {"rgb": np.zeros((optimised,) + RGB.shape, np.float32)},
                 _blobs(natural))
