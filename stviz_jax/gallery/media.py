"""Media the pages show: per unit and stream PNG/GIF/MP4/WebM rendered when
missing or stale, the layer figure, and the layer and unit plots."""

from __future__ import annotations

import concurrent.futures
import functools
import json
import os
from typing import Mapping, Sequence

import numpy as np

from stviz_jax import files, layout, plots, render
from stviz_jax.gallery.dataset_stats import LayerStats
from stviz_jax.gallery.runs import LayerRuns, Part, SettingRun

DEFAULT_FORMATS = ("png", "gif", "mp4", "webm")
DISPLAY_SIZE = 128      # rendered media height, pixels (nearest-neighbour upscaling).
FIGURE_UNITS = 16       # rows of the per-layer figure (highest mean activation).
TOP_CLASSES = 10        # classes in the per-class bar chart (as in the paper).


def views_of(layer: LayerRuns, encodings: Sequence[str]) -> list[tuple[str, str, str]]:
  """(view name, stream, flow encoding) shown per unit: appearance beside motion."""
  views = []
  for stream in layer.streams:
    channels = layer.runs[0].shapes[stream][-1]
    is_flow = stream == "flow" or channels == 2
    if is_flow:
      for enc in encodings:
        views.append((stream if enc == "rgb" else f"{stream}_{enc}", stream, enc))
    else:
      views.append((stream, stream, "rgb"))
  return views


def stale(path: str, source_mtime: float) -> bool:
  return not os.path.exists(path) or os.path.getmtime(path) < source_mtime


def ensure_media(layer: LayerRuns, encodings: Sequence[str] = ("rgb",),
                 formats: Sequence[str] = DEFAULT_FORMATS,
                 fps: float = render.DEFAULT_FPS,
                 workers: int | None = None) -> int:
  """Renders every missing or outdated unit medium and raw-array file.

  Encoding runs in a thread pool (`workers`, default one per CPU up to 8):
  the video encoders are ffmpeg processes and most of the rest is I/O.

  Returns:
    The number of files written.
  """
  tasks = []
  for run in layer.runs:
    for part in run.parts:
      tasks += _part_tasks(layer, run, part, encodings, formats, fps)
  if not tasks:
    return 0
  workers = workers or min(8, os.cpu_count() or 1)
  with concurrent.futures.ThreadPoolExecutor(workers) as pool:
    return sum(len(w) for w in pool.map(lambda task: task(), tasks))


def _part_tasks(layer: LayerRuns, run: SettingRun, part: Part,
                encodings: Sequence[str], formats: Sequence[str], fps: float) -> list:
  """The renders one result file still needs, as callables."""
  src_mtime = os.path.getmtime(part.path)
  inputs: dict[str, np.ndarray] = {}

  def stream_inputs(stream):
    if stream not in inputs:
      inputs[stream] = part.load_inputs(stream)
    return inputs[stream]

  tasks = []
  with files.load_npz(part.path) as f:
    rows = {int(u): i for i, u in enumerate(f["units"])}
  for unit in part.units:
    i, unit = rows[int(unit)], int(unit)
    stem = os.path.join(part.dir, layout.unit_file(unit))
    for view, stream, enc in views_of(layer, encodings):
      clip = run.shapes[stream][0] > 1
      wanted = [f for f in formats if clip or f == "png"]
      missing = [f for f in wanted if stale(f"{stem}_{view}.{f}", src_mtime)]
      if missing:
        tasks.append(functools.partial(
            render.save_stream_media, f"{stem}_{view}", stream, stream_inputs(stream)[i],
            missing, encoding=enc, fps=fps, target_size=DISPLAY_SIZE))
    tasks += _sample_tasks(layer, run, part.dir, unit, encodings, formats, fps)
    if not os.path.exists(stem + ".npz"):
      arrays = layout.unit_arrays({s: stream_inputs(s)[i] for s in run.shapes},
                                  run.activations[run.index(unit)], unit, run.seed,
                                  json.dumps(run.config or {}))
      tasks.append(functools.partial(_save_npz, stem + ".npz", arrays))
  return tasks


