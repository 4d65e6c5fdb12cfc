"""TSN Inception-v3 two-stream network trained on Kinetics-400.

The layers follow Y. Xiong's TSN Kinetics release
(`inception_v3_flow_deploy.prototxt`, copied in
`../shared/fixtures/tsn_inception_v3_kinetics_caffe/`; `tests/test_zoo.py`
checks every layer against it): stem `conv`, `conv_1`, `conv_2`, `pool`,
`conv_3`, `conv_4`, `pool_1`; Inception blocks `mixed`, `mixed_1`,
`mixed_2` (35x35), `mixed_3` (reduction), `mixed_4` ... `mixed_7` (17x17,
with factorised 7x1 / 1x7 kernels), `mixed_8` (reduction), `mixed_9`,
`mixed_10` (8x8, 3x1 / 1x3 splits); `top_cls_global_pool` (8x8 average) and
`fc_action` (400 classes). Kernels keep the prototxt's exact
`(kernel_h, kernel_w)`: `mixed_4_tower_1_conv_1` is 1x7 (height 1, width 7;
the paper's "7 x 1 in width and height"), `mixed_4_tower_1_conv_2` is 7x1,
with the matching `(pad_h, pad_w)`.

Every convolution `X_Conv2D` is followed by TSN's "BN" layer `X_batchnorm`
(eps 1e-5) and a ReLU whose output blob is `X`; taps are these blob names
with a stream prefix (`flow/mixed_4_tower_1_conv_1`), plus the pools and the
`*_join` concatenations. The two streams are separate networks: `logits` is
`rgb/fc_action + 1.5 * flow/fc_action`.

Inputs: `rgb` `(1, size, size, 3)` RGB minus the mean (BGR inside), `flow`
`(flow_stack, size, size, 2)` with 5 flow frames (10 channels
`x1, y1, ..., x5, y5`, input 1x10x299x299 in the prototxt), 8-bit flow minus
128.

Variable naming (for converters): `params[stream]['mixed_4_tower_1_conv_1_Conv2D']`
`{kernel (kh, kw, C_in, C_out), bias}`; unfolded, the BN is
`params[stream]['mixed_4_tower_1_conv_1_batchnorm']` `{scale, bias}` and
`batch_stats[stream][...]` `{mean, var}`; `fc_action` kernel is
`(2048, classes)`.
"""

from __future__ import annotations

from typing import Sequence

from stviz_jax.models import base, checkpoint, registry
from stviz_jax.models.netgraph import (Concat, Conv, Dense, Graph, Pool,
                                       build, scaled)
from stviz_jax.models.zoo.bn_inception import tsn_late_fusion


