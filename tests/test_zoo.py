"""Model zoo: layers against the original prototxts, native shapes, the paper's
Table 1, Caffe pooling, folded == unfolded batch norm, weights round trip.

Fast tests use narrow (`width`) and small models; full-size forward passes
are marked slow.
"""

import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from stviz_jax import models
from stviz_jax.models import checkpoint, netgraph
from stviz_jax.models.netgraph import Concat, Conv, Dense, Pool
from stviz_jax.models.zoo import bn_inception, c3d, inception_v3, st_resnet50
from stviz_jax.models.zoo import vgg16_fusion

# ----------------------------------------------------------------------------
# A minimal lenient prototxt reader (independent of converters/): enough to
# list layers with their name, type, bottoms, tops and scalar *_param fields.


def _tokens(text):
  text = re.sub(r"#[^\n]*", "", text)
  return re.findall(r'"[^"]*"|[{}:]|[^\s{}:"]+', text)


def _parse(tokens, i=0):
  out = []
  while i < len(tokens):
    if tokens[i] == "}":
      return out, i + 1
    key = tokens[i]
    if tokens[i + 1] == ":":
      value = tokens[i + 2]
      out.append((key, value.strip('"')))
      i += 3
    else:  # key { ... }
      sub, i = _parse(tokens, i + 2)
      out.append((key, sub))
  return out, i


def read_prototxt(path):
  tree, _ = _parse(_tokens(path.read_text()))
  layers = []
  for key, body in tree:
    if key not in ("layer", "layers"):
      continue
    layer = {"bottom": [], "top": [], "param": {}}
    for k, v in body:
      if k in ("bottom", "top"):
        layer[k].append(v)
      elif k in ("name", "type"):
        layer[k] = v
      elif k.endswith("_param") and isinstance(v, list):
        layer["param"].update({kk: vv for kk, vv in v if not isinstance(vv, list)})
    layers.append(layer)
  return layers


def caffe_records(path, global_kernel=None):
  """`{layer name: record}` of the convolutions, pools, concats and FCs.

  Blobs are identified by the layer that produced them, skipping in-place
  and batch-norm layers, so the records compare with ours whatever the blob
  naming (`X_bn` tops in BN-Inception, `X_Conv2D` -> `X` in Inception-v3).
  """
  producer, records, bn_of = {"data": "data"}, {}, {}
  for l in read_prototxt(path):
    t, p = l["type"].upper(), l["param"]
    src = [producer.get(b, b) for b in l["bottom"]]
    if t in ("BN", "BATCHNORM", "SCALE"):
      bn_of[src[0]] = l["name"]
      producer[l["top"][0]] = src[0]
    elif t in ("RELU",):
      records[src[0]]["relu"] = True
      producer[l["top"][0]] = src[0]
    elif t in ("DROPOUT",):
      producer[l["top"][0]] = src[0]
    elif t in ("CONVOLUTION", "CONVOLUTION3D"):
      k = (int(p["kernel_h"]), int(p["kernel_w"])) if "kernel_h" in p else (int(p["kernel_size"]),) * 2
      s = (int(p.get("stride_h", 1)), int(p.get("stride_w", 1))) if "stride_h" in p else (int(p.get("stride", 1)),) * 2
      pad = (int(p["pad_h"]), int(p["pad_w"])) if "pad_h" in p else (int(p.get("pad", 0)),) * 2
      if t == "CONVOLUTION3D":
        k = (int(p["kernel_depth"]),) + k
        s = (int(p.get("temporal_stride", 1)),) + s
        pad = (int(p.get("temporal_pad", 0)),) + pad
      records[l["name"]] = dict(kind="conv", bottom=src[0], features=int(p["num_output"]),
                                kernel=k, stride=s, pad=pad, relu=False,
                                bias=p.get("bias_term", "true") == "true")
      producer[l["top"][0]] = l["name"]
    elif t in ("POOLING", "POOLING3D"):
      k, s, pad = int(p["kernel_size"]), int(p.get("stride", 1)), int(p.get("pad", 0))
      kernel, stride, padding = (k, k), (s, s), (pad, pad)
      if t == "POOLING3D":
        kernel = (int(p["kernel_depth"]),) + kernel
        stride = (int(p["temporal_stride"]),) + stride
        padding = (0,) + padding
      if global_kernel and kernel == (global_kernel,) * 2:
        kernel, stride, padding = "global", None, None
      records[l["name"]] = dict(kind={"MAX": "max", "AVE": "avg"}[p["pool"]],
                                bottom=src[0], kernel=kernel, stride=stride,
                                pad=padding)
      producer[l["top"][0]] = l["name"]
    elif t == "CONCAT":
      records[l["name"]] = dict(kind="concat", bottoms=tuple(src))
      producer[l["top"][0]] = l["name"]
    elif t in ("INNERPRODUCT", "INNER_PRODUCT"):
      records[l["name"]] = dict(kind="fc", bottom=src[0],
                                features=int(p["num_output"]), relu=False)
      producer[l["top"][0]] = l["name"]
  for conv, bn in bn_of.items():
    records[conv]["bn"] = bn
  return records


