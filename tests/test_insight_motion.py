"""Motion sensitivity (`stviz_jax.insight.motion`): known answers on hand-built units whose
use of appearance, motion and time is built in, the synthetic net's streams, purity
(jit, vmap, one compilation) and one-line errors."""

import csv

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from stviz_jax import models, plots
from stviz_jax.data import clips as clips_lib
from stviz_jax.data import synthetic
from stviz_jax.insight import motion

RGB = models.StreamSpec(4, 8, 8, 3, (-1.0, 1.0))
FLOW = models.StreamSpec(3, 8, 8, 2, (-10.0, 10.0))
FLOW_ONLY, RGB_ONLY, FUSION, ORDER = range(4)


def _apply(variables, inputs):
  """Four units, maps (N, 3, H, W): rightward flow; red; red AND rightward flow (a
  product); red rising in every frame (the smallest frame-to-frame increase)."""
  del variables
  rgb, flow = inputs["rgb"], inputs["flow"]
  red, right = rgb[..., 0], flow[..., 0]
  rising = jnp.min(red[:, 1:] - red[:, :-1], axis=1, keepdims=True)
  units = [models.relu(right), models.relu(red[:, :3]),
           models.relu(red[:, :3]) * models.relu(right),
           jnp.broadcast_to(models.relu(rising), right.shape)]
  feats = {"units": jnp.stack(units, -1)}
  return feats["units"].mean((1, 2, 3)), feats


def _model():
  return models.wrap(_apply, {}, {"rgb": RGB, "flow": FLOW}, name="motion_units")


def _clips(n=3, seed=0):
  """Red rising over the frames, flow to the right, with noise."""
  rng = np.random.default_rng(seed)
  t = np.linspace(0.1, 0.9, RGB.frames, dtype=np.float32)
  rgb = np.zeros((n,) + RGB.shape, np.float32) + rng.uniform(-0.05, 0.05, (n,) + RGB.shape)
  rgb[..., 0] = t[None, :, None, None]
  flow = np.zeros((n,) + FLOW.shape, np.float32)
  flow[..., 0] = 2.0 + rng.uniform(-0.2, 0.2, flow.shape[:-1])
  return {"rgb": rgb.astype(np.float32), "flow": flow}


@pytest.fixture(scope="module")
def table():
  return motion.sensitivity(_model(), "units", [FLOW_ONLY, RGB_ONLY, FUSION, ORDER], _clips())


def test_flow_only_unit_is_dynamic_and_carried_by_the_flow(table):
  row = table.to_json()[str(FLOW_ONLY)]
  assert row["static_index"] == pytest.approx(0.0, abs=1e-6)
  assert row["motion_index"] == pytest.approx(1.0, abs=1e-6)
  assert row["shares"] == pytest.approx({"flow": 1.0, "rgb": 0.0}, abs=1e-6)


def test_rgb_only_unit_is_static_and_carried_by_the_appearance(table):
  row = table.to_json()[str(RGB_ONLY)]
  assert row["static_index"] > 0.95 and row["motion_index"] < 0.05
  assert row["shares"] == pytest.approx({"flow": 0.0, "rgb": 1.0}, abs=1e-6)
  assert row["shuffle_drop"] < 0.1  # a per-frame unit: the order does not matter.


def test_fusion_unit_that_needs_both_streams_has_both_shares(table):
  shares = table.to_json()[str(FUSION)]["shares"]
  assert shares["rgb"] > 0.3 and shares["flow"] > 0.3
  assert shares["rgb"] + shares["flow"] == pytest.approx(1.0)


def test_unit_reading_the_order_of_frames_loses_it_when_shuffled(table):
  row = table.to_json()[str(ORDER)]
  assert row["shuffle_drop"] > 0.5
  assert row["motion_index"] == pytest.approx(1.0)  # the mean frame does not rise.