def inception_v3_layers(prefix: str, bottom: str, width: float,
                        num_classes: int) -> list:
  """The Inception-v3 layers of the TSN Kinetics prototxt."""
  p = prefix
  nodes = []

  def conv(top, bottom, c, k=(1, 1), s=1, pad=(0, 0)):
    nodes.append(Conv(p + top + "_Conv2D", p + bottom if bottom else prefix + "data",
                      scaled(c, width), k, (s, s), pad,
                      bn=p + top + "_batchnorm", top=p + top))
    return top

  def pool(name, bottom, kind, s, pad=0):
    nodes.append(Pool(p + name, p + bottom, kind, (3, 3), (s, s), (pad, pad)))
    return name

  def join(name, outs):
    nodes.append(Concat(p + name, tuple(p + o for o in outs)))
    return name

  x = conv("conv", None, 32, (3, 3), 2)
  x = conv("conv_1", x, 32, (3, 3))
  x = conv("conv_2", x, 64, (3, 3), pad=(1, 1))
  x = pool("pool", x, "max", 2)
  x = conv("conv_3", x, 80)
  x = conv("conv_4", x, 192, (3, 3))
  x = pool("pool_1", x, "max", 2)

  # 35x35 blocks: 1x1 | 1x1 -> 5x5 | 1x1 -> 3x3 -> 3x3 | avg pool -> 1x1.
  for m, proj in (("mixed", 32), ("mixed_1", 64), ("mixed_2", 64)):
    a = conv(f"{m}_conv", x, 64)
    b = conv(f"{m}_tower_conv_1", conv(f"{m}_tower_conv", x, 48), 64, (5, 5),
             pad=(2, 2))
    c = conv(f"{m}_tower_1_conv", x, 64)
    c = conv(f"{m}_tower_1_conv_1", c, 96, (3, 3), pad=(1, 1))
    c = conv(f"{m}_tower_1_conv_2", c, 96, (3, 3), pad=(1, 1))
    d = conv(f"{m}_tower_2_conv", pool(f"{m}_tower_2_pool", x, "avg", 1, 1), proj)
    x = join(f"{m}_join", (a, b, c, d))

  # Reduction to 17x17.
  a = conv("mixed_3_conv", x, 384, (3, 3), 2)
  b = conv("mixed_3_tower_conv", x, 64)
  b = conv("mixed_3_tower_conv_1", b, 96, (3, 3), pad=(1, 1))
  b = conv("mixed_3_tower_conv_2", b, 96, (3, 3), 2)
  x = join("mixed_3_join", (a, b, pool("mixed_3_pool", x, "max", 2)))

  # 17x17 blocks with factorised 7x7 kernels: (kernel_h, kernel_w) exact.
  k71, k17 = ((7, 1), (3, 0)), ((1, 7), (0, 3))
  for m, c7 in (("mixed_4", 128), ("mixed_5", 160), ("mixed_6", 160),
                ("mixed_7", 192)):
    a = conv(f"{m}_conv", x, 192)
    b = conv(f"{m}_tower_conv", x, c7)
    b = conv(f"{m}_tower_conv_1", b, c7, k71[0], pad=k71[1])
    b = conv(f"{m}_tower_conv_2", b, 192, k17[0], pad=k17[1])
    c = conv(f"{m}_tower_1_conv", x, c7)
    c = conv(f"{m}_tower_1_conv_1", c, c7, k17[0], pad=k17[1])
    c = conv(f"{m}_tower_1_conv_2", c, c7, k71[0], pad=k71[1])
    c = conv(f"{m}_tower_1_conv_3", c, c7, k17[0], pad=k17[1])
    c = conv(f"{m}_tower_1_conv_4", c, 192, k71[0], pad=k71[1])
    d = conv(f"{m}_tower_2_conv", pool(f"{m}_tower_2_pool", x, "avg", 1, 1), 192)
    x = join(f"{m}_join", (a, b, c, d))

  # Reduction to 8x8.
  a = conv("mixed_8_tower_conv", x, 192)
  a = conv("mixed_8_tower_conv_1", a, 320, (3, 3), 2)
  b = conv("mixed_8_tower_1_conv", x, 192)
  b = conv("mixed_8_tower_1_conv_1", b, 192, k71[0], pad=k71[1])
  b = conv("mixed_8_tower_1_conv_2", b, 192, k17[0], pad=k17[1])
  b = conv("mixed_8_tower_1_conv_3", b, 192, (3, 3), 2)
  x = join("mixed_8_join", (a, b, pool("mixed_8_pool", x, "max", 2)))

  # 8x8 blocks with 3x1 / 1x3 splits; mixed_10 pools with max.
  for m, pool_kind in (("mixed_9", "avg"), ("mixed_10", "max")):
    a = conv(f"{m}_conv", x, 320)
    b = conv(f"{m}_tower_conv", x, 384)
    b1 = conv(f"{m}_tower_mixed_conv", b, 384, (3, 1), pad=(1, 0))
    b2 = conv(f"{m}_tower_mixed_conv_1", b, 384, (1, 3), pad=(0, 1))
    c = conv(f"{m}_tower_1_conv", x, 448)
    c = conv(f"{m}_tower_1_conv_1", c, 384, (3, 3), pad=(1, 1))
    c1 = conv(f"{m}_tower_1_mixed_conv", c, 384, (3, 1), pad=(1, 0))
    c2 = conv(f"{m}_tower_1_mixed_conv_1", c, 384, (1, 3), pad=(0, 1))
    d = conv(f"{m}_tower_2_conv", pool(f"{m}_tower_2_pool", x, pool_kind, 1, 1), 192)
    x = join(f"{m}_join", (a, b1, b2, c1, c2, d))

  nodes += [Pool(p + "top_cls_pool", p + x, "avg", (), top=p + "top_cls_global_pool"),
            Dense(p + "fc_action", p + "top_cls_global_pool", num_classes)]
  return nodes


