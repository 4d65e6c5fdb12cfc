"""Folding eval-mode batch normalisation into the preceding convolution.

At inference a batch-norm layer is a per-channel affine map
`BN(z) = gamma * (z - mu) / sqrt(sigma^2 + eps) + beta = m * z + s` with
multiplier `m = gamma / sqrt(sigma^2 + eps)` and shift `s = beta - mu * m`.
Applied to a convolution `z = W * x + b` it gives the convolution

    W' = m * W   (scaling each output channel),   b' = m * b + s,

which is what the paper does before visualising ("batch norm absorbed into
the preceding convolution"): the optimisation then sees plain conv layers.

The `*_affine` functions turn each framework's stored statistics into
`(m, s)`; `fold` applies `(m, s)` to a kernel and bias; `fold_tree` folds
every `{conv: bn}` pair of a Flax variable tree (the zoo's unfolded models).

| source | stored | function |
|---|---|---|
| Caffe `BatchNorm` (+ `Scale`) | `[mean*f, var*f, f]` (+ `[gamma, beta]`) | `caffe_affine` |
| TSN / yjxiong Caffe `BN` | `slope, bias, mean, var`, each `(1, C)` | `tsn_affine` |
| MatConvNet `bnorm` | `mult, bias, moments=[mu, sqrt(var+eps)]` | `matconvnet_affine` |
| Flax `BatchNorm` | `scale?, bias?` + `mean, var` | `flax_affine` |
| Sonnet v1 `BatchNorm` | `gamma?, beta?, moving_mean, moving_variance` | `sonnet_affine` |

All functions are pure: on NumPy (or concrete JAX) arrays they compute in
NumPy and return NumPy arrays (converters stay fast, no compilation per
layer shape); on traced values they use `jax.numpy`, so they work under
`jit`.
"""

from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

PyTree = Any


def _xp(*arrays):
  """`jax.numpy` if any argument is traced, else NumPy."""
  leaves = jax.tree.leaves(arrays)
  return jnp if any(isinstance(a, jax.core.Tracer) for a in leaves) else np


def affine(mean, var, scale=None, offset=None, eps: float = 1e-5):
  """`(m, s)` of `gamma * (z - mu) / sqrt(var + eps) + beta`.

  Args:
    mean, var: running statistics mu, sigma^2, shape `(C,)` (any shape with
      C elements is flattened).
    scale: gamma (None: 1, a BN without scale).
    offset: beta (None: 0, a BN without offset).
    eps: the layer's epsilon.

  Returns:
    `(m, s)`, each `(C,)`, with `BN(z) = m * z + s`.
  """
  xp = _xp(mean, var, scale, offset)
  mean = xp.ravel(xp.asarray(mean, xp.float32))
  var = xp.ravel(xp.asarray(var, xp.float32))
  m = 1.0 / xp.sqrt(var + xp.float32(eps))
  if scale is not None:
    m = m * xp.ravel(xp.asarray(scale, xp.float32))
  s = -mean * m
  if offset is not None:
    s = s + xp.ravel(xp.asarray(offset, xp.float32))
  return m, s


def caffe_affine(batchnorm_blobs, scale_blobs=None, eps: float = 1e-5):
  """Caffe `BatchNorm` (blobs `[mean*f, var*f, f]`) followed by an optional `Scale`.

  Caffe stores the running sums with a moving-average factor f in the third
  blob; the statistics are the first two divided by f (f = 0 means zero
  statistics, as in Caffe's `batch_norm_layer.cpp`).

  Args:
    batchnorm_blobs: the three `BatchNorm` blobs.
    scale_blobs: `[gamma]` or `[gamma, beta]` of the following `Scale` layer.
    eps: `batch_norm_param.eps` (Caffe's default 1e-5).
  """
  if len(batchnorm_blobs) != 3:
    raise ValueError(f"Caffe BatchNorm has 3 blobs (mean, var, factor); got "
                     f"{len(batchnorm_blobs)}")
  xp = _xp(batchnorm_blobs)
  f = xp.ravel(xp.asarray(batchnorm_blobs[2], xp.float32))[0]
  inv = xp.where(f == 0, 0.0, 1.0 / xp.where(f == 0, 1.0, f))
  mean = xp.asarray(batchnorm_blobs[0], xp.float32) * inv
  var = xp.asarray(batchnorm_blobs[1], xp.float32) * inv
  gamma = beta = None
  if scale_blobs:
    gamma = scale_blobs[0]
    beta = scale_blobs[1] if len(scale_blobs) > 1 else None
  return affine(mean, var, gamma, beta, eps)


def tsn_affine(blobs, eps: float = 1e-5):
  """yjxiong Caffe `BN` layer (TSN): blobs `[slope, bias, mean, var]`, each `(1, C)`.

  `y = slope * (x - mean) / sqrt(var + eps) + bias` with `bn_param.eps`
  (default 1e-5), as in yjxiong/caffe `bn_layer.cpp` in frozen mode.
  """
  if len(blobs) != 4:
    raise ValueError(f"TSN BN has 4 blobs (slope, bias, mean, var); got {len(blobs)}")
  slope, bias, mean, var = blobs
  return affine(mean, var, slope, bias, eps)


