"""The insight analyses in the main job and the gallery: `config.insight.*` switches,
`summary.json`'s `insight` blocks, their media files, the unit pages' "What the unit
uses" section and the layer page's sort by motion index; bad insight configs refused
before anything is written."""

import importlib.util
import json
import os

import ml_collections
import numpy as np
import pytest

from stviz_jax import job, layout, models
from stviz_jax.config import default_config
from stviz_jax.insight import report
from stviz_jax.result import Result

SETTINGS = ["kappa1_gamma0", "kappa1_gamma10"]


def _synthetic_config():
  path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs",
                      "synthetic_two_stream.py")
  spec = importlib.util.spec_from_file_location("synthetic_two_stream_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def _config(**insight):
  c = default_config()
  c.model = "synthetic_two_stream"
  c.steps = 4
  c.gammas = (0.0, 10.0)
  c.quality.transforms = 0
  c.regularizer.flow.kappa = 1.0
  c.targets = ml_collections.ConfigDict(dict(
      fusion=dict(layer="fusion", units="0,3", kind="channel"),
      classes=dict(layer="logits", units="red right;red left", kind="class_logit")))
  c.data = _synthetic_config().data  # the synthetic net's clip distribution.
  c.insight.update(dict(clips="synthetic", num_clips=24, top_k=3, accentuate="0"))
  c.insight.update(insight)
  return c


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("insight_run"))
  return workdir, job.run(_config(), workdir)


def test_summary_holds_every_insight_block_per_unit(run):
  workdir, summary = run
  for target, units in (("fusion", ["0", "3"]), ("classes", ["0", "2"])):
    for s in SETTINGS:
      block = summary["layers"][target][s]["insight"]
      assert set(block) == {"motion", "motion_top_clips", "sanity", "attribution",
                            "accentuation"}
      for name in block:
        assert sorted(block[name]) == units, name
      for u in units:
        m = block["motion"][u]
        assert m["motion_index"] is None or 0 <= m["motion_index"] <= 1
        assert set(m["shares"]) == {"rgb", "flow"}
        assert len(block["motion_top_clips"][u]["top_clips"]) == 3
        assert isinstance(block["sanity"][u]["flag"], bool)
        (acc,) = block["accentuation"][u]
        assert acc["clip"] == 0 and acc["name"].startswith("red right")
        for stream, media in list(block["attribution"][u].items()) + list(acc["streams"].items()):
          out_dir = os.path.join(workdir, target, s)
          assert os.path.exists(os.path.join(out_dir, media["stem"] + ".png")), media
          if media["frames"] > 1:
            assert os.path.exists(os.path.join(out_dir, media["stem"] + ".webm")), media
      assert os.path.exists(os.path.join(workdir, target, s, layout.MOTION_TABLE_FILE))
      assert os.path.exists(os.path.join(workdir, target, s, layout.MOTION_HISTOGRAM_FILE))
  for target in ("fusion", "classes"):
    for s in SETTINGS:
      brief = summary["insight"][target][s]
      assert brief["units"] == 2 and brief["checked"] == 2
      assert 0 <= brief["median_motion_index"] <= 1 and set(brief["flagged"]) <= {0, 2, 3}
  on_disk = json.load(open(os.path.join(workdir, "summary.json")))
  assert on_disk["layers"] == json.loads(json.dumps(summary["layers"]))


def test_attribution_maps_are_saved_with_the_result(run):
  workdir, _ = run
  r = Result.load(os.path.join(workdir, "fusion", SETTINGS[0], "result.npz"))
  assert set(r.attribution) == {"rgb", "flow"}
  for s, maps in r.attribution.items():
    assert maps.shape == (2,) + r.inputs[s].shape[1:-1]
    assert np.all(maps >= 0) and np.all(np.isfinite(maps))


def test_accentuated_red_right_clip_turns_toward_red_left(run):
  """The paper's confusion study made concrete: clip 0 ('red right') pushed toward the
  'red left' class unit gains that class's logit."""
  _, summary = run
  acc = summary["layers"]["classes"][SETTINGS[0]]["insight"]["accentuation"]["2"][0]
  assert acc["activation_after"] > acc["activation_before"]


def test_gallery_shows_what_the_unit_uses(run):
  workdir, _ = run
  page = open(os.path.join(workdir, "gallery", "fusion", "unit_0003.html")).read()
  assert "What the unit uses" in page and "motion index" in page
  assert "Where it looks" in page and "attribution" in page
  assert "What it amplifies in real clips" in page and "unit_0003_accentuated0_flow" in page
  index = open(os.path.join(workdir, "index.html")).read()
  assert "What the units use" in index and "median motion index" in index
  layer = open(os.path.join(workdir, "gallery", "fusion", "index.html")).read()
  assert 'value="motion"' in layer and "data-motion" in layer
  assert "motion_histogram.png" in layer


def test_insight_off_writes_no_insight(tmp_path):
  c = _config(motion=False, attribution=False, clips="", accentuate="")
  c.targets = ml_collections.ConfigDict(dict(fusion=dict(layer="fusion", units="0",
                                                         kind="channel")))
  c.gammas = ()
  summary = job.run(c, str(tmp_path))
  (entry,) = summary["layers"]["fusion"].values()
  assert "insight" not in entry
  (setting,) = summary["layers"]["fusion"]
  assert not [f for f in os.listdir(tmp_path / "fusion" / setting)
              if "attribution" in f or f.startswith("motion")]


@pytest.mark.parametrize("fields, message", [
    (dict(clips="", accentuate="0"), "config.insight.accentuate needs config.insight.clips"),
    (dict(accentuate="99"), r"out of range .* valid 0\.\.23"),
    (dict(accentuate="red"), "give clip indices like '0,5'"),
    (dict(clips="/no/such/clips.npz"), "no such file"),
    (dict(top_k=1), r"config.insight.top_k must be an integer >= 2"),
])
def test_bad_insight_config_is_refused_before_anything_is_written(tmp_path, fields, message):
  workdir = tmp_path / "run"
  with pytest.raises((ValueError, FileNotFoundError), match=message):
    job.run(_config(**fields), str(workdir))
  assert not workdir.exists()


def test_clips_npz_is_checked_against_the_model(tmp_path):
  model = models.load("synthetic_two_stream")
  path = str(tmp_path / "clips.npz")
  np.savez(path, rgb=np.zeros((2, 1, 32, 32, 3), np.float32),
           flow=np.zeros((2, 5, 16, 16, 2), np.float32))
  c = _config(clips=path)
  with pytest.raises(ValueError, match=r"stream 'flow' has shape \(2, 5, 16, 16, 2\); "
                                       r"expected \(N, 5, 32, 32, 2\)"):
    report.plan(c, model)
  np.savez(path, rgb=np.zeros((2, 1, 32, 32, 3), np.float32),
           flow=np.zeros((2, 5, 32, 32, 2), np.float32), labels=np.array([1, 2]))
  p = report.plan(c, model)
  assert len(p.natural) == 2 and p.accentuate == (0,)
