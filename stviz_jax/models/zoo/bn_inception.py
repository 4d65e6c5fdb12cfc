"""TSN BN-Inception two-stream network (Wang et al., ECCV 2016).

The layers, names, kernels, strides, paddings and channel counts are those of
the Temporal Segment Networks deploy prototxts
(`yjxiong/temporal-segment-networks` `models/{ucf101,hmdb51}/
tsn_bn_inception_{rgb,flow}_deploy.prototxt`, copied in
`../shared/fixtures/tsn_bn_inception_caffe/`; `tests/test_zoo.py` checks
every layer against them): `conv1/7x7_s2`, `pool1/3x3_s2`,
`conv2/3x3_reduce`, `conv2/3x3`, `pool2/3x3_s2`, Inception blocks
`inception_3a` ... `inception_5b` with branches `1x1`, `3x3_reduce` -> `3x3`,
`double_3x3_reduce` -> `double_3x3_1` -> `double_3x3_2`, `pool` ->
`pool_proj` and the concatenation `output`, then `global_pool` (7x7 average)
and `fc-action`. Every convolution is followed by TSN's "BN" layer
(`<conv>_bn`, eps 1e-5) and a ReLU; max pools use Caffe's ceil rounding,
average pools (3x3, stride 1, pad 1) divide by 9 everywhere as Caffe does.

Taps are the Caffe layer names with a stream prefix: `rgb/inception_4b/
double_3x3_2` (the paper's "inception_4b_d_3x3_2") is that convolution's
output after BN and ReLU (Caffe's in-place `inception_4b/double_3x3_2_bn`
blob). The two streams are separate networks (late fusion): `logits` is
`rgb/fc-action + 1.5 * flow/fc-action`, TSN's fusion weights.

Inputs: `rgb` `(1, size, size, 3)` RGB minus the mean [104, 117, 123] (the
Caffe net sees BGR; the channels are flipped inside); `flow` `(flow_stack,
size, size, 2)`, five flow frames (horizontal, vertical) in 8-bit flow units
minus 128, stacked as `x1, y1, ..., x5, y5` (TSN `new_length: 5`).

Variable naming (for converters): Caffe layer names split at '/', under the
stream: `params['rgb']['inception_3a']['1x1']['kernel' | 'bias']` (kernel
`(kh, kw, C_in, C_out)`); unfolded, the "BN" layer `inception_3a/1x1_bn` is
`params['rgb']['inception_3a']['1x1_bn']` `{scale: slope, bias}` and
`batch_stats[...]['1x1_bn']` `{mean, var}`; `fc-action` is
`params['rgb']['fc-action']` with kernel `(1024, classes)`.
"""

from __future__ import annotations

from typing import Sequence

from stviz_jax.models import base, checkpoint, registry
from stviz_jax.models.zoo import two_stream
from stviz_jax.models.netgraph import (Concat, Conv, Dense, Graph, Pool,
                                       build, labels_for, scaled)

# Per block: (1x1, 3x3_reduce, 3x3, double_3x3_reduce, double_3x3_1/2,
#             pool kind, pool_proj); 1x1 = 0 marks a stride-2 reduction block.
BLOCKS = (
    ("3a", 64, 64, 64, 64, 96, "avg", 32),
    ("3b", 64, 64, 96, 64, 96, "avg", 64),
    ("3c", 0, 128, 160, 64, 96, "max", 0),
    ("4a", 224, 64, 96, 96, 128, "avg", 128),
    ("4b", 192, 96, 128, 96, 128, "avg", 128),
    ("4c", 160, 128, 160, 128, 160, "avg", 128),
    ("4d", 96, 128, 192, 160, 192, "avg", 128),
    ("4e", 0, 128, 192, 192, 256, "max", 0),
    ("5a", 352, 192, 320, 160, 224, "avg", 128),
    ("5b", 352, 192, 320, 192, 224, "max", 128),
)
_MEAN_PIXELS = (-123.0, 151.0)  # 0..255 minus the smallest/largest channel mean
_FLOW_PIXELS = (-128.0, 127.0)