def our_records(nodes, prefix=""):
  """The same records for our layer graph (names without `prefix`)."""
  strip = lambda n: n[len(prefix):] if n.startswith(prefix) else n
  producer, records = {prefix + "data": "data"}, {}
  for n in nodes:
    name = strip(n.name)
    if isinstance(n, Conv):
      nd = len(n.kernel)
      r = dict(kind="conv", bottom=producer[n.bottom], features=n.features,
               kernel=tuple(n.kernel), stride=tuple(n.stride or (1,) * nd),
               pad=tuple(n.pad or (0,) * nd), relu=n.relu, bias=n.bias)
      if n.bn:
        r["bn"] = strip(n.bn)
    elif isinstance(n, Pool):
      assert n.ceil_mode, f"{n.name}: Caffe pools round up"
      r = dict(kind=n.kind, bottom=producer[n.bottom],
               kernel=tuple(n.kernel) or "global",
               stride=tuple(n.stride or n.kernel) or None,
               pad=tuple(n.pad or (0,) * len(n.kernel)) or None)
    elif isinstance(n, Concat):
      r = dict(kind="concat", bottoms=tuple(producer[b] for b in n.bottoms))
    elif isinstance(n, Dense):
      r = dict(kind="fc", bottom=producer[n.bottom], features=n.features, relu=n.relu)
    else:
      raise AssertionError(f"unexpected layer {n}")
    records[name] = r
    producer[n.top or n.name] = name
  return records


def assert_same_records(ours, caffe):
  assert sorted(ours) == sorted(caffe)
  for name in caffe:
    assert ours[name] == caffe[name], name


@pytest.mark.parametrize("dataset,classes", [("ucf101", 101), ("hmdb51", 51)])
@pytest.mark.parametrize("stream", ["rgb", "flow"])
def test_bn_inception_matches_tsn_deploy_prototxts(fixtures_dir, dataset, classes, stream):
  path = fixtures_dir / "tsn_bn_inception_caffe" / dataset / f"tsn_bn_inception_{stream}_deploy.prototxt"
  caffe = caffe_records(path, global_kernel=7)
  assert sum(r["kind"] == "conv" for r in caffe.values()) == 69
  graph = bn_inception.tsn_bn_inception_graph(num_classes=classes, streams=(stream,))
  assert_same_records(our_records(graph.nodes, f"{stream}/"), caffe)
  # The input: 3 channels, or 5 flow frames x (x, y) = 10 channels.
  dims = [int(x) for x in re.findall(r"input_dim:\s*(\d+)", path.read_text())]
  assert dims[1] == {"rgb": 3, "flow": 10}[stream]
  spec = graph.streams[stream]
  assert spec.channels * (spec.frames if stream == "flow" else 1) == dims[1]


