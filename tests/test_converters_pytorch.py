"""PyTorch converter: a torchvision-layout VGG-16 built here in torch (random
weights, eval mode) against the zoo's `vgg16_two_stream` tower after conversion."""

import numpy as np
import pytest

from converters import common, pytorch

torch = pytest.importorskip("torch", reason="torch is not installed (pip install '.[torch]')")

WIDTH = 1 / 16  # channels 4, 8, 16, 32, 32 and fc 256: fast, same structure


def torch_vgg16(template, tower="rgb", num_classes=10):
  """torchvision.models.vgg16's module tree (same state-dict keys), widths from the target."""
  nn = torch.nn
  p = f"params/{tower}"
  widths = [[template[f"{p}/conv{b}_{i}/kernel"][-1] for i in range(1, 4 if b > 2 else 3)]
            for b in range(1, 6)]
  fc = template[f"{p}/fc6/kernel"][-1]
  layers, cin = [], template[f"{p}/conv1_1/kernel"][2]
  for block in widths:
    for c in block:
      layers += [nn.Conv2d(cin, c, 3, padding=1), nn.ReLU(inplace=True)]
      cin = c
    layers.append(nn.MaxPool2d(2, 2))

  class VGG(nn.Module):

    def __init__(self):
      super().__init__()
      self.features = nn.Sequential(*layers)
      self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
      self.classifier = nn.Sequential(
          nn.Linear(cin * 49, fc), nn.ReLU(True), nn.Dropout(),
          nn.Linear(fc, fc), nn.ReLU(True), nn.Dropout(), nn.Linear(fc, num_classes))

    def forward(self, x):
      x = self.avgpool(self.features(x))
      return self.classifier(torch.flatten(x, 1))

  torch.manual_seed(0)
  net = VGG().eval()
  with torch.no_grad():  # non-zero biases so a dropped bias would show
    for m in net.modules():
      if isinstance(m, (nn.Conv2d, nn.Linear)):
        m.bias.normal_(0, 0.1)
  return net


def torch_taps(net, x):
  """Activations after every conv's ReLU, every pool, fc6/fc7 ReLU and the logits."""
  names = ["conv1_1", "conv1_2", "pool1", "conv2_1", "conv2_2", "pool2", "conv3_1",
           "conv3_2", "conv3_3", "pool3", "conv4_1", "conv4_2", "conv4_3", "pool4",
           "conv5_1", "conv5_2", "conv5_3", "pool5"]
  mods = [m for m in net.features if not isinstance(m, torch.nn.Conv2d)]
  out = {}
  hooks = [m.register_forward_hook(lambda m, i, o, n=n: out.__setitem__(n, o.clone()))
           for n, m in zip(names, mods)]
  hooks += [net.classifier[i].register_forward_hook(
      lambda m, i_, o, n=n: out.__setitem__(n, o.clone())) for i, n in ((1, "fc6"), (4, "fc7"))]
  with torch.no_grad():
    out["logits"] = net(x)
  for h in hooks:
    h.remove()
  return {k: v.numpy() for k, v in out.items()}


def relerr(a, b):
  return np.abs(np.asarray(a, np.float64) - b).max() / np.abs(b).max()


@pytest.fixture(scope="module")
def target():
  from stviz_jax.models import registry
  model = registry.load("vgg16_two_stream", streams=("rgb",), width=WIDTH, num_classes=10)
  return model, pytorch._template(model)


@pytest.mark.parametrize("fmt", ["pth", "safetensors"])
def test_torchvision_vgg16_matches_torch(tmp_path, target, fmt):
  _, template = target
  net = torch_vgg16(template)
  path = str(tmp_path / f"vgg.{fmt}")
  if fmt == "pth":
    torch.save(net.state_dict(), path)
  else:
    st = pytest.importorskip("safetensors.torch")
    st.save_file({k: v.contiguous() for k, v in net.state_dict().items()}, path)
  model, _ = pytorch.convert(path, "torchvision_vgg16", target=target[0], width=WIDTH,
                             num_classes=10)
  rs = np.random.RandomState(0)
  x = rs.uniform(-2, 2, (2, 3, 224, 224)).astype(np.float32)
  ref = torch_taps(net, torch.from_numpy(x))
  taps = [f"rgb/{n}" for n in ref if n != "logits"] + ["logits"]
  acts = model.activations({"rgb": np.moveaxis(x, 1, -1)[:, None]}, taps)
  for name, r in ref.items():
    got = np.asarray(acts["logits" if name == "logits" else f"rgb/{name}"])
    if r.ndim == 4:
      r = np.moveaxis(r, 1, -1)
    assert relerr(got.reshape(r.shape), r) < 1e-4, name


