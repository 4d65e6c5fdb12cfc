"""The HTML pages: the index, a page per layer, per unit and per comparison.
Style sheet and script are the package data files `assets/gallery/*`."""

from __future__ import annotations

import html
import json
import os
import urllib.parse
from typing import Any, Mapping, Sequence

import numpy as np

from stviz_jax import files, layout, quality, render
from stviz_jax.gallery.compare import Comparison
from stviz_jax.gallery.dataset_stats import LayerStats
from stviz_jax.gallery.media import DISPLAY_SIZE, views_of
from stviz_jax.gallery.runs import (COMPARE_DIR, GALLERY_DIR, LOGITS, RESULT_FILE, LayerRuns,
                                    SettingRun, read_json)


# The pages' style sheet and script, real files shipped as package data.
_ASSETS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "assets",
                       "gallery")


def asset(name: str) -> str:
  with open(os.path.join(_ASSETS, name), encoding="utf-8") as f:
    return f.read()


def _e(text: Any) -> str:
  return html.escape(str(text), quote=True)


def _url(from_dir: str, target: str) -> str:
  """Relative, percent-encoded URL from a page's folder to a file."""
  rel = os.path.relpath(target, from_dir)
  return "/".join(urllib.parse.quote(part) for part in rel.split(os.sep))


def _page(title: str, body: str, css: str, js: str, data: Mapping | None = None) -> str:
  script = ""
  if data is not None:
    payload = json.dumps(data).replace("</", "<\\/")
    script = f'<script type="application/json" id="gallery-data">{payload}</script>\n'
  return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\n"
          f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
          f"<title>{_e(title)}</title>\n<link rel=\"stylesheet\" href=\"{css}\">\n"
          f"{script}<script src=\"{js}\"></script>\n</head><body>\n{body}\n</body></html>\n")


def write(path: str, text: str) -> None:
  files.write_bytes(path, text.encode("utf-8"))


def _media_size(run: SettingRun, stream: str) -> tuple[int, int]:
  _, h, w, _ = run.shapes[stream]
  f = render.display_scale(h, DISPLAY_SIZE)
  return w * f, h * f


def _media(page_dir: str, layer: LayerRuns, run: SettingRun, unit: int,
           view: str, stream: str, templated: bool, sample: int = 0) -> str:
  """An <img> (still input) or a lazily loaded looping <video> (clip).

  `sample` k > 0: the unit's k-th diverse sample (`unit_0003_sample<k>_<view>`).
  """
  setting = "{setting}" if templated else run.name
  name = layout.sample_stem(unit, sample, view)
  stem = os.path.join(os.path.dirname(run.part(unit).dir), "SETTING", name)
  stem_url = _url(page_dir, stem).replace("SETTING", setting)
  title = f"unit {unit} {view}" + (f" sample {sample}" if sample else "")
  return _clip_tag(stem_url, _media_size(run, stream), run.shapes[stream][0] > 1, title,
                   stem_url.replace("{setting}", urllib.parse.quote(run.name)))


def _clip_tag(stem_url: str, size: tuple[int, int], is_clip: bool, title: str,
              still_url: str | None = None) -> str:
  """A lazily loaded looping <video> of a clip's media stem, or the <img> of a still."""
  w, h = size
  if is_clip:
    return (f'<video class="m" muted loop playsinline preload="none" width="{w}" '
            f'height="{h}" data-stem="{_e(stem_url)}" title="{_e(title)}"></video>')
  return (f'<img class="m" loading="lazy" decoding="async" width="{w}" height="{h}" '
          f'src="{_e(still_url or stem_url)}.png" data-stem="{_e(stem_url)}" data-ext="png" '
          f'alt="{_e(title)}">')


_FLOW_KEY = ("flow colours: <b style=\"color:#c00\">R</b> = horizontal (right +), "
             "<b style=\"color:#080\">G</b> = vertical (down +), "
             "<b style=\"color:#00c\">B</b> = magnitude; each min-max over its whole video")


def _legend_html(page_dir: str, gallery_dir: str, encodings: Sequence[str],
                 has_flow: bool) -> str:
  if not has_flow:
    return ""
  parts = [f'<span class="legend">{_FLOW_KEY}</span>']
  if "hsv" in encodings:
    url = _url(page_dir, os.path.join(gallery_dir, "flow_legend_hsv.png"))
    parts.append(f'<span class="legend"><img src="{url}" width="32" height="32" '
                 f'alt="HSV flow key">HSV: hue = direction, brightness = speed</span>')
  return " ".join(parts)


