r"""A static HTML gallery of a work directory: every unit, every setting, playing.

Command (also run automatically at the end of `stviz_jax.main`):

  python -m stviz_jax.gallery --workdir=DIR [--stats=PATH] [--encodings=rgb,hsv]

then open `DIR/index.html` in a browser, straight from the filesystem
(file://, no server, no network). For browsers that will not play video from
file:// (Safari), or to open it from another machine through a tunnel, serve it:

  python -m stviz_jax.gallery --serve=DIR [--port=8000] [--host=127.0.0.1]

(standard library HTTP with byte ranges; `--workdir=DIR --serve=DIR` builds,
then serves). Pages:

  DIR/index.html                       the run: model, seed, config, one card per layer
  DIR/gallery/<layer>/index.html       a tile per unit: appearance image(s) and the
                                       flow video looping, a switch between
                                       regularisation settings (e.g. gamma), sorting
                                       by unit, activation or motion index, layer
                                       plots (motion histograms), figure
  DIR/gallery/<layer>/unit_0003.html   one unit: every setting as a row (the paper's
                                       figure layout), objective/activation history,
                                       exact config and seed, raw-array downloads,
                                       dataset statistics when given, its K
                                       diverse samples when the run made them, and
                                       what the unit uses (config.insight: motion
                                       index, stream shares, sanity, attribution
                                       overlays, accentuated clips)
  DIR/gallery/compare/class_0003_vs_0005.html
                                       two class units side by side (the paper's
                                       Figs. 13-15 confusion study): appearance and
                                       flow of each per setting, their ranks among
                                       the classes, and the class_contrast A - B
                                       result when that target was run

`<layer>` is the folder of a job's target (`[host_<k>/]<target>/<setting>/`),
i.e. the layer's name for a single-target run. Comparisons are the job's
`summary.json` `comparisons` (`config.gallery.compare`), every unit A of a
`class_contrast` target (against its class B), or `--compare=A:B;...` here
(class names of the run or indices).

Media come from the job's files beside each `result.npz`
(`<layer>/<setting>/unit_0003_<stream>.{png,gif,mp4,webm}`); any that are
missing (e.g. a sweep that only wrote `result.npz`) are rendered here, with the
unit's raw arrays (`unit_0003.npz`) beside them. Pages stay fast with hundreds
of units: images use `loading="lazy"`, videos `preload="none"` and get their
source only when scrolled into view (IntersectionObserver), and pause when they
leave it. In-page videos are WebM/VP9 (decoded by every Chromium and Firefox
build) with MP4/H.264 as the fallback and GIF when the browser plays neither.

Dataset statistics (`--stats`, or `DIR/stats.json` / `DIR/stats.npz` when
present) are optional; either file may hold any of these per layer:

  JSON: {"class_names": [K names],
         "layers": {"<layer>": {
             "a_hat": [U floats],                # max activation per unit
             "per_class_max": [[K floats] x U],  # max activity per class
             "class_names": [K names],           # overrides the top-level list
             "top_clips": {"<unit>": [{"score": float, "class": name or index,
                                       "video": path, "frame": int, "y": int,
                                       "x": int, "thumbnail": path}, ...]}}}}
  npz:  class_names (K,), <layer>/a_hat (U,), <layer>/per_class_max (U, K),
        <layer>/top_scores (U, k), <layer>/top_labels (U, k) class indices,
        <layer>/top_videos (U, k) str, <layer>/top_frames (U, k),
        <layer>/top_thumbnails (U, k, h, w, 3) or (U, k, T, h, w, 3) uint8.

Relative paths in the statistics are relative to the statistics file; row u
of a per-unit array belongs to unit u of the layer.

Modules, data flowing one way: `runs` (what the work directory holds, read
through `stviz_jax.layout`) -> `dataset_stats`, `compare` -> `media`
(rendering, plots, the layer figure) -> `pages` (HTML; the style sheet and
script are the files `stviz_jax/assets/gallery/*`) -> `builder` (`build`,
the command line).
"""

from stviz_jax.gallery.builder import build, main
from stviz_jax.gallery.compare import Comparison, class_names, comparisons, parse_compare
from stviz_jax.gallery.dataset_stats import LayerStats, find_stats, load_stats
from stviz_jax.gallery.media import (DEFAULT_FORMATS, DISPLAY_SIZE, FIGURE_UNITS, TOP_CLASSES,
                                     ensure_media, views_of)
from stviz_jax.gallery.runs import (COMPARE_DIR, GALLERY_DIR, RESULT_FILE, LayerRuns, Part,
                                    SettingRun, discover, read_run)

__all__ = ["COMPARE_DIR", "Comparison", "DEFAULT_FORMATS", "DISPLAY_SIZE", "FIGURE_UNITS",
           "GALLERY_DIR", "LayerRuns", "LayerStats", "Part", "RESULT_FILE", "SettingRun",
           "TOP_CLASSES", "build", "class_names", "comparisons", "discover", "ensure_media",
           "find_stats", "load_stats", "main", "parse_compare", "read_run", "views_of"]
