"""torch.fx conversion (`stviz_jax.models.from_torch`, `converters.torch_graph`)
against PyTorch itself: random weights, reduced inputs, max relative error
`max |jax - torch| / max |torch|` <= 1e-4 on the logits and on taps (module
outputs caught by forward hooks, compared channels last).

The torchvision models need torchvision (skipped with the reason where it is
not installed: CI has torch without it); everything else runs on torch alone.
"""

import importlib.util
import json
import os

import numpy as np
import pytest

import stviz_jax as sv
from stviz_jax.models import checkpoint, converted, torch_graph

torch = pytest.importorskip("torch", reason="torch is not installed (pip install '.[torch]')")
import torch_modules  # pylint: disable=g-import-not-at-top,wrong-import-position

needs_torchvision = pytest.mark.skipif(
    importlib.util.find_spec("torchvision") is None,
    reason="torchvision is not installed (CI runs torch without it)")
TOL = 1e-4


def rel_err(got, ref) -> float:
  got, ref = np.asarray(got, np.float64), np.asarray(ref, np.float64)
  assert got.shape == ref.shape, (got.shape, ref.shape)
  return float(np.abs(got - ref).max() / np.abs(ref).max())


def channels_last(t, like) -> np.ndarray:
  """A PyTorch output as the converted tap `like`: channels last, and a time axis of
  1 where the converted blob keeps one (2-D towers, a mean over time)."""
  a = t.detach().numpy()
  if a.ndim <= 2:
    return a
  a = np.moveaxis(a, 1, -1)
  return a[:, None] if np.ndim(like) == a.ndim + 1 else a


def compare(module, x, taps=(), stream="rgb", **kwargs) -> dict[str, float]:
  """Relative errors of the logits and of `taps`, converted vs PyTorch."""
  model = sv.models.from_torch(module, x, stream, **kwargs)
  outputs = {}  # cloned: a later in-place ReLU would change them
  hooks = [module.get_submodule(t).register_forward_hook(
      lambda m, i, o, t=t: outputs.__setitem__(t, o.clone())) for t in taps]
  with torch.no_grad():
    ref = module(x)
  for h in hooks:
    h.remove()
  inputs = {stream: (torch_graph.flow_input(x) if x.ndim == 4 and stream == "flow"
                     else torch_graph.torch_input(x))}
  feats = model.activations(inputs, list(taps) + ["logits"])
  errs = {"logits": rel_err(feats["logits"], ref.numpy())}
  for t in taps:
    errs[t] = rel_err(feats[t], channels_last(outputs[t], feats[t]))
  return errs


def _assert_close(errs):
  assert max(errs.values()) <= TOL, errs


# ---------------------------------------------------------------------------
# Hand-written modules (torch alone).


def test_branches_concat_residuals_and_functional_ops_match_torch():
  torch.manual_seed(0)
  module = torch_modules.randomize(torch_modules.Branchy())
  x = torch.randn(2, 3, 4, 16, 16)
  _assert_close(compare(module, x, ["stem", "stem.1", "a", "b", "pool", "bn", "act", "avg"]))


def test_mean_head_adaptive_pool_and_activations_match_torch():
  module = torch_modules.randomize(torch_modules.MeanHead(), seed=1)
  x = torch.randn(2, 3, 4, 16, 16)
  _assert_close(compare(module, x, ["bn1", "conv2", "pool", "fc"]))


def test_more_functional_forms_match_torch():
  module = torch_modules.randomize(torch_modules.MoreOps(), seed=10)
  _assert_close(compare(module, torch.randn(2, 3, 4, 8, 8), ["conv", "conv2d", "fc"]))


