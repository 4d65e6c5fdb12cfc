"""Layer graphs in the style of a Caffe / MatConvNet net, executed by one Flax module.

The zoo's two-stream and 3-D networks are written as tuples of layer specs
(`Conv`, `Pool`, `Concat`, `Add`, `Dense`), each naming its input blob(s) and
producing one output blob, exactly as a prototxt does. `Net` runs them in
order, returns every blob listed in `taps` as a named feature, and keeps the
parameter tree in the original layer names:

* a layer name `a/b/c` nests as `params['a']['b']['c']` (so `'/'.join` of a
  parameter path gives back the Caffe name, and stream prefixes `rgb/`,
  `flow/` become the top-level collections of each tower);
* a convolution followed by batch norm is `Conv(name=conv, bn=bn_name)`:
  folded (the default, as the paper visualises) it is one convolution with a
  bias at `conv`; unfolded it is a convolution at `conv` (bias only if the
  original has one) and a Flax `BatchNorm` at `bn_name` (`scale`, `bias` in
  `params`; `mean`, `var` in `batch_stats`). `bn_pairs(nodes)` lists the
  pairs for `batchnorm.fold_tree`.

Zoo blobs are always `(N, T, H, W, C)`. A layer with a 2-D kernel `(kh, kw)`
runs on every time step independently (time folded into the batch), a 3-D
kernel `(kt, kh, kw)` runs across time, so 2-D two-stream towers, 3-D fusion
layers and C3D share one executor. Kernels are stored in Flax layout
`(kh, kw, C_in, C_out)` or `(kt, kh, kw, C_in, C_out)`; `Dense` kernels are
`(H * W * C_in, C_out)` over each time step's input flattened in `(H, W, C)`
order.

The Caffe and MatConvNet converters build into the same executor (one place
to fix a layer, and their convolutions and max pools take the fast paths of
`layers.Conv` / `conv_for` and `pooling.max_pool`): their blobs keep the
source's rank (`(N, H, W, C)` for image nets, `(N, C)` after a fully
connected layer), a `Net` may name a blob by several features (`tap_names`)
and return its logits as they are (`logits_reduce`), and their layers use
the nodes the zoo does not (`Activation`, `Affine`, `LRN`, `Eltwise`,
`Reshape`, `Constant`; grouped, dilated, asymmetrically padded `Conv`).

Pooling is one function, `pool`, for both rounding rules. Caffe's
(`ceil_mode=True`): the output has `ceil((n + 2p - k) / s) + 1` positions,
minus one if the last window would start in the padding; average pooling
divides by the window's overlap with the padded input `[-p, n + p)`. With
`ceil_mode=False` it is floor rounding (MatConvNet's VGG and ResNet pools),
and `count_pad=False` divides by the window's overlap with the input alone
(MatConvNet's average pooling).

Size (~820 lines): one concept, the layer graph - its node types (the zoo's
and the converted Caffe / MatConvNet layers'), the Flax module that runs
them, its parameter shapes and random initialisation; a node kind moved to
another module would put its meaning apart from its execution.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from stviz_jax.models import layers, pooling

_HE_INIT = nn.initializers.variance_scaling(2.0, "fan_in", "normal")


@dataclasses.dataclass(frozen=True)
class Conv:
  """Convolution (+ optional batch norm) (+ optional ReLU).

  Attributes:
    name: parameter name (nested by '/'), e.g. 'rgb/inception_3a/1x1'.
    bottom: input blob.
    features: output channels.
    kernel: `(kh, kw)` per frame or `(kt, kh, kw)` across time.
    stride: per kernel axis (default 1).
    pad: zero padding per kernel axis (default 0): `p` on both sides or
      `(lo, hi)` (MatConvNet's `[top bottom left right]`).
    bn: name of the batch-norm layer that follows (same parent path).
    relu: apply ReLU after (batch norm and) the convolution.
    bias: whether the original convolution has a bias.
    top: output blob (default `name`).
    groups: feature groups (Caffe `group`; kernel `(..., C_in / groups, C_out)`).
    dilation: kernel dilation per kernel axis (default 1).
  """

  name: str
  bottom: str
  features: int
  kernel: tuple[int, ...]
  stride: tuple[int, ...] | None = None
  pad: tuple[int | tuple[int, int], ...] | None = None
  bn: str | None = None
  relu: bool = True
  bias: bool = True
  top: str | None = None
  groups: int = 1
  dilation: tuple[int, ...] | None = None


@dataclasses.dataclass(frozen=True)
class Pool:
  """Max or average pooling (see `pool` and the module docstring).

  `kernel=()` pools globally over space (each frame's `H x W`), which is what
  the 7x7 / 8x8 head pools of the Caffe nets do at their native size. `pad`
  entries are `p` or `(lo, hi)`; `count_pad=False` divides an average by the
  window's in-input pixels only (MatConvNet) instead of Caffe's rule.
  """

  name: str
  bottom: str
  kind: str  # "max" | "avg"
  kernel: tuple[int, ...]
  stride: tuple[int, ...] | None = None
  pad: tuple[int | tuple[int, int], ...] | None = None
  ceil_mode: bool = True
  top: str | None = None
  count_pad: bool = True


@dataclasses.dataclass(frozen=True)
class Concat:
  """Concatenation of `bottoms`, in order, along `axis` (default channels)."""

  name: str
  bottoms: tuple[str, ...]
  top: str | None = None
  axis: int = -1


@dataclasses.dataclass(frozen=True)
class Add:
  """Element-wise sum of `bottoms`, each times its `coeffs` entry if given (+ ReLU)."""

  name: str
  bottoms: tuple[str, ...]
  relu: bool = False
  top: str | None = None
  coeffs: tuple[float, ...] = ()


@dataclasses.dataclass(frozen=True)
class Eltwise:
  """Element-wise product (`op='prod'`) or maximum (`op='max'`) of `bottoms`."""

  name: str
  bottoms: tuple[str, ...]
  op: str
  top: str | None = None


@dataclasses.dataclass(frozen=True)
class Dense:
  """Fully connected layer (+ ReLU).

  `frames=True`: on each time step's `(H, W, C)` input (zoo blobs); False:
  on each example's whole blob flattened channels last (converted nets).
  """

  name: str
  bottom: str
  features: int
  relu: bool = False
  top: str | None = None
  frames: bool = True


@dataclasses.dataclass(frozen=True)
class Activation:
  """A function of each value (over channels for 'softmax').

  `fn`: 'relu' (the redirectable `layers.relu`), 'leaky_relu' (`args =
  (slope,)`), 'sigmoid', 'tanh', 'abs', 'softmax', 'power' (`args =
  (power, scale, shift)`: Caffe's `(shift + scale * x) ** power`), or
  PyTorch's 'relu6', 'gelu', 'gelu_tanh', 'silu', 'hardswish', 'hardsigmoid'.
  """

  name: str
  bottom: str
  fn: str
  args: tuple[float, ...] = ()
  top: str | None = None


@dataclasses.dataclass(frozen=True)
class Affine:
  """Per-channel `scale * x + shift` of `channels` channels (params `scale`, `shift`).

  A batch norm or Scale layer that could not be folded into a convolution.
  """

  name: str
  bottom: str
  channels: int
  top: str | None = None


@dataclasses.dataclass(frozen=True)
class LRN:
  """Local response normalisation `x * (k + alpha * sum x^2) ** -beta`.

  The sum runs over `size` neighbouring channels (`region='across'`, the
  window starting `(size - 1) // 2` channels before) or over a `size x size`
  spatial window of each channel of an `(N, H, W, C)` blob (`'within'`), zero
  padded. `alpha` multiplies the sum as it is: Caffe's `alpha / size` (across)
  or `alpha / size ** 2` (within, with `k = 1`), MatConvNet's `alpha`.
  """

  name: str
  bottom: str
  size: int
  alpha: float
  beta: float
  k: float = 1.0
  region: str = "across"
  top: str | None = None


@dataclasses.dataclass(frozen=True)
class Reshape:
  """Each example reshaped to `shape`, in Caffe's channel-major order.

  Caffe reshapes `(C, [T,] H, W)` arrays, so the channels move to axis 1
  before and back to the end after (a 1-D `shape` is Caffe's Flatten).
  """

  name: str
  bottom: str
  shape: tuple[int, ...]
  top: str | None = None


@dataclasses.dataclass(frozen=True)
class Constant:
  """`value` in a blob of per-example shape `shape`, batch and dtype of `bottom`.

  A Caffe data layer's label top: only the (dropped) loss layers use it, but a
  Split or Gather in front of them still reads it.
  """

  name: str
  bottom: str
  shape: tuple[int, ...] = ()
  value: float = 0.0
  top: str | None = None


Node = (Conv | Pool | Concat | Add | Eltwise | Dense | Activation | Affine | LRN | Reshape
        | Constant)


def top(node: Node) -> str:
  return node.top or node.name


def bn_pairs(nodes: Sequence[Node]) -> dict[str, str]:
  """`{conv_path: bn_path}` of every convolution followed by batch norm."""
  return {n.name: n.bn for n in nodes if isinstance(n, Conv) and n.bn}


def _per_frame(fn, x, ndim):
  """Applies `fn` to `x`; an op over fewer axes sees time folded into the batch.

  A blob with `ndim` axes between batch and channels (`(N, H, W, C)` for a
  2-D kernel, `(N, T, H, W, C)` for a 3-D one) goes to `fn` as it is; a 2-D
  op on `(N, T, H, W, C)` runs on each time step.
  """
  if x.ndim == ndim + 2:
    return fn(x)
  n, t = x.shape[:2]
  y = fn(x.reshape((n * t,) + x.shape[2:]))
  return y.reshape((n, t) + y.shape[1:])


def _pairs(pad: Sequence[int | tuple[int, int]]) -> list[tuple[int, int]]:
  """Padding entries `p` or `(lo, hi)` as `(lo, hi)` pairs."""
  return [(p, p) if isinstance(p, (int, np.integer)) else (int(p[0]), int(p[1]))
          for p in pad]


def pool_size(n: int, k: int, s: int, pad: int | tuple[int, int], ceil_mode: bool) -> int:
  """Windows of pooling `k` every `s` over `n` positions padded by `pad` (see `pool`)."""
  lo, hi = _pairs((pad,))[0]
  if not ceil_mode:
    return (n + lo + hi - k) // s + 1
  o = int(math.ceil((n + lo + hi - k) / s)) + 1
  # Caffe drops a last window that would start in the (low-side) padding.
  if lo > 0 and (o - 1) * s >= n + lo:
    o -= 1
  return o


def pool(x: jax.Array, kind: str, kernel: Sequence[int], stride: Sequence[int],
         pad: Sequence[int | tuple[int, int]], ceil_mode: bool,
         count_pad: bool = True) -> jax.Array:
  """Caffe/MatConvNet pooling of `x (B, *spatial, C)` over its spatial axes.

  Args:
    x: `(B, *spatial, C)`.
    kind: 'max' or 'avg'.
    kernel, stride: one entry per spatial axis.
    pad: per spatial axis `p` or `(lo, hi)`.
    ceil_mode: Caffe's rounding (`ceil((n + lo + hi - k) / s) + 1` windows,
      minus a last one that would start in the padding); False: floor.
    count_pad: an average divides by the window's overlap with the padded
      input `[-lo, n + hi)` (Caffe); False: with the input `[0, n)` alone
      (MatConvNet). Neither counts what ceil rounding adds beyond `hi`.

  Returns:
    `(B, *out, C)`.
  """
  spatial = x.shape[1:-1]
  pads = _pairs(pad)
  lo_hi, out, counts = [], [], []
  for n, k, s, (lo, hi) in zip(spatial, kernel, stride, pads):
    o = pool_size(n, k, s, (lo, hi), ceil_mode)
    if o < 1:
      raise ValueError(f"pooling window {tuple(kernel)} is larger than its "
                       f"input {tuple(spatial)}")
    out.append(o)
    lo_hi.append((lo, max((o - 1) * s + k - n - lo, 0)))
    start = np.arange(o) * s - lo
    first, end = (-lo, n + hi) if count_pad else (0, n)
    counts.append(np.minimum(start + k, end) - np.maximum(start, first))
  crop = (slice(None),) + tuple(slice(0, o) for o in out) + (slice(None),)
  if kind == "max":
    return pooling.max_pool(x, kernel, stride, lo_hi)[crop]
  if kind != "avg":
    raise ValueError(f"unknown pooling {kind!r}; valid: 'max', 'avg'")
  window = (1,) + tuple(kernel) + (1,)
  strides = (1,) + tuple(stride) + (1,)
  padding = ((0, 0),) + tuple(lo_hi) + ((0, 0),)
  total = jax.lax.reduce_window(x, 0.0, jax.lax.add, window, strides, padding)
  count = counts[0].astype(np.float32)
  for c in counts[1:]:
    count = np.multiply.outer(count, c.astype(np.float32))
  return total[crop] / jnp.asarray(count)[None, ..., None]


def lrn(x: jax.Array, size: int, alpha: float, beta: float, k: float = 1.0,
        region: str = "across") -> jax.Array:
  """Local response normalisation of channels-last `x` (see `LRN`)."""
  lo = (size - 1) // 2
  if region == "across":
    window = (1,) * (x.ndim - 1) + (size,)
    pads = [(0, 0)] * (x.ndim - 1) + [(lo, size - 1 - lo)]
  elif region == "within":
    if x.ndim != 4:
      raise ValueError(f"LRN within channels needs an (N, H, W, C) blob, got {x.shape}")
    window = (1, size, size, 1)
    pads = [(0, 0), (lo, size - 1 - lo), (lo, size - 1 - lo), (0, 0)]
  else:
    raise ValueError(f"unknown LRN region {region!r}; valid: 'across', 'within'")
  s = jax.lax.reduce_window(x * x, 0.0, jax.lax.add, window, (1,) * x.ndim, pads)
  return x * (k + alpha * s) ** (-beta)


def activation(x: jax.Array, fn: str, args: Sequence[float] = ()) -> jax.Array:
  """`Activation` node's function (see there)."""
  if fn == "relu":
    return layers.relu(x)
  if fn == "leaky_relu":
    return jnp.where(x > 0, x, args[0] * x)
  if fn == "power":
    power, scale, shift = args
    return (shift + scale * x) ** power
  simple = {"sigmoid": jax.nn.sigmoid, "tanh": jnp.tanh, "abs": jnp.abs,
            "softmax": lambda v: jax.nn.softmax(v, axis=-1),
            # PyTorch's (converted nets, `stviz_jax.models.torch_graph`).
            "relu6": lambda v: jnp.minimum(layers.relu(v), 6.0),
            "gelu": lambda v: jax.nn.gelu(v, approximate=False),
            "gelu_tanh": lambda v: jax.nn.gelu(v, approximate=True),
            "silu": jax.nn.silu, "hardswish": jax.nn.hard_swish,
            "hardsigmoid": jax.nn.hard_sigmoid}
  if fn not in simple:
    raise ValueError(f"unknown activation {fn!r}; valid: relu, leaky_relu, power, "
                     + ", ".join(simple))
  return simple[fn](x)


def _channel_major(x, to_caffe: bool):
  """Channels last <-> Caffe's channels at axis 1 (vectors `(N, C)` unchanged)."""
  if x.ndim <= 2:
    return x
  return jnp.moveaxis(x, -1, 1) if to_caffe else jnp.moveaxis(x, 1, -1)


@dataclasses.dataclass(frozen=True)
class _Settings:
  """What every layer of one `Net` shares (see `Net`)."""

  folded: bool
  bn_eps: float
  precision: Any


class _Block(nn.Module):
  """The layers under one name prefix (`depth` path components deep)."""

  nodes: tuple
  depth: int
  settings: _Settings

  @nn.compact
  def __call__(self, blobs: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
    return _execute(self.nodes, self.depth, self.settings, blobs)


def _execute(nodes, depth, settings, blobs):
  """Runs `nodes` in the current Flax scope; returns the blobs they produce.

  Layers are created here, inside the calling module's compact method, so a
  top-level name is a top-level parameter name and a prefix `a/` becomes a
  `_Block` named `a`.
  """
  blobs = dict(blobs)
  new = {}
  for kind, key, group in _groups(nodes, depth):
    if kind == "block":
      out = _Block(group, depth + 1, settings, name=key)(blobs)
    else:
      out = {top(group): _apply(group, depth, settings, blobs)}
    blobs.update(out)
    new.update(out)
  return new


def _apply(node, depth, settings, blobs):
  leaf = lambda path: path.split("/")[depth]
  if isinstance(node, Conv):
    x = blobs[node.bottom]
    nd = len(node.kernel)
    stride = node.stride or (1,) * nd
    pad = node.pad or (0,) * nd
    conv = layers.Conv(node.features, node.kernel, stride, padding=_pairs(pad),
                       kernel_dilation=node.dilation, feature_group_count=node.groups,
                       use_bias=settings.folded or node.bias or not node.bn,
                       kernel_init=_HE_INIT, precision=settings.precision,
                       name=leaf(node.name),
                       conv_general_dilated=layers.conv_for(top(node)))
    y = _per_frame(conv, x, nd)
    if node.bn and not settings.folded:
      y = nn.BatchNorm(use_running_average=True, epsilon=settings.bn_eps,
                       name=leaf(node.bn))(y)
    return layers.relu(y) if node.relu else y
  if isinstance(node, Pool):
    x = blobs[node.bottom]
    kernel = node.kernel or x.shape[-3:-1]  # () = global over space
    nd = len(kernel)
    stride = node.stride or kernel
    pad = node.pad or (0,) * nd
    fn = lambda v: pool(v, node.kind, kernel, stride, pad, node.ceil_mode,
                        node.count_pad)
    return _per_frame(fn, x, nd)
  if isinstance(node, Concat):
    return jnp.concatenate([blobs[b] for b in node.bottoms], axis=node.axis)
  if isinstance(node, Add):
    if node.coeffs:
      y = sum(c * blobs[b] for c, b in zip(node.coeffs, node.bottoms))
    else:
      y = sum(blobs[b] for b in node.bottoms)
    return layers.relu(y) if node.relu else y
  if isinstance(node, Eltwise):
    combine = {"prod": jnp.multiply, "max": jnp.maximum}.get(node.op)
    if combine is None:
      raise ValueError(f"layer {node.name!r}: unknown Eltwise op {node.op!r}; "
                       "valid: 'prod', 'max' (a sum is `Add`)")
    y = blobs[node.bottoms[0]]
    for b in node.bottoms[1:]:
      y = combine(y, blobs[b])
    return y
  if isinstance(node, Dense):
    x = blobs[node.bottom]
    if not node.frames:
      x = x.reshape(x.shape[0], -1)
    elif x.ndim == 5:
      x = x.reshape(x.shape[:2] + (-1,))
    y = nn.Dense(node.features, kernel_init=_HE_INIT, precision=settings.precision,
                 name=leaf(node.name))(x)
    return layers.relu(y) if node.relu else y
  if isinstance(node, Activation):
    return activation(blobs[node.bottom], node.fn, node.args)
  if isinstance(node, Affine):
    x = blobs[node.bottom]
    scope = _AffineParams(node.channels, name=leaf(node.name))
    scale, shift = scope()
    return x * scale + shift
  if isinstance(node, LRN):
    return lrn(blobs[node.bottom], node.size, node.alpha, node.beta, node.k, node.region)
  if isinstance(node, Reshape):
    x = _channel_major(blobs[node.bottom], to_caffe=True)
    return _channel_major(x.reshape((x.shape[0],) + tuple(node.shape)), to_caffe=False)
  if isinstance(node, Constant):
    x = blobs[node.bottom]
    return jnp.full((x.shape[0],) + tuple(node.shape), node.value, x.dtype)
  raise TypeError(f"unknown layer spec {node!r}")


class _AffineParams(nn.Module):
  """The `scale` (ones) and `shift` (zeros) of an `Affine` node."""

  channels: int

  @nn.compact
  def __call__(self):
    return (self.param("scale", nn.initializers.ones, (self.channels,)),
            self.param("shift", nn.initializers.zeros, (self.channels,)))


def _groups(nodes, depth):
  """Splits nodes into consecutive runs: ('block', prefix, nodes) or ('node', name, node)."""
  out, seen = [], set()
  for node in nodes:
    parts = node.name.split("/")
    if len(parts) > depth + 1:
      key = parts[depth]
      if out and out[-1][0] == "block" and out[-1][1] == key:
        out[-1] = ("block", key, out[-1][2] + (node,))
        continue
      if key in seen:
        raise ValueError(f"layers under {key!r} must be consecutive "
                         f"(found {node.name!r} after other layers)")
      seen.add(key)
      out.append(("block", key, (node,)))
    else:
      out.append(("node", parts[depth], node))
  return out


class Net(nn.Module):
  """A layer graph with stream inputs, taps and logits.

  Attributes:
    nodes: the layers in execution order.
    taps: blobs returned as features, in network order.
    logits: blob(s) whose mean over time (or other `logits_reduce`), summed
      over the listed blobs with `logit_weights`, are the logits.
    folded: batch norm folded into the convolutions (see module docstring).
    bn_eps: epsilon of the unfolded batch norm.
    inputs: per stream, how it becomes a blob (see `prepare_inputs`).
    tap_names: the feature name of each of `taps` (default: the blob names;
      converted nets name one blob several times, e.g. a convolution and the
      batch norm folded into it).
    logits_reduce: how the `logits` blobs become logits: 'mean' over time and
      space (the zoo heads), 'none' (as they are: a Caffe net's last layer)
      or 'squeeze' (1 x 1 spatial axes dropped: MatConvNet's convolutional
      classifiers).
    precision: of the convolutions and dense layers (`jax.lax.Precision`;
      the converters ask for HIGHEST to match Caffe / MatConvNet outputs).

  `__call__(inputs)` takes `{stream: array}`, or the array alone for a net of
  one input, and returns `(logits, {feature name: array})`.
  """

  nodes: tuple
  taps: tuple[str, ...]
  logits: tuple[str, ...]
  logit_weights: tuple[float, ...] = ()
  folded: bool = True
  bn_eps: float = 1e-5
  inputs: tuple = ()
  tap_names: tuple[str, ...] = ()
  logits_reduce: str = "mean"
  precision: Any = None

  @nn.compact
  def __call__(self, inputs: Mapping[str, jax.Array] | jax.Array):
    if not isinstance(inputs, Mapping):
      if len(self.inputs) != 1:
        raise ValueError(f"a net of {len(self.inputs)} inputs takes a dict "
                         f"{{stream: array}}, not one array")
      inputs = {self.inputs[0].stream: inputs}
    blobs = prepare_inputs(inputs, self.inputs)
    settings = _Settings(self.folded, self.bn_eps, self.precision)
    blobs.update(_execute(self.nodes, 0, settings, blobs))
    if self.logits_reduce not in _LOGIT_REDUCTIONS:
      raise ValueError(f"unknown logits_reduce {self.logits_reduce!r}; valid: "
                       + ", ".join(_LOGIT_REDUCTIONS))
    reduce = _LOGIT_REDUCTIONS[self.logits_reduce]
    weights = self.logit_weights or (1.0,) * len(self.logits)
    logits = sum(w * reduce(blobs[b]) for w, b in zip(weights, self.logits))
    names = self.tap_names or self.taps
    feats = {name: _squeeze_time(blobs[t]) for name, t in zip(names, self.taps)}
    return logits, feats


def _time_mean(x):
  """Logits `(N, T, [1, 1,] K)` averaged over time and space -> `(N, K)`."""
  return x.reshape(x.shape[0], -1, x.shape[-1]).mean(axis=1)


def _squeeze_spatial(x):
  """`(N, 1, 1, K)` -> `(N, K)`; any other blob as it is."""
  if x.ndim == 4 and x.shape[1:3] == (1, 1):
    return x[:, 0, 0]
  return x


_LOGIT_REDUCTIONS = {"mean": _time_mean, "none": lambda x: x, "squeeze": _squeeze_spatial}


def _squeeze_time(x):
  # A per-clip vector (N, 1, K) is reported as (N, K): a global layer.
  if x.ndim == 3 and x.shape[1] == 1:
    return x[:, 0]
  return x


@dataclasses.dataclass(frozen=True)
class StreamInput:
  """How stream `stream` becomes blob `blob` (`(N, T, H, W, C)`).

  `flow_stack > 0`: the stream is a flow video `(N, F, H, W, 2)` and time step
  t gets frames `t * flow_stride ... t * flow_stride + flow_stack - 1` stacked
  as channels `(u_1, v_1, u_2, v_2, ...)` (the interleaved order of the
  two-stream papers). `bgr`: reverse the channel order (Caffe BGR models are
  fed RGB).
  """

  stream: str
  blob: str
  steps: int = 1
  flow_stack: int = 0
  flow_stride: int = 0
  bgr: bool = False


def prepare_inputs(inputs: Mapping[str, jax.Array], specs) -> dict[str, jax.Array]:
  blobs = {}
  for s in specs:
    if s.stream not in inputs:
      raise ValueError(f"missing input stream {s.stream!r}; got {sorted(inputs)}")
    x = inputs[s.stream]
    if s.flow_stack:
      x = stack_flow(x, s.steps, s.flow_stack, s.flow_stride or s.flow_stack)
    if s.bgr:
      x = x[..., ::-1]
    blobs[s.blob] = x
  return blobs


def stack_flow(flow: jax.Array, steps: int, stack: int, stride: int) -> jax.Array:
  """Flow video `(N, F, H, W, 2)` -> stacks `(N, steps, H, W, 2 * stack)`.

  Time step t holds frames `t * stride + l`, l = 0..stack-1, interleaved
  `(u_l, v_l)`; `F` must be `(steps - 1) * stride + stack`.
  """
  n, f, h, w, c = flow.shape
  need = (steps - 1) * stride + stack
  if f != need or c != 2:
    raise ValueError(f"flow input has shape {flow.shape[1:]}; expected "
                     f"({need}, H, W, 2) for {steps} stacks of {stack} frames "
                     f"every {stride} frames")
  idx = np.arange(steps)[:, None] * stride + np.arange(stack)[None]
  x = flow[:, idx]  # (N, steps, stack, H, W, 2)
  x = jnp.moveaxis(x, 2, 4)  # (N, steps, H, W, stack, 2)
  return x.reshape(n, steps, h, w, 2 * stack)


def scaled(channels: int, width: float) -> int:
  """Channel count under a width multiplier (for tiny test models)."""
  return max(1, int(round(channels * width)))


def randomize_batchnorm(variables: dict, nodes: Sequence[Node], seed: int) -> dict:
  """Gives every unfolded batch norm random statistics and affine parameters.

  A freshly initialised Flax BatchNorm is the identity (mean 0, var 1, scale
  1, bias 0); random values make "folded equals unfolded" a real test and a
  random model's batch norm non-trivial.
  """
  rng = np.random.default_rng(seed + 7919)  # NumPy: no compile per BN shape
  params = _as_dict(variables["params"])
  stats = _as_dict(variables["batch_stats"])
  for conv, bn in bn_pairs(nodes).items():
    path = bn.split("/")
    p, st = params, stats
    for k in path[:-1]:
      p, st = p[k], st[k]
    c = st[path[-1]]["mean"].shape[-1]
    st[path[-1]] = {"mean": rng.normal(0.0, 0.5, c).astype(np.float32),
                    "var": rng.uniform(0.5, 2.0, c).astype(np.float32)}
    p[path[-1]] = {"scale": rng.uniform(0.5, 1.5, c).astype(np.float32),
                   "bias": rng.normal(0.0, 0.2, c).astype(np.float32)}
  return {"params": params, "batch_stats": stats}


def _as_dict(tree):
  if isinstance(tree, Mapping):
    return {k: _as_dict(v) for k, v in tree.items()}
  return tree


def init_variables(graph: "Graph", seed: int) -> dict:
  """Random unfolded variables: He-normal kernels, zero biases, identity BN.

  Drawn with NumPy from the parameter shapes (`jax.eval_shape` of the Flax
  init), so building a 150-layer model compiles nothing and never runs a
  forward pass.
  """
  shapes = jax.eval_shape(graph.module(folded=False).init, jax.random.PRNGKey(0),
                          graph.dummy_inputs())
  rng = np.random.default_rng(seed)

  def make(path, leaf):
    name = path[-1].key
    collection = path[0].key
    if collection == "params" and name == "kernel":
      fan_in = int(np.prod(leaf.shape[:-1]))
      return (rng.standard_normal(leaf.shape, np.float32)
              * np.float32(np.sqrt(2.0 / fan_in)))
    if name in ("scale", "var"):
      return np.ones(leaf.shape, np.float32)
    return np.zeros(leaf.shape, np.float32)  # biases, BN offsets and means

  return _as_dict(jax.tree_util.tree_map_with_path(make, shapes))


@dataclasses.dataclass(frozen=True)
class Graph:
  """A zoo network without weights: layers, taps, logits and inputs.

  Attributes:
    name: registry / architecture name (checked against converted weights).
    nodes: the layers in execution order.
    taps: blobs exposed as features, in network order.
    logits: blob(s) averaged over time (weighted by `logit_weights` and
      summed over blobs) into the logits.
    streams: input stream specs.
    inputs: per stream, how its input becomes a blob.
    logit_weights: weights of the `logits` blobs (default all 1).
    bn_eps: epsilon of the batch norms.
  """

  name: str
  nodes: tuple
  taps: tuple
  logits: tuple
  streams: Mapping[str, Any]
  inputs: tuple
  logit_weights: tuple = ()
  bn_eps: float = 1e-5

  def module(self, folded: bool = True) -> Net:
    return Net(nodes=tuple(self.nodes), taps=tuple(self.taps),
               logits=tuple(self.logits), logit_weights=tuple(self.logit_weights),
               folded=folded, bn_eps=self.bn_eps, inputs=tuple(self.inputs))

  def dummy_inputs(self, batch: int = 1) -> dict:
    return {k: jax.ShapeDtypeStruct((batch,) + s.shape, jnp.float32)
            for k, s in self.streams.items()}

  def shapes(self, folded: bool = True):
    """`(variable shapes, feature shapes)` without computing anything.

    Feature shapes are per example (batch axis dropped), `logits` included.
    """
    module = self.module(folded)
    dummy = self.dummy_inputs()
    variables = jax.eval_shape(module.init, jax.random.PRNGKey(0), dummy)
    logits, feats = jax.eval_shape(module.apply, variables, dummy)
    out = {k: tuple(v.shape[1:]) for k, v in feats.items()}
    out["logits"] = tuple(logits.shape[1:])
    return jax.tree.map(lambda v: tuple(v.shape), variables), out


def build(graph: Graph, *, folded: bool = True, seed: int = 0,
          weights: str | None = None, labels=None):
  """Builds a registered zoo model from its layer graph.

  Random weights come from `seed` (He-normal kernels, zero biases, random
  batch-norm statistics); `weights` is a converted checkpoint whose
  architecture must be `graph.name`, with batch norm folded (no
  `batch_stats`) or not (then it is folded here unless `folded=False`).
  """
  from stviz_jax.models import base, batchnorm, checkpoint

  pairs = bn_pairs(graph.nodes)
  if weights:
    variables = _as_dict(checkpoint.restore_for(weights, graph.name))
    has_bn = "batch_stats" in variables
    if has_bn and folded:
      variables = batchnorm.fold_tree(variables, pairs, graph.bn_eps)
    elif pairs and not has_bn and not folded:
      raise ValueError(f"{weights}: weights for {graph.name!r} have batch norm "
                       "folded already; load them with folded=True")
    _check_tree(weights, variables, graph.shapes(folded)[0])
  else:
    variables = init_variables(graph, seed)
    if pairs:
      variables = randomize_batchnorm(variables, graph.nodes, seed)
      if folded:
        variables = batchnorm.fold_tree(variables, pairs, graph.bn_eps)
  return base.wrap(graph.module(folded), variables, graph.streams,
                   layers=tuple(graph.taps) + (base.LOGITS,), name=graph.name,
                   labels=labels)


def _check_tree(path: str, variables, expected) -> None:
  """Raises naming the tensors whose names or shapes differ from the graph's."""
  def flat(tree, shape):
    leaves = jax.tree_util.tree_flatten_with_path(
        tree, is_leaf=lambda x: isinstance(x, tuple))[0]
    return {"/".join(str(getattr(k, "key", k)) for k in p): shape(v)
            for p, v in leaves}

  got = flat(variables, lambda v: tuple(np.shape(v)))
  want = flat(expected, tuple)  # `Graph.shapes` leaves are shapes already
  problems = [f"missing {k} {want[k]}" for k in sorted(set(want) - set(got))]
  problems += [f"unexpected {k} {got[k]}" for k in sorted(set(got) - set(want))]
  problems += [f"{k}: shape {got[k]}, expected {want[k]}"
               for k in sorted(set(got) & set(want)) if got[k] != want[k]]
  if problems:
    raise ValueError(f"{path}: {len(problems)} tensor(s) do not fit: "
                     + "; ".join(problems[:8]) + ("; ..." if len(problems) > 8 else ""))


def ucf101_labels() -> tuple[str, ...]:
  """The 101 UCF101 class names in the models' output order (`classInd.txt`)."""
  import importlib.resources
  text = (importlib.resources.files("stviz_jax") / "assets" /
          "ucf101_classInd.txt").read_text()
  rows = [line.split() for line in text.splitlines() if line.strip()]
  if [int(i) for i, _ in rows] != list(range(1, 102)):
    raise ValueError("stviz_jax/assets/ucf101_classInd.txt: expected classes 1..101")
  return tuple(name for _, name in rows)


def labels_for(num_classes: int) -> tuple[str, ...] | None:
  """Class names of a UCF101 head (101 outputs); None for other heads."""
  return ucf101_labels() if num_classes == 101 else None