def matconvnet_affine(mult, bias, moments):
  """MatConvNet `vl_nnbnorm`: `y = mult * (x - mu) / sigma + bias`.

  `moments` is `(C, 2)` holding `[mu, sigma]` with sigma = sqrt(var + eps)
  already (MatConvNet stores the standard deviation, epsilon included).
  """
  xp = _xp(mult, bias, moments)
  moments = xp.asarray(moments, xp.float32).reshape(-1, 2)
  mu, sigma = moments[:, 0], moments[:, 1]
  m = xp.ravel(xp.asarray(mult, xp.float32)) / sigma
  return m, xp.ravel(xp.asarray(bias, xp.float32)) - mu * m


def flax_affine(bn_params: Mapping[str, Any] | None, bn_stats: Mapping[str, Any],
                eps: float = 1e-5):
  """Flax `nn.BatchNorm`: params `{'scale'?, 'bias'?}`, batch_stats `{'mean', 'var'}`."""
  bn_params = bn_params or {}
  return affine(bn_stats["mean"], bn_stats["var"], bn_params.get("scale"),
                bn_params.get("bias"), eps)


def sonnet_affine(variables: Mapping[str, Any], eps: float = 1e-3):
  """Sonnet v1 `BatchNorm` (e.g. DeepMind I3D: `beta` only, no `gamma`, eps 1e-3)."""
  return affine(variables["moving_mean"], variables["moving_variance"],
                variables.get("gamma"), variables.get("beta"), eps)


def fold(kernel, bias, m, s, out_axis: int = -1):
  """Absorbs `BN(z) = m * z + s` into a convolution or dense layer.

  Args:
    kernel: the weights, output channels along `out_axis` (Flax: last axis;
      Caffe `(O, I, ...)`: axis 0).
    bias: the layer's bias `(C,)`, or None for a layer without bias.
    m, s: from one of the `*_affine` functions.
    out_axis: the output-channel axis of `kernel`.

  Returns:
    `(m * W, m * b + s)`: the kernel and the (new) bias.
  """
  xp = _xp(kernel, bias, m, s)
  kernel, m, s = xp.asarray(kernel), xp.asarray(m), xp.asarray(s)
  c = kernel.shape[out_axis]
  if m.shape != (c,) or s.shape != (c,):
    raise ValueError(f"batch norm has {m.shape[0]} channels but the kernel "
                     f"{kernel.shape} has {c} outputs (axis {out_axis})")
  shape = [1] * kernel.ndim
  shape[out_axis] = c
  new_kernel = kernel * m.reshape(shape).astype(kernel.dtype)
  b = xp.zeros((c,), xp.float32) if bias is None else xp.ravel(xp.asarray(bias))
  return new_kernel, (m * b + s).astype(new_kernel.dtype)


def _get(tree, path):
  for k in path:
    tree = tree[k]
  return tree


def _pop(tree, path):
  parent = _get(tree, path[:-1])
  value = parent.pop(path[-1])
  # Drop parents left empty, so a folded tree has no trace of the BN layers.
  for i in range(len(path) - 1, 0, -1):
    node = _get(tree, path[:i])
    if node:
      break
    _get(tree, path[:i - 1]).pop(path[i - 1])
  return value


def fold_tree(variables: PyTree, pairs: Mapping[str, str], eps: float = 1e-5) -> PyTree:
  """Folds every Flax `BatchNorm` of `pairs` into its convolution.

  Args:
    variables: `{'params': ..., 'batch_stats': ...}` with each convolution at
      `params[conv path]` (`kernel`, optional `bias`) and its batch norm at
      `params[bn path]` (`scale`, `bias`, either optional) and
      `batch_stats[bn path]` (`mean`, `var`).
    pairs: `{conv path: bn path}`, paths '/'-separated (e.g.
      `{'rgb/conv1/7x7_s2': 'rgb/conv1/7x7_s2_bn'}`).
    eps: the batch norms' epsilon.

  Returns:
    A new tree: every listed convolution has a folded `kernel` and `bias`, the
    batch-norm entries are gone (and `batch_stats` too when empty). The input
    is not modified.
  """
  if "batch_stats" not in variables:
    raise ValueError("variables have no 'batch_stats': already folded?")
  out = {k: _to_dict(v) for k, v in variables.items()}  # new dicts, shared leaves
  params, stats = out["params"], out["batch_stats"]
  for conv, bn in pairs.items():
    conv_path, bn_path = tuple(conv.split("/")), tuple(bn.split("/"))
    try:
      layer = _get(params, conv_path)
      bn_stats = _pop(stats, bn_path)
    except KeyError as e:
      raise ValueError(f"cannot fold {bn!r} into {conv!r}: {e} not in the "
                       "variables") from None
    try:
      bn_params = _pop(params, bn_path)
    except KeyError:
      bn_params = {}
    m, s = flax_affine(bn_params, bn_stats, eps)
    layer["kernel"], layer["bias"] = fold(layer["kernel"], layer.get("bias"), m, s)
  if not out["batch_stats"]:
    del out["batch_stats"]
  return out


def _to_dict(tree):
  if isinstance(tree, Mapping):
    return {k: _to_dict(v) for k, v in tree.items()}
  return tree