def test_a_linear_after_a_flatten_reads_channels_last_rows():
  module = torch_modules.randomize(torch_modules.Branchy(), seed=2)
  model = sv.models.from_torch(module, torch.zeros(1, 3, 4, 16, 16))
  kernel = np.asarray(model.variables["params"]["fc"]["kernel"])  # (T*H*W*C, K)
  w = module.fc.weight.detach().numpy()  # (K, C*T*H*W)
  # Row (t, h, w, c) of the kernel is PyTorch's column (c, t, h, w).
  np.testing.assert_array_equal(kernel.reshape(3, 5, 5, 12, 5)[1, 2, 3, 4],
                                w.reshape(5, 12, 3, 5, 5)[:, 4, 1, 2, 3])


def test_batch_norm_is_folded_into_its_convolution_and_kept_elsewhere():
  module = torch_modules.randomize(torch_modules.Branchy())
  model = sv.models.from_torch(module, torch.zeros(1, 3, 4, 16, 16))
  params = model.variables["params"]
  assert "stem_1" not in params and set(params["stem_0"]) == {"kernel", "bias"}
  assert set(params["bn"]) == {"scale", "shift"}  # after a max pool: an Affine
  # The convolution's tap is its folded output, the batch norm's too (as the paper visualises).
  f = model.activations(model.example_inputs(), ["stem.0", "stem.1"])
  np.testing.assert_array_equal(f["stem.0"], f["stem.1"])


def test_two_d_towers_rgb_and_stacked_flow_match_torch():
  rgb = torch_modules.randomize(torch_modules.Tower2d(3), seed=3)
  _assert_close(compare(rgb, torch.randn(2, 3, 16, 16), ["bn1", "block", "pool"]))
  flow = torch_modules.randomize(torch_modules.Tower2d(6), seed=4)  # 3 flow frames (u, v)
  _assert_close(compare(flow, torch.randn(2, 6, 16, 16), ["bn1", "pool"], stream="flow"))
  model = sv.models.from_torch(flow, torch.zeros(1, 6, 16, 16), "flow", (-20.0, 20.0))
  assert model.spec.streams["flow"].shape == (3, 16, 16, 2)
  assert model.spec.streams["flow"].value_range == (-20.0, 20.0)


def test_taps_are_module_paths_in_network_order():
  model = sv.models.from_torch(torch_modules.Branchy().eval(), torch.zeros(1, 3, 4, 16, 16))
  layers = model.spec.layers
  assert layers[-1] == "logits"
  for a, b in [("stem.0", "stem"), ("stem", "a"), ("b", "pool"), ("avg", "fc")]:
    assert layers.index(a) < layers.index(b), layers
  assert model.spec.feature_shape("b") == (4, 16, 16, 4)  # (T, H, W, C)


@pytest.mark.parametrize("module, wants", [
    # untraceable: names the module and the Python construct.
    ("Untraceable", ("module gate (Gate)", "if x.sum() > 0:")),
    # unsupported op: names the op, and what is supported.
    ("Upsampler", ("unsupported op 'interpolate'", "supported: Conv1d/2d/3d")),
])
def test_a_module_that_cannot_be_converted_is_one_line_naming_why(module, wants):
  with pytest.raises(torch_graph.TorchGraphError) as e:
    sv.models.from_torch(getattr(torch_modules, module)(), torch.zeros(1, 3, 2, 8, 8))
  msg = str(e.value)
  assert "\n" not in msg
  assert all(w in msg for w in wants), msg
  assert isinstance(e.value, checkpoint.ConversionError)


def test_an_in_place_op_on_a_value_read_later_is_refused():
  with pytest.raises(torch_graph.TorchGraphError, match="an in-place op on conv, which add read"):
    sv.models.from_torch(torch_modules.InPlaceAlias(), torch.zeros(1, 3, 2, 8, 8))