def layer_page(workdir: str, layer: LayerRuns, page_dir: str, encodings: Sequence[str],
                stats: LayerStats | None, figure: Mapping[str, str] | None,
                model: str) -> str:
  gallery_dir = os.path.join(workdir, GALLERY_DIR)
  views = views_of(layer, encodings)
  ref = layer.runs[0]
  settings = [{"name": r.name, "label": r.label()} for r in layer.runs]
  summary = read_json(os.path.join(workdir, layout.SUMMARY_FILE)) or {}
  names = class_names_of(summary, layer)
  tiles = []
  has_motion = False
  for u in layer.units:
    acts = {r.name: float(r.activations[r.index(u)]) for r in layer.runs
            if r.index(u) is not None}
    quality_text = {r.name: _quality_html(summary, layer, u, r.name) for r in layer.runs
                    if r.index(u) is not None}
    motion = {r.name: _motion_index_of(summary, layer, u, r.name) for r in layer.runs
              if r.index(u) is not None}
    motion = {k: v for k, v in motion.items() if v is not None}
    holder = next(r for r in layer.runs if r.index(u) is not None)
    media = "".join(_media(page_dir, layer, holder, u, v, s, templated=True)
                    for v, s, _ in views)
    extra = ""
    if stats is not None and stats.per_class_max is not None and u < len(stats.per_class_max):
      row = stats.per_class_max[u]
      if np.isfinite(row).any():
        best = int(np.nanargmax(np.where(np.isfinite(row), row, np.nan)))
        extra = f'<span title="class of maximum activity">{_e(stats.class_names[best])}</span>'
    if u in names:
      extra = f'<span class="cls" title="class">{_e(names[u])}</span>'
    tiles.append(
        f'<div class="tile" data-unit="{u}" data-acts="{_e(json.dumps(acts))}" '
        f'data-quality="{_e(json.dumps(quality_text))}" data-motion="{_e(json.dumps(motion))}">'
        f'<div class="media">{media}</div><div class="cap">'
        f'<a href="unit_{u:04d}.html">unit {u}</a>{extra}<span class="act"></span>'
        f'<span class="mi" title="motion index: 0 appearance, 1 motion"></span>'
        f'</div><div class="quality"></div></div>')
    has_motion = has_motion or bool(motion)
  radios = "".join(
      f'<label><input type="radio" name="setting" value="{_e(s["name"])}"'
      f'{" checked" if i == 0 else ""}> {_e(s["label"])}</label>'
      for i, s in enumerate(settings))
  view_names = " | ".join(_e(v) for v, _, _ in views)
  fig = ""
  if figure:
    links = ", ".join(f'<a href="{_url(page_dir, p)}">{k.upper()}</a>'
                      for k, p in figure.items())
    shown = figure.get("gif", figure["png"])
    fig = (f'<h2>Figure</h2><p class="note">The paper’s layout: rows are the most '
           f'active units (mean over settings), columns the settings, each cell '
           f'appearance beside motion. Files: {links} (the NPZ holds the raw arrays).</p>'
           f'<img loading="lazy" src="{_url(page_dir, shown)}" alt="figure" '
           f'style="max-width:100%">')
  has_flow = any(s == "flow" or ref.shapes[s][-1] == 2 for s in layer.streams)
  body = f"""<header>
<div class="crumbs"><a href="{_url(page_dir, os.path.join(workdir, 'index.html'))}">run</a> / {_e(layer.title)}</div>
<h1>{_e(model)} · layer {_e(layer.title)} · {len(layer.units)} units</h1>
<div class="controls">
<fieldset><legend>regularisation ([ / ] keys)</legend>{radios}</fieldset>
<label>sort <select id="sort"><option value="unit">by unit</option>
<option value="act">by activation</option>{'<option value="motion">by motion index</option>' if has_motion else ''}</select></label>
<label>unit <input id="find" type="search" size="5" placeholder="#"></label>
<span class="note">each tile: {view_names}</span>
</div>
<div>{_legend_html(page_dir, gallery_dir, encodings, has_flow)}</div>
</header>
<div class="tiles">
{chr(10).join(tiles)}
</div>
<h2>Layer plots</h2>
<div class="plots"><img loading="lazy" src="layer_activations.png" alt="final activation per unit">
{'<img loading="lazy" src="layer_objective.png" alt="objective vs step">' if os.path.exists(os.path.join(page_dir, 'layer_objective.png')) else ''}
{_motion_histograms(page_dir, layer)}</div>
{fig}
"""
  data = {"settings": settings, "initial": settings[0]["name"], "layer": layer.layer}
  return _page(f"{layer.title} · {model}", body,
               _url(page_dir, os.path.join(gallery_dir, "gallery.css")),
               _url(page_dir, os.path.join(gallery_dir, "gallery.js")), data)