def test_strict_names_and_shapes(tmp_path, target):
  _, template = target
  sd = torch_vgg16(template).state_dict()
  sd["features.99.weight"] = torch.zeros(3)
  del sd["classifier.3.bias"]
  sd["classifier.6.weight"] = torch.zeros(11, sd["classifier.6.weight"].shape[1])
  path = str(tmp_path / "bad.pth")
  torch.save(sd, path)
  with pytest.raises(common.ConversionError) as e:
    pytorch.convert(path, target=target[0], width=WIDTH, num_classes=10)
  msg = str(e.value)
  assert "\n" not in msg and "bad.pth" in msg
  assert "missing 1: classifier.3.bias" in msg
  assert "unexpected 1: features.99.weight" in msg
  assert "classifier.6.weight (11, 256) -> params/rgb/fc8-1/kernel (256, 11) vs expected (256, 10)" in msg


def test_truncated_files_name_file_and_offset(tmp_path, target):
  _, template = target
  sd = {k: v.contiguous() for k, v in torch_vgg16(template).state_dict().items()}
  st = pytest.importorskip("safetensors.torch")
  good = tmp_path / "v.safetensors"
  st.save_file(sd, str(good))
  data = good.read_bytes()
  cut = tmp_path / "cut.safetensors"
  cut.write_bytes(data[:len(data) - 1000])
  with pytest.raises(pytorch.PyTorchError, match=r"cut\.safetensors: tensor '.*' needs bytes \d+\.\.\d+ but the file ends at byte \d+"):
    pytorch.load_state_dict(str(cut))
  cut.write_bytes(data[:20])
  with pytest.raises(pytorch.PyTorchError, match=r"cut\.safetensors: truncated header"):
    pytorch.load_state_dict(str(cut))
  pth = tmp_path / "v.pth"
  torch.save(sd, str(pth))
  (tmp_path / "cut.pth").write_bytes(pth.read_bytes()[:5000])
  with pytest.raises(pytorch.PyTorchError, match=r"cut\.pth: not a readable PyTorch weights file"):
    pytorch.load_state_dict(str(tmp_path / "cut.pth"))


def test_safetensors_reader_matches_library(tmp_path):
  st = pytest.importorskip("safetensors.numpy")
  rs = np.random.RandomState(0)
  tensors = {"a": rs.randn(3, 4).astype(np.float32), "b": rs.randn(5).astype(np.float16),
             "c": np.arange(6, dtype=np.int64).reshape(2, 3)}
  st.save_file(tensors, str(tmp_path / "t.safetensors"))
  got = pytorch.read_safetensors(str(tmp_path / "t.safetensors"))
  for k, v in tensors.items():
    np.testing.assert_array_equal(got[k], v)
  bf = torch.randn(4, 3).to(torch.bfloat16)
  import safetensors.torch
  safetensors.torch.save_file({"w": bf}, str(tmp_path / "bf.safetensors"))
  np.testing.assert_array_equal(pytorch.read_safetensors(str(tmp_path / "bf.safetensors"))["w"],
                                bf.float().numpy())


def test_cli_writes_a_weights_dir(tmp_path, target):
  from stviz_jax.models import checkpoint
  _, template = target
  net = torch_vgg16(template)
  path = str(tmp_path / "vgg.pth")
  torch.save(net.state_dict(), path)
  model, kwargs = pytorch.save(str(tmp_path / "out"), path, target=target[0], width=WIDTH,
                               num_classes=10)
  variables, meta = checkpoint.restore(str(tmp_path / "out"))
  assert meta["architecture"] == "vgg16_two_stream"
  assert meta["source_sha256"] == checkpoint.sha256(path)
  assert meta["load_kwargs"]["streams"] == ["rgb"]
  for k, v in common.flatten(model.variables).items():
    np.testing.assert_array_equal(common.flatten(variables)[k], v)
  assert pytorch.main([str(tmp_path / "nope.pth"), str(tmp_path / "bad")]) == 2  # bad input
  assert not (tmp_path / "bad").exists()