def test_unsupported_padding_mode_and_unused_weights_are_refused():
  class Net(torch.nn.Module):
    def __init__(self, padding_mode):
      super().__init__()
      self.conv = torch.nn.Conv3d(3, 4, 3, padding=1, padding_mode=padding_mode)
      self.unused = torch.nn.Linear(4, 4)

    def forward(self, x):
      return self.conv(x).mean((2, 3, 4))

  x = torch.zeros(1, 3, 2, 8, 8)
  with pytest.raises(torch_graph.TorchGraphError, match="padding_mode='reflect'.*at module conv"):
    sv.models.from_torch(Net("reflect"), x)
  with pytest.raises(torch_graph.TorchGraphError, match=r"2 parameter\(s\)/buffer\(s\) not used"
                     r".*unused.weight, unused.bias"):
    sv.models.from_torch(Net("zeros"), x)
  assert "unused" not in sv.models.from_torch(Net("zeros"), x, ignore=("unused.",)).variables


# ---------------------------------------------------------------------------
# Two streams, saving, the command line.


def test_two_towers_late_fusion_is_the_weighted_sum_of_their_scores():
  rgb = torch_modules.randomize(torch_modules.Tower2d(3), seed=5)
  flow = torch_modules.randomize(torch_modules.Tower2d(4), seed=6)
  xr, xf = torch.randn(2, 3, 16, 16), torch.randn(2, 4, 16, 16)
  a = sv.models.from_torch(rgb, xr, "rgb")
  m = sv.models.from_torch(flow, xf, "flow", (-20.0, 20.0))
  both = sv.models.two_stream(a, m, logit_weights=(1.0, 1.5))
  with torch.no_grad():
    ref = rgb(xr) + 1.5 * flow(xf)
  inputs = {"rgb": torch_graph.torch_input(xr), "flow": torch_graph.flow_input(xf)}
  assert rel_err(both(inputs), ref.numpy()) <= TOL
  assert "rgb/block" in both.spec.layers and "flow/block" in both.spec.layers


def test_a_named_fusion_point_feeds_the_sum_to_the_appearance_tower():
  rgb = torch_modules.randomize(torch_modules.Tower2d(3), seed=7)
  flow = torch_modules.randomize(torch_modules.Tower2d(4), seed=8)
  xr, xf = torch.randn(1, 3, 16, 16), torch.randn(1, 4, 16, 16)
  both = sv.models.two_stream(sv.models.from_torch(rgb, xr, "rgb"),
                              sv.models.from_torch(flow, xf, "flow"), fusion="block")
  seen = {}
  h = flow.block.register_forward_hook(lambda mod, i, o: seen.__setitem__("f", o))
  with torch.no_grad():
    motion = flow(xf)
    h.remove()
    h = rgb.block.register_forward_hook(lambda mod, i, o: o + seen["f"])
    appearance = rgb(xr)
    h.remove()
  inputs = {"rgb": torch_graph.torch_input(xr), "flow": torch_graph.flow_input(xf)}
  feats = both.activations(inputs, ["fusion/block", "logits"])
  assert rel_err(feats["logits"], (appearance + 1.5 * motion).numpy()) <= TOL
  assert feats["fusion/block"].shape == (1, 1, 16, 16, 8)
  with pytest.raises(ValueError, match="fusion point 'nope' is not a layer of the rgb tower"):
    sv.models.two_stream(sv.models.from_torch(rgb, xr, "rgb"),
                         sv.models.from_torch(flow, xf, "flow"), fusion="nope")


def test_saved_model_loads_with_the_same_outputs(tmp_path):
  module = torch_modules.randomize(torch_modules.MeanHead())
  model = sv.models.from_torch(module, torch.zeros(1, 3, 4, 16, 16))
  converted.save(str(tmp_path / "w"), model, {"note": "test"})
  again = sv.models.load("converted", weights=str(tmp_path / "w"))
  x = model.example_inputs(batch=2)
  np.testing.assert_array_equal(np.asarray(again(x)), np.asarray(model(x)))
  assert again.spec.layers == model.spec.layers