def _sample_tasks(layer: LayerRuns, run: SettingRun, out_dir: str, unit: int,
                  encodings: Sequence[str], formats: Sequence[str], fps: float) -> list:
  """Renders of samples 1..K-1 (`layout.sample_stem`) that are missing or older
  than the unit's `layout.samples_file` (sample 0 is the unit's own media)."""
  path = os.path.join(out_dir, layout.samples_file(unit))
  if not os.path.exists(path):
    return []
  mtime = os.path.getmtime(path)
  k = layout.npz_shapes(path)["units"][0]
  arrays: dict[str, np.ndarray] = {}
  tasks = []
  for j in range(1, k):
    for view, stream, enc in views_of(layer, encodings):
      clip = run.shapes[stream][0] > 1
      stem = os.path.join(out_dir, layout.sample_stem(unit, j, view))
      missing = [f for f in formats if (clip or f == "png") and stale(f"{stem}.{f}", mtime)]
      if missing:
        if stream not in arrays:
          with files.load_npz(path) as f:
            arrays[stream] = f[f"inputs_{stream}"]
        tasks.append(functools.partial(
            render.save_stream_media, stem, stream, arrays[stream][j],
            missing, encoding=enc, fps=fps, target_size=DISPLAY_SIZE))
  return tasks


def _save_npz(path: str, arrays: Mapping[str, np.ndarray]) -> dict[str, str]:
  with files.atomic_path(path) as tmp:
    with open(tmp, "wb") as fh:
      np.savez(fh, **arrays)
  return {"npz": path}


def layer_figure(layer: LayerRuns, out_stem: str, encodings: Sequence[str],
                  max_units: int, names: Mapping[int, str] | None = None
                  ) -> dict[str, str] | None:
  """The paper's figure for the most active units present under every setting
  (rows labelled with the class name of class units, from `names`)."""
  common = set(layer.units)
  for r in layer.runs:
    common &= {int(u) for u in r.units}
  if not common:
    return None
  mean_act = {u: np.mean([r.activations[r.index(u)] for r in layer.runs]) for u in common}
  units = sorted(sorted(common), key=lambda u: -mean_act[u])[:max_units]
  units.sort()
  inputs = {r.name: r.unit_inputs(units) for r in layer.runs}
  cells = [[inputs[r.name][u] for r in layer.runs] for u in units]
  meta = {"layer": layer.layer, "units": units, "settings": [r.name for r in layer.runs],
          "seed": layer.runs[0].seed}
  names = names or {}
  rows = [f"{names[u]} (#{u})" if u in names else f"unit {u}" for u in units]
  return render.save_figure(out_stem, cells, rows,
                            [r.label(plain=True) for r in layer.runs],
                            encoding=encodings[0], target_size=96, meta=meta)


def layer_plots(layer: LayerRuns, out_dir: str, stats: LayerStats | None) -> None:
  mtime = max(r.mtime for r in layer.runs)
  units = layer.units
  path = os.path.join(out_dir, "layer_activations.png")
  if stale(path, mtime):
    acts = {}
    for r in layer.runs:
      a = np.full(len(units), np.nan)
      for j, u in enumerate(units):
        i = r.index(u)
        if i is not None:
          a[j] = r.activations[i]
      acts[r.label()] = a
    plots.layer_activations(path, units, acts, f"{layer.layer}: final activation per unit")
  path = os.path.join(out_dir, "layer_objective.png")
  if stale(path, mtime) and all("objective" in r.history for r in layer.runs):
    plots.layer_objective(path, {r.label(): r.history["objective"] for r in layer.runs},
                          f"{layer.layer}: objective vs step")
  for u in units:
    path = os.path.join(out_dir, layout.unit_file(u, "_history.png"))
    if stale(path, mtime):
      hist = {r.label(): {k: v[r.index(u)] for k, v in r.history.items()}
              for r in layer.runs if r.index(u) is not None}
      plots.unit_history(path, hist, f"{layer.layer} unit {u}")
    if stats is not None and stats.per_class_max is not None and u < len(stats.per_class_max):
      path = os.path.join(out_dir, layout.unit_file(u, "_classes.png"))
      plots.class_activity(path, stats.class_names, stats.per_class_max[u], TOP_CLASSES,
                           f"unit {u}: maximum activity per class")
