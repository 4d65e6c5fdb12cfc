"""Caffe nets (`prototxt` + `caffemodel`) as stviz_jax models, without Caffe.

Three pieces, each usable on its own:

* `read_caffemodel(path)`: the binary weights, read with the project's own
  protobuf wire reader (`converters.wire`). Both layouts are understood: the
  current `layer` (field 100, blob shapes in `BlobShape.dim`) and the legacy V1
  `layers` (field 2, blob shapes as num/channels/height/width, so biases come
  as `(1, 1, 1, C)` and InnerProduct weights as `(1, 1, out, in)`), plus the
  C3D-v1.0 blob (num/channels/length/height/width, data in field 6).
* `parse_net(prototxt)`: the text graph, read leniently (`converters.prototxt`)
  so the BVLC, yjxiong action-recognition, C3D v1.0 and C3D v1.1 dialects all
  parse; layers of the TRAIN phase and loss/accuracy layers are dropped.
* `Graph` / `CaffeNet`: the layers as `stviz_jax.models.netgraph` layers run
  by its `Net` (the zoo's executor, with its fast convolution and pooling
  paths) in stviz_jax layout (channels last, time before space), with
  Caffe's semantics kept exactly: pooling output sizes rounded up (ceil) and
  clipped as Caffe clips them, average pooling dividing by the window clipped
  to the padded input, LRN across or within channels, the channel-major
  flatten in front of an InnerProduct folded into its kernel, and every BN /
  BatchNorm / Scale that directly follows a convolution or InnerProduct
  folded into it.

`load(prototxt, caffemodel)` puts them together into a `stviz_jax` `Model`
whose taps are the Caffe layer names (and top names that are not layer names).
The command line (`python -m converters.caffe --help`) writes a weights
directory that `converters.caffe.load_converted` (or `stviz_jax.models.load`
for a zoo architecture) reads back.

Size (~1,260 lines): the Caffe format end to end - four prototxt dialects, new
and legacy V1 layer types, shape inference, strict weight mapping and the
translation of each op into a netgraph layer (the executing is netgraph's).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import sys
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from converters import common, prototxt, wire
from stviz_jax import cli
from stviz_jax.models import base, checkpoint, netgraph

# ---------------------------------------------------------------------------
# The binary caffemodel.


class CaffeError(common.ConversionError):
  """A prototxt or caffemodel that cannot be used (names the file and where)."""


@dataclasses.dataclass
class Blob:
  """One parameter blob: `data` reshaped to `shape`; `legacy` if the shape came
  from the deprecated num/channels/(length/)height/width fields."""

  data: np.ndarray
  shape: tuple[int, ...]
  legacy: bool


@dataclasses.dataclass
class ModelLayer:
  name: str
  type: str  # type string, or "V1:<enum number>" for legacy layers
  blobs: list[Blob]


# NetParameter / LayerParameter / V1LayerParameter / BlobProto field numbers
# (identical in every dialect for what is read here, except the C3D-v1.0 blob).
_NET_NAME, _NET_LAYERS_V1, _NET_LAYER = 1, 2, 100
_LAYER_NAME, _LAYER_TYPE, _LAYER_BLOBS = 1, 2, 7
_V1_NAME, _V1_TYPE, _V1_BLOBS = 4, 5, 6
_V0_LAYER = 1  # V1LayerParameter.layer: the pre-2014 V0 format


def read_caffemodel(path: str) -> dict[str, ModelLayer]:
  """Reads the weights of a binary `.caffemodel`.

  Args:
    path: the file.

  Returns:
    Layer name -> `ModelLayer` (name, type, blobs as float32 arrays), in file
    order. Layers without blobs (data, ReLU, loss) are included with no blobs.

  Raises:
    CaffeError: the file is truncated, corrupt or not a caffemodel; the message
      names the file, the byte offset and the field being read.
  """
  try:
    with open(path, "rb") as f:
      data = f.read()
  except OSError as e:
    raise CaffeError(f"{path}: cannot read: {e.strerror}") from None
  try:
    net = wire.parse(data, str(path), "NetParameter")
    new = net.messages(_NET_LAYER, "layer")
    old = net.messages(_NET_LAYERS_V1, "layers")
    out: dict[str, ModelLayer] = {}
    for msg in new:
      name = msg.string(_LAYER_NAME, "name")
      blobs = [_read_blob(b) for b in msg.messages(_LAYER_BLOBS, "blobs")]
      _add_layer(out, ModelLayer(name, msg.string(_LAYER_TYPE, "type"), blobs), path)
    for msg in old:
      if msg.has(_V0_LAYER) and not msg.has(_V1_NAME):
        raise CaffeError(f"{path}: V0-format layers (pre-2014 Caffe) are not "
                         "supported; upgrade the file with Caffe's upgrade_net_proto_binary")
      name = msg.string(_V1_NAME, "name")
      blobs = [_read_blob(b) for b in msg.messages(_V1_BLOBS, "blobs")]
      _add_layer(out, ModelLayer(name, f"V1:{msg.int(_V1_TYPE, 'type')}", blobs), path)
  except wire.WireError as e:
    raise CaffeError(str(e)) from None
  if not out:
    raise CaffeError(f"{path}: no layers found (NetParameter fields "
                     f"{sorted(net.fields)}); is this a caffemodel?")
  for line in suspicious_blobs(out, path):
    print(f"warning: {line}", file=sys.stderr, flush=True)
  return out


# Values above this are not weights a trained net holds (float32's max is 3.4e38).
HUGE = 1e30


def suspicious_blobs(model: Mapping[str, ModelLayer], path: str = "") -> list[str]:
  """One line per blob holding NaN, inf or a magnitude above `HUGE`, naming the
  file, layer and blob: such weights convert, but give non-finite outputs."""
  lines = []
  for layer in model.values():
    for i, blob in enumerate(layer.blobs):
      data = np.asarray(blob.data)
      finite = np.isfinite(data)
      n_bad = int(data.size - finite.sum())
      big = np.abs(np.where(finite, data, 0)).max(initial=0.0)
      if n_bad or big > HUGE:
        what = ", ".join(
            ([f"{n_bad} NaN/inf value(s)"] if n_bad else [])
            + ([f"values up to {big:.3g} (> {HUGE:g})"] if big > HUGE else []))
        lines.append(f"{path + ': ' if path else ''}layer {layer.name!r} blob {i} "
                     f"(shape {tuple(blob.shape)}): {what}; the converted weights will "
                     "give non-finite or meaningless outputs")
  return lines


def _add_layer(out, layer, path):
  if layer.name in out:
    if out[layer.name].blobs and layer.blobs:
      raise CaffeError(f"{path}: two layers named {layer.name!r} both carry weights")
    if not layer.blobs:
      return
  out[layer.name] = layer


def _read_blob(msg: wire.Message) -> Blob:
  # C3D-v1.0 numbers its blob fields num=1 channels=2 length=3 height=4 width=5
  # data=6; BVLC has num..width=1..4, data=5 (packed floats). The wire type of
  # field 5 (varint vs bytes) tells them apart without a schema.
  c3d = msg.wire_type(5) == wire.VARINT or (
      msg.wire_type(6) == wire.LEN and not msg.has(5) and msg.has(3))
  if c3d:
    dims = tuple(msg.int(i, n) for i, n in
                 ((1, "num"), (2, "channels"), (3, "length"), (4, "height"), (5, "width")))
    values = msg.floats(6, "data")
    shape, legacy = dims, True
  else:
    values = msg.floats(5, "data")
    if not values.size and msg.has(8):
      values = msg.floats(8, "double_data", np.float64).astype(np.float32)
    shape_msg = msg.message(7, "shape")
    if shape_msg is not None:
      shape, legacy = tuple(shape_msg.ints(1, "dim")), False
    else:
      shape = tuple(msg.int(i, n) for i, n in
                    ((1, "num"), (2, "channels"), (3, "height"), (4, "width")))
      legacy = True
  if int(np.prod(shape)) != values.size:
    raise CaffeError(f"{msg.where(field='data')}: blob holds {values.size} values "
                     f"but its shape {shape} needs {int(np.prod(shape))} "
                     "(truncated or corrupt)")
  return Blob(values.reshape(shape), shape, legacy)


# ---------------------------------------------------------------------------
# The prototxt.

_V1_TYPES = {
    "CONVOLUTION": "Convolution", "CONVOLUTION3D": "Convolution3D",
    "POOLING": "Pooling", "POOLING3D": "Pooling3D", "INNER_PRODUCT": "InnerProduct",
    "RELU": "ReLU", "LRN": "LRN", "SOFTMAX": "Softmax", "SOFTMAX_LOSS": "SoftmaxWithLoss",
    "DROPOUT": "Dropout", "CONCAT": "Concat", "ELTWISE": "Eltwise", "DATA": "Data",
    "IMAGE_DATA": "ImageData", "VIDEO_DATA": "VideoData", "VOLUME_DATA": "VideoData",
    "MEMORY_DATA": "MemoryData", "HDF5_DATA": "HDF5Data", "WINDOW_DATA": "WindowData",
    "DUMMY_DATA": "DummyData", "ACCURACY": "Accuracy", "SPLIT": "Split",
    "FLATTEN": "Flatten", "SIGMOID": "Sigmoid", "TANH": "TanH", "POWER": "Power",
    "ABSVAL": "AbsVal", "SILENCE": "Silence", "EUCLIDEAN_LOSS": "EuclideanLoss",
    "HINGE_LOSS": "HingeLoss", "INFOGAIN_LOSS": "InfogainLoss",
    "MULTINOMIAL_LOGISTIC_LOSS": "MultinomialLogisticLoss",
    "SIGMOID_CROSS_ENTROPY_LOSS": "SigmoidCrossEntropyLoss",
    "CONTRASTIVE_LOSS": "ContrastiveLoss", "HDF5_OUTPUT": "HDF5Output",
}
_DATA_TYPES = {"Input", "Data", "ImageData", "VideoData", "MemoryData", "HDF5Data",
               "WindowData", "DummyData"}
# Dropped from the forward graph: they need labels or only report.
_LOSS_TYPES = {"SoftmaxWithLoss", "Accuracy", "EuclideanLoss", "HingeLoss",
               "InfogainLoss", "MultinomialLogisticLoss", "SigmoidCrossEntropyLoss",
               "ContrastiveLoss", "HDF5Output", "Silence"}
_AFFINE_TYPES = {"BN", "BatchNorm", "Scale"}
SUPPORTED = sorted({"Convolution", "Convolution3D", "Pooling", "Pooling3D",
                    "InnerProduct", "ReLU", "LRN", "Concat", "Eltwise", "Dropout",
                    "Softmax", "Reshape", "Flatten", "Split", "Gather", "Sigmoid",
                    "TanH", "AbsVal", "Power"} | _AFFINE_TYPES | _DATA_TYPES
                   | _LOSS_TYPES)


@dataclasses.dataclass
class Layer:
  """One prototxt layer: canonical (new-style) type, blobs in/out, its text."""

  name: str
  type: str
  bottoms: list[str]
  tops: list[str]
  msg: prototxt.Msg

  def param(self, *names: str) -> prototxt.Msg:
    """The first present `<x>_param` message among `names` (empty if none)."""
    for n in names:
      if self.msg.has(n):
        return self.msg.msg(n)
    return prototxt.Msg(self.msg.source, self.msg.line)


@dataclasses.dataclass
class Net:
  name: str
  source: str
  inputs: dict[str, tuple[int, ...]]  # explicit net inputs (input/input_dim/input_shape)
  layers: list[Layer]  # in file order, TEST phase only, loss layers kept
  dropped: list[Layer]  # layers of the TRAIN phase


def parse_net(path_or_text: str, *, phase: str = "TEST", stages: Sequence[str] = (),
              source: str | None = None) -> Net:
  """Reads a prototxt of any of the four Caffe dialects into a `Net`.

  Args:
    path_or_text: a file path, or the text itself.
    phase: which phase's layers to keep ('TEST' = deploy/inference).
    stages: the net state's stages (Caffe `--stage`), for layers whose
      include/exclude rules name one.
    source: a name for messages when text is given.

  Returns:
    The net: inputs declared at net level and its layers in order.
  """
  if os.path.exists(path_or_text):
    msg, source = prototxt.parse_file(path_or_text), str(path_or_text)
  elif not any(c in str(path_or_text) for c in "\n{:"):  # a path, not prototxt text.
    raise FileNotFoundError(2, "no such prototxt file", str(path_or_text))
  else:
    source = source or "<prototxt>"
    msg = prototxt.parse(path_or_text, source)
  inputs: dict[str, tuple[int, ...]] = {}
  names = [str(n) for n in msg.all("input")]
  if names:
    dims = msg.all_ints("input_dim")
    shapes = [tuple(s.all_ints("dim")) for s in msg.all("input_shape")]
    if shapes:
      if len(shapes) != len(names):
        raise CaffeError(f"{source}: {len(names)} inputs but {len(shapes)} input_shape")
    else:
      if len(dims) != 4 * len(names):
        raise CaffeError(f"{source}: {len(names)} inputs need {4 * len(names)} "
                         f"input_dim values, found {len(dims)}")
      shapes = [tuple(dims[4 * i:4 * i + 4]) for i in range(len(names))]
    inputs = dict(zip(names, shapes))
  kept, dropped = [], []
  for lm in msg.all("layer") + msg.all("layers"):
    if not isinstance(lm, prototxt.Msg):
      raise CaffeError(f"{source}: 'layer' must be a message")
    raw = str(lm.get("type", ""))
    ltype = _V1_TYPES.get(raw, raw)
    layer = Layer(str(lm.get("name", "")), ltype, [str(b) for b in lm.all("bottom")],
                  [str(t) for t in lm.all("top")], lm)
    if not layer.name:
      layer.name = layer.tops[0] if layer.tops else f"layer{len(kept)}"
    (kept if _in_phase(lm, phase, tuple(stages)) else dropped).append(layer)
  if not kept:
    raise CaffeError(f"{source}: no layers found; is this a Caffe prototxt?")
  return Net(str(msg.get("name", os.path.basename(source))), source, inputs, kept, dropped)


def _in_phase(lm: prototxt.Msg, phase: str, stages: Sequence[str]) -> bool:
  """Caffe's NetStateRule: a layer is kept if any `include` rule matches (or
  there is none) and no `exclude` rule matches; a rule matches when its phase
  (if given) is `phase`, all its `stage`s are in `stages` and none of its
  `not_stage`s are."""

  def matches(rule: prototxt.Msg) -> bool:
    if rule.get("phase") is not None and str(rule.get("phase")) != phase:
      return False
    if any(str(s) not in stages for s in rule.all("stage")):
      return False
    return not any(str(s) in stages for s in rule.all("not_stage"))

  inc = [m for m in lm.all("include") if isinstance(m, prototxt.Msg)]
  exc = [m for m in lm.all("exclude") if isinstance(m, prototxt.Msg)]
  if any(matches(m) for m in exc):
    return False
  return any(matches(m) for m in inc) if inc else True


# ---------------------------------------------------------------------------
# The graph: layers as operations on SSA values with known (Caffe-order) shapes.


@dataclasses.dataclass(frozen=True)
class Op:
  """One operation. `params` names its entry in the Flax params (None: none);
  `sources` are the Caffe layers whose blobs fill it (with a fold, several)."""

  kind: str
  name: str
  inputs: tuple[int, ...]
  outputs: tuple[int, ...]
  attrs: tuple[tuple[str, Any], ...] = ()
  params: str | None = None
  sources: tuple[str, ...] = ()

  def attr(self, key, default=None):
    return dict(self.attrs).get(key, default)


@dataclasses.dataclass(frozen=True)
class Graph:
  """A forward net: input value 0, ops in order, value shapes in Caffe order
  (N, C, H, W) / (N, C, T, H, W), taps and the logits value."""

  name: str
  source: str
  input_name: str
  input_shape: tuple[int, ...]
  ops: tuple[Op, ...]
  shapes: tuple[tuple[int, ...], ...]
  taps: tuple[tuple[str, int], ...]
  logits: int
  layer_types: tuple[tuple[str, str], ...]  # every kept prototxt layer (name, type)
  labels: tuple[int, ...] = ()  # label tops of data layers (zeros; only losses read them)

  def shape(self, name: str) -> tuple[int, ...]:
    """Caffe-order shape of tap `name` (batch 1)."""
    taps = dict(self.taps)
    if name not in taps:
      raise CaffeError(f"{self.source}: no layer or top {name!r}; taps: {', '.join(taps)}")
    return self.shapes[taps[name]]

  @property
  def is_3d(self) -> bool:
    return len(self.input_shape) == 5


def _spatial(msg: prototxt.Msg, key: str, n: int, default: int | None) -> list[int]:
  """kernel_size/pad/stride/dilation as n spatial values (Caffe's _h/_w and repeated forms)."""
  stem = "kernel" if key == "kernel_size" else key
  h_key, w_key = stem + "_h", stem + "_w"
  if msg.has(h_key) or msg.has(w_key):
    if not (msg.has(h_key) and msg.has(w_key)):
      raise CaffeError(f"{msg.where()}: give both {h_key} and {w_key}")
    vals = [msg.get_int(h_key), msg.get_int(w_key)]
    return vals if n == 2 else [vals[0]] * (n - 2) + vals
  vals = msg.all_ints(key)
  if not vals:
    if default is None:
      raise CaffeError(f"{msg.where()}: {key} is required")
    return [default] * n
  if len(vals) == 1:
    return vals * n
  if len(vals) != n:
    raise CaffeError(f"{msg.where()}: {key} has {len(vals)} values for {n} spatial axes")
  return vals


def _bool(v, default: bool) -> bool:
  """Text-format booleans arrive as identifiers ('true'/'false') or 0/1."""
  if v is None:
    return default
  if isinstance(v, str):
    if v.lower() not in ("true", "false", "t", "f", "1", "0"):
      raise CaffeError(f"not a boolean: {v!r}")
    return v.lower() in ("true", "t", "1")
  return bool(v)


def _sanitize(name: str) -> str:
  """A Flax-safe parameter scope name for a Caffe layer ('conv1/7x7_s2' -> 'conv1_7x7_s2')."""
  return re.sub(r"[^A-Za-z0-9_]", "_", name)


def build_graph(net: Net, *, input_shape: Sequence[int] | None = None,
                last_layer: str | None = None) -> Graph:
  """Turns a parsed `Net` into a `Graph`, inferring every shape.

  Args:
    net: from `parse_net`.
    input_shape: Caffe-order input shape without batch, `(C, H, W)` or
      `(C, T, H, W)`, overriding what the prototxt says (needed for data layers
      that read from a database and do not state their size).
    last_layer: stop after this layer (the rest is ignored, its weights too).

  Returns:
    The graph (batch size 1).
  """
  src = net.source
  is_3d = any(l.type in ("Convolution3D", "Pooling3D") for l in net.layers)
  shapes: list[tuple[int, ...]] = []
  current: dict[str, int] = {}  # blob name -> SSA value
  ops: list[Op] = []
  taps: dict[str, int] = {}
  layer_types = []
  input_name = None
  input_value = -1
  label_values: list[int] = []

  def new_value(shape):
    shapes.append(tuple(int(d) for d in shape))
    return len(shapes) - 1

  def set_input(name, shape):
    nonlocal input_name, input_value
    if input_shape is not None:
      shape = (1,) + tuple(input_shape)
    shape = (1,) + tuple(shape[1:])
    if input_name is not None:
      raise CaffeError(f"{src}: more than one data input ({input_name!r}, {name!r}); "
                       "only single-input nets are supported")
    input_name = name
    input_value = current[name] = new_value(shape)

  for name, shape in net.inputs.items():
    set_input(name, shape)

  params_used: dict[str, str] = {}
  stopped = False
  for layer in net.layers:
    if stopped:
      break
    layer_types.append((layer.name, layer.type))
    t = layer.type
    where = f"{src}: layer {layer.name!r} ({t})"
    if t in _DATA_TYPES:
      shape = _data_shape(layer, is_3d, input_shape, where)
      set_input(layer.tops[0], shape)
      for extra in layer.tops[1:]:  # labels: only loss layers (dropped) read them
        current[extra] = new_value((1,))
        label_values.append(current[extra])
      continue
    if t in _LOSS_TYPES:
      continue
    if t not in SUPPORTED:
      raise CaffeError(f"{where}: unsupported layer type; supported: {', '.join(SUPPORTED)}")
    missing = [b for b in layer.bottoms if b not in current]
    if missing:
      raise CaffeError(f"{where}: bottom blob(s) {missing} are not produced by any "
                       "earlier layer or input" + ("" if input_name else _no_input_hint(net)))
    ins = tuple(current[b] for b in layer.bottoms)
    in_shapes = [shapes[i] for i in ins]
    kind, attrs, out_shapes, has_params = _op_for(layer, in_shapes, where)
    pkey = None
    if has_params:
      pkey = _sanitize(layer.name)
      if pkey in params_used:
        raise CaffeError(f"{where}: parameter name {pkey!r} clashes with layer "
                         f"{params_used[pkey]!r}")
      params_used[pkey] = layer.name
    outs = tuple(new_value(s) for s in out_shapes)
    if len(layer.tops) != len(outs):
      raise CaffeError(f"{where}: has {len(layer.tops)} tops, expected {len(outs)}")
    for top, v in zip(layer.tops, outs):
      current[top] = v
    ops.append(Op(kind, layer.name, ins, outs, tuple(sorted(attrs.items())), pkey,
                  (layer.name,) if pkey else ()))
    if outs:
      taps[layer.name] = outs[0]
    if last_layer is not None and layer.name == last_layer:
      stopped = True
  if last_layer is not None and not stopped:
    raise CaffeError(f"{src}: no layer named {last_layer!r}; layers: "
                     f"{', '.join(n for n, _ in layer_types)}")
  if input_name is None:
    raise CaffeError(f"{src}: the net declares no input (input/input_dim, an Input "
                     f"layer or a data layer){_no_input_hint(net)}")
  if not ops:
    raise CaffeError(f"{src}: no computing layers")
  ops = _fold_affine(ops)
  # A folded conv and its BN/Scale layers all tap the folded output.
  for op in ops:
    for alias in (op.name,) + op.attr("folded_names", ()):
      if op.outputs:
        taps[alias] = op.outputs[0]
  # Top names that are no layer's name become aliases of their last value.
  layer_names = {n for n, _ in layer_types}
  for top, v in current.items():
    if top not in layer_names and top != input_name and top not in taps and v in {
        o for op in ops for o in op.outputs}:
      taps[top] = v
  last = ops[-1]
  logits = last.inputs[0] if last.kind == "softmax" else last.outputs[0]
  valid = {o for op in ops for o in op.outputs}
  taps = {k: v for k, v in taps.items() if v in valid}
  if input_value != 0:
    raise CaffeError(f"{src}: the data input {input_name!r} must come before any "
                     "other blob")
  return Graph(net.name, src, input_name, shapes[0], tuple(ops), tuple(shapes),
               tuple(taps.items()), logits, tuple(layer_types), tuple(label_values))


def _no_input_hint(net: Net) -> str:
  staged = sorted({str(s) for l in net.dropped if l.type in _DATA_TYPES
                   for r in l.msg.all("include") if isinstance(r, prototxt.Msg)
                   for s in r.all("stage")})
  if staged:
    return f" (no input in this phase: its data layers need one of the stages {staged})"
  return " (no input declared; pass input_shape=)"


def _data_shape(layer: Layer, is_3d: bool, override, where: str) -> tuple[int, ...]:
  if layer.type == "Input":
    shapes = [m for m in layer.param("input_param").all("shape") if isinstance(m, prototxt.Msg)]
    if not shapes and override is None:
      raise CaffeError(f"{where}: Input layer without input_param.shape")
    return tuple(shapes[0].all_ints("dim")) if shapes else (1,) + tuple(override)
  if override is not None:
    return (1,) + tuple(override)
  if layer.type == "MemoryData":
    p = layer.param("memory_data_param")
    return (1, p.get_int("channels", 0), p.get_int("height", 0), p.get_int("width", 0))
  tp = layer.param("transform_param")
  vp = layer.param("video_data_param", "image_data_param", "data_param")
  crop = tp.get_int("crop_size", vp.get("crop_size", 0))
  length = vp.get_int("new_length", 1) or 1
  if not crop:
    raise CaffeError(f"{where}: cannot tell the input size (no crop_size); pass "
                     "input_shape=(C, H, W)")
  if is_3d:
    return (1, 3, length, crop, crop)
  per_frame = 2 if str(vp.get("modality", "RGB")).upper() == "FLOW" else 3
  if layer.type not in ("VideoData",):
    length = 1
  return (1, per_frame * length, crop, crop)


def _op_for(layer: Layer, in_shapes, where):
  """(kind, attrs, output shapes, has_params) for one layer; shapes Caffe-order."""
  t = layer.type
  x = in_shapes[0] if in_shapes else None
  if t in ("Convolution", "Convolution3D"):
    p = layer.param("convolution3d_param", "convolution_param")
    n = len(x) - 2
    if n not in (2, 3):
      raise CaffeError(f"{where}: input of shape {x} is neither 4-D nor 5-D")
    if t == "Convolution3D" and n != 3:
      raise CaffeError(f"{where}: 3-D convolution on a 4-D input {x}")
    if n == 3:  # C3D's kernel_depth/temporal_* or BVLC's N-D repeated fields
      if p.has("kernel_depth"):
        k = [p.get_int("kernel_depth")] + _spatial(p, "kernel_size", 2, None)
        pad = [p.get_int("temporal_pad", 0)] + _spatial(p, "pad", 2, 0)
        stride = [p.get_int("temporal_stride", 1)] + _spatial(p, "stride", 2, 1)
      else:
        k = _spatial(p, "kernel_size", 3, None)
        pad = _spatial(p, "pad", 3, 0)
        stride = _spatial(p, "stride", 3, 1)
      dil = [1, 1, 1] if not p.has("dilation") else _spatial(p, "dilation", 3, 1)
    else:
      k = _spatial(p, "kernel_size", 2, None)
      pad = _spatial(p, "pad", 2, 0)
      stride = _spatial(p, "stride", 2, 1)
      dil = _spatial(p, "dilation", 2, 1)
    cout = p.get_int("num_output", 0)
    group = p.get_int("group", 1)
    if cout <= 0 or x[1] % group or cout % group:
      raise CaffeError(f"{where}: num_output {cout} / group {group} do not fit "
                       f"{x[1]} input channels")
    spatial = [(s + 2 * q - (d * (kk - 1) + 1)) // st + 1
               for s, kk, q, st, d in zip(x[2:], k, pad, stride, dil)]
    if min(spatial) <= 0:
      raise CaffeError(f"{where}: kernel {k} does not fit input {x[2:]}")
    attrs = dict(kernel=tuple(k), pad=tuple(pad), stride=tuple(stride),
                 dilation=tuple(dil), group=group, cin=x[1], cout=cout,
                 bias=_bool(p.get("bias_term"), True))
    return "conv", attrs, [(x[0], cout, *spatial)], True
  if t in ("Pooling", "Pooling3D"):
    p = layer.param("pooling3d_param", "pooling_param")
    method = str(p.get("pool", "MAX")).upper()
    if method not in ("MAX", "AVE"):
      raise CaffeError(f"{where}: pool {method} not supported (MAX, AVE)")
    n = len(x) - 2
    if _bool(p.get("global_pooling"), False):
      k, pad, stride = list(x[2:]), [0] * n, [1] * n
    elif n == 3 and p.has("kernel_depth"):
      k = [p.get_int("kernel_depth")] + _spatial(p, "kernel_size", 2, None)
      pad = [p.get_int("temporal_pad", 0)] + _spatial(p, "pad", 2, 0)
      stride = [p.get_int("temporal_stride", 1)] + _spatial(p, "stride", 2, 1)
    elif n == 3 and t == "Pooling":  # BVLC Pooling is 2-D only; C3D uses Pooling3D
      raise CaffeError(f"{where}: 2-D Pooling on a 5-D input {x}")
    else:
      k = _spatial(p, "kernel_size", n, None)
      pad = _spatial(p, "pad", n, 0)
      stride = _spatial(p, "stride", n, 1)
    out = [netgraph.pool_size(s, kk, st, q, ceil_mode=True)
           for s, kk, st, q in zip(x[2:], k, stride, pad)]
    attrs = dict(method=method, kernel=tuple(k), pad=tuple(pad), stride=tuple(stride),
                 out=tuple(out), size=tuple(x[2:]))
    return "pool", attrs, [(x[0], x[1], *out)], False
  if t == "InnerProduct":
    p = layer.param("inner_product_param")
    axis = p.get_int("axis", 1)
    if axis != 1:
      raise CaffeError(f"{where}: InnerProduct axis {axis} not supported (only 1)")
    cout = p.get_int("num_output", 0)
    attrs = dict(cin_shape=tuple(x[1:]), cout=cout, bias=_bool(p.get("bias_term"), True),
                 transpose=_bool(p.get("transpose"), False))
    return "dense", attrs, [(x[0], cout)], True
  if t == "ReLU":
    slope = layer.param("relu_param").get_float("negative_slope", 0.0)
    return "relu", dict(slope=slope), [x], False
  if t == "LRN":
    p = layer.param("lrn_param")
    region = str(p.get("norm_region", "ACROSS_CHANNELS")).upper()
    size = p.get_int("local_size", 5)
    if size % 2 == 0:
      raise CaffeError(f"{where}: LRN local_size must be odd, got {size}")
    attrs = dict(region=region, size=size, alpha=p.get_float("alpha", 1.0),
                 beta=p.get_float("beta", 0.75), k=p.get_float("k", 1.0))
    if region not in ("ACROSS_CHANNELS", "WITHIN_CHANNEL"):
      raise CaffeError(f"{where}: unknown norm_region {region}")
    return "lrn", attrs, [x], False
  if t == "Concat":
    p = layer.param("concat_param")
    axis = p.get_int("axis", p.get("concat_dim", 1)) % len(x)
    for s in in_shapes:
      if len(s) != len(x) or any(a != b for i, (a, b) in enumerate(zip(s, x)) if i != axis):
        raise CaffeError(f"{where}: cannot concatenate shapes {in_shapes} on axis {axis}")
    out = list(x)
    out[axis] = sum(s[axis] for s in in_shapes)
    return "concat", dict(axis=axis), [tuple(out)], False
  if t == "Eltwise":
    p = layer.param("eltwise_param")
    op = str(p.get("operation", "SUM")).upper()
    coeff = tuple(float(c) for c in p.all("coeff")) or (1.0,) * len(in_shapes)
    if any(s != x for s in in_shapes):
      raise CaffeError(f"{where}: Eltwise inputs differ in shape: {in_shapes}")
    if len(coeff) != len(in_shapes):
      raise CaffeError(f"{where}: {len(coeff)} coeff for {len(in_shapes)} bottoms")
    return "eltwise", dict(op=op, coeff=coeff), [x], False
  if t in _AFFINE_TYPES:
    if len(in_shapes) != 1:
      raise CaffeError(f"{where}: {t} with {len(in_shapes)} bottoms is not supported")
    attrs = dict(caffe_type=t, channels=x[1] if len(x) > 1 else 1)
    if t == "BN":
      attrs["eps"] = layer.param("bn_param").get_float("eps", 1e-5)
    elif t == "BatchNorm":
      p = layer.param("batch_norm_param")
      attrs["eps"] = p.get_float("eps", 1e-5)
    else:
      p = layer.param("scale_param")
      if p.get_int("axis", 1) != 1 or p.get_int("num_axes", 1) != 1:
        raise CaffeError(f"{where}: only per-channel Scale (axis 1, num_axes 1) is supported")
      attrs["bias"] = _bool(p.get("bias_term"), False)
    return "affine", attrs, [x], True
  if t == "Dropout":
    return "identity", {}, [x], False
  if t in ("Split", "Gather"):
    n_out = len(layer.tops)
    srcs = [in_shapes[i if t == "Gather" else 0] for i in range(n_out)]
    if t == "Gather" and n_out != len(in_shapes):
      raise CaffeError(f"{where}: Gather needs as many tops as bottoms")
    return "identity_multi", dict(gather=t == "Gather"), srcs, False
  if t == "Softmax":
    axis = layer.param("softmax_param").get_int("axis", 1) % len(x)
    if axis != 1:
      raise CaffeError(f"{where}: Softmax over axis {axis} is not supported (only channels)")
    return "softmax", {}, [x], False
  if t in ("Sigmoid", "TanH", "AbsVal"):
    return t.lower(), {}, [x], False
  if t == "Power":
    p = layer.param("power_param")
    return "power", dict(power=p.get_float("power", 1.0), scale=p.get_float("scale", 1.0),
                         shift=p.get_float("shift", 0.0)), [x], False
  if t in ("Reshape", "Flatten"):
    size = int(np.prod(x[1:]))
    if t == "Flatten":
      out = (x[0], size)
    else:
      p = layer.param("reshape_param")
      if p.has("axis") or p.has("num_axes"):
        raise CaffeError(f"{where}: Reshape with axis/num_axes is not supported")
      dims = [int(d) for d in p.msg("shape").all("dim")]
      out = [x[i] if d == 0 else d for i, d in enumerate(dims)]
      if out.count(-1) > 1:
        raise CaffeError(f"{where}: more than one -1 in Reshape dims {dims}")
      if -1 in out:
        known = int(np.prod([d for d in out if d != -1]))
        out[out.index(-1)] = int(np.prod(x)) // max(known, 1)
      out = tuple(out)
      if int(np.prod(out)) != int(np.prod(x)) or out[0] != x[0]:
        raise CaffeError(f"{where}: Reshape {tuple(x)} -> {out} changes the batch "
                         "axis (e.g. a segment consensus); only per-example "
                         "reshapes are supported (use the deploy prototxt or last_layer=)")
    if len(out) not in (2, 4, 5):
      raise CaffeError(f"{where}: reshape to rank {len(out)} is not supported (2, 4, 5)")
    return "reshape", dict(shape=tuple(out[1:])), [out], False
  raise CaffeError(f"{where}: unsupported layer type; supported: {', '.join(SUPPORTED)}")


def _fold_affine(ops: list[Op]) -> list[Op]:
  """Folds BN/BatchNorm/Scale into the conv/dense directly before them.

  `W' = W * s`, `b' = b * s + t` for the per-channel affine `y = s * x + t`,
  valid when the conv's output feeds nothing but the affine (else the affine
  stays a separate op).
  """
  consumers: dict[int, int] = {}
  for op in ops:
    for i in op.inputs:
      consumers[i] = consumers.get(i, 0) + 1
  out: list[Op] = []
  producer: dict[int, int] = {}
  for op in ops:
    if op.kind == "affine" and len(op.inputs) == 1 and op.inputs[0] in producer:
      j = producer[op.inputs[0]]
      prev = out[j]
      if prev.kind in ("conv", "dense") and consumers.get(op.inputs[0]) == 1:
        attrs = dict(prev.attrs)
        attrs["folded"] = attrs.get("folded", ()) + (
            (op.name, tuple(sorted(op.attrs))),)
        attrs["folded_names"] = attrs.get("folded_names", ()) + (op.name,)
        merged = dataclasses.replace(prev, outputs=op.outputs,
                                     attrs=tuple(sorted(attrs.items())),
                                     sources=prev.sources + (op.name,))
        out[j] = merged
        del producer[op.inputs[0]]
        producer[op.outputs[0]] = j
        continue
    for o in op.outputs:
      producer[o] = len(out)
    out.append(op)
  return out


# ---------------------------------------------------------------------------
# The Flax module: the graph as `stviz_jax.models.netgraph` layers.


def CaffeNet(graph: Graph) -> netgraph.Net:  # noqa: N802 - was the module class
  """A Caffe `Graph` as a `netgraph.Net` in stviz_jax layout.

  `__call__(x)` takes the net input channels-last ((N, H, W, C) for image nets,
  (N, T, H, W, C) for 3D nets) and returns `(logits, features)`, features keyed
  by Caffe layer (and top) names, channels last.
  """
  alias: dict[int, int] = {}  # a Dropout / Split output -> the value it passes on
  canon = lambda v: alias.get(v, v)
  steps = []
  for op in graph.ops:
    ins = [canon(v) for v in op.inputs]
    if op.kind in ("identity", "identity_multi"):
      gather = op.attr("gather", False)
      for i, o in enumerate(op.outputs):
        alias[o] = ins[i] if gather else ins[0]
      continue
    make = lambda bottoms, top, op=op: _node(op, bottoms, top, graph.shapes[op.inputs[0]],
                                             graph.source)
    steps.append((make, ins, op.outputs[0]))
  taps = [(name, canon(v)) for name, v in graph.taps]
  read = {v for _, ins, _ in steps for v in ins} | {v for _, v in taps}
  # Label tops are zeros (only the dropped losses need their values).
  labels = [(lambda bottoms, top: netgraph.Constant(top, bottoms[0], top=top), [0], v)
            for v in graph.labels if v in read]
  return common.build_net(labels + steps, taps, len(graph.shapes),
                          logits=canon(graph.logits), inputs=[(graph.input_name, 0)],
                          logits_reduce="none")


def _node(op: Op, bottoms: list[str], top: str, in_shape: tuple[int, ...], source: str):
  """The netgraph layer of one op (Caffe-order `in_shape` of its first input)."""
  a = dict(op.attrs)
  k = op.kind
  name = op.params or _sanitize(op.name)
  x = bottoms[0]
  if k == "conv":
    return netgraph.Conv(name, x, a["cout"], a["kernel"], a["stride"], a["pad"],
                         relu=False, top=top, groups=a["group"], dilation=a["dilation"])
  if k == "dense":
    return netgraph.Dense(name, x, a["cout"], top=top, frames=False)
  if k == "affine":
    return netgraph.Affine(name, x, a["channels"], top=top)
  if k == "pool":
    return netgraph.Pool(name, x, "max" if a["method"] == "MAX" else "avg", a["kernel"],
                         a["stride"], a["pad"], ceil_mode=True, top=top)
  if k == "relu":
    if a["slope"]:
      return netgraph.Activation(name, x, "leaky_relu", (a["slope"],), top=top)
    return netgraph.Activation(name, x, "relu", top=top)
  if k == "lrn":
    n = a["size"]
    if a["region"] == "ACROSS_CHANNELS":
      return netgraph.LRN(name, x, n, a["alpha"] / n, a["beta"], a["k"], top=top)
    if len(in_shape) != 4:
      raise CaffeError(f"{source}: layer {op.name!r}: WITHIN_CHANNEL LRN needs a 4-D "
                       "(image) input")
    return netgraph.LRN(name, x, n, a["alpha"] / (n * n), a["beta"], 1.0, "within",
                        top=top)
  if k == "concat":
    return netgraph.Concat(name, tuple(bottoms), top=top,
                           axis=_caffe_axis(a["axis"], len(in_shape)))
  if k == "eltwise":
    if a["op"] == "SUM":
      return netgraph.Add(name, tuple(bottoms), top=top, coeffs=a["coeff"])
    if a["op"] in ("PROD", "MAX"):
      return netgraph.Eltwise(name, tuple(bottoms), a["op"].lower(), top=top)
    raise CaffeError(f"layer {op.name!r}: Eltwise operation {a['op']} unknown")
  if k in _ACTIVATIONS:
    return netgraph.Activation(name, x, _ACTIVATIONS[k], top=top)
  if k == "power":
    return netgraph.Activation(name, x, "power", (a["power"], a["scale"], a["shift"]),
                               top=top)
  if k == "reshape":
    return netgraph.Reshape(name, x, a["shape"], top=top)
  raise CaffeError(f"layer {op.name!r}: unknown op {k}")


_ACTIVATIONS = {"softmax": "softmax", "sigmoid": "sigmoid", "tanh": "tanh",
                "absval": "abs"}


def _caffe_axis(axis: int, ndim: int) -> int:
  if ndim <= 2 or axis == 0:
    return axis
  return ndim - 1 if axis == 1 else axis - 1


# ---------------------------------------------------------------------------
# Weights: caffemodel blobs -> Flax params.

_BLOB_NAMES = {"conv": ("weights", "bias"), "dense": ("weights", "bias"),
               "BN": ("slope", "bias", "mean", "variance"),
               "BatchNorm": ("mean", "variance", "scale_factor"),
               "Scale": ("scale", "bias")}


def _expect_blob(blob: Blob, expected: tuple[int, ...], vector: bool) -> bool:
  if vector:  # (C,), (1, C), (1, C, 1, 1), legacy (1, 1, 1, C) ...
    return blob.data.size == int(np.prod(expected)) and sum(d != 1 for d in blob.shape) <= 1
  strip = lambda s: tuple(s[next((i for i, d in enumerate(s) if d != 1), len(s)):])
  if blob.legacy:
    return strip(blob.shape) == strip(expected)
  return tuple(blob.shape) == tuple(expected)


def _affine_of(layer_name: str, attrs: Mapping, blobs: list[Blob], problems: list,
               model_name: str) -> tuple[np.ndarray, np.ndarray] | None:
  """Per-channel (s, t) with `y = s * x + t` from a BN / BatchNorm / Scale layer."""
  a = dict(attrs)
  c, t = a["channels"], a["caffe_type"]
  want = {"BN": 4, "BatchNorm": 3, "Scale": 2 if a.get("bias") else 1}[t]
  if len(blobs) != want:
    problems.append(f"{layer_name} has {len(blobs)} blobs, {t} expects {want}")
    return None
  sizes = [c] * want if t != "BatchNorm" else [c, c, 1]
  for i, (b, n) in enumerate(zip(blobs, sizes)):
    if not _expect_blob(b, (n,), True):
      problems.append(f"{layer_name} blob {i} ({_BLOB_NAMES[t][i]}) {b.shape} vs expected ({n},)")
      return None
  v = [b.data.reshape(-1).astype(np.float64) for b in blobs]
  if t == "BN":
    s = v[0] / np.sqrt(v[3] + a["eps"])
    return s, v[1] - v[2] * s
  if t == "BatchNorm":
    factor = 0.0 if v[2][0] == 0 else 1.0 / v[2][0]
    mean, var = v[0] * factor, v[1] * factor
    s = 1.0 / np.sqrt(var + a["eps"])
    return s, -mean * s
  return v[0], (v[1] if len(v) > 1 else np.zeros(c))


def convert_weights(graph: Graph, model: Mapping[str, ModelLayer], source: str,
                    *, truncated: Sequence[str] = ()) -> dict:
  """Flax params for `graph` from caffemodel layers, strictly.

  Every op with parameters must find its layer with the right number and
  shapes of blobs, and every caffemodel layer with blobs must be used (except
  layers cut off by `last_layer`, listed in `truncated`).

  Returns:
    `{'params': {...}}` for `CaffeNet(graph)`.
  """
  params: dict[str, np.ndarray] = {}
  missing, mismatched, used = [], [], set()
  for op in graph.ops:
    if op.params is None:
      continue
    a = dict(op.attrs)
    if op.kind == "affine":
      layer = model.get(op.name)
      if layer is None:
        missing.append(op.name)
        continue
      used.add(op.name)
      st = _affine_of(op.name, op.attrs, layer.blobs, mismatched, source)
      if st is not None:
        params[f"{op.params}/scale"] = st[0].astype(np.float32)
        params[f"{op.params}/shift"] = st[1].astype(np.float32)
      continue
    layer = model.get(op.name)
    if layer is None:
      missing.append(op.name)
      continue
    used.add(op.name)
    want = 2 if a["bias"] else 1
    if len(layer.blobs) != want:
      mismatched.append(f"{op.name} has {len(layer.blobs)} blobs, expected {want}")
      continue
    cout = a["cout"]
    if op.kind == "conv":
      kernel_caffe = (cout, a["cin"] // a["group"]) + tuple(a["kernel"])
      w = layer.blobs[0]
      if not _expect_blob(w, kernel_caffe, False):
        mismatched.append(f"{op.name} weights {w.shape} vs expected {kernel_caffe}")
        continue
      w = w.data.reshape(kernel_caffe).astype(np.float64)
      kernel = np.moveaxis(w, (0, 1), (-1, -2))  # (O, I, *k) -> (*k, I, O)
    else:
      cin_shape = a["cin_shape"]
      cin = int(np.prod(cin_shape))
      expected = (cin, cout) if a["transpose"] else (cout, cin)
      w = layer.blobs[0]
      if not _expect_blob(w, expected, False):
        mismatched.append(f"{op.name} weights {w.shape} vs expected {expected}")
        continue
      w = w.data.reshape(expected).astype(np.float64)
      if a["transpose"]:
        w = w.T
      # Caffe flattens channel-major (C, [T,] H, W); our features are channels
      # last, so permute the kernel rows to ([T,] H, W, C) order.
      w = w.reshape((cout,) + tuple(cin_shape))
      if len(cin_shape) > 1:
        w = np.moveaxis(w, 1, -1)
      kernel = w.reshape(cout, cin).T
    if a["bias"]:
      b = layer.blobs[1]
      if not _expect_blob(b, (cout,), True):
        mismatched.append(f"{op.name} bias {b.shape} vs expected ({cout},)")
        continue
      bias = b.data.reshape(-1).astype(np.float64)
    else:
      bias = np.zeros(cout)
    for fold_name, fold_attrs in a.get("folded", ()):
      fl = model.get(fold_name)
      if fl is None:
        missing.append(fold_name)
        continue
      used.add(fold_name)
      st = _affine_of(fold_name, fold_attrs, fl.blobs, mismatched, source)
      if st is None:
        continue
      s, t = st
      kernel = kernel * s
      bias = bias * s + t
    params[f"{op.params}/kernel"] = kernel.astype(np.float32)
    params[f"{op.params}/bias"] = bias.astype(np.float32)
  skip = set(truncated)
  unexpected = [n for n, l in model.items() if l.blobs and n not in used and n not in skip]
  common.check_complete(source, missing=missing, unexpected=unexpected,
                        mismatched=mismatched)
  return {"params": common.unflatten(params)}


# ---------------------------------------------------------------------------
# The stviz_jax model.


def stream_spec(graph: Graph, stream: str | None = None,
                value_range: tuple[float, float] = (-128.0, 128.0)):
  """Input stream name, its `StreamSpec` and the adapter to the net's input.

  Image nets (4-D input) get one frame (T = 1); 3D nets keep their T. With
  `stream='flow'` a 2k-channel image input is read as k flow frames of
  (horizontal, vertical), interleaved `[x1, y1, x2, y2, ...]` as in every
  two-stream Caffe release.
  """
  shape = graph.input_shape
  if len(shape) == 4:
    _, c, h, w = shape
    name = stream or ("rgb" if c == 3 else "input")
    if name == "flow":
      if c % 2:
        raise CaffeError(f"{graph.source}: stream 'flow' needs an even number of "
                         f"input channels, the net takes {c}")
      spec = base.StreamSpec(c // 2, h, w, 2, value_range)
      adapt = lambda inputs: _interleave(inputs["flow"])
    else:
      spec = base.StreamSpec(1, h, w, c, value_range)
      adapt = lambda inputs, _n=name: inputs[_n][:, 0]
  else:
    _, c, t, h, w = shape
    name = stream or ("rgb" if c == 3 else "flow" if c == 2 else "input")
    spec = base.StreamSpec(t, h, w, c, value_range)
    adapt = lambda inputs, _n=name: inputs[_n]
  return name, spec, adapt


def _interleave(flow):
  """(N, k, H, W, 2) -> (N, H, W, 2k) with channels [x1, y1, ..., xk, yk]."""
  n, k, h, w, _ = flow.shape
  return jnp.moveaxis(flow, 1, 3).reshape(n, h, w, 2 * k)


def build(prototxt_path: str, *, input_shape=None, last_layer=None,
          stages: Sequence[str] = ()) -> Graph:
  """Parses a prototxt into a `Graph` (shapes inferred, batch 1)."""
  return build_graph(parse_net(prototxt_path, stages=stages), input_shape=input_shape,
                     last_layer=last_layer)


def load(prototxt_path: str, caffemodel: str | None = None, *, stream: str | None = None,
         input_shape: Sequence[int] | None = None, last_layer: str | None = None,
         value_range: tuple[float, float] = (-128.0, 128.0),
         labels: Sequence[str] | None = None, name: str | None = None,
         stages: Sequence[str] = (), seed: int = 0, variables=None) -> base.Model:
  """A Caffe net as a stviz_jax `Model`.

  Args:
    prototxt_path: the net definition (any of the four dialects).
    caffemodel: its weights; None gives random weights from `seed` (for tests
      and shape checks).
    stream: input stream name: default 'rgb' for 3 channels, else 'input';
      'flow' reads 2k channels as k frames x (horizontal, vertical).
    input_shape: Caffe-order input shape without batch, overriding the file's.
    last_layer: cut the net after this layer.
    value_range: typical range of the preprocessed input (mean-subtracted
      8-bit pixels by default), for the regulariser bounds.
    labels: class names of the logits.
    name: model name (default: the net's name).
    stages: Caffe net-state stages selecting staged layers.
    seed: random init seed when no caffemodel is given.
    variables: already converted variables (from `load_converted`).

  Returns:
    The `Model`; logits are the input of a final Softmax (or the last layer's
    output); every Caffe layer name is a tap, channels last.
  """
  net = parse_net(prototxt_path, stages=stages)
  graph = build_graph(net, input_shape=input_shape, last_layer=last_layer)
  module = CaffeNet(graph)
  sname, spec, adapt = stream_spec(graph, stream, value_range)
  x = jnp.zeros(_input_shape_ours(graph))
  if variables is None:
    if caffemodel is not None:
      truncated = [l.name for l in net.layers[len(graph.layer_types):]]
      truncated += [l.name for l in net.dropped]
      variables = convert_weights(graph, read_caffemodel(caffemodel), caffemodel,
                                  truncated=truncated)
    else:
      variables = module.init(jax.random.PRNGKey(seed), x)
  else:
    variables = jax.tree.map(jnp.asarray, variables)
  expected = jax.eval_shape(lambda: module.init(jax.random.PRNGKey(0), x))
  variables = jax.tree.map(jnp.asarray, common.fill_like(
      expected, common.flatten(variables), caffemodel or "variables"))
  return base.wrap(module, variables, {sname: spec}, adapt_inputs=adapt,
                   name=name or graph.name, labels=labels,
                   layers=[n for n, _ in graph.taps] + [base.LOGITS])


def _input_shape_ours(graph: Graph) -> tuple[int, ...]:
  s = graph.input_shape
  return (1,) + tuple(s[2:]) + (s[1],)


# ---------------------------------------------------------------------------
# Saved weights and the command line.

ARCHITECTURE = "caffe"


def save(output: str, prototxt_path: str, caffemodel: str, *, stream: str | None = None,
         input_shape=None, last_layer=None, labels=None, overwrite: bool = False) -> base.Model:
  """Converts and writes a weights directory (metadata keeps the prototxt text)."""
  checkpoint.check_output(output, overwrite=overwrite, inputs=[prototxt_path, caffemodel])
  model = load(prototxt_path, caffemodel, stream=stream, input_shape=input_shape,
               last_layer=last_layer, labels=labels)
  with open(prototxt_path, encoding="utf-8", errors="replace") as f:
    text = f.read()
  common.save(output, model.variables, source=caffemodel, architecture=ARCHITECTURE,
              fmt="caffe", prototxt=text, prototxt_source=os.path.abspath(prototxt_path),
              stream=stream, input_shape=list(input_shape) if input_shape else None,
              last_layer=last_layer, labels=list(labels) if labels else None,
              overwrite=overwrite)
  return model


def load_converted(path: str, **overrides) -> base.Model:
  """Rebuilds the model saved by `save` / the command line."""
  variables, meta = checkpoint.restore(path)
  if meta.get("architecture") != ARCHITECTURE:
    raise CaffeError(f"{path}: weights are for {meta.get('architecture')!r}, not a "
                     "converted Caffe net")
  import tempfile
  with tempfile.NamedTemporaryFile("w", suffix=".prototxt", delete=False) as f:
    f.write(meta["prototxt"])
    tmp = f.name
  try:
    kwargs = dict(stream=meta.get("stream"), input_shape=meta.get("input_shape"),
                  last_layer=meta.get("last_layer"), labels=meta.get("labels"))
    kwargs.update(overrides)
    return load(tmp, variables=variables, name=os.path.basename(path.rstrip("/")),
                **kwargs)
  finally:
    os.unlink(tmp)


def to_zoo(architecture: str, parts: Sequence[tuple[str, str, str]], *, target=None,
           **overrides):
  """Caffe nets into a zoo architecture whose parameters carry the Caffe names.

  The zoo models built from Caffe releases (`vgg16_two_stream`,
  `tsn_bn_inception`, `tsn_inception_v3`, `c3d`) name their parameters
  `params[tower][caffe/layer/name]['kernel' | 'bias']` (the Caffe name split
  at '/'), in the layouts this converter produces (BN folded, InnerProduct
  rows in (T, H, W, C) order); their RGB towers take RGB and feed the Caffe
  layers BGR, as the Caffe nets expect. So the mapping is by name, strictly:
  every zoo parameter must be filled by exactly one Caffe layer of the right
  shape and every Caffe layer with weights must land somewhere.

  Args:
    architecture: registered zoo name.
    parts: `(tower, prototxt, caffemodel)` per tower ('' for a model without
      tower prefixes, e.g. `c3d`).
    target: an already built zoo model with these overrides (optional).
    **overrides: zoo factory arguments (`streams`, `num_classes`, ...).

  Returns:
    `(model, overrides)`: the zoo model with the converted weights.
  """
  from stviz_jax.models import registry
  values: dict[str, np.ndarray] = {}
  sources = []
  for tower, proto, caffemodel in parts:
    net = parse_net(proto)
    graph = build_graph(net)
    converted = convert_weights(graph, read_caffemodel(caffemodel), caffemodel,
                                truncated=[l.name for l in net.dropped])
    prefix = f"params/{tower}/" if tower else "params/"
    for op in graph.ops:
      if op.params is None:
        continue
      for leaf, v in converted["params"][op.params].items():
        values[f"{prefix}{op.name}/{leaf}"] = v
    sources.append(caffemodel)
  if target is None:
    target = registry.load(architecture, **overrides)
  variables = common.fill_like(target.variables, values, " + ".join(sources))
  variables = jax.tree.map(jnp.asarray, variables)
  model = base.wrap(target.apply, variables, target.spec.streams,
                    layers=target.spec.layers, name=target.name, labels=target.labels)
  return model, dict(overrides)


@cli.entry_point
def main(argv: Sequence[str] | None = None) -> int:
  parser = cli.ArgumentParser(
      prog="python -m converters.caffe",
      description="Convert Caffe nets (prototxt + caffemodel; any of the BVLC, "
                  "action-recognition, C3D v1.0/v1.1 dialects, new or legacy V1 "
                  "weights) into a stviz_jax weights directory, without Caffe.",
      epilog="Examples:\n"
             "  any net:  python -m converters.caffe out/ --net deploy.prototxt "
             "w.caffemodel\n"
             "            -> converters.caffe.load_converted('out/')\n"
             "  zoo:      python -m converters.caffe out/ --architecture "
             "vgg16_two_stream \\\n"
             "              --part rgb spatial.prototxt spatial.caffemodel "
             "--part flow flow.prototxt flow.caffemodel\n"
             "            -> stviz_jax.models.load('vgg16_two_stream', weights='out/')",
      formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("output", help="weights directory to write (new, empty or a "
                                      "previous conversion, replaced atomically)")
  common.add_output_flags(parser)
  parser.add_argument("--net", nargs=2, metavar=("PROTOTXT", "CAFFEMODEL"),
                      help="convert one net as it is (read back with load_converted)")
  parser.add_argument("--stream", choices=["rgb", "flow", "input"], default=None,
                      help="--net: input stream name; 'flow' reads 2k channels as "
                           "k (x, y) frames")
  parser.add_argument("--input-shape", type=lambda s: tuple(int(v) for v in s.split(",")),
                      default=None, help="--net: Caffe-order input shape without "
                                         "batch, e.g. 3,224,224")
  parser.add_argument("--last-layer", default=None, help="--net: cut after this layer")
  parser.add_argument("--labels", default=None, help="--net: class names, one per line")
  parser.add_argument("--architecture", default=None,
                      help="fill this zoo architecture instead (see --part)")
  parser.add_argument("--part", nargs=3, action="append", default=[],
                      metavar=("TOWER", "PROTOTXT", "CAFFEMODEL"),
                      help="with --architecture: one tower ('rgb', 'flow'; '-' for "
                           "none) and its Caffe files; repeat per tower")
  parser.add_argument("--arg", action="append", default=[], metavar="KEY=JSON",
                      help="with --architecture: zoo factory argument, e.g. "
                           "num_classes=51 or streams='[\"rgb\"]'")
  args = parser.parse_args(argv)
  if bool(args.net) == bool(args.architecture):
    parser.error("give either --net PROTOTXT CAFFEMODEL or --architecture with --part")
  inputs = list(args.net or ()) + [f for _, p, c in args.part for f in (p, c)]
  checkpoint.check_output(args.output, overwrite=args.overwrite, inputs=inputs)
  if args.net:
    labels = None
    if args.labels:
      with open(args.labels) as f:
        labels = [l.strip() for l in f if l.strip()]
    model = save(args.output, *args.net, stream=args.stream, input_shape=args.input_shape,
                 last_layer=args.last_layer, labels=labels, overwrite=args.overwrite)
    hint = f"converters.caffe.load_converted({args.output!r})"
  else:
    if not args.part:
      parser.error("--architecture needs at least one --part")
    overrides = common.parse_overrides(args.arg)
    if isinstance(overrides.get("streams"), list):
      overrides["streams"] = tuple(overrides["streams"])
    parts = [("" if t == "-" else t, p, c) for t, p, c in args.part]
    model, kwargs = to_zoo(args.architecture, parts, **overrides)
    first = parts[0][2]
    common.save(args.output, model.variables, source=first,
                architecture=args.architecture, fmt="caffe", overwrite=args.overwrite,
                parts=[{"tower": t, "prototxt": os.path.abspath(p),
                        "caffemodel": os.path.abspath(c),
                        "caffemodel_sha256": checkpoint.sha256(c)} for t, p, c in parts],
                load_kwargs={k: list(v) if isinstance(v, tuple) else v
                             for k, v in kwargs.items()})
    args_text = "".join(f", {k}={v!r}" for k, v in kwargs.items())
    hint = (f"stviz_jax.models.load({args.architecture!r}, weights={args.output!r}"
            f"{args_text})")
  common.report_written(args.output, model, hint)
  return 0


if __name__ == "__main__":
  sys.exit(main())
