"""Caffe converter: real fixture files, and small nets checked against a NumPy reference.

The reference below is written in Caffe's own layout (N, C, H, W) with Caffe's
loops (pooling windows, LRN as AVE pooling of squares, channel-major flatten),
independently of the converter's channels-last Flax code.
"""

import collections
import glob
import os
import pathlib
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from converters import caffe, common, prototxt

# ---------------------------------------------------------------------------
# NumPy reference in Caffe layout.


def ref_conv(x, w, b, pad, stride, group=1):
  """x (N, C, *S), w (O, C/g, *K): Caffe convolution (cross-correlation)."""
  nd = x.ndim - 2
  pad, stride = [pad] * nd if np.isscalar(pad) else pad, [stride] * nd if np.isscalar(stride) else stride
  xp = np.pad(x, [(0, 0), (0, 0)] + [(p, p) for p in pad])
  k = w.shape[2:]
  out_sp = [(s + 2 * p - kk) // st + 1 for s, p, kk, st in zip(x.shape[2:], pad, k, stride)]
  o, cg = w.shape[:2]
  og = o // group
  y = np.zeros((x.shape[0], o, *out_sp), np.float64)
  for g in range(group):
    xg = xp[:, g * cg:(g + 1) * cg]
    for off in np.ndindex(*k):
      sl = tuple(slice(f, f + st * n, st) for f, st, n in zip(off, stride, out_sp))
      patch = xg[(slice(None), slice(None)) + sl]
      wk = w[(slice(g * og, (g + 1) * og), slice(None)) + off]
      y[:, g * og:(g + 1) * og] += np.einsum("oc,nc...->no...", wk, patch)
  if b is not None:
    y += b.reshape((1, -1) + (1,) * nd)
  return y


def ref_pool(x, k, s, p, method):
  """Caffe PoolingLayer::Forward_cpu, literally (any number of spatial axes)."""
  nd = x.ndim - 2
  k, s, p = ([v] * nd if np.isscalar(v) else list(v) for v in (k, s, p))
  size = x.shape[2:]
  out = []
  for n_, kk, ss, pp in zip(size, k, s, p):
    o = int(np.ceil((n_ + 2 * pp - kk) / ss)) + 1
    if pp and (o - 1) * ss >= n_ + pp:
      o -= 1
    out.append(o)
  y = np.zeros(x.shape[:2] + tuple(out))
  for pos in np.ndindex(*out):
    lo, hi, count = [], [], 1
    for i, (po, kk, ss, pp, n_) in enumerate(zip(pos, k, s, p, size)):
      start = po * ss - pp
      end = min(start + kk, n_ + pp)
      count *= end - start
      lo.append(max(start, 0))
      hi.append(min(end, n_))
    win = x[(slice(None), slice(None)) + tuple(slice(a, b) for a, b in zip(lo, hi))]
    axes = tuple(range(2, 2 + nd))
    y[(slice(None), slice(None)) + pos] = (win.max(axis=axes) if method == "MAX"
                                           else win.sum(axis=axes) / count)
  return y


def ref_lrn_within(x, size, alpha, beta):
  """Caffe's WITHIN_CHANNEL LRN: x * (1 + alpha * AVEpool(x^2))^-beta."""
  avg = ref_pool(x * x, size, 1, (size - 1) // 2, "AVE")
  return x * (1 + alpha * avg) ** -beta


def ref_lrn_across(x, size, alpha, beta, k=1.0):
  sq = np.pad(x * x, [(0, 0), ((size - 1) // 2,) * 2, (0, 0), (0, 0)])
  s = sum(sq[:, i:i + x.shape[1]] for i in range(size))
  return x * (k + alpha / size * s) ** -beta


def ref_ip(x, w, b):
  return x.reshape(x.shape[0], -1) @ w.T + b


def relerr(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return np.abs(a - b).max() / max(np.abs(b).max(), 1e-12)


def to_nchw(y):
  y = np.asarray(y)
  return y if y.ndim <= 2 else np.moveaxis(y, -1, 1)


# ---------------------------------------------------------------------------
# A tiny protobuf writer, to make caffemodels for the synthetic nets.


def _varint(n):
  out = bytearray()
  while True:
    b = n & 0x7F
    n >>= 7
    out.append(b | (0x80 if n else 0))
    if not n:
      return bytes(out)


def _field(num, payload=None, varint=None):
  if varint is not None:
    return _varint(num << 3) + _varint(varint)
  return _varint(num << 3 | 2) + _varint(len(payload)) + payload


def _string(num, s):
  return _field(num, s.encode())


def blob_bytes(a, layout="shape"):
  a = np.asarray(a, np.float32)
  data = a.astype("<f4").tobytes()
  if layout == "shape":
    dims = b"".join(_varint(d) for d in a.shape)
    return _field(7, _field(1, dims)) + _field(5, data)
  if layout == "legacy":  # num/channels/height/width, left-padded with 1s
    shape = (1,) * (4 - a.ndim) + a.shape
    return b"".join(_field(i + 1, varint=d) for i, d in enumerate(shape)) + _field(5, data)
  if layout == "c3d":  # C3D-v1.0: num, channels, length, height, width, data=6
    shape = (1,) * (5 - a.ndim) + a.shape
    return b"".join(_field(i + 1, varint=d) for i, d in enumerate(shape)) + _field(6, data)
  raise ValueError(layout)


def caffemodel_bytes(layers, v1=False, layout=None):
  """layers: [(name, type, [arrays])] -> NetParameter bytes."""
  out = _string(1, "net")
  for name, ltype, blobs in layers:
    if v1:
      body = _string(4, name) + _field(5, varint=ltype) + b"".join(
          _field(6, blob_bytes(b, layout or "legacy")) for b in blobs)
      out += _field(2, body)
    else:
      body = _string(1, name) + _string(2, ltype) + b"".join(
          _field(7, blob_bytes(b, layout or "shape")) for b in blobs)
      out += _field(100, body)
  return out


def write(tmp_path, name, data):
  path = tmp_path / name
  if isinstance(data, str):
    path.write_text(data)
  else:
    path.write_bytes(data)
  return str(path)


# ---------------------------------------------------------------------------
# Real files.

LENETS = [
    ("lenet_mnist_caffe_ahmdtaha/mnist_deploy.prototxt",
     "lenet_mnist_caffe_ahmdtaha/lenet_iter_10000.caffemodel"),
    ("lenet_mnist_caffe_jachinshen/lenet_deploy.prototxt",
     "lenet_mnist_caffe_jachinshen/lenet_iter_10000.caffemodel"),
    ("lenet_mnist_caffe_v1_everpeace/lenet.prototxt",
     "lenet_mnist_caffe_v1_everpeace/lenet_iter_10000.caffemodel"),
]


def mnist_samples(fixtures_dir):
  import imageio.v3 as iio
  paths = sorted(glob.glob(str(fixtures_dir / "lenet_mnist_caffe_ahmdtaha/samples/*.png")))
  assert len(paths) == 10
  images = np.stack([iio.imread(p).astype(np.float32) for p in paths]) / 256.0
  labels = [int(re.search(r"img_(\d+)_", os.path.basename(p)).group(1)) for p in paths]
  return images, np.array(labels)


@pytest.mark.parametrize("proto,weights", LENETS, ids=["new", "new2", "v1"])
def test_lenet_classifies_the_labelled_digits(fixtures_dir, proto, weights):
  images, labels = mnist_samples(fixtures_dir)
  model = caffe.load(str(fixtures_dir / proto), str(fixtures_dir / weights),
                     value_range=(0.0, 1.0))
  assert set(model.spec.streams) == {"input"}
  assert model.spec.streams["input"].shape == (1, 28, 28, 1)
  logits = np.asarray(model({"input": images[:, None, :, :, None]}))
  np.testing.assert_array_equal(logits.argmax(-1), labels)


def test_lenet_matches_numpy_reference_and_v1_shapes(fixtures_dir):
  """Every tap of the V1 LeNet equals an independent NCHW forward pass."""
  images, _ = mnist_samples(fixtures_dir)
  proto, weights = LENETS[2]
  blobs = caffe.read_caffemodel(str(fixtures_dir / weights))
  # Legacy V1 shapes, as SOURCES.md lists them.
  assert blobs["conv1"].blobs[0].shape == (20, 1, 5, 5)
  assert blobs["conv1"].blobs[1].shape == (1, 1, 1, 20)
  assert blobs["ip1"].blobs[0].shape == (1, 1, 500, 800)
  assert all(b.legacy for b in blobs["ip1"].blobs)
  w = {n: [b.data.reshape(-1) for b in l.blobs] for n, l in blobs.items() if l.blobs}
  x = images[:, None].astype(np.float64)
  conv1 = ref_conv(x, w["conv1"][0].reshape(20, 1, 5, 5), w["conv1"][1], 0, 1)
  pool1 = ref_pool(conv1, 2, 2, 0, "MAX")
  conv2 = ref_conv(pool1, w["conv2"][0].reshape(50, 20, 5, 5), w["conv2"][1], 0, 1)
  pool2 = ref_pool(conv2, 2, 2, 0, "MAX")
  ip1 = ref_ip(pool2, w["ip1"][0].reshape(500, 800), w["ip1"][1])
  relu1 = np.maximum(ip1, 0)
  ip2 = ref_ip(relu1, w["ip2"][0].reshape(10, 500), w["ip2"][1])
  model = caffe.load(str(fixtures_dir / proto), str(fixtures_dir / weights))
  acts = model.activations({"input": images[:, None, :, :, None]},
                           ["conv1", "pool1", "conv2", "pool2", "ip1", "relu1", "logits"])
  assert acts["conv2"].shape == (10, 8, 8, 50)  # notebook: conv2 (64, 50, 8, 8)
  for name, ref in [("conv1", conv1), ("pool1", pool1), ("conv2", conv2),
                    ("pool2", pool2), ("ip1", ip1), ("relu1", relu1), ("logits", ip2)]:
    assert relerr(to_nchw(acts[name]), ref) < 1e-5, name


# BSD-licensed copy of fixtures/cifar10_full_caffe_v1_everpeace (see its SOURCE.md),
# so this real-file test runs without the shared fixtures folder.
CIFAR_DIR = pathlib.Path(__file__).parent / "data" / "caffe_cifar10_full"


def test_cifar10_full_with_lrn_matches_numpy_reference():
  d = CIFAR_DIR
  model = caffe.load(str(d / "cifar10_full.prototxt"), str(d / "cifar10_full_iter_70000.caffemodel"))
  blobs = caffe.read_caffemodel(str(d / "cifar10_full_iter_70000.caffemodel"))
  w = {n: [b.data for b in l.blobs] for n, l in blobs.items() if l.blobs}
  assert w["ip1"][0].shape == (1, 1, 10, 1024)
  x = np.random.RandomState(0).uniform(-60, 60, (2, 3, 32, 32))
  a = ref_conv(x, w["conv1"][0], w["conv1"][1].ravel(), 2, 1)
  a = np.maximum(ref_pool(a, 3, 2, 0, "MAX"), 0)
  norm1 = ref_lrn_within(a, 3, 5e-5, 0.75)
  a = np.maximum(ref_conv(norm1, w["conv2"][0], w["conv2"][1].ravel(), 2, 1), 0)
  pool2 = ref_pool(a, 3, 2, 0, "AVE")
  a = ref_lrn_within(pool2, 3, 5e-5, 0.75)
  a = np.maximum(ref_conv(a, w["conv3"][0], w["conv3"][1].ravel(), 2, 1), 0)
  pool3 = ref_pool(a, 3, 2, 0, "AVE")
  assert pool3.shape == (2, 64, 4, 4)  # ceil rounding: 8 -> 4, not 3
  ip1 = ref_ip(pool3, w["ip1"][0].reshape(10, 1024), w["ip1"][1].ravel())
  acts = model.activations({"rgb": np.moveaxis(x, 1, -1)[:, None].astype(np.float32)},
                           ["norm1", "pool2", "pool3", "logits", "prob"])
  for name, ref in [("norm1", norm1), ("pool2", pool2), ("pool3", pool3), ("logits", ip1)]:
    assert relerr(to_nchw(acts[name]), ref) < 1e-5, name
  np.testing.assert_allclose(acts["prob"].sum(-1), 1.0, rtol=1e-5)


# Layer counts per type (TEST phase) and output shapes, from SOURCES.md.
PROTOTXTS = {
    "tsn_bn_inception_caffe/ucf101/tsn_bn_inception_rgb_deploy.prototxt": dict(
        count=232, types=dict(Convolution=69, BN=69, ReLU=69, Pooling=13, Concat=10,
                              Dropout=1, InnerProduct=1),
        input=(1, 3, 224, 224), shapes={"global_pool": (1, 1024, 1, 1), "fc-action": (1, 101),
                                        "pool1/3x3_s2": (1, 64, 56, 56)}),
    "tsn_bn_inception_caffe/ucf101/tsn_bn_inception_flow_deploy.prototxt": dict(
        count=232, input=(1, 10, 224, 224), shapes={"fc-action": (1, 101)}),
    "tsn_bn_inception_caffe/hmdb51/tsn_bn_inception_rgb_deploy.prototxt": dict(
        count=232, input=(1, 3, 224, 224), shapes={"fc-action": (1, 51)}),
    "tsn_bn_inception_caffe/hmdb51/tsn_bn_inception_flow_deploy.prototxt": dict(
        count=232, input=(1, 10, 224, 224), shapes={"fc-action": (1, 51)}),
    "tsn_inception_v3_kinetics_caffe/inception_v3_flow_deploy.prototxt": dict(
        count=309, types=dict(Convolution=94, BN=94, ReLU=94, Pooling=14, Concat=11,
                              Dropout=1, InnerProduct=1),
        input=(1, 10, 299, 299), shapes={"top_cls_pool": (1, 2048, 1, 1), "fc_action": (1, 400)}),
    "inception_v3_caffe_soeaver/deploy_inception-v3.prototxt": dict(
        count=404, types=dict(Convolution=94, BatchNorm=94, Scale=94, ReLU=94, Pooling=14,
                              Concat=11, Dropout=1, InnerProduct=1, Softmax=1),
        input=(1, 3, 299, 299), logits=(1, 1000)),
    "cuhk_vgg16_two_stream_caffe/cuhk_action_spatial_vgg_16_deploy.prototxt": dict(
        types=dict(Convolution=13, Pooling=5, InnerProduct=3),
        input=(1, 3, 224, 224), shapes={"pool5": (1, 512, 7, 7), "fc8-1": (1, 101)}),
    "cuhk_vgg16_two_stream_caffe/cuhk_action_temporal_vgg_16_flow_deploy.prototxt": dict(
        types=dict(Convolution=13, Pooling=5, InnerProduct=3),
        input=(1, 20, 224, 224), shapes={"pool5": (1, 512, 7, 7), "fc8": (1, 101)}),
    "cuhk_vgg16_two_stream_caffe/vgg_16_flow_train_val_fast.prototxt": dict(
        types=dict(VideoData=1, Gather=1, Convolution=13, InnerProduct=3),
        input=(1, 20, 224, 224), shapes={"fc8": (1, 101)}),
    "cuhk_vgg16_two_stream_caffe/vgg_16_rgb_train_val_fast.prototxt": dict(
        types=dict(VideoData=1, Gather=1, Convolution=13),
        input=(1, 3, 224, 224), shapes={"fc8-1": (1, 101)}),
    "c3d_caffe/v1.0/c3d_sport1m_feature_extractor_frm.prototxt": dict(
        count=31, types=dict(VideoData=1, Convolution3D=8, Pooling3D=5, InnerProduct=3),
        input=(1, 3, 16, 112, 112),
        shapes={"pool1": (1, 64, 16, 56, 56), "pool5": (1, 512, 1, 4, 4),
                "fc6-1": (1, 4096), "fc8-1": (1, 487)}),
    "c3d_caffe/v1.0/c3d_ucf101_finetuning_test.prototxt": dict(
        count=31, input=(1, 3, 16, 112, 112), shapes={"pool5": (1, 512, 1, 4, 4),
                                                      "fc8": (1, 101)}),
    "c3d_caffe/v1.1/c3d_resnet18_ucf101_feature_extraction.prototxt": dict(
        types=dict(Convolution3D=21, BatchNorm=21, Scale=21, Eltwise=8),
        input=(1, 3, 8, 112, 112), shapes={"res5b": (1, 512, 1, 7, 7), "pool5": (1, 512, 1, 1, 1)}),
    "c3d_caffe/v1.1/train_simple.prototxt": dict(
        stages=("test-on-val",), types=dict(VideoData=1, Convolution3D=5, Pooling3D=5),
        input=(1, 3, 16, 112, 112), shapes={"pool5": (1, 256, 1, 4, 4), "fc6": (1, 2048),
                                            "fc8": (1, 101)}),
    "cifar10_full_caffe_v1_everpeace/cifar10_full.prototxt": dict(
        count=13, input=(1, 3, 32, 32), shapes={"pool1": (1, 32, 16, 16), "pool3": (1, 64, 4, 4)}),
    "lenet_mnist_caffe_ahmdtaha/mnist_deploy.prototxt": dict(
        count=9, input=(1, 1, 28, 28), shapes={"pool2": (1, 50, 4, 4), "loss": (1, 10)}),
    "lenet_mnist_caffe_jachinshen/lenet_deploy.prototxt": dict(
        count=9, input=(1, 1, 28, 28), shapes={"ip1": (1, 500)}),
    "lenet_mnist_caffe_v1_everpeace/lenet.prototxt": dict(
        count=8, input=(1, 1, 28, 28), shapes={"conv1": (1, 20, 24, 24), "pool1": (1, 20, 12, 12),
                                               "conv2": (1, 50, 8, 8), "ip1": (1, 500)}),
    "tsn_bn_inception_caffe/ucf101/tsn_bn_inception_rgb_train_val.prototxt": dict(
        last_layer="fc-action", types=dict(VideoData=1, Reshape=1, Convolution=69, BN=69),
        input=(1, 3, 224, 224), shapes={"fc-action": (1, 101)}),
    "tsn_bn_inception_caffe/ucf101/tsn_bn_inception_flow_train_val.prototxt": dict(
        last_layer="fc-action", input=(1, 10, 224, 224), shapes={"fc-action": (1, 101)}),
}


def test_every_fixture_prototxt_is_covered(fixtures_dir):
  found = {os.path.relpath(p, fixtures_dir)
           for p in glob.glob(str(fixtures_dir / "**/*.prototxt"), recursive=True)}
  assert found == set(PROTOTXTS)


@pytest.mark.parametrize("rel", sorted(PROTOTXTS))
def test_fixture_prototxt_graph(fixtures_dir, rel):
  want = PROTOTXTS[rel]
  g = caffe.build(str(fixtures_dir / rel), stages=want.get("stages", ()),
                  last_layer=want.get("last_layer"))
  counts = collections.Counter(t for _, t in g.layer_types)
  if "count" in want:
    assert len(g.layer_types) == want["count"]
  for t, n in want.get("types", {}).items():
    assert counts[t] == n, t
  assert g.input_shape == want["input"]
  for name, shape in want.get("shapes", {}).items():
    assert g.shape(name) == shape, name
  if "logits" in want:
    assert g.shapes[g.logits] == want["logits"]
  # The Flax module computes exactly the shapes the graph inferred.
  module = caffe.CaffeNet(g)
  x = jax.ShapeDtypeStruct(caffe._input_shape_ours(g), jnp.float32)
  variables = jax.eval_shape(module.init, jax.random.PRNGKey(0), x)
  logits, feats = jax.eval_shape(module.apply, variables, x)
  assert to_caffe_shape(logits.shape) == g.shapes[g.logits]
  for name, v in g.taps:
    assert to_caffe_shape(feats[name].shape) == g.shapes[v], name


def to_caffe_shape(s):
  return tuple(s) if len(s) <= 2 else (s[0], s[-1]) + tuple(s[1:-1])


def test_segment_consensus_reshape_is_refused_clearly(fixtures_dir):
  rel = "tsn_bn_inception_caffe/ucf101/tsn_bn_inception_flow_train_val.prototxt"
  with pytest.raises(caffe.CaffeError, match="reshape_fc.*batch axis.*last_layer"):
    caffe.build(str(fixtures_dir / rel))


def test_staged_data_layers_need_a_stage(fixtures_dir):
  with pytest.raises(caffe.CaffeError, match="stages.*test-on-val"):
    caffe.build(str(fixtures_dir / "c3d_caffe/v1.1/train_simple.prototxt"))


def test_truncated_and_corrupt_caffemodel_name_file_and_byte(fixtures_dir, tmp_path):
  data = (fixtures_dir / LENETS[0][1]).read_bytes()
  path = write(tmp_path, "cut.caffemodel", data[:1_000_000])
  with pytest.raises(caffe.CaffeError, match=r"cut\.caffemodel: truncated .* at byte \d+"):
    caffe.read_caffemodel(path)
  bad = bytearray(data)
  bad[0] = (bad[0] & ~7) | 7  # wire type 7 does not exist
  path = write(tmp_path, "bad.caffemodel", bytes(bad))
  with pytest.raises(caffe.CaffeError, match=r"bad\.caffemodel: invalid wire type 7 .* byte 0"):
    caffe.read_caffemodel(path)
  with pytest.raises(caffe.CaffeError, match="missing.caffemodel: cannot read"):
    caffe.read_caffemodel(str(tmp_path / "missing.caffemodel"))


def test_wrong_prototxt_for_the_weights_is_one_clear_error(fixtures_dir, tmp_path):
  text = (fixtures_dir / LENETS[0][0]).read_text()
  text = text.replace("num_output: 500", "num_output: 400").replace('"ip2"', '"ipX"')
  path = write(tmp_path, "wrong.prototxt", text)
  with pytest.raises(common.ConversionError) as e:
    caffe.load(path, str(fixtures_dir / LENETS[0][1]))
  msg = str(e.value)
  assert "\n" not in msg
  assert "missing 1: ipX" in msg and "unexpected 1: ip2" in msg
  assert "ip1 weights (500, 800) vs expected (400, 800)" in msg


# ---------------------------------------------------------------------------
# Synthetic nets: every supported layer, folding and both blob layouts.

SYNTH = """
name: "synth"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 4 dim: 9 dim: 9 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param { num_output: 4 kernel_size: 3 pad: 1 stride: 2 bias_term: false } }
layer { name: "bn1" type: "BatchNorm" bottom: "conv1" top: "conv1"
  batch_norm_param { use_global_stats: true eps: 0.001 } }
layer { name: "sc1" type: "Scale" bottom: "conv1" top: "conv1" scale_param { bias_term: true } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "conv2/g" type: "Convolution" bottom: "conv1" top: "conv2"
  convolution_param { num_output: 4 kernel_h: 1 kernel_w: 3 pad_h: 0 pad_w: 1 group: 2 } }
layer { name: "bn2" type: "BN" bottom: "conv2" top: "bn2" bn_param { frozen: true unknown_field: 3 } }
layer { name: "pool_a" type: "Pooling" bottom: "bn2" top: "pool_a"
  pooling_param { pool: AVE kernel_size: 3 stride: 2 pad: 1 } }
layer { name: "pool_b" type: "Pooling" bottom: "conv1" top: "pool_b"
  pooling_param { pool: MAX kernel_size: 3 stride: 2 pad: 1 } }
layer { name: "sc_b" type: "Scale" bottom: "pool_b" top: "pool_b" scale_param { bias_term: true } }
layer { name: "sum" type: "Eltwise" bottom: "pool_a" bottom: "pool_b" top: "sum"
  eltwise_param { operation: SUM coeff: 1 coeff: -0.5 } }
layer { name: "cat" type: "Concat" bottom: "sum" bottom: "pool_a" top: "cat" }
layer { name: "norm" type: "LRN" bottom: "cat" top: "norm"
  lrn_param { local_size: 3 alpha: 0.5 beta: 0.75 k: 2 } }
layer { name: "drop" type: "Dropout" bottom: "norm" top: "norm" dropout_param { dropout_ratio: 0.5 } }
layer { name: "fc" type: "InnerProduct" bottom: "norm" top: "fc" inner_product_param { num_output: 5 } }
layer { name: "prob" type: "Softmax" bottom: "fc" top: "prob" }
"""


def synth_weights(rs):
  w = dict(
      conv1=[rs.randn(4, 4, 3, 3)],
      bn1=[rs.randn(4) * 2, rs.uniform(1, 3, 4) * 2, np.array([2.0])],
      sc1=[rs.randn(4), rs.randn(4)],
      **{"conv2/g": [rs.randn(4, 2, 1, 3), rs.randn(4)]},
      bn2=[rs.randn(1, 4), rs.randn(1, 4), rs.randn(1, 4), rs.uniform(0.5, 2, (1, 4))],
      sc_b=[rs.randn(4), rs.randn(4)],
      fc=[rs.randn(5, 8 * 3 * 3), rs.randn(5)],
  )
  return w


def synth_reference(x, w):
  c = ref_conv(x, w["conv1"][0], None, 1, 2)
  mean, var = w["bn1"][0] / 2.0, w["bn1"][1] / 2.0
  c = (c - mean[:, None, None]) / np.sqrt(var[:, None, None] + 1e-3)
  c = c * w["sc1"][0][:, None, None] + w["sc1"][1][:, None, None]
  conv1 = np.maximum(c, 0)
  c2 = ref_conv(conv1, w["conv2/g"][0], w["conv2/g"][1], (0, 1), 1, group=2)
  s, b, m, v = (a.ravel()[:, None, None] for a in w["bn2"])
  bn2 = s * (c2 - m) / np.sqrt(v + 1e-5) + b
  pool_a = ref_pool(bn2, 3, 2, 1, "AVE")
  pool_b = ref_pool(conv1, 3, 2, 1, "MAX")
  pool_b = pool_b * w["sc_b"][0][:, None, None] + w["sc_b"][1][:, None, None]
  cat = np.concatenate([pool_a - 0.5 * pool_b, pool_a], axis=1)
  norm = ref_lrn_across(cat, 3, 0.5, 0.75, k=2.0)
  fc = ref_ip(norm, w["fc"][0], w["fc"][1])
  return dict(relu1=conv1, bn2=bn2, pool_a=pool_a, sc_b=pool_b, cat=cat, norm=norm, logits=fc)


@pytest.mark.parametrize("v1", [False, True], ids=["layer", "v1-layers"])
def test_synthetic_net_matches_reference_with_folding(tmp_path, v1):
  rs = np.random.RandomState(1)
  w = synth_weights(rs)
  model_path = write(tmp_path, "synth.caffemodel", caffemodel_bytes(
      [("data", 0 if v1 else "Input", [])] +
      [(n, 4 if v1 else "X", blobs) for n, blobs in w.items()], v1=v1))
  proto = write(tmp_path, "synth.prototxt", SYNTH)
  model = caffe.load(proto, model_path)
  g = caffe.build(proto)
  kinds = [op.kind for op in g.ops]
  # BatchNorm+Scale fold into conv1, BN into conv2; the Scale after a pooling stays.
  assert kinds.count("affine") == 1 and len(g.ops) == 16 - 1 - 3
  assert set(model.variables["params"]) == {"conv1", "conv2_g", "sc_b", "fc"}
  x = rs.randn(2, 4, 9, 9)
  ref = synth_reference(x, w)
  acts = model.activations({"input": np.moveaxis(x, 1, -1)[:, None].astype(np.float32)},
                           list(ref) + ["bn1", "sc1", "conv2/g", "prob"])
  for name, r in ref.items():
    assert relerr(to_nchw(acts[name]), r) < 1e-5, name
  # A folded conv and its BN/Scale layers tap the same (normalised) output.
  np.testing.assert_array_equal(acts["bn1"], acts["sc1"])
  np.testing.assert_array_equal(acts["conv2/g"], acts["bn2"])


def test_missing_unexpected_and_blob_count_are_reported_together(tmp_path):
  rs = np.random.RandomState(0)
  w = synth_weights(rs)
  w["extra"] = [rs.randn(3)]
  del w["sc_b"]
  w["bn1"] = w["bn1"][:2]
  path = write(tmp_path, "s.caffemodel", caffemodel_bytes([(n, "X", b) for n, b in w.items()]))
  with pytest.raises(common.ConversionError, match=(
      r"s\.caffemodel: .*missing 1: sc_b; unexpected 1: extra; "
      r"shape mismatches: bn1 has 2 blobs, BatchNorm expects 3")):
    caffe.load(write(tmp_path, "s.prototxt", SYNTH), path)


C3D_V10 = """
name: "c3d_tiny"
layers { name: "data" type: VIDEO_DATA top: "data" top: "label"
  image_data_param { source: "x.txt" batch_size: 2 crop_size: 6 new_length: 4 } }
layers { name: "conv1a" type: CONVOLUTION3D bottom: "data" top: "conv1a"
  convolution_param { num_output: 3 kernel_size: 3 kernel_depth: 3 pad: 1 temporal_pad: 1 } }
layers { name: "relu1a" type: RELU bottom: "conv1a" top: "conv1a" }
layers { name: "pool1" type: POOLING3D bottom: "conv1a" top: "pool1"
  pooling_param { pool: MAX kernel_size: 2 kernel_depth: 2 stride: 2 temporal_stride: 2 } }
layers { name: "pool2" type: POOLING3D bottom: "pool1" top: "pool2"
  pooling_param { pool: AVE kernel_size: 2 kernel_depth: 1 stride: 2 temporal_stride: 1 } }
layers { name: "fc8" type: INNER_PRODUCT bottom: "pool2" top: "fc8" inner_product_param { num_output: 4 } }
layers { name: "prob" type: SOFTMAX bottom: "fc8" top: "prob" }
layers { name: "accuracy" type: ACCURACY bottom: "prob" bottom: "label" top: "accuracy" }
"""


def test_c3d_v10_blob_layout_and_3d_layers(tmp_path):
  rs = np.random.RandomState(2)
  w = {"conv1a": [rs.randn(3, 3, 3, 3, 3), rs.randn(3)], "fc8": [rs.randn(4, 3 * 2 * 2 * 2), rs.randn(4)]}
  path = write(tmp_path, "c3d.caffemodel", caffemodel_bytes(
      [(n, 30, b) for n, b in w.items()], v1=True, layout="c3d"))
  blobs = caffe.read_caffemodel(path)
  assert blobs["conv1a"].blobs[0].shape == (3, 3, 3, 3, 3)
  assert blobs["fc8"].blobs[0].shape == (1, 1, 1, 4, 24)
  model = caffe.load(write(tmp_path, "c3d.prototxt", C3D_V10), path)
  assert model.spec.streams["rgb"].shape == (4, 6, 6, 3)
  x = rs.randn(2, 3, 4, 6, 6)  # N, C, T, H, W
  a = np.maximum(ref_conv(x, w["conv1a"][0], w["conv1a"][1], 1, 1), 0)
  pool1 = ref_pool(a, (2, 2, 2), (2, 2, 2), 0, "MAX")
  pool2 = ref_pool(pool1, (1, 2, 2), (1, 2, 2), 0, "AVE")
  fc8 = ref_ip(pool2, w["fc8"][0], w["fc8"][1])
  acts = model.activations({"rgb": np.moveaxis(x, 1, -1).astype(np.float32)},
                           ["pool1", "pool2", "logits"])
  assert relerr(to_nchw(acts["pool1"]), pool1) < 1e-5
  assert relerr(to_nchw(acts["pool2"]), pool2) < 1e-5
  assert relerr(acts["logits"], fc8) < 1e-5


FLOW = """
input: "data" input_dim: 1 input_dim: 4 input_dim: 5 input_dim: 5
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param { num_output: 2 kernel_size: 3 } }
"""


def test_flow_stream_interleaves_frames(tmp_path):
  proto = write(tmp_path, "flow.prototxt", FLOW)
  flow = caffe.load(proto, stream="flow", seed=3)
  plain = caffe.load(proto, seed=3)
  assert flow.spec.streams["flow"].shape == (2, 5, 5, 2)
  assert plain.spec.streams["input"].shape == (1, 5, 5, 4)
  f = np.random.RandomState(0).randn(1, 2, 5, 5, 2).astype(np.float32)  # (N, k, H, W, xy)
  stacked = np.stack([f[:, 0, ..., 0], f[:, 0, ..., 1], f[:, 1, ..., 0], f[:, 1, ..., 1]], -1)
  np.testing.assert_allclose(flow({"flow": f}), plain({"input": stacked[:, None]}), rtol=1e-6)


def test_lenient_prototxt_reader():
  msg = prototxt.parse("""
    # comment
    name: 'a' "b"  layer: < type: CONV x: [1, .5, -2e-1] > layer { inner { v: inf } }
    flag: true; other: 0x10,
  """)
  assert msg.get("name") == "ab"
  first, second = msg.all("layer")
  assert first.get("type") == "CONV" and isinstance(first.get("type"), prototxt.Ident)
  assert first.all("x") == [1, 0.5, -0.2]
  assert second.msg("inner").get("v") == float("inf")
  assert msg.get("flag") == "true" and msg.get("other") == 16
  with pytest.raises(prototxt.PrototxtError, match=r"t\.prototxt:2:.*file ends"):
    prototxt.parse("layer {\n  name: 'x'\n", "t.prototxt")
  with pytest.raises(prototxt.PrototxtError, match=r"t\.prototxt:1:14: expected ':' or '\{' after field 'name'"):
    prototxt.parse("layer { name 'x' }", "t.prototxt")


def test_unsupported_layer_names_itself(tmp_path):
  proto = write(tmp_path, "u.prototxt", FLOW + 'layer { name: "weird" type: "Crop" bottom: "conv1" top: "c" }')
  with pytest.raises(caffe.CaffeError, match="layer 'weird' \\(Crop\\): unsupported layer type"):
    caffe.build(proto)


def test_wire_reader_reports_field_path(tmp_path):
  data = _field(100, _string(1, "conv1") + _field(7, _field(5, b"\x00" * 7)))
  path = write(tmp_path, "odd.caffemodel", data)
  with pytest.raises(caffe.CaffeError, match=(
      r"odd\.caffemodel: at byte \d+ \(NetParameter\.layer\[0\]\.blobs\[0\]\.data\): "
      r"packed float32 array of 7 bytes")):
    caffe.read_caffemodel(path)


# ---------------------------------------------------------------------------
# Saving: the generic command line, and Caffe nets into zoo architectures.


def test_cli_writes_weights_that_load_back(fixtures_dir, tmp_path):
  from stviz_jax.models import checkpoint
  proto, weights = (str(fixtures_dir / p) for p in LENETS[2])
  out = str(tmp_path / "lenet")
  assert caffe.main([out, "--net", proto, weights]) == 0
  _, meta = checkpoint.restore(out)
  assert meta["architecture"] == "caffe" and meta["source_sha256"] == checkpoint.sha256(weights)
  model = caffe.load_converted(out)
  images, labels = mnist_samples(fixtures_dir)
  logits = model({"input": images[:, None, :, :, None]})
  np.testing.assert_array_equal(np.argmax(logits, -1), labels)
  # A failing conversion leaves nothing behind.
  assert caffe.main([str(tmp_path / "bad"), "--net", proto, LENETS[0][0]]) == 2  # bad input
  assert not (tmp_path / "bad").exists()


def narrowed(text, classes=10):
  """A VGG-16 prototxt at 1/16 width (the zoo's width=1/16), `classes` outputs."""
  narrow = {4096: 256, 512: 32, 256: 16, 128: 8, 64: 4, 101: classes}
  return re.sub(r"num_output: (\d+)", lambda m: f"num_output: {narrow[int(m.group(1))]}", text)


def random_caffemodel(proto_path, seed):
  g = caffe.build(proto_path)
  rs = np.random.RandomState(seed)
  layers = []
  for op in g.ops:
    a = dict(op.attrs)
    if op.kind == "conv":
      shape = (a["cout"], a["cin"] // a["group"]) + tuple(a["kernel"])
    elif op.kind == "dense":
      shape = (a["cout"], int(np.prod(a["cin_shape"])))
    else:
      continue
    fan_in = np.prod(shape[1:])
    layers.append((op.name, "X", [rs.randn(*shape) * np.sqrt(2 / fan_in), rs.randn(shape[0]) * 0.1]))
  return caffemodel_bytes(layers)


def test_cuhk_two_stream_caffe_into_zoo_vgg16_two_stream(fixtures_dir, tmp_path):
  """The zoo's late-fusion VGG-16 filled from both CUHK Caffe nets equals the
  Caffe nets run directly (RGB in, BGR inside; flow (10, H, W, 2) interleaved)."""
  from stviz_jax.models import registry
  d = fixtures_dir / "cuhk_vgg16_two_stream_caffe"
  parts = []
  for tower, name in (("rgb", "cuhk_action_spatial_vgg_16_deploy"),
                      ("flow", "cuhk_action_temporal_vgg_16_flow_deploy")):
    proto = write(tmp_path, name + ".prototxt", narrowed((d / (name + ".prototxt")).read_text()))
    parts.append((tower, proto, write(tmp_path, name + ".caffemodel",
                                      random_caffemodel(proto, len(parts)))))
  target = registry.load("vgg16_two_stream", width=1 / 16, num_classes=10)
  zoo, _ = caffe.to_zoo("vgg16_two_stream", parts, target=target, width=1 / 16, num_classes=10)
  rgb_net = caffe.load(parts[0][1], parts[0][2])
  flow_net = caffe.load(parts[1][1], parts[1][2], stream="flow")
  rs = np.random.RandomState(0)
  rgb = rs.uniform(-100, 100, (1, 1, 224, 224, 3)).astype(np.float32)
  flow = rs.uniform(-20, 20, (1, 10, 224, 224, 2)).astype(np.float32)
  z = zoo.activations({"rgb": rgb, "flow": flow},
                      ["rgb/conv3_3", "rgb/fc8-1", "flow/pool5", "flow/fc8", "logits"])
  r = rgb_net.activations({"rgb": rgb[..., ::-1]}, ["relu3_3", "fc8-1"])
  f = flow_net.activations({"flow": flow}, ["pool5", "fc8"])
  assert relerr(np.asarray(z["rgb/conv3_3"]).reshape(r["relu3_3"].shape), r["relu3_3"]) < 1e-5
  assert relerr(z["rgb/fc8-1"], r["fc8-1"]) < 1e-5
  assert relerr(np.asarray(z["flow/pool5"]).reshape(f["pool5"].shape), f["pool5"]) < 1e-5
  assert relerr(z["logits"], np.asarray(r["fc8-1"]) + np.asarray(f["fc8"])) < 1e-5
  # Only one tower given: the other's parameters are reported missing.
  with pytest.raises(common.ConversionError, match=r"missing 32: params/flow/conv1_1/bias"):
    caffe.to_zoo("vgg16_two_stream", parts[:1], target=target)


def test_c3d_v10_release_into_zoo_c3d(fixtures_dir, tmp_path):
  """The C3D v1.0 Sports-1M prototxt (narrowed to the zoo's width=1/16) with a
  C3D-v1.0-format caffemodel fills the zoo's `c3d`: same logits and pool5 as
  the Caffe graph run directly (RGB in, BGR inside)."""
  from stviz_jax.models import registry
  text = (fixtures_dir / "c3d_caffe/v1.0/c3d_sport1m_feature_extractor_frm.prototxt").read_text()
  narrow = {4096: 256, 512: 32, 256: 16, 128: 8, 64: 4, 487: 10}
  text = re.sub(r"num_output: (\d+)", lambda m: f"num_output: {narrow[int(m.group(1))]}", text)
  proto = write(tmp_path, "c3d.prototxt", text)
  g = caffe.build(proto)
  rs = np.random.RandomState(0)
  layers = []
  for op in g.ops:
    a = dict(op.attrs)
    shape = ((a["cout"], a["cin"]) + tuple(a["kernel"]) if op.kind == "conv"
             else (a["cout"], int(np.prod(a["cin_shape"]))) if op.kind == "dense" else None)
    if shape:
      layers.append((op.name, 30, [rs.randn(*shape) * np.sqrt(2 / np.prod(shape[1:])),
                                   0.1 * rs.randn(shape[0])]))
  weights = write(tmp_path, "c3d.caffemodel", caffemodel_bytes(layers, v1=True, layout="c3d"))
  kw = dict(width=1 / 16, num_classes=10)
  zoo, _ = caffe.to_zoo("c3d", [("", proto, weights)], target=registry.load("c3d", **kw), **kw)
  direct = caffe.load(proto, weights)
  clip = rs.uniform(-100, 100, (1, 16, 112, 112, 3)).astype(np.float32)
  z = zoo.activations({"rgb": clip}, ["pool5", "fc7-1", "logits"])
  d = direct.activations({"rgb": clip[..., ::-1]}, ["pool5", "relu7", "logits"])
  assert relerr(np.asarray(z["pool5"]).reshape(d["pool5"].shape), d["pool5"]) < 1e-5
  assert relerr(z["fc7-1"], d["relu7"]) < 1e-5  # the zoo taps fc7-1 after its ReLU
  assert relerr(z["logits"], d["logits"]) < 1e-5


@pytest.mark.parametrize("arch,rel,tower,tap,direct_tap", [
    ("tsn_bn_inception", "tsn_bn_inception_caffe/ucf101/tsn_bn_inception_flow_deploy.prototxt",
     "flow", "inception_4b/double_3x3_2", "inception_4b/relu_double_3x3_2"),
    ("tsn_inception_v3", "tsn_inception_v3_kinetics_caffe/inception_v3_flow_deploy.prototxt",
     "flow", "mixed_4_tower_1_conv_1", "mixed_4_tower_1_conv_1"),
], ids=["bn_inception", "inception_v3"])
def test_tsn_caffe_releases_into_zoo(fixtures_dir, tmp_path, arch, rel, tower, tap, direct_tap):
  """The TSN flow deploy prototxts (narrowed to width 1/16, random BN statistics)
  fill the zoo's TSN models by Caffe layer name; BN is folded on the way."""
  from stviz_jax.models import registry
  text = (fixtures_dir / rel).read_text()
  text = re.sub(r"num_output: (\d+)", lambda m: "num_output: %d" % (
      int(m.group(1)) // 16 if int(m.group(1)) not in (101, 400) else 10), text)
  proto = write(tmp_path, "net.prototxt", text)
  g = caffe.build(proto)
  rs = np.random.RandomState(0)
  layers = []
  for op in g.ops:
    a = dict(op.attrs)
    if op.kind == "conv":
      shape = (a["cout"], a["cin"]) + tuple(a["kernel"])
    elif op.kind == "dense":
      shape = (a["cout"], int(np.prod(a["cin_shape"])))
    else:
      continue
    blobs = [rs.randn(*shape) * np.sqrt(2 / np.prod(shape[1:]))]
    if a["bias"]:
      blobs.append(0.1 * rs.randn(shape[0]))
    layers.append((op.name, "X", blobs))
    for bn, _ in dict(op.attrs).get("folded", ()):
      c = shape[0]
      layers.append((bn, "BN", [rs.uniform(0.5, 1.5, (1, c)), 0.1 * rs.randn(1, c),
                                0.1 * rs.randn(1, c), rs.uniform(0.5, 2, (1, c))]))
  weights = write(tmp_path, "net.caffemodel", caffemodel_bytes(layers))
  kw = dict(width=1 / 16, num_classes=10, streams=(tower,))
  zoo, _ = caffe.to_zoo(arch, [(tower, proto, weights)], target=registry.load(arch, **kw), **kw)
  direct = caffe.load(proto, weights, stream="flow")
  x = rs.uniform(-20, 20, (1,) + zoo.spec.streams["flow"].shape).astype(np.float32)
  z = zoo.activations({"flow": x}, [f"flow/{tap}", "logits"])
  d = direct.activations({"flow": x}, [direct_tap, "logits"])
  assert relerr(np.asarray(z[f"flow/{tap}"]).reshape(d[direct_tap].shape), d[direct_tap]) < 1e-4
  weight = 1.5  # TSN's flow weight in the zoo's late fusion
  assert relerr(np.asarray(z["logits"]) / weight, d["logits"]) < 1e-4


def test_converted_lenet_is_a_working_stviz_model(fixtures_dir):
  """Measured receptive fields match the Caffe arithmetic, and the visualiser
  raises the chosen digit's score on the converted net."""
  import stviz_jax
  model = caffe.load(*(str(fixtures_dir / p) for p in LENETS[0]), value_range=(0.0, 1.0))
  # conv1 5x5 -> 5; pool 2/2 -> 6, stride 2; conv2 5x5 -> 6 + 4*2 = 14; pool2 -> 16, stride 4.
  assert model.spec.receptive_field("conv2") == (14, 2)
  assert model.spec.receptive_field("pool2") == (16, 4)
  config = stviz_jax.default_config()
  config.steps = 60
  config.jitter = False  # plain gradient ascent within the bound B
  config.regularizer.energy_weight = config.regularizer.tv_weight = 0.0
  result = stviz_jax.visualize(model, "ip2", [3, 7], config, seed=0)
  x = result.inputs["input"]
  assert x.shape == (2, 1, 28, 28, 1)
  act = result.history["activation"]
  assert np.all(act[:, -1] > 20 * np.abs(act[:, 0]))
  np.testing.assert_array_equal(np.argmax(model({"input": x}), -1), [3, 7])


@pytest.mark.slow  # full-size BN-Inception: a 40 MB caffemodel and checkpoint
def test_cli_into_zoo_loads_with_models_load(fixtures_dir, tmp_path):
  """`python -m converters.caffe --architecture` writes weights that
  `stviz_jax.models.load(name, weights=...)` reads: the real TSN flow deploy
  prototxt at full size, random weights, same logits as the Caffe graph."""
  from stviz_jax import models
  proto = str(fixtures_dir / "tsn_bn_inception_caffe/hmdb51/tsn_bn_inception_flow_deploy.prototxt")
  g = caffe.build(proto)
  rs = np.random.RandomState(0)
  layers = []
  for op in g.ops:
    a = dict(op.attrs)
    if op.kind not in ("conv", "dense"):
      continue
    shape = ((a["cout"], a["cin"]) + tuple(a["kernel"]) if op.kind == "conv"
             else (a["cout"], int(np.prod(a["cin_shape"]))))
    layers.append((op.name, "X", [rs.randn(*shape).astype(np.float32) * np.sqrt(2 / np.prod(shape[1:])),
                                  0.1 * rs.randn(shape[0])]))
    for bn, _ in a.get("folded", ()):
      c = shape[0]
      layers.append((bn, "BN", [rs.uniform(0.5, 1.5, (1, c)), 0.1 * rs.randn(1, c),
                                0.1 * rs.randn(1, c), rs.uniform(0.5, 2, (1, c))]))
  weights = write(tmp_path, "flow.caffemodel", caffemodel_bytes(layers))
  out = str(tmp_path / "tsn")
  assert caffe.main([out, "--architecture", "tsn_bn_inception", "--part", "flow", proto, weights,
                     "--arg", 'streams=["flow"]', "--arg", "num_classes=51"]) == 0
  zoo = models.load("tsn_bn_inception", weights=out, streams=("flow",), num_classes=51)
  direct = caffe.load(proto, weights, stream="flow")
  x = rs.uniform(-20, 20, (1, 5, 224, 224, 2)).astype(np.float32)
  assert relerr(np.asarray(zoo({"flow": x})) / 1.5, direct({"flow": x})) < 1e-4


def test_non_finite_and_huge_weights_warn_per_blob(tmp_path, capsys):
  w = np.ones((2, 3), np.float32)
  w[0, 1] = np.nan
  data = caffemodel_bytes([("ip1", "InnerProduct", [w, np.array([2.5e38, 0], np.float32)]),
                           ("ip2", "InnerProduct", [np.ones((2, 2), np.float32)])])
  caffe.read_caffemodel(write(tmp_path, "bad.caffemodel", data))
  lines = [l for l in capsys.readouterr().err.splitlines() if l.startswith("warning: ")]
  assert len(lines) == 2, lines
  assert "bad.caffemodel: layer 'ip1' blob 0 (shape (2, 3)): 1 NaN/inf value(s)" in lines[0]
  assert "layer 'ip1' blob 1" in lines[1] and "2.5e+38 (> 1e+30)" in lines[1]
