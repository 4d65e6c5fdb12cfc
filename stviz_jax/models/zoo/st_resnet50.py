"""Spatiotemporal ResNet-50 (Feichtenhofer, Pinz & Wildes, NIPS 2016).

Facts from the MatConvNet release `feichtenhofer/st-resnet`
(`STResNet_stage1.m`, `STResNet_stage2.m` at a8e6222):

* two ResNet-50 towers (Caffe / MatConvNet layer names): the appearance tower
  `rgb/` on one RGB frame per time step, the motion tower `flow/` on a stack
  of `flow_stack` (10) flow frames per time step (20 channels
  `u_1, v_1, ..., u_10, v_10`, `opts.inputdim = [224 224 20]`).
* motion-to-appearance residual connections at `res2a`, `res3a`, `res4a`,
  `res5a` (`fusionLayer = {'res2a_relu','res2a'; ...}`, `doSum`): the
  residual branch of the next appearance unit (`res2b_branch2a`, ...) takes
  `res2a` (appearance, before its ReLU) + `relu(res2a)` (motion); its
  identity shortcut keeps the appearance `relu(res2a)`. The appearance tower
  is therefore the paper's "fusion stream", the motion tower is kept whole.
* temporal filters (`addConv3D`, `dagnn.ConvTime`): every 1x1 stride-1
  `*b_branch2a` and `*b_branch2c` convolution (`res2b` ... `res5b`, both
  towers) becomes a 3x1x1 (T, H, W) convolution, pad 1 in time (initialised
  from the 1x1 filter / 3).
* stage 2: a temporal max pooling over 5 time steps, stride 2
  (`res5c_relu_pool`), after `res5c` in each tower, then the global 7x7
  average `pool5` and the classifier `prediction` per time step. `logits`
  is the fusion (appearance) tower's `prediction` averaged over time; the
  motion tower's scores are the tap `flow/prediction`.

Bottleneck units: `res{s}{u}_branch2a` (1x1; stride 2 in the first unit of
stages 3-5, as in Caffe ResNet-50), `_branch2b` (3x3), `_branch2c` (1x1, no
ReLU), projection `res{s}a_branch1`; `res{s}{u}` is the unit's output after
its ReLU. `pool1` is Caffe's ceil-mode 3x3/2 max pool (MatConvNet pads it
[0 1 0 1], the same thing at 112 pixels).

Variable naming (for converters): `params[tower][conv]['kernel']` with tower
`rgb` / `flow` (MatConvNet `_spatial` / `_temporal`); `conv1` also has a
`bias`, the other convolutions have none before folding. Each batch norm is
named as in Caffe, `bn_conv1`, `bn2a_branch2a`, ... (MatConvNet
`bn2a_branch2a_mult/_bias/_moments`; Caffe `BatchNorm` + `Scale`
`scale2a_branch2a` merged): unfolded, `params[tower][bn]` has `scale`, `bias`
and `batch_stats[tower][bn]` has `mean`, `var` (eps 1e-5); folded (default),
the conv gets the folded `kernel` and a `bias`. Temporal kernels are
`(3, 1, 1, C_in, C_out)`, 2-D ones `(kh, kw, C_in, C_out)`, `prediction` is
`(2048, classes)`.

Inputs: `rgb` `(frames, size, size, 3)` (RGB minus mean), `flow`
`((frames - 1) * flow_stride + flow_stack, size, size, 2)` (8-bit flow
minus 128), as for `vgg16_fusion`.
"""

from __future__ import annotations

from stviz_jax.models import base, checkpoint, registry
from stviz_jax.models.zoo import two_stream
from stviz_jax.models.netgraph import (Add, Conv, Dense, Graph, Pool,
                                       build, labels_for, scaled)

# (stage, units, bottleneck channels, output channels, first stride)
RESNET50_STAGES = ((2, 3, 64, 256, 1), (3, 4, 128, 512, 2),
                   (4, 6, 256, 1024, 2), (5, 3, 512, 2048, 2))
FUSION_UNITS = ("res2a", "res3a", "res4a", "res5a")
_PIXELS = (-128.0, 127.0)