def _motion_histograms(page_dir: str, layer: LayerRuns) -> str:
  """Each setting's histogram of the units' motion indices (the job's insight.motion)."""
  tags = []
  for r in layer.runs:
    for part in r.parts:
      path = os.path.join(part.dir, layout.MOTION_HISTOGRAM_FILE)
      if os.path.exists(path):
        tags.append(f'<img loading="lazy" src="{_url(page_dir, path)}" '
                    f'alt="motion index histogram, {_e(r.label())}">')
  return "".join(tags)


def _stats_html(page_dir: str, unit: int, stats: LayerStats | None) -> str:
  if stats is None:
    return ('<p class="note">No dataset statistics for this layer. Compute them with '
            '<code>python -m stviz_jax.stats</code> and rebuild with '
            '<code>python -m stviz_jax.gallery --workdir=DIR --stats=PATH</code>.</p>')
  parts = []
  if stats.a_hat is not None and unit < len(stats.a_hat):
    parts.append(f"<p>maximum activation on the dataset â = {float(stats.a_hat[unit]):.4g}</p>")
  chart = os.path.join(page_dir, layout.unit_file(unit, "_classes.png"))
  if os.path.exists(chart):
    parts.append(f'<img loading="lazy" src="{_url(page_dir, chart)}" '
                 f'alt="maximum activity per class">')
  clips = stats.top_clips.get(unit, [])
  if clips:
    rows = []
    for k, c in enumerate(clips):
      thumb = ""
      if c.get("thumbnail"):
        thumb = (f'<img class="m" loading="lazy" height="64" '
                 f'src="{_e(_link(page_dir, c["thumbnail"]))}" alt="clip {k + 1}">')
      elif stats.top_thumbnails is not None and unit < len(stats.top_thumbnails):
        thumb_path = _thumbnail(page_dir, unit, c["rank"],
                                stats.top_thumbnails[unit][c["rank"]])
        thumb = (f'<img class="m" loading="lazy" height="64" '
                 f'src="{_url(page_dir, thumb_path)}" alt="clip {k + 1}">')
      video = c.get("video", "")
      video_html = f'<a href="{_e(_link(page_dir, video))}">{_e(os.path.basename(video))}</a>' if video else ""
      where = ", ".join(f"{key} {c[key]}" for key in ("clip", "frame") if key in c)
      if all(key in c for key in ("t", "y", "x")):
        where += f" (feature map t, y, x = {c['t']}, {c['y']}, {c['x']})"
      elif "y" in c and "x" in c:
        where += f" (y, x = {c['y']}, {c['x']})"
      rows.append(f"<tr><td>{k + 1}</td><td>{thumb}</td><td>{_e(c.get('class', ''))}</td>"
                  f"<td>{float(c.get('score', np.nan)):.4g}</td><td>{video_html}</td>"
                  f"<td>{_e(where)}</td></tr>")
    parts.append('<table class="clips"><tr><th>#</th><th></th><th>class</th><th>activation'
                 '</th><th>clip</th><th>where</th></tr>' + "".join(rows) + "</table>")
  return "\n".join(parts) or '<p class="note">No statistics for this unit.</p>'


def _link(page_dir: str, target: str) -> str:
  return target if "://" in target else _url(page_dir, target)


def _thumbnail(page_dir: str, unit: int, k: int, pixels: np.ndarray) -> str:
  stem = os.path.join(page_dir, "stats", layout.unit_file(unit, f"_top{k + 1}"))
  pixels = np.asarray(pixels, np.uint8)
  if pixels.ndim == 4:
    return render.save_frames(stem, pixels, ("gif",))["gif"]
  return render.save_frames(stem, pixels[None], ("png",))["png"]


