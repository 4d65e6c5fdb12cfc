"""The convolution whose input gradient runs as a forward convolution.

Its gradients must equal JAX's own for every stride-1 case (the rewrite), fall
back to JAX's rule elsewhere, leave forward mode untouched outside its
context, and the Visualizer's compiled step on CPU must contain no
convolution in the transposed-kernel form XLA:CPU runs slowly inside loops.
"""

import itertools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

import stviz_jax as sv
from stviz_jax.models import conv, layers

DIMENSION_NUMBERS = {1: ("NWC", "WIO", "NWC"), 2: ("NHWC", "HWIO", "NHWC"),
                     3: ("NDHWC", "DHWIO", "NDHWC")}


def _loss(fn, stride, padding, dilation, nd):
  def loss(x, w):
    y = fn(x, w, (stride,) * nd, padding, rhs_dilation=(dilation,) * nd,
           dimension_numbers=DIMENSION_NUMBERS[nd])
    return jnp.sum(jnp.sin(y) * jnp.arange(y.size, dtype=y.dtype).reshape(y.shape) / y.size)
  return loss


def _rewritten_and_jax_gradients(x, w, stride, padding, dilation):
  """(gradients inside cpu_rewrites, their jaxpr, JAX's own gradients)."""
  nd = x.ndim - 2
  with conv.cpu_rewrites():
    fast = jax.grad(_loss(conv.conv_general_dilated, stride, padding, dilation, nd),
                    argnums=(0, 1))
    jaxpr = str(jax.make_jaxpr(fast)(x, w))
    got = jax.jit(fast)(x, w)
  want = jax.grad(_loss(lax.conv_general_dilated, stride, padding, dilation, nd),
                  argnums=(0, 1))(x, w)
  for g, h in zip(got, want):  # float32: only the summation order differs
    np.testing.assert_allclose(g, h, rtol=1e-4, atol=1e-5 * float(jnp.abs(h).max()))
  return jaxpr


def _random_conv(seed, spatial, nd, k, c_in):
  rng = np.random.default_rng(seed)
  x = jnp.asarray(rng.standard_normal((2,) + spatial[:nd] + (c_in,)), jnp.float32)
  w = jnp.asarray(rng.standard_normal((k,) * nd + (c_in, 4)), jnp.float32)
  return x, w


CASES = [(nd, pad, dil, k) for nd, pad, dil, k in itertools.product(
    (1, 2, 3), ("SAME", "VALID", "explicit"), (1, 2), (1, 3))]


@pytest.mark.parametrize("nd,pad,dil,k", CASES)
def test_gradients_equal_jax(nd, pad, dil, k):
  x, w = _random_conv(nd * 100 + dil * 10 + k, (7, 8, 6), nd, k, 3)
  padding = ((1, 2),) * nd if pad == "explicit" else pad
  _rewritten_and_jax_gradients(x, w, 1, padding, dil)
  with conv.cpu_rewrites():  # the rewrite really ran
    forward = jax.make_jaxpr(_loss(conv.conv_general_dilated, 1, padding, dil, nd))(x, w)
  assert "custom_vjp" in str(forward)


@pytest.mark.parametrize("together", [True, False])
def test_3d_convolution_input_gradient_over_time_taps(monkeypatch, together):
  """Rewrite 2: a 3x3x3 convolution runs as 2-D convolutions over its 3 time
  taps; its input gradient is one 2-D convolution with 3 x C_in outputs (all
  taps side by side) on frames of at least TAPS_TOGETHER_MIN_PIXELS, one per
  tap on smaller ones; JAX's values and gradients either way."""
  monkeypatch.setattr(conv, "TAPS_TOGETHER_MIN_PIXELS", 1 if together else 10**9)
  x, w = _random_conv(7, (6, 8, 8), 3, 3, 5)  # batch 2 x 6 frames, 5 -> 4 channels
  with conv.cpu_rewrites():
    jaxpr = str(jax.make_jaxpr(jax.grad(lambda v: jnp.sum(conv.conv_general_dilated(
        v, w, (1, 1, 1), "SAME", dimension_numbers=DIMENSION_NUMBERS[3]) ** 2)))(x))
  outputs = re.findall(r"(f32\[[\d,]+\]) = conv_general_dilated\[", jaxpr)
  two_d = [o for o in outputs if o.count(",") == 3]
  assert two_d.count("f32[12,8,8,4]") == 3, outputs  # forward: one call per tap
  assert two_d.count("f32[12,8,8,15]") == (1 if together else 0), outputs
  assert two_d.count("f32[12,8,8,5]") == (0 if together else 3), outputs
  _rewritten_and_jax_gradients(x, w, 1, "SAME", 1)
  _rewritten_and_jax_gradients(x, w, 1, ((2, 0), (1, 1), (0, 2)), 2)  # dilated, uneven


