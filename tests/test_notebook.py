"""Results in notebooks: `Result._repr_html_` / `stviz_jax.show` embed every clip
(one playable element per unit and stream, labelled, no file paths), and the
progress bar reaches 100 % of the right total, or prints nothing when off."""

import base64
import html.parser
import io

import imageio.v3 as iio
import numpy as np
import pytest

import stviz_jax as sv

import handbuilt


class _Media(html.parser.HTMLParser):
  def __init__(self):
    super().__init__()
    self.tags, self.text = [], []

  def handle_starttag(self, tag, attrs):
    if tag in ("video", "img", "source", "a", "link", "script"):
      self.tags.append((tag, dict(attrs)))

  def handle_data(self, data):
    self.text.append(data)


@pytest.fixture(scope="module")
def result():
  config = handbuilt.config(steps=4, progress_bar=False)
  return sv.Visualizer(handbuilt.model(), "motion", config).run(
      [0, 2], seed=0, tv={"flow": (1.0, 5.0)}, log_progress=False)


def _parse(markup):
  p = _Media()
  p.feed(markup)
  return p


def test_repr_html_plays_every_unit_and_stream_self_contained(result):
  p = _parse(result._repr_html_())
  videos = [a for t, a in p.tags if t == "video"]
  images = [a for t, a in p.tags if t == "img"]
  # Flow (3 frames) is a video per unit; RGB has one frame, so an image per unit.
  assert len(videos) == 2 and len(images) == 2
  assert all(a["src"].startswith("data:video/mp4;base64,") for a in videos)
  assert all(a["src"].startswith("data:image/png;base64,") for a in images)
  assert all({"autoplay", "loop", "muted"} <= set(a) for a in videos)
  # Self-contained: every source is embedded, nothing refers to a file or URL.
  assert all(a.get("src", "data:").startswith("data:") and "href" not in a
             for _, a in p.tags)
  text = " ".join(p.text)
  for want in ("unit 0", "unit 2", "motion", "κ=1, γ=5", "flow: R, G, B = u, v, |f|"):
    assert want in text, want
  for act in result.activations:
    assert f"{float(act):.4g}" in text
  # The embedded clip decodes to the rendered flow of unit 0, upscaled.
  frames = iio.imread(base64.b64decode(videos[0]["src"].split(",", 1)[1]),
                      extension=".mp4", plugin="pyav" if _has_pyav() else None)
  assert frames.shape[0] >= 3 and frames.shape[1] == int(videos[0]["height"])


def _has_pyav():
  try:
    import av  # noqa: F401
    return True
  except ImportError:
    return False


def test_show_options_gif_hsv_class_names_and_unit_choice(result):
  p = _parse(str(sv.show(result, fmt="gif", encoding="hsv", height=64, units=[2],
                         class_names=["a", "b", "c", "d"])))
  imgs = [a for t, a in p.tags if t == "img"]
  assert len(imgs) == 2 and not any(t == "video" for t, _ in p.tags)
  gif = [a for a in imgs if a["src"].startswith("data:image/gif")]
  assert len(gif) == 1
  frames = iio.imread(io.BytesIO(base64.b64decode(gif[0]["src"].split(",", 1)[1])),
                      extension=".gif", index=None)
  assert frames.shape[0] == 3 and frames.shape[1] == 64  # 16 px upscaled x4.
  text = " ".join(p.text)
  assert "unit 2" in text and "unit 0" not in text and "hue = direction" in text
  # Class names label logits only; "motion" is a hidden layer.
  assert "<br>c" not in str(sv.show(result, units=[2], class_names=["a", "b", "c"]))


def test_show_names_what_is_wrong(result):
  with pytest.raises(ValueError, match=r"none of units \[7\].*units: \[0, 2\]"):
    sv.show(result, units=[7])
  with pytest.raises(ValueError, match="unknown format 'avi'"):
    sv.show(result, fmt="avi")
  with pytest.raises(ValueError, match="encoding"):
    sv.show(result, encoding="lab")


def test_progress_bar_reaches_the_total_of_a_chunked_run(capsys):
  config = handbuilt.config(steps=2, progress_every=0.0)
  sv.Visualizer(handbuilt.model(), "motion", config).run([0, 1, 2, 3, 0], chunk_size=2)
  err = capsys.readouterr().err
  assert "motion" in err and "5/5" in err and "100%" in err
  assert "2/5" in err and "6/5" not in err  # per chunk of 2; the padded last one counts 1.


def test_progress_bar_off_prints_nothing(capsys):
  for flag in ("progress_bar", "log_progress"):
    config = handbuilt.config(steps=2, progress_every=0.0,
                              progress_bar=flag != "progress_bar")
    sv.Visualizer(handbuilt.model(), "motion", config).run(
        [0, 1, 2], chunk_size=2, log_progress=flag != "log_progress")
    out = capsys.readouterr()
    assert out.err == "" and out.out == "", flag