@pytest.mark.slow
def test_full_size_vgg16_loads_through_the_zoo(tmp_path):
  """models.load(name, weights=DIR) on a full-size torchvision VGG-16 (138M parameters)."""
  from stviz_jax import models
  target = models.load("vgg16_two_stream", streams=("rgb",), num_classes=1000)
  net = torch_vgg16(pytorch._template(target), num_classes=1000)
  path = str(tmp_path / "vgg16.pth")
  torch.save(net.state_dict(), path)
  del target
  assert pytorch.main([path, str(tmp_path / "w"), "--num-classes", "1000"]) == 0
  model = models.load("vgg16_two_stream", streams=("rgb",), num_classes=1000,
                      weights=str(tmp_path / "w"))
  x = np.random.RandomState(0).uniform(-2, 2, (1, 3, 224, 224)).astype(np.float32)
  with torch.no_grad():
    ref = net(torch.from_numpy(x)).numpy()
  assert relerr(model({"rgb": np.moveaxis(x, 1, -1)[:, None]}), ref) < 1e-4


def torch_from_prototxt(proto_path, width_div=16, classes=10):
  """A torch net from a TSN Caffe prototxt the way tsn-pytorch builds BN-Inception:
  modules named by Caffe layer name with '/' -> '_', ceil-mode pools, BN eps 1e-5,
  `fc-action` replaced by `new_fc`. Channel counts divided by `width_div`."""
  from converters import caffe
  nn = torch.nn
  net = caffe.parse_net(proto_path)
  shape = {"data": net.inputs["data"][1]}
  base, plan = nn.Module(), []
  for layer in net.layers:
    name, t = layer.name.replace("/", "_"), layer.type
    x = layer.bottoms[0] if layer.bottoms else None
    if t == "Convolution":
      p = layer.param("convolution_param")
      cout = int(p.get("num_output")) // width_div
      mod = nn.Conv2d(shape[x], cout, int(p.get("kernel_size")), int(p.get("stride", 1)),
                      int(p.get("pad", 0)))
      shape[layer.tops[0]] = cout
    elif t == "BN":
      mod = nn.BatchNorm2d(shape[x], eps=1e-5)
      shape[layer.tops[0]] = shape[x]
    elif t == "ReLU":
      mod = nn.ReLU()
    elif t == "Pooling":
      p = layer.param("pooling_param")
      k, s, pad = int(p.get("kernel_size")), int(p.get("stride", 1)), int(p.get("pad", 0))
      mod = (nn.MaxPool2d(k, s, pad, ceil_mode=True) if str(p.get("pool")) == "MAX"
             else nn.AvgPool2d(k, s, pad, ceil_mode=True, count_include_pad=True))
      shape[layer.tops[0]] = shape[x]
    elif t == "Concat":
      mod = None
      shape[layer.tops[0]] = sum(shape[b] for b in layer.bottoms)
    elif t == "Dropout":
      mod = nn.Dropout(0.8)
    elif t == "InnerProduct":
      mod = nn.Linear(shape[x], classes)
      name = "new_fc"
    else:
      raise ValueError(t)
    if mod is not None and name != "new_fc":
      base.add_module(name, mod)
    plan.append((t, name, mod, layer.bottoms, layer.tops[0]))

  class TSN(nn.Module):

    def __init__(self):
      super().__init__()
      self.base_model = base
      self.new_fc = next(m for t, n, m, *_ in plan if n == "new_fc")

    def forward(self, x, taps=None):
      blobs = {"data": x}
      for t, name, mod, bottoms, top in plan:
        if t == "Concat":
          blobs[top] = torch.cat([blobs[b] for b in bottoms], 1)
        elif t == "InnerProduct":
          blobs[top] = mod(torch.flatten(blobs[bottoms[0]], 1))
        else:
          blobs[top] = mod(blobs[bottoms[0]])
        if taps is not None:
          taps[name] = blobs[top]
      return blobs[top]

  torch.manual_seed(0)
  model = TSN().eval()
  with torch.no_grad():  # trained-looking batch-norm statistics
    for m in model.modules():
      if isinstance(m, nn.BatchNorm2d):
        m.weight.uniform_(0.5, 1.5), m.bias.normal_(0, 0.1)
        m.running_mean.normal_(0, 0.1), m.running_var.uniform_(0.5, 2)
  return model