def _samples_html(page_dir: str, layer: LayerRuns, unit: int,
                  views: Sequence[tuple[str, str, str]]) -> str:
  """The unit's K diverse samples per setting (rows), each cell every view."""
  rows, k, weight = [], 0, None
  for r in layer.runs:
    acts = r.samples(unit)
    if acts is None:
      continue
    k, weight = len(acts), r.objective().get("diversity")
    cells = "".join(
        '<td><div class="media">'
        + "".join(_media(page_dir, layer, r, unit, v, s, templated=False, sample=j)
                  for v, s, _ in views)
        + f'</div><div class="view">sample {j} · a = {float(a):.4g}</div></td>'
        for j, a in enumerate(acts))
    rows.append(f"<tr><th>{_e(r.label())}</th>{cells}</tr>")
  if not rows:
    return ""
  w = f" (weight w = {float(weight):g})" if weight is not None else ""
  return (f'<h2>Diverse samples</h2><p class="note">K = {k} results of this unit optimised '
          f'together and pushed apart by Lucid’s Gram-matrix diversity{w}; sample 0 is '
          f'the result above. Each cell: {" | ".join(_e(v) for v, _, _ in views)}.</p>'
          f'<table class="rows">{"".join(rows)}</table>')


def unit_page(workdir: str, layer: LayerRuns, page_dir: str, unit: int,
               prev_unit: int | None, next_unit: int | None, encodings: Sequence[str],
               stats: LayerStats | None, model: str,
               comparisons: Sequence["Comparison"] = ()) -> str:
  gallery_dir = os.path.join(workdir, GALLERY_DIR)
  views = views_of(layer, encodings)
  links = [f'<a href="{_url(page_dir, os.path.join(gallery_dir, COMPARE_DIR, c.file))}">'
           f'{_e(c.title)}</a>' for c in comparisons if c.shows(layer, unit)]
  compared = f'<div class="note">compared: {" · ".join(links)}</div>' if links else ""
  head = "".join(f"<th>{_e(v)}</th>" for v, _, _ in views)
  summary = read_json(os.path.join(workdir, layout.SUMMARY_FILE)) or {}
  class_name = class_names_of(summary, layer).get(unit)
  rows, downloads, configs = [], [], []
  for r in layer.runs:
    i = r.index(unit)
    if i is None:
      rows.append(f"<tr><th>{_e(r.label())}</th><td colspan=\"{len(views) + 2}\">"
                  "not run for this setting</td></tr>")
      continue
    cells = "".join(f"<td>{_media(page_dir, layer, r, unit, v, s, templated=False)}</td>"
                    for v, s, _ in views)
    rows.append(f"<tr><th>{_e(r.label())}</th>{cells}<td>{float(r.activations[i]):.4g}</td>"
                f"<td class=\"note\">{_quality_html(summary, layer, unit, r.name)}</td></tr>")
    part = r.part(unit)
    downloads.append(f"<li>{_e(r.label())}: " + ", ".join(
        f'<a href="{_url(page_dir, os.path.join(part.dir, f))}">{_e(f)}</a>'
        for f in r.unit_files(unit))
                     + f' (all units: <a href="{_url(page_dir, part.path)}">{RESULT_FILE}</a>)</li>')
    configs.append({"setting": r.name, "seed": r.seed, "regularisation (kappa, gamma)":
                    {k: list(v) for k, v in r.settings.items()},
                    "a_hat_given": r.a_hat_given})
  config = layer.runs[0].config or read_json(os.path.join(workdir, layout.CONFIG_FILE))
  nav = " · ".join(
      f'<a href="unit_{u:04d}.html">{label} unit {u}</a>'
      for u, label in ((prev_unit, "←"), (next_unit, "→")) if u is not None)
  has_flow = any(s == "flow" or layer.runs[0].shapes[s][-1] == 2 for s in layer.streams)
  hist = layout.unit_file(unit, "_history.png")
  settings_json = "[\n" + ",\n".join(json.dumps(c) for c in configs) + "\n]"
  body = f"""<header>
<div class="crumbs"><a href="{_url(page_dir, os.path.join(workdir, 'index.html'))}">run</a> /
<a href="index.html">{_e(layer.title)}</a> / unit {unit} &nbsp; {nav}</div>
<h1>{_e(model)} · {_e(layer.title)} · unit {unit}{f" · {_e(class_name)}" if class_name else ""}</h1>
{compared}
<div>{_legend_html(page_dir, gallery_dir, encodings, has_flow)}</div>
</header>
<h2>Inputs that maximise the unit</h2>
<table class="rows"><tr><th>setting</th>{head}<th>final activation</th><th>picture quality</th></tr>
{chr(10).join(rows)}
</table>
{_samples_html(page_dir, layer, unit, views)}
{_insight_html(page_dir, layer, unit, summary)}
<h2>Optimisation</h2>
<div class="plots"><img loading="lazy" src="{hist}" alt="objective and activation vs step"></div>
<h2>Dataset statistics</h2>
{_stats_html(page_dir, unit, stats)}
<h2>Raw arrays and media</h2>
<ul>{''.join(downloads)}</ul>
<h2>Exact config and seed</h2>
<p>seed = {layer.runs[0].seed} (unit {unit} starts from noise drawn from
<code>fold_in(PRNGKey(seed), {unit})</code>)</p>
<pre>{_e(settings_json)}</pre>
<pre>{_e(json.dumps(config, indent=2))}</pre>
"""
  return _page(f"{layer.title} unit {unit} · {model}", body,
               _url(page_dir, os.path.join(gallery_dir, "gallery.css")),
               _url(page_dir, os.path.join(gallery_dir, "gallery.js")),
               {"settings": [], "initial": None})