def test_cli_round_trip_writes_a_dir_that_loads_with_the_same_outputs(tmp_path):
  from converters import torch_graph as cli  # pylint: disable=g-import-not-at-top
  module = torch_modules.randomize(torch_modules.Branchy(), seed=9)
  weights = str(tmp_path / "branchy.pth")
  torch.save(module.state_dict(), weights)
  out = str(tmp_path / "w")
  assert cli.main(["--model", "torch_modules.Branchy", "--kwargs", '{"num_classes": 5}',
                   "--weights", weights, "--out", out, "--input", "3,4,16,16",
                   "--value-range=-2,2"]) == 0
  meta = json.load(open(os.path.join(out, "metadata.json")))
  assert meta["architecture"] == "converted" and meta["source_sha256"]
  model = sv.models.load("converted", weights=out)
  assert model.spec.streams["rgb"].value_range == (-2.0, 2.0)
  x = torch.randn(2, 3, 4, 16, 16)
  with torch.no_grad():
    ref = module(x).numpy()
  assert rel_err(model({"rgb": torch_graph.torch_input(x)}), ref) <= TOL


def test_cli_fuses_two_converted_towers_into_one_two_stream_dir(tmp_path):
  from converters import torch_graph as cli  # pylint: disable=g-import-not-at-top
  rgb, flow, two = (str(tmp_path / d) for d in ("rgb", "flow", "two"))
  assert cli.main(["--model", "torch_modules.Tower2d", "--out", rgb, "--input", "3,16,16"]) == 0
  assert cli.main(["--model", "torch_modules.Tower2d", "--kwargs", '{"in_channels": 4}',
                   "--out", flow, "--input", "4,16,16", "--stream", "flow", "--seed", "1",
                   "--value-range=-20,20"]) == 0
  assert cli.main(["--towers", f"{rgb},{flow}", "--out", two, "--fusion", "block",
                   "--logit-weights", "1,2"]) == 0
  both = sv.models.load("converted", weights=two)
  a, m = (sv.models.load("converted", weights=d) for d in (rgb, flow))
  x = both.example_inputs(batch=2)
  assert set(both.spec.streams) == {"rgb", "flow"} and "fusion/block" in both.spec.layers
  np.testing.assert_allclose(
      both(x), sv.models.two_stream(a, m, logit_weights=(1, 2), fusion="block")(x), rtol=1e-6)


def test_cli_errors_are_one_line_and_write_nothing(tmp_path, capsys):
  from converters import torch_graph as cli  # pylint: disable=g-import-not-at-top
  out = str(tmp_path / "w")
  assert cli.main(["--model", "torch_modules.Upsampler", "--out", out,
                   "--input", "3,2,8,8"]) == 2
  assert not os.path.exists(out)
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and err[0].startswith("error: ") and "interpolate" in err[0], err
  bad = str(tmp_path / "bad.pth")
  torch.save(torch_modules.MeanHead().state_dict(), bad)
  assert cli.main(["--model", "torch_modules.Branchy", "--weights", bad, "--out", out,
                   "--input", "3,4,16,16"]) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and "missing" in err[0] and "unexpected" in err[0], err
  assert not os.path.exists(out)
  os.makedirs(out)
  open(os.path.join(out, "notes.txt"), "w").close()
  assert cli.main(["--model", "torch_modules.MeanHead", "--out", out, "--input", "3,4,16,16"]) == 2
  assert "is not a previous conversion" in capsys.readouterr().err
  assert cli.main(["--model", "torch_modules.Nope", "--out", str(tmp_path / "x")]) == 2
  assert "cannot import it" in capsys.readouterr().err


# ---------------------------------------------------------------------------
# The engine's known answer on a converted net.


