"""The main job's picture-quality output: summary.json, the index block, labelled grids,
gallery tiles and unit pages, and per-target step budgets."""

import json
import os

import imageio.v3 as iio
import ml_collections
import numpy as np
import pytest

from stviz_jax import job, plan, quality
from stviz_jax.config import default_config
from stviz_jax.optimize import Result

SETTINGS = ["kappa1_gamma0", "kappa1_gamma10"]


def _config():
  c = default_config()
  c.model = "tiny_two_stream"
  c.model_overrides = dict(size=8, frames=2, width=16)
  c.steps = 2
  c.gammas = (0.0, 10.0)
  c.quality.transforms = 4
  c.targets = ml_collections.ConfigDict(dict(
      fusion=dict(layer="fusion", units="0,2", kind="channel"),
      classes=dict(layer="logits", units="1", kind="class_logit", steps=3)))
  return c


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("quality_run"))
  return workdir, job.run(_config(), workdir)


def test_summary_holds_quality_per_unit_and_a_quality_block(run):
  workdir, summary = run
  on_disk = json.load(open(os.path.join(workdir, "summary.json")))
  assert on_disk["quality"] == summary["quality"]
  block = summary["quality"]
  assert block["transforms"] == 4 and block["goal"]["slope_range"] == list(quality.SLOPE_RANGE)
  assert block["units"] == 2 * 2 + 1 * 2
  for target, units in (("fusion", [0, 2]), ("classes", [1])):
    for s in SETTINGS:
      per_unit = summary["layers"][target][s]["quality"]
      assert sorted(per_unit) == sorted(str(u) for u in units)
      for q in per_unit.values():
        assert 0 <= q["robust"] <= 1 and {"slope_rgb", "slope_flow", "flow_speed"} <= set(q)
      assert block["targets"][target][s] == quality.summarise(per_unit, target == "classes")
      # The measures are those of the saved inputs.
      r = Result.load(os.path.join(workdir, target, s, "result.npz"))
      again = quality.assess(job.models.load("tiny_two_stream", size=8, frames=2, width=16),
                             r.layer, r.inputs, r.units, quality.transform_set(4, frames=2))
      for u, q in per_unit.items():
        assert again[u] == pytest.approx(q, rel=1e-5, abs=1e-6)
  assert "median_rank" in summary["layers"]["classes"][SETTINGS[0]]["quality"]["1"]


def test_per_target_steps(run):
  workdir, _ = run
  for target, steps in (("fusion", 2), ("classes", 3)):
    r = Result.load(os.path.join(workdir, target, SETTINGS[0], "result.npz"))
    assert r.history["objective"].shape[1] == steps


def test_bad_per_target_steps_is_one_clear_error():
  c = _config()
  c.targets.classes.steps = 0
  model = job.models.load("tiny_two_stream", size=8, frames=2, width=16)
  with pytest.raises(ValueError, match=r"config.targets.classes.steps must be an integer >= 1"):
    plan.targets_from_config(c, model)


def test_grid_is_labelled(run):
  workdir, _ = run
  grid = iio.imread(os.path.join(workdir, "classes", "grid.png"))
  results = [Result.load(os.path.join(workdir, "classes", s, "result.npz")) for s in SETTINGS]
  plain = job.layer_grid(results)
  assert grid.shape[0] == plain.shape[0] + 16 and grid.shape[1] > plain.shape[1]
  assert (grid[:16] < 100).any() and (grid[16:, :48] < 100).any()  # text in both strips.
  assert job.unit_label(1, ("a", "b"), "logits") == "b (#1)"
  assert job.unit_label(1, ("a", "b"), "fusion") == "unit 1"
  assert job.setting_label(results[1]) == "kappa=1 gamma=10"


def test_gallery_shows_quality(run):
  workdir, summary = run
  index = open(os.path.join(workdir, "index.html")).read()
  assert "Picture quality" in index and "units passing" in index
  layer = open(os.path.join(workdir, "gallery", "classes", "index.html")).read()
  assert "data-quality=" in layer and 'class="quality"' in layer
  unit = open(os.path.join(workdir, "gallery", "classes", "unit_0001.html")).read()
  q = summary["layers"]["classes"][SETTINGS[1]]["quality"]["1"]
  assert quality.describe(q, True) in unit and "picture quality" in unit


def test_quality_off(tmp_path):
  c = _config()
  c.quality.transforms = 0
  c.targets = ml_collections.ConfigDict(dict(fusion=dict(layer="fusion", units="0",
                                                         kind="channel")))
  summary = job.run(c, str(tmp_path))
  assert "quality" not in summary
  assert "quality" not in summary["layers"]["fusion"][SETTINGS[0]]
  assert "Picture quality" not in open(os.path.join(tmp_path, "index.html")).read()
