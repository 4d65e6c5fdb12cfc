"""Any PyTorch video network as a `Model`: `from_torch(module, example_inputs)`.

The module is traced with `torch.fx` symbolic tracing, its shapes are
propagated on the example input (`ShapeProp`) and every traced op becomes a
`netgraph` node, so the converted network runs on the zoo's executor (its
convolutions and max pools take the fast paths, `redirected_relu` and
`only_channel` work). torch is imported only when converting (it is the
optional `torch` extra); running a converted model needs none.

Layout: PyTorch tensors are channels first, `(N, C, T, H, W)` for 3-D nets
and `(N, C, H, W)` for 2-D towers; the model's input stream is the project's
`(N, T, H, W, C)` (a 2-D tower's `T` is 1, or for `stream='flow'` with
`2L` input channels the `L` flow frames `(u, v)` that netgraph stacks into
the channels `(u_1, v_1, u_2, v_2, ...)`, the two-stream papers' order). Every
blob is channels last; a 2-D tower's blobs keep a time axis of 1.

Mapped (module and functional forms): Conv1d/2d/3d (groups, dilation, zero
padding incl. 'same'), BatchNorm (folded into the convolution it follows,
else a per-channel `Affine`), Linear (after a flatten of `C x T x H x W` its
input rows are permuted from PyTorch's channel-first order to the blobs'
channels-last order), ReLU, ReLU6, LeakyReLU, Sigmoid, Tanh, GELU, SiLU,
Hardswish, Hardsigmoid, Softmax over channels, Max/AvgPool 1d/2d/3d (ceil_mode,
count_include_pad), AdaptiveAvg/MaxPool to 1 or to sizes dividing the input,
cat, add/iadd/sub (also with scalars), mul, division by a scalar, mean over
time/space, flatten/view/reshape/squeeze/permute to `(N, C)`, Dropout and
Identity (no-ops). Anything else is refused in one line naming the op and its
module path, and nothing is converted.

Weights are carried over strictly: every parameter and buffer of the module
is consumed by a node (BatchNorm's `num_batches_tracked` aside) and every
variable of the graph filled with the right shape, or one `TorchGraphError`
lists every problem. Submodules the traced forward never calls (Inception v3's
`AuxLogits` in eval mode) must be named in `ignore`. The conversion is of the
module in eval mode (batch norm with its running statistics).

Taps are the PyTorch module paths (`layer3.1.conv2`, `features.28`): a
module's feature is the output of the last op run inside it (a convolution
followed by a folded batch norm shares its blob with the batch norm); the
logits are the module's output (an output that is not `(N, K)` is averaged
over time and space).

Size (~780 lines): one concept, the mapping of traced PyTorch ops to
netgraph nodes; the op table, its argument normalisation and the weight
layouts have to be read together.
"""

from __future__ import annotations

import dataclasses
import math
import os
import traceback
from typing import Any, Sequence

import jax
import numpy as np

from stviz_jax.models import base, checkpoint, converted, netgraph
from stviz_jax.models.specs import StreamSpec


class TorchGraphError(checkpoint.ConversionError):
  """A PyTorch module that cannot be traced, has an unsupported op, or whose
  weights do not fill the converted graph."""


# Function/method names (`target.__name__` or the method) -> canonical op.
_FUNCTIONS = {
    "add": "add", "iadd": "add", "add_": "add", "sub": "sub", "isub": "sub", "sub_": "sub",
    "mul": "mul", "imul": "mul", "mul_": "mul", "truediv": "div", "div": "div",
    "cat": "cat", "concat": "cat", "concatenate": "cat", "flatten": "flatten",
    "view": "reshape", "reshape": "reshape", "squeeze": "squeeze", "permute": "permute",
    "transpose": "permute", "mean": "mean", "sum": "sum", "contiguous": "identity",
    "dropout": "identity", "dropout1d": "identity", "dropout2d": "identity",
    "dropout3d": "identity", "alpha_dropout": "identity", "relu": "relu", "relu_": "relu", "relu6": "relu6",
    "leaky_relu": "leaky_relu", "sigmoid": "sigmoid", "tanh": "tanh", "gelu": "gelu",
    "silu": "silu", "hardswish": "hardswish", "hardsigmoid": "hardsigmoid",
    "softmax": "softmax", "size": "meta", "getattr": "meta", "getitem": "meta",
    **{f"{k}_pool{d}d": f"{k}_pool" for k in ("max", "avg") for d in (1, 2, 3)},
    **{f"_max_pool{d}d": "max_pool" for d in (1, 2, 3)},
    **{f"adaptive_{k}_pool{d}d": f"adaptive_{k}_pool" for k in ("max", "avg")
       for d in (1, 2, 3)},
}
# Argument names of the functional forms, in positional order (defaults in _DEFAULTS).
_SIGNATURES = {
    "max_pool": ("input", "kernel_size", "stride", "padding", "dilation", "ceil_mode",
                 "return_indices"),
    "avg_pool": ("input", "kernel_size", "stride", "padding", "ceil_mode",
                 "count_include_pad", "divisor_override"),
    "adaptive_avg_pool": ("input", "output_size"), "adaptive_max_pool": ("input", "output_size"),
    "leaky_relu": ("input", "negative_slope"), "gelu": ("input", "approximate"),
    "softmax": ("input", "dim"), "cat": ("tensors", "dim"),
    "flatten": ("input", "start_dim", "end_dim"), "mean": ("input", "dim", "keepdim"),
    "sum": ("input", "dim", "keepdim"),
    "add": ("input", "other", "alpha"), "sub": ("input", "other", "alpha"),
    "mul": ("input", "other"), "div": ("input", "other"),
}
_DEFAULTS = {"stride": None, "padding": 0, "dilation": 1, "ceil_mode": False,
             "return_indices": False, "count_include_pad": True, "divisor_override": None,
             "negative_slope": 0.01, "approximate": "none", "dim": None, "start_dim": 0,
             "end_dim": -1, "keepdim": False, "alpha": 1}