def resnet50_layers(prefix: str, bottom: str, width: float, frames: int,
                    num_classes: int, fuse_from: str | None = None) -> list:
  """One ResNet-50 tower with temporal `*b_branch2a/2c` filters and the stage-2 head.

  `fuse_from`: the other tower's prefix; its `res{2..5}a` outputs are added
  into this tower's next residual branch (the ST-ResNet connections).
  """
  p = prefix
  nodes = [
      Conv(f"{p}conv1", bottom, scaled(64, width), (7, 7), (2, 2), (3, 3),
           bn=f"{p}bn_conv1", bias=True),
      Pool(f"{p}pool1", f"{p}conv1", "max", (3, 3), (2, 2), ceil_mode=True),
  ]
  x = f"{p}pool1"
  for stage, units, mid, out, first_stride in RESNET50_STAGES:
    for u in range(units):
      letter = "abcdef"[u]
      unit = f"res{stage}{letter}"
      bn = f"{p}bn{stage}{letter}"
      stride = (first_stride,) * 2 if u == 0 else (1, 1)
      branch_in = x
      if u == 1 and fuse_from and f"res{stage}a" in FUSION_UNITS:
        branch_in = f"{p}res{stage}a_fusion"
        nodes.append(Add(branch_in, (f"{p}res{stage}a_prerelu",
                                     f"{fuse_from}res{stage}a")))
      if u == 0:
        shortcut = f"{p}{unit}_branch1"
        nodes.append(Conv(shortcut, x, scaled(out, width), (1, 1), stride,
                          bn=f"{bn}_branch1", relu=False, bias=False))
      else:
        shortcut = x
      temporal = u == 1  # the 'b' units get 3x1x1 temporal filters
      k1, pad1 = ((3, 1, 1), (1, 0, 0)) if temporal else ((1, 1), None)
      nodes += [
          Conv(f"{p}{unit}_branch2a", branch_in, scaled(mid, width), k1,
               (1,) + stride if temporal else stride, pad1,
               bn=f"{bn}_branch2a", bias=False),
          Conv(f"{p}{unit}_branch2b", f"{p}{unit}_branch2a", scaled(mid, width),
               (3, 3), pad=(1, 1), bn=f"{bn}_branch2b", bias=False),
          Conv(f"{p}{unit}_branch2c", f"{p}{unit}_branch2b", scaled(out, width),
               k1, pad=pad1, bn=f"{bn}_branch2c", relu=False, bias=False),
          Add(f"{p}{unit}_sum", (shortcut, f"{p}{unit}_branch2c"),
              top=f"{p}{unit}_prerelu"),
          Add(f"{p}{unit}", (f"{p}{unit}_prerelu",), relu=True),
      ]
      x = f"{p}{unit}"
  t_pool = min(5, frames)
  nodes += [
      Pool(f"{p}res5c_relu_pool", x, "max", (t_pool, 1, 1), (2, 1, 1),
           ceil_mode=False),
      Pool(f"{p}pool5", f"{p}res5c_relu_pool", "avg", ()),
      Dense(f"{p}prediction", f"{p}pool5", num_classes),
  ]
  return nodes


def _taps(nodes) -> list[str]:
  hidden = ("_prerelu", "_fusion")
  return [n.top or n.name for n in nodes
          if not any((n.top or n.name).endswith(h) for h in hidden)]


@registry.register("st_resnet50")
def st_resnet50(frames: int = 5, size: int = 224, flow_stack: int = 10,
                flow_stride: int | None = None, num_classes: int = 101,
                width: float = 1.0, seed: int = 0, weights: str | None = None,
                folded: bool = True) -> base.Model:
  """Spatiotemporal ResNet-50 (see module docstring).

  Args:
    frames: time steps T (5 in the first training stage, 11 in the second).
    size: input height and width (224).
    flow_stack: flow frames per stack (10).
    flow_stride: flow frames between consecutive stacks (default `flow_stack`).
    num_classes: classes of `prediction` (UCF101: 101).
    width: channel multiplier (< 1 only for tiny random test models).
    seed: random initialisation seed (when `weights` is None).
    weights: converted weights directory (architecture 'st_resnet50').
    folded: fold batch norm into the convolutions (default, as the paper).
  """
  checkpoint.check_width(width, weights)
  graph = st_resnet50_graph(frames, size, flow_stack, flow_stride, num_classes,
                            width)
  return build(graph, folded=folded, seed=seed, weights=weights,
               labels=labels_for(num_classes))


def st_resnet50_graph(frames: int = 5, size: int = 224, flow_stack: int = 10,
                      flow_stride: int | None = None, num_classes: int = 101,
                      width: float = 1.0) -> Graph:
  """The layer graph of `st_resnet50` (arguments as there)."""
  flow_stride = flow_stride or flow_stack
  flow = resnet50_layers("flow/", "flow/data", width, frames, num_classes)
  rgb = resnet50_layers("rgb/", "rgb/data", width, frames, num_classes,
                        fuse_from="flow/")
  streams, inputs = two_stream.fusion_streams(frames, size, flow_stack, flow_stride, _PIXELS)
  return Graph("st_resnet50", nodes=tuple(flow + rgb),
               taps=tuple(_taps(rgb) + _taps(flow)), logits=("rgb/prediction",),
               streams=streams, inputs=inputs, bn_eps=1e-5)
