"""Synthetic clips: exact flow, the y-down sign convention, determinism; training smoke test."""

import functools
import importlib.util
import json
import os
import pathlib

import jax
import numpy as np
import pytest
from scipy import ndimage

from stviz_jax import analysis, models
from stviz_jax.data import synthetic

CONFIG = pathlib.Path(__file__).resolve().parents[1] / "configs" / "synthetic_two_stream.py"
# No pixel noise and no distractors: every pixel change must come from the motion.
CLEAN = synthetic.ClipSpec(noise=0.0, distractors=0, frames=4, size=32)


def _warp_error(clip, flow_fn):
  """Mean |frame_{k+1}(p + f(p)) - frame_k(p)| over pixels deep inside the object.

  The reference is independent of the generator: scipy's bilinear sampling of
  the next frame at the position the flow says the pixel moves to.
  """
  video, flow, mask = clip["video"], clip["flow"], clip["mask"]
  errors = []
  for k in range(flow.shape[0]):
    u, v = flow_fn(flow[k])
    yy, xx = np.mgrid[0:video.shape[1], 0:video.shape[2]].astype(np.float64)
    coords = [yy + v, xx + u]  # rows move with v (y down), columns with u.
    inside = ndimage.binary_erosion(mask[k] >= 1.0, iterations=2)
    inside &= (coords[0] >= 0) & (coords[0] <= video.shape[1] - 1)
    inside &= (coords[1] >= 0) & (coords[1] <= video.shape[2] - 1)
    for c in range(3):
      moved = ndimage.map_coordinates(video[k + 1, ..., c], coords, order=1)
      errors.append(np.abs(moved - video[k, ..., c])[inside])
  return float(np.mean(np.concatenate(errors)))


@pytest.mark.parametrize("direction", [0.0, 90.0, 37.0, 200.0])
def test_flow_explains_the_motion_and_wrong_conventions_do_not(direction):
  cls = synthetic.MotionClass("green", direction, 1.5)
  clip = synthetic.make_clip(cls, seed=3, spec=CLEAN)
  right = _warp_error(clip, lambda f: (f[..., 0], f[..., 1]))
  flipped_v = _warp_error(clip, lambda f: (f[..., 0], -f[..., 1]))
  swapped = _warp_error(clip, lambda f: (f[..., 1], f[..., 0]))
  backward = _warp_error(clip, lambda f: (-f[..., 0], -f[..., 1]))
  assert right < 0.02, right
  # Guards against sign flips and swapped axes in the generator.
  assert backward > 3 * right
  if abs(np.sin(np.deg2rad(direction))) > 0.3:
    assert flipped_v > 3 * right
  if abs(np.sin(np.deg2rad(direction)) - np.cos(np.deg2rad(direction))) > 0.3:
    assert swapped > 3 * right


@pytest.mark.parametrize("direction", [0.0, 90.0, 180.0, 270.0, 135.0])
def test_direction_convention_y_down(direction):
  spec = synthetic.ClipSpec(direction_jitter=0.0, speed_jitter=0.0, distractors=0)
  clip = synthetic.make_clip(synthetic.MotionClass("red", direction, 1.5), seed=7,
                             spec=spec)
  theta = np.deg2rad(direction)
  np.testing.assert_allclose(clip["velocity"], 1.5 * np.array([np.cos(theta), np.sin(theta)]),
                             atol=1e-5)
  # The object's centroid (x = column, y = row) moves by the velocity per frame.
  mask = clip["mask"]
  yy, xx = np.mgrid[0:mask.shape[1], 0:mask.shape[2]]
  # Frames where the object is fully visible (nothing on the border).
  inside = [m[0].sum() + m[-1].sum() + m[:, 0].sum() + m[:, -1].sum() == 0 for m in mask]
  cx = np.asarray([(m * xx).sum() / m.sum() for m in mask])
  cy = np.asarray([(m * yy).sum() / m.sum() for m in mask])
  ok = np.flatnonzero(np.asarray(inside[:-1]) & np.asarray(inside[1:]))
  assert ok.size >= 2
  np.testing.assert_allclose(np.diff(cx)[ok], clip["velocity"][0], atol=0.1)
  np.testing.assert_allclose(np.diff(cy)[ok], clip["velocity"][1], atol=0.1)
  # analysis measures the same angle from the flow.
  assert float(analysis.angle_difference(analysis.flow_direction(clip["flow"]),
                                         direction)) < 1e-3


def test_flow_is_velocity_times_coverage_and_zero_on_the_background():
  clip = synthetic.make_clip(synthetic.MotionClass("blue", 60.0, 2.0), seed=11)
  expected = clip["mask"][:-1, ..., None] * clip["velocity"]
  np.testing.assert_allclose(clip["flow"], expected, atol=1e-6)
  assert np.all(clip["flow"][clip["mask"][:-1] == 0] == 0)


def test_colour_and_hue_of_the_object():
  hue_of = jax.jit(analysis.dominant_hue)
  for name, hue in [("red", 0.0), ("green", 120.0), ("blue", 240.0), ("yellow", 60.0)]:
    clip = synthetic.make_clip(synthetic.MotionClass(name, 0.0), seed=5,
                               spec=synthetic.ClipSpec(distractors=0))
    assert float(analysis.angle_difference(hue_of(clip["video"]), hue)) < 10


