"""MatConvNet nets (SimpleNN and DagNN `.mat` files) as stviz_jax models.

Read with `scipy.io.loadmat` (MATLAB v5/v7 files). MatConvNet's conventions,
kept exactly:

* arrays are `H x W x C x N` (scipy keeps MATLAB's index order, so an image
  `x[h, w, c]` is already channels last) and filters `H x W x Cin/groups x
  Cout` - already Flax's HWIO;
* padding is `[top bottom left right]` (a scalar pads all four sides) and
  output sizes are rounded down, for convolution and pooling alike;
* max pooling ignores the padding; average pooling divides by the number of
  in-image pixels of each window (padding excluded);
* `lrn`/`normalize` with `[N kappa alpha beta]`: `x / (kappa + alpha * sum of
  x^2 over N channels)^beta`;
* batch norm with `moments = [mu, sigma]`: `g * (x - mu) / sigma + b` (sigma
  already includes epsilon), folded into the convolution before it;
* labels are 1-based in the data files; class `k` is logit `k - 1`.

`to_zoo(path, architecture)` fills the zoo models of the MatConvNet releases
the paper studies by DagNN layer name: `feichtenhofer/twostreamfusion` into
`vgg16_fusion` and `feichtenhofer/st-resnet` into `st_resnet50` (command line:
`--architecture`).

Fully connected layers are convolutions whose kernel covers the whole input,
so there is no flatten-order question. `load(path) -> Model` taps every layer
by its name (and, for DagNN, every variable by its name); the logits are the
input of a final softmax/loss layer, with 1x1 spatial dimensions dropped.

The layers run as `stviz_jax.models.netgraph` layers in its `Net` (the zoo's
executor, with its fast convolution and pooling paths): `MatConvNet(graph)`.

Size (~810 lines): both MatConvNet formats (SimpleNN and DagNN, read from
MATLAB v5 files), their zoo tables and the translation of their layers into
netgraph layers.
"""

from __future__ import annotations

import dataclasses
import os
import re
import sys
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from converters import common
from stviz_jax import cli
from stviz_jax.models import base, checkpoint, netgraph


class MatConvNetError(common.ConversionError):
  """A `.mat` file that cannot be used (names the file and the layer/field)."""


# ---------------------------------------------------------------------------
# Reading the .mat structures.


def loadmat(path: str) -> dict:
  """`scipy.io.loadmat` without squeezing (a 1x1xCinxCout filter keeps its shape)."""
  import scipy.io
  try:
    return scipy.io.loadmat(path, squeeze_me=False, struct_as_record=False)
  except NotImplementedError as e:  # MATLAB v7.3 = HDF5
    raise MatConvNetError(f"{path}: {e}; re-save it in MATLAB with save(..., '-v7')") from None
  except FileNotFoundError:
    raise MatConvNetError(f"{path}: no such file") from None
  except Exception as e:  # scipy raises assorted errors on truncated/corrupt files
    raise MatConvNetError(f"{path}: not a readable MATLAB v5/v7 file "
                          f"(truncated or corrupt?): {type(e).__name__}: {e}") from None


def _get(s, field: str, default: Any = None):
  if s is None or field not in getattr(s, "_fieldnames", ()):
    return default
  return getattr(s, field)


def _str(v, default: str = "") -> str:
  if v is None:
    return default
  a = np.asarray(v)
  if a.dtype.kind in "US":
    return str(a.ravel()[0]) if a.size else default
  if a.dtype == object and a.size:
    return _str(a.ravel()[0], default)
  return default


def _nums(v, default: Sequence[float] = ()) -> list[float]:
  if v is None:
    return list(default)
  a = np.asarray(v)
  if a.dtype == object:
    return _nums(a.ravel()[0], default) if a.size else list(default)
  if a.size == 0:
    return list(default)
  return [float(x) for x in a.ravel(order="F")]


def _one(s):
  """A 1x1 struct array or cell -> its element."""
  a = np.asarray(s)
  if a.dtype == object and a.size == 1:
    return a.ravel()[0]
  return s


def _cells(v) -> list:
  if v is None:
    return []
  a = np.asarray(v)
  if a.dtype == object:
    return list(a.ravel(order="F"))
  return [v]


def _pad4(v, where: str) -> tuple[int, int, int, int]:
  p = [int(x) for x in _nums(v, [0])]
  if len(p) == 1:
    return (p[0],) * 4
  if len(p) == 4:
    return tuple(p)
  raise MatConvNetError(f"{where}: pad must be 1 or 4 numbers [top bottom left right], got {p}")