STRIDED = [(nd, s, pad, k) for nd, s, pad, k in itertools.product(
    (1, 2, 3), (2, 3), ("SAME", "VALID", "explicit"), (1, 2, 3, 7))]


@pytest.mark.parametrize("nd,stride,pad,k", STRIDED)
def test_strided_input_gradient_by_phases_equals_jax(nd, stride, pad, k):
  """Every phase of every axis, kernels shorter and longer than the stride."""
  # 16 input channels: 3-D inputs of fewer keep JAX's rule (see conv._conv_bwd).
  x, w = _random_conv(nd * 100 + stride * 10 + k, (9, 10, 11), nd, k, 16)
  padding = ((3, 1),) * nd if pad == "explicit" else pad
  jaxpr = _rewritten_and_jax_gradients(x, w, stride, padding, 1)
  assert "optimization_barrier" in jaxpr  # a rewritten kernel: the rewrite ran
  dilations = re.findall(r"lhs_dilation=\(([0-9, ]*)\)", jaxpr)
  assert dilations and all(set(d.replace(" ", "").strip(",").split(",")) == {"1"}
                           for d in dilations), dilations  # no input dilation left


SPACE_TO_DEPTH = [(stride, pad, k, spatial) for stride, pad, k, spatial in itertools.product(
    ((2, 2, 2), (1, 2, 2), (2, 3, 2)), ("SAME", "VALID", "explicit"), (3, 7),
    ((8, 12, 12), (7, 9, 11)))]


@pytest.mark.parametrize("stride,pad,k,spatial", SPACE_TO_DEPTH)
def test_strided_3d_rgb_by_space_to_depth_equals_jax(stride, pad, k, spatial):
  """I3D's first layer (7x7x7 / 2 on 3 channels) and its neighbours: values and
  gradients equal JAX's, computed by stride-1 convolutions without input dilation."""
  x, w = _random_conv(k, spatial, 3, k, 3)
  w = w / np.sqrt(w[..., 0].size)  # outputs of order 1, where sin is well conditioned
  padding = ((3, 1), (2, 3), (0, 4)) if pad == "explicit" else pad
  dn = DIMENSION_NUMBERS[3]
  with conv.cpu_rewrites():
    y = jax.jit(lambda x, w: conv.conv_general_dilated(x, w, stride, padding,
                                                       dimension_numbers=dn))(x, w)
    loss = lambda x, w: jnp.sum(jnp.sin(conv.conv_general_dilated(
        x, w, stride, padding, dimension_numbers=dn)))
    jaxpr = str(jax.make_jaxpr(jax.grad(loss, argnums=(0, 1)))(x, w))
    got = jax.jit(jax.grad(loss, argnums=(0, 1)))(x, w)
  want_y = lax.conv_general_dilated(x, w, stride, padding, dimension_numbers=dn)
  np.testing.assert_allclose(y, want_y, rtol=1e-5, atol=1e-5 * float(jnp.abs(want_y).max()))
  want = jax.grad(lambda x, w: jnp.sum(jnp.sin(lax.conv_general_dilated(
      x, w, stride, padding, dimension_numbers=dn))), argnums=(0, 1))(x, w)
  # The weight gradient sums thousands of cancelling terms in another order.
  for g, h, tol in zip(got, want, (1e-5, 1e-4)):
    np.testing.assert_allclose(g, h, rtol=1e-4, atol=tol * float(jnp.abs(h).max()))
  assert "optimization_barrier" in jaxpr  # a rewritten kernel: the rewrite ran
  for attr in ("lhs_dilation", "window_strides"):
    values = re.findall(attr + r"=\(([0-9, ]*)\)", jaxpr)
    assert values and all(set(v.replace(" ", "").strip(",").split(",")) == {"1"}
                          for v in values), (attr, values)