def test_clips_are_deterministic_in_the_seed():
  cls = synthetic.MotionClass("red", 45.0)
  a = synthetic.make_clip(cls, seed=1)
  b = synthetic.make_clip(cls, seed=1)
  c = synthetic.make_clip(cls, seed=2)
  for k in a:
    np.testing.assert_array_equal(a[k], b[k])
  assert not np.allclose(a["video"], c["video"])


def test_sample_batch_shapes_labels_and_inputs():
  classes = synthetic.grid_classes(("red", "green"), (0, 90, 180, 270))
  spec = synthetic.ClipSpec(frames=4, size=24)
  draw = jax.jit(synthetic.sample_batch, static_argnums=(1, 2, 3))
  inputs, labels = draw(jax.random.PRNGKey(0), classes, 32, spec)
  assert inputs["rgb"].shape == (32, 1, 24, 24, 3)
  assert inputs["flow"].shape == (32, 4, 24, 24, 2)
  assert labels.min() >= 0 and labels.max() < 8
  assert float(inputs["rgb"].min()) >= -1.0 and float(inputs["rgb"].max()) <= 1.0
  # Each clip's mean flow points the way of its class (+- the direction jitter).
  dirs = np.asarray(jax.vmap(analysis.flow_direction)(inputs["flow"]))
  true = np.asarray([classes[int(l)].direction for l in labels])
  assert np.all(np.asarray(analysis.angle_difference(dirs, true)) <= spec.direction_jitter + 1)


def test_class_parsing_and_errors():
  classes = synthetic.parse_classes("red:0:2, blue:270")
  assert [c.name for c in classes] == ["red right", "blue up"]
  assert classes[0].speed == 2.0
  assert synthetic.MotionClass((0.2, 0.3, 0.4), 37).name.endswith("37deg")
  with pytest.raises(ValueError, match="unknown colour 'mauve'"):
    synthetic.parse_classes("mauve:0")
  with pytest.raises(ValueError, match="duplicate"):
    synthetic.parse_classes("red:0, red:360")
  with pytest.raises(ValueError, match="colour:direction"):
    synthetic.parse_classes("red")
  with pytest.raises(ValueError, match="palette"):
    jax.eval_shape(functools.partial(synthetic.render_clip, spec=synthetic.ClipSpec()),
                   jax.random.PRNGKey(0), np.zeros(3, np.float32), np.float32(0),
                   np.float32(1))


def _config(arg=None):
  spec = importlib.util.spec_from_file_location("synthetic_two_stream_config", CONFIG)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


def test_shipped_weights_metadata_and_size(tmp_path):
  from stviz_jax.models.zoo import synthetic_two_stream as zoo
  assert os.path.getsize(zoo.ASSET) < 1 << 20
  model = models.load("synthetic_two_stream")
  _, meta = zoo.load_weights(zoo.ASSET)
  config = _config()
  assert meta["labels"] == [f"{c} {d}" for c in ("red", "green", "blue")
                            for d in ("right", "down", "left", "up")]
  assert model.labels == tuple(meta["labels"])
  assert meta["clip"]["frames"] == config.data.frames == model.spec.streams["flow"].frames
  other = str(tmp_path / "other.npz")
  zoo.save_npz(other, {"params": {"w": np.zeros(2)}}, {"architecture": "other"})
  with pytest.raises(ValueError, match="weights are for architecture 'other'"):
    zoo.load_weights(other)
  with pytest.raises(FileNotFoundError, match="train_synthetic"):
    zoo.load_weights(str(tmp_path / "missing.npz"))


@pytest.mark.slow
def test_training_loop_smoke(tmp_path):
  """A few steps of the real training loop: loss falls below chance, weights reload."""
  from stviz_jax import train_synthetic
  config = _config("quick")
  config.train.steps = 12
  config.train.learning_rate = 1e-2
  config.train.claims = True
  config.steps = 5  # the claims' visualisation: only its plumbing is checked here.
  config.data.size = 24
  metrics = train_synthetic.run(config, str(tmp_path))
  claims = json.loads((tmp_path / "claims.json").read_text())
  assert sorted(claims["by_gamma"]) == ["0", "10"]
  for c in claims["by_gamma"].values():
    assert len(c["direction_error"]) == len(c["hue_error"]) == 12
    assert max(c["direction_error"]) == c["max_direction_error"] <= 180
  assert metrics["curve"][-1]["loss"] < np.log(12)  # chance level is log(classes).
  assert np.sum(metrics["confusion"]) == config.train.test_size
  saved = json.loads((tmp_path / "metrics.json").read_text())
  assert saved["test_accuracy"] == metrics["test_accuracy"]
  # Both saved formats load and give the same logits.
  a = models.load("synthetic_two_stream", weights=str(tmp_path / "weights"))
  b = models.load("synthetic_two_stream", weights=str(tmp_path / "synthetic_two_stream.npz"))
  x = a.example_inputs(2)
  np.testing.assert_allclose(np.asarray(a(x)), np.asarray(b(x)), rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_config_runs_through_the_main_job(tmp_path):
  """configs/synthetic_two_stream.py:quick through stviz_jax.job: every class, every gamma."""
  from stviz_jax import job
  config = _config("quick")
  config.units = "red right;blue up"  # class names resolve through the model's labels.
  summary = job.run(config, str(tmp_path))
  settings = summary["layers"]["logits"]
  assert sorted(settings) == ["kappa1_gamma0", "kappa1_gamma10"]
  for s in settings.values():
    assert sorted(s["activations"]) == ["0", "11"]
  assert (tmp_path / "logits" / "grid.png").exists()
  assert (tmp_path / "logits" / "kappa1_gamma0" / "unit_0000_flow.gif").exists()