def compare_page(workdir: str, comp: Comparison, encodings: Sequence[str],
                  model: str) -> str:
  """Two class units side by side: rows are settings, column groups A, B and the
  class contrasts; each cell every view, the final activation and the class rank."""
  gallery_dir = os.path.join(workdir, GALLERY_DIR)
  page_dir = os.path.join(gallery_dir, COMPARE_DIR)
  summary = read_json(os.path.join(workdir, layout.SUMMARY_FILE)) or {}
  groups = comp.groups()
  heads = []
  for heading, layer, unit in groups:
    if layer is None:
      heads.append(f"<th>{_e(heading)}<br><span class=\"note\">not visualised in this run "
                   f"(add it to a class_logit target on {LOGITS!r})</span></th>")
    else:
      unit_page = os.path.join(gallery_dir, layer.rel_dir, layout.unit_file(unit, ".html"))
      views = " | ".join(_e(v) for v, _, _ in views_of(layer, encodings))
      heads.append(f'<th><a href="{_url(page_dir, unit_page)}">{_e(heading)}</a><br>'
                   f'<span class="note">{_e(layer.title)} · {views}</span></th>')
  order = list(dict.fromkeys(r.name for _, l, _ in groups if l is not None for r in l.runs))
  rows = []
  for name in order:
    label, cells = name, []
    for _, layer, unit in groups:
      run = next((r for r in layer.runs if r.name == name), None) if layer else None
      i = run.index(unit) if run is not None else None
      if i is None:
        cells.append('<td class="note">not run for this setting</td>')
        continue
      label = run.label()
      media = "".join(_media(page_dir, layer, run, unit, v, s, templated=False)
                      for v, s, _ in views_of(layer, encodings))
      cap = f"a = {float(run.activations[i]):.4g}"
      entry = _summary_entry(summary, layer, name)
      rank = (entry.get("class_ranks") or {}).get(str(unit))
      if rank:
        cap += (f" · rank {rank['rank']} of the classes (top 3: "
                f"{', '.join(str(c) for c in rank.get('top3', []))})")
      cells.append(f'<td><div class="media">{media}</div><div class="view">{_e(cap)}</div></td>')
    rows.append(f"<tr><th>{_e(label)}</th>{''.join(cells)}</tr>")
  ref = next((l for _, l, _ in groups if l is not None), None)
  has_flow = ref is not None and any(s == "flow" or ref.runs[0].shapes[s][-1] == 2
                                     for s in ref.streams)
  body = f"""<header>
<div class="crumbs"><a href="{_url(page_dir, os.path.join(workdir, 'index.html'))}">run</a> /
compare / {_e(comp.title)}</div>
<h1>{_e(model)} · {_e(comp.names[0])} vs {_e(comp.names[1])}</h1>
<div>{_legend_html(page_dir, gallery_dir, encodings, has_flow)}</div>
</header>
<p class="note">Two class units side by side, as in the paper’s Figs. 13-15: what each class
unit’s optimised appearance and motion look like shows what the network uses to tell the
two classes apart (or why it confuses them). A class contrast maximises one class’s score
minus the other’s. The rank is where the optimised input puts its own class among all.</p>
<table class="rows"><tr><th>setting</th>{''.join(heads)}</tr>
{chr(10).join(rows) or '<tr><td>no results for these classes</td></tr>'}
</table>
"""
  return _page(f"{comp.title} · {model}", body,
               _url(page_dir, os.path.join(gallery_dir, "gallery.css")),
               _url(page_dir, os.path.join(gallery_dir, "gallery.js")), None)


