"""MatConvNet converter: the real 3DSepNet SimpleNN with its data, and DagNN files
written here with scipy (same weights, so both readers must agree)."""

import functools

import numpy as np
import pytest
import scipy.io

from converters import common, matconvnet

NET = "matconvnet_simplenn_3dsepnet_5x5/net-epoch-20.mat"
IMDB = "matconvnet_simplenn_3dsepnet_5x5/imdb.mat"


def softmax_objective(logits, labels):
  """MatConvNet's softmaxloss averaged over images: mean(-log p[label])."""
  z = logits - logits.max(-1, keepdims=True)
  logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
  return -logp[np.arange(len(labels)), labels].mean()


@functools.lru_cache(maxsize=None)
def _load_imdb(path):
  images = scipy.io.loadmat(path, struct_as_record=False)["images"][0, 0]
  x = np.moveaxis(images.data, 3, 0)[:, None].astype(np.float32)  # (N, 1, H, W, C)
  labels = images.labels.ravel().astype(int) - 1  # 1-based classes
  return x, labels, images.set.ravel()


@pytest.fixture
def imdb(fixtures_dir):
  return _load_imdb(str(fixtures_dir / IMDB))


def test_simplenn_classifies_its_own_validation_data(fixtures_dir, imdb):
  """SOURCES.md: val objective 0.503335 / top1err 0.2333 without flips and
  0.550551 / 0.1667 all flipped; the recorded stats.val(20) 0.530397 (random
  flips) lies between."""
  model = matconvnet.load(str(fixtures_dir / NET))
  assert model.labels == ("airplane aircraft", "furniture", "human")
  assert model.spec.streams["rgb"].shape == (1, 32, 32, 3)
  x, labels, split = imdb
  val = split == 3
  assert val.sum() == 60
  logits = np.asarray(model({"rgb": x[val]}))
  flipped = np.asarray(model({"rgb": x[val][:, :, :, ::-1]}))
  assert softmax_objective(logits, labels[val]) == pytest.approx(0.503335, abs=2e-6)
  assert softmax_objective(flipped, labels[val]) == pytest.approx(0.550551, abs=2e-6)
  assert np.mean(logits.argmax(-1) != labels[val]) == pytest.approx(14 / 60)
  assert np.mean(flipped.argmax(-1) != labels[val]) == pytest.approx(10 / 60)
  stats = scipy.io.loadmat(str(fixtures_dir / NET), struct_as_record=False)["stats"][0, 0]
  recorded = stats.val[0, -1].objective.item()
  assert 0.503335 < recorded < 0.550551
  # Training images: accuracy near the recorded last-epoch training error (0.197).
  train_err = np.mean(np.asarray(model({"rgb": x[split == 1]})).argmax(-1) != labels[split == 1])
  assert train_err < 0.25


def test_simplenn_taps_follow_matconvnet_sizes(fixtures_dir):
  """Pool 3x3 s2 pad [0 1 0 1] rounds down: 32 -> 16 -> 8 -> 4; conv 4x4 -> 1x1."""
  model = matconvnet.load(str(fixtures_dir / NET))
  shapes = {l: model.spec.feature_shape(l) for l in model.spec.layers}
  assert shapes["layer2"] == (16, 16, 32)
  assert shapes["layer6"] == (8, 8, 32)
  assert shapes["layer9"] == (4, 4, 64)
  assert shapes["layer10"] == (1, 1, 64)
  assert shapes["logits"] == (3,)


def ref_pool(x, k, s, pad, method):
  """vl_nnpool, literally: x (H, W, C); pad [t b l r]; avg excludes padding."""
  t, b, l, r = pad
  h, w = x.shape[:2]
  oh, ow = (h + t + b - k) // s + 1, (w + l + r - k) // s + 1
  y = np.zeros((oh, ow, x.shape[2]))
  for i in range(oh):
    for j in range(ow):
      y0, x0 = i * s - t, j * s - l
      win = x[max(y0, 0):min(y0 + k, h), max(x0, 0):min(x0 + k, w)]
      y[i, j] = win.max((0, 1)) if method == "max" else win.mean((0, 1))
  return y


def test_pooling_semantics_against_reference(fixtures_dir, imdb):
  model = matconvnet.load(str(fixtures_dir / NET))
  x = imdb[0][:2]
  acts = model.activations({"rgb": x}, ["layer5", "layer6", "layer1", "layer2"])
  for n in range(2):
    ref2 = ref_pool(np.asarray(acts["layer1"][n], np.float64), 3, 2, (0, 1, 0, 1), "max")
    ref6 = ref_pool(np.asarray(acts["layer5"][n], np.float64), 3, 2, (0, 1, 0, 1), "avg")
    np.testing.assert_allclose(acts["layer2"][n], ref2, rtol=1e-6)
    np.testing.assert_allclose(acts["layer6"][n], ref6, rtol=1e-5, atol=1e-6)