def test_inception_v3_matches_tsn_kinetics_prototxt(fixtures_dir):
  path = fixtures_dir / "tsn_inception_v3_kinetics_caffe" / "inception_v3_flow_deploy.prototxt"
  caffe = caffe_records(path, global_kernel=8)
  assert sum(r["kind"] == "conv" for r in caffe.values()) == 94
  graph = inception_v3.tsn_inception_v3_graph(streams=("flow",))
  ours = our_records(graph.nodes, "flow/")
  assert_same_records(ours, caffe)
  # The paper's factorised filters: 1x7 (height 1, width 7) then 7x1.
  assert ours["mixed_4_tower_1_conv_1_Conv2D"]["kernel"] == (1, 7)
  assert ours["mixed_4_tower_1_conv_2_Conv2D"]["kernel"] == (7, 1)
  assert "flow/mixed_4_tower_1_conv_1" in graph.taps
  assert "flow/mixed_4_tower_2_conv" in graph.taps


@pytest.mark.parametrize("fname,classes,suffix", [
    ("c3d_sport1m_feature_extractor_frm.prototxt", 487, "-1"),
    ("c3d_ucf101_finetuning_test.prototxt", 101, "")])
def test_c3d_matches_prototxts(fixtures_dir, fname, classes, suffix):
  caffe = caffe_records(fixtures_dir / "c3d_caffe" / "v1.0" / fname)
  graph = c3d.c3d_graph(num_classes=classes, fc_suffix=suffix)
  assert_same_records(our_records(graph.nodes), caffe)


@pytest.mark.parametrize("stream,fname", [
    ("rgb", "cuhk_action_spatial_vgg_16_deploy.prototxt"),
    ("flow", "cuhk_action_temporal_vgg_16_flow_deploy.prototxt")])
def test_vgg16_two_stream_matches_cuhk_prototxts(fixtures_dir, stream, fname):
  caffe = caffe_records(fixtures_dir / "cuhk_vgg16_two_stream_caffe" / fname)
  graph = vgg16_fusion.vgg16_two_stream_graph(streams=(stream,))
  assert_same_records(our_records(graph.nodes, f"{stream}/"), caffe)


# ----------------------------------------------------------------------------
# Native-size shapes, from the graphs without computing anything.


def test_vgg16_fusion_native_shapes():
  params, shapes = vgg16_fusion.vgg16_fusion_graph().shapes()
  assert shapes["rgb/conv1_1"] == (5, 224, 224, 64)
  assert shapes["flow/conv5_3"] == (5, 14, 14, 512)
  assert shapes["conv5_fusion"] == (5, 14, 14, 512)
  assert shapes["pool5"] == shapes["flow/pool5"] == (1, 7, 7, 512)
  assert shapes["fc6"] == shapes["fc7"] == (4096,)
  assert shapes["fc8"] == shapes["flow/fc8"] == shapes["logits"] == (101,)
  p = params["params"]
  assert p["conv5_fusion"]["kernel"] == (3, 3, 3, 1024, 512)
  assert p["fc6"]["kernel"] == (7 * 7 * 512, 4096)
  assert p["flow"]["conv1_1"]["kernel"] == (3, 3, 20, 64)  # 10 flow frames x 2
  assert p["rgb"]["conv1_1"]["kernel"] == (3, 3, 3, 64)


