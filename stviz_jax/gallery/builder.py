"""`build`: the whole gallery of a work directory, and its command line."""

from __future__ import annotations

import os
from typing import Sequence

from absl import app, flags, logging

from stviz_jax import files, layout, render
from stviz_jax.gallery.compare import class_names, comparisons, parse_compare
from stviz_jax.gallery.dataset_stats import find_stats, load_stats
from stviz_jax.gallery.media import (DEFAULT_FORMATS, FIGURE_UNITS, ensure_media, layer_figure,
                                     layer_plots, stale)
from stviz_jax.gallery.pages import (asset, class_names_of, compare_page, index_page, layer_page,
                                     unit_page, write)
from stviz_jax.gallery import serve
from stviz_jax.gallery.runs import COMPARE_DIR, GALLERY_DIR, LOGITS, discover, read_json


def build(workdir: str, stats: str | None = None, encodings: Sequence[str] = ("rgb",),
          formats: Sequence[str] = DEFAULT_FORMATS, fps: float = render.DEFAULT_FPS,
          figure_units: int = FIGURE_UNITS, compare: str | Sequence | None = None) -> str:
  """Writes the gallery of everything under `workdir`; returns `index.html`'s path.

  Args:
    workdir: a job's work directory (`<layer>/<setting>/result.npz` inside).
    stats: optional statistics file (JSON or npz; schema in the module
      docstring); default `find_stats(workdir)`.
    encodings: flow colourings shown side by side: "rgb" (the paper's
      R, G, B = u, v, |f|) and/or "hsv" (colour wheel).
    formats: media written per unit and stream when missing ("png" always
      used; "webm" and "mp4" are the in-page videos, "gif" the fallback).
    fps: frame rate of rendered videos.
    figure_units: rows of each layer's figure (the most active units).
    compare: class pairs to show side by side, "A:B; C:D" (class names of the
      run or indices; `parse_compare`) or `[(a, b), ...]`; None = the job's
      `summary.json` `comparisons`. Pages for class_contrast targets are added.

  Returns:
    The path of `workdir/index.html`.

  Raises:
    ValueError: for a `compare` class that is unknown or not visualised.
  """
  encodings = tuple(encodings)
  if not encodings or any(e not in render.ENCODINGS for e in encodings):
    raise ValueError(f"encodings {encodings!r}: choose from {render.ENCODINGS}")
  formats = tuple(dict.fromkeys(("png",) + tuple(formats)))
  workdir = os.path.abspath(workdir)
  layers = discover(workdir)
  # Media a killed build (or job) left half-written; build is the only writer now.
  leftovers = files.remove_stale_temps(workdir)
  if leftovers:
    logging.info("%s: removed %d temporary file(s) of an interrupted run", workdir,
                 len(leftovers))
  names = class_names(workdir)
  if compare is None:
    pairs = [(int(c["a"]), int(c["b"])) for c in (read_json(
        os.path.join(workdir, layout.SUMMARY_FILE)) or {}).get("comparisons") or ()]
  else:
    pairs = parse_compare(compare, names)
  comps = comparisons(layers, pairs, names)
  if compare is not None:
    shown = sorted({u for l in layers if l.layer == LOGITS and l.kind == "class_logit"
                    for u in l.units})
    for u in (u for pair in pairs for u in pair):
      if u not in shown:
        raise ValueError(f"compare: class {names.get(u, u)!r} (unit {u}) is not visualised "
                         f"by a class_logit target on {LOGITS!r} in {workdir} "
                         f"(visualised: {shown or 'none'})")
  stats_path = stats or find_stats(workdir)
  all_stats = load_stats(stats_path) if stats_path else {}
  gallery_dir = os.path.join(workdir, GALLERY_DIR)
  os.makedirs(gallery_dir, exist_ok=True)
  write(os.path.join(gallery_dir, "gallery.css"), asset("gallery.css"))
  write(os.path.join(gallery_dir, "gallery.js"), asset("gallery.js"))
  if "hsv" in encodings:
    render.save_png(os.path.join(gallery_dir, "flow_legend_hsv.png"),
                    render.flow_legend(64, "hsv"))
  config = read_json(os.path.join(workdir, layout.CONFIG_FILE)) or {}
  model = (read_json(os.path.join(workdir, layout.SUMMARY_FILE)) or {}).get(
      "model", config.get("model", "model"))
  figures = {}
  for layer in layers:
    page_dir = os.path.join(gallery_dir, layer.rel_dir)
    os.makedirs(page_dir, exist_ok=True)
    n = ensure_media(layer, encodings, formats, fps)
    stats_layer = all_stats.get(layer.layer)
    layer_plots(layer, page_dir, stats_layer)
    fig_stem = os.path.join(page_dir, "figure")
    mtime = max(r.mtime for r in layer.runs)
    if stale(fig_stem + ".npz", mtime):
      figures[layer.rel_dir] = layer_figure(
          layer, fig_stem, encodings, figure_units,
          class_names_of(read_json(os.path.join(workdir, layout.SUMMARY_FILE)) or {}, layer))
    else:
      figures[layer.rel_dir] = {f: f"{fig_stem}.{f}" for f in ("png", "gif", "mp4", "npz")
                                if os.path.exists(f"{fig_stem}.{f}")}
    write(os.path.join(page_dir, "index.html"),
           layer_page(workdir, layer, page_dir, encodings, stats_layer,
                       figures[layer.rel_dir], model))
    units = layer.units
    for k, u in enumerate(units):
      write(os.path.join(page_dir, layout.unit_file(u, ".html")),
             unit_page(workdir, layer, page_dir, u, units[k - 1] if k else None,
                        units[k + 1] if k + 1 < len(units) else None, encodings,
                        stats_layer, model, comps))
    logging.info("gallery: layer %s, %d units, %d settings, %d media rendered",
                 layer.layer, len(units), len(layer.runs), n)
  for comp in comps:
    write(os.path.join(gallery_dir, COMPARE_DIR, comp.file),
           compare_page(workdir, comp, encodings, model))
  index = os.path.join(workdir, "index.html")
  write(index, index_page(workdir, layers, figures, model, stats_path, comps))
  logging.info("gallery: open file://%s", index)
  return index


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {list(argv)[1:]}")
  logging.set_verbosity(logging.INFO)
  f = flags.FLAGS
  if not f.workdir and not f.serve:
    raise app.UsageError("give --workdir=DIR (build its gallery) and/or --serve=DIR "
                         "(serve a built gallery over HTTP)")
  # Bad input is one line, no traceback (stviz_jax.cli).
  if f.workdir:
    build(f.workdir, stats=f.stats or None,
          encodings=[e.strip() for e in f.encodings.split(",") if e.strip()],
          fps=f.fps, figure_units=f.figure_units, compare=f.compare or None)
  if f.serve:
    if not os.path.isfile(os.path.join(f.serve, "index.html")):
      raise FileNotFoundError(f"--serve {f.serve}: no index.html (build it first: "
                              f"--workdir={f.serve} --serve={f.serve})")
    serve.serve(f.serve, f.host, f.port)


def define_flags() -> None:
  # Defined only when run as a program: the job imports this module under its
  # own flags (--workdir among them).
  flags.DEFINE_string("workdir", None, "Work directory of a run (stviz_jax.main): build "
                      "its gallery.")
  flags.DEFINE_string("stats", "", "Optional statistics file (JSON or npz).")
  flags.DEFINE_string("encodings", "rgb", "Flow colourings, comma separated: rgb, hsv.")
  flags.DEFINE_float("fps", render.DEFAULT_FPS,
                     "Frame rate of rendered videos (4: an 8-frame clip loops in 2 s).")
  flags.DEFINE_integer("figure_units", FIGURE_UNITS, "Rows of each layer's figure.")
  flags.DEFINE_string("compare", "", "Class units side by side: 'A:B;C:D' (class names or "
                      "indices); default: the run's config.gallery.compare.")
  flags.DEFINE_string("serve", None, "Serve the built gallery of this work directory over "
                      "HTTP (for browsers that block file:// video); after --workdir's build.")
  flags.DEFINE_string("host", "127.0.0.1", "Address --serve listens on (localhost only by "
                      "default; 0.0.0.0 shares it on the network).")
  flags.DEFINE_integer("port", 8000, "Port of --serve (0: any free port).")
