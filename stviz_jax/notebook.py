"""Results shown inline in Jupyter and Colab: self-contained HTML with the clips playing.

`show(result)` (and `Result._repr_html_`, so a `Result` as a cell's last line
displays itself) lays out one row per unit: appearance and motion side by side,
each a looping video embedded as a data URI (no file paths: a saved notebook
still shows them), labelled with the unit (and class name), the setting and
the activation. Flow is coloured as in the paper (R, G, B = u, v, |f|) or on a
colour wheel (`encoding="hsv"`); a one-frame stream is an image.
"""

from __future__ import annotations

import base64
import html
from typing import Sequence

import numpy as np

from stviz_jax import layout, render
from stviz_jax.models.specs import LOGITS

MIME = {"png": "image/png", "gif": "image/gif", "mp4": "video/mp4", "webm": "video/webm"}
DISPLAY_HEIGHT = 128  # pixels a clip is upscaled to (nearest neighbour), about.

_STYLE = """<style>
.stviz-result {font-family: sans-serif; font-size: 13px}
.stviz-result table {border-collapse: collapse}
.stviz-result td {padding: 4px 8px; text-align: center; vertical-align: top}
.stviz-result th {padding: 4px 8px; font-weight: 600}
.stviz-result video, .stviz-result img {image-rendering: pixelated; display: block}
</style>"""


class HTML:
  """HTML that notebooks display (`_repr_html_`); `str()` is the markup."""

  def __init__(self, markup: str):
    self.markup = markup

  def _repr_html_(self) -> str:
    return self.markup

  def __str__(self) -> str:
    return self.markup


def media_tag(frames: np.ndarray, fmt: str = "mp4", fps: float = render.DEFAULT_FPS,
              title: str = "") -> str:
  """One `<video>` (or, for one frame or `fmt="png"`, `<img>`) with the clip embedded."""
  if fmt not in MIME:
    raise ValueError(f"show: unknown format {fmt!r}; valid: {', '.join(MIME)}")
  if len(frames) < 2 and fmt != "png":
    fmt = "png"
  data = base64.b64encode(render.encode(frames, fmt, fps)).decode("ascii")
  src = f"data:{MIME[fmt]};base64,{data}"
  h, w = frames.shape[1:3]
  attrs = f'width="{w}" height="{h}" title="{html.escape(title)}"'
  if fmt in ("mp4", "webm"):
    return (f'<video {attrs} autoplay loop muted playsinline controls '
            f'src="{src}"></video>')
  return f'<img {attrs} src="{src}">'


def show(result, *, encoding: str = "rgb", fmt: str = "mp4", fps: float = render.DEFAULT_FPS,
         height: int = DISPLAY_HEIGHT, class_names: Sequence[str] | None = None,
         units: Sequence[int] | None = None) -> HTML:
  """The result as self-contained HTML: per unit its streams playing side by side.

  Args:
    result: a `stviz_jax.Result`.
    encoding: flow colouring, "rgb" (the paper's) or "hsv" (colour wheel).
    fmt: "mp4" (plays in every browser), "webm", "gif" or "png" (middle frame).
    fps: frame rate.
    height: displayed clip height in pixels (integer nearest-neighbour upscaling).
    class_names: names of the logits (e.g. `model.labels`), to label class units.
    units: show only these units (default all).

  Returns:
    An object notebooks display; `str()` of it is the HTML.
  """
  render.check_encoding(encoding)
  streams = render.display_order(result.inputs)
  rows = [i for i, u in enumerate(result.units) if units is None or int(u) in set(units)]
  if not rows:
    raise ValueError(f"show: none of units {list(units)} is in the result "
                     f"(units: {[int(u) for u in result.units]})")
  class_names = result.class_names if class_names is None else class_names
  setting = layout.setting_label(layout.setting_name(result.settings)) if result.settings else ""
  head = "".join(f"<th>{html.escape(s)}</th>" for s in ["unit"] + streams + ["activation"])
  body = []
  for i in rows:
    unit = int(result.units[i])
    name = f"unit {unit}"
    if class_names is not None and result.layer == LOGITS and unit < len(class_names):
      name += f"<br>{html.escape(str(class_names[unit]))}"
    cells = [f"<td>{name}</td>"]
    for s in streams:
      frames = render.stream_frames(s, result.inputs[s][i], encoding)
      frames = render.upscale(frames, render.display_scale(frames.shape[1], height))
      cells.append(f"<td>{media_tag(frames, fmt, fps, f'{result.layer} unit {unit} {s}')}</td>")
    cells.append(f"<td>{float(result.activations[i]):.4g}</td>")
    body.append("<tr>" + "".join(cells) + "</tr>")
  caption = html.escape(f"{result.layer}" + (f", {setting}" if setting else "")
                        + f", seed {result.seed}")
  flow = "flow: R, G, B = u, v, |f|" if encoding == "rgb" else "flow: hue = direction"
  if "flow" not in streams:
    flow = ""
  markup = (f'{_STYLE}<div class="stviz-result"><table><caption>{caption}'
            f'{"<br>" + flow if flow else ""}</caption><tr>{head}</tr>{"".join(body)}'
            "</table></div>")
  return HTML(markup)