def test_st_resnet50_native_shapes_and_temporal_filters():
  params, shapes = st_resnet50.st_resnet50_graph().shapes()
  for tower in ("rgb", "flow"):
    assert shapes[f"{tower}/conv1"] == (5, 112, 112, 64)
    assert shapes[f"{tower}/pool1"] == (5, 56, 56, 64)
    assert shapes[f"{tower}/res2c"] == (5, 56, 56, 256)
    assert shapes[f"{tower}/res3d"] == (5, 28, 28, 512)
    assert shapes[f"{tower}/res4f"] == (5, 14, 14, 1024)
    assert shapes[f"{tower}/res5c"] == (5, 7, 7, 2048)
    assert shapes[f"{tower}/res5c_relu_pool"] == (1, 7, 7, 2048)
    assert shapes[f"{tower}/prediction"] == (101,)
    p = params["params"][tower]
    convs = {k: v["kernel"] for k, v in p.items() if "kernel" in v}
    assert len(convs) == 53 + 1  # 53 convolutions and the classifier
    temporal = {k for k, v in convs.items() if len(v) == 5}
    assert temporal == {f"res{s}b_branch2{b}" for s in "2345" for b in "ac"}
    assert convs["res4b_branch2a"] == (3, 1, 1, 1024, 256)
    assert "bias" in p["conv1"] and "bias" in p["res4b_branch2b"]  # folded
  assert params["params"]["flow"]["conv1"]["kernel"] == (7, 7, 20, 64)


def test_tsn_native_shapes():
  _, bn = bn_inception.tsn_bn_inception_graph().shapes()
  for s in ("rgb", "flow"):
    assert bn[f"{s}/conv1/7x7_s2"] == (1, 112, 112, 64)
    assert bn[f"{s}/pool1/3x3_s2"] == (1, 56, 56, 64)  # ceil rounding
    assert bn[f"{s}/inception_3a/output"] == (1, 28, 28, 256)
    assert bn[f"{s}/inception_3c/output"] == (1, 14, 14, 576)
    assert bn[f"{s}/inception_4e/output"] == (1, 7, 7, 1056)
    assert bn[f"{s}/inception_5b/output"] == (1, 7, 7, 1024)
    assert bn[f"{s}/fc-action"] == (101,)
  _, v3 = inception_v3.tsn_inception_v3_graph().shapes()
  for s in ("rgb", "flow"):
    assert v3[f"{s}/conv"] == (1, 149, 149, 32)
    assert v3[f"{s}/pool_1"] == (1, 35, 35, 192)
    assert v3[f"{s}/mixed_2_join"] == (1, 35, 35, 288)
    assert v3[f"{s}/mixed_4_tower_1_conv_1"] == (1, 17, 17, 128)
    assert v3[f"{s}/mixed_7_join"] == (1, 17, 17, 768)
    assert v3[f"{s}/mixed_10_join"] == (1, 8, 8, 2048)
    assert v3[f"{s}/fc_action"] == (400,)
  with pytest.raises(ValueError, match="nearest valid sizes"):
    inception_v3.tsn_inception_v3_graph(size=100)


def test_c3d_native_shapes():
  params, shapes = c3d.c3d_graph().shapes()
  assert shapes["pool1"] == (16, 56, 56, 64)  # no temporal pooling
  assert shapes["pool5"] == (1, 4, 4, 512)  # ceil rounding: 7 -> 4
  assert params["params"]["fc6-1"]["kernel"] == (8192, 4096)
  assert params["params"]["conv1a"]["kernel"] == (3, 3, 3, 3, 64)
  assert shapes["logits"] == (487,)


# ----------------------------------------------------------------------------
# Receptive fields: the paper's Table 1 (VGG-16 at 224 x 224 x 3).

TABLE1 = {  # layer: (RF size, feature stride, output size)
    "conv1_1": (3, 1, 224), "conv1_2": (5, 1, 224), "pool1": (6, 2, 112),
    "conv2_1": (10, 2, 112), "conv2_2": (14, 2, 112), "pool2": (16, 4, 56),
    "conv3_1": (24, 4, 56), "conv3_2": (32, 4, 56), "conv3_3": (40, 4, 56),
    "pool3": (44, 8, 28), "conv4_1": (60, 8, 28), "conv4_2": (76, 8, 28),
    "conv4_3": (92, 8, 28), "pool4": (100, 16, 14), "conv5_1": (132, 16, 14),
    "conv5_2": (164, 16, 14), "conv5_3": (196, 16, 14), "pool5": (212, 32, 7),
}


