r"""PyTorch twins of zoo networks (same weights) and a lean optimisation loop.

The speed benchmarks compare stviz_jax with what a researcher would write in
plain PyTorch. A comparison is only worth something if both sides compute the
same network, so the twins here are built from a zoo `Model`'s own Flax
variables and layer specification, cut at the target layer, and checked
against `Model.apply` (`max_relative_error`; `tests/test_bench_torch_nets.py`
and every benchmark run check it):

* `NetGraphTorch`: any `netgraph.Net` (the Caffe/MatConvNet-style zoo nets,
  e.g. `vgg16_fusion`): 2-D convolutions and pools run per frame with time
  folded into the batch, 3-D ones across time; flow stacking interleaved
  `(u_1, v_1, ..., u_L, v_L)` as `netgraph.stack_flow`; Caffe/MatConvNet pool
  rounding (`ceil_mode`) and Caffe's average-pool divisor.
* `I3DTorch`: DeepMind's I3D (`zoo/i3d.py`) with TensorFlow "SAME" padding
  (the odd pixel after; max pools pad with -inf), batch norm folded.

Both take `{stream: (N, T, H, W, C)}` like the Flax model and return the
target blob as an `(N, T, H, W, C)` view; internally blobs are
`(N*T, C, H, W)` (per frame) or `(N, C, T, H, W)`, in the memory format set
by `set_memory_format` ("contiguous" or "channels_last", i.e.
`torch.channels_last` / `torch.channels_last_3d`, under which the two layouts
share their bytes, so switching between them is free).

`optimisation_runner` is the lean loop: weights frozen, one batch of U
inputs (one per unit), the paper's objective (channel sum / rho^2, lambda_B
R_B and lambda_TV R_TV per stream), stride jitter with the same offset for
every stream, Adam on z = x / B with the cosine schedule, and projection onto
the B-ball -- the settings read from a `stviz_jax.Visualizer`.
"""

from __future__ import annotations

import math
import time
from typing import Mapping

import numpy as np
import torch
import torch.nn.functional as F

from stviz_jax.models import LOGITS, netgraph
from stviz_jax.models.zoo import i3d as i3d_zoo

FORMATS = ("contiguous", "channels_last")


def _tensor(a) -> torch.Tensor:
  return torch.from_numpy(np.array(a, np.float32, copy=True))


def _conv_weight(kernel) -> torch.Tensor:
  """Flax `(*spatial, C_in, C_out)` -> PyTorch `(C_out, C_in, *spatial)`."""
  k = _tensor(kernel)
  n = k.ndim
  return k.permute(n - 1, n - 2, *range(n - 2)).contiguous()


def _make_conv(kernel, bias, stride, padding) -> torch.nn.Module:
  w = _conv_weight(kernel)
  nd = w.ndim - 2
  cls = torch.nn.Conv2d if nd == 2 else torch.nn.Conv3d
  conv = cls(w.shape[1], w.shape[0], tuple(w.shape[2:]), stride=tuple(stride),
             padding=tuple(padding), bias=bias is not None)
  with torch.no_grad():
    conv.weight.copy_(w)
    if bias is not None:
      conv.bias.copy_(_tensor(bias))
  return conv


def _formats(name: str):
  if name not in FORMATS:
    raise ValueError(f"memory format {name!r}; valid: {', '.join(FORMATS)}")
  if name == "channels_last":
    return torch.channels_last, torch.channels_last_3d
  return torch.contiguous_format, torch.contiguous_format