def test_converted_rightward_unit_yields_rightward_flow():
  import handbuilt  # pylint: disable=g-import-not-at-top
  model = sv.models.from_torch(torch_modules.Motion(), torch.zeros(1, 2, 3, 16, 16), "flow",
                               (-10.0, 10.0))
  r = sv.visualize(model, "motion", [0, 1], handbuilt.config(steps=60), seed=0)
  right, left = r.inputs["flow"][0], r.inputs["flow"][1]
  u, v = right[..., 0].mean(), right[..., 1].mean()
  assert u > 0 and u > 10 * abs(v), (u, v)
  assert left[..., 0].mean() < 0


# ---------------------------------------------------------------------------
# torchvision.


def _video(name, **kwargs):
  import torchvision  # pylint: disable=g-import-not-at-top
  return torch_modules.randomize(getattr(torchvision.models.video, name)(
      weights=None, num_classes=10, **kwargs))


@needs_torchvision
@pytest.mark.parametrize("name", ["r3d_18", "mc3_18", "r2plus1d_18"])
def test_torchvision_video_resnets_match_torch(name):
  x = torch.randn(1, 3, 8, 32, 32)
  _assert_close(compare(_video(name), x, ["stem", "layer2.0.conv1", "layer3.1.conv2",
                                          "layer4", "avgpool"]))


@needs_torchvision
def test_torchvision_s3d_matches_torch():
  module = _video("s3d")
  # Its head pools (2, 7, 7) of a 16 x 224 x 224 clip; a 8 x 64 x 64 clip ends in 1 x 2 x 2.
  module.avgpool = torch.nn.AvgPool3d((1, 2, 2), stride=1)
  _assert_close(compare(module, torch.randn(1, 3, 8, 64, 64),
                        ["features.0", "features.3", "features.8", "features.15"]))


def _image(name, **kwargs):
  import torchvision  # pylint: disable=g-import-not-at-top
  return torch_modules.randomize(getattr(torchvision.models, name)(
      weights=None, num_classes=10, **kwargs))


@needs_torchvision
def test_torchvision_resnet50_matches_torch():
  _assert_close(compare(_image("resnet50"), torch.randn(1, 3, 64, 64),
                        ["bn1", "layer1.0", "layer3.1.bn2", "layer4"]))


@needs_torchvision
def test_torchvision_inception_v3_matches_torch_and_names_unused_aux_weights():
  module = _image("inception_v3", init_weights=False)  # aux_logits: unused in eval mode
  x = torch.randn(1, 3, 80, 80)
  with pytest.raises(torch_graph.TorchGraphError, match=r"not used .*AuxLogits\."):
    sv.models.from_torch(module, x)
  _assert_close(compare(module, x, ["Conv2d_1a_3x3", "Mixed_5b", "Mixed_6e", "Mixed_7c"],
                        ignore=("AuxLogits.",)))


@needs_torchvision
@pytest.mark.slow
def test_torchvision_vgg16_matches_torch():
  # AdaptiveAvgPool2d((7, 7)) needs a 7 x 7 (or 14, 21, ...) pool5: 224 x 224 input.
  _assert_close(compare(_image("vgg16"), torch.randn(1, 3, 224, 224),
                        ["features.0", "features.16", "features.28", "classifier.0"]))


def test_main_job_runs_on_a_converted_weights_dir(tmp_path):
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  from converters import torch_graph as cli  # pylint: disable=g-import-not-at-top
  out = str(tmp_path / "w")
  assert cli.main(["--model", "torch_modules.MeanHead", "--out", out, "--input", "3,4,16,16"]) == 0
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  work = str(tmp_path / "vis")
  p = subprocess.run([sys.executable, "-m", "stviz_jax.main",
                      f"--config=configs/torch_graph.py:{out},quick", f"--workdir={work}",
                      "--config.layer=conv2", "--config.units=0-1"],
                     cwd=root, capture_output=True, text=True, timeout=600)
  assert p.returncode == 0, p.stderr[-2000:]
  summary = json.load(open(os.path.join(work, "summary.json")))
  assert summary["model"] == "MeanHead" and "conv2" in summary["targets"]