@pytest.fixture(scope="module")
def vgg16_rgb():
  # Receptive fields do not depend on channel widths: 1/16 keeps it cheap.
  return models.load("vgg16_two_stream", streams=("rgb",), width=1 / 16)


def test_vgg16_table1_output_sizes(vgg16_rgb):
  for layer, (_, _, size) in TABLE1.items():
    assert vgg16_rgb.spec.feature_shape(f"rgb/{layer}")[1:3] == (size, size), layer


def test_ucf101_heads_have_class_names(vgg16_rgb, fixtures_dir):
  rows = (fixtures_dir / "twostreamfusion_feichtenhofer" / "classInd.txt").read_text().split()
  assert vgg16_rgb.labels == tuple(rows[1::2])
  # The classes of the paper's Fig. 1 and Fig. 4 units.
  assert vgg16_rgb.class_index("Billiards") == 11
  assert vgg16_rgb.class_index("PlayingTabla") == 65


@pytest.mark.parametrize("layer", ["conv1_2", "pool2", "conv3_3"])
def test_vgg16_table1_receptive_fields(vgg16_rgb, layer):
  rf, stride, _ = TABLE1[layer]
  assert vgg16_rgb.spec.receptive_field(f"rgb/{layer}") == (rf, stride)


@pytest.mark.slow
def test_vgg16_table1_all_layers(vgg16_rgb):
  got = {l: vgg16_rgb.spec.receptive_field(f"rgb/{l}") for l in TABLE1}
  assert got == {l: (rf, s) for l, (rf, s, _) in TABLE1.items()}


@pytest.mark.slow
def test_inception_v3_asymmetric_receptive_fields():
  # At the 17x17 stage (stride 16) a 7x1 kernel widens the field by 6 * 16 =
  # 96 pixels in height only; the following 1x7 catches up in width.
  m = models.load("tsn_inception_v3", streams=("flow",), width=1 / 16)
  base = m.spec.geometry("flow/mixed_4_tower_conv").size
  tall = m.spec.geometry("flow/mixed_4_tower_conv_1").size
  square = m.spec.geometry("flow/mixed_4_tower_conv_2").size
  assert base[1] == base[2]
  assert (tall[1] - base[1], tall[2] - base[2]) == (96, 0)
  assert square[1] == square[2] == tall[1]


# ----------------------------------------------------------------------------
# Layer semantics.


def _caffe_pool_reference(x, k, s, p, kind):
  """Caffe's pooling loops (pooling_layer.cpp) on a 2-D array."""
  h, w = x.shape
  oh = int(math.ceil((h + 2 * p - k) / s)) + 1
  ow = int(math.ceil((w + 2 * p - k) / s)) + 1
  if p and (oh - 1) * s >= h + p:
    oh -= 1
  if p and (ow - 1) * s >= w + p:
    ow -= 1
  out = np.zeros((oh, ow), np.float32)
  for i in range(oh):
    for j in range(ow):
      hs, ws = i * s - p, j * s - p
      he, we = min(hs + k, h + p), min(ws + k, w + p)
      size = (he - hs) * (we - ws)
      hs, ws, he, we = max(hs, 0), max(ws, 0), min(he, h), min(we, w)
      win = x[hs:he, ws:we]
      out[i, j] = win.max() if kind == "max" else win.sum() / size
  return out


@pytest.mark.parametrize("kind", ["max", "avg"])
@pytest.mark.parametrize("n,k,s,p", [(6, 3, 2, 0), (7, 3, 2, 0), (7, 3, 1, 1),
                                     (8, 3, 2, 1), (5, 2, 2, 0), (112, 3, 2, 0),
                                     (8, 2, 2, 0), (6, 3, 3, 0)])
def test_pooling_is_caffe_ceil_mode(kind, n, k, s, p):
  x = np.random.default_rng(n * k + s).normal(size=(n, n)).astype(np.float32)
  got = netgraph.pool(jnp.asarray(x)[None, :, :, None], kind, (k, k), (s, s),
                      (p, p), ceil_mode=True)[0, :, :, 0]
  np.testing.assert_allclose(got, _caffe_pool_reference(x, k, s, p, kind),
                             rtol=1e-6, atol=1e-6)


