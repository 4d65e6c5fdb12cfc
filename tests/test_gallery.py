"""The HTML gallery of a tiny run: every link resolves, the content is the run's."""

import html.parser
import json
import os
import re
import shutil
import subprocess
import sys

import imageio.v3 as iio
import numpy as np
import pytest

from stviz_jax import gallery, plots, render
from stviz_jax.optimize import Result

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class _Links(html.parser.HTMLParser):
  """Collects src/href/data-stem attributes and <pre> blocks of a page."""

  def __init__(self):
    super().__init__()
    self.refs, self.stems, self.pres, self.tags = [], [], [], []
    self._in_pre = False

  def handle_starttag(self, tag, attrs):
    attrs = dict(attrs)
    self.tags.append((tag, attrs))
    for key in ("src", "href"):
      if attrs.get(key):
        self.refs.append(attrs[key])
    if attrs.get("data-stem"):
      self.stems.append((tag, attrs["data-stem"], attrs.get("data-ext", "png")))
    if tag == "pre":
      self._in_pre = True
      self.pres.append("")

  def handle_endtag(self, tag):
    if tag == "pre":
      self._in_pre = False

  def handle_data(self, data):
    if self._in_pre:
      self.pres[-1] += data


def _parse(path):
  p = _Links()
  with open(path, encoding="utf-8") as f:
    p.feed(f.read())
  return p


def _pages(workdir):
  out = []
  for root, _, files in os.walk(workdir):
    out += [os.path.join(root, f) for f in files if f.endswith(".html")]
  return sorted(out)


def _local(page, ref):
  from urllib.parse import unquote
  ref = ref.split("#")[0]
  return os.path.normpath(os.path.join(os.path.dirname(page), unquote(ref)))


def _check_links(workdir, settings, not_run=()):
  """Every src/href of every page, and every video source, is a local file.

  `not_run`: (setting, "unit_0003") pairs that were never optimised.
  """
  checked = 0
  for page in _pages(workdir):
    p = _parse(page)
    for ref in p.refs:
      assert "://" not in ref, (page, ref)           # offline: no server, no network
      assert os.path.isfile(_local(page, ref)), (page, ref)
      checked += 1
    for tag, stem, ext in p.stems:
      exts = ["webm", "mp4", "gif"] if tag == "video" else [ext]
      for s in settings if "{setting}" in stem else [None]:
        if any(s == a and b in stem for a, b in not_run):
          continue
        for e in exts:
          target = _local(page, stem.replace("{setting}", s or "") + "." + e)
          assert os.path.isfile(target), (page, target)
          checked += 1
  return checked


def test_job_writes_gallery_and_every_link_resolves(run_dir):
  names = {os.path.relpath(p, run_dir) for p in _pages(run_dir)}
  assert names == {"index.html", "gallery/fusion/index.html",
                   "gallery/fusion/unit_0000.html", "gallery/fusion/unit_0001.html",
                   "gallery/fusion/unit_0002.html"}
  assert _check_links(run_dir, ["kappa1_gamma0", "kappa1_gamma10"]) > 50


