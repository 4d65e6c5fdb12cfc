"""The gallery in a real browser: headless Chromium opens it from file://.

Needs the Debian packages `chromium` and `chromium-driver` (.ci/run installs
them) and selenium (the `test` extra); skipped with the reason when absent.
Run alone: `python -m pytest -q -m browser tests/test_gallery_browser.py`.
"""

import io
import pathlib
import shutil
import tempfile
import time

import numpy as np
from PIL import Image
import pytest


pytestmark = pytest.mark.browser

CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--window-size=1200,900",
                  "--autoplay-policy=no-user-gesture-required")


def _find(*names):
  for name in names:
    path = shutil.which(name)
    if path:
      return path
  return None


@pytest.fixture(scope="module")
def browser():
  webdriver = pytest.importorskip("selenium.webdriver",
                                  reason="selenium is not installed (pip install selenium)")
  from selenium.webdriver.chrome.service import Service
  binary = _find("chromium", "chromium-browser", "google-chrome")
  driver = _find("chromedriver")
  if not binary or not driver:
    pytest.skip("headless browser test needs chromium and chromedriver "
                "(apt-get install chromium chromium-driver)")
  profile = tempfile.mkdtemp(prefix="stviz_chromium_")
  options = webdriver.ChromeOptions()
  options.binary_location = binary
  for flag in CHROMIUM_FLAGS:
    options.add_argument(flag)
  options.add_argument(f"--user-data-dir={profile}")
  drv = webdriver.Chrome(options=options, service=Service(driver))
  drv.set_page_load_timeout(60)
  yield drv
  drv.quit()
  shutil.rmtree(profile, ignore_errors=True)


# Every <img> decoded with a size, every <video> with a frame and no error.
_MEDIA_STATE = """
const shown = el => !el.closest('.tile.missing');  // a unit not run under this setting
const imgs = Array.from(document.images).filter(shown).map(i => ({
  src: i.currentSrc || i.src, ok: i.complete && i.naturalWidth > 0}));
const vids = Array.from(document.querySelectorAll('video')).filter(shown).map(v => ({
  src: v.currentSrc, ok: v.readyState >= 2 && v.videoWidth > 0 && !v.error,
  error: v.error ? v.error.code : null}));
return {imgs: imgs, vids: vids, format: document.documentElement.dataset.videoFormat};
"""


