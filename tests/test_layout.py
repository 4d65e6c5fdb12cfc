"""stviz_jax.layout: the work directory's names, written by the job and read
by the gallery through the same functions; settings named, labelled and
ordered one way (numerically, also for an RGB-only 3D ConvNet)."""

import os

import numpy as np
import pytest

from stviz_jax import gallery, layout
from stviz_jax.optimize import Result


@pytest.mark.parametrize("settings,name,label", [
    ({"flow": (1.0, 10.0)}, "kappa1_gamma10", "κ=1, γ=10"),
    ({"rgb": (1.0, 1.0), "flow": (0.5, 0.0)}, "kappa0.5_gamma0", "κ=0.5, γ=0"),
    ({"rgb": (1.0, 2.5)}, "kappa1_gamma2.5", "κ=1, γ=2.5"),   # I3D: the RGB clip stream.
    ({}, "default", "default"),
])
def test_setting_name_and_label_round_trip(settings, name, label):
  assert layout.setting_name(settings) == name
  assert layout.setting_label(name) == label
  if settings:
    assert layout.parse_setting(name) == layout.temporal_setting(settings)


def test_settings_sort_numerically_not_as_text():
  names = ["kappa1_gamma10", "kappa1_gamma5", "default", "kappa1_gamma0", "kappa1_gamma1"]
  assert sorted(names, key=layout.setting_order) == [
      "kappa1_gamma0", "kappa1_gamma1", "kappa1_gamma5", "kappa1_gamma10", "default"]


def test_unit_files_parse_back():
  assert layout.unit_file(3, ".npz") == "unit_0003.npz"
  assert layout.unit_of_file(layout.samples_file(12)) == 12
  assert layout.unit_of_file(layout.sample_stem(7, 2, "flow") + ".gif") == 7
  assert layout.sample_stem(7, 0, "rgb") == "unit_0007_rgb"
  assert layout.unit_of_file("result.npz") is None
  assert layout.is_host_dir(layout.host_dir(3)) and not layout.is_host_dir("host_x")


def test_gallery_orders_an_rgb_only_run_by_gamma(tmp_path):
  """An RGB-only 3D ConvNet has no flow stream: gamma 5 still comes before 10."""
  for g in (10.0, 0.0, 5.0, 1.0):
    tv = {"rgb": (1.0, g)}
    d = tmp_path / "Mixed_4f" / layout.setting_name(tv)
    Result(layer="Mixed_4f", units=np.arange(2, dtype=np.int32),
           inputs={"rgb": np.zeros((2, 4, 8, 8, 3), np.float32)},
           activations=np.ones(2, np.float32),
           history={"objective": np.zeros((2, 3), np.float32)}, a_hat_given=False, seed=0,
           settings=tv).save(os.path.join(str(d), layout.RESULT_FILE))
  (layer,) = gallery.discover(str(tmp_path))
  assert [r.name for r in layer.runs] == [
      "kappa1_gamma0", "kappa1_gamma1", "kappa1_gamma5", "kappa1_gamma10"]
  assert [r.label() for r in layer.runs] == ["κ=1, γ=0", "κ=1, γ=1", "κ=1, γ=5", "κ=1, γ=10"]