def _pair(v, default: int, where: str, what: str) -> tuple[int, int]:
  p = [int(x) for x in _nums(v, [default])]
  if len(p) == 1:
    return (p[0], p[0])
  if len(p) == 2:
    return (p[0], p[1])
  raise MatConvNetError(f"{where}: {what} must be 1 or 2 numbers, got {p}")


# ---------------------------------------------------------------------------
# The graph.


@dataclasses.dataclass(frozen=True)
class Op:
  kind: str
  name: str
  inputs: tuple[str, ...]
  outputs: tuple[str, ...]
  attrs: tuple[tuple[str, Any], ...] = ()
  params: str | None = None

  def attr(self, key, default=None):
    return dict(self.attrs).get(key, default)


@dataclasses.dataclass(frozen=True)
class Graph:
  name: str
  source: str
  inputs: tuple[tuple[str, tuple[int, int, int]], ...]  # var -> (H, W, C)
  ops: tuple[Op, ...]
  taps: tuple[tuple[str, str], ...]  # tap name -> var
  logits: str
  labels: tuple[str, ...] | None


_SUPPORTED = ("conv", "pool", "relu", "lrn", "normalize", "bnorm", "dropout",
              "softmax", "softmaxloss", "loss", "sigmoid", "concat", "sum")
_DAG_TYPES = {"dagnn.Conv": "conv", "dagnn.Pooling": "pool", "dagnn.ReLU": "relu",
              "dagnn.LRN": "lrn", "dagnn.BatchNorm": "bnorm", "dagnn.DropOut": "dropout",
              "dagnn.SoftMax": "softmax", "dagnn.Loss": "loss", "dagnn.Sigmoid": "sigmoid",
              "dagnn.Concat": "concat", "dagnn.Sum": "sum"}


def _sanitize(name: str) -> str:
  return re.sub(r"[^A-Za-z0-9_]", "_", name) or "layer"


def _labels(meta) -> tuple[str, ...] | None:
  classes = _one(_get(meta, "classes"))
  names = _get(classes, "description") if _get(classes, "description") is not None else None
  names = names if names is not None and np.asarray(names).size else _get(classes, "name")
  if names is None:
    return None
  out = tuple(_str(c) for c in _cells(names))
  return out or None


def _input_size(meta, path) -> tuple[int, int, int] | None:
  size = [int(x) for x in _nums(_get(_one(_get(meta, "normalization")), "imageSize"))
          or _nums(_get(meta, "inputSize"))]
  return tuple(size[:3]) if len(size) >= 3 else None


def read(path: str, *, input_size: Sequence[int] | None = None):
  """Parses a SimpleNN or DagNN file into `(Graph, {param key: {name: array}})`.

  Args:
    path: the `.mat` file (a variable `net`, or the net's fields at top level).
    input_size: `(H, W, C)` overriding `meta.inputSize` / `normalization.imageSize`
      (a dict variable -> `(H, W, C)` for a multi-input DagNN).
  """
  mat = loadmat(path)
  net = _one(mat["net"]) if "net" in mat else None
  if net is None:
    if "layers" not in mat:
      raise MatConvNetError(f"{path}: no variable 'net' (or 'layers'); variables: "
                            f"{', '.join(k for k in mat if not k.startswith('__'))}")
    fields = {k: v for k, v in mat.items() if not k.startswith("__")}
    net = type("Net", (), dict(fields, _fieldnames=list(fields)))()
  meta = _one(_get(net, "meta"))
  if isinstance(input_size, Mapping):
    size = {k: tuple(int(d) for d in v) for k, v in input_size.items()}
  elif input_size is not None:
    size = tuple(int(d) for d in input_size)
  else:
    size = _input_size(meta, path)
  if size is None:
    raise MatConvNetError(f"{path}: no input size in meta.inputSize or "
                          "meta.normalization.imageSize; pass input_size=(H, W, C)")
  is_dag = _get(net, "vars") is not None and _get(net, "params") is not None
  if is_dag:
    ops, weights, inputs = _dag_ops(net, path, size)
  else:
    ops, weights, inputs = _simple_ops(net, path, size)
  return _finish(ops, weights, inputs, path, _labels(meta))


def _conv_attrs(filters: np.ndarray, pad, stride, dilate, has_bias, where):
  f = np.asarray(filters, np.float32)
  if f.ndim > 4 or f.ndim < 2:
    raise MatConvNetError(f"{where}: filters of shape {f.shape} are not H x W x Cin x Cout")
  f = f.reshape(f.shape + (1,) * (4 - f.ndim))  # MATLAB drops trailing singletons
  return f, dict(kernel=f.shape[:2], cin_g=f.shape[2], cout=f.shape[3],
                 pad=_pad4(pad, where), stride=_pair(stride, 1, where, "stride"),
                 dilation=_pair(dilate, 1, where, "dilate"), bias=has_bias)