_ACTIVATIONS = ("relu", "relu6", "sigmoid", "tanh", "silu", "hardswish", "hardsigmoid")
SUPPORTED = ("Conv1d/2d/3d, BatchNorm1d/2d/3d, Linear, ReLU, ReLU6, LeakyReLU, Sigmoid, "
             "Tanh, GELU, SiLU, Hardswish, Hardsigmoid, Softmax(dim=1), Max/AvgPool1d/2d/3d, "
             "AdaptiveAvg/MaxPool1d/2d/3d (to 1 or a divisor), Dropout, Identity, Flatten, "
             "cat, add, sub, mul, div by a scalar, mean/sum over time/space, "
             "flatten/view/reshape/squeeze/permute to (N, C)")


@dataclasses.dataclass
class _Value:
  """A traced tensor: its netgraph blob and PyTorch shape.

  `extra` is 1 when the blob has a time axis the tensor lacks (2-D towers);
  `flat_of` is the value a `(N, K)` flatten read (a following Linear reads that
  blob with permuted rows); `squeeze_of` marks a permute of a tensor with one
  non-batch axis longer than 1, valid only on the way to `(N, C)`.
  """

  blob: str
  shape: tuple[int, ...]
  extra: int = 0
  flat_of: "_Value | None" = None
  squeeze_of: "_Value | None" = None

  def axis(self, dim: int) -> int:
    """The blob axis of PyTorch dimension `dim` (channels first -> last)."""
    dim = dim % len(self.shape)
    if dim == 0:
      return 0
    if dim == 1:
      return len(self.shape) + self.extra - 1
    return dim - 1 + self.extra


def _torch():
  try:
    import torch  # pylint: disable=import-outside-toplevel
    import torch.fx  # pylint: disable=import-outside-toplevel,unused-import
    import torch.fx.passes.shape_prop  # pylint: disable=import-outside-toplevel,unused-import
  except ImportError:
    raise TorchGraphError("from_torch needs torch (pip install 'stviz_jax[torch]')") from None
  return torch


def module_kinds(torch) -> list[tuple[type, str]]:
  """`(module class, op)` for every module kind mapped, most specific first.

  PyTorch's base classes (`_ConvNd`, `_MaxPoolNd`, ...) cover the 1-D, 2-D and
  3-D forms and subclasses such as torchvision's `Conv3DNoTemporal`.
  """
  nn, mods = torch.nn, torch.nn.modules
  # pylint: disable=protected-access
  return [(mods.conv._ConvNd, "conv"), (mods.batchnorm._BatchNorm, "batchnorm"),
          (nn.Linear, "linear"), (mods.pooling._MaxPoolNd, "max_pool"),
          (mods.pooling._AvgPoolNd, "avg_pool"),
          (mods.pooling._AdaptiveAvgPoolNd, "adaptive_avg_pool"),
          (mods.pooling._AdaptiveMaxPoolNd, "adaptive_max_pool"),
          (mods.dropout._DropoutNd, "identity"), (nn.Identity, "identity"),
          (nn.Flatten, "flatten"), (nn.ReLU6, "relu6"), (nn.ReLU, "relu"),
          (nn.LeakyReLU, "leaky_relu"), (nn.Sigmoid, "sigmoid"), (nn.Tanh, "tanh"),
          (nn.GELU, "gelu"), (nn.SiLU, "silu"), (nn.Hardswish, "hardswish"),
          (nn.Hardsigmoid, "hardsigmoid"), (nn.Softmax, "softmax")]