def test_space_to_depth_switch_keeps_jax_rule():
  x, w = _random_conv(0, (8, 12, 12), 3, 7, 3)
  with conv.cpu_rewrites(), conv.space_to_depth(False):
    jaxpr = str(jax.make_jaxpr(jax.grad(lambda x: conv.conv_general_dilated(
        x, w, (2, 2, 2), "SAME", dimension_numbers=DIMENSION_NUMBERS[3]).sum()))(x[:1]))
  assert "window_strides=(2, 2, 2)" in jaxpr
  _rewritten_and_jax_gradients(x[:1], w, 2, "SAME", 1)


def test_dilated_strided_and_grouped_keep_jax_rule():
  x = jnp.ones((1, 9, 9, 4))
  with conv.cpu_rewrites():
    strided = jax.make_jaxpr(jax.grad(lambda x: conv.conv_general_dilated(
        x, jnp.ones((3, 3, 4, 4)), (2, 2), "SAME", rhs_dilation=(2, 2),
        dimension_numbers=DIMENSION_NUMBERS[2]).sum()))(x)
    grouped = jax.make_jaxpr(jax.grad(lambda x: conv.conv_general_dilated(
        x, jnp.ones((3, 3, 2, 4)), (1, 1), "SAME", dimension_numbers=DIMENSION_NUMBERS[2],
        feature_group_count=2).sum()))(x)
  assert "custom_vjp" not in str(strided) and "custom_vjp" not in str(grouped)


def test_outside_context_forward_mode_works():
  """A zoo model keeps every JAX transformation outside the Visualizer's step."""
  model = sv.models.load("tiny_two_stream")
  x = model.example_inputs()
  f = lambda rgb: model.apply(model.variables, {**x, "rgb": rgb})[1]["rgb/conv2"].sum()
  tangent = jnp.ones_like(x["rgb"])
  _, jvp = jax.jvp(f, (x["rgb"],), (tangent,))
  np.testing.assert_allclose(jvp, jnp.vdot(jax.grad(f)(x["rgb"]), tangent), rtol=1e-4)


def _compiled_step_hlo(model, layer):
  config = sv.default_config()
  config.steps = 2
  return sv.Visualizer(model, layer, config).lower_element().compile().as_text()


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="the rewrite is for XLA:CPU")
def test_visualizer_step_has_no_transposed_kernel_convs():
  hlo = _compiled_step_hlo(sv.models.load("tiny_two_stream"), "fusion")
  assert "dim_labels=" in hlo
  labels = {part.split(",")[0] for part in hlo.split("dim_labels=")[1:]}
  assert all("io->" in label for label in labels), labels
  # The 3x3x3 flow and fusion layers run as 2-D convolutions over time taps.
  assert not any(label.startswith("b012f") for label in labels), labels


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="the option is XLA:CPU's")
def test_visualizer_step_compiles_with_cpu_compiler_options(monkeypatch):
  """The step compiles with `conv.compiler_options()`, on CPU
  `CPU_COMPILER_OPTIONS` (this XLA accepts them): no YNNPACK fusion. That the
  options reach the step's compilation shows in an option XLA rejects."""
  assert conv.compiler_options() == conv.CPU_COMPILER_OPTIONS
  model = sv.models.load("tiny_two_stream")
  hlo = _compiled_step_hlo(model, "fusion")
  assert "convolution(" in hlo and "ynn_fusion" not in hlo
  monkeypatch.setattr(conv, "compiler_options", lambda: {"xla_cpu_no_such_option": ""})
  with pytest.raises(Exception, match="xla_cpu_no_such_option"):
    _compiled_step_hlo(model, "fusion")


def test_unknown_compiler_options_fall_back_to_none(monkeypatch):
  """An XLA that no longer knows an option compiles the step without them."""
  monkeypatch.setattr(conv, "CPU_COMPILER_OPTIONS", {"xla_cpu_no_such_option": ""})
  conv._cpu_options_accepted.cache_clear()
  try:
    assert conv.compiler_options() is None
  finally:
    monkeypatch.undo()
    conv._cpu_options_accepted.cache_clear()


# --- computing only the target channel -------------------------------------

@pytest.fixture(scope="module")
def small_vgg():
  return sv.models.load("vgg16_two_stream", streams=("rgb",), size=32, width=1 / 16)