class _TwinBase(torch.nn.Module):
  """Shared: memory format, frozen weights, convolution FLOPs."""

  def __init__(self):
    super().__init__()
    self.memory_format = "contiguous"
    self._fmt2d, self._fmt3d = _formats("contiguous")

  def set_memory_format(self, name: str) -> "_TwinBase":
    """Stores blobs and convolution weights in `name` ('contiguous' | 'channels_last')."""
    self._fmt2d, self._fmt3d = _formats(name)
    self.memory_format = name
    for m in self.modules():
      if isinstance(m, torch.nn.Conv2d):
        m.weight.data = m.weight.data.contiguous(memory_format=self._fmt2d)
      elif isinstance(m, torch.nn.Conv3d):
        m.weight.data = m.weight.data.contiguous(memory_format=self._fmt3d)
    return self

  def freeze(self) -> "_TwinBase":
    self.eval()
    for p in self.parameters():
      p.requires_grad_(False)
    return self

  def conv_flops(self, inputs: Mapping[str, torch.Tensor]) -> int:
    """Forward convolution FLOPs (2 per multiply-add) of one batch, from layer shapes."""
    total = [0]

    def hook(m, _, out):
      k = int(np.prod(m.weight.shape[1:]))  # C_in * prod(kernel)
      total[0] += 2 * out.numel() * k

    handles = [m.register_forward_hook(hook) for m in self.modules()
               if isinstance(m, (torch.nn.Conv2d, torch.nn.Conv3d))]
    try:
      with torch.no_grad():
        self(inputs)
    finally:
      for h in handles:
        h.remove()
    return total[0]


