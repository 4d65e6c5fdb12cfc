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
  assert matconvnet.main([str(tmp_path / "nope.mat"), str(tmp_path / "bad")]) == 1
  assert not (tmp_path / "bad").exists()
