"""netgraph's node kinds against direct NumPy references, its one pooling rule
under Caffe's and MatConvNet's conventions (known answers), and the converted
Caffe / MatConvNet nets being netgraph `Net`s (one executor, fast paths)."""

import numpy as np
import pytest
import scipy.io
import jax
import jax.numpy as jnp

from converters import caffe, matconvnet
from stviz_jax.models import conv, layers, netgraph, pooling
from stviz_jax.models.netgraph import (LRN, Activation, Add, Affine, Concat, Constant,
                                       Conv, Dense, Eltwise, Pool, Reshape)

RNG = np.random.default_rng(0)


def run(nodes, x, taps, params=None, **kwargs):
  """Features `taps` of a net of `nodes` on input blob 'x' (one stream, no reduction)."""
  net = netgraph.Net(nodes=tuple(nodes), taps=tuple(taps), logits=(taps[-1],),
                     logits_reduce="none", inputs=(netgraph.StreamInput("x", "x"),),
                     **kwargs)
  variables = net.init(jax.random.PRNGKey(0), jnp.asarray(x))
  if params is not None:
    variables = {"params": params}
  return net.apply(variables, jnp.asarray(x))[1], variables


def normal(*shape):
  return RNG.normal(size=shape).astype(np.float32)


@pytest.mark.parametrize("fn,args,ref", [
    ("relu", (), lambda x: np.maximum(x, 0)),
    ("leaky_relu", (0.1,), lambda x: np.where(x > 0, x, 0.1 * x)),
    ("sigmoid", (), lambda x: 1 / (1 + np.exp(-x))),
    ("tanh", (), np.tanh),
    ("abs", (), np.abs),
    ("softmax", (), lambda x: np.exp(x) / np.exp(x).sum(-1, keepdims=True)),
    ("power", (2.0, 0.5, 3.0), lambda x: (3.0 + 0.5 * x) ** 2),
])
def test_activation(fn, args, ref):
  x = normal(2, 3, 4, 5)
  feats, _ = run([Activation("a", "x", fn, args)], x, ["a"])
  np.testing.assert_allclose(feats["a"], ref(x), rtol=1e-5, atol=1e-6)


def test_unknown_activation_is_named():
  with pytest.raises(ValueError, match="unknown activation 'mish'"):
    run([Activation("a", "x", "mish")], normal(1, 2, 2, 3), ["a"])


def test_pytorch_activations_match_their_definitions():
  x = np.linspace(-8.0, 8.0, 33, dtype=np.float32)
  relu6 = np.clip(x, 0.0, 6.0)
  want = {"relu6": relu6, "silu": x / (1 + np.exp(-x)), "hardswish": x * np.clip(x + 3, 0, 6) / 6,
          "hardsigmoid": np.clip(x + 3, 0, 6) / 6,
          "gelu_tanh": 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))}
  for fn, y in want.items():
    np.testing.assert_allclose(netgraph.activation(jnp.asarray(x), fn), y, atol=1e-5, err_msg=fn)
  assert float(netgraph.activation(jnp.asarray(1.0), "gelu")) == pytest.approx(0.8413447, 1e-6)


def test_affine_scales_and_shifts_each_channel():
  x = normal(2, 4, 4, 3)
  scale, shift = normal(3), normal(3)
  feats, variables = run([Affine("bn", "x", 3)], x, ["bn"],
                         params={"bn": {"scale": scale, "shift": shift}})
  np.testing.assert_allclose(feats["bn"], x * scale + shift, rtol=1e-6)
  _, fresh = run([Affine("bn", "x", 3)], x, ["bn"])
  assert jax.tree.map(np.shape, fresh["params"]) == {"bn": {"scale": (3,), "shift": (3,)}}


def ref_lrn(x, size, alpha, beta, k, region):
  """Direct sums, channels last: across channels or a size x size window per channel."""
  lo = (size - 1) // 2
  sq = np.square(x.astype(np.float64))
  s = np.zeros_like(sq)
  if region == "across":
    c = x.shape[-1]
    for j in range(c):
      s[..., j] = sq[..., max(0, j - lo):min(c, j - lo + size)].sum(-1)
  else:
    _, h, w, _ = x.shape
    for i in range(h):
      for j in range(w):
        win = sq[:, max(0, i - lo):min(h, i - lo + size), max(0, j - lo):min(w, j - lo + size)]
        s[:, i, j] = win.sum((1, 2))
  return x * (k + alpha * s) ** -beta