class NetGraphTorch(_TwinBase):
  """A `netgraph.Net` zoo model cut at blob `layer`, in PyTorch, same weights.

  Args:
    model: a zoo `Model` whose module is a `netgraph.Net` with batch norm
      folded (the zoo default).
    layer: the target tap (a blob of the graph).
  """

  def __init__(self, model, layer: str):
    super().__init__()
    net = model.module
    if not isinstance(net, netgraph.Net):
      raise ValueError(f"{model.name}: NetGraphTorch needs a netgraph.Net model")
    if not net.folded:
      raise ValueError(f"{model.name}: build the model with folded=True (batch norm "
                       "folded into the convolutions) for its PyTorch twin")
    self.layer = layer
    self.stream_inputs = tuple(s for s in net.inputs)
    producers = {netgraph.top(n): n for n in net.nodes}
    inputs = {s.blob for s in self.stream_inputs}
    if layer not in producers and layer not in inputs:
      raise ValueError(f"{model.name}: no blob {layer!r} in the layer graph")
    needed, todo = set(), [layer]
    while todo:  # the layers the target depends on, nothing above it.
      b = todo.pop()
      if b in inputs or producers[b].name in needed:
        continue
      node = producers[b]
      needed.add(node.name)
      todo += list(getattr(node, "bottoms", None) or (node.bottom,))
    self.nodes = tuple(n for n in net.nodes if n.name in needed)
    self.stream_inputs = tuple(s for s in self.stream_inputs if s.blob in _all_bottoms(
        self.nodes) | {layer})
    params = model.variables["params"]
    self.convs = torch.nn.ModuleDict()
    for n in self.nodes:
      if isinstance(n, netgraph.Dense):
        raise ValueError(f"NetGraphTorch: layer {n.name!r} (Dense) is not supported; "
                         "cut the network at a convolutional layer")
      if isinstance(n, netgraph.Conv):
        p = params
        for k in n.name.split("/"):
          p = p[k]
        nd = len(n.kernel)
        self.convs[_key(n.name)] = _make_conv(p["kernel"], p.get("bias"),
                                              n.stride or (1,) * nd, n.pad or (0,) * nd)

  def _as2d(self, x, n):
    if x.ndim == 4:
      return x
    c, t = x.shape[1], x.shape[2]  # (N, C, T, H, W) -> (N*T, C, H, W)
    return x.permute(0, 2, 1, 3, 4).reshape(n * t, c, *x.shape[3:]).contiguous(
        memory_format=self._fmt2d)

  def _as3d(self, x, n):
    if x.ndim == 5:
      return x
    t = x.shape[0] // n  # (N*T, C, H, W) -> (N, C, T, H, W); a view in channels_last.
    return x.reshape(n, t, *x.shape[1:]).permute(0, 2, 1, 3, 4).contiguous(
        memory_format=self._fmt3d)

  def forward(self, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
    n = next(iter(inputs.values())).shape[0]
    blobs = {}
    for s in self.stream_inputs:
      x = inputs[s.stream]
      if s.flow_stack:
        x = stack_flow(x, s.steps, s.flow_stack, s.flow_stride or s.flow_stack)
      if s.bgr:
        x = x.flip(-1)
      t = x.shape[1]
      blobs[s.blob] = x.reshape(n * t, *x.shape[2:]).permute(0, 3, 1, 2).contiguous(
          memory_format=self._fmt2d)
    for node in self.nodes:
      if isinstance(node, netgraph.Conv):
        nd = len(node.kernel)
        x = blobs[node.bottom]
        x = self._as2d(x, n) if nd == 2 else self._as3d(x, n)
        y = self.convs[_key(node.name)](x)
        blobs[netgraph.top(node)] = F.relu(y, inplace=True) if node.relu else y
      elif isinstance(node, netgraph.Pool):
        blobs[netgraph.top(node)] = self._pool(node, blobs[node.bottom], n)
      elif isinstance(node, netgraph.Concat):
        parts = [blobs[b] for b in node.bottoms]
        if len({p.ndim for p in parts}) > 1:
          parts = [self._as3d(p, n) for p in parts]
        blobs[netgraph.top(node)] = torch.cat(parts, dim=1)
      elif isinstance(node, netgraph.Add):
        parts = [blobs[b] for b in node.bottoms]
        if len({p.ndim for p in parts}) > 1:
          parts = [self._as3d(p, n) for p in parts]
        y = sum(parts[1:], parts[0])
        blobs[netgraph.top(node)] = F.relu(y) if node.relu else y
    out = blobs[self.layer]
    if out.ndim == 4:  # (N*T, C, H, W) -> (N, T, H, W, C)
      return out.reshape(n, -1, *out.shape[1:]).permute(0, 1, 3, 4, 2)
    return out.permute(0, 2, 3, 4, 1)

  def _pool(self, node, x, n):
    kernel = tuple(node.kernel) or tuple((x.shape[2:4] if x.ndim == 4 else x.shape[3:5]))
    nd = len(kernel)
    x = self._as2d(x, n) if nd == 2 else self._as3d(x, n)
    stride = tuple(node.stride or kernel)
    pad = tuple(node.pad or (0,) * nd)
    if node.kind == "max":
      fn = F.max_pool2d if nd == 2 else F.max_pool3d
      return fn(x, kernel, stride, pad, ceil_mode=node.ceil_mode)
    if node.kind == "avg":  # count_include_pad: Caffe's divisor (window within [-p, n+p)).
      fn = F.avg_pool2d if nd == 2 else F.avg_pool3d
      return fn(x, kernel, stride, pad, ceil_mode=node.ceil_mode, count_include_pad=True)
    raise ValueError(f"unknown pooling {node.kind!r} in layer {node.name!r}")


def _all_bottoms(nodes) -> set:
  out = set()
  for n in nodes:
    out |= set(getattr(n, "bottoms", None) or (n.bottom,))
  return out


def _key(name: str) -> str:
  return name.replace("/", "__").replace(".", "_")


def stack_flow(flow: torch.Tensor, steps: int, stack: int, stride: int) -> torch.Tensor:
  """`(N, F, H, W, 2)` -> `(N, steps, H, W, 2 * stack)`, interleaved as `netgraph.stack_flow`."""
  n, _, h, w, _ = flow.shape
  idx = torch.arange(steps)[:, None] * stride + torch.arange(stack)[None]
  x = flow[:, idx]  # (N, steps, stack, H, W, 2)
  return x.permute(0, 1, 3, 4, 2, 5).reshape(n, steps, h, w, 2 * stack)


# --- I3D ---------------------------------------------------------------------


class _SamePad(torch.nn.Module):
  """TF "SAME" padding for a fixed input size: symmetric pads inside the op,
  asymmetric ones by an explicit `F.pad` (zeros for convolutions, -inf for max pools)."""

  def __init__(self, shape, kernel, stride):
    super().__init__()
    self.pads = [i3d_zoo.tf_same_padding(n, k, s) for n, k, s in zip(shape, kernel, stride)]
    self.symmetric = all(a == b for a, b in self.pads)
    self.inner = tuple(a for a, _ in self.pads) if self.symmetric else (0, 0, 0)

  def pad(self, x, value: float, fmt) -> torch.Tensor:
    if self.symmetric:
      return x
    flat = [p for a, b in reversed(self.pads) for p in (a, b)]  # (W, H, T) order
    return F.pad(x, flat, value=value).contiguous(memory_format=fmt)


def _out_shape(shape, stride):
  return tuple(-(-n // s) for n, s in zip(shape, stride))


class _Unit3D(torch.nn.Module):
  def __init__(self, p, kernel, stride, shape, owner):
    super().__init__()
    self.same = _SamePad(shape, kernel, stride)
    self.conv = _make_conv(p["kernel"], p.get("bias"), stride, self.same.inner)
    self.owner = [owner]  # the twin (for the memory format), not a submodule.
    self.out_shape = _out_shape(shape, stride)

  def forward(self, x):
    x = self.same.pad(x, 0.0, self.owner[0]._fmt3d)
    return F.relu(self.conv(x), inplace=True)


class _MaxPoolSame(torch.nn.Module):
  def __init__(self, window, stride, shape, owner):
    super().__init__()
    self.window, self.stride = tuple(window), tuple(stride)
    self.same = _SamePad(shape, window, stride)
    self.owner = [owner]
    self.out_shape = _out_shape(shape, stride)

  def forward(self, x):
    x = self.same.pad(x, -math.inf, self.owner[0]._fmt3d)
    return F.max_pool3d(x, self.window, self.stride, self.same.inner)


class _Mixed(torch.nn.Module):
  def __init__(self, p, channels, shape, owner):
    super().__init__()
    del channels  # the kernels carry the widths.
    unit = lambda branch, name, k: _Unit3D(p[branch][name]["conv_3d"], k, (1, 1, 1), shape,
                                           owner)
    self.b0 = unit("Branch_0", "Conv3d_0a_1x1", (1, 1, 1))
    self.b1 = torch.nn.Sequential(unit("Branch_1", "Conv3d_0a_1x1", (1, 1, 1)),
                                  unit("Branch_1", "Conv3d_0b_3x3", (3, 3, 3)))
    self.b2 = torch.nn.Sequential(unit("Branch_2", "Conv3d_0a_1x1", (1, 1, 1)),
                                  unit("Branch_2", "Conv3d_0b_3x3", (3, 3, 3)))
    self.b3 = torch.nn.Sequential(_MaxPoolSame((3, 3, 3), (1, 1, 1), shape, owner),
                                  unit("Branch_3", "Conv3d_0b_1x1", (1, 1, 1)))
    self.out_shape = shape

  def forward(self, x):
    return torch.cat([self.b0(x), self.b1(x), self.b2(x), self.b3(x)], dim=1)


class I3DTorch(_TwinBase):
  """I3D (`zoo/i3d.py`, batch norm folded) cut at endpoint `layer`, same weights.

  Args:
    model: an `i3d` zoo model (one tower, or two with `layer` 'rgb/...' / 'flow/...').
    layer: an endpoint of `i3d.NETWORK`, e.g. 'Mixed_4f', or the class scores
      'logits' (one tower): `Mixed_5c` averaged over (2, 7, 7) windows clipped
      to its size (stride 1, VALID), the 1x1x1 classifier, the mean over the
      remaining positions, as `zoo/i3d.py`; `forward` then returns `(N, classes)`.
  """

  def __init__(self, model, layer: str):
    super().__init__()
    streams = list(model.spec.streams)
    self.to_logits = layer == LOGITS
    stream, _, endpoint = layer.rpartition("/")
    stream = stream or streams[0]
    if self.to_logits:
      if len(streams) > 1:
        raise ValueError("I3D layer 'logits': the PyTorch twin computes one tower's logits")
      endpoint = i3d_zoo.ENDPOINTS[-1]
    if stream not in streams or (len(streams) > 1 and "/" not in layer):
      raise ValueError(f"I3D layer {layer!r}: name a tower as '<stream>/<endpoint>' with "
                       f"stream in {streams}")
    if endpoint not in i3d_zoo.ENDPOINTS:
      raise ValueError(f"I3D layer {layer!r}: the PyTorch twin stops at an endpoint, one of "
                       f"{', '.join(i3d_zoo.ENDPOINTS)}")
    params = model.variables["params"]
    if len(streams) > 1:
      params = params[i3d_zoo.STREAM_SCOPES[stream]]
    if "batch_norm" in params[i3d_zoo.ENDPOINTS[0]]:
      raise ValueError(f"{model.name}: build the model with folded=True for its PyTorch twin")
    self.stream, self.layer = stream, layer
    spec = model.spec.streams[stream]
    shape = (spec.frames, spec.height, spec.width)
    blocks = []
    for name, kind, args in i3d_zoo.NETWORK:
      if kind == "conv":
        features, kernel, stride = args
        m = _Unit3D(params[name]["conv_3d"], kernel, stride, shape, self)
      elif kind == "pool":
        m = _MaxPoolSame(*args, shape, self)
      else:
        m = _Mixed(params[name], i3d_zoo.MIXED_CHANNELS[name], shape, self)
      blocks.append(m)
      shape = m.out_shape
      if name == endpoint:
        break
    self.blocks = torch.nn.Sequential(*blocks)
    if self.to_logits:
      self.window = tuple(min(w, n) for w, n in zip((2, 7, 7), shape))
      head = params[i3d_zoo.LOGITS_SCOPE[0]][i3d_zoo.LOGITS_SCOPE[1]]["conv_3d"]
      self.head = _make_conv(head["kernel"], head["bias"], (1, 1, 1), (0, 0, 0))

  def forward(self, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
    x = inputs[self.stream].permute(0, 4, 1, 2, 3).contiguous(memory_format=self._fmt3d)
    x = self.blocks(x)
    if self.to_logits:  # (N, C, T, H, W) -> (N, classes)
      return self.head(F.avg_pool3d(x, self.window, stride=1)).mean((2, 3, 4))
    return x.permute(0, 2, 3, 4, 1)


def twin(model, layer: str) -> _TwinBase:
  """The PyTorch twin of a zoo model up to `layer` (weights frozen)."""
  if isinstance(model.module, netgraph.Net):
    net = NetGraphTorch(model, layer)
  elif model.name.startswith("i3d"):
    net = I3DTorch(model, layer)
  else:
    raise ValueError(f"no PyTorch twin for model {model.name!r} (netgraph nets and I3D)")
  return net.freeze()


def max_relative_error(model, net: _TwinBase, layer: str, inputs: Mapping[str, np.ndarray]
                       ) -> float:
  """max |a_torch - a_flax| / max |a_flax| of `layer` on `inputs` (`{stream: (N, T, H, W, C)}`)."""
  import jax
  if layer == LOGITS:
    apply = jax.jit(lambda v, x: model.apply(v, x)[0])
  else:
    apply = jax.jit(lambda v, x: model.apply(v, x)[1][layer])
  want = np.asarray(apply(model.variables, {k: np.asarray(v) for k, v in inputs.items()}))
  with torch.no_grad():
    got = net({k: _tensor(v) for k, v in inputs.items()}).numpy()
  if got.shape != want.shape:
    raise ValueError(f"{layer}: PyTorch twin gives shape {got.shape}, Flax {want.shape}")
  return float(np.abs(got - want).max() / max(np.abs(want).max(), 1e-30))


# --- the optimisation loop -----------------------------------------------------


def penalty(x: torch.Tensor, w, kappa=None, gamma=None) -> torch.Tensor:
  """lambda_B R_B(x) + lambda_TV R_TV(x) of `x (..., T, H, W, C)` per leading element
  (`stviz_jax.regularizers.penalty` with `w` a `StreamWeights`)."""
  kappa = w.kappa if kappa is None else kappa
  gamma = w.gamma if gamma is None else gamma
  hw = x.shape[-3] * x.shape[-2]
  lam_b = w.energy_weight / (hw * w.energy_norm ** w.alpha)
  lam_tv = w.tv_weight * w.tv_factor / (hw * w.v ** 2)
  energy = (x.pow(2).sum(-1) ** (w.alpha / 2)).sum((-3, -2, -1))
  axes = (-4, -3, -2, -1)
  spatial = ((x[..., :, 1:, :] - x[..., :, :-1, :]).pow(2).sum(axes)
             + (x[..., 1:, :, :] - x[..., :-1, :, :]).pow(2).sum(axes))
  temporal = (x[..., 1:, :, :, :] - x[..., :-1, :, :, :]).pow(2).sum(axes)
  return lam_b * energy + lam_tv * (kappa * spatial + gamma * temporal)


def objective(net: _TwinBase, x: Mapping[str, torch.Tensor], units: torch.Tensor,
              rho: float, weights) -> torch.Tensor:
  """E(x_u) per element u (equation 1): channel `units[u]` of the target summed over
  locations / rho^2, minus each stream's `penalty` (`weights`: stream -> `StreamWeights`)."""
  a = net(x)  # (U, T, H, W, C)
  act = a[torch.arange(a.shape[0]), ..., units].sum((1, 2, 3)) / rho ** 2
  return act - sum(penalty(v, weights[s]) for s, v in x.items())


def optimisation_runner(net: _TwinBase, vis, units: int, steps: int, seed: int = 0):
  """The lean PyTorch loop of `vis`'s optimisation; returns `run() -> (seconds, E)`.

  Per stream the variable is z = x / B, `(U, T, H + J - 1, W + J - 1, C)` with
  the Visualizer's jitter J; each step feeds every stream's window at one
  random offset, ascends sum_u E(x_u) (channel u of the target summed over
  locations / rho^2, minus each stream's penalty), steps Adam (lr and cosine
  schedule from the config) and projects every pixel onto the unit ball. `E` is
  the `(steps, U)` objective before each step (as `Result.history['objective']`).
  """
  cfg = vis.config
  rho, _ = vis.model.spec.receptive_field(vis.layer)
  specs, weights, jit = vis.streams, vis.weights, vis.jitter
  idx = torch.arange(units)
  lr, final = cfg.optimizer.learning_rate, cfg.optimizer.final_fraction
  cosine = lambda k: final + (1 - final) * 0.5 * (1 + math.cos(math.pi * min(k, steps) / steps))

  def run():
    g = torch.Generator().manual_seed(seed)
    z = {}
    for s, sp in specs.items():
      noise = torch.randn(units, sp.frames, sp.height + jit - 1, sp.width + jit - 1,
                          sp.channels, generator=g)
      rms = noise.pow(2).sum(-1).mean((1, 2, 3), keepdim=True).sqrt()[..., None]
      w = weights[s]
      z[s] = (noise / rms * (cfg.init_scale * w.v / w.bound)).requires_grad_(True)
    opt = torch.optim.Adam(list(z.values()), lr=lr, betas=(cfg.optimizer.b1,
                                                            cfg.optimizer.b2))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, cosine)
    history = []
    t = time.perf_counter()
    for _ in range(steps):
      dy, dx = torch.randint(0, jit, (2,), generator=g).tolist()
      x = {s: z[s][:, :, dy:dy + sp.height, dx:dx + sp.width] * weights[s].bound
           for s, sp in specs.items()}
      e = objective(net, x, idx, rho, weights)
      history.append(e.detach())
      loss = -e.sum()
      opt.zero_grad(set_to_none=True)
      loss.backward()
      opt.step()
      sched.step()
      with torch.no_grad():
        for v in z.values():
          norm = v.pow(2).sum(-1, keepdim=True).sqrt().clamp_min(1e-12)
          v.mul_(torch.clamp(1.0 / norm, max=1.0))
    return time.perf_counter() - t, torch.stack(history).numpy()

  return run