def test_synthetic_net_flow_units_are_more_dynamic_than_appearance_units():
  """On 24 synthetic clips: mean motion index rgb/conv2 0.0, flow/conv2 0.96, fusion
  0.57, logits 0.98; flow share of the logits 0.70 (measured 2026-12-02)."""
  model = models.load("synthetic_two_stream")
  ds = clips_lib.SyntheticClips(synthetic.grid_classes(["red", "green", "blue"],
                                                       [0, 90, 180, 270], 1.5), 24, 7)
  clips, _ = ds.batch(np.arange(24))
  index = {layer: np.nanmean(motion.sensitivity(model, layer, range(8), clips)
                             .measures["motion_index"])
           for layer in ("rgb/conv2", "flow/conv2")}
  assert index["rgb/conv2"] < 0.05 and index["flow/conv2"] > 0.8


def test_responses_are_pure_and_equal_a_per_unit_loop():
  model = _model()
  clips = {s: np.stack([v, v[::-1]]) for s, v in _clips(2).items()}  # (U=2, N=2, ...)
  units = jnp.asarray([FLOW_ONLY, ORDER])
  key = jax.random.PRNGKey(3)
  fn = jax.jit(lambda c: motion.responses(model.apply, model.variables, "units", units, c,
                                          model.spec.streams, key))
  batched = fn(clips)
  for i, u in enumerate([FLOW_ONLY, ORDER]):
    one = motion.responses(model.apply, model.variables, "units", jnp.asarray([u]),
                           {s: v[i:i + 1] for s, v in clips.items()}, model.spec.streams, key)
    for name in motion.variant_names(model.spec.streams):
      np.testing.assert_allclose(batched[name][i], one[name][0], rtol=1e-6)


def test_sensitivity_compiles_once_for_every_batch(monkeypatch):
  traces = []
  real = motion.responses

  def counting(*args, **kwargs):
    traces.append(1)
    return real(*args, **kwargs)

  monkeypatch.setattr(motion, "responses", counting)
  table = motion.sensitivity(_model(), "units", [0, 1], _clips(5), batch_size=2)
  assert len(traces) == 1 and table.clips == 5


def test_derangement_moves_every_frame():
  for t in range(2, 9):
    for seed in range(5):
      p = np.asarray(motion.derangement(t, jax.random.PRNGKey(seed)))
      assert sorted(p) == list(range(t)) and np.all(p != np.arange(t))
  assert list(np.asarray(motion.derangement(1, jax.random.PRNGKey(0)))) == [0]


def test_table_csv_and_histogram(table, tmp_path):
  path = tmp_path / "motion.csv"
  table.write_csv(str(path))
  rows = list(csv.DictReader(open(path)))
  assert [int(r["unit"]) for r in rows] == [0, 1, 2, 3]
  assert float(rows[FLOW_ONLY]["motion_index"]) == pytest.approx(1.0)
  assert {"a_static", "a_shuffled", "a_no_rgb", "share_flow"} <= set(rows[0])
  png = tmp_path / "hist.png"
  plots.motion_histogram(str(png), table.measures["motion_index"],
                         {"flow": table.measures["share_flow"]}, "units")
  assert png.stat().st_size > 1000


@pytest.mark.parametrize("clips, units, message", [
    ({"rgb": np.zeros((2,) + RGB.shape)}, [0], r"clips lack stream\(s\) \['flow'\]"),
    ({"rgb": np.zeros((2, 4, 8, 9, 3)), "flow": np.zeros((2,) + FLOW.shape)}, [0],
     r"clips of stream 'rgb' have shape .*; expected \(U=1, N, 4, 8, 8, 3\)"),
    (None, [7], r"unit\(s\) \[7\] out of range for layer 'units': valid units are 0..3"),
])
def test_bad_inputs_get_one_line(clips, units, message):
  with pytest.raises(ValueError, match=message):
    motion.sensitivity(_model(), "units", units, clips or _clips(2))