def struct_array(rows, fields):
  a = np.empty((1, len(rows)), dtype=[(f, object) for f in fields])
  for i, row in enumerate(rows):
    for f in fields:
      a[0, i][f] = row[f]
  return a


def cell(items):
  c = np.empty((1, len(items)), dtype=object)
  for i, v in enumerate(items):
    c[0, i] = v
  return c


def simplenn_as_dagnn(path, out, bnorm=None):
  """Writes the SimpleNN at `path` as a DagNN .mat, optionally with a batch norm
  (mult, bias, moments) after layer1."""
  net = scipy.io.loadmat(path, struct_as_record=False)["net"][0, 0]
  layers, params = [], []
  prev = "input"
  block_fields = {"conv": "dagnn.Conv", "pool": "dagnn.Pooling", "relu": "dagnn.ReLU",
                  "softmaxloss": "dagnn.Loss"}
  for l in net.layers[0]:
    l = l[0, 0]
    kind, name = str(l.type[0]), str(l.name[0])
    block, pnames = {}, []
    if kind == "conv":
      f, b = l.weights[0]
      params += [{"name": name + "f", "value": f}, {"name": name + "b", "value": b}]
      pnames = [name + "f", name + "b"]
      block = {"size": np.array(f.shape, float), "hasBias": 1.0, "pad": l.pad,
               "stride": l.stride, "dilate": l.dilate}
    elif kind == "pool":
      block = {"method": str(l.method[0]), "poolSize": l.pool, "pad": l.pad, "stride": l.stride}
    elif kind == "relu":
      block = {"leak": 0.0}
    inputs = [prev, "label"] if kind == "softmaxloss" else [prev]
    layers.append({"name": name, "type": block_fields[kind], "inputs": cell(inputs),
                   "outputs": cell([name + "_x"]), "params": cell(pnames), "block": block})
    prev = name + "_x"
    if bnorm is not None and name == "layer1":
      params += [{"name": "bn_m", "value": bnorm[0]}, {"name": "bn_b", "value": bnorm[1]},
                 {"name": "bn_mom", "value": bnorm[2]}]
      layers.append({"name": "bn1", "type": "dagnn.BatchNorm", "inputs": cell([prev]),
                     "outputs": cell(["bn1_x"]), "params": cell(["bn_m", "bn_b", "bn_mom"]),
                     "block": {"epsilon": 1e-5}})
      prev = "bn1_x"
  layers.insert(3, layers.pop(0))  # DagNN files need not be in execution order
  dag = {"layers": struct_array(layers, ["name", "type", "inputs", "outputs", "params", "block"]),
         "params": struct_array(params, ["name", "value"]),
         "vars": struct_array([{"name": "input"}], ["name"]),
         "meta": {"inputSize": np.array([32.0, 32, 3]),
                  "classes": {"name": cell(["a", "b", "c"])}}}
  scipy.io.savemat(out, {"net": dag})