def _bias(b, cout, where) -> np.ndarray:
  b = np.asarray(b, np.float32).ravel(order="F")
  if b.size == 0:
    return np.zeros(cout, np.float32)
  if b.size != cout:
    raise MatConvNetError(f"{where}: {b.size} biases for {cout} filters")
  return b


def _bnorm(mult, bias, moments, where) -> tuple[np.ndarray, np.ndarray]:
  """(s, t) with `y = s * x + t` for MatConvNet's test-time batch norm."""
  g = np.asarray(mult, np.float64).ravel(order="F")
  b = np.asarray(bias, np.float64).ravel(order="F")
  m = np.asarray(moments, np.float64)
  if m.ndim != 2 or m.shape[1] != 2 or not (g.size == b.size == m.shape[0]):
    raise MatConvNetError(f"{where}: batch norm needs C multipliers, C biases and Cx2 "
                          f"moments, got {g.size}, {b.size}, {m.shape}")
  s = g / m[:, 1]
  return s, b - m[:, 0] * s


def _add_params(weights: dict, name: str, params, where: str) -> str | None:
  """Files a layer's parameters under its sanitised name (None: it has none)."""
  if params is None:
    return None
  key = _sanitize(name)
  if key in weights:
    raise MatConvNetError(f"{where}: two layers map to parameter name {key!r}")
  weights[key] = params
  return key


def _simple_ops(net, path, size):
  ops, weights = [], {}
  layers = _cells(_get(net, "layers"))
  if not layers:
    raise MatConvNetError(f"{path}: net.layers is empty")
  x = "input"
  for i, layer in enumerate(layers):
    layer = _one(layer)
    ltype = _str(_get(layer, "type"))
    name = _str(_get(layer, "name")) or f"layer{i + 1}"
    where = f"{path}: layer {i + 1} {name!r} ({ltype})"
    y = name
    kind, attrs, params = _layer(ltype, layer, where)
    if kind is None:
      continue
    key = _add_params(weights, name, params, where)
    ops.append(Op(kind, name, (x,), (y,), tuple(sorted(attrs.items())), key))
    x = y
  return ops, weights, (("input", size),)


def _layer(ltype: str, layer, where: str, dag_params: Sequence[np.ndarray] | None = None):
  """(kind, attrs, params) of one SimpleNN layer or DagNN block."""
  get = lambda f, d=None: _get(layer, f, d)
  if ltype == "conv":
    if dag_params is not None:
      ws = list(dag_params)
    else:
      w = get("weights")
      ws = _cells(w) if w is not None and np.asarray(w).size else [get("filters"), get("biases")]
    if not ws or ws[0] is None:
      raise MatConvNetError(f"{where}: no filters")
    has_bias = len(ws) > 1 and ws[1] is not None and np.asarray(ws[1]).size > 0
    if dag_params is not None:
      has_bias = _nums(get("hasBias"), [1])[0] != 0 and len(ws) > 1
    f, attrs = _conv_attrs(ws[0], get("pad"), get("stride"), get("dilate"), has_bias, where)
    b = _bias(ws[1] if has_bias else [], attrs["cout"], where)
    return "conv", attrs, {"kernel": f, "bias": b}
  if ltype == "pool":
    method = _str(get("method"), "max")
    if method not in ("max", "avg"):
      raise MatConvNetError(f"{where}: pool method {method!r} (max, avg)")
    k = _pair(get("pool", get("poolSize")), 1, where, "pool")
    return "pool", dict(method=method, kernel=k, pad=_pad4(get("pad"), where),
                        stride=_pair(get("stride"), 1, where, "stride")), None
  if ltype == "relu":
    return "relu", dict(leak=float(_nums(get("leak"), [0])[0])), None
  if ltype in ("lrn", "normalize"):
    p = _nums(get("param"))
    if len(p) != 4:
      raise MatConvNetError(f"{where}: LRN param must be [N kappa alpha beta], got {p}")
    return "lrn", dict(n=int(p[0]), kappa=p[1], alpha=p[2], beta=p[3]), None
  if ltype == "bnorm":
    ws = list(dag_params) if dag_params is not None else _cells(get("weights"))
    if len(ws) != 3:
      raise MatConvNetError(f"{where}: batch norm needs 3 weights (mult, bias, moments), got {len(ws)}")
    s, t = _bnorm(*ws, where)
    return "affine", dict(channels=s.size), {"scale": s.astype(np.float32),
                                             "shift": t.astype(np.float32)}
  if ltype == "dropout":
    return "identity", {}, None
  if ltype == "softmax":
    return "softmax", {}, None
  if ltype == "sigmoid":
    return "sigmoid", {}, None
  if ltype in ("softmaxloss", "loss"):
    return None, None, None
  if ltype == "concat":
    return "concat", dict(dim=int(_nums(get("dim"), [3])[0])), None
  if ltype == "sum":
    return "sum", {}, None
  raise MatConvNetError(f"{where}: unsupported layer type {ltype!r}; supported: "
                        f"{', '.join(_SUPPORTED)} (DagNN: {', '.join(_DAG_TYPES)})")


