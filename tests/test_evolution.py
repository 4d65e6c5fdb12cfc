"""Filter evolution: same units and seed across checkpoints, one compilation,
rows equal to visualising each checkpoint on its own; files and gallery rows
(the end-to-end run on real checkpoint files of the synthetic model is slow)."""

import json
import os

import imageio.v2 as imageio
import jax
import numpy as np
import pytest

from stviz_jax import config as config_lib
from stviz_jax import evolution, gallery, models, optimize
from stviz_jax.models.zoo import synthetic_two_stream as zoo


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
  """Three real checkpoint files: random init, halfway (weights averaged), trained."""
  d = tmp_path_factory.mktemp("ckpt")
  trained, metadata = zoo.load_weights(zoo.ASSET)
  init = models.load("synthetic_two_stream", pretrained=False, labels=metadata["labels"],
                     width=metadata["width"], seed=3).variables
  half = jax.tree.map(lambda a, b: (a + b) / 2, init, trained)
  paths = []
  for name, v in (("init", init), ("half", half), ("trained", trained)):
    paths.append(str(d / f"{name}.npz"))
    zoo.save_npz(paths[-1], v, metadata)
  return paths


def _config():
  c = config_lib.default_config()
  c.model = "synthetic_two_stream"
  c.layer = "logits"
  c.objective.kind = "class_logit"
  c.units = "0,5"
  c.steps = 4
  c.seed = 7
  return c


@pytest.mark.slow
def test_rows_equal_separate_runs_and_compile_once():
  # Three 'checkpoints' of one small architecture (different weights).
  loaded = [models.load("tiny_two_stream", size=16, frames=3, width=8, seed=k)
            for k in range(3)]
  config = config_lib.default_config()
  config.steps, config.objective.kind = 4, "class_logit"
  vis = optimize.Visualizer(loaded[0], "logits", config)
  results = evolution.evolve(loaded, "logits", [0, 5], config, seed=7, visualizer=vis)
  assert vis.trace_count == 1
  # The last row is what visualising that checkpoint alone gives.
  ref = optimize.Visualizer(loaded[2], "logits", config).run([0, 5], seed=7,
                                                             log_progress=False)
  for s in ref.inputs:
    np.testing.assert_allclose(results[2].inputs[s], ref.inputs[s], rtol=1e-5, atol=1e-4)
  np.testing.assert_allclose(results[2].activations, ref.activations, rtol=1e-4, atol=1e-6)
  assert not np.allclose(results[0].inputs["flow"], results[2].inputs["flow"])
  other = models.load("tiny_two_stream", size=16, frames=3, width=4)
  with pytest.raises(ValueError, match="one architecture"):
    evolution.evolve([loaded[0], other], "logits", [0], config)


def test_grid_rows_are_checkpoints_and_columns_units():
  rng = np.random.default_rng(0)
  results = [optimize.Result(
      layer="fusion", units=np.asarray([0, 5]), activations=np.zeros(2), history={},
      a_hat_given=False, seed=7,
      inputs={"rgb": rng.normal(size=(2, 1, 16, 16, 3)) + k,
              "flow": rng.normal(size=(2, 3, 16, 16, 2))}) for k in range(3)]
  # 3 rows of 2 units, each appearance | flow (16 px, upscaled x4 to 64), 2 px gaps.
  grid = evolution.evolution_grid(results)
  assert grid.dtype == np.uint8 and grid.shape == (3 * 64 + 4 * 2, 2 * 128 + 3 * 2, 3)
  # Cell (row 1, unit 5): the appearance's middle frame, min-max scaled, upscaled x4.
  cell = grid[2 + 66:2 + 66 + 64, 2 + 130:2 + 130 + 64]
  x = results[1].inputs["rgb"][1, 0]
  expected = np.round((x - x.min()) / (x.max() - x.min()) * 255).astype(np.uint8)
  np.testing.assert_array_equal(cell[::4, ::4], expected)
  labelled = evolution.evolution_grid(results, ["epoch 1", "epoch 2", "epoch 60"])
  assert labelled.shape[0] == grid.shape[0] and labelled.shape[1] > grid.shape[1]
  np.testing.assert_array_equal(labelled[:, -grid.shape[1]:], grid)


@pytest.mark.slow


def test_run_writes_grid_and_gallery_rows(checkpoints, tmp_path):
  config = _config()
  evolution.run(config, str(tmp_path), checkpoints, ["init", "half", "trained"])
  grid = imageio.imread(tmp_path / "logits" / "evolution.png")
  layer = gallery.discover(str(tmp_path))[0]
  assert [r.name for r in layer.runs] == ["00_init", "01_half", "02_trained"]
  assert [r.label() for r in layer.runs] == ["00_init", "01_half", "02_trained"]
  assert grid.shape[0] > 3 * 32 and grid.shape[1] > 2 * 64  # 3 rows, 2 units of rgb | flow.
  summary = json.loads((tmp_path / "evolution.json").read_text())
  assert [c["label"] for c in summary["checkpoints"]] == ["init", "half", "trained"]
  page = (tmp_path / "gallery" / "logits" / "unit_0005.html").read_text()
  assert page.index("00_init") < page.index("01_half") < page.index("02_trained")
  with pytest.raises(FileNotFoundError, match="does not exist"):
    evolution.run(config, str(tmp_path / "x"), [str(tmp_path / "missing.npz")])
