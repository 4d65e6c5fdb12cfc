"""Receptive field and cumulative stride, measured from the network itself.

The receptive field of a unit is the support of the gradient of its output
with respect to the input. We take the centre location of a layer (all
channels, each with a random positive weight so that no two channels can
cancel), back-propagate to every stream and read the extent of the non-zero
gradient along T, H and W. The stride is the shift of that support when moving
to the neighbouring output location.

ReLUs built with `stviz_jax.models.relu` back-propagate as the identity here,
so dead units still count. Max pooling routes gradient along one path per
input, so the support is the union over a few random inputs; with all channels
counted a missed border pixel is vanishingly unlikely (the VGG-16 test checks
the paper's Table 1 exactly). A receptive field larger than the input is reported as
clipped to the input, which is what the optimisation actually sees.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from stviz_jax.models import layers
from stviz_jax.models.specs import LOGITS, LayerGeometry, example_inputs

_NUM_PROBES = 3


def _feature_axes(rank: int) -> dict[str, int]:
  """Feature axis per input axis name, for a feature without batch axis."""
  if rank == 4:
    return {"t": 0, "h": 1, "w": 2}
  if rank == 3:
    return {"h": 0, "w": 1}
  return {}


def _extent(mask: np.ndarray) -> tuple[int, int]:
  idx = np.nonzero(mask)[0]
  if idx.size == 0:
    return -1, -1
  return int(idx[0]), int(idx[-1])


def measure(apply: Callable, variables: Any, streams: Mapping[str, Any],
            layer: str):
  """Measures `LayerGeometry` of `layer` for a model `apply(variables, inputs)`."""
  inputs = example_inputs(streams, batch=_NUM_PROBES, seed=1234)

  def feature(x):
    logits, feats = apply(variables, x)
    return logits if layer == LOGITS else feats[layer]

  shape = jax.eval_shape(feature, inputs).shape[1:]
  axes = _feature_axes(len(shape))
  max_t = max(s.frames for s in streams.values())
  height = max(s.height for s in streams.values())
  width = max(s.width for s in streams.values())
  if not axes:  # global layer: every input pixel is in the field.
    return LayerGeometry((max_t, height, width), (max_t, height, width), shape)

  centre = [(n - 1) // 2 for n in shape[:-1]]
  probes = [tuple(centre)]
  probe_axis = []
  for name, ax in axes.items():
    if shape[ax] > 1:
      nxt = list(centre)
      nxt[ax] += 1
      probes.append(tuple(nxt))
      probe_axis.append(name)
  rng = np.random.default_rng(0)
  cot = np.zeros((len(probes), _NUM_PROBES) + tuple(shape), np.float32)
  for i, p in enumerate(probes):
    cot[(i, slice(None)) + p] = rng.uniform(0.5, 1.5, (_NUM_PROBES, shape[-1]))

  @jax.jit
  def support(x, cot):
    with layers.straight_through_relu():
      _, vjp = jax.vjp(feature, x)
    grads = jax.vmap(vjp)(cot)[0]
    # |grad| > 0 anywhere over probes and channels, per stream: (P, T, H, W).
    return {k: jnp.any(g != 0, axis=(1, 5)) for k, g in grads.items()}

  masks = support(inputs, jnp.asarray(cot))
  masks = {k: np.asarray(v) for k, v in masks.items()}

  def extents(i, t_stream=None):
    """(lo, hi) per axis t, h, w of probe i.

    H and W are the union over streams (they share one pixel grid). Streams
    may differ in frame rate (one RGB frame per 10-frame flow stack), so
    frame indices of different streams are not comparable: T is read from one
    stream, `t_stream` or else the one with the longest temporal extent.
    """
    out = {}
    for ax_name, reduce_axes in (("h", (0, 2)), ("w", (0, 1))):
      los, his = [], []
      for m in masks.values():
        lo, hi = _extent(m[i].any(axis=reduce_axes))
        if lo >= 0:
          los.append(lo)
          his.append(hi)
      out[ax_name] = (min(los), max(his)) if los else (-1, -1)
    per_stream = {k: _extent(m[i].any(axis=(1, 2))) for k, m in masks.items()}
    if t_stream is None:
      t_stream = max(per_stream, key=lambda k: per_stream[k][1] - per_stream[k][0])
    out["t"], out["t_stream"] = per_stream[t_stream], t_stream
    return out

  base = extents(0)
  if base["h"][0] < 0:
    raise ValueError(f"layer {layer!r}: its centre unit does not depend on the "
                     "input (zero gradient); cannot measure its receptive field")
  size = tuple(hi - lo + 1 for lo, hi in (base["t"], base["h"], base["w"]))
  full = {"t": max_t, "h": height, "w": width}
  stride = {}
  for name in ("t", "h", "w"):
    if name in probe_axis:
      nxt = extents(1 + probe_axis.index(name), base["t_stream"])[name]
      shift = max(nxt[0] - base[name][0], nxt[1] - base[name][1])
      if shift <= 0:  # both fields clipped to the whole input: no shift to read.
        shift = max(1, round(full[name] / shape[axes[name]]))
      stride[name] = shift
    elif name in axes:  # a single output location along this axis.
      stride[name] = full[name]
    else:  # the layer has no such axis (e.g. 2-D features of a clip).
      stride[name] = 1 if name == "t" and size[0] == 1 else full[name]
  return LayerGeometry(size, (stride["t"], stride["h"], stride["w"]), tuple(shape))