def test_hosts_of_a_sweep_merge_into_one_layer(tmp_path):
  """host_<k>/<layer>/<setting>/result.npz of a multi-host sweep: one page per layer."""
  rng = np.random.default_rng(0)
  for host, host_units in enumerate([[0, 2, 4], [1, 3]]):
    for g in (0.0, 10.0):
      # Host 1 was preempted before unit 3 under gamma = 10.
      units = [1] if (host, g) == (1, 10.0) else host_units
      n = len(units)
      Result(layer="flow/conv1", units=np.array(units),
             inputs={"rgb": rng.normal(size=(n, 1, 6, 6, 3)),
                     "flow": rng.normal(size=(n, 2, 6, 6, 2))},
             activations=np.array(units) / 10 + g,
             history={"objective": rng.normal(size=(n, 3))}, a_hat_given=False, seed=0,
             settings={"flow": (1.0, g)}).save(
                 str(tmp_path / f"host_{host}" / "flow_conv1" / f"kappa1_gamma{g:g}" /
                     "result.npz"))
  (layer,) = gallery.discover(str(tmp_path))
  assert (layer.layer, layer.rel_dir, layer.units) == ("flow/conv1", "flow_conv1",
                                                       [0, 1, 2, 3, 4])
  for run, g in zip(layer.runs, (0.0, 10.0)):
    done = [0, 1, 2, 3, 4] if g == 0 else [0, 1, 2, 4]
    assert [run.activations[run.index(u)] for u in done] == pytest.approx(
        [u / 10 + g for u in done])
  assert layer.runs[1].index(3) is None
  gallery.build(str(tmp_path), formats=("png", "webm", "mp4", "gif"))
  _check_links(str(tmp_path), ["kappa1_gamma0", "kappa1_gamma10"],
               not_run=[("kappa1_gamma10", "unit_0003")])
  with open(tmp_path / "gallery" / "flow_conv1" / "unit_0003.html") as f:
    assert "not run for this setting" in f.read()
  p = _parse(str(tmp_path / "gallery" / "flow_conv1" / "index.html"))
  tiles = {a["data-unit"]: json.loads(a["data-acts"]) for t, a in p.tags
           if t == "div" and a.get("class") == "tile"}
  assert list(tiles) == ["0", "1", "2", "3", "4"]
  assert tiles["3"] == {"kappa1_gamma0": pytest.approx(0.3)}
  with open(tmp_path / "gallery" / "flow_conv1" / "index.html") as f:
    text = f.read()
  assert "host_1/flow_conv1/{setting}/unit_0003_flow" in text
  assert "host_0/flow_conv1/{setting}/unit_0004_flow" in text


def test_layer_page_tiles_and_setting_switch(run_dir):
  page = os.path.join(run_dir, "gallery", "fusion", "index.html")
  p = _parse(page)
  tiles = [a for t, a in p.tags if t == "div" and a.get("class") == "tile"]
  assert [int(a["data-unit"]) for a in tiles] == [0, 1, 2]
  radios = [a["value"] for t, a in p.tags if t == "input" and a.get("name") == "setting"]
  assert radios == ["kappa1_gamma0", "kappa1_gamma10"]
  with open(os.path.join(run_dir, "summary.json")) as f:
    summary = json.load(f)["layers"]["fusion"]
  for a in tiles:
    acts = json.loads(a["data-acts"])
    for s in radios:
      assert acts[s] == pytest.approx(summary[s]["activations"][a["data-unit"]])
  videos = [a for t, a in p.tags if t == "video"]
  assert len(videos) == 3
  assert all(a["preload"] == "none" and "src" not in a and "loop" in a for a in videos)
  imgs = [a for t, a in p.tags if t == "img" and "data-stem" in a]
  assert len(imgs) == 3 and all(a["loading"] == "lazy" for a in imgs)
  with open(page) as f:
    text = f.read()
  assert "κ=1, γ=10" in text


def test_unit_page_has_config_seed_history_and_rows(run_dir):
  page = os.path.join(run_dir, "gallery", "fusion", "unit_0001.html")
  p = _parse(page)
  with open(os.path.join(run_dir, "config.json")) as f:
    config = json.load(f)
  per_setting, exact = (json.loads(t) for t in p.pres)
  assert exact == config
  assert [c["setting"] for c in per_setting] == ["kappa1_gamma0", "kappa1_gamma10"]
  assert [c["regularisation (kappa, gamma)"]["flow"] for c in per_setting] == [[1, 0], [1, 10]]
  assert all(c["seed"] == config["seed"] for c in per_setting)
  # One row per setting, each with the appearance image and the flow video of unit 1.
  media = [a.get("src") or a.get("data-stem") for t, a in p.tags if t in ("img", "video")
           and "data-stem" in a]
  srcs = [m for m in media if "_attribution_" not in m]
  # The attribution overlays (config.insight.attribution) come after, one per stream.
  assert [m for m in media if "_attribution_" in m] == [
      f"../../fusion/{s}/unit_0001_attribution_{v}" for s in ("kappa1_gamma0", "kappa1_gamma10")
      for v in ("flow", "rgb.png")]
  assert srcs == ["../../fusion/kappa1_gamma0/unit_0001_rgb.png",
                  "../../fusion/kappa1_gamma0/unit_0001_flow",
                  "../../fusion/kappa1_gamma10/unit_0001_rgb.png",
                  "../../fusion/kappa1_gamma10/unit_0001_flow"]
  hist = iio.imread(os.path.join(run_dir, "gallery", "fusion", "unit_0001_history.png"))
  assert hist.shape[0] > 100 and hist.std() > 10          # a drawn plot, not blank
  with open(page) as f:
    text = f.read()
  assert "No dataset statistics" in text


