"""Batch-norm folding: known answers and folded == unfolded on real layers."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from stviz_jax.models import batchnorm

C = 5


def _stats(seed=0, c=C):
  rng = np.random.default_rng(seed)
  return dict(mean=rng.normal(size=c).astype(np.float32),
              var=rng.uniform(0.2, 3.0, size=c).astype(np.float32),
              gamma=rng.uniform(0.5, 2.0, size=c).astype(np.float32),
              beta=rng.normal(size=c).astype(np.float32))


def _bn(z, mean, var, gamma, beta, eps):
  """Eval-mode batch norm written out, channels last (the reference)."""
  return gamma * (z - mean) / np.sqrt(var + eps) + beta


def _conv(x, kernel, bias):
  y = jax.lax.conv_general_dilated(x, kernel, (1, 1), "SAME",
                                   dimension_numbers=("NHWC", "HWIO", "NHWC"))
  return np.asarray(y) + (0 if bias is None else np.asarray(bias))


def test_known_answer():
  # W = 2, b = 1, mu = 3, var + eps = 4, gamma = 4, beta = 5:
  # m = 4 / 2 = 2, s = 5 - 3 * 2 = -1 -> W' = 4, b' = 2 * 1 - 1 = 1.
  m, s = batchnorm.affine([3.0], [3.0], [4.0], [5.0], eps=1.0)
  kernel, bias = batchnorm.fold(np.full((1, 1, 1, 1), 2.0, np.float32),
                                np.ones(1, np.float32), m, s)
  assert float(kernel.squeeze()) == 4.0 and float(bias[0]) == 1.0


@pytest.mark.parametrize("with_bias", [True, False])
def test_fold_matches_conv_then_batchnorm(with_bias):
  rng = np.random.default_rng(1)
  x = rng.normal(size=(2, 6, 6, 3)).astype(np.float32)
  kernel = rng.normal(size=(3, 3, 3, C)).astype(np.float32)
  bias = rng.normal(size=C).astype(np.float32) if with_bias else None
  st = _stats()
  want = _bn(_conv(x, kernel, bias), st["mean"], st["var"], st["gamma"],
             st["beta"], 1e-5)
  m, s = batchnorm.affine(st["mean"], st["var"], st["gamma"], st["beta"], 1e-5)
  k2, b2 = batchnorm.fold(kernel, bias, m, s)
  np.testing.assert_allclose(_conv(x, k2, b2), want, rtol=1e-5, atol=1e-4)


def test_caffe_batchnorm_and_scale():
  st = _stats(2)
  factor = np.array([999.982], np.float32)  # Caffe's moving-average factor
  blobs = [st["mean"] * factor, st["var"] * factor, factor]
  m, s = batchnorm.caffe_affine(blobs, [st["gamma"], st["beta"]], eps=1e-5)
  z = np.linspace(-3, 3, C).astype(np.float32)
  np.testing.assert_allclose(m * z + s, _bn(z, st["mean"], st["var"], st["gamma"],
                                            st["beta"], 1e-5), rtol=1e-5, atol=1e-5)
  # Scale without bias term; a zero factor means zero statistics (Caffe).
  m, s = batchnorm.caffe_affine([blobs[0], blobs[1], np.zeros(1)], [st["gamma"]], 1e-3)
  np.testing.assert_allclose(m, st["gamma"] / np.sqrt(1e-3), rtol=1e-5)
  np.testing.assert_allclose(s, 0.0, atol=1e-6)
  with pytest.raises(ValueError, match="3 blobs"):
    batchnorm.caffe_affine(blobs[:2])


def test_tsn_bn_layer_blobs():
  # yjxiong "BN": four (1, C) blobs slope, bias, mean, var; eps 1e-5.
  st = _stats(3)
  blobs = [v[None] for v in (st["gamma"], st["beta"], st["mean"], st["var"])]
  m, s = batchnorm.tsn_affine(blobs)
  z = np.linspace(-2, 5, C).astype(np.float32)
  np.testing.assert_allclose(m * z + s, _bn(z, st["mean"], st["var"], st["gamma"],
                                            st["beta"], 1e-5), rtol=1e-5, atol=1e-5)


def test_matconvnet_moments_hold_sigma():
  st = _stats(4)
  eps = 1e-4
  moments = np.stack([st["mean"], np.sqrt(st["var"] + eps)], axis=1)  # (C, 2)
  m, s = batchnorm.matconvnet_affine(st["gamma"], st["beta"], moments)
  m2, s2 = batchnorm.affine(st["mean"], st["var"], st["gamma"], st["beta"], eps)
  np.testing.assert_allclose(m, m2, rtol=1e-5)
  np.testing.assert_allclose(s, s2, rtol=1e-5, atol=1e-6)


def test_sonnet_without_scale():
  st = _stats(5)
  m, s = batchnorm.sonnet_affine({"moving_mean": st["mean"],
                                  "moving_variance": st["var"], "beta": st["beta"]})
  np.testing.assert_allclose(m, 1 / np.sqrt(st["var"] + 1e-3), rtol=1e-5)
  np.testing.assert_allclose(s, st["beta"] - st["mean"] * m, rtol=1e-5, atol=1e-6)


def test_fold_caffe_layout_out_axis_0():
  rng = np.random.default_rng(6)
  oihw = rng.normal(size=(C, 3, 3, 3)).astype(np.float32)
  st = _stats(6)
  m, s = batchnorm.affine(st["mean"], st["var"], st["gamma"], st["beta"])
  k_caffe, b_caffe = batchnorm.fold(oihw, None, m, s, out_axis=0)
  k_flax, b_flax = batchnorm.fold(oihw.transpose(2, 3, 1, 0), None, m, s)
  np.testing.assert_allclose(np.asarray(k_caffe).transpose(2, 3, 1, 0), k_flax, rtol=1e-6)
  np.testing.assert_allclose(b_caffe, b_flax)
  with pytest.raises(ValueError, match="5 channels but the kernel"):
    batchnorm.fold(oihw[:4], None, m, s, out_axis=0)


class _ConvBN(nn.Module):
  use_scale: bool = True

  @nn.compact
  def __call__(self, x):
    x = nn.Conv(C, (3, 3), use_bias=False, name="conv")(x)
    x = nn.BatchNorm(use_running_average=True, use_scale=self.use_scale,
                     epsilon=1e-3, name="conv_bn")(x)
    return nn.Dense(2, name="fc")(x)


class _Folded(nn.Module):

  @nn.compact
  def __call__(self, x):
    return nn.Dense(2, name="fc")(nn.Conv(C, (3, 3), name="conv")(x))


@pytest.mark.parametrize("use_scale", [True, False])
def test_fold_tree_flax_module(use_scale):
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 8, 8, 3))
  module = _ConvBN(use_scale)
  variables = jax.tree.map(np.asarray, module.init(jax.random.PRNGKey(1), x))
  st = _stats(7)
  variables["batch_stats"]["conv_bn"] = {"mean": st["mean"], "var": st["var"]}
  variables["params"]["conv_bn"]["bias"] = st["beta"]
  if use_scale:
    variables["params"]["conv_bn"]["scale"] = st["gamma"]
  before = jax.tree.map(np.copy, variables)
  folded = batchnorm.fold_tree(variables, {"conv": "conv_bn"}, eps=1e-3)
  assert set(folded) == {"params"} and set(folded["params"]) == {"conv", "fc"}
  assert set(folded["params"]["conv"]) == {"kernel", "bias"}
  np.testing.assert_allclose(_Folded().apply(folded, x), module.apply(variables, x),
                             rtol=1e-5, atol=1e-5)
  # The input tree is left untouched.
  jax.tree.map(np.testing.assert_array_equal, variables, before)
  with pytest.raises(ValueError, match="already folded"):
    batchnorm.fold_tree(folded, {"conv": "conv_bn"})
  with pytest.raises(ValueError, match="cannot fold 'nope_bn' into 'conv'"):
    batchnorm.fold_tree(variables, {"conv": "nope_bn"})


def test_fold_under_jit():
  st = _stats(8)
  fn = jax.jit(lambda k, mean, var: batchnorm.fold(
      k, None, *batchnorm.affine(mean, var)))
  k, b = fn(jnp.ones((1, 1, 2, C)), st["mean"], st["var"])
  np.testing.assert_allclose(b, -st["mean"] / np.sqrt(st["var"] + 1e-5), rtol=1e-5)