def test_dagnn_reads_like_simplenn_and_folds_batch_norm(fixtures_dir, imdb, tmp_path):
  src = str(fixtures_dir / NET)
  simple = matconvnet.load(src)
  out = str(tmp_path / "dag.mat")
  simplenn_as_dagnn(src, out)
  dag = matconvnet.load(out)
  x = imdb[0][:4]
  np.testing.assert_allclose(dag({"rgb": x}), simple({"rgb": x}), rtol=1e-5, atol=1e-6)
  assert "layer4_x" in dag.spec.layers  # DagNN variables are taps too
  rs = np.random.RandomState(0)
  g, b = rs.uniform(0.5, 2, (32, 1)), rs.randn(32, 1)
  moments = np.stack([rs.randn(32), rs.uniform(0.5, 2, 32)], 1)
  simplenn_as_dagnn(src, out, bnorm=(g, b, moments))
  bn = matconvnet.load(out)
  assert "bn1" not in bn.variables["params"]  # folded into layer1
  a_ref = np.asarray(simple.activations({"rgb": x}, ["layer1"])["layer1"], np.float64)
  a_ref = g.ravel() * (a_ref - moments[:, 0]) / moments[:, 1] + b.ravel()
  got = bn.activations({"rgb": x}, ["bn1", "layer1"])
  np.testing.assert_allclose(got["bn1"], a_ref, rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(got["bn1"], got["layer1"])


def test_unused_dagnn_param_and_bad_files_are_clear_errors(fixtures_dir, tmp_path):
  src = str(fixtures_dir / NET)
  out = str(tmp_path / "dag.mat")
  simplenn_as_dagnn(src, out)
  mat = scipy.io.loadmat(out, struct_as_record=False)
  net = mat["net"][0, 0]
  params = [{"name": str(p.name[0]), "value": p.value} for p in net.params[0]]
  params.append({"name": "orphan", "value": np.zeros(3)})
  layers = [{f: getattr(l, f) for f in l._fieldnames} for l in net.layers[0]]
  dag = {"layers": struct_array(layers, list(layers[0])),
         "params": struct_array(params, ["name", "value"]),
         "vars": net.vars, "meta": {"inputSize": np.array([32.0, 32, 3])}}
  scipy.io.savemat(out, {"net": dag})
  with pytest.raises(common.ConversionError, match=r"dag\.mat: .*unexpected 1: net\.params 'orphan'"):
    matconvnet.load(out)
  data = open(src, "rb").read()
  cut = tmp_path / "cut.mat"
  cut.write_bytes(data[:len(data) // 2])
  with pytest.raises(matconvnet.MatConvNetError, match=r"cut\.mat: not a readable MATLAB"):
    matconvnet.load(str(cut))


def test_cli_round_trip(fixtures_dir, imdb, tmp_path):
  from stviz_jax.models import checkpoint
  src = str(fixtures_dir / NET)
  out = str(tmp_path / "mcn")
  assert matconvnet.main([src, out]) == 0
  _, meta = checkpoint.restore(out)
  assert meta["architecture"] == "matconvnet"
  assert meta["source_sha256"] == checkpoint.sha256(src)
  x = imdb[0][:8]
  np.testing.assert_array_equal(matconvnet.load_converted(out)({"rgb": x}),
                                matconvnet.load(src)({"rgb": x}))
  assert matconvnet.main([str(tmp_path / "nope.mat"), str(tmp_path / "bad")]) == 2  # bad input
  assert not (tmp_path / "bad").exists()


def conv_nhwc(x, w, pad):
  """x (H, W, C), w (kh, kw, C, O) MatConvNet filter, symmetric pad: cross-correlation."""
  xp = np.pad(x, ((pad, pad), (pad, pad), (0, 0)))
  kh, kw = w.shape[:2]
  h, wd = xp.shape[0] - kh + 1, xp.shape[1] - kw + 1
  return sum(np.einsum("hwc,co->hwo", xp[i:i + h, j:j + wd], w[i, j])
             for i in range(kh) for j in range(kw))


def test_twostreamfusion_dagnn_into_zoo_vgg16_fusion(tmp_path):
  """A DagNN file named as `cnn_ucf101_fusion.m` writes it (random weights,
  MatConvNet layouts) fills `vgg16_fusion`; taps checked by direct NumPy sums."""
  from stviz_jax.models import registry
  kw = dict(width=1 / 16, num_classes=10, frames=2)
  target = registry.load("vgg16_fusion", folded=False, **kw)
  shapes = {k: np.shape(v) for k, v in common.flatten(target.variables).items()}
  rs = np.random.RandomState(0)
  layers, params = [], []

  def add(layer, kernel_shape, bias_len):
    f = (rs.randn(*kernel_shape) * np.sqrt(2 / np.prod(kernel_shape[:-1]))).astype(np.float32)
    b = (0.1 * rs.randn(1, bias_len)).astype(np.float32)
    params.extend([{"name": layer + "f", "value": f}, {"name": layer + "b", "value": b}])
    layers.append({"name": layer, "type": "dagnn.Conv", "inputs": cell(["x"]),
                   "outputs": cell([layer]), "params": cell([layer + "f", layer + "b"]),
                   "block": {}})
    return f

  filters = {}
  for suffix, tower, head in (("_spatial", "rgb/", ""), ("_temporal", "flow/", "flow/")):
    for name in matconvnet._VGG16_CONVS:
      filters[tower + name] = add(name + suffix, shapes[f"params/{tower}{name}/kernel"],
                                  shapes[f"params/{tower}{name}/bias"][0])
    c5, f6 = shapes[f"params/{tower}conv5_3/kernel"][-1], shapes[f"params/{head}fc6/bias"][0]
    filters[head + "fc6"] = add("fc6" + suffix, (7, 7, c5, f6), f6)
    add("fc7" + suffix, (1, 1, f6, f6), f6)
    add("prediction" + suffix, (1, 1, f6, 10), 10)
    layers.append({"name": "relu5_3" + suffix, "type": "dagnn.ReLU", "inputs": cell(["x"]),
                   "outputs": cell(["y"]), "params": cell([]), "block": {}})
  k3 = shapes["params/conv5_fusion/kernel"]  # (T, H, W, Cin, Cout)
  filters["conv5_fusion"] = add("conv53D", (k3[1], k3[2], k3[0], k3[3], k3[4]), k3[4])
  path = str(tmp_path / "fusion.mat")
  fields = ["name", "type", "inputs", "outputs", "params", "block"]
  scipy.io.savemat(path, {"net": {"layers": struct_array(layers, fields),
                                  "params": struct_array(params, ["name", "value"])}})
  model, _ = matconvnet.to_zoo(path, "vgg16_fusion", target=target, **kw)

  rgb = rs.uniform(-100, 100, (1, 2, 224, 224, 3)).astype(np.float32)
  flow = rs.uniform(-20, 20, (1, 20, 224, 224, 2)).astype(np.float32)
  acts = model.activations({"rgb": rgb, "flow": flow},
                           ["rgb/conv1_1", "flow/conv1_1", "rgb/conv5_3", "flow/conv5_3",
                            "conv5_fusion", "pool5", "fc6"])
  p = common.flatten(model.variables)
  b = lambda scope: np.asarray(p[f"params/{scope}/bias"], np.float64)
  ref = np.maximum(conv_nhwc(rgb[0, 1].astype(np.float64), filters["rgb/conv1_1"], 1)
                   + b("rgb/conv1_1"), 0)
  np.testing.assert_allclose(acts["rgb/conv1_1"][0, 1], ref, rtol=1e-4, atol=1e-3)
  stack = np.moveaxis(flow[0, 10:20], 0, 2).reshape(224, 224, 20)  # u1, v1, ..., u10, v10
  ref = np.maximum(conv_nhwc(stack.astype(np.float64), filters["flow/conv1_1"], 1)
                   + b("flow/conv1_1"), 0)
  np.testing.assert_allclose(acts["flow/conv1_1"][0, 1], ref, rtol=1e-4, atol=1e-3)
  # Fusion: 3x3x3 over [appearance; motion] with the [H W T Cin Cout] filter, pad 1.
  cat = np.concatenate([acts["rgb/conv5_3"][0], acts["flow/conv5_3"][0]], -1).astype(np.float64)
  catp = np.pad(cat, ((1, 1), (1, 1), (1, 1), (0, 0)))
  w3 = filters["conv5_fusion"]
  fused = sum(np.einsum("thwc,co->thwo", catp[t:t + 2, i:i + 14, j:j + 14], w3[i, j, t])
              for t in range(3) for i in range(3) for j in range(3))
  fused = np.maximum(fused + b("conv5_fusion"), 0)
  assert np.abs(acts["conv5_fusion"][0] - fused).max() < 1e-4 * np.abs(fused).max()
  # fc6: the 7x7xCxF filter applied as MatConvNet does (a full-size convolution).
  pool5 = np.asarray(acts["pool5"][0, 0], np.float64)
  fc6 = np.maximum(np.einsum("hwc,hwco->o", pool5, filters["fc6"]) + b("fc6"), 0)
  np.testing.assert_allclose(np.asarray(acts["fc6"]).reshape(-1), fc6, rtol=1e-4, atol=1e-4)
  # Strict: a layer the table does not know is reported with the missing ones.
  layers.append({"name": "fc9_spatial", "type": "dagnn.Conv", "inputs": cell(["x"]),
                 "outputs": cell(["y"]), "params": cell(["fc9f"]), "block": {}})
  params.append({"name": "fc9f", "value": np.zeros((1, 1, 2, 2), np.float32)})
  layers[:] = [l for l in layers if l["name"] != "conv53D"]
  scipy.io.savemat(path, {"net": {"layers": struct_array(layers, fields),
                                  "params": struct_array(params, ["name", "value"])}})
  with pytest.raises(common.ConversionError,
                     match=r"missing 2: params/conv5_fusion/bias, params/conv5_fusion/kernel; "
                           r"unexpected 3: .*layer fc9_spatial \(-> rgb/fc9, not a parameter"):
    matconvnet.to_zoo(path, "vgg16_fusion", target=target, **kw)


def test_stresnet_dagnn_into_zoo_st_resnet50(tmp_path):
  """A DagNN file named as `STResNet_stage1.m` writes it (ConvTime filters
  `[1 3 Cin Cout]`, batch norm `[mult, bias, moments]`) fills `st_resnet50`."""
  from stviz_jax.models import registry
  kw = dict(width=1 / 16, num_classes=10, frames=2)
  target = registry.load("st_resnet50", folded=False, **kw)
  shapes = {k: np.shape(v) for k, v in common.flatten(target.variables).items()}
  rs = np.random.RandomState(0)
  layers, params, src = [], [], {}
  for key, shape in shapes.items():
    kind, tower, *path, leaf = key.split("/")
    if kind != "params" or leaf not in ("kernel", "scale"):
      continue
    scope = "/".join(path)
    name = f"{scope}_{'spatial' if tower == 'rgb' else 'temporal'}"
    if leaf == "scale":
      c = shape[0]
      vals = [rs.uniform(0.5, 1.5, (c, 1)), 0.1 * rs.randn(c, 1),
              np.stack([0.1 * rs.randn(c), rs.uniform(0.5, 2, c)], 1)]
      pnames = [f"{scope}_mult", f"{scope}_bias", f"{scope}_moments"]
    else:
      mcn = {2: (1, 1) + shape, 4: shape, 5: (1, shape[0]) + shape[3:]}[len(shape)]
      vals = [rs.randn(*mcn) * np.sqrt(2 / np.prod(mcn[:-1]))]
      pnames = [f"{scope}_filter"]
      if f"params/{tower}/{scope}/bias" in shapes:
        vals.append(0.1 * rs.randn(1, shape[-1]))
        pnames.append(f"{scope}_bias")
    pnames = [f"{p}_{name.rsplit('_', 1)[1]}" for p in pnames]
    src[f"{tower}/{scope}"] = [np.asarray(v, np.float32) for v in vals]
    params += [{"name": p, "value": v} for p, v in zip(pnames, src[f"{tower}/{scope}"])]
    layers.append({"name": name, "type": "dagnn.Conv", "inputs": cell(["x"]),
                   "outputs": cell([name]), "params": cell(pnames), "block": {}})
  path = str(tmp_path / "stres.mat")
  fields = ["name", "type", "inputs", "outputs", "params", "block"]
  scipy.io.savemat(path, {"net": {"layers": struct_array(layers, fields),
                                  "params": struct_array(params, ["name", "value"])}})
  model, _ = matconvnet.to_zoo(path, "st_resnet50", target=target, **kw)

  def bn(x, scope):
    g, b, m = src[scope]
    return g.ravel() * (x - m[:, 0]) / m[:, 1] + b.ravel()

  flow = rs.uniform(-20, 20, (1, 20, 224, 224, 2)).astype(np.float32)
  acts = model.activations({"rgb": np.zeros((1, 2, 224, 224, 3), np.float32), "flow": flow},
                           ["flow/conv1", "flow/res2a", "flow/res2b_branch2a", "flow/pool5",
                            "flow/prediction"])
  stack = np.moveaxis(flow[0, :10], 0, 2).reshape(224, 224, 20).astype(np.float64)
  conv1 = conv_nhwc(stack, src["flow/conv1"][0], 3)[::2, ::2] + src["flow/conv1"][1].ravel()
  ref = np.maximum(bn(conv1, "flow/bn_conv1"), 0)
  np.testing.assert_allclose(acts["flow/conv1"][0, 0], ref, rtol=1e-4, atol=1e-3)
  # ConvTime: out[t] = sum_k f[0, k] . x[t + k - 1], zero padded in time.
  x = np.asarray(acts["flow/res2a"][0], np.float64)  # (T, H, W, C)
  f = src["flow/res2b_branch2a"][0][0]  # (3, Cin, Cout)
  xp = np.pad(x, ((1, 1), (0, 0), (0, 0), (0, 0)))
  y = sum(np.einsum("thwc,co->thwo", xp[k:k + 2], f[k]) for k in range(3))
  ref = np.maximum(bn(y, "flow/bn2b_branch2a"), 0)
  got = np.asarray(acts["flow/res2b_branch2a"][0])
  assert np.abs(got - ref).max() < 1e-4 * np.abs(ref).max()
  pred = (np.asarray(acts["flow/pool5"], np.float64).reshape(1, -1)
          @ src["flow/prediction"][0].reshape(-1, 10) + src["flow/prediction"][1].ravel())
  np.testing.assert_allclose(np.asarray(acts["flow/prediction"]).reshape(1, 10), pred,
                             rtol=1e-4, atol=1e-4)