def _summary_entry(summary: Mapping, layer: LayerRuns, setting: str) -> dict:
  """The job's `summary.json` entry of one target and setting ({} when absent)."""
  layers = summary.get("layers") or {}
  names = {n.replace("/", "_"): n for n in layers}
  return (layers.get(names.get(layer.target, layer.target)) or {}).get(setting) or {}


def class_names_of(summary: Mapping, layer: LayerRuns) -> dict[int, str]:
  """Class names of a target's units (from `summary.json`; {} for channel units)."""
  targets = summary.get("targets") or {}
  names = {n.replace("/", "_"): n for n in targets}
  entry = targets.get(names.get(layer.target, layer.target)) or {}
  return {int(k): v for k, v in (entry.get("class_names") or {}).items()}


def _quality_html(summary: Mapping, layer: LayerRuns, unit: int, setting: str) -> str:
  q = (_summary_entry(summary, layer, setting).get("quality") or {}).get(str(unit))
  if not q:
    return ""
  return _e(quality.describe(q, layer.layer == LOGITS))


def _insight(summary: Mapping, layer: LayerRuns, setting: str) -> dict:
  """The `insight` block of a target and setting in `summary.json` ({} when absent)."""
  return _summary_entry(summary, layer, setting).get("insight") or {}


def _motion_index_of(summary: Mapping, layer: LayerRuns, unit: int, setting: str):
  """The unit's motion index on its optimised clip (None when not measured)."""
  return ((_insight(summary, layer, setting).get("motion") or {}).get(str(unit)) or {}).get(
      "motion_index")


def _num(v, fmt: str = ".2f") -> str:
  return "-" if v is None else format(v, fmt)


def _shares(m: Mapping) -> str:
  shares = m.get("shares") or {}
  return ", ".join(f"{_e(k)} {_num(v, '.0%')}" for k, v in shares.items()) if len(shares) > 1 else "-"


_INSIGHT_NOTE = (
    "What the unit uses (stviz_jax.insight). <b>motion index</b> = 1 - a(static) / a(clip): "
    "0 when the unit fires as well with the motion removed (every frame replaced by the "
    "clip's mean frame, flow zeroed), 1 when it needs the motion; <b>shuffle drop</b> = the "
    "share of the activation lost when the frames are shuffled in time (order matters); "
    "<b>stream shares</b>: of the activation lost when one stream's input is removed, the part "
    "each stream carries (a fusion unit that needs both: about half each). "
    "<b>Sanity</b> (Geirhos et al. 2023): the rank correlation, layer by layer, of the "
    "channel activations of the optimised clip with those of the unit's top natural clips; a "
    "flagged picture drives the unit along a path no natural clip takes.")