def _dag_ops(net, path, size):
  params = {}
  for p in _cells(_get(net, "params")):
    p = _one(p)
    params[_str(_get(p, "name"))] = _get(p, "value")
  layers = [_one(l) for l in _cells(_get(net, "layers"))]
  produced = {}
  for l in layers:
    for v in _cells(_get(l, "outputs")):
      produced[_str(v)] = _str(_get(l, "name"))
  # Execution order: MatConvNet's is topological over the variables.
  pending, order, known = list(layers), [], set()
  all_inputs = [_str(v) for l in layers for v in _cells(_get(l, "inputs"))]
  inputs = [v for v in dict.fromkeys(all_inputs) if v not in produced]
  known.update(inputs)
  while pending:
    ready = [l for l in pending if all(_str(v) in known for v in _cells(_get(l, "inputs")))]
    if not ready:
      names = [_str(_get(l, "name")) for l in pending]
      raise MatConvNetError(f"{path}: layers {names} wait on variables no layer produces "
                            "(a cycle or a missing layer)")
    for l in ready:
      order.append(l)
      known.update(_str(v) for v in _cells(_get(l, "outputs")))
      pending.remove(l)
  ops, weights, used = [], {}, set()
  label_inputs = set()
  for l in order:
    name = _str(_get(l, "name"))
    dtype = _str(_get(l, "type"))
    where = f"{path}: layer {name!r} ({dtype})"
    if dtype not in _DAG_TYPES:
      raise MatConvNetError(f"{where}: unsupported DagNN block; supported: "
                            f"{', '.join(_DAG_TYPES)}")
    kind = _DAG_TYPES[dtype]
    pnames = [_str(p) for p in _cells(_get(l, "params"))]
    missing = [p for p in pnames if p not in params]
    if missing:
      raise MatConvNetError(f"{where}: parameters {missing} are not in net.params")
    used.update(pnames)
    block = _one(_get(l, "block"))
    ins = tuple(_str(v) for v in _cells(_get(l, "inputs")))
    outs = tuple(_str(v) for v in _cells(_get(l, "outputs")))
    if kind == "loss":
      label_inputs.update(ins[1:])
      continue
    okind, attrs, wts = _layer(kind, block, where,
                               [params[p] for p in pnames] if pnames else None)
    key = _add_params(weights, name, wts, where)
    ops.append(Op(okind, name, ins, outs, tuple(sorted(attrs.items())), key))
  unused = [p for p in params if p not in used]
  common.check_complete(path, unexpected=[f"net.params '{p}'" for p in unused])
  data_inputs = [v for v in inputs if v not in label_inputs]
  if isinstance(size, Mapping):
    missing = [v for v in data_inputs if v not in size]
    if missing:
      raise MatConvNetError(f"{path}: no input_size for input(s) {missing}")
    return ops, weights, tuple((v, tuple(size[v])) for v in data_inputs)
  if len(data_inputs) != 1:
    raise MatConvNetError(f"{path}: inputs {data_inputs}: pass input_size as "
                          "{variable: (H, W, C)} for a multi-input net")
  return ops, weights, ((data_inputs[0], size),)