def bn_inception_layers(prefix: str, bottom: str, width: float,
                        num_classes: int) -> list:
  """The BN-Inception layers of the TSN deploy prototxt (see module docstring)."""
  p = prefix

  def conv(name, bottom, c, k=1, s=1, pad=0):
    return Conv(p + name, bottom, scaled(c, width), (k, k), (s, s), (pad, pad),
                bn=p + name + "_bn")

  nodes = [
      conv("conv1/7x7_s2", bottom, 64, 7, 2, 3),
      Pool(p + "pool1/3x3_s2", p + "conv1/7x7_s2", "max", (3, 3), (2, 2)),
      conv("conv2/3x3_reduce", p + "pool1/3x3_s2", 64),
      conv("conv2/3x3", p + "conv2/3x3_reduce", 192, 3, 1, 1),
      Pool(p + "pool2/3x3_s2", p + "conv2/3x3", "max", (3, 3), (2, 2)),
  ]
  x = p + "pool2/3x3_s2"
  for block, c1, c3r, c3, cdr, cd, pool_kind, cproj in BLOCKS:
    b = f"inception_{block}/"
    reduce = c1 == 0
    s = 2 if reduce else 1
    outs = []
    if not reduce:
      nodes.append(conv(b + "1x1", x, c1))
      outs.append(p + b + "1x1")
    nodes += [
        conv(b + "3x3_reduce", x, c3r),
        conv(b + "3x3", p + b + "3x3_reduce", c3, 3, s, 1),
        conv(b + "double_3x3_reduce", x, cdr),
        conv(b + "double_3x3_1", p + b + "double_3x3_reduce", cd, 3, 1, 1),
        conv(b + "double_3x3_2", p + b + "double_3x3_1", cd, 3, s, 1),
    ]
    outs += [p + b + "3x3", p + b + "double_3x3_2"]
    if reduce:
      nodes.append(Pool(p + b + "pool", x, "max", (3, 3), (2, 2)))
      outs.append(p + b + "pool")
    else:
      nodes += [Pool(p + b + "pool", x, pool_kind, (3, 3), (1, 1), (1, 1)),
                conv(b + "pool_proj", p + b + "pool", cproj)]
      outs.append(p + b + "pool_proj")
    nodes.append(Concat(p + b + "output", tuple(outs)))
    x = p + b + "output"
  nodes += [Pool(p + "global_pool", x, "avg", ()),
            Dense(p + "fc-action", p + "global_pool", num_classes)]
  return nodes


@registry.register("tsn_bn_inception")
def tsn_bn_inception(size: int = 224, flow_stack: int = 5, num_classes: int = 101,
                     streams: Sequence[str] = ("rgb", "flow"),
                     logit_weights: Sequence[float] | None = None,
                     width: float = 1.0, seed: int = 0,
                     weights: str | None = None, folded: bool = True) -> base.Model:
  """TSN BN-Inception (see module docstring).

  Args:
    size: input height and width (224).
    flow_stack: flow frames stacked into the motion input (5).
    num_classes: 101 (UCF101) or 51 (HMDB51).
    streams: towers to build, a subset of ("rgb", "flow").
    logit_weights: per built tower, its weight in `logits` (TSN: rgb 1,
      flow 1.5).
    width: channel multiplier (< 1 only for tiny random test models).
    seed: random initialisation seed (when `weights` is None).
    weights: converted weights directory (architecture 'tsn_bn_inception').
    folded: fold the BN layers into the convolutions (default).
  """
  checkpoint.check_width(width, weights)
  graph = tsn_bn_inception_graph(size, flow_stack, num_classes, streams,
                                 logit_weights, width)
  return build(graph, folded=folded, seed=seed, weights=weights,
               labels=labels_for(num_classes))


def tsn_bn_inception_graph(size: int = 224, flow_stack: int = 5,
                           num_classes: int = 101,
                           streams: Sequence[str] = ("rgb", "flow"),
                           logit_weights: Sequence[float] | None = None,
                           width: float = 1.0) -> Graph:
  """The layer graph of `tsn_bn_inception` (arguments as there)."""
  return tsn_late_fusion("tsn_bn_inception", bn_inception_layers, size, flow_stack,
                         num_classes, streams, logit_weights, width, "fc-action")


def tsn_late_fusion(name, tower_fn, size, flow_stack, num_classes, streams,
                    logit_weights, width, classifier) -> Graph:
  """A TSN pair of Caffe towers (BN-Inception, Inception-v3): rgb weight 1, flow 1.5."""
  specs = {"rgb": base.StreamSpec(1, size, size, 3, _MEAN_PIXELS),
           "flow": base.StreamSpec(flow_stack, size, size, 2, _FLOW_PIXELS)}
  return two_stream.late_fusion(
      name, streams, lambda s: tower_fn(f"{s}/", f"{s}/data", width, num_classes),
      lambda s: f"{s}/{classifier}", specs, logit_weights, {"rgb": 1.0, "flow": 1.5})
