"""C3D (Tran et al., ICCV 2015): a 3-D ConvNet on 16-frame RGB clips.

Layers as in `facebookarchive/C3D` `C3D-v1.0/.../c3d_sport1m_feature_extractor_frm.prototxt`
(copied in `../shared/fixtures/c3d_caffe/v1.0/`; `tests/test_zoo.py` checks
every layer against it): `conv1a` (64), `pool1`, `conv2a` (128), `pool2`,
`conv3a`, `conv3b` (256), `pool3`, `conv4a`, `conv4b` (512), `pool4`,
`conv5a`, `conv5b` (512), `pool5`, `fc6-1`, `fc7-1` (4096, ReLU) and
`fc8-1` (487 Sports-1M classes; 101 for the UCF101 fine-tuned net). All
convolutions are 3x3x3 with padding 1 in time and space; `pool1` is 1x2x2
(no temporal pooling), the others 2x2x2, all with Caffe's ceil rounding, so
a 16 x 112 x 112 clip gives a 1 x 4 x 4 x 512 `pool5` (8192 inputs to
`fc6-1`, as in the released model). `fc_suffix=""` names the classifier
`fc6` ... `fc8` as in the UCF101 fine-tuning prototxt.

The paper notes its method applies to any 3-D ConvNet; this is the classic
one. Input: `rgb` `(frames, size, size, 3)` RGB minus the mean clip (about
[-128, 127]; the Caffe net sees BGR, flipped inside).

Variable naming (for converters): `params['conv3a']['kernel']` is
`(T, H, W, C_in, C_out)` (Caffe's `(C_out, C_in, T, H, W)` transposed),
`bias` `(C_out,)`; `params['fc6-1']['kernel']` is `(4 * 4 * 512, 4096)` over
`pool5` flattened in (H, W, C) order (Caffe flattens (C, T, H, W): permute
the rows); `fc7-1`, `fc8-1` are `(C_in, C_out)`. C3D has no batch norm.
"""

from __future__ import annotations

from stviz_jax.models import base, checkpoint, registry
from stviz_jax.models.netgraph import (Conv, Dense, Graph, Pool, StreamInput,
                                       build, labels_for, scaled)

# (block, convolutions' output channels)
C3D_BLOCKS = ((1, ("conv1a", 64)), (2, ("conv2a", 128)),
              (3, ("conv3a", 256), ("conv3b", 256)),
              (4, ("conv4a", 512), ("conv4b", 512)),
              (5, ("conv5a", 512), ("conv5b", 512)))


def c3d_layers(bottom: str, width: float, num_classes: int,
               fc_suffix: str = "-1") -> list:
  """C3D layers (see module docstring)."""
  nodes, x = [], bottom
  for block, *convs in C3D_BLOCKS:
    for name, c in convs:
      nodes.append(Conv(name, x, scaled(c, width), (3, 3, 3), pad=(1, 1, 1)))
      x = name
    kernel = (1, 2, 2) if block == 1 else (2, 2, 2)
    nodes.append(Pool(f"pool{block}", x, "max", kernel))
    x = f"pool{block}"
  fc = scaled(4096, width)
  fc6, fc7, fc8 = (f"fc{i}{fc_suffix}" for i in (6, 7, 8))
  return nodes + [Dense(fc6, x, fc, relu=True), Dense(fc7, fc6, fc, relu=True),
                  Dense(fc8, fc7, num_classes)]


@registry.register("c3d")
def c3d(frames: int = 16, size: int = 112, num_classes: int = 487,
        fc_suffix: str = "-1", width: float = 1.0, seed: int = 0,
        weights: str | None = None, folded: bool = True) -> base.Model:
  """C3D (see module docstring).

  Args:
    frames: clip length (16; at least 8 for four temporal poolings).
    size: crop height and width (112).
    num_classes: 487 (Sports-1M) or e.g. 101 (UCF101).
    fc_suffix: "-1" names the classifier `fc6-1` ... `fc8-1` (Sports-1M
      feature extractor); "" gives `fc6` ... `fc8` (UCF101 fine-tuned net).
    width: channel multiplier (< 1 only for tiny random test models).
    seed: random initialisation seed (when `weights` is None).
    weights: converted weights directory (architecture 'c3d').
    folded: accepted for a uniform interface; C3D has no batch norm.
  """
  checkpoint.check_width(width, weights)
  return build(c3d_graph(frames, size, num_classes, fc_suffix, width),
               folded=folded, seed=seed, weights=weights,
               labels=labels_for(num_classes))


def c3d_graph(frames: int = 16, size: int = 112, num_classes: int = 487,
              fc_suffix: str = "-1", width: float = 1.0) -> Graph:
  """The layer graph of `c3d` (arguments as there)."""
  nodes = c3d_layers("data", width, num_classes, fc_suffix)
  return Graph("c3d", nodes=tuple(nodes), taps=tuple(n.name for n in nodes),
               logits=(nodes[-1].name,),
               streams={"rgb": base.StreamSpec(frames, size, size, 3,
                                               (-128.0, 127.0))},
               inputs=(StreamInput("rgb", "data", frames, bgr=True),))