def test_tsn_pytorch_bn_inception_matches_torch(fixtures_dir, tmp_path):
  from stviz_jax.models import registry
  proto = str(fixtures_dir / "tsn_bn_inception_caffe/ucf101/tsn_bn_inception_flow_deploy.prototxt")
  net = torch_from_prototxt(proto)
  path = str(tmp_path / "tsn_flow.pth")
  torch.save({"state_dict": {"module." + k: v for k, v in net.state_dict().items()}}, path)
  kw = dict(width=1 / 16, num_classes=10, streams=("flow",))
  target = registry.load("tsn_bn_inception", folded=False, **kw)
  model, _ = pytorch.convert(path, "tsn_pytorch_bn_inception", tower="flow", target=target, **kw)
  x = np.random.RandomState(0).uniform(-20, 20, (2, 5, 224, 224, 2)).astype(np.float32)
  stacked = np.moveaxis(x, 1, 3).reshape(2, 224, 224, 10)  # x1, y1, ..., x5, y5
  taps = {}
  with torch.no_grad():
    ref = net(torch.from_numpy(np.moveaxis(stacked, -1, 1).copy()), taps).numpy()
  acts = model.activations({"flow": x}, ["flow/inception_4b/double_3x3_2", "logits"])
  r = np.moveaxis(taps["inception_4b_relu_double_3x3_2"].numpy(), 1, -1)
  assert relerr(np.asarray(acts["flow/inception_4b/double_3x3_2"]).reshape(r.shape), r) < 1e-4
  assert relerr(np.asarray(acts["logits"]) / 1.5, ref) < 1e-4  # the zoo weighs flow 1.5
  # Saved, it loads through the zoo with batch norm folded.
  pytorch.save(str(tmp_path / "w"), path, "tsn_pytorch_bn_inception", tower="flow",
               target=target, **kw)
  from stviz_jax.models import checkpoint
  variables, meta = checkpoint.restore(str(tmp_path / "w"))
  assert "batch_stats" in variables and meta["architecture"] == "tsn_bn_inception"


