"""Model abstraction: wrap, taps, measured receptive fields, registry, errors."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from stviz_jax import models


class PlainNet(nn.Module):
  """An ordinary Flax module returning only logits (no tap dict)."""

  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.Conv(4, (3, 3), name="conv1")(x))
    x = nn.max_pool(x, (2, 2), (2, 2))
    x = nn.relu(nn.Conv(4, (3, 3), strides=(2, 2), padding="VALID", name="conv2")(x))
    x = nn.Conv(4, (5, 5), padding="SAME", name="conv3")(x)
    return nn.Dense(3, name="head")(x.mean((1, 2)))


@pytest.fixture(scope="module")
def plain():
  module = PlainNet()
  variables = module.init(jax.random.PRNGKey(0), jnp.zeros((1, 40, 40, 3)))
  return models.wrap(module, variables, {"rgb": (1, 40, 40, 3)},
                     adapt_inputs=lambda inputs: inputs["rgb"][:, 0])


def test_wrap_captures_every_submodule_as_a_tap(plain):
  assert plain.spec.layers == ("conv1", "conv2", "conv3", "head", "logits")
  assert plain.spec.feature_shape("conv2") == (9, 9, 4)
  assert plain.spec.num_units("conv3") == 4
  x = plain.example_inputs(batch=2)
  acts = plain.activations(x, ["conv1", "conv3"])
  assert acts["conv1"].shape == (2, 40, 40, 4)
  np.testing.assert_allclose(plain(x), acts_logits(plain, x), rtol=1e-6)


def acts_logits(model, x):
  return model.activations(x, ["logits"])["logits"]


def test_receptive_field_measured_from_network(plain):
  # conv1 3x3 s1: 3. pool 2/2: 4, stride 2. conv2 3x3 s2 valid: 4 + 2*2 = 8, stride 4.
  # conv3 5x5 s1: 8 + 4*4 = 24, stride 4.
  assert plain.spec.receptive_field("conv1") == (3, 1)
  assert plain.spec.receptive_field("conv2") == (8, 4)
  assert plain.spec.receptive_field("conv3") == (24, 4)
  g = plain.spec.geometry("conv3")
  assert g.size[1:] == (24, 24) and g.stride[1:] == (4, 4)


def test_spatiotemporal_receptive_field_of_builtin_model():
  m = models.load("tiny_two_stream")
  # flow: 3x3x3 conv, 1x2x2 pool, 3x3x3 conv -> 8 px, stride 2, 5 frames (clipped to 4).
  g = m.spec.geometry("flow/conv2")
  assert g.size == (4, 8, 8) and g.stride[1:] == (2, 2)
  assert m.spec.receptive_field("fusion") == (12, 2)
  assert m.spec.receptive_field("logits") == (32, 32)


def test_registry_and_errors():
  assert "tiny_two_stream" in models.names()
  with pytest.raises(ValueError, match="unknown model 'nope'; available: .*tiny_two_stream"):
    models.load("nope")
  m = models.load("tiny_two_stream")
  with pytest.raises(ValueError, match=r"unknown layer 'conv9'; valid layers: rgb/conv1, "):
    m.spec.receptive_field("conv9")
  with pytest.raises(ValueError, match=r"unit\(s\) \[16\] out of range .*valid units are 0..15"):
    m.spec.check_units("fusion", [3, 16])


def test_wrap_reports_models_that_do_not_run():
  with pytest.raises(ValueError, match="model 'bad' does not run on inputs"):
    models.wrap(lambda v, x: x["rgb"] @ v, jnp.ones((5, 5)), {"rgb": (1, 4, 4, 3)}, name="bad")
  with pytest.raises(ValueError, match=r"has no layer\(s\) \['conv7'\]"):
    models.wrap(lambda v, x: (x["rgb"].sum(), {"a": x["rgb"]}), {}, {"rgb": (1, 4, 4, 3)},
                layers=["conv7"])


def test_model_is_pure_in_its_variables():
  m = models.load("tiny_two_stream")
  x = m.example_inputs()
  doubled = jax.tree.map(lambda v: 2 * v, m.variables)
  a = m.apply(m.variables, x)[0]
  b = m.apply(doubled, x)[0]
  assert not np.allclose(a, b)
  np.testing.assert_allclose(m.apply(m.variables, x)[0], a)


def test_a_reversed_value_range_is_refused_in_one_line():
  with pytest.raises(ValueError, match=r"value_range \(1.0, -1.0\): give \(low, high\)"):
    models.StreamSpec(1, 8, 8, 3, (1.0, -1.0))