def test_figure_holds_the_most_active_units_raw_arrays(run_dir):
  cells, rows, cols = render.load_figure_cells(
      os.path.join(run_dir, "gallery", "fusion", "figure.npz"))
  assert rows == ["unit 0", "unit 1", "unit 2"]
  assert cols == ["kappa=1 gamma=0", "kappa=1 gamma=10"]
  for j, s in enumerate(["kappa1_gamma0", "kappa1_gamma10"]):
    result = Result.load(os.path.join(run_dir, "fusion", s, "result.npz"))
    for i in range(3):
      for stream in ("rgb", "flow"):
        np.testing.assert_array_equal(cells[i][j][stream], result.inputs[stream][i])


def test_missing_media_are_rerendered_identically(run_dir, tmp_path):
  """A sweep that only wrote result.npz still gets every medium and raw array."""
  work = str(tmp_path / "w")
  for s in ("kappa1_gamma0", "kappa1_gamma10"):
    os.makedirs(os.path.join(work, "fusion", s))
    shutil.copy(os.path.join(run_dir, "fusion", s, "result.npz"),
                os.path.join(work, "fusion", s))
  shutil.copy(os.path.join(run_dir, "config.json"), work)
  # The command line, as a researcher runs it.
  proc = subprocess.run([sys.executable, "-m", "stviz_jax.gallery", f"--workdir={work}",
                         "--encodings=rgb,hsv"], cwd=REPO, capture_output=True, text=True,
                        timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
  for s in ("kappa1_gamma0", "kappa1_gamma10"):
    for u in range(3):
      stem = f"unit_{u:04d}"
      for name in (f"{stem}_rgb.png", f"{stem}_flow.png"):
        np.testing.assert_array_equal(iio.imread(os.path.join(work, "fusion", s, name)),
                                      iio.imread(os.path.join(run_dir, "fusion", s, name)))
      for ext in ("gif", "mp4", "webm"):
        assert os.path.getsize(os.path.join(work, "fusion", s, f"{stem}_flow_hsv.{ext}"))
      with np.load(os.path.join(work, "fusion", s, stem + ".npz")) as a, \
          np.load(os.path.join(run_dir, "fusion", s, stem + ".npz")) as b:
        for key in ("inputs_rgb", "inputs_flow", "activation", "unit", "seed"):
          np.testing.assert_array_equal(a[key], b[key])
  with open(os.path.join(work, "gallery", "fusion", "index.html")) as f:
    text = f.read()
  assert "flow_hsv" in text and "flow_legend_hsv.png" in text
  assert os.path.isfile(os.path.join(work, "gallery", "flow_legend_hsv.png"))


def _stats_json(path, units=16, classes=12):
  rng = np.random.default_rng(0)
  per_class = rng.uniform(size=(units, classes))
  names = [f"class{k:02d}" for k in range(classes)]
  thumb = os.path.join(os.path.dirname(path), "thumb.png")
  render.save_png(thumb, np.zeros((8, 8, 3), np.uint8))
  data = {"class_names": names, "layers": {"fusion": {
      "a_hat": list(np.arange(units) + 0.5),
      "per_class_max": per_class.tolist(),
      "top_clips": {"1": [{"score": 9.5, "class": 3, "video": "clips/a.avi", "frame": 7,
                           "thumbnail": "thumb.png"}]}}}}
  with open(path, "w") as f:
    json.dump(data, f)
  return per_class, names


def test_statistics_are_shown_when_given(run_dir, tmp_path):
  work = str(tmp_path / "w")
  shutil.copytree(run_dir, work)
  stats_path = str(tmp_path / "stats.json")
  per_class, names = _stats_json(stats_path)
  gallery.build(work, stats=stats_path)
  with open(os.path.join(work, "gallery", "fusion", "unit_0001.html")) as f:
    text = f.read()
  assert "â = 1.5" in text                               # a_hat of unit 1
  assert "class03" in text and "9.5" in text and "frame 7" in text
  assert "No dataset statistics" not in text
  assert os.path.isfile(os.path.join(work, "gallery", "fusion", "unit_0001_classes.png"))
  with open(os.path.join(work, "gallery", "fusion", "index.html")) as f:
    layer_page = f.read()
  best = names[int(np.argmax(per_class[2]))]
  assert re.search(r'data-unit="2".*?' + best, layer_page, re.S)
  # The same statistics as npz load to the same values.
  npz = str(tmp_path / "stats.npz")
  np.savez(npz, class_names=np.asarray(names), **{
      "fusion/a_hat": np.arange(16) + 0.5, "fusion/per_class_max": per_class,
      "fusion/top_scores": np.full((16, 1), 9.5), "fusion/top_labels": np.full((16, 1), 3)})
  a, b = gallery.load_stats(stats_path)["fusion"], gallery.load_stats(npz)["fusion"]
  np.testing.assert_allclose(a.a_hat, b.a_hat)
  np.testing.assert_allclose(a.per_class_max, b.per_class_max)
  assert b.top_clips[1][0]["class"] == "class03" == a.top_clips[1][0]["class"]


def test_statistics_from_the_stats_module(run_dir, tmp_path):
  """stviz_jax.stats output (npz with thumbnails) shows on the unit pages."""
  from stviz_jax import models, stats
  from stviz_jax.data import clips
  rng = np.random.default_rng(0)
  n = 9
  data = clips.ArrayClips({"rgb": rng.normal(size=(n, 1, 32, 32, 3)),
                           "flow": rng.normal(size=(n, 4, 32, 32, 2))},
                          np.arange(n) % 3, ("walk", "run", "jump"))
  model = models.load("tiny_two_stream")
  st = stats.compute(model, data, ["fusion"], batch_size=3, top_k=4)
  work = str(tmp_path / "w")
  shutil.copytree(run_dir, work)
  thumbnails = stats.thumbnails(model, st, data)
  st.save(os.path.join(work, "stats.npz"), data, thumbnails)
  gallery.build(work)  # finds DIR/stats.npz by itself
  d = st.layers["fusion"]
  page = os.path.join(work, "gallery", "fusion", "unit_0002.html")
  with open(page) as f:
    text = f.read()
  assert f"â = {float(d['a_hat'][2]):.4g}" in text
  ranked = [int(c) for c in d["top_clips"][2] if c >= 0]
  assert [int(m) for m in re.findall(r"clip (\d+), frame", text)] == ranked
  thumbs = [a["src"] for t, a in _parse(page).tags
            if t == "img" and a.get("src", "").startswith("stats/")]
  assert len(thumbs) == len(ranked)
  np.testing.assert_array_equal(iio.imread(_local(page, thumbs[0])),
                                thumbnails["fusion"][2, 0])
  assert os.path.isfile(os.path.join(work, "gallery", "fusion", "unit_0002_classes.png"))


def test_bad_statistics_name_the_file_and_field(tmp_path):
  path = str(tmp_path / "s.json")
  with open(path, "w") as f:
    json.dump({"class_names": ["a", "b"], "layers": {"fusion": {"per_class_max": [[1, 2, 3]]}}}, f)
  with pytest.raises(ValueError, match=r"s\.json: layer 'fusion' per_class_max has shape"):
    gallery.load_stats(path)
  with pytest.raises(FileNotFoundError, match="does not exist"):
    gallery.build(str(tmp_path / "nowhere"))


def test_class_activity_shows_top_classes_in_order(tmp_path):
  values = np.array([0.1, 0.9, 0.5, 0.7, 0.2, 0.95, 0.0, 0.3, 0.6, 0.8, 0.4, 0.05])
  order = plots.class_activity(str(tmp_path / "c.png"), [f"c{i}" for i in range(12)],
                               values, top=10)
  assert order == list(np.argsort(-values)[:10])
  img = iio.imread(tmp_path / "c.png")
  assert img.ndim == 3 and img.std() > 10
  with pytest.raises(ValueError, match="expected \\(3,\\)"):
    plots.class_activity(str(tmp_path / "d.png"), ["a", "b", "c"], values)