def piergiaj_i3d(num_classes=10, in_channels=3):
  """piergiaj/pytorch-i3d's InceptionI3d module tree (same state-dict keys),
  with its TF-"SAME" padding; the final 2x7x7 average pool is clipped to the
  feature size, as the zoo does, so small clips run."""
  import torch.nn.functional as F
  nn = torch.nn

  def same_pad(x, kernel, stride):
    pads = []
    for n, k, s in zip(x.shape[2:], kernel, stride):
      total = max(k - s, 0) if n % s == 0 else max(k - n % s, 0)
      pads.append((total // 2, total - total // 2))
    return F.pad(x, [p for pair in reversed(pads) for p in pair])

  class Unit3D(nn.Module):

    def __init__(self, cin, cout, kernel=(1, 1, 1), stride=(1, 1, 1), bn=True, relu=True,
                 bias=False):
      super().__init__()
      self.k, self.s, self.use_bn, self.relu = kernel, stride, bn, relu
      self.conv3d = nn.Conv3d(cin, cout, kernel, stride, bias=bias)
      if bn:
        self.bn = nn.BatchNorm3d(cout, eps=0.001, momentum=0.01)

    def forward(self, x):
      x = self.conv3d(same_pad(x, self.k, self.s))
      if self.use_bn:
        x = self.bn(x)
      return F.relu(x) if self.relu else x

  class Pool(nn.Module):

    def __init__(self, kernel, stride):
      super().__init__()
      self.k, self.s = kernel, stride

    def forward(self, x):  # zero padding, as piergiaj's MaxPool3dSamePadding
      return F.max_pool3d(same_pad(x, self.k, self.s), self.k, self.s)

  class Mixed(nn.Module):

    def __init__(self, cin, c):
      super().__init__()
      self.b0 = Unit3D(cin, c[0])
      self.b1a, self.b1b = Unit3D(cin, c[1]), Unit3D(c[1], c[2], (3, 3, 3))
      self.b2a, self.b2b = Unit3D(cin, c[3]), Unit3D(c[3], c[4], (3, 3, 3))
      self.b3a, self.b3b = Pool((3, 3, 3), (1, 1, 1)), Unit3D(cin, c[5])

    def forward(self, x):
      return torch.cat([self.b0(x), self.b1b(self.b1a(x)), self.b2b(self.b2a(x)),
                        self.b3b(self.b3a(x))], 1)

  from stviz_jax.models.zoo.i3d import MIXED_CHANNELS as C

  class InceptionI3d(nn.Module):

    def __init__(self):
      super().__init__()
      self.order = []

      def add(name, mod):
        self.add_module(name, mod)
        self.order.append(name)

      add("Conv3d_1a_7x7", Unit3D(in_channels, 64, (7, 7, 7), (2, 2, 2)))
      add("MaxPool3d_2a_3x3", Pool((1, 3, 3), (1, 2, 2)))
      add("Conv3d_2b_1x1", Unit3D(64, 64))
      add("Conv3d_2c_3x3", Unit3D(64, 192, (3, 3, 3)))
      add("MaxPool3d_3a_3x3", Pool((1, 3, 3), (1, 2, 2)))
      cin = 192
      for name in C:
        if name == "Mixed_4b":
          add("MaxPool3d_4a_3x3", Pool((3, 3, 3), (2, 2, 2)))
        if name == "Mixed_5b":
          add("MaxPool3d_5a_2x2", Pool((2, 2, 2), (2, 2, 2)))
        add(name, Mixed(cin, C[name]))
        cin = C[name][0] + C[name][2] + C[name][4] + C[name][5]
      self.logits = Unit3D(cin, num_classes, bn=False, relu=False, bias=True)

    def forward(self, x, taps):
      for name in self.order:
        x = getattr(self, name)(x)
        taps[name] = x
      x = F.avg_pool3d(x, [min(a, b) for a, b in zip((2, 7, 7), x.shape[2:])], 1)
      return self.logits(x).mean((2, 3, 4))  # per-position logits averaged

  torch.manual_seed(0)
  net = InceptionI3d().eval()
  with torch.no_grad():
    for m in net.modules():
      if isinstance(m, nn.BatchNorm3d):
        m.weight.uniform_(0.5, 1.5), m.bias.normal_(0, 0.1)
        m.running_mean.normal_(0, 0.1), m.running_var.uniform_(0.5, 2)
  return net


def test_piergiaj_i3d_matches_torch(tmp_path):
  from stviz_jax.models import registry
  net = piergiaj_i3d()
  path = str(tmp_path / "rgb_imagenet.pt")
  torch.save(net.state_dict(), path)
  kw = dict(frames=8, size=64, num_classes=10)
  target = registry.load("i3d", **kw)
  model, _ = pytorch.convert(path, "piergiaj_i3d", target=target, **kw)
  x = np.random.RandomState(0).uniform(-1, 1, (1, 8, 64, 64, 3)).astype(np.float32)
  taps = {}
  with torch.no_grad():
    ref = net(torch.from_numpy(np.moveaxis(x, -1, 1).copy()), taps).numpy()
  names = ["Conv3d_2c_3x3", "Mixed_3b", "Mixed_4f", "Mixed_5c"]
  acts = model.activations({"rgb": x}, names + ["logits"])
  for n in names:
    r = np.moveaxis(taps[n].numpy(), 1, -1)
    assert relerr(acts[n], r) < 1e-4, n
  assert relerr(acts["logits"], ref) < 1e-4
  # A state dict missing one batch norm is reported by name.
  sd = net.state_dict()
  del sd["Mixed_4c.b2a.bn.running_var"]
  torch.save(sd, path)
  with pytest.raises(common.ConversionError, match=r"unexpected 3: Mixed_4c\.b2a\.bn\.bias"):
    pytorch.convert(path, "piergiaj_i3d", target=target, **kw)


class _NotATensor:
  """Any pickled object: `weights_only=True` must refuse to build it."""

  def __reduce__(self):
    return (print, ("this must never run",))


def test_pickled_objects_are_refused(tmp_path, capsys):
  path = str(tmp_path / "evil.pth")
  torch.save({"w": torch.zeros(2), "x": _NotATensor()}, path)
  with pytest.raises(pytorch.PyTorchError, match=r"evil\.pth: not a readable PyTorch weights file"):
    pytorch.load_state_dict(path)
  assert "this must never run" not in capsys.readouterr().out