@pytest.mark.parametrize("size,region", [(3, "across"), (5, "across"), (4, "across"),
                                         (3, "within")])
def test_lrn(size, region):
  x = normal(2, 5, 6, 7)
  feats, _ = run([LRN("n", "x", size, 0.3, 0.75, 2.0, region)], x, ["n"])
  np.testing.assert_allclose(feats["n"], ref_lrn(x, size, 0.3, 0.75, 2.0, region),
                             rtol=1e-5)


def test_eltwise_and_weighted_sum():
  a, b, c = normal(2, 3, 3, 4), normal(2, 3, 3, 4), normal(2, 3, 3, 4)
  nodes = [Activation("b", "x", "abs"), Activation("c", "x", "tanh"),
           Eltwise("prod", ("x", "b", "c"), "prod"), Eltwise("max", ("x", "b", "c"), "max"),
           Add("sum", ("x", "b", "c"), coeffs=(1.0, -0.5, 2.0)),
           Add("plain", ("x", "b"), relu=True)]
  feats, _ = run(nodes, a, ["prod", "max", "sum", "plain"])
  b, c = np.abs(a), np.tanh(a)
  np.testing.assert_allclose(feats["prod"], a * b * c, rtol=1e-6)
  np.testing.assert_array_equal(feats["max"], np.maximum(np.maximum(a, b), c))
  np.testing.assert_allclose(feats["sum"], a - 0.5 * b + 2.0 * c, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(feats["plain"], np.maximum(a + b, 0), rtol=1e-6)
  with pytest.raises(ValueError, match="unknown Eltwise op 'min'"):
    run([Eltwise("e", ("x", "x"), "min")], a, ["e"])


def test_reshape_is_caffe_channel_major_and_concat_takes_an_axis():
  x = normal(2, 3, 4, 5)  # (N, H, W, C)
  nodes = [Reshape("flat", "x", (60,)), Reshape("back", "flat", (5, 3, 4)),
           Concat("cat", ("x", "back"), axis=2)]
  feats, _ = run(nodes, x, ["flat", "back", "cat"])
  np.testing.assert_array_equal(feats["flat"], np.moveaxis(x, -1, 1).reshape(2, 60))
  np.testing.assert_array_equal(feats["back"], x)
  np.testing.assert_array_equal(feats["cat"], np.concatenate([x, x], 2))


def test_dense_on_whole_examples_and_per_frame():
  x = normal(2, 3, 4, 5)
  kernel, bias = normal(60, 7), normal(7)
  feats, _ = run([Dense("fc", "x", 7, frames=False)], x, ["fc"],
                 params={"fc": {"kernel": kernel, "bias": bias}},
                 precision=jax.lax.Precision.HIGHEST)
  np.testing.assert_allclose(feats["fc"], x.reshape(2, 60) @ kernel + bias, rtol=1e-5,
                             atol=1e-5)
  video = normal(2, 3, 2, 2, 5)  # (N, T, H, W, C): per time step
  kernel = normal(20, 7)
  feats, _ = run([Dense("fc", "x", 7)], video, ["fc"],
                 params={"fc": {"kernel": kernel, "bias": bias}},
                 precision=jax.lax.Precision.HIGHEST)
  np.testing.assert_allclose(feats["fc"], video.reshape(2, 3, 20) @ kernel + bias,
                             rtol=1e-5, atol=1e-5)


def test_constant_has_the_batch_and_dtype_of_its_bottom():
  feats, _ = run([Constant("label", "x", (2,), 3.0)], normal(4, 2, 2, 1), ["label"])
  np.testing.assert_array_equal(feats["label"], np.full((4, 2), 3.0, np.float32))


def ref_conv(x, w, b, stride, pads, dilation, groups):
  """Direct sum: x (N, H, W, C), w (kh, kw, C / groups, O), pads ((t, b), (l, r))."""
  n, h, wd, c = x.shape
  kh, kw, cg, o = w.shape
  xp = np.pad(x.astype(np.float64), ((0, 0),) + tuple(pads) + ((0, 0),))
  eh, ew = (kh - 1) * dilation[0] + 1, (kw - 1) * dilation[1] + 1
  oh = (xp.shape[1] - eh) // stride[0] + 1
  ow = (xp.shape[2] - ew) // stride[1] + 1
  og = o // groups
  y = np.zeros((n, oh, ow, o))
  for i in range(oh):
    for j in range(ow):
      patch = xp[:, i * stride[0]:i * stride[0] + eh:dilation[0],
                 j * stride[1]:j * stride[1] + ew:dilation[1]]
      for g in range(groups):
        y[:, i, j, g * og:(g + 1) * og] = np.einsum(
            "nhwc,hwco->no", patch[..., g * cg:(g + 1) * cg], w[..., g * og:(g + 1) * og])
  return y + b


@pytest.mark.parametrize("stride,pad,dilation,groups", [
    ((1, 1), ((1, 2), (0, 1)), (1, 1), 1),
    ((2, 1), ((0, 1), (2, 0)), (1, 2), 2),
    ((1, 2), (1, 1), (2, 1), 3),
])
def test_conv_groups_dilation_asymmetric_padding(stride, pad, dilation, groups):
  x = normal(2, 7, 8, 6)
  w, b = normal(3, 2, 6 // groups, 6), normal(6)
  node = Conv("c", "x", 6, (3, 2), stride, pad, relu=False, groups=groups,
              dilation=dilation)
  feats, _ = run([node], x, ["c"], params={"c": {"kernel": w, "bias": b}},
                 precision=jax.lax.Precision.HIGHEST)
  pads = [(p, p) if isinstance(p, int) else p for p in pad]
  np.testing.assert_allclose(feats["c"], ref_conv(x, w, b, stride, pads, dilation, groups),
                             rtol=1e-5, atol=1e-5)


def pool_row(values, kind, k, s, pad, ceil_mode, count_pad=True):
  """netgraph.pool over one row `values` (spatial (1, n))."""
  x = jnp.asarray(np.asarray(values, np.float32))[None, None, :, None]
  return np.asarray(netgraph.pool(x, kind, (1, k), (1, s), (0, pad), ceil_mode,
                                  count_pad)[0, 0, :, 0])


def test_pooling_known_answers_caffe_and_matconvnet():
  x = [1.0, 2.0, 4.0]
  # Caffe, n=3 k=2 s=2 p=1: ceil gives 3 windows, the last starts in the padding
  # and is dropped; windows [-1, 1), [1, 3), divisors clipped to [-1, 4): 2, 2.
  np.testing.assert_array_equal(pool_row(x, "avg", 2, 2, 1, True), [0.5, 3.0])
  np.testing.assert_array_equal(pool_row(x, "max", 2, 2, 1, True), [1.0, 4.0])
  # Caffe counts the padding: k=3 s=2 p=1 over ones -> windows [-1, 2), [1, 4) of 3.
  np.testing.assert_allclose(pool_row([1.0] * 3, "avg", 3, 2, 1, True), [2 / 3, 2 / 3])
  # MatConvNet divides by the in-input pixels: the same pool of ones averages 1.
  np.testing.assert_array_equal(pool_row([1.0] * 3, "avg", 3, 2, (1, 1), False, False),
                                [1.0, 1.0])
  # MatConvNet, asymmetric pad [1 0] with floor rounding: [-1, 1), [1, 3).
  x = [1.0, 2.0, 4.0, 8.0]
  np.testing.assert_array_equal(pool_row(x, "avg", 2, 2, (1, 0), False, False), [1.0, 3.0])
  np.testing.assert_array_equal(pool_row(x, "max", 2, 2, (1, 0), False, False), [1.0, 4.0])
  # Caffe ceil mode keeps a last partial window that starts inside: [3, 5) of [-1, 5).
  np.testing.assert_array_equal(pool_row(x, "avg", 2, 2, 1, True), [0.5, 3.0, 4.0])
  # Floor mode with Caffe's divisor (the zoo's MatConvNet-era pools, no padding).
  np.testing.assert_allclose(pool_row(x, "avg", 3, 1, 0, False), [7 / 3, 14 / 3], rtol=1e-6)


def test_pool_size_is_the_one_rounding_rule():
  assert netgraph.pool_size(3, 2, 2, 1, ceil_mode=True) == 2  # last window dropped
  assert netgraph.pool_size(4, 2, 2, 1, ceil_mode=True) == 3
  assert netgraph.pool_size(4, 2, 2, (1, 0), ceil_mode=False) == 2
  assert netgraph.pool_size(7, 3, 2, 0, ceil_mode=True) == 3
  assert netgraph.pool_size(6, 3, 2, 0, ceil_mode=True) == 3
  assert netgraph.pool_size(6, 3, 2, 0, ceil_mode=False) == 2


def test_pool_node_asymmetric_pad_and_global():
  x = normal(1, 5, 6, 2)
  nodes = [Pool("p", "x", "avg", (2, 3), (2, 2), ((1, 0), (0, 2)), ceil_mode=False,
                count_pad=False),
           Pool("g", "x", "max", ())]
  feats, _ = run(nodes, x, ["p", "g"])
  xp = np.pad(x, ((0, 0), (1, 0), (0, 2), (0, 0)))
  ones = np.pad(np.ones_like(x), ((0, 0), (1, 0), (0, 2), (0, 0)))
  want = np.zeros((1, 3, 3, 2), np.float32)
  for i in range(3):
    for j in range(3):
      win = (slice(None), slice(2 * i, 2 * i + 2), slice(2 * j, 2 * j + 3))
      want[:, i, j] = xp[win].sum((1, 2)) / ones[win].sum((1, 2))
  np.testing.assert_allclose(feats["p"], want, rtol=1e-6)
  np.testing.assert_array_equal(feats["g"], x.max((1, 2), keepdims=True))


def test_net_logit_reductions_and_bare_array_input():
  x = normal(2, 3, 3, 4)
  pooled = [Pool("p", "x", "avg", (3, 3))]
  for reduce, want in [("none", x.mean((1, 2), keepdims=True)),
                       ("squeeze", x.mean((1, 2))), ("mean", x.mean((1, 2)))]:
    net = netgraph.Net(nodes=tuple(pooled), taps=("p",), logits=("p",), logits_reduce=reduce,
                       inputs=(netgraph.StreamInput("x", "x"),))
    logits, _ = net.apply({}, jnp.asarray(x))
    np.testing.assert_allclose(logits, want, rtol=1e-6)
    np.testing.assert_allclose(net.apply({}, {"x": jnp.asarray(x)})[0], want, rtol=1e-6)
  two = netgraph.Net(nodes=(), taps=("a",), logits=("a",),
                     inputs=(netgraph.StreamInput("a", "a"), netgraph.StreamInput("b", "b")))
  with pytest.raises(ValueError, match="2 inputs takes a dict"):
    two.apply({}, jnp.asarray(x))


TINY_CAFFE = """name: "tiny"
input: "data"
input_dim: 1 input_dim: 3 input_dim: 9 input_dim: 9
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        convolution_param { num_output: 4 kernel_size: 3 pad: 1 } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1"
        pooling_param { pool: MAX kernel_size: 3 stride: 2 } }
layer { name: "drop" type: "Dropout" bottom: "pool1" top: "pool1" }
layer { name: "fc" type: "InnerProduct" bottom: "pool1" top: "fc"
        inner_product_param { num_output: 5 } }
"""


def count_calls(monkeypatch, module, name):
  """A list that grows by one per call of `module.name` (still called)."""
  calls = []
  real = getattr(module, name)
  monkeypatch.setattr(module, name, lambda *a, **k: calls.append(1) or real(*a, **k))
  return calls


def test_converted_caffe_net_is_a_netgraph_net(tmp_path, monkeypatch):
  proto = tmp_path / "tiny.prototxt"
  proto.write_text(TINY_CAFFE)
  model = caffe.load(str(proto), seed=1)
  assert isinstance(model.module, netgraph.Net)
  assert isinstance(caffe.CaffeNet(caffe.build(str(proto))), netgraph.Net)
  assert model.module.precision == jax.lax.Precision.HIGHEST
  pools = count_calls(monkeypatch, pooling, "max_pool")
  convs = count_calls(monkeypatch, conv, "conv_general_dilated")
  x = {"rgb": jnp.asarray(normal(2, 1, 9, 9, 3))}
  feats = model.activations(x, ["conv1", "relu1", "pool1", "drop", "fc"])
  assert pools, "max pooling must go through pooling.max_pool"
  assert convs, "convolutions must go through conv.conv_general_dilated (layers.Conv)"
  np.testing.assert_array_equal(feats["drop"], feats["pool1"])  # Dropout: an alias
  # Its convolution is the zoo's: `only_channel` restricts it to one channel.
  with layers.only_channel("conv1", 2):
    one = model.activations(x, ["conv1"])["conv1"]
  np.testing.assert_allclose(one[..., 2], feats["conv1"][..., 2], rtol=1e-5, atol=1e-6)
  assert not np.any(one[..., [0, 1, 3]] - model.variables["params"]["conv1"]["bias"][
      np.array([0, 1, 3])])


def tiny_simplenn(path):
  """A SimpleNN .mat: conv (asymmetric pad) -> relu -> avg pool (padded) -> conv."""
  f1, b1 = normal(3, 3, 2, 4), normal(1, 4)
  f2, b2 = normal(3, 3, 4, 3), normal(1, 3)
  weights = lambda f, b: np.array([f, b], dtype=object).reshape(1, 2)  # a MATLAB cell
  net_layers = np.empty((1, 4), dtype=object)
  net_layers[0, 0] = dict(type="conv", name="conv1", weights=weights(f1, b1),
                          pad=np.array([1.0, 0, 2, 1]), stride=1.0)
  net_layers[0, 1] = dict(type="relu", name="relu1", leak=0.0)
  net_layers[0, 2] = dict(type="pool", name="pool1", method="avg", pool=np.array([2.0, 3]),
                          pad=np.array([1.0, 0, 1, 1]), stride=2.0)
  net_layers[0, 3] = dict(type="conv", name="fc", weights=weights(f2, b2), pad=0.0,
                          stride=1.0)
  scipy.io.savemat(path, {"net": {"layers": net_layers,
                                  "meta": {"inputSize": np.array([6.0, 7, 2])}}})
  return f1, b1.ravel(), f2, b2.ravel()


def test_converted_matconvnet_net_is_a_netgraph_net(tmp_path, monkeypatch):
  path = str(tmp_path / "tiny.mat")
  f1, b1, f2, b2 = tiny_simplenn(path)
  model = matconvnet.load(path)
  assert isinstance(model.module, netgraph.Net)
  convs = count_calls(monkeypatch, conv, "conv_general_dilated")
  x = normal(2, 6, 7, 2)
  feats = model.activations({"input": jnp.asarray(x)[:, None]},
                            ["conv1", "relu1", "pool1", "fc"])
  conv1 = ref_conv(x, f1, b1, (1, 1), ((1, 0), (2, 1)), (1, 1), 1)
  np.testing.assert_allclose(feats["conv1"], conv1, rtol=1e-4, atol=1e-4)
  relu = np.maximum(conv1, 0)
  # MatConvNet's average: the window's in-input pixels only (pad [1 0 1 1], floor).
  padded = np.pad(relu, ((0, 0), (1, 0), (1, 1), (0, 0)))
  ones = np.pad(np.ones_like(relu), ((0, 0), (1, 0), (1, 1), (0, 0)))
  oh, ow = (padded.shape[1] - 2) // 2 + 1, (padded.shape[2] - 3) // 2 + 1
  pool = np.zeros((2, oh, ow, 4))
  for i in range(oh):
    for j in range(ow):
      win = (slice(None), slice(2 * i, 2 * i + 2), slice(2 * j, 2 * j + 3))
      pool[:, i, j] = padded[win].sum((1, 2)) / ones[win].sum((1, 2))
  np.testing.assert_allclose(feats["pool1"], pool, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(feats["fc"], ref_conv(pool, f2, b2, (1, 1), ((0, 0), (0, 0)),
                                                   (1, 1), 1), rtol=1e-4, atol=1e-4)
  assert convs, "convolutions must go through conv.conv_general_dilated (layers.Conv)"


def test_converted_net_gradients_agree_inside_the_cpu_rewrites(tmp_path):
  """Converted convolutions take `conv.cpu_rewrites`' forward-convolution gradients."""
  proto = tmp_path / "tiny.prototxt"
  proto.write_text(TINY_CAFFE)
  model = caffe.load(str(proto), seed=2)
  x = jnp.asarray(normal(1, 1, 9, 9, 3))
  loss = lambda v: model.apply(model.variables, {"rgb": v})[0].sum()
  plain = jax.grad(loss)(x)
  with conv.cpu_rewrites():
    rewritten = jax.jit(jax.grad(loss))(x)
  np.testing.assert_allclose(rewritten, plain, rtol=1e-4, atol=1e-5)