def _scroll_through(drv):
  """Scrolls down the page step by step so lazy images and observed videos load."""
  height, view = drv.execute_script(
      "return [document.documentElement.scrollHeight, window.innerHeight]")
  for y in range(0, height + view, max(view // 2, 100)):
    drv.execute_script("window.scrollTo(0, arguments[0])", y)
    time.sleep(0.1)  # IntersectionObserver reports after the next frames.
  drv.execute_script("window.scrollTo(0, 0)")


def _wait_loaded(drv, timeout=30.0):
  deadline = time.time() + timeout
  while True:
    _scroll_through(drv)
    state = drv.execute_script(_MEDIA_STATE)
    if all(m["ok"] for m in state["imgs"] + state["vids"]) or time.time() > deadline:
      return state
    time.sleep(0.3)


def _assert_loaded(state):
  broken = [m for m in state["imgs"] + state["vids"] if not m["ok"]]
  assert not broken, f"media failed to load: {broken}"


def _frame_of_first_video(drv):
  """Pixels of the first tile's video, paused on its first frame."""
  drv.execute_async_script("""
    const done = arguments[arguments.length - 1];
    const v = document.querySelector('video');
    v.pause();
    if (v.currentTime === 0 && v.readyState >= 2) { done(); return; }
    v.addEventListener('seeked', () => done(), {once: true});
    v.currentTime = 0;""")
  el = drv.find_element("css selector", "video")
  return np.asarray(Image.open(io.BytesIO(el.screenshot_as_png)).convert("RGB"))


def _first_image(drv):
  el = drv.find_element("css selector", ".tile img")
  return np.asarray(Image.open(io.BytesIO(el.screenshot_as_png)).convert("RGB"))


def test_layer_page_plays_everything_and_switches_setting(browser, run_dir, tmp_path):
  page = pathlib.Path(run_dir, "gallery", "fusion", "index.html").as_uri()
  browser.set_script_timeout(30)
  browser.get(page)
  state = _wait_loaded(browser)
  browser.save_screenshot(str(tmp_path / "layer_gamma0.png"))
  _assert_loaded(state)
  assert state["format"] in ("webm", "mp4")
  assert len(state["vids"]) == 3 and len(state["imgs"]) >= 3
  assert all("/kappa1_gamma0/" in m["src"] for m in state["vids"])
  playing = browser.execute_script(
      "return Array.from(document.querySelectorAll('video')).map(v => !v.paused)")
  assert all(playing)
  before_img, before_vid = _first_image(browser), _frame_of_first_video(browser)

  browser.find_element("css selector", "input[name=setting][value=kappa1_gamma10]").click()
  state = _wait_loaded(browser)
  browser.save_screenshot(str(tmp_path / "layer_gamma10.png"))
  _assert_loaded(state)
  assert all("/kappa1_gamma10/" in m["src"] for m in state["vids"]), state["vids"]
  tile_imgs = [m["src"] for m in state["imgs"] if "/unit_" in m["src"]]
  assert len(tile_imgs) == 3 and all("/kappa1_gamma10/" in s for s in tile_imgs)
  after_img, after_vid = _first_image(browser), _frame_of_first_video(browser)
  # What is shown changed, not only the file names.
  assert before_img.shape == after_img.shape and not np.array_equal(before_img, after_img)
  assert before_vid.shape == after_vid.shape and not np.array_equal(before_vid, after_vid)
  assert browser.execute_script("return location.hash") == "#setting=kappa1_gamma10"
  # The chosen setting survives a reload (it lives in the URL).
  browser.refresh()
  state = _wait_loaded(browser)
  assert all("/kappa1_gamma10/" in m["src"] for m in state["vids"])
  # "[" steps back to the previous setting.
  browser.find_element("css selector", "body").send_keys("[")
  state = _wait_loaded(browser)
  assert all("/kappa1_gamma0/" in m["src"] for m in state["vids"])
  assert browser.execute_script("return location.hash") == "#setting=kappa1_gamma0"


def test_unit_and_index_pages_load_all_media(browser, run_dir, tmp_path):
  for rel in ("index.html", "gallery/fusion/unit_0002.html"):
    browser.get(pathlib.Path(run_dir, rel).as_uri())
    state = _wait_loaded(browser)
    browser.save_screenshot(str(tmp_path / (rel.replace("/", "_") + ".png")))
    _assert_loaded(state)
    if rel.startswith("gallery"):
      # One row per setting: appearance image + flow video each, the history plot, and
      # per setting the flow's attribution overlay (config.insight.attribution).
      assert len(state["vids"]) == 4
      assert sum("_attribution_flow" in m["src"] for m in state["vids"]) == 2
      assert any(m["src"].endswith("unit_0002_history.png") for m in state["imgs"])
    else:
      assert any(m["src"].endswith("figure.gif") for m in state["imgs"])
  shot = np.asarray(Image.open(tmp_path / "gallery_fusion_unit_0002.html.png"))
  assert shot.std() > 10                                 # something was drawn


def test_served_pages_play_every_clip(browser, run_dir, tmp_path):
  """`--serve`: the same pages over HTTP (for browsers that block file:// video)."""
  from stviz_jax.gallery import serve
  httpd = serve.serve_in_thread(run_dir)
  try:
    for page in ("index.html", "gallery/fusion/index.html", "gallery/fusion/unit_0002.html"):
      browser.get(serve.url(httpd, page))
      state = _wait_loaded(browser)
      browser.save_screenshot(str(tmp_path / (page.replace("/", "_") + ".png")))
      _assert_loaded(state)
      assert all(m["src"].startswith("http://127.0.0.1:") for m in state["imgs"] + state["vids"])
      if page != "index.html":
        assert state["vids"]
        playing = browser.execute_script(
            "return Array.from(document.querySelectorAll('video')).map(v => !v.paused)")
        assert all(playing)
  finally:
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(scope="module")
def many_units_dir(tmp_path_factory):
  """A gallery of 24 units (synthetic inputs, no optimisation)."""
  from stviz_jax import gallery
  from stviz_jax.optimize import Result
  rng = np.random.default_rng(0)
  units = 24
  workdir = tmp_path_factory.mktemp("many_units")
  result = Result(layer="fusion", units=np.arange(units),
                  inputs={"rgb": rng.normal(size=(units, 1, 8, 8, 3)),
                          "flow": rng.normal(size=(units, 2, 8, 8, 2))},
                  activations=rng.permutation(units) / units,
                  history={"objective": rng.normal(size=(units, 3))}, a_hat_given=False,
                  seed=0, settings={"flow": (1.0, 0.0)})
  result.save(str(workdir / "fusion" / "kappa1_gamma0" / "result.npz"))
  # gamma = 10 stopped before the last unit.
  partial = Result(layer="fusion", units=np.arange(units - 1),
                   inputs={k: v[:-1] for k, v in result.inputs.items()},
                   activations=result.activations[:-1],
                   history={"objective": result.history["objective"][:-1]},
                   a_hat_given=False, seed=0, settings={"flow": (1.0, 10.0)})
  partial.save(str(workdir / "fusion" / "kappa1_gamma10" / "result.npz"))
  gallery.build(str(workdir))
  return workdir, result


def test_offscreen_videos_load_only_when_scrolled_into_view(browser, many_units_dir):
  workdir, result = many_units_dir
  browser.set_window_size(700, 500)
  try:
    browser.get((workdir / "gallery" / "fusion" / "index.html").as_uri())
    time.sleep(1.0)
    with_src = browser.execute_script(
        "return Array.from(document.querySelectorAll('video')).map(v => v.hasAttribute('src'))")
    assert len(with_src) == 24
    assert with_src[0] and not with_src[-1], with_src   # lazy: the bottom waits
    _assert_loaded(_wait_loaded(browser))                # scrolling loads all
    # Sorting by activation puts the most active unit first.
    browser.find_element("css selector", "#sort option[value=act]").click()
    first = browser.execute_script("return document.querySelector('.tile').dataset.unit")
    assert int(first) == int(np.argmax(result.activations))
    # A unit missing under the other setting is hidden, not shown broken.
    browser.find_element("css selector", "input[name=setting][value=kappa1_gamma10]").click()
    _assert_loaded(_wait_loaded(browser))
    missing = browser.execute_script(
        "return Array.from(document.querySelectorAll('.tile.missing')).map("
        "t => [t.dataset.unit, t.querySelector('.act').textContent])")
    assert missing == [["23", "not run"]]
  finally:
    browser.set_window_size(1200, 900)
