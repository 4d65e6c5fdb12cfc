"""VGG-16 two-stream networks: the paper's conv-fusion model and late fusion.

`vgg16_fusion` -- Feichtenhofer, Pinz & Zisserman (CVPR 2016), the network
the paper studies most (its Fig. 2; MatConvNet release
`feichtenhofer/twostreamfusion`, `cnn_ucf101_fusion.m`):

* appearance tower: VGG-16 `conv1_1` ... `conv5_3` on one RGB frame per time
  step; motion tower: VGG-16 on a stack of `flow_stack` (10) flow frames per
  time step (20 channels `u_1, v_1, ..., u_10, v_10`); 2x2 max pools
  `pool1` ... `pool4` (MatConvNet: floor rounding).
* fusion after `relu5_3`: `relu5_3_concat` = [appearance (512); motion
  (512)], `conv5_fusion` a 3x3x3 (T, H, W) convolution 1024 -> 512, pad 1,
  ReLU; `pool5` 3-D max pooling over 2x2 in space and all `frames` time steps
  (stride 2 in T, H, W); `fc6` (4096, ReLU), `fc7` (4096, ReLU), `fc8`
  (classes).
* the motion tower is kept with its own 3-D `flow/pool5` and
  `flow/fc6` ... `flow/fc8`, so the network has two outputs; `logits` is the
  fusion tower's `fc8` (averaged over the remaining time steps), the motion
  tower's class scores are the tap `flow/fc8`.

Inputs: `rgb` `(frames, size, size, 3)`, RGB minus the mean (about
[-128, 127]); `flow` a flow video `((frames - 1) * flow_stride + flow_stack,
size, size, 2)`, channels (horizontal, vertical) in 8-bit flow units minus
128; time step t sees flow frames `t * flow_stride ...` (default
`flow_stride = flow_stack`: consecutive, non-overlapping stacks).

`vgg16_two_stream` -- the "very deep two-stream" late-fusion model (Wang et
al. 2015, Caffe, `../shared/fixtures/cuhk_vgg16_two_stream_caffe/`): two
independent VGG-16 towers with Caffe ceil-mode `pool1` ... `pool5`, `fc6`,
`fc7` and `fc8-1` (appearance) / `fc8` (motion); BGR Caffe input (fed RGB,
flipped inside). `streams=("rgb",)` builds one tower; it is also the network
of the paper's Table 1 (receptive fields of VGG-16 at 224 x 224).

Variable naming (for converters): `params[tower][layer]['kernel' | 'bias']`
with tower `rgb` / `flow` (MatConvNet suffixes `_spatial` / `_temporal`),
layer the original name (`conv3_2`, `fc7`, ...); fusion layers
`params['conv5_fusion']` (MatConvNet `conv3Df`/`conv3Db`, kernel
`(T, H, W, 1024, 512)`: MatConvNet's `[H W T Cin Cout]` transposed to
`[T H W Cin Cout]`), `params['fc6']` ... `params['fc8']`. Convolution kernels
are `(kh, kw, C_in, C_out)`; `fc6` is `(7 * 7 * 512, 4096)` over the input
flattened in (H, W, C) order (MatConvNet's 7x7x512x4096 filter reshaped in C
order), `fc7`, `fc8` are `(C_in, C_out)`. VGG has no batch norm.
"""

from __future__ import annotations

from typing import Sequence

from stviz_jax.models import base, checkpoint, registry
from stviz_jax.models.zoo import two_stream
from stviz_jax.models.netgraph import (Concat, Conv, Dense, Graph, Pool,
                                       build, labels_for, scaled)

VGG16_BLOCKS = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512),
                (512, 512, 512))
_PIXELS = (-128.0, 127.0)  # 8-bit input minus its mean


def vgg16_layers(prefix: str = "", bottom: str = "data", width: float = 1.0,
                 pool5: bool = True, ceil_mode: bool = False) -> list:
  """VGG-16 `conv1_1` ... `conv5_3` (3x3, pad 1, ReLU) and 2x2 max pools."""
  nodes, x = [], bottom
  for b, channels in enumerate(VGG16_BLOCKS, 1):
    for i, c in enumerate(channels, 1):
      name = f"{prefix}conv{b}_{i}"
      nodes.append(Conv(name, x, scaled(c, width), (3, 3), pad=(1, 1)))
      x = name
    if b < 5 or pool5:
      name = f"{prefix}pool{b}"
      nodes.append(Pool(name, x, "max", (2, 2), ceil_mode=ceil_mode))
      x = name
  return nodes


def _head(prefix: str, bottom: str, width: float, num_classes: int,
          fc8: str = "fc8") -> list:
  fc = scaled(4096, width)
  return [Dense(f"{prefix}fc6", bottom, fc, relu=True),
          Dense(f"{prefix}fc7", f"{prefix}fc6", fc, relu=True),
          Dense(f"{prefix}{fc8}", f"{prefix}fc7", num_classes)]


def _tops(nodes) -> list[str]:
  return [n.top or n.name for n in nodes if not isinstance(n, Concat)]


