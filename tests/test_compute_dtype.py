"""bfloat16 compute mode: results stay close to float32.

Measure: per unit, the cosine similarity between the float32 and bfloat16
optimised inputs (all streams concatenated) and the relative difference of
the final activation.
"""

import numpy as np
import pytest

import stviz_jax as sv
import handbuilt


def _run(model, layer, dtype, steps=40):
  c = sv.default_config()
  c.steps = steps
  c.compute_dtype = dtype
  return sv.visualize(model, layer, [0, 1, 2], c, seed=0)


def _cosine(a, b):
  a, b = a.reshape(len(a), -1), b.reshape(len(b), -1)
  return np.sum(a * b, 1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


@pytest.mark.parametrize("layer", ["motion", "colour"])
def test_bfloat16_matches_float32_on_known_answer_units(layer):
  model = handbuilt.model()
  f32, bf16 = _run(model, layer, "float32"), _run(model, layer, "bfloat16")
  stream = "flow" if layer == "motion" else "rgb"
  assert np.all(_cosine(f32.inputs[stream], bf16.inputs[stream]) > 0.99)
  np.testing.assert_allclose(bf16.activations, f32.activations, rtol=0.02)


def test_bfloat16_close_on_a_convolutional_two_stream_net():
  model = sv.models.load("tiny_two_stream", size=16, frames=3, width=8)
  f32, bf16 = _run(model, "fusion", "float32"), _run(model, "fusion", "bfloat16")
  x32 = np.concatenate([f32.inputs[s].reshape(3, -1) for s in sorted(f32.inputs)], 1)
  x16 = np.concatenate([bf16.inputs[s].reshape(3, -1) for s in sorted(bf16.inputs)], 1)
  assert np.all(_cosine(x32, x16) > 0.9), _cosine(x32, x16)
  np.testing.assert_allclose(bf16.activations, f32.activations, rtol=0.1)


def test_unknown_dtype_is_rejected():
  c = sv.default_config()
  c.compute_dtype = "int8"
  with pytest.raises(ValueError, match="unknown compute_dtype 'int8'; valid: float32, bfloat16"):
    sv.Visualizer(handbuilt.model(), "motion", c)