def test_pooling_floor_mode():
  x = jnp.arange(49.0).reshape(1, 7, 7, 1)
  got = netgraph.pool(x, "max", (2, 2), (2, 2), (0, 0), ceil_mode=False)
  np.testing.assert_array_equal(got[0, :, :, 0], [[8, 10, 12], [22, 24, 26], [36, 38, 40]])


def test_stack_flow_interleaves_frames():
  # Frame f holds (u, v) = (100 f, 100 f + 1): stacks read u_1, v_1, u_2, v_2, ...
  f = np.arange(7, dtype=np.float32)
  flow = np.stack([100 * f, 100 * f + 1], -1)[None, :, None, None, :]
  flow = np.broadcast_to(flow, (1, 7, 2, 2, 2))
  stacks = netgraph.stack_flow(jnp.asarray(flow), steps=3, stack=3, stride=2)
  assert stacks.shape == (1, 3, 2, 2, 6)
  np.testing.assert_array_equal(stacks[0, :, 0, 0], [[0, 1, 100, 101, 200, 201],
                                                     [200, 201, 300, 301, 400, 401],
                                                     [400, 401, 500, 501, 600, 601]])
  with pytest.raises(ValueError, match=r"expected \(9, H, W, 2\)"):
    netgraph.stack_flow(jnp.asarray(flow), steps=3, stack=3, stride=3)


# ----------------------------------------------------------------------------
# Every model on tiny inputs: taps, logits, folded == unfolded.

TINY = {
    "vgg16_fusion": dict(frames=2, size=32, flow_stack=2, width=1 / 16),
    "vgg16_two_stream": dict(size=32, flow_stack=2, width=1 / 16),
    "st_resnet50": dict(frames=2, size=32, flow_stack=2, width=1 / 16),
    # The TSN streams are two separate networks of one kind: test one tower.
    "tsn_bn_inception": dict(size=32, flow_stack=2, width=1 / 16, streams=("flow",)),
    "tsn_inception_v3": dict(size=75, flow_stack=2, width=1 / 16, streams=("flow",)),
    "c3d": dict(frames=4, size=32, width=1 / 16, num_classes=11),
}
PAPER_TAPS = {  # layers the paper (or its sources) visualise
    "vgg16_fusion": ["rgb/conv1_1", "flow/conv2_2", "rgb/conv3_3", "flow/conv4_3",
                     "rgb/conv5_3", "conv5_fusion", "fc6", "fc7", "fc8", "flow/fc8"],
    "vgg16_two_stream": ["rgb/conv5_3", "rgb/pool5", "rgb/fc8-1", "flow/fc8"],
    "st_resnet50": ["rgb/res2a", "rgb/res3a", "rgb/res4a", "rgb/res5a",
                    "rgb/res4b_branch2b", "flow/res4b_branch2b", "rgb/prediction"],
    "tsn_bn_inception": ["flow/conv1/7x7_s2", "flow/inception_4b/double_3x3_2",
                         "flow/inception_5b/output", "flow/fc-action"],
    "tsn_inception_v3": ["flow/mixed_4_tower_1_conv_1", "flow/mixed_4_tower_1_conv_2",
                         "flow/mixed_4_tower_2_conv", "flow/fc_action"],
    "c3d": ["conv1a", "conv3b", "conv5b", "pool5", "fc6-1", "fc8-1"],
}


