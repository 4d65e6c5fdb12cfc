"""Diversity in the main job: K samples per unit through `python -m stviz_jax.main`'s
job equal `run_diverse` called directly, are measurably more varied than K
samples without the term (the hand-built rightward unit fans out up and down),
compile once, resume, and honour config.loop and config.compute_dtype."""

import contextlib
import itertools
import os
import re

import imageio.v3 as iio
import numpy as np
import pytest

import stviz_jax as sv
from stviz_jax import job
from stviz_jax.models import registry
from stviz_jax.optimize import Result, run_diverse
import handbuilt

W, K, STEPS = 3000.0, 4, 60
SETTINGS = ("kappa1_gamma0", "kappa1_gamma10")


def _config(**fields):
  c = handbuilt.config(**{"model": "handbuilt", "layer": "motion",
                          "units": "0,2",  # rightward, downward
                          "steps": STEPS, "gammas": (0.0, 10.0), **fields})
  c.objective.diversity = W
  c.objective.samples = K
  return c


@pytest.fixture(scope="module")
def hand():
  return handbuilt.model()


@pytest.fixture(scope="module")
def diverse_run(hand, tmp_path_factory):
  """The job on the hand-built network, 2 units x 2 settings x K samples."""
  workdir = str(tmp_path_factory.mktemp("diverse") / "run")
  with _registered(hand):
    summary = job.run(_config(), workdir)
  return workdir, summary


@contextlib.contextmanager
def _registered(model):
  """The hand-built network as the registry's model 'handbuilt' (the job loads by name)."""
  registry._FACTORIES["handbuilt"] = lambda **kw: model
  try:
    yield
  finally:
    registry._FACTORIES.pop("handbuilt", None)


def _spread(x):
  flat = x.reshape(len(x), -1)
  return np.mean([np.linalg.norm(flat[i] - flat[j])
                  for i, j in itertools.combinations(range(len(flat)), 2)])


def test_job_samples_equal_run_diverse_and_compile_once(hand, diverse_run):
  workdir, summary = diverse_run
  assert summary["compilations"] == 1            # every unit and setting, one compilation.
  vis = sv.Visualizer(hand, "motion", _config())
  for setting, tv in zip(SETTINGS, ({"flow": (1.0, 0.0)}, {"flow": (1.0, 10.0)})):
    d = os.path.join(workdir, "motion", setting)
    result = Result.load(os.path.join(d, "result.npz"))
    entry = summary["layers"]["motion"][setting]
    for i, unit in enumerate((0, 2)):
      samples = Result.load(os.path.join(d, f"unit_{unit:04d}_samples.npz"))
      direct = run_diverse(vis, unit, K, seed=0, tv=tv)
      assert list(samples.units) == [unit] * K and samples.settings == direct.settings
      for s in ("rgb", "flow"):
        np.testing.assert_allclose(samples.inputs[s], direct.inputs[s], rtol=1e-5, atol=1e-4)
        # Sample 0 is the unit's result (grid, tiles, summary, unit_0000.npz).
        np.testing.assert_array_equal(result.inputs[s][i], samples.inputs[s][0])
      np.testing.assert_allclose(entry["samples"]["activations"][str(unit)],
                                 direct.activations, rtol=1e-4)
      assert entry["activations"][str(unit)] == pytest.approx(float(samples.activations[0]))
      assert entry["samples"]["spread"][str(unit)] == pytest.approx(job.sample_spread(samples))
      for k in range(1, K):                      # media of samples 1..K-1.
        png = iio.imread(os.path.join(d, f"unit_{unit:04d}_sample{k}_flow.png"))
        gif = iio.imread(os.path.join(d, f"unit_{unit:04d}_sample{k}_flow.gif"), index=None)
        assert gif.shape[:3] == (3,) + png.shape[:2]
    assert entry["samples"]["count"] == K and entry["samples"]["weight"] == W
    grid = iio.imread(os.path.join(d, "samples_grid.png"))
    cell = iio.imread(os.path.join(workdir, "motion", "grid.png"))
    assert grid.shape[0] == cell.shape[0]        # the same 2 unit rows ...
    assert grid.shape[1] > 1.8 * cell.shape[1]   # ... by K = 4 sample columns (grid: 2 settings).


def test_job_samples_are_more_varied_than_without_diversity(hand, diverse_run):
  workdir, _ = diverse_run
  samples = Result.load(os.path.join(workdir, "motion", SETTINGS[0], "unit_0000_samples.npz"))
  plain = run_diverse(sv.Visualizer(hand, "motion", _config()), 0, K, seed=0, weight=0.0,
                      tv={"flow": (1.0, 0.0)})
  bound = 160 * hand.spec.streams["flow"].pixel_scale
  assert _spread(plain.inputs["flow"]) < 0.01 * bound * np.sqrt(3 * 16 * 16)
  assert _spread(samples.inputs["flow"]) > 50 * _spread(plain.inputs["flow"])
  # The rightward unit's samples all move right, fanned out up and down.
  means = samples.inputs["flow"].reshape(K, -1, 2).mean(1)
  assert (means[:, 0] > 0.5 * bound).all()
  assert means[:, 1].max() > 0.2 * bound and means[:, 1].min() < -0.2 * bound
  assert job.sample_spread(samples)["flow"] > 50 * job.sample_spread(plain)["flow"]