def _finish(ops, weights, inputs, path, labels) -> tuple[Graph, dict]:
  """Folds batch norms into convolutions, checks channel counts, picks taps/logits."""
  consumers: dict[str, int] = {}
  for op in ops:
    for v in op.inputs:
      consumers[v] = consumers.get(v, 0) + 1
  folded: list[Op] = []
  aliases: dict[str, str] = {}
  for op in ops:
    prev = folded[-1] if folded else None
    if (op.kind == "affine" and prev is not None and prev.kind == "conv"
        and op.inputs == prev.outputs and consumers.get(op.inputs[0]) == 1):
      bn, w = weights.pop(op.params), weights[prev.params]
      if bn["scale"].size != w["kernel"].shape[-1]:
        raise MatConvNetError(f"{path}: layer {op.name!r}: {bn['scale'].size} batch-norm "
                              f"channels after {w['kernel'].shape[-1]} filters")
      w["kernel"] = (w["kernel"] * bn["scale"]).astype(np.float32)
      w["bias"] = (w["bias"] * bn["scale"] + bn["shift"]).astype(np.float32)
      folded[-1] = dataclasses.replace(prev, outputs=op.outputs)
      aliases[prev.name] = op.outputs[0]
      aliases[op.name] = op.outputs[0]
      continue
    folded.append(op)
  # Channel bookkeeping: fail on the layer, not deep inside XLA.
  channels = {v: s[2] for v, s in inputs}
  for i, op in enumerate(folded):
    where = f"{path}: layer {op.name!r}"
    cin = [channels.get(v) for v in op.inputs]
    if op.kind == "conv":
      a = dict(op.attrs)
      if cin[0] % a["cin_g"]:
        raise MatConvNetError(f"{where}: filters expect {a['cin_g']} input channels "
                              f"(or a divisor of the input's), the input has {cin[0]}")
      out = a["cout"]
      if out % (cin[0] // a["cin_g"]):
        raise MatConvNetError(f"{where}: {out} filters cannot be split into "
                              f"{cin[0] // a['cin_g']} groups")
      a["groups"] = cin[0] // a["cin_g"]
      folded[i] = dataclasses.replace(op, attrs=tuple(sorted(a.items())))
    elif op.kind == "affine":
      out = cin[0]
      if op.attr("channels") != out:
        raise MatConvNetError(f"{where}: batch norm has {op.attr('channels')} channels, "
                              f"the input {out}")
    elif op.kind == "concat":
      out = sum(cin) if op.attr("dim") == 3 else cin[0]
    else:
      out = cin[0]
    for v in op.outputs:
      channels[v] = out
  taps = {}
  for op in folded:
    taps[op.name] = op.outputs[0]
    for v in op.outputs:
      taps.setdefault(v, v)
  taps.update(aliases)
  last = folded[-1]
  logits = last.inputs[0] if last.kind == "softmax" else last.outputs[0]
  name = os.path.splitext(os.path.basename(path))[0]
  return Graph(name, path, tuple(inputs), tuple(folded), tuple(taps.items()), logits,
               labels), weights


# ---------------------------------------------------------------------------
# The Flax module: the graph as `stviz_jax.models.netgraph` layers.


def MatConvNet(graph: Graph) -> netgraph.Net:  # noqa: N802 - was the module class
  """A MatConvNet `Graph` as a `netgraph.Net`: `__call__(inputs: {var: (N, H, W, C)})`."""
  value: dict[str, int] = {}  # variable -> its value (the latest to write it)
  for var, _ in graph.inputs:
    value[var] = len(value)
  count = len(value)
  steps = []
  for op in graph.ops:
    ins = [value[v] for v in op.inputs]
    if op.kind == "identity":  # dropout: its outputs are its input
      out = ins[0]
    else:
      out = count
      count += 1
      steps.append((lambda bottoms, top, op=op: _node(op, bottoms, top), ins, out))
    for v in op.outputs:
      value[v] = out
  return common.build_net(steps, [(name, value[var]) for name, var in graph.taps], count,
                          logits=value[graph.logits],
                          inputs=[(var, i) for i, (var, _) in enumerate(graph.inputs)],
                          logits_reduce="squeeze")


def _node(op: Op, bottoms: list[str], top: str):
  """The netgraph layer of one op."""
  a = dict(op.attrs)
  name = op.params or _sanitize(op.name)
  x = bottoms[0]
  if op.kind == "conv":
    t, b, l, r = a["pad"]
    return netgraph.Conv(name, x, a["cout"], a["kernel"], a["stride"], ((t, b), (l, r)),
                         relu=False, top=top, groups=a["groups"], dilation=a["dilation"])
  if op.kind == "affine":
    return netgraph.Affine(name, x, a["channels"], top=top)
  if op.kind == "pool":
    t, b, l, r = a["pad"]
    return netgraph.Pool(name, x, a["method"], a["kernel"], a["stride"], ((t, b), (l, r)),
                         ceil_mode=False, top=top, count_pad=False)
  if op.kind == "relu":
    if a["leak"]:
      return netgraph.Activation(name, x, "leaky_relu", (a["leak"],), top=top)
    return netgraph.Activation(name, x, "relu", top=top)
  if op.kind == "lrn":
    return netgraph.LRN(name, x, a["n"], a["alpha"], a["beta"], a["kappa"], top=top)
  if op.kind in ("softmax", "sigmoid"):
    return netgraph.Activation(name, x, op.kind, top=top)
  if op.kind == "concat":
    return netgraph.Concat(name, tuple(bottoms), top=top, axis=a["dim"])
  if op.kind == "sum":
    return netgraph.Add(name, tuple(bottoms), top=top)
  raise MatConvNetError(f"layer {op.name!r}: unknown op {op.kind}")


# ---------------------------------------------------------------------------
# The stviz_jax model.


def load(path: str, *, streams: Mapping[str, str] | None = None, flow: bool = False,
         input_size: Sequence[int] | None = None,
         value_range: tuple[float, float] = (-128.0, 128.0),
         name: str | None = None, variables=None) -> base.Model:
  """A MatConvNet `.mat` net as a stviz_jax `Model`.

  Args:
    path: SimpleNN or DagNN file.
    streams: network input variable -> stream name (default: 'rgb' for a
      3-channel input, 'flow' when `flow` is set, else the variable's name).
    flow: read a 2k-channel input as k flow frames `(N, k, H, W, 2)`
      interleaved `[u1, v1, ..., uk, vk]` (the two-stream convention).
    input_size: `(H, W, C)` if the file's meta does not say.
    value_range: typical input range, for regulariser bounds.
    name: model name (default: the file name).
    variables: already converted variables (from `load_converted`).

  Returns:
    The `Model`; `model.labels` are the class names (class k, 1-based in
    MatConvNet, is logit k - 1).
  """
  graph, weights = read(path, input_size=input_size)
  module = MatConvNet(graph)
  specs, adapters = {}, {}
  for var, (h, w, c) in graph.inputs:
    sname = (streams or {}).get(var) or ("flow" if flow else "rgb" if c == 3 else var)
    if sname == "flow":
      if c % 2:
        raise MatConvNetError(f"{path}: input {var!r} has {c} channels; flow needs 2k")
      specs[sname] = base.StreamSpec(c // 2, h, w, 2, value_range)
      adapters[var] = (sname, True)
    else:
      specs[sname] = base.StreamSpec(1, h, w, c, value_range)
      adapters[var] = (sname, False)

  def adapt(inputs):
    out = {}
    for var, (sname, is_flow) in adapters.items():
      x = inputs[sname]
      if is_flow:
        n, k, hh, ww, _ = x.shape
        out[var] = jnp.moveaxis(x, 1, 3).reshape(n, hh, ww, 2 * k)
      else:
        out[var] = x[:, 0]
    return out

  dummy = {var: jnp.zeros((1, h, w, c)) for var, (h, w, c) in graph.inputs}
  expected = jax.eval_shape(lambda: module.init(jax.random.PRNGKey(0), dummy))
  if variables is None:
    flat = {f"params/{k}/{n}": v for k, ws in weights.items() for n, v in ws.items()}
  else:
    flat = common.flatten(variables)
  variables = jax.tree.map(jnp.asarray, common.fill_like(expected, flat, path))
  return base.wrap(module, variables, specs, adapt_inputs=adapt,
                   name=name or graph.name, labels=graph.labels,
                   layers=[n for n, _ in graph.taps] + [base.LOGITS])


# ---------------------------------------------------------------------------
# Zoo architectures from MatConvNet releases (tables keyed by DagNN layer name).

_VGG16_CONVS = ("conv1_1", "conv1_2", "conv2_1", "conv2_2", "conv3_1", "conv3_2",
                "conv3_3", "conv4_1", "conv4_2", "conv4_3", "conv5_1", "conv5_2",
                "conv5_3")


def _to_target(w, shape: tuple[int, ...], where: str) -> np.ndarray:
  """A MatConvNet filter into the zoo kernel layout of shape `shape`.

  * `(C_in, C_out)` Dense: a `kh x kw x Cin x Cout` fully connected filter,
    flattened in C order = the zoo's (H, W, C) input order;
  * `(kh, kw, Cin, Cout)`: as stored;
  * `(T, H, W, Cin, Cout)`: a `dagnn.Conv3D` filter `[H W T Cin Cout]`
    (twostreamfusion), or a `dagnn.ConvTime` filter `[1 T Cin Cout]`
    (st-resnet: the temporal taps along the second axis, earliest first).
  """
  w = np.asarray(w, np.float32)
  if len(shape) == 2:
    out = w.reshape(w.shape + (1,) * (4 - w.ndim)) if w.ndim < 4 else w
    return out.reshape(-1, out.shape[-1])
  if len(shape) == 4:
    return w.reshape(w.shape + (1,) * (4 - w.ndim))
  if len(shape) == 5:
    if w.ndim == 5:
      return np.transpose(w, (2, 0, 1, 3, 4))
    if w.ndim == 4 and w.shape[0] == 1 and shape[1:3] == (1, 1):
      return np.transpose(w, (1, 0, 2, 3))[:, :, None]
  raise ValueError(f"{where}: filter {w.shape} does not map to a kernel {shape}")


def _twostreamfusion_scope(layer: str) -> str | None:
  """`feichtenhofer/twostreamfusion` (`cnn_ucf101_fusion.m`) layer -> `vgg16_fusion` scope.

  Layers carry `_spatial` / `_temporal` suffixes, the class layer is renamed
  `prediction` (-> fc8), the fusion convolution is `conv53D`; the spatial
  (fusion) tower's fc layers are the top-level head.
  """
  if layer == "conv53D":
    return "conv5_fusion"
  for suffix, tower, head in (("_spatial", "rgb/", ""), ("_temporal", "flow/", "flow/")):
    if layer.endswith(suffix):
      name = layer[:-len(suffix)]
      if name in ("fc6", "fc7"):
        return head + name
      if name == "prediction":
        return head + "fc8"
      return tower + name
  return None


def _stresnet_scope(layer: str) -> str | None:
  """`feichtenhofer/st-resnet` (`STResNet_stage1/2.m`) layer -> `st_resnet50` scope:
  `X_spatial` -> `rgb/X`, `X_temporal` -> `flow/X` (Caffe ResNet-50 names)."""
  for suffix, tower in (("_spatial", "rgb/"), ("_temporal", "flow/")):
    if layer.endswith(suffix):
      return tower + layer[:-len(suffix)]
  return None


ZOO_TABLES = {"vgg16_fusion": _twostreamfusion_scope, "st_resnet50": _stresnet_scope}


def to_zoo(path: str, architecture: str = "vgg16_fusion", *, target=None, **overrides):
  """A MatConvNet DagNN release into a zoo architecture, strictly by layer name.

  Each DagNN layer with parameters maps to one zoo scope (`ZOO_TABLES`): a
  convolution's `[filter, bias]` to `kernel`/`bias` (layout from the target's
  shape, see `_to_target`), a batch norm's `[mult, bias, moments]` to the
  unfolded zoo's `scale`/`bias` and `batch_stats` `mean` = mu, `var` =
  sigma^2 - eps (so the zoo's `sqrt(var + eps)` is MatConvNet's sigma
  exactly). Every layer must map, every parameter be used, every zoo
  parameter filled.

  Args:
    path: the `.mat` file (variable `net`, DagNN).
    architecture: a key of `ZOO_TABLES`.
    target: the zoo model built with these overrides and `folded=False`
      (optional; built here otherwise).
    **overrides: zoo factory arguments (`frames`, `num_classes`, ...).

  Returns:
    `(model, overrides)`: the zoo model (batch norm unfolded) with the weights.
  """
  from stviz_jax.models import registry
  if architecture not in ZOO_TABLES:
    raise ValueError(f"no MatConvNet table for {architecture!r}; available: "
                     f"{', '.join(ZOO_TABLES)}")
  scope_of = ZOO_TABLES[architecture]
  mat = loadmat(path)
  if "net" not in mat:
    raise MatConvNetError(f"{path}: no variable 'net'")
  net = _one(mat["net"])
  params = {_str(_get(_one(p), "name")): _get(_one(p), "value")
            for p in _cells(_get(net, "params"))}
  if target is None:
    target = registry.load(architecture, folded=False, **overrides)
  template = {k: tuple(np.shape(v)) for k, v in common.flatten(target.variables).items()}
  eps = float(getattr(target.module, "bn_eps", 1e-5))
  values, unexpected, mismatched, used = {}, [], [], set()
  for layer in (_one(l) for l in _cells(_get(net, "layers"))):
    name = _str(_get(layer, "name"))
    pnames = [_str(p) for p in _cells(_get(layer, "params"))]
    if not pnames:
      continue
    scope = scope_of(name)
    if scope is not None and not any(f"params/{scope}/{leaf}" in template
                                     for leaf in ("kernel", "scale")):
      unexpected.append(f"layer {name} (-> {scope}, not a parameter of {architecture})")
      used.update(pnames)
      continue
    missing = [p for p in pnames if p not in params]
    if scope is None or missing:
      unexpected.append(f"layer {name} ({', '.join(pnames)})" if scope is None else
                        f"layer {name} params {missing} absent from net.params")
      continue
    used.update(pnames)
    w = [params[p] for p in pnames]
    where = f"layer {name}"
    try:
      if f"params/{scope}/scale" in template:
        if len(w) != 3:
          raise ValueError(f"{where}: batch norm needs [mult, bias, moments], has {len(w)}")
        m = np.asarray(w[2], np.float64)
        values[f"params/{scope}/scale"] = _bias_vec(w[0])
        values[f"params/{scope}/bias"] = _bias_vec(w[1])
        values[f"batch_stats/{scope}/mean"] = m[:, 0].astype(np.float32)
        values[f"batch_stats/{scope}/var"] = (m[:, 1] ** 2 - eps).astype(np.float32)
      else:
        key = f"params/{scope}/kernel"
        values[key] = _to_target(w[0], template.get(key, ()), where)
        if len(w) > 1:
          values[f"params/{scope}/bias"] = _bias_vec(w[1])
    except ValueError as e:
      mismatched.append(str(e))
  unexpected += [f"net.params '{p}'" for p in params if p not in used]
  unfilled = [k for k in template if k not in values]
  common.check_complete(path, missing=unfilled, unexpected=unexpected, mismatched=mismatched)
  variables = jax.tree.map(jnp.asarray, common.fill_like(target.variables, values, path))
  model = base.wrap(target.apply, variables, target.spec.streams,
                    layers=target.spec.layers, name=target.name, labels=target.labels)
  return model, dict(overrides)


def _bias_vec(b):
  return np.asarray(b, np.float32).ravel(order="F")


ARCHITECTURE = "matconvnet"


def save(output: str, path: str, overwrite: bool = False, **kwargs) -> base.Model:
  """Converts and writes a weights directory; `load_converted(output)` reads it back."""
  checkpoint.check_output(output, overwrite=overwrite, inputs=[path])
  model = load(path, **kwargs)
  common.save(output, model.variables, source=path, architecture=ARCHITECTURE,
              fmt="matconvnet", overwrite=overwrite, options={k: (list(v) if isinstance(v, tuple) else v)
                                         for k, v in kwargs.items()})
  return model


def load_converted(path: str) -> base.Model:
  """Rebuilds a model written by `save`: the structure from the original `.mat`
  (recorded in the metadata, sha256 checked), the weights from the checkpoint."""
  variables, meta = checkpoint.restore(path)
  if meta.get("architecture") != ARCHITECTURE:
    raise MatConvNetError(f"{path}: weights are for {meta.get('architecture')!r}")
  src = meta["source"]
  if not os.path.exists(src) or checkpoint.sha256(src) != meta["source_sha256"]:
    raise MatConvNetError(f"{path}: its source {src} is gone or changed (sha256); "
                          "the net structure is read from it")
  return load(src, variables=variables, **meta.get("options", {}))


@cli.entry_point
def main(argv: Sequence[str] | None = None) -> int:
  parser = cli.ArgumentParser(
      prog="python -m converters.matconvnet",
      description="Convert a MatConvNet SimpleNN/DagNN .mat net into a stviz_jax "
                  "weights directory (read it back with converters.matconvnet."
                  "load_converted).")
  parser.add_argument("mat", help="the .mat file with variable 'net'")
  parser.add_argument("output", help="weights directory to write (new, empty or a "
                                      "previous conversion, replaced atomically)")
  common.add_output_flags(parser)
  parser.add_argument("--flow", action="store_true",
                      help="read a 2k-channel input as k (u, v) flow frames")
  parser.add_argument("--input-size", default=None,
                      type=lambda s: tuple(int(v) for v in s.split(",")),
                      help="H,W,C when meta.inputSize is missing")
  parser.add_argument("--architecture", default=None, choices=sorted(ZOO_TABLES),
                      help="fill this zoo architecture (e.g. the twostreamfusion "
                           "release into vgg16_fusion); read back with "
                           "stviz_jax.models.load(ARCH, weights=OUTPUT)")
  parser.add_argument("--arg", action="append", default=[], metavar="KEY=JSON",
                      help="with --architecture: zoo factory argument, e.g. num_classes=51")
  args = parser.parse_args(argv)
  # Errors become one line (exit code 2 for bad input) in stviz_jax.cli.
  checkpoint.check_output(args.output, overwrite=args.overwrite, inputs=[args.mat])
  if args.architecture:
    overrides = common.parse_overrides(args.arg)
    model, kwargs = to_zoo(args.mat, args.architecture, **overrides)
    common.save(args.output, model.variables, source=args.mat,
                architecture=args.architecture, fmt="matconvnet",
                overwrite=args.overwrite, load_kwargs=kwargs)
    hint = (f"stviz_jax.models.load({args.architecture!r}, weights={args.output!r}"
            + "".join(f", {k}={v!r}" for k, v in kwargs.items()) + ")")
  else:
    kwargs = {"flow": args.flow}
    if args.input_size:
      kwargs["input_size"] = args.input_size
    model = save(args.output, args.mat, overwrite=args.overwrite, **kwargs)
    hint = f"converters.matconvnet.load_converted({args.output!r})"
  common.report_written(args.output, model, hint)
  return 0


if __name__ == "__main__":
  sys.exit(main())