def trace(module, example):
  """The `torch.fx.GraphModule` of `module`, shapes propagated on `example`.

  Raises:
    TorchGraphError: one line naming the module (path and class) being traced
      and the Python construct where tracing failed.
  """
  torch = _torch()
  leaves = tuple(cls for cls, _ in module_kinds(torch))
  failed = []  # the innermost module whose tracing raised

  class Tracer(torch.fx.Tracer):
    def is_leaf_module(self, m, qualname):
      return isinstance(m, leaves) or super().is_leaf_module(m, qualname)

    def call_module(self, m, forward, args, kwargs):
      try:
        return super().call_module(m, forward, args, kwargs)
      except Exception:
        if not failed:
          failed.append(self.path_of_module(m))
        raise

  try:
    graph = Tracer().trace(module)
  except Exception as e:  # pylint: disable=broad-except
    path = failed[0] if failed else ""
    owner = module.get_submodule(path) if path else module
    raise TorchGraphError(
        f"cannot trace {type(module).__name__}: module {path or '<root>'} "
        f"({type(owner).__name__}) {_where(e)}: {type(e).__name__}: "
        f"{str(e).splitlines()[0] if str(e) else ''}; torch.fx symbolic tracing "
        "needs forward code without data-dependent control flow") from None
  gm = torch.fx.GraphModule(module, graph)
  with torch.no_grad():
    try:  # the module itself first: its own error, not ShapeProp's (printed) traceback
      module(example)
    except Exception as e:  # pylint: disable=broad-except
      raise TorchGraphError(f"{type(module).__name__} does not run on the example input "
                            f"{tuple(example.shape)}: {type(e).__name__}: "
                            f"{str(e).splitlines()[0] if str(e) else ''}") from None
    torch.fx.passes.shape_prop.ShapeProp(gm).propagate(example)
  return gm


def _where(e: BaseException) -> str:
  """`at file:line `code`` of the innermost frame outside torch (the construct)."""
  frames = [f for f in traceback.extract_tb(e.__traceback__)
            if f"{os.sep}torch{os.sep}" not in f.filename]
  if not frames:
    return ""
  f = frames[-1]
  return f"at {os.path.basename(f.filename)}:{f.lineno} `{(f.line or '').strip()}`"


def _path(node) -> str:
  if node.op == "call_module":
    return str(node.target)
  stack = node.meta.get("nn_module_stack") or {}
  return next(reversed(stack.values()))[0] if stack else ""


def _scopes(node) -> list[str]:
  """Module paths this node runs inside, innermost last (its own for a module)."""
  stack = [v[0] for v in (node.meta.get("nn_module_stack") or {}).values()]
  if node.op == "call_module" and str(node.target) not in stack:
    stack.append(str(node.target))
  return [p for p in stack if p]


def _tup(v, n: int) -> tuple:
  return tuple(v) if isinstance(v, (tuple, list)) else (v,) * n