@registry.register("vgg16_fusion")
def vgg16_fusion(frames: int = 5, size: int = 224, flow_stack: int = 10,
                 flow_stride: int | None = None, num_classes: int = 101,
                 width: float = 1.0, seed: int = 0, weights: str | None = None,
                 folded: bool = True) -> base.Model:
  """The VGG-16 conv-fusion two-stream network (see module docstring).

  Args:
    frames: time steps T (RGB frames and flow stacks; 5 in training).
    size: input height and width (224).
    flow_stack: flow frames per stack (10).
    flow_stride: flow frames between consecutive stacks (default `flow_stack`).
    num_classes: classes of `fc8` (UCF101: 101).
    width: channel multiplier (< 1 only for tiny random test models).
    seed: random initialisation seed (when `weights` is None).
    weights: a converted weights directory (architecture 'vgg16_fusion').
    folded: accepted for a uniform interface; VGG-16 has no batch norm.
  """
  checkpoint.check_width(width, weights)
  graph = vgg16_fusion_graph(frames, size, flow_stack, flow_stride, num_classes,
                             width)
  return build(graph, folded=folded, seed=seed, weights=weights,
               labels=labels_for(num_classes))


def vgg16_fusion_graph(frames: int = 5, size: int = 224, flow_stack: int = 10,
                       flow_stride: int | None = None, num_classes: int = 101,
                       width: float = 1.0) -> Graph:
  """The layer graph of `vgg16_fusion` (arguments as there)."""
  flow_stride = flow_stride or flow_stack
  flow_tower = vgg16_layers("flow/", "flow/data", width, pool5=False)
  pool5 = dict(kind="max", kernel=(frames, 2, 2), stride=(2, 2, 2), ceil_mode=False)
  flow_head = [Pool("flow/pool5", "flow/conv5_3", **pool5)] + _head(
      "flow/", "flow/pool5", width, num_classes)
  rgb_tower = vgg16_layers("rgb/", "rgb/data", width, pool5=False)
  fusion = [
      Concat("relu5_3_concat", ("rgb/conv5_3", "flow/conv5_3")),
      Conv("conv5_fusion", "relu5_3_concat", scaled(512, width), (3, 3, 3),
           pad=(1, 1, 1)),
      Pool("pool5", "conv5_fusion", **pool5),
  ] + _head("", "pool5", width, num_classes)
  nodes = flow_tower + flow_head + rgb_tower + fusion
  taps = (_tops(rgb_tower) + _tops(flow_tower) + _tops(fusion)
          + _tops(flow_head))
  streams, inputs = two_stream.fusion_streams(frames, size, flow_stack, flow_stride, _PIXELS)
  return Graph("vgg16_fusion", nodes=tuple(nodes), taps=tuple(taps),
               logits=("fc8",), streams=streams, inputs=inputs)


@registry.register("vgg16_two_stream")
def vgg16_two_stream(size: int = 224, flow_stack: int = 10, num_classes: int = 101,
                     streams: Sequence[str] = ("rgb", "flow"),
                     logit_weights: Sequence[float] | None = None,
                     width: float = 1.0, seed: int = 0,
                     weights: str | None = None, folded: bool = True) -> base.Model:
  """Late-fusion VGG-16 two-stream network (Caffe; see module docstring).

  Args:
    size: input height and width (224).
    flow_stack: flow frames stacked into the motion tower's input (10).
    num_classes: classes (101).
    streams: towers to build, a subset of ("rgb", "flow").
    logit_weights: per built tower, weights of its class scores in `logits`
      (default equal weights).
    width, seed, weights, folded: as for `vgg16_fusion`.
  """
  checkpoint.check_width(width, weights)
  graph = vgg16_two_stream_graph(size, flow_stack, num_classes, streams,
                                 logit_weights, width)
  return build(graph, folded=folded, seed=seed, weights=weights,
               labels=labels_for(num_classes))


def vgg16_two_stream_graph(size: int = 224, flow_stack: int = 10,
                           num_classes: int = 101,
                           streams: Sequence[str] = ("rgb", "flow"),
                           logit_weights: Sequence[float] | None = None,
                           width: float = 1.0) -> Graph:
  """The layer graph of `vgg16_two_stream` (arguments as there)."""
  specs = {"rgb": base.StreamSpec(1, size, size, 3, _PIXELS),
           "flow": base.StreamSpec(flow_stack, size, size, 2, _PIXELS)}

  def tower(s):
    layers = vgg16_layers(f"{s}/", f"{s}/data", width, ceil_mode=True)
    return layers + _head(f"{s}/", f"{s}/pool5", width, num_classes,
                          fc8="fc8-1" if s == "rgb" else "fc8")

  classifier = lambda s: "rgb/fc8-1" if s == "rgb" else "flow/fc8"
  return two_stream.late_fusion("vgg16_two_stream", streams, tower, classifier, specs,
                                logit_weights, {"rgb": 1.0, "flow": 1.0})


