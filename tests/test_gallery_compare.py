"""Gallery pages comparing two class units side by side (the paper's Figs. 13-15),
from `configs/synthetic_lucid.py:compare` on the shipped synthetic model: the
page shows both class units and the class contrast, every medium it names is
on disk and is that unit's, two targets of one layer stay apart, and bad
class names give one-line errors naming the field and valid classes."""

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys

import pytest

from stviz_jax import gallery, job
from test_gallery import _check_links, _local, _parse

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SETTINGS = ["kappa1_gamma0", "kappa1_gamma10"]
PAGE = os.path.join("gallery", "compare", "class_0000_vs_0002.html")


def _config(**compare):
  spec = importlib.util.spec_from_file_location(
      "synthetic_lucid", os.path.join(ROOT, "configs", "synthetic_lucid.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  c = module.get_config("compare")
  c.steps = 2
  # The trained net at a smaller input; pixels and the paper's jitter compile
  # faster than the variant's Fourier + Lucid transforms (not what is tested here).
  c.model_overrides = dict(size=16, frames=3)
  c.param.kind, c.param.colour, c.transforms = "pixel", "none", "jitter"
  for k, v in compare.items():
    setattr(c.gallery, k, v)
  return c


@pytest.fixture(scope="module")
def compare_run(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("compare") / "run")
  summary = job.run(_config(), workdir)
  return workdir, summary


def _cells(page):
  """Per table row of the page: the media sources (img src / video data-stem) in order."""
  text = open(page, encoding="utf-8").read()
  rows = re.findall(r"<tr><th>([^<]*)</th>(.*?)</tr>", text, re.S)
  return {label: re.findall(r'(?:src|data-stem)="([^"]+)"', body) for label, body in rows
          if label != "setting"}


def test_compare_page_shows_both_class_units_and_the_contrast(compare_run):
  workdir, summary = compare_run
  assert summary["comparisons"] == [{"a": 0, "b": 2, "names": ["red right", "red left"]}]
  page = os.path.join(workdir, PAGE)
  index = _parse(os.path.join(workdir, "index.html"))
  assert "gallery/compare/class_0000_vs_0002.html" in index.refs
  text = open(page, encoding="utf-8").read()
  heads = re.findall(r"<th><a href=\"([^\"]+)\">([^<]+)</a>", text)
  assert heads == [("../classes/unit_0000.html", "red right (class 0)"),
                   ("../classes/unit_0002.html", "red left (class 2)"),
                   ("../contrast/unit_0000.html", "red right − red left (class contrast)")]
  cells = _cells(page)
  assert list(cells) == ["κ=1, γ=0", "κ=1, γ=10"]
  for (label, srcs), setting in zip(cells.items(), SETTINGS):
    # Appearance then flow of A, of B, of the contrast: each that unit's own files.
    unique = list(dict.fromkeys(srcs))
    assert unique == [f"../../classes/{setting}/unit_0000_rgb.png",
                      f"../../classes/{setting}/unit_0000_rgb",
                      f"../../classes/{setting}/unit_0000_flow",
                      f"../../classes/{setting}/unit_0002_rgb.png",
                      f"../../classes/{setting}/unit_0002_rgb",
                      f"../../classes/{setting}/unit_0002_flow",
                      f"../../contrast/{setting}/unit_0000_rgb.png",
                      f"../../contrast/{setting}/unit_0000_rgb",
                      f"../../contrast/{setting}/unit_0000_flow"], label
    for stem in unique:
      exts = [""] if stem.endswith(".png") else (
          [".png"] if stem.endswith("_rgb") else [".webm", ".mp4", ".gif"])
      for ext in exts:
        assert os.path.isfile(_local(page, stem + ext)), stem + ext
  # Captions: each unit's final activation (summary.json) and its class rank.
  acts = re.findall(r"a = ([-\d.e+]+) · rank (\d+) of the classes", text)
  expected = []
  for setting in SETTINGS:
    for target, unit in (("classes", 0), ("classes", 2), ("contrast", 0)):
      entry = summary["layers"][target][setting]
      expected.append((entry["activations"][str(unit)], entry["class_ranks"][str(unit)]["rank"]))
  assert [(float(a), int(r)) for a, r in acts] == [
      (pytest.approx(a, rel=1e-3), r) for a, r in expected]
  assert _check_links(workdir, SETTINGS) > 50    # every link of every page resolves.


def test_two_targets_of_one_layer_stay_apart_and_link_the_page(compare_run):
  workdir, summary = compare_run
  layers = {l.rel_dir: l for l in gallery.discover(workdir)}
  assert sorted(layers) == ["classes", "contrast"]
  assert layers["classes"].units == [0, 2] and layers["contrast"].units == [0]
  assert (layers["classes"].kind, layers["contrast"].kind) == ("class_logit", "class_contrast")
  p = _parse(os.path.join(workdir, "gallery", "contrast", "index.html"))
  tiles = {a["data-unit"]: json.loads(a["data-acts"]) for t, a in p.tags
           if t == "div" and a.get("class") == "tile"}
  assert tiles["0"] == {s: pytest.approx(summary["layers"]["contrast"][s]["activations"]["0"])
                        for s in SETTINGS}
  for target, unit in (("classes", 0), ("classes", 2), ("contrast", 0)):
    refs = _parse(os.path.join(workdir, "gallery", target, f"unit_{unit:04d}.html")).refs
    assert "../compare/class_0000_vs_0002.html" in refs
  refs = _parse(os.path.join(workdir, "gallery", "classes", "unit_0002.html")).refs
  assert "../compare/class_0000_vs_0002.html" in refs
  text = open(os.path.join(workdir, "gallery", "contrast", "index.html"), encoding="utf-8").read()
  assert "layer contrast (logits)" in text


def test_gallery_compare_by_index_and_bad_names(compare_run, tmp_path):
  workdir, _ = compare_run
  work = str(tmp_path / "w")
  shutil.copytree(workdir, work)
  gallery.build(work, compare="2:0")
  page = os.path.join(work, "gallery", "compare", "class_0002_vs_0000.html")
  text = open(page, encoding="utf-8").read()
  assert re.findall(r"<th><a href=\"[^\"]+\">([^<]+)</a>", text) == [
      "red left (class 2)", "red right (class 0)", "red right − red left (class contrast)"]
  with pytest.raises(ValueError, match=r"^compare: unknown class 'purple'; classes of this "
                                       r"run: 'red right' \(0\), 'red left' \(2\)$"):
    gallery.build(work, compare="purple:red left")
  with pytest.raises(ValueError, match=r"^compare: class 5 \(unit 5\) is not visualised by a "
                                       r"class_logit target on 'logits' in .*\(visualised: "
                                       r"\[0, 2\]\)$"):
    gallery.build(work, compare="0:5")


@pytest.mark.parametrize("spec,message", [
    ("red rigth:red left", r"^config\.gallery\.compare: unknown class 'red rigth' of model "
                           r"'synthetic_two_stream'; did you mean 'red right', "
                           r"'green right', 'blue right'$"),
    ("red:red left", r"did you mean 'red right', 'red down', 'red left', 'red up'$"),
    ("red up:red left", r"class 'red up' \(unit 3\) is not visualised in this run; add it to "
                        r"the units of a class_logit target on 'logits' \(visualised: \[0, 2\]\)$"),
    ("red right", r"'red right' is not a pair 'A:B'"),
    ("0:0", r"compares class 0 with itself"),
])
def test_bad_compare_fails_before_optimising(spec, message, tmp_path):
  with pytest.raises(ValueError, match=message):
    job.run(_config(compare=spec), str(tmp_path / "run"))
  assert not os.path.exists(tmp_path / "run" / "classes")


def test_bad_class_name_is_one_line_on_the_command_line(tmp_path):
  proc = subprocess.run(
      [sys.executable, "-m", "stviz_jax.main", "--config=configs/synthetic_lucid.py:compare",
       f"--workdir={tmp_path / 'run'}", "--config.gallery.compare=cello:red left"],
      cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert proc.returncode != 0
  assert proc.stderr.strip().splitlines()[-1] == (
      "error: config.gallery.compare: unknown class 'cello' of model 'synthetic_two_stream'; "
      "valid classes include 'red right', 'red down', 'red left', 'red up', 'green right' "
      "(and 7 more)")


def test_gallery_command_line_compare(compare_run, tmp_path):
  work = str(tmp_path / "w")
  shutil.copytree(compare_run[0], work)
  run = lambda spec: subprocess.run(
      [sys.executable, "-m", "stviz_jax.gallery", f"--workdir={work}", f"--compare={spec}"],
      cwd=ROOT, capture_output=True, text=True, timeout=300)
  proc = run("blue:red right")
  assert proc.returncode != 0 and proc.stderr.strip().splitlines()[-1] == (
      "error: compare: unknown class 'blue'; classes of this run: 'red right' (0), "
      "'red left' (2)")
  assert run("red left:red right").returncode == 0
  assert os.path.isfile(os.path.join(work, "gallery", "compare", "class_0002_vs_0000.html"))
