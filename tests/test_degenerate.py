"""Blank results are never silent: a huge learning rate no longer projects
pixels to 0, and a degenerate result (constant input, zero activation) is
named in a warning and in summary.json."""

import json
import logging

import numpy as np

from stviz_jax import job, regularizers, sweep
from stviz_jax.config import default_config


def _tiny(**fields):
  c = default_config()
  c.model_overrides = dict(size=8, frames=2, width=8)
  c.units, c.steps, c.gammas = "0-1", 2, ()
  c.quality.transforms = 0
  for k, v in fields.items():
    node = c
    *path, leaf = k.split(".")
    for p in path:
      node = node[p]
    node[leaf] = v
  return c


def test_projection_of_huge_pixels_lands_on_the_sphere():
  x = np.array([[1e30, -2e30, 2e30], [3.0, 0.0, 4.0], [0.1, 0.0, 0.0]], np.float32)
  p = np.asarray(regularizers.project_to_ball(x, 1.0))
  np.testing.assert_allclose(p[0], [1 / 3, -2 / 3, 2 / 3], rtol=1e-6)  # was exactly 0.
  np.testing.assert_array_equal(p[1], x[1] * np.float32(1.0 / 5.0))   # unchanged rule.
  np.testing.assert_array_equal(p[2], x[2])


def test_huge_learning_rate_does_not_blank_the_inputs(tmp_path):
  # 20 steps: enough for every pixel to have been pushed past 1.8e19 and zeroed.
  summary = job.run(_tiny(steps=20, **{"optimizer.learning_rate": 1e30}),
                    str(tmp_path / "run"))
  with np.load(tmp_path / "run" / "fusion" / "default" / "result.npz") as f:
    for stream in ("rgb", "flow"):
      x = f[f"inputs_{stream}"]
      assert np.isfinite(x).all() and np.ptp(x.reshape(len(x), -1), axis=1).min() > 0
  assert "constant input" not in json.dumps(summary)


def test_degenerate_results_are_reported(tmp_path, caplog, monkeypatch):
  """What lr=1e30 used to give (inputs exactly 0) and a dead unit are named."""
  real = sweep.run_sweep

  def blanked(*args, **kwargs):
    results = real(*args, **kwargs)
    for r in results:
      for x in r.inputs.values():
        x[1] = 0.0          # unit 1: all-constant input.
      r.activations[0] = 0  # unit 0: zero activation.
    return results

  monkeypatch.setattr(sweep, "run_sweep", blanked)
  with caplog.at_level(logging.WARNING):
    summary = job.run(_tiny(), str(tmp_path / "run"))
  assert summary["degenerate"] == ["fusion/default/unit 0", "fusion/default/unit 1"]
  assert summary["layers"]["fusion"]["default"]["degenerate"] == {
      "0": "activation exactly 0", "1": "constant input flow = 0, rgb = 0"}
  on_disk = json.load(open(tmp_path / "run" / "summary.json"))
  assert on_disk["degenerate"] == summary["degenerate"]
  warned = [r.getMessage() for r in caplog.records if "degenerate" in r.getMessage()]
  assert len(warned) == 2 and "fusion/default: unit 0 gave a degenerate result" in warned[0]


def test_healthy_results_are_not_flagged(tmp_path):
  summary = job.run(_tiny(), str(tmp_path / "run"))
  assert "degenerate" not in summary