@pytest.mark.parametrize("name", sorted(TINY))
def test_tiny_model_forward_taps_and_folding(name):
  folded = models.load(name, **TINY[name])
  spec = folded.spec
  missing = [l for l in PAPER_TAPS[name] if l not in spec.layers]
  assert not missing, f"{name} lacks taps {missing}"
  x = folded.example_inputs(batch=2, seed=3)
  logits, feats = folded.apply(folded.variables, x)
  assert logits.shape == (2,) + spec.feature_shape("logits")
  assert np.isfinite(np.asarray(logits)).all()
  for layer in PAPER_TAPS[name]:
    assert feats[layer].shape == (2,) + spec.feature_shape(layer)
  unfolded = models.load(name, folded=False, **TINY[name])
  has_bn = "batch_stats" in unfolded.variables
  assert has_bn == (name in ("st_resnet50", "tsn_bn_inception", "tsn_inception_v3"))
  assert "batch_stats" not in folded.variables
  ref_logits, ref_feats = unfolded.apply(unfolded.variables, x)
  scale = float(np.abs(ref_logits).max())
  np.testing.assert_allclose(logits, ref_logits, rtol=1e-4, atol=1e-4 * scale)
  for layer in PAPER_TAPS[name][:2]:
    a, b = np.asarray(feats[layer]), np.asarray(ref_feats[layer])
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4 * np.abs(b).max())


def test_st_resnet_motion_feeds_the_fusion_stream_after_res2a():
  m = models.load("st_resnet50", **TINY["st_resnet50"])
  x = m.example_inputs(1, seed=1)

  def fusion_stream(flow):
    feats = m.apply(m.variables, dict(x, flow=flow))[1]
    return jnp.sum(feats["rgb/res2a"]), jnp.sum(feats["rgb/res2b_branch2a"])

  before, after = jax.jacrev(fusion_stream)(x["flow"])
  assert float(jnp.abs(before).max()) == 0.0  # before the first connection
  assert float(jnp.abs(after).max()) > 0.0  # motion added after res2a
  # The motion tower never reads the appearance tower.
  graph = st_resnet50.st_resnet50_graph()
  for n in graph.nodes:
    if n.name.startswith("flow/"):
      bottoms = n.bottoms if hasattr(n, "bottoms") else (n.bottom,)
      assert all(b.startswith("flow/") for b in bottoms), n.name


def test_vgg16_fusion_concatenates_appearance_then_motion():
  m = models.load("vgg16_fusion", **TINY["vgg16_fusion"])
  variables = jax.tree.map(np.array, m.variables)
  c = variables["params"]["rgb"]["conv5_3"]["kernel"].shape[-1]
  variables["params"]["conv5_fusion"]["kernel"][..., c:, :] = 0  # motion half off
  x = m.example_inputs(1, seed=2)
  f = lambda flow: jnp.sum(m.apply(variables, dict(x, flow=flow))[1]["conv5_fusion"])
  assert float(jnp.abs(jax.grad(f)(x["flow"])).max()) == 0.0
  g = lambda rgb: jnp.sum(m.apply(variables, dict(x, rgb=rgb))[1]["conv5_fusion"])
  assert float(jnp.abs(jax.grad(g)(x["rgb"])).max()) > 0.0


def _small_bn_graph(name="c3d"):
  """Two conv + BN layers and a classifier: the zoo's build path, cheaply."""
  nodes = (Conv("block/conv1", "data", 4, (3, 3), pad=(1, 1), bn="block/conv1_bn",
                bias=False),
           Conv("conv2", "block/conv1", 6, (3, 3), (2, 2), bn="conv2_bn"),
           Pool("pool", "conv2", "avg", ()),
           Dense("fc", "pool", 3))
  return netgraph.Graph(name, nodes=nodes, taps=("block/conv1", "conv2", "fc"),
                        logits=("fc",),
                        streams={"rgb": models.StreamSpec(1, 9, 9, 3)},
                        inputs=(netgraph.StreamInput("rgb", "data"),))