def test_only_channel_computes_that_channel_per_element(small_vgg):
  """Under vmap each element's channel equals the full layer's; the rest are zero."""
  layer = "rgb/conv4_3"
  x = small_vgg.example_inputs(batch=3, seed=1)
  full = small_vgg.apply(small_vgg.variables, x)[1][layer]
  channels = jnp.asarray([0, 5, 31])

  def one(xi, c):
    with layers.only_channel(layer, c):
      return small_vgg.apply(small_vgg.variables, jax.tree.map(lambda a: a[None], xi))[1][layer][0]

  got = jax.jit(jax.vmap(one))(x, channels)
  for i, c in enumerate(np.asarray(channels)):
    np.testing.assert_allclose(got[i, ..., c], full[i, ..., c], rtol=1e-5, atol=1e-6)
    others = np.delete(np.asarray(got[i]), c, axis=-1)
    assert np.all(others == 0)


@pytest.mark.parametrize("kind", ["channel", "neuron"])
def test_visualizer_one_channel_equals_full_layer(small_vgg, kind):
  config = sv.default_config()
  config.steps = 6
  config.objective.kind = kind
  runs = []
  for one_channel in (True, False):
    vis = sv.Visualizer(small_vgg, "rgb/conv4_3", config)
    assert vis.one_channel
    vis.one_channel = one_channel
    runs.append(vis.run([1, 7], seed=3, log_progress=False))
  np.testing.assert_allclose(runs[0].inputs["rgb"], runs[1].inputs["rgb"], rtol=1e-4, atol=1e-3)
  np.testing.assert_allclose(runs[0].activations, runs[1].activations, rtol=1e-4, atol=1e-6)


def test_one_channel_only_for_single_channel_objectives(small_vgg):
  config = sv.default_config()
  config.objective.kind = "channel_interaction"
  config.objective.other = 3
  assert not sv.Visualizer(small_vgg, "rgb/conv4_3", config).one_channel


def _computations(hlo: str) -> dict[str, str]:
  """HLO text -> {computation name: its body text}."""
  out, name = {}, None
  for line in hlo.splitlines():
    m = re.match(r"(?:ENTRY )?%([\w.\-]+) \(", line)
    if m and line.rstrip().endswith("{"):
      name, out[m.group(1)] = m.group(1), ""
    elif name is not None:
      out[name] += line + "\n"
  return out


def _reachable(comps: dict[str, str], root: str) -> str:
  """The text of `root` and of every computation it calls, transitively."""
  seen, todo, text = set(), [root], ""
  while todo:
    c = todo.pop()
    if c in seen or c not in comps:
      continue
    seen.add(c)
    text += comps[c]
    todo += re.findall(r"(?:calls|body|condition|to_apply|branch_computations)=\{?%([\w.\-]+)",
                       comps[c])
  return text


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="the rewrite is for XLA:CPU")
@pytest.mark.parametrize("shape, kernel, strides", [
    ((5, 12, 12, 8), (3, 3, 8, 16), (1, 1)),        # stride 1: the flipped kernel
    ((5, 12, 12, 8), (3, 3, 8, 16), (2, 2)),        # strided: the phases' sub-kernels
    ((5, 8, 12, 12, 3), (7, 7, 7, 3, 8), (2, 2, 2)),  # space-to-depth: the blocked kernel
])
def test_rewritten_kernels_are_built_once_outside_the_loop(shape, kernel, strides):
  # XLA never hoists reverses / transposes / reshapes out of a loop on their
  # own; without the barrier every optimisation step rebuilt them.
  nd = len(strides)
  dn = ("NHWC", "HWIO", "NHWC") if nd == 2 else ("NDHWC", "DHWIO", "NDHWC")
  w = jax.random.normal(jax.random.PRNGKey(0), kernel)
  x0 = jax.random.normal(jax.random.PRNGKey(1), shape)

  def ascend(w, x0):
    def loss(x):
      with conv.cpu_rewrites():
        y = conv.conv_general_dilated(x, w, strides, "SAME", dimension_numbers=dn)
      return jnp.sum(y ** 2)

    return jax.lax.fori_loop(0, 3, lambda i, x: x - 1e-3 * jax.grad(loss)(x), x0)

  hlo = jax.jit(ascend).lower(w, x0).compile().as_text()
  comps = _computations(hlo)
  bodies = re.findall(r"while\(.*?body=%([\w.\-]+)", hlo)
  assert bodies
  in_loop = "".join(_reachable(comps, b) for b in bodies)
  assert "convolution(" in in_loop
  # Reverses / transposes left in the loop act on the batch of 5 (activations:
  # the phases' interleaving, the blocks), never on a kernel.
  shapes = re.findall(r"= f32\[([\d,]*)\]\S* (?:reverse|transpose)\(", in_loop)
  assert all(sh.split(",")[0] == "5" for sh in shapes), shapes