def test_rerun_resumes_from_saved_samples(hand, diverse_run, tmp_path):
  workdir, summary = diverse_run
  with _registered(hand):
    again = job.run(_config(), workdir)        # same config: every unit's samples reused.
  assert again["compilations"] == 0
  assert again["layers"] == summary["layers"]


def test_run_diverse_honours_loop_and_compute_dtype(hand):
  ref = run_diverse(sv.Visualizer(hand, "motion", _config(steps=20)), 1, 3, seed=2, weight=W)
  host = sv.Visualizer(hand, "motion", _config(steps=20, loop="host"))
  a = run_diverse(host, 1, 3, seed=2, weight=W)
  b = run_diverse(host, 3, 3, seed=2, weight=W)
  assert host.trace_count == 1 and list(b.units) == [3] * 3
  np.testing.assert_allclose(a.inputs["flow"], ref.inputs["flow"], rtol=1e-5, atol=1e-4)
  np.testing.assert_allclose(a.history["objective"], ref.history["objective"], rtol=1e-5)
  bf16 = run_diverse(sv.Visualizer(hand, "motion", _config(steps=20, compute_dtype="bfloat16")),
                     1, 3, seed=2, weight=W)
  # The network ran in bfloat16 (different rounding), reaching the same optimum closely.
  assert np.abs(bf16.inputs["flow"] - ref.inputs["flow"]).max() > 1e-3
  np.testing.assert_allclose(bf16.activations, ref.activations, rtol=0.02)


def test_bad_diversity_config_names_the_field(hand, tmp_path):
  with _registered(hand):
    with pytest.raises(ValueError, match=r"^config\.objective\.samples must be >= 2 .*got 1$"):
      c = _config(steps=2)
      c.objective.samples = 1
      job.run(c, str(tmp_path / "a"))
    c = _config(steps=2)
    c.objective.diversity = -1.0
    with pytest.raises(ValueError, match=r"config\.objective\.diversity must be >= 0"):
      job.run(c, str(tmp_path / "b"))
    c = _config(steps=2)
    c.objective.diversity_layer = "moton"
    with pytest.raises(ValueError, match=r"objective\.diversity_layer: .*'moton'"):
      job.run(c, str(tmp_path / "c"))
  assert not os.path.exists(tmp_path / "a" / "motion")   # failed before optimising.


def test_unit_page_shows_the_k_samples(diverse_run):
  from test_gallery import _check_links, _local  # pylint: disable=import-outside-toplevel
  workdir, summary = diverse_run
  page = os.path.join(workdir, "gallery", "motion", "unit_0002.html")
  text = open(page, encoding="utf-8").read()
  section = text[text.index("<h2>Diverse samples</h2>"):text.index("<h2>Optimisation</h2>")]
  captions = re.findall(r"sample (\d) · a = ([-\d.e+]+)", section)
  expected = [(str(k), a) for s in SETTINGS
              for k, a in enumerate(summary["layers"]["motion"][s]["samples"]["activations"]["2"])]
  assert [(k, pytest.approx(float(a), rel=1e-3)) for k, a in captions] == [
      (k, pytest.approx(a, rel=1e-3)) for k, a in expected]
  stems = re.findall(r'data-stem="([^"]+_flow)"', section)
  assert stems == [f"../../motion/{s}/unit_0002{'_sample%d' % k if k else ''}_flow"
                   for s in SETTINGS for k in range(K)]
  for stem in stems:
    assert all(os.path.isfile(_local(page, stem + e)) for e in (".webm", ".mp4", ".gif"))
  assert _check_links(workdir, list(SETTINGS)) > 50


def test_rerun_recomputes_samples_when_the_weights_at_the_same_path_change(tmp_path):
  """Saved samples belong to the weights' content, not their path: weights B
  re-saved where A was are optimised afresh, and equal a clean run on B."""
  from stviz_jax.config import default_config
  from stviz_jax.models import checkpoint
  weights = str(tmp_path / "weights")
  shape = dict(size=8, frames=2, width=8)

  def config():
    c = default_config()
    c.model_overrides = shape
    c.weights, c.units, c.steps, c.gammas = weights, "0", 2, (0.0,)
    c.objective.samples, c.objective.diversity = 2, 1.0
    c.quality.transforms = 0
    return c

  def save_weights(seed):
    random = sv.models.load("tiny_two_stream", seed=seed, **shape)
    checkpoint.save(weights, random.variables, {"architecture": "tiny_two_stream"},
                    overwrite=True)

  def samples(workdir):
    return Result.load(os.path.join(workdir, "fusion", "kappa1_gamma0", "unit_0000_samples.npz"))

  save_weights(0)
  job.run(config(), str(tmp_path / "run"))
  a = samples(str(tmp_path / "run"))
  save_weights(1)
  again = job.run(config(), str(tmp_path / "run"))   # the same command, other weights.
  job.run(config(), str(tmp_path / "fresh"))
  assert again["compilations"] == 1
  assert not np.array_equal(a.inputs["rgb"], samples(str(tmp_path / "fresh")).inputs["rgb"])
  np.testing.assert_array_equal(samples(str(tmp_path / "run")).inputs["rgb"],
                                samples(str(tmp_path / "fresh")).inputs["rgb"])