def test_weights_round_trip_folds_unfolded_checkpoints(tmp_path):
  graph = _small_bn_graph()
  unfolded = netgraph.build(graph, folded=False, seed=5)
  p, st = unfolded.variables["params"], unfolded.variables["batch_stats"]
  assert set(p["block"]) == {"conv1", "conv1_bn"} and set(st["block"]) == {"conv1_bn"}
  assert set(p["block"]["conv1"]) == {"kernel"}  # Caffe-style conv without bias
  path = str(tmp_path / "unfolded")
  checkpoint.save(path, unfolded.variables, {"architecture": "c3d"})
  loaded = netgraph.build(graph, weights=path)  # folded on load
  assert "batch_stats" not in loaded.variables
  assert set(loaded.variables["params"]["block"]["conv1"]) == {"kernel", "bias"}
  x = unfolded.example_inputs(2, seed=4)
  want = np.asarray(unfolded(x))
  np.testing.assert_allclose(loaded(x), want, rtol=1e-5, atol=1e-5 * np.abs(want).max())
  # The same seed gives the same folded model without a checkpoint.
  np.testing.assert_allclose(netgraph.build(graph, seed=5)(x), want, rtol=1e-5,
                             atol=1e-5 * np.abs(want).max())
  folded_path = str(tmp_path / "folded")
  checkpoint.save(folded_path, loaded.variables, {"architecture": "c3d"})
  np.testing.assert_allclose(netgraph.build(graph, weights=folded_path)(x), want,
                             rtol=1e-5, atol=1e-5 * np.abs(want).max())
  with pytest.raises(ValueError, match="folded already"):
    netgraph.build(graph, weights=folded_path, folded=False)
  with pytest.raises(ValueError, match="not 'st_resnet50'"):
    netgraph.build(_small_bn_graph("st_resnet50"), weights=folded_path)
  bad = jax.tree.map(np.asarray, loaded.variables)
  bad["params"]["fc"]["kernel"] = bad["params"]["fc"]["kernel"][:, :2]
  bad["params"]["extra"] = {"kernel": np.zeros(3)}
  bad_path = str(tmp_path / "bad")
  checkpoint.save(bad_path, bad, {"architecture": "c3d"})
  with pytest.raises(ValueError, match=r"2 tensor\(s\) do not fit: unexpected "
                     r"params/extra/kernel \(3,\); params/fc/kernel: shape \(6, 2\), "
                     r"expected \(6, 3\)"):
    netgraph.build(graph, weights=bad_path)
  with pytest.raises(ValueError, match="need width=1.0"):
    models.load("tsn_bn_inception", weights=folded_path, width=0.5)


def test_describe_prints_table():
  from stviz_jax.models.__main__ import describe
  m = models.load("c3d", frames=2, size=16, width=1 / 16)
  text = describe(m, ["conv1a", "pool1", "conv2a"])
  rows = {line.split()[0]: line.split() for line in text.splitlines()[3:]}
  # conv1a 3x3x3; pool1 1x2x2 (stride 2 in space); conv2a 3x3x3 on that.
  assert rows["conv1a"][1:] == ["3", "2x3x3", "1,1,1", "2x16x16x4"]
  assert rows["pool1"][1:] == ["4", "2x4x4", "1,2,2", "2x8x8x4"]
  assert rows["conv2a"][1:] == ["8", "2x8x8", "1,2,2", "2x8x8x8"]


# ----------------------------------------------------------------------------
# Full-size forward passes (CPU minutes; GPU seconds).

FULL = {"vgg16_fusion": {}, "vgg16_two_stream": {}, "st_resnet50": {},
        "tsn_bn_inception": {}, "tsn_inception_v3": {}, "c3d": {}}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(FULL))
def test_full_size_forward(name):
  m = models.load(name, **FULL[name])
  x = m.example_inputs(batch=1, seed=0)
  logits, feats = jax.jit(m.apply)(m.variables, x)
  assert logits.shape == (1,) + m.spec.feature_shape("logits")
  assert np.isfinite(np.asarray(logits)).all()
  if name in ("st_resnet50", "tsn_bn_inception", "tsn_inception_v3"):
    u = models.load(name, folded=False, **FULL[name])
    ref = jax.jit(u.apply)(u.variables, x)[0]
    np.testing.assert_allclose(logits, ref, rtol=1e-3,
                               atol=1e-3 * float(np.abs(ref).max()))