def _insight_html(page_dir: str, layer: LayerRuns, unit: int, summary: Mapping) -> str:
  """The unit page's "What the unit uses" section ("" when the run measured nothing)."""
  rows, attributions, accents = [], [], []
  for r in layer.runs:
    block = _insight(summary, layer, r.name)
    if not block:
      continue
    m = (block.get("motion") or {}).get(str(unit)) or {}
    top = (block.get("motion_top_clips") or {}).get(str(unit)) or {}
    sanity = (block.get("sanity") or {}).get(str(unit))
    if sanity:
      verdict = (f'<span class="{"bad" if sanity.get("flag") else "ok"}">'
                 f'{"flagged" if sanity.get("flag") else "like natural clips"}</span> '
                 f'(path correlation {_num(sanity.get("score"))} vs natural '
                 f'{_num(sanity.get("natural_score"))}) <span class="note">'
                 f'{_e(sanity.get("why", ""))}</span>')
    else:
      verdict = "-"
    if m or top or sanity:
      rows.append(f"<tr><th>{_e(r.label())}</th><td>{_num(m.get('motion_index'))}</td>"
                  f"<td>{_num(m.get('shuffle_drop'))}</td><td>{_shares(m)}</td>"
                  f"<td>{_num(top.get('motion_index'))}</td><td>{_shares(top) if top else '-'}</td>"
                  f"<td>{verdict}</td></tr>")
    out_dir = r.part(unit).dir
    att = (block.get("attribution") or {}).get(str(unit)) or {}
    if att:
      cells = "".join(
          f"<td>{_clip_tag(_url(page_dir, os.path.join(out_dir, a['stem'])), (a['width'], a['height']), a['frames'] > 1, f'unit {unit} {k} attribution')}"
          f"<br><span class=\"note\">{_e(k)}</span></td>" for k, a in att.items())
      attributions.append(f"<tr><th>{_e(r.label())}</th>{cells}</tr>")
    for acc in (block.get("accentuation") or {}).get(str(unit)) or []:
      cells = [f"<td>{_clip_tag(_url(page_dir, os.path.join(out_dir, a['stem'])), (a['width'], a['height']), a['frames'] > 1, f'{k}: seed | accentuated')}"
               f"<br><span class=\"note\">{_e(k)}</span></td>" for k, a in acc["streams"].items()]
      dist = ", ".join(f"{_e(k)} {v:.2f}" for k, v in (acc.get("distance") or {}).items())
      accents.append(
          f"<tr><th>{_e(r.label())}<br>{_e(acc.get('name', acc['clip']))}</th>{''.join(cells)}"
          f"<td>{_num(acc.get('activation_before'), '.3g')} &rarr; "
          f"{_num(acc.get('activation_after'), '.3g')}<br><span class=\"note\">distance to "
          f"the seed: {dist}</span></td></tr>")
  if not (rows or attributions or accents):
    return ""
  out = [f'<h2>What the unit uses</h2><p class="note">{_INSIGHT_NOTE}</p>']
  if rows:
    out.append('<table class="rows"><tr><th>setting</th><th>motion index</th>'
               '<th>shuffle drop</th><th>stream shares</th><th>motion index, top natural '
               'clips</th><th>stream shares, top natural clips</th><th>sanity</th></tr>'
               + "".join(rows) + "</table>")
  if attributions:
    out.append('<h3>Where it looks</h3><p class="note">MACO’s transparency map: the '
               'absolute input gradient accumulated over the optimisation, per stream over '
               '(t, y, x); the clip is shown through it (opaque where the unit’s gradient '
               'was large).</p><table class="rows">' + "".join(attributions) + "</table>")
  if accents:
    out.append('<h3>What it amplifies in real clips</h3><p class="note">Feature '
               'accentuation: the optimisation started from a natural clip and kept near it; '
               'seed beside result on one colour scale, with the unit’s activation before and after.</p>'
               '<table class="rows">' + "".join(accents) + "</table>")
  return "\n".join(out)


_QUALITY_NOTE = ("Picture quality (stviz_jax.quality): <b>robust</b> = share of {n} seeded random "
                 "crops (70-100 % area), flips, time rolls and blurs (up to 1.5 px) the "
                 "optimisation never saw under which a class unit keeps rank 1 (channel "
                 "units: keep half their activation); <b>slope</b> = power-spectrum slope "
                 "of the frames, natural images about -2, noise 0 (goal {lo} to {hi}).")


def _quality_table(workdir: str, summary: Mapping, layers: Sequence[LayerRuns]) -> str:
  block = summary.get("quality")
  if not block:
    return ""
  rows = []
  for layer in layers:
    names = {n.replace("/", "_"): n for n in block.get("targets") or {}}
    per = (block.get("targets") or {}).get(names.get(layer.target, layer.target)) or {}
    for r in layer.runs:
      b = per.get(r.name)
      if not b:
        continue
      lo_hi = b.get("slope_range")
      slope = f"{lo_hi[0]:.2f} to {lo_hi[1]:.2f}" if lo_hi else "-"
      ok = b["passing"] == b["units"]
      rows.append(f'<tr><th>{_e(layer.title)}</th><td>{_e(r.label())}</td>'
                  f'<td class="{"ok" if ok else "bad"}">{b["passing"]} / {b["units"]}</td>'
                  f'<td>{b["min_robust"]:.0%}</td><td>{slope}</td></tr>')
  goal = block.get("goal") or {}
  lo, hi = goal.get("slope_range", quality.SLOPE_RANGE)
  note = _QUALITY_NOTE.format(n=block.get("transforms", "?"), lo=lo, hi=hi)
  return (f'<h2>Picture quality</h2><p class="note">{note} A unit passes when its slope is in '
          f'range and, for class units, it is robust under at least '
          f'{goal.get("robust", quality.ROBUST_GOAL):.0%} of them.</p>'
          '<table class="rows"><tr><th>target</th><th>setting</th><th>units passing</th>'
          '<th>least robust unit</th><th>slope of the frames</th></tr>'
          + "".join(rows) + "</table>")