def _grids(size: int) -> tuple[int, int, int]:
  """Spatial sizes of the 35x35, 17x17 and 8x8 stages (at 299)."""
  ceil_pool = lambda n: -(-(n - 3) // 2) + 1
  n = (size - 3) // 2 + 1 - 2  # conv (stride 2), conv_1; conv_2 keeps it
  n = ceil_pool(n) - 2  # pool, conv_3 (1x1), conv_4
  g35 = ceil_pool(n)  # pool_1
  g17 = (g35 - 3) // 2 + 1
  return g35, g17, (g17 - 3) // 2 + 1


def _check_size(size: int) -> None:
  """The stride-2 reductions need odd grids (35, 17 at 299) to concatenate.

  Caffe's ceil-mode pools and floor-mode convolutions give different sizes on
  even grids, so the branches of `mixed_3` / `mixed_8` would not match.
  """
  g35, g17, g8 = _grids(size)
  if size < 75 or g35 % 2 == 0 or g17 % 2 == 0 or g8 < 1:
    near = sorted((s for s in range(75, 512) if _valid(s)),
                  key=lambda s: abs(s - size))[:4]
    raise ValueError(f"tsn_inception_v3: size {size} gives 35/17/8-stage grids "
                     f"{(g35, g17, g8)}; the reductions need odd grids: "
                     f"nearest valid sizes {sorted(near)} (native 299)")


def _valid(size: int) -> bool:
  g35, g17, g8 = _grids(size)
  return size >= 75 and g35 % 2 == 1 and g17 % 2 == 1 and g8 >= 1


@registry.register("tsn_inception_v3")
def tsn_inception_v3(size: int = 299, flow_stack: int = 5, num_classes: int = 400,
                     streams: Sequence[str] = ("rgb", "flow"),
                     logit_weights: Sequence[float] | None = None,
                     width: float = 1.0, seed: int = 0,
                     weights: str | None = None, folded: bool = True) -> base.Model:
  """TSN Inception-v3 for Kinetics-400 (see module docstring).

  Args:
    size: input height and width (299; at least 75 for the valid-padded stem).
    flow_stack: flow frames stacked into the motion input (5).
    num_classes: classes of `fc_action` (Kinetics-400: 400).
    streams: towers to build, a subset of ("rgb", "flow").
    logit_weights: per built tower, its weight in `logits` (rgb 1, flow 1.5).
    width: channel multiplier (< 1 only for tiny random test models).
    seed: random initialisation seed (when `weights` is None).
    weights: converted weights directory (architecture 'tsn_inception_v3').
    folded: fold the BN layers into the convolutions (default).
  """
  _check_size(size)
  checkpoint.check_width(width, weights)
  graph = tsn_inception_v3_graph(size, flow_stack, num_classes, streams,
                                 logit_weights, width)
  return build(graph, folded=folded, seed=seed, weights=weights)


def tsn_inception_v3_graph(size: int = 299, flow_stack: int = 5,
                           num_classes: int = 400,
                           streams: Sequence[str] = ("rgb", "flow"),
                           logit_weights: Sequence[float] | None = None,
                           width: float = 1.0) -> Graph:
  """The layer graph of `tsn_inception_v3` (arguments as there)."""
  _check_size(size)
  return tsn_late_fusion("tsn_inception_v3", inception_v3_layers, size, flow_stack,
                         num_classes, streams, logit_weights, width, "fc_action")
