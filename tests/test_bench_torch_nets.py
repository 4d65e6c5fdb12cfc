"""The benchmarks' PyTorch twins compute the zoo networks and the paper's objective.

A speed comparison against PyTorch is only meaningful if both sides run the
same network: the twins (`benchmarks/torch_nets.py`) are checked here against
`Model.apply` on tiny models with random (non-zero) biases, in both memory
formats, including odd sizes where TF "SAME" padding is asymmetric.
"""

import dataclasses
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import stviz_jax as sv
from stviz_jax import regularizers
from stviz_jax.models import netgraph

torch = pytest.importorskip("torch")
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "benchmarks"))
import torch_nets  # noqa: E402  pylint: disable=wrong-import-position

TOL = 1e-4


def _random_biases(model, seed=1):
  """Zoo random inits have zero biases; make them matter for the comparison."""
  rng = np.random.default_rng(seed)

  def draw(path, leaf):
    if path[-1].key == "bias":
      return rng.normal(0.0, 0.3, leaf.shape).astype(np.float32)
    return leaf

  return dataclasses.replace(
      model, variables=jax.tree_util.tree_map_with_path(draw, model.variables))


def _inputs(model, n=2, seed=0):
  rng = np.random.default_rng(seed)
  return {s: rng.uniform(*sp.value_range, (n,) + sp.shape).astype(np.float32)
          for s, sp in model.spec.streams.items()}


@pytest.fixture(scope="module")
def fusion():
  return _random_biases(sv.models.load("vgg16_fusion", frames=3, size=32, width=1 / 16))


@pytest.mark.parametrize("fmt", torch_nets.FORMATS)
@pytest.mark.parametrize("layer", ["conv5_fusion", "flow/conv3_1", "rgb/pool2"])
def test_vgg16_fusion_twin_equals_flax(fusion, layer, fmt):
  net = torch_nets.twin(fusion, layer).set_memory_format(fmt)
  assert torch_nets.max_relative_error(fusion, net, layer, _inputs(fusion)) < TOL


def test_fusion_comparison_sees_the_flow_order(fusion):
  """The check is sharp: the same flow with its frames reversed is far off."""
  layer = "conv5_fusion"
  x = _inputs(fusion)
  net = torch_nets.twin(fusion, layer)
  flipped = dict(x, flow=x["flow"][:, ::-1])
  with torch.no_grad():
    a = net({k: torch.from_numpy(v.copy()) for k, v in flipped.items()}).numpy()
  b = np.asarray(fusion.apply(fusion.variables, x)[1][layer])
  assert np.abs(a - b).max() / np.abs(b).max() > 100 * TOL


def test_stack_flow_matches_netgraph():
  flow = np.random.default_rng(0).standard_normal((2, 13, 4, 5, 2)).astype(np.float32)
  want = np.asarray(netgraph.stack_flow(jnp.asarray(flow), 3, 5, 4))
  got = torch_nets.stack_flow(torch.from_numpy(flow), 3, 5, 4).numpy()
  np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("frames,size", [(8, 32), (9, 35)])  # even and odd: SAME pads
def test_i3d_twin_equals_flax(frames, size):
  model = _random_biases(sv.models.load("i3d", frames=frames, size=size))
  x = _inputs(model)
  for layer, fmt in (("Mixed_4f", "channels_last"), ("MaxPool3d_4a_3x3", "contiguous")):
    net = torch_nets.twin(model, layer).set_memory_format(fmt)
    assert torch_nets.max_relative_error(model, net, layer, x) < TOL, (layer, fmt)


def test_bad_layers_are_named():
  model = sv.models.load("vgg16_fusion", frames=2, size=32, width=1 / 16)
  with pytest.raises(ValueError, match="fc6.*Dense"):
    torch_nets.twin(model, "fc6")
  with pytest.raises(ValueError, match="no blob 'nope'"):
    torch_nets.twin(model, "nope")


def test_penalty_equals_regularizers():
  x = np.random.default_rng(0).uniform(-100, 100, (3, 4, 6, 5, 2)).astype(np.float32)
  w = regularizers.stream_weights(regularizers.paper_preset(), "flow", 1.0)
  want = np.asarray(regularizers.penalty(jnp.asarray(x), w))
  got = torch_nets.penalty(torch.from_numpy(x), w).numpy()
  np.testing.assert_allclose(got, want, rtol=1e-5)


def test_objective_equals_visualizer_terms(fusion):
  """The loop's E(x_u) is the Visualizer's objective of the same inputs and units."""
  config = sv.default_config()
  config.steps = 2
  vis = sv.Visualizer(fusion, "conv5_fusion", config)
  x = _inputs(fusion, n=3)
  units = np.array([0, 5, 31], np.int32)
  net = torch_nets.twin(fusion, "conv5_fusion")
  rho, _ = fusion.spec.receptive_field("conv5_fusion")
  with torch.no_grad():
    got = torch_nets.objective(net, {k: torch.from_numpy(v) for k, v in x.items()},
                               torch.from_numpy(units).long(), rho, vis.weights).numpy()
  terms = jax.jit(jax.vmap(lambda v, x, u: vis.terms(v, x, u)["objective"],
                           in_axes=(None, 0, 0)))
  want = np.asarray(terms(fusion.variables, x, units))
  np.testing.assert_allclose(got, want, rtol=1e-4)


def test_runner_runs_the_configured_steps(fusion):
  """The loop raises the target: after 6 steps E(x) is higher than at the start."""
  config = sv.default_config()
  config.steps = 6
  vis = sv.Visualizer(fusion, "conv5_fusion", config)
  net = torch_nets.twin(fusion, "conv5_fusion")
  run = torch_nets.optimisation_runner(net, vis, units=2, steps=6)
  seconds, history = run()
  assert seconds > 0 and history.shape == (6, 2) and np.isfinite(history).all()
  assert (history[-1] > history[0]).all()