def _insight_table(summary: Mapping, layers: Sequence[LayerRuns]) -> str:
  """The index's "What the units use": per target and setting, motion and sanity in brief."""
  block = summary.get("insight")
  if not block:
    return ""
  rows = []
  for layer in layers:
    names = {n.replace("/", "_"): n for n in block}
    per = block.get(names.get(layer.target, layer.target)) or {}
    for r in layer.runs:
      b = per.get(r.name)
      if not b:
        continue
      flagged = b.get("flagged")
      sanity = ("-" if flagged is None else
                f'<span class="{"bad" if flagged else "ok"}">{len(flagged)} of {b["checked"]}'
                f'</span>' + (f' (units {", ".join(map(str, flagged))})' if flagged else ""))
      rows.append(f'<tr><th>{_e(layer.title)}</th><td>{_e(r.label())}</td>'
                  f'<td>{_num(b.get("median_motion_index"))}</td>'
                  f'<td>{b.get("dynamic_units", "-")} of {b.get("units", "-")}</td>'
                  f'<td>{sanity}</td></tr>')
  return ('<h2>What the units use</h2><p class="note">Motion index 0 = the unit fires as '
          'well with the motion removed, 1 = it needs the motion (stviz_jax.insight); '
          'flagged = its picture is processed unlike its top natural clips (sanity '
          'check). Details and overlays on each unit page.</p><table class="rows"><tr>'
          '<th>target</th><th>setting</th><th>median motion index</th><th>units needing '
          'motion (index &gt; 0.5)</th><th>pictures flagged</th></tr>'
          + "".join(rows) + "</table>")


def index_page(workdir: str, layers: Sequence[LayerRuns], figures: Mapping[str, Any],
                model: str, stats_path: str | None,
                comps: Sequence[Comparison] = ()) -> str:
  gallery_dir = os.path.join(workdir, GALLERY_DIR)
  cards = []
  for layer in layers:
    page = os.path.join(gallery_dir, layer.rel_dir, "index.html")
    fig = figures.get(layer.rel_dir)
    thumb = (f'<br><img loading="lazy" src="{_url(workdir, fig.get("gif", fig["png"]))}" '
             f'alt="figure" style="max-width:480px">' if fig else "")
    settings = " | ".join(_e(r.label()) for r in layer.runs)
    cards.append(f'<div class="card"><a href="{_url(workdir, page)}"><b>{_e(layer.title)}</b>'
                 f'</a> · {len(layer.units)} units · {settings}{thumb}</div>')
  summary = read_json(os.path.join(workdir, layout.SUMMARY_FILE)) or {}
  seed = layers[0].runs[0].seed if layers else summary.get("seed")
  links = [f'<a href="{f}">{f}</a>' for f in (layout.CONFIG_FILE, layout.SUMMARY_FILE)
           if os.path.exists(os.path.join(workdir, f))]
  info = f"seed {seed}"
  if "seconds" in summary:
    info += f" · optimised in {summary['seconds']} s"
  if stats_path:
    info += f" · statistics: {_e(stats_path)}"
  compare = ""
  if comps:
    items = "".join(
        f'<li><a href="{_url(workdir, os.path.join(gallery_dir, COMPARE_DIR, c.file))}">'
        f'{_e(c.title)}</a>' + (f' (with {len(c.contrasts)} class contrast'
                                f'{"s" if len(c.contrasts) > 1 else ""})' if c.contrasts else "")
        + "</li>" for c in comps)
    compare = f"<h2>Class comparisons</h2>\n<ul>{items}</ul>"
  body = f"""<header><h1>{_e(model)} · activation maximisation</h1>
<div class="note">{info} · {' · '.join(links)}</div></header>
<h2>Layers</h2>
{chr(10).join(cards) or '<p>No results found (no */*/result.npz).</p>'}
{_quality_table(workdir, summary, layers)}
{_insight_table(summary, layers)}
{compare}
"""
  return _page(f"{model} · stviz_jax", body,
               _url(workdir, os.path.join(gallery_dir, "gallery.css")),
               _url(workdir, os.path.join(gallery_dir, "gallery.js")), None)