class _Converter:
  """Walks the traced graph once, emitting nodes and filling variables."""

  def __init__(self, module, gm):
    self.kinds = module_kinds(_torch())
    self.module, self.gm = module, gm
    self.modules = dict(module.named_modules())
    self.nodes: list = []
    self.params: dict[str, dict[str, np.ndarray]] = {}
    self.scopes: dict[str, str] = {}  # module path -> its parameter scope
    self.used: set[str] = set()
    self.values: dict[Any, Any] = {}
    self.convs: dict[Any, str] = {}  # fx conv node -> its params scope (for folding)
    graph_nodes = list(gm.graph.nodes)
    last = {}
    for n in graph_nodes:
      for p in _scopes(n):
        last[p] = n
    self.taps = sorted(last.items(), key=lambda kv: (graph_nodes.index(kv[1]), -len(kv[0])))
    self.blob_names = {}
    for p, n in self.taps:
      self.blob_names.setdefault(n, p)

  def fail(self, node, what: str):
    raise TorchGraphError(f"{type(self.module).__name__}: {what} at module "
                          f"{_path(node) or '<root>'} (fx node {node.name}); supported: "
                          f"{SUPPORTED}")

  def blob(self, node) -> str:
    return self.blob_names.get(node, "#" + node.name)

  def emit(self, node, make, shape=None, extra=None, base_value=None):
    """Adds `make(top)` as the node producing fx `node`'s value."""
    top = self.blob(node)
    self.nodes.append(make(top))
    shape = shape if shape is not None else tuple(node.meta["tensor_meta"].shape)
    self.values[node] = _Value(top, tuple(shape),
                               base_value.extra if extra is None else extra)
    return self.values[node]

  def scope(self, node) -> str:
    """The parameter scope of module `node.target` ('layer1.0.conv1' -> 'layer1_0_conv1')."""
    path = str(node.target)
    if path in self.scopes:
      self.fail(node, "a module called more than once (shared weights)")
    name = path.replace(".", "_")
    while name in self.scopes.values():  # 'a.b' and 'a_b' both exist
      name += "_"
    self.scopes[path] = name
    return name

  def array(self, path: str, attr: str):
    t = getattr(self.modules[path], attr)
    if t is None:
      return None
    self.used.add(f"{path}.{attr}" if path else attr)
    return t.detach().cpu().double().numpy()

  # -- arguments ---------------------------------------------------------------

  def arg(self, a):
    """An fx argument as a `_Value`, a Python constant or a list of them."""
    if isinstance(a, (list, tuple)):
      return type(a)(self.arg(x) for x in a)
    if hasattr(a, "op"):  # an fx Node
      return self.values[a]
    return a

  def bind(self, node, op: str) -> dict:
    names = _SIGNATURES.get(op, ("input",))
    out = dict(_DEFAULTS)
    out.update(zip(names, node.args))
    out.update(node.kwargs)
    return {k: self.arg(v) for k, v in out.items()}

  # -- the walk ----------------------------------------------------------------

  def check_in_place(self, node, order: dict):
    """Refuses an in-place op whose input is read after it.

    torch.fx records `F.relu(x, inplace=True)` or `x += y` as a new value, so a
    later reader of `x` would see the old values here but the changed ones in
    PyTorch.
    """
    if node.op == "call_module":
      in_place = bool(getattr(self.modules[str(node.target)], "inplace", False))
    else:
      name = str(node.target if node.op == "call_method" else
                 getattr(node.target, "__name__", ""))
      in_place = (bool(node.kwargs.get("inplace")) or name in ("iadd", "isub", "imul")
                  or (name.endswith("_") and not name.startswith("_")))
    src = node.args[0] if node.args else None
    if in_place and hasattr(src, "users"):
      later = [u.name for u in src.users if order[u] > order[node]]
      if later:
        self.fail(node, f"an in-place op on {src.name}, which {', '.join(later)} read "
                  "afterwards (torch.fx does not see the change; make it out of place)")

  def run(self):
    order = {n: i for i, n in enumerate(self.gm.graph.nodes)}
    for node in self.gm.graph.nodes:
      if node.op in ("call_module", "call_function", "call_method"):
        self.check_in_place(node, order)
      if node.op == "placeholder":
        if self.values:
          self.fail(node, f"a second input {node.name!r} (one input tensor is supported)")
        shape = tuple(node.meta["tensor_meta"].shape)
        if len(shape) not in (4, 5):
          self.fail(node, f"input of shape {shape}: expected (N, C, T, H, W) or (N, C, H, W)")
        self.values[node] = _Value(self.blob(node), shape, 5 - len(shape))
      elif node.op == "get_attr":
        self.fail(node, f"a parameter read in forward ({node.target}; use the module, e.g. "
                  "nn.Conv3d, not F.conv3d with its weight)")
      elif node.op == "output":
        return self.output(node)
      elif node.op == "call_module":
        self.call_module(node, self.modules[str(node.target)])
      else:
        name = node.target if node.op == "call_method" else getattr(node.target, "__name__", "")
        op = _FUNCTIONS.get(name)
        if op is None:
          self.fail(node, f"unsupported op {name or node.target!r} ({node.op})")
        self.call(node, op, self.bind(node, op))
    raise TorchGraphError("traced graph has no output")

  def call_module(self, node, m):
    x = self.values[node.args[0]] if node.args else None
    op = next((op for cls, op in self.kinds if isinstance(m, cls)), None)
    if op is None:
      return self.fail(node, f"unsupported module {type(m).__name__}")
    if op == "conv":
      return self.conv(node, m, x)
    if op == "batchnorm":
      return self.batchnorm(node, m, x)
    if op == "linear":
      return self.linear(node, m, x)
    # The module's attributes are the functional form's arguments (kernel_size, ...).
    a = dict(_DEFAULTS, input=x)
    a.update({k: getattr(m, k) for k in _SIGNATURES.get(op, ())[1:] if hasattr(m, k)})
    return self.call(node, op, a)

  def call(self, node, op: str, a: dict):
    x = a.get("input")
    if op == "meta":  # x.size(0), x.shape[...]: only read by view/reshape
      if "tensor_meta" in node.meta:
        self.fail(node, f"unsupported op {getattr(node.target, '__name__', node.target)!r} "
                  "returning a tensor (indexing)")
      self.values[node] = None
      return None
    if op == "identity":
      self.values[node] = x
      return None
    if op == "cat":
      return self.cat(node, a)
    if not isinstance(x, _Value) and not (op in ("add", "sub", "mul", "div")
                                          and isinstance(a.get("other"), _Value)):
      self.fail(node, f"{op} of {type(x).__name__} (a tensor input is expected)")
    if isinstance(x, _Value) and x.squeeze_of is not None and op not in (
        "flatten", "reshape", "squeeze"):
      self.fail(node, f"{op} of a permuted tensor (a permute is supported only on the "
                "way to (N, C))")
    if op in ("add", "sub", "mul", "div"):
      return self.arith(node, op, a)
    if op in _ACTIVATIONS or op in ("leaky_relu", "gelu", "softmax"):
      return self.activation(node, op, a)
    if op in ("max_pool", "avg_pool"):
      return self.pool(node, op, a)
    if op in ("adaptive_avg_pool", "adaptive_max_pool"):
      return self.adaptive(node, op, a)
    if op in ("mean", "sum"):
      return self.mean(node, a, total=op == "sum")
    return self.reshape(node, op, a)

  def output(self, node):
    out = node.args[0]
    if not hasattr(out, "op") or self.values.get(out) is None:
      self.fail(node, f"module output {type(out).__name__} (the logits must be one tensor)")
    return self.values[out]

  # -- layers with weights -----------------------------------------------------

  def conv(self, node, m, x):
    path = str(node.target)
    nd = len(m.kernel_size)
    if len(x.shape) != nd + 2:
      self.fail(node, f"{type(m).__name__} on a tensor of shape {x.shape}")
    if m.padding_mode != "zeros":
      self.fail(node, f"padding_mode={m.padding_mode!r} (only 'zeros')")
    if m.transposed:
      self.fail(node, f"unsupported module {type(m).__name__}")
    if m.padding == "same":
      totals = [d * (k - 1) for d, k in zip(m.dilation, m.kernel_size)]
      pad = tuple((t // 2, t - t // 2) for t in totals)
    elif m.padding == "valid":
      pad = (0,) * nd
    else:
      pad = tuple(int(p) for p in m.padding)
    scope = self.scope(node)
    w = self.array(path, "weight")
    b = self.array(path, "bias")
    self.params[scope] = {
        "kernel": np.transpose(w, tuple(range(2, 2 + nd)) + (1, 0)),
        "bias": np.zeros(w.shape[0]) if b is None else b}
    self.convs[node] = scope
    self.emit(node, lambda top: netgraph.Conv(
        scope, x.blob, int(m.out_channels), tuple(m.kernel_size), tuple(m.stride), pad,
        relu=False, bias=True, top=top, groups=int(m.groups), dilation=tuple(m.dilation)),
        base_value=x)

  def batchnorm(self, node, m, x):
    path = str(node.target)
    if not m.track_running_stats or m.running_mean is None:
      self.fail(node, f"{type(m).__name__} without running statistics (it normalises "
                "with batch statistics in eval mode)")
    self.used.add(f"{path}.num_batches_tracked")
    mean, var = self.array(path, "running_mean"), self.array(path, "running_var")
    c = mean.shape[0]
    g = self.array(path, "weight") if m.affine else np.ones(c)
    beta = self.array(path, "bias") if m.affine else np.zeros(c)
    scale = g / np.sqrt(var + m.eps)
    shift = beta - mean * scale
    src = node.args[0]
    if src in self.convs and len(src.users) == 1:  # fold: conv's only reader is this BN
      p = self.params[self.convs.pop(src)]
      p["kernel"] = p["kernel"] * scale
      p["bias"] = p["bias"] * scale + shift
      self.values[node] = x
      return
    scope = self.scope(node)
    self.params[scope] = {"scale": scale, "shift": shift}
    self.emit(node, lambda top: netgraph.Affine(scope, x.blob, c, top=top), base_value=x)

  def linear(self, node, m, x):
    path = str(node.target)
    w, b = self.array(path, "weight"), self.array(path, "bias")
    src = x
    if x.flat_of is not None:
      src = x.flat_of
      c, spatial = src.shape[1], src.shape[2:]
      # PyTorch flattens (C, T, H, W); the blob flattens (T, H, W, C).
      w = w.reshape((w.shape[0], c) + tuple(spatial))
      w = np.transpose(w, (0,) + tuple(range(2, 2 + len(spatial))) + (1,)).reshape(
          w.shape[0], -1)
    elif len(x.shape) != 2:
      self.fail(node, f"Linear on a tensor of shape {x.shape} (only (N, C))")
    scope = self.scope(node)
    self.params[scope] = {"kernel": w.T, "bias": np.zeros(w.shape[0]) if b is None else b}
    self.emit(node, lambda top: netgraph.Dense(scope, src.blob, int(m.out_features),
                                               top=top, frames=False), extra=0)

  # -- element-wise ------------------------------------------------------------

  def arith(self, node, op, a):
    x, y = a["input"], a["other"]
    alpha = float(a.get("alpha", 1))
    if not isinstance(x, _Value):  # 2 * x, 0 + x
      if op in ("sub", "div") or alpha != 1:
        self.fail(node, f"scalar {op} with the tensor second")
      x, y = y, x
    if isinstance(y, _Value):
      if len(x.shape) != len(y.shape) or x.extra != y.extra:
        self.fail(node, f"{op} of tensors of shapes {x.shape} and {y.shape} (equal ranks)")
      if op == "mul":
        return self.emit(node, lambda top: netgraph.Eltwise(
            node.name, (x.blob, y.blob), "prod", top=top), base_value=x)
      if op == "div":
        self.fail(node, "division of two tensors")
      coeffs = (1.0, alpha if op == "add" else -alpha)
      return self.emit(node, lambda top: netgraph.Add(
          node.name, (x.blob, y.blob), top=top,
          coeffs=() if coeffs == (1.0, 1.0) else coeffs), base_value=x)
    if not isinstance(y, (int, float)):
      self.fail(node, f"{op} with {type(y).__name__}")
    y = float(y)
    if op == "div" and y == 0:
      self.fail(node, "division by zero")
    scale, shift = {"add": (1.0, y * alpha), "sub": (1.0, -y * alpha), "mul": (y, 0.0),
                    "div": (1.0 / y if op == "div" else 1.0, 0.0)}[op]
    if (scale, shift) == (1.0, 0.0):
      self.values[node] = x
      return None
    return self.emit(node, lambda top: netgraph.Activation(
        node.name, x.blob, "power", (1.0, scale, shift), top=top), base_value=x)

  def activation(self, node, op, a):
    x = a["input"]
    args = ()
    if op == "leaky_relu":
      args = (float(a["negative_slope"]),)
    elif op == "gelu":
      op = "gelu_tanh" if a["approximate"] == "tanh" else "gelu"
    elif op == "softmax":
      if a["dim"] is None or x.axis(a["dim"]) != len(x.shape) + x.extra - 1:
        self.fail(node, f"softmax over dim {a['dim']} (only over channels, dim=1)")
    return self.emit(node, lambda top: netgraph.Activation(node.name, x.blob, op, args,
                                                           top=top), base_value=x)

  def cat(self, node, a):
    xs, dim = a["tensors"], 0 if a["dim"] is None else a["dim"]
    if any(not isinstance(v, _Value) or v.squeeze_of is not None for v in xs):
      self.fail(node, "cat of something other than plain tensors")
    if len({(len(v.shape), v.extra) for v in xs}) != 1:
      self.fail(node, f"cat of tensors of shapes {[v.shape for v in xs]}")
    axis = xs[0].axis(dim)
    rank = len(xs[0].shape) + xs[0].extra
    return self.emit(node, lambda top: netgraph.Concat(
        node.name, tuple(v.blob for v in xs), top=top,
        axis=-1 if axis == rank - 1 else axis), base_value=xs[0])

  # -- pooling and reductions --------------------------------------------------

  def pool(self, node, op, a):
    x = a["input"]
    nd = len(x.shape) - 2
    kernel = _tup(a["kernel_size"], nd)
    stride = _tup(a["stride"] if a["stride"] not in (None, (), []) else kernel, nd)
    pad = _tup(a["padding"], nd)
    if _tup(a["dilation"], nd) != (1,) * nd or a["return_indices"]:
      self.fail(node, f"{op} with dilation or return_indices")
    if a["divisor_override"]:
      self.fail(node, "avg_pool with divisor_override")
    return self.emit_pool(node, op[:3], x, kernel, stride, pad, bool(a["ceil_mode"]),
                          bool(a["count_include_pad"]))

  def emit_pool(self, node, kind, x, kernel, stride, pad, ceil_mode, count_pad=True,
                check=True):
    want = tuple(node.meta["tensor_meta"].shape[2:]) if check else None
    got = tuple(netgraph.pool_size(n, k, s, p, ceil_mode)
                for n, k, s, p in zip(x.shape[2:], kernel, stride, pad))
    if want is not None and want != got:
      self.fail(node, f"{kind} pooling to {want}, which netgraph's rounding gives as {got}")
    shape = x.shape[:2] + got
    return self.emit(node, lambda top: netgraph.Pool(
        node.name, x.blob, kind, tuple(int(k) for k in kernel), tuple(int(s) for s in stride),
        tuple(int(p) for p in pad), ceil_mode, top=top, count_pad=count_pad),
        shape=shape, base_value=x)

  def adaptive(self, node, op, a):
    x = a["input"]
    nd = len(x.shape) - 2
    sizes = _tup(a["output_size"], nd)
    kernel, stride = [], []
    for n, o in zip(x.shape[2:], sizes):
      o = n if o is None else int(o)
      if o != 1 and n % o:
        self.fail(node, f"{op} from {tuple(x.shape[2:])} to {tuple(sizes)} (only to 1 or "
                  "to sizes that divide the input)")
      kernel.append(n if o == 1 else n // o)
      stride.append(1 if o == 1 else n // o)
    return self.emit_pool(node, op.split("_")[1], x, kernel, stride, (0,) * nd, False)

  def mean(self, node, a, total: bool = False):
    """`x.mean(dims)` (or with `total` `x.sum(dims)`) over time and space."""
    x = a["input"]
    rank = len(x.shape)
    dims = a["dim"]
    dims = tuple(range(rank)) if dims is None else _tup(dims, 1)
    dims = sorted({d % rank for d in dims})
    if not dims or dims[0] < 2:
      self.fail(node, f"{'sum' if total else 'mean'} over dims {dims} (only over time and "
                "space, dims >= 2)")
    kernel = tuple(n if d + 2 in dims else 1 for d, n in enumerate(x.shape[2:]))
    nd = rank - 2
    pooled = self.emit_pool(node, "avg", x, kernel, (1,) * nd, (0,) * nd, False,
                            check=bool(a["keepdim"]))
    if total:
      count = float(math.prod(kernel))
      self.nodes.append(netgraph.Activation(node.name + "_sum", pooled.blob, "power",
                                            (1.0, count, 0.0), top=pooled.blob + "/sum"))
      pooled.blob += "/sum"
    if not a["keepdim"]:
      pooled.shape = tuple(n for d, n in enumerate(pooled.shape) if d not in dims)
      self.squeezed(node, pooled, x)
    return pooled

  def squeezed(self, node, v, src):
    """Makes `v` (the blob of `src`'s shape with size-1 axes) a tensor of `v.shape`."""
    if len(v.shape) == 2:
      blob = v.blob
      self.nodes.append(netgraph.Reshape(node.name + "_flat", blob, (v.shape[1],),
                                         top=blob + "/flat"))
      v.blob = blob + "/flat"
      v.extra = 0
    elif len(src.shape) == 5 and len(v.shape) == 4 and src.extra == 0 and \
        v.shape == src.shape[:2] + src.shape[3:]:
      v.extra = 1  # time dropped: the blob keeps a time axis of 1
    else:
      self.fail(node, f"shape {src.shape} -> {v.shape} (only to (N, C) or dropping time)")

  def reshape(self, node, op, a):
    x = a["input"]
    out = tuple(node.meta["tensor_meta"].shape)
    src = x.squeeze_of or x
    if op == "permute":
      if out[0] != x.shape[0] or sum(n > 1 for n in x.shape[1:]) > 1:
        self.fail(node, f"permute of shape {x.shape} (only of tensors with one non-batch "
                  "axis longer than 1, on the way to (N, C))")
      self.values[node] = dataclasses.replace(x, shape=out, squeeze_of=src)
      return None
    if op == "flatten" and a["start_dim"] % max(len(x.shape), 1) == 0:
      self.fail(node, "flatten from dim 0 (the batch)")
    if out == x.shape and x.squeeze_of is None:
      self.values[node] = x
      return None
    if len(out) != 2 or out[0] != src.shape[0] or out[1] != math.prod(src.shape[1:]):
      v = dataclasses.replace(src, shape=out)
      if op == "squeeze":
        self.squeezed(node, v, src)
        self.values[node] = v
        return None
      self.fail(node, f"{op} of shape {x.shape} to {out} (only to (N, -1))")
    if len(src.shape) == 2:
      self.values[node] = src
      return None
    v = self.emit(node, lambda top: netgraph.Reshape(node.name, src.blob, (out[1],),
                                                     top=top), shape=out, extra=0)
    if math.prod(src.shape[2:]) > 1:
      v.flat_of = src
    return v

  # -- the result --------------------------------------------------------------

  def unused(self, ignore: Sequence[str]) -> list[str]:
    """Problems: parameters and buffers no node consumed (outside `ignore`)."""
    state = self.module.state_dict(keep_vars=True)
    unused = [k for k in state if k not in self.used and not k.startswith(tuple(ignore))]
    if not unused:
      return []
    return [f"{len(unused)} parameter(s)/buffer(s) not used by the traced forward: "
            + ", ".join(unused[:8]) + (" ..." if len(unused) > 8 else "")
            + " (name their modules in ignore=/--ignore to drop them)"]


def from_torch(module, example_inputs, stream: str = "rgb",
               value_range: tuple[float, float] = (-1.0, 1.0), *, name: str | None = None,
               labels: Sequence[str] | None = None, ignore: Sequence[str] = (),
               check: bool = True) -> base.Model:
  """Converts a PyTorch `nn.Module` into a `Model` (see the module docstring).

  Args:
    module: the network (converted as in eval mode; its mode is restored).
    example_inputs: one PyTorch input, `(N, C, T, H, W)` or `(N, C, H, W)`
      (a tensor, or a tuple holding one): fixes the stream's shape.
    stream: the input stream's name ('rgb' or 'flow'; a 2-D flow tower's `2L`
      channels are `L` frames of `(u, v)`).
    value_range: the range of the preprocessed input the module expects.
    name: model name (default: the module's class name).
    labels: class names of the logits.
    ignore: module path prefixes whose parameters the traced forward does not
      use and that are dropped (e.g. `('AuxLogits.',)` for inception_v3).
    check: also compare every tap's shape with PyTorch's.

  Returns:
    The `Model`: stream `(T, H, W, C)`, taps named by module path, logits.

  Raises:
    TorchGraphError: untraceable module, unsupported op or weights that do not
      fill the graph (one line).
  """
  torch = _torch()
  if isinstance(example_inputs, (tuple, list)):
    if len(example_inputs) != 1:
      raise TorchGraphError(f"example_inputs: {len(example_inputs)} tensors; give one")
    example_inputs = example_inputs[0]
  if not isinstance(example_inputs, torch.Tensor):
    raise TorchGraphError(f"example_inputs: a {type(example_inputs).__name__}; give a "
                          "torch.Tensor (N, C, T, H, W) or (N, C, H, W)")
  if stream not in ("rgb", "flow"):
    raise TorchGraphError(f"stream {stream!r}: valid 'rgb', 'flow'")
  if example_inputs.ndim not in (4, 5):
    raise TorchGraphError(f"example_inputs: shape {tuple(example_inputs.shape)}; expected "
                          "(N, C, T, H, W) (3-D nets) or (N, C, H, W) (2-D towers)")
  training = module.training
  module.eval()
  try:
    converter = _Converter(module, trace(module, example_inputs.detach().float()))
    out = converter.run()
  finally:
    module.train(training)
  shape = tuple(example_inputs.shape[1:])
  first = next(iter(converter.values.values()))  # the input
  flow_stack = 0
  if len(shape) == 4:
    spec = StreamSpec(shape[1], shape[2], shape[3], shape[0], tuple(value_range))
  elif stream == "flow":
    if shape[0] % 2:
      raise TorchGraphError(f"stream 'flow': a 2-D tower needs 2L input channels (u, v per "
                            f"frame), got {shape[0]}")
    flow_stack = shape[0] // 2
    spec = StreamSpec(flow_stack, shape[1], shape[2], 2, tuple(value_range))
  else:
    spec = StreamSpec(1, shape[1], shape[2], shape[0], tuple(value_range))
  taps = [(p, converter.values[n]) for p, n in converter.taps
          if isinstance(converter.values.get(n), _Value)]
  net = netgraph.Net(
      nodes=tuple(converter.nodes), taps=tuple(v.blob for _, v in taps),
      tap_names=tuple(p for p, _ in taps), logits=(out.blob,),
      logits_reduce="none" if len(out.shape) == 2 else "mean",
      inputs=(netgraph.StreamInput(stream, first.blob, 1, flow_stack),),
      precision=jax.lax.Precision.HIGHEST)
  variables = {"params": {k: {n: np.asarray(a, np.float32) for n, a in v.items()}
                          for k, v in converter.params.items()}}
  source = type(module).__name__
  problems = converter.unused(ignore) + converted.variable_problems(
      net, {stream: spec}, variables)
  if problems:
    raise TorchGraphError(f"{source}: weights do not fit the converted graph - "
                          + "; ".join(problems))
  m = converted.model(net, variables, {stream: spec}, name=name or source, labels=labels)
  if check:
    _check_shapes(source, m, taps)
  return m


def _check_shapes(source: str, m: base.Model, taps: Sequence[tuple[str, _Value]]):
  """Every tap's blob has the shape the PyTorch tensor has, channels last."""
  problems = []
  for path, v in taps:
    want = v.shape[2:] + v.shape[1:2]
    want = (1,) * v.extra + want if len(v.shape) > 2 else want
    got = m.spec.feature_shape(path)
    if len(v.shape) > 2 and got != want:
      problems.append(f"{path}: {got} vs PyTorch's {v.shape[1:]} (channels last {want})")
  if problems:
    raise TorchGraphError(f"{source}: converted shapes differ from PyTorch's: "
                          + "; ".join(problems[:5]))


def torch_input(x) -> np.ndarray:
  """A PyTorch `(N, C, T, H, W)` / `(N, C, H, W)` input as the model's stream
  `(N, T, H, W, C)` (a 2-D tower's `T = 1`; for a 2-D flow tower, `flow_input`)."""
  x = np.asarray(x.detach().cpu().numpy() if hasattr(x, "detach") else x, np.float32)
  if x.ndim == 5:
    return np.moveaxis(x, 1, -1)
  return np.moveaxis(x, 1, -1)[:, None]


def flow_input(x) -> np.ndarray:
  """A 2-D flow tower's PyTorch input `(N, 2L, H, W)` as the stream `(N, L, H, W, 2)`."""
  x = np.asarray(x.detach().cpu().numpy() if hasattr(x, "detach") else x, np.float32)
  n, c, h, w = x.shape
  return np.moveaxis(x.reshape(n, c // 2, 2, h, w), 2, -1)

