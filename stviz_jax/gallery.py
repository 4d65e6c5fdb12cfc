r"""A static HTML gallery of a work directory: every unit, every setting, playing.

Command (also run automatically at the end of `stviz_jax.main`):

  python -m stviz_jax.gallery --workdir=DIR [--stats=PATH] [--encodings=rgb,hsv]

then open `DIR/index.html` in a browser, straight from the filesystem
(file://, no server, no network). Pages:

  DIR/index.html                       the run: model, seed, config, one card per layer
  DIR/gallery/<layer>/index.html       a tile per unit: appearance image(s) and the
                                       flow video looping, a switch between
                                       regularisation settings (e.g. gamma), sorting
                                       by unit or activation, layer plots, figure
  DIR/gallery/<layer>/unit_0003.html   one unit: every setting as a row (the paper's
                                       figure layout), objective/activation history,
                                       exact config and seed, raw-array downloads,
                                       dataset statistics when given, and its K
                                       diverse samples when the run made them
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
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import html
import json
import os
import re
import urllib.parse
import zipfile
from typing import Any, Mapping, Sequence

from absl import app, flags, logging
import numpy as np

from stviz_jax import files, plots, quality, render

GALLERY_DIR = "gallery"
RESULT_FILE = "result.npz"
DEFAULT_FORMATS = ("png", "gif", "mp4", "webm")
FIGURE_UNITS = 16       # rows of the per-layer figure (highest mean activation).
DISPLAY_SIZE = 128      # rendered media height, pixels (nearest-neighbour upscaling).
TOP_CLASSES = 10        # classes in the per-class bar chart (as in the paper).
COMPARE_DIR = "compare"  # gallery/compare/: side-by-side pages of two class units.
_LOGITS = "logits"      # stviz_jax.models.LOGITS (not imported: the gallery needs no JAX).
_SAMPLES = "unit_{:04d}_samples.npz"  # the K diverse samples of a unit (stviz_jax.job).


# --- what the work directory holds --------------------------------------------


@dataclasses.dataclass
class Part:
  """One `result.npz` file and the units it holds."""

  path: str
  units: np.ndarray

  @property
  def dir(self) -> str:
    return os.path.dirname(self.path)

  def load_inputs(self, stream: str) -> np.ndarray:
    with files.load_npz(self.path) as f:
      return f[f"inputs_{stream}"]


@dataclasses.dataclass
class SettingRun:
  """The units of one layer under one regularisation setting.

  Usually one `result.npz`; a multi-host sweep (`host_<k>/...`) gives one file
  per host, merged here into `parts`. Inputs are not loaded (they can be
  large): `shapes` gives their per-unit shapes and `Part.load_inputs` reads one
  stream when media must be rendered.
  """

  name: str
  layer: str
  units: np.ndarray
  activations: np.ndarray
  history: dict[str, np.ndarray]
  seed: int
  settings: dict[str, tuple[float, ...]]
  a_hat_given: bool
  config: dict | None
  shapes: dict[str, tuple[int, ...]]
  parts: list[Part]
  _where: dict[int, tuple[int, int]] = dataclasses.field(default_factory=dict, repr=False)
  _files: dict[str, dict[int, list[str]]] = dataclasses.field(default_factory=dict,
                                                               repr=False)

  def __post_init__(self):
    k = 0
    for p, part in enumerate(self.parts):
      for unit in part.units:
        self._where.setdefault(int(unit), (p, k))
        k += 1

  @property
  def mtime(self) -> float:
    return max(os.path.getmtime(p.path) for p in self.parts)

  def label(self, plain: bool = False) -> str:
    """'κ=1, γ=10' for the flow (or only) stream's (kappa, gamma); else the name."""
    tv = self.settings.get("flow") or (next(iter(self.settings.values()))
                                       if len(self.settings) == 1 else None)
    if tv is None:
      return self.name
    k, g = (f"{float(v):g}" for v in tv[:2])
    return f"kappa={k} gamma={g}" if plain else f"κ={k}, γ={g}"

  def index(self, unit: int) -> int | None:
    """Position of `unit` in `units` / `activations` / `history` (None: not run)."""
    hit = self._where.get(int(unit))
    return None if hit is None else hit[1]

  def part(self, unit: int) -> Part:
    return self.parts[self._where[int(unit)][0]]

  def unit_inputs(self, units: Sequence[int]) -> dict[int, dict[str, np.ndarray]]:
    """{unit: {stream: (T, H, W, C)}}, reading each needed file once."""
    out: dict[int, dict[str, np.ndarray]] = {}
    for part in self.parts:
      rows = {int(u): i for i, u in enumerate(part.units)}
      wanted = [u for u in units if u in rows and self.part(u) is part]
      if wanted:
        arrays = {s: part.load_inputs(s) for s in self.shapes}
        for u in wanted:
          out[u] = {s: a[rows[u]] for s, a in arrays.items()}
    return out

  def samples(self, unit: int) -> np.ndarray | None:
    """Final activations of the unit's K diverse samples (`unit_0003_samples.npz`
    beside its result; sample 0 is the unit's result), or None when there are none."""
    name = _SAMPLES.format(int(unit))
    if self.index(unit) is None or name not in self.unit_files(unit):
      return None
    with files.load_npz(os.path.join(self.part(unit).dir, name)) as f:
      return np.asarray(f["activations"], np.float64)

  def objective(self) -> dict:
    """The run's `config.objective` (kind, other, diversity, ...); {} when unknown."""
    return dict((self.config or {}).get("objective") or {})

  def unit_files(self, unit: int) -> list[str]:
    """Files of `unit` beside its result (`unit_0003*`), each folder listed once."""
    d = self.part(unit).dir
    if d not in self._files:
      self._files[d] = {}
      for name in sorted(os.listdir(d)):
        m = re.match(r"unit_(\d+)[_.]", name)
        if m:
          self._files[d].setdefault(int(m.group(1)), []).append(name)
    return self._files[d].get(int(unit), [])


@dataclasses.dataclass
class LayerRuns:
  """All settings found for one target of a run (`rel_dir`: its folder under gallery/).

  A job's target is one layer under one objective; `target` is its folder
  (the layer's name for a single-target run), so two targets of the same
  layer (e.g. class units and a class contrast of 'logits') stay apart.
  """

  layer: str
  rel_dir: str
  runs: list[SettingRun]
  target: str = ""

  @property
  def title(self) -> str:
    """The layer, or 'target (layer)' when the target's folder is named otherwise."""
    if not self.target or self.target == re.sub(r"[^A-Za-z0-9_.-]", "_", self.layer):
      return self.layer
    return f"{self.target} ({self.layer})"

  @property
  def kind(self) -> str:
    """The objective kind ('channel', 'class_logit', 'class_contrast', ...)."""
    return self.runs[0].objective().get("kind") or (
        "class_logit" if self.layer == _LOGITS else "channel")

  @property
  def units(self) -> list[int]:
    return sorted({int(u) for r in self.runs for u in r.units})

  @property
  def streams(self) -> list[str]:
    return render.display_order(self.runs[0].shapes)


def _npz_shapes(path: str) -> dict[str, tuple[int, ...]]:
  """Array shapes inside an `.npz` without reading the arrays."""
  shapes = {}
  with zipfile.ZipFile(path) as z:
    for name in z.namelist():
      with z.open(name) as f:
        version = np.lib.format.read_magic(f)
        reader = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                  else np.lib.format.read_array_header_2_0)
        shapes[name[:-4] if name.endswith(".npy") else name] = reader(f)[0]
  return shapes


def read_run(path: str) -> SettingRun:
  """Reads everything but the inputs from a `stviz_jax.Result` `.npz`."""
  try:
    shapes = _npz_shapes(path)
    with files.load_npz(path) as f:
      meta = json.loads(str(f["meta"]))
      history = {k[8:]: f[k] for k in f.files if k.startswith("history_")}
      units, acts = np.asarray(f["units"]).astype(int), f["activations"]
  except (OSError, KeyError, ValueError, zipfile.BadZipFile) as e:
    raise ValueError(f"{path}: not a readable stviz_jax result ({e})") from e
  return SettingRun(
      name=os.path.basename(os.path.dirname(path)), layer=meta["layer"], units=units,
      activations=np.asarray(acts, np.float64), history=history, seed=int(meta["seed"]),
      settings={k: tuple(v) for k, v in meta.get("settings", {}).items()},
      a_hat_given=bool(meta.get("a_hat_given", False)), config=meta.get("config"),
      shapes={k[7:]: tuple(s[1:]) for k, s in shapes.items() if k.startswith("inputs_")},
      parts=[Part(path, units)])


def _merge(runs: Sequence[SettingRun]) -> SettingRun:
  """One setting from several files (hosts of a sweep); a repeated unit keeps its first."""
  first = runs[0]
  for r in runs[1:]:
    if (r.settings, r.seed, r.shapes) != (first.settings, first.seed, first.shapes):
      raise ValueError(
          f"{r.parts[0].path} and {first.parts[0].path}: the same layer {r.layer!r} and "
          f"setting {r.name!r} with different regularisation, seed or input shapes")
  parts, seen = [], set()
  keep_rows = []
  for r in runs:
    keep = np.array([int(u) not in seen for u in r.units], bool)
    if not keep.all():
      logging.warning("gallery: %s repeats units %s; showing the first copy",
                      r.parts[0].path, r.units[~keep].tolist())
    seen.update(int(u) for u in r.units)
    parts.append(Part(r.parts[0].path, r.units[keep]))
    keep_rows.append(keep)
  cat = lambda xs: np.concatenate([x[k] for x, k in zip(xs, keep_rows)])
  history = {k: cat([r.history[k] for r in runs]) for k in first.history
             if all(k in r.history for r in runs)}
  return dataclasses.replace(
      first, units=cat([r.units for r in runs]),
      activations=cat([r.activations for r in runs]), history=history, parts=parts,
      _where={}, _files={})


def _setting_order(run: SettingRun):
  flow = run.settings.get("flow", ())
  return (tuple(float(v) for v in flow), run.name)


def _target_dir(workdir: str, path: str) -> str:
  """`<target>` of `[host_<k>/]<target>/<setting>/result.npz` ('' at the top)."""
  rel = os.path.relpath(os.path.dirname(os.path.dirname(path)), workdir)
  parts = [p for p in rel.split(os.sep) if p not in ("", ".")]
  if parts and re.fullmatch(r"host_\d+", parts[0]):
    parts = parts[1:]
  return "/".join(parts)


def discover(workdir: str) -> list[LayerRuns]:
  """Finds every `<target>/<setting>/result.npz` under `workdir`, by target.

  Files of the same target, layer and setting in different host folders (a
  multi-host sweep, `host_<k>/<target>/<setting>/result.npz`) are merged.
  """
  if not os.path.isdir(workdir):
    raise FileNotFoundError(f"workdir {workdir!r} does not exist")
  found: dict[tuple[str, str], dict[str, list[SettingRun]]] = {}
  for root, dirs, names in os.walk(workdir):
    dirs[:] = sorted(d for d in dirs if not d.startswith(".") and
                     os.path.join(root, d) != os.path.join(workdir, GALLERY_DIR))
    if RESULT_FILE in names:
      path = os.path.join(root, RESULT_FILE)
      run = read_run(path)
      key = (_target_dir(workdir, path) or run.layer, run.layer)
      found.setdefault(key, {}).setdefault(run.name, []).append(run)
  layers, used = [], set()
  for (target, layer), by_setting in sorted(found.items()):
    runs = sorted((_merge(r) for r in by_setting.values()), key=_setting_order)
    streams = {tuple(sorted(r.shapes)) for r in runs}
    if len(streams) > 1:
      raise ValueError(f"layer {layer!r} in {workdir}: settings have different "
                       f"streams {sorted(streams)}")
    rel = re.sub(r"[^A-Za-z0-9_.-]", "_", target)
    while rel in used or rel == COMPARE_DIR:
      rel += "_"
    used.add(rel)
    layers.append(LayerRuns(layer, rel, runs, target))
  return layers


# --- dataset statistics (optional) ---------------------------------------------


@dataclasses.dataclass
class LayerStats:
  """Per-unit dataset statistics of one layer (any field may be absent)."""

  a_hat: np.ndarray | None = None
  class_names: list[str] | None = None
  per_class_max: np.ndarray | None = None
  top_clips: dict[int, list[dict[str, Any]]] = dataclasses.field(default_factory=dict)
  top_thumbnails: np.ndarray | None = None


# npz field top_<name> -> key of a clip entry (the JSON schema's names).
_NPZ_CLIP_FIELDS = {"clips": "clip", "labels": "class", "videos": "video",
                    "frames": "frame", "t": "t", "y": "y", "x": "x"}


def load_stats(path: str) -> dict[str, LayerStats]:
  """Reads a statistics file (JSON or npz, schema in the module docstring).

  Returns:
    layer -> LayerStats; relative clip and thumbnail paths made absolute.
  """
  if not os.path.isfile(path):
    raise FileNotFoundError(f"statistics file {path!r} does not exist")
  base = os.path.dirname(os.path.abspath(path))
  absolute = lambda p: p if (not p or "://" in p or os.path.isabs(p)) else os.path.join(base, p)
  out: dict[str, LayerStats] = {}
  if path.endswith(".npz"):
    with files.load_npz(path) as f:
      names = [str(s) for s in f["class_names"]] if "class_names" in f.files else None
      for key in f.files:
        if "/" not in key:
          continue
        layer, field = key.rsplit("/", 1)
        st = out.setdefault(layer, LayerStats(class_names=names))
        if field in ("a_hat", "per_class_max", "top_thumbnails"):
          setattr(st, field, np.asarray(f[key]))
      for layer, st in out.items():
        if f"{layer}/top_scores" in f.files:
          scores = f[f"{layer}/top_scores"]
          fields = {n: f[f"{layer}/top_{n}"] for n in _NPZ_CLIP_FIELDS
                    if f"{layer}/top_{n}" in f.files}
          for u in range(scores.shape[0]):
            clips = []
            for k in range(scores.shape[1]):
              # Unfilled ranks (fewer clips than k): index -1 or a non-finite score.
              if not np.isfinite(scores[u, k]) or ("clips" in fields and
                                                   fields["clips"][u, k] < 0):
                continue
              clip = {"rank": k, "score": float(scores[u, k])}
              for n, key in _NPZ_CLIP_FIELDS.items():
                if n in fields:
                  v = fields[n][u, k]
                  clip[key] = absolute(str(v)) if n == "videos" else int(v)
              if not clip.get("video"):
                clip.pop("video", None)
              clips.append(clip)
            st.top_clips[u] = clips
  else:
    try:
      with open(path) as fh:
        data = json.load(fh)
    except json.JSONDecodeError as e:
      raise ValueError(f"{path}: not valid JSON ({e})") from e
    names = data.get("class_names")
    for layer, d in data.get("layers", {}).items():
      st = LayerStats(class_names=d.get("class_names", names))
      for field in ("a_hat", "per_class_max"):
        if d.get(field) is not None:
          setattr(st, field, np.asarray(d[field], np.float64))
      for unit, clips in d.get("top_clips", {}).items():
        st.top_clips[int(unit)] = [
            dict(c, rank=k, **{n: absolute(c[n]) for n in ("video", "thumbnail") if c.get(n)})
            for k, c in enumerate(clips)]
      out[layer] = st
  for layer, st in out.items():
    if st.per_class_max is not None:
      if st.class_names is None:
        st.class_names = [str(i) for i in range(st.per_class_max.shape[-1])]
      if st.per_class_max.ndim != 2 or st.per_class_max.shape[1] != len(st.class_names):
        raise ValueError(f"{path}: layer {layer!r} per_class_max has shape "
                         f"{st.per_class_max.shape}, expected (units, "
                         f"{len(st.class_names)}) for {len(st.class_names)} class names")
    for clips in st.top_clips.values():
      for c in clips:
        if isinstance(c.get("class"), (int, np.integer)) and st.class_names:
          c["class"] = st.class_names[int(c["class"])]
  return out


def find_stats(workdir: str) -> str | None:
  """`DIR/stats.json`, `DIR/stats.npz` or the config's `objective.a_hat_from`."""
  for name in ("stats.json", "stats.npz"):
    if os.path.isfile(os.path.join(workdir, name)):
      return os.path.join(workdir, name)
  cfg = _read_json(os.path.join(workdir, "config.json")) or {}
  path = (cfg.get("objective") or {}).get("a_hat_from")
  return path if path and os.path.isfile(path) else None


# --- comparisons of two class units -------------------------------------------


@dataclasses.dataclass
class Comparison:
  """Class units A and B side by side, with the class_contrast results of the pair.

  `a_layer` / `b_layer`: the class_logit target holding each (None: not run);
  `contrasts`: (heading, class_contrast target, its unit) for A - B and B - A.
  """

  a: int
  b: int
  names: tuple[str, str]
  a_layer: LayerRuns | None
  b_layer: LayerRuns | None
  contrasts: list[tuple[str, LayerRuns, int]]

  @property
  def file(self) -> str:
    return f"class_{self.a:04d}_vs_{self.b:04d}.html"

  @property
  def title(self) -> str:
    return f"{self.names[0]} vs {self.names[1]}"

  def shows(self, layer: LayerRuns, unit: int) -> bool:
    """Whether the page shows `unit` of `layer`."""
    return any(l is layer and u == unit for _, l, u in self.groups())

  def groups(self) -> list[tuple[str, LayerRuns | None, int]]:
    """(heading, target, unit) of each column group: A, B, then the contrasts."""
    return ([(f"{self.names[0]} (class {self.a})", self.a_layer, self.a),
             (f"{self.names[1]} (class {self.b})", self.b_layer, self.b)]
            + [(f"{h} (class contrast)", l, u) for h, l, u in self.contrasts])


def class_names(workdir: str) -> dict[int, str]:
  """Class index -> name for the classes a job's `summary.json` names."""
  summary = _read_json(os.path.join(workdir, "summary.json")) or {}
  names = {}
  for t in (summary.get("targets") or {}).values():
    names.update({int(u): str(n) for u, n in (t.get("class_names") or {}).items()})
  for c in summary.get("comparisons") or ():
    names.update({int(c["a"]): str(c["names"][0]), int(c["b"]): str(c["names"][1])})
  return names


def parse_compare(spec: str | Sequence, names: Mapping[int, str]) -> list[tuple[int, int]]:
  """'A:B; C:D' (class names of the run or indices; ',' also separates) -> pairs.

  Raises:
    ValueError: one line naming the malformed pair or unknown class, with a
      few of the run's class names.
  """
  pairs = ([p.strip() for p in re.split(r"[;,]", spec) if p.strip()]
           if isinstance(spec, str) else list(spec))
  index = {n: u for u, n in names.items()}
  out = []
  for pair in pairs:
    sides = pair.split(":") if isinstance(pair, str) else list(pair)
    if len(sides) != 2:
      raise ValueError(f"compare: {pair!r} is not a pair 'A:B' (pairs separated by ';')")
    ab = []
    for side in sides:
      side = str(side).strip()
      if re.fullmatch(r"\d+", side):
        ab.append(int(side))
      elif side in index:
        ab.append(index[side])
      else:
        known = [f"{n!r} ({u})" for u, n in sorted(names.items())]
        raise ValueError(f"compare: unknown class {side!r}; classes of this run: "
                         + (", ".join(known[:5]) + (f" and {len(known) - 5} more"
                                                    if len(known) > 5 else "")
                            if known else "none named (use indices)"))
    out.append((ab[0], ab[1]))
  return out


def comparisons(layers: Sequence[LayerRuns], pairs: Sequence[tuple[int, int]] = (),
                names: Mapping[int, str] | None = None) -> list[Comparison]:
  """The comparison pages: `pairs`, then unit A of every class_contrast target
  against its class B (each unordered pair once).

  A pair's classes are looked up in the class_logit targets on 'logits' (the
  first holding each); its contrasts are the class_contrast targets of A
  against B and of B against A.
  """
  names = dict(names or {})
  label = lambda u: names.get(u, f"class {u}")
  classes = [l for l in layers if l.layer == _LOGITS and l.kind == "class_logit"]
  contrasts = []
  for l in layers:
    other = l.runs[0].objective().get("other")
    if l.layer == _LOGITS and l.kind == "class_contrast" and isinstance(other, int) and other >= 0:
      contrasts.append((l, other))
  wanted = [(int(a), int(b)) for a, b in pairs]
  wanted += [(u, other) for l, other in contrasts for u in l.units if u != other]
  out, seen = [], set()
  for a, b in wanted:
    if frozenset((a, b)) in seen:
      continue
    seen.add(frozenset((a, b)))
    holder = lambda u: next((l for l in classes if u in l.units), None)
    cons = [(f"{label(x)} − {label(y)}", l, x) for x, y in ((a, b), (b, a))
            for l, other in contrasts if other == y and x in l.units]
    out.append(Comparison(a, b, (label(a), label(b)), holder(a), holder(b), cons))
  return out


# --- media and plots -----------------------------------------------------------


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


def _stale(path: str, source_mtime: float) -> bool:
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
    stem = os.path.join(part.dir, f"unit_{unit:04d}")
    for view, stream, enc in views_of(layer, encodings):
      clip = run.shapes[stream][0] > 1
      wanted = [f for f in formats if clip or f == "png"]
      missing = [f for f in wanted if _stale(f"{stem}_{view}.{f}", src_mtime)]
      if missing:
        tasks.append(functools.partial(
            render.save_stream_media, f"{stem}_{view}", stream, stream_inputs(stream)[i],
            missing, encoding=enc, fps=fps, target_size=DISPLAY_SIZE))
    tasks += _sample_tasks(layer, run, stem, encodings, formats, fps)
    if not os.path.exists(stem + ".npz"):
      arrays = {f"inputs_{s}": stream_inputs(s)[i] for s in run.shapes}
      arrays.update(activation=np.float32(run.activations[run.index(unit)]),
                    unit=np.int32(unit), seed=np.int32(run.seed),
                    config=np.asarray(json.dumps(run.config or {})))
      tasks.append(functools.partial(_save_npz, stem + ".npz", arrays))
  return tasks


def _sample_tasks(layer: LayerRuns, run: SettingRun, stem: str, encodings: Sequence[str],
                  formats: Sequence[str], fps: float) -> list:
  """Renders of samples 1..K-1 (`<stem>_sample<k>_<view>.*`) that are missing or
  older than the unit's `<stem>_samples.npz` (sample 0 is the unit's own media)."""
  path = stem + "_samples.npz"
  if not os.path.exists(path):
    return []
  mtime = os.path.getmtime(path)
  k = _npz_shapes(path)["units"][0]
  arrays: dict[str, np.ndarray] = {}
  tasks = []
  for j in range(1, k):
    for view, stream, enc in views_of(layer, encodings):
      clip = run.shapes[stream][0] > 1
      missing = [f for f in formats if (clip or f == "png")
                 and _stale(f"{stem}_sample{j}_{view}.{f}", mtime)]
      if missing:
        if stream not in arrays:
          with files.load_npz(path) as f:
            arrays[stream] = f[f"inputs_{stream}"]
        tasks.append(functools.partial(
            render.save_stream_media, f"{stem}_sample{j}_{view}", stream, arrays[stream][j],
            missing, encoding=enc, fps=fps, target_size=DISPLAY_SIZE))
  return tasks


def _save_npz(path: str, arrays: Mapping[str, np.ndarray]) -> dict[str, str]:
  with files.atomic_path(path) as tmp:
    with open(tmp, "wb") as fh:
      np.savez(fh, **arrays)
  return {"npz": path}


def _layer_figure(layer: LayerRuns, out_stem: str, encodings: Sequence[str],
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


def _plots(layer: LayerRuns, out_dir: str, stats: LayerStats | None) -> None:
  mtime = max(r.mtime for r in layer.runs)
  units = layer.units
  path = os.path.join(out_dir, "layer_activations.png")
  if _stale(path, mtime):
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
  if _stale(path, mtime) and all("objective" in r.history for r in layer.runs):
    plots.layer_objective(path, {r.label(): r.history["objective"] for r in layer.runs},
                          f"{layer.layer}: objective vs step")
  for u in units:
    path = os.path.join(out_dir, f"unit_{u:04d}_history.png")
    if _stale(path, mtime):
      hist = {r.label(): {k: v[r.index(u)] for k, v in r.history.items()}
              for r in layer.runs if r.index(u) is not None}
      plots.unit_history(path, hist, f"{layer.layer} unit {u}")
    if stats is not None and stats.per_class_max is not None and u < len(stats.per_class_max):
      path = os.path.join(out_dir, f"unit_{u:04d}_classes.png")
      plots.class_activity(path, stats.class_names, stats.per_class_max[u], TOP_CLASSES,
                           f"unit {u}: maximum activity per class")


# --- HTML ----------------------------------------------------------------------


_CSS = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 0 1.5em 2em; color: #222; }
header { position: sticky; top: 0; background: #fff; padding: .6em 0; z-index: 2;
         border-bottom: 1px solid #ddd; }
h1 { font-size: 1.3em; margin: .2em 0; } h2 { font-size: 1.1em; margin-top: 1.4em; }
a { color: #1a5fb4; } .crumbs { font-size: .9em; color: #666; }
.controls { display: flex; flex-wrap: wrap; gap: 1.2em; align-items: center; }
.controls fieldset { border: 1px solid #ccc; border-radius: 4px; padding: .2em .6em; }
.controls label { margin-right: .6em; white-space: nowrap; }
.tiles { display: flex; flex-wrap: wrap; gap: 10px; margin-top: 1em; }
.tile { border: 1px solid #ddd; border-radius: 4px; padding: 4px; background: #fafafa; }
.tile .media, .row .media, td .media { display: flex; gap: 3px; }
.tile .cap { font-size: .85em; display: flex; justify-content: space-between; gap: .5em; }
.tile .quality { font-size: .75em; color: #555; }
td.ok { color: #080; font-weight: bold; } td.bad { color: #b00; font-weight: bold; }
.tile.missing .media { visibility: hidden; }
img.m, video.m { display: block; background: #eee; image-rendering: pixelated; }
.view { text-align: center; font-size: .75em; color: #666; }
table.rows td, table.rows th { padding: 4px 8px; vertical-align: middle; text-align: left; }
table.clips td, table.clips th { padding: 2px 8px; text-align: left; }
pre { background: #f4f4f4; padding: .8em; overflow: auto; max-height: 30em; font-size: .8em; }
.plots img { max-width: 100%; } .note { color: #666; font-size: .9em; }
.card { display: inline-block; vertical-align: top; margin: 0 1em 1em 0; padding: .5em;
        border: 1px solid #ddd; border-radius: 4px; }
.legend { display: inline-flex; align-items: center; gap: .4em; font-size: .85em; }
"""

# Lazy media: a video gets its source only when near the viewport and pauses
# when it leaves (hundreds of decoders would stall the page); images rely on
# loading="lazy". Sources are `data-stem` with "{setting}" replaced by the
# selected setting, plus the best format this browser plays.
_JS = r"""
(function () {
  'use strict';
  const dataEl = document.getElementById('gallery-data');
  const G = dataEl ? JSON.parse(dataEl.textContent) : {settings: []};
  const probe = document.createElement('video');
  const videoExt = probe.canPlayType('video/webm; codecs="vp9"') ? 'webm'
      : (probe.canPlayType('video/mp4; codecs="avc1.42E01E"') ? 'mp4' : 'gif');
  document.documentElement.dataset.videoFormat = videoExt;
  let current = null;

  function url(el) {
    const stem = el.dataset.stem.split('{setting}').join(encodeURIComponent(current || ''));
    return stem + '.' + (el.tagName === 'VIDEO' ? videoExt : (el.dataset.ext || 'png'));
  }
  function loadVideo(v) {
    const tile = v.closest('.tile');
    if (tile && tile.classList.contains('missing')) { return; }  // unit not run here.
    const want = url(v);
    if (v.getAttribute('src') !== want) { v.src = want; }
    const p = v.play(); if (p) { p.catch(function () {}); }
  }
  const io = ('IntersectionObserver' in window) ? new IntersectionObserver(function (es) {
    es.forEach(function (e) {
      const v = e.target; v._visible = e.isIntersecting;
      if (e.isIntersecting) { loadVideo(v); } else if (!v.paused) { v.pause(); }
    });
  }, {rootMargin: '300px 0px'}) : null;

  function gifFallback(v) {  // a browser without VP9 or H.264: looping GIF instead.
    const img = document.createElement('img');
    img.className = v.className; img.dataset.stem = v.dataset.stem; img.dataset.ext = 'gif';
    img.width = v.width; img.height = v.height; img.loading = 'lazy'; img.alt = v.title;
    img.src = url(img); v.replaceWith(img);
  }
  function setupVideos() {
    document.querySelectorAll('video[data-stem]').forEach(function (v) {
      if (videoExt === 'gif') { gifFallback(v); return; }
      if (io) { io.observe(v); } else { loadVideo(v); }
    });
  }
  function show(name) {
    if (!G.settings.some(function (s) { return s.name === name; })) { return; }
    current = name;
    document.querySelectorAll('input[name=setting]').forEach(function (r) {
      r.checked = (r.value === name); });
    document.querySelectorAll('.tile').forEach(function (t) {
      const acts = JSON.parse(t.dataset.acts || '{}');
      const have = name in acts;
      t.classList.toggle('missing', !have);
      const cap = t.querySelector('.act');
      if (cap) { cap.textContent = have ? 'a = ' + acts[name].toPrecision(3) : 'not run'; }
      const qual = t.querySelector('.quality');
      if (qual) { qual.textContent = JSON.parse(t.dataset.quality || '{}')[name] || ''; }
    });
    document.querySelectorAll('img[data-stem]').forEach(function (img) {
      const tile = img.closest('.tile');
      if (tile && tile.classList.contains('missing')) { return; }
      const want = url(img); if (img.getAttribute('src') !== want) { img.src = want; } });
    document.querySelectorAll('video[data-stem]').forEach(function (v) {
      if (v._visible || !io) { loadVideo(v); } });
    if (G.settings.length > 1) { history.replaceState(null, '', '#setting=' + encodeURIComponent(name)); }
    sortTiles();
  }
  function sortTiles() {
    const box = document.querySelector('.tiles'); const sel = document.getElementById('sort');
    if (!box || !sel) { return; }
    const tiles = Array.from(box.children);
    const key = function (t) {
      if (sel.value === 'unit') { return Number(t.dataset.unit); }
      const a = JSON.parse(t.dataset.acts || '{}')[current];
      return a === undefined ? Infinity : -a;
    };
    tiles.sort(function (a, b) { return key(a) - key(b); });
    tiles.forEach(function (t) { box.appendChild(t); });
  }
  function filterTiles() {
    const q = document.getElementById('find').value.trim();
    document.querySelectorAll('.tile').forEach(function (t) {
      t.style.display = (!q || t.dataset.unit === q) ? '' : 'none'; });
  }
  window.galleryShow = show;
  document.addEventListener('DOMContentLoaded', function () {
    document.querySelectorAll('input[name=setting]').forEach(function (r) {
      r.addEventListener('change', function () { show(r.value); }); });
    const sel = document.getElementById('sort'); if (sel) { sel.addEventListener('change', sortTiles); }
    const find = document.getElementById('find'); if (find) { find.addEventListener('input', filterTiles); }
    document.addEventListener('keydown', function (e) {  // [ and ] step through settings.
      if (e.target.tagName === 'INPUT' && e.target.type === 'search') { return; }
      const i = G.settings.findIndex(function (s) { return s.name === current; });
      if (e.key === ']' && i + 1 < G.settings.length) { show(G.settings[i + 1].name); }
      if (e.key === '[' && i > 0) { show(G.settings[i - 1].name); }
    });
    const m = /setting=([^&]+)/.exec(location.hash);
    current = m ? decodeURIComponent(m[1]) : (G.initial || null);
    if (!G.settings.some(function (s) { return s.name === current; })) { current = G.initial || null; }
    setupVideos();
    if (current) { show(current); }
  });
})();
"""


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


def _write(path: str, text: str) -> None:
  files.write_bytes(path, text.encode("utf-8"))


def _read_json(path: str) -> Any:
  if not os.path.isfile(path):
    return None
  with open(path) as f:
    return json.load(f)


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
  name = f"unit_{unit:04d}_sample{sample}_{view}" if sample else f"unit_{unit:04d}_{view}"
  stem = os.path.join(os.path.dirname(run.part(unit).dir), "SETTING", name)
  stem_url = _url(page_dir, stem).replace("SETTING", setting)
  w, h = _media_size(run, stream)
  title = f"unit {unit} {view}" + (f" sample {sample}" if sample else "")
  if run.shapes[stream][0] > 1:
    return (f'<video class="m" muted loop playsinline preload="none" width="{w}" '
            f'height="{h}" data-stem="{_e(stem_url)}" title="{_e(title)}"></video>')
  src = stem_url.replace("{setting}", urllib.parse.quote(run.name))
  return (f'<img class="m" loading="lazy" decoding="async" width="{w}" height="{h}" '
          f'src="{_e(src)}.png" data-stem="{_e(stem_url)}" data-ext="png" '
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


def _layer_page(workdir: str, layer: LayerRuns, page_dir: str, encodings: Sequence[str],
                stats: LayerStats | None, figure: Mapping[str, str] | None,
                model: str) -> str:
  gallery_dir = os.path.join(workdir, GALLERY_DIR)
  views = views_of(layer, encodings)
  ref = layer.runs[0]
  settings = [{"name": r.name, "label": r.label()} for r in layer.runs]
  summary = _read_json(os.path.join(workdir, "summary.json")) or {}
  names = _class_names_of(summary, layer)
  tiles = []
  for u in layer.units:
    acts = {r.name: float(r.activations[r.index(u)]) for r in layer.runs
            if r.index(u) is not None}
    quality_text = {r.name: _quality_html(summary, layer, u, r.name) for r in layer.runs
                    if r.index(u) is not None}
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
        f'data-quality="{_e(json.dumps(quality_text))}">'
        f'<div class="media">{media}</div><div class="cap">'
        f'<a href="unit_{u:04d}.html">unit {u}</a>{extra}<span class="act"></span>'
        f'</div><div class="quality"></div></div>')
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
<option value="act">by activation</option></select></label>
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
{'<img loading="lazy" src="layer_objective.png" alt="objective vs step">' if os.path.exists(os.path.join(page_dir, 'layer_objective.png')) else ''}</div>
{fig}
"""
  data = {"settings": settings, "initial": settings[0]["name"], "layer": layer.layer}
  return _page(f"{layer.title} · {model}", body,
               _url(page_dir, os.path.join(gallery_dir, "gallery.css")),
               _url(page_dir, os.path.join(gallery_dir, "gallery.js")), data)


def _stats_html(page_dir: str, unit: int, stats: LayerStats | None) -> str:
  if stats is None:
    return ('<p class="note">No dataset statistics for this layer. Compute them with '
            '<code>python -m stviz_jax.stats</code> and rebuild with '
            '<code>python -m stviz_jax.gallery --workdir=DIR --stats=PATH</code>.</p>')
  parts = []
  if stats.a_hat is not None and unit < len(stats.a_hat):
    parts.append(f"<p>maximum activation on the dataset â = {float(stats.a_hat[unit]):.4g}</p>")
  chart = os.path.join(page_dir, f"unit_{unit:04d}_classes.png")
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
  stem = os.path.join(page_dir, "stats", f"unit_{unit:04d}_top{k + 1}")
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
        f'<td><div class="media">'
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


def _unit_page(workdir: str, layer: LayerRuns, page_dir: str, unit: int,
               prev_unit: int | None, next_unit: int | None, encodings: Sequence[str],
               stats: LayerStats | None, model: str,
               comparisons: Sequence["Comparison"] = ()) -> str:
  gallery_dir = os.path.join(workdir, GALLERY_DIR)
  views = views_of(layer, encodings)
  links = [f'<a href="{_url(page_dir, os.path.join(gallery_dir, COMPARE_DIR, c.file))}">'
           f'{_e(c.title)}</a>' for c in comparisons if c.shows(layer, unit)]
  compared = f'<div class="note">compared: {" · ".join(links)}</div>' if links else ""
  head = "".join(f"<th>{_e(v)}</th>" for v, _, _ in views)
  summary = _read_json(os.path.join(workdir, "summary.json")) or {}
  class_name = _class_names_of(summary, layer).get(unit)
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
  config = layer.runs[0].config or _read_json(os.path.join(workdir, "config.json"))
  nav = " · ".join(
      f'<a href="unit_{u:04d}.html">{label} unit {u}</a>'
      for u, label in ((prev_unit, "←"), (next_unit, "→")) if u is not None)
  has_flow = any(s == "flow" or layer.runs[0].shapes[s][-1] == 2 for s in layer.streams)
  hist = f"unit_{unit:04d}_history.png"
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


def _compare_page(workdir: str, comp: Comparison, encodings: Sequence[str],
                  model: str) -> str:
  """Two class units side by side: rows are settings, column groups A, B and the
  class contrasts; each cell every view, the final activation and the class rank."""
  gallery_dir = os.path.join(workdir, GALLERY_DIR)
  page_dir = os.path.join(gallery_dir, COMPARE_DIR)
  summary = _read_json(os.path.join(workdir, "summary.json")) or {}
  groups = comp.groups()
  heads = []
  for heading, layer, unit in groups:
    if layer is None:
      heads.append(f"<th>{_e(heading)}<br><span class=\"note\">not visualised in this run "
                   f"(add it to a class_logit target on {_LOGITS!r})</span></th>")
    else:
      unit_page = os.path.join(gallery_dir, layer.rel_dir, f"unit_{unit:04d}.html")
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


def _class_names_of(summary: Mapping, layer: LayerRuns) -> dict[int, str]:
  """Class names of a target's units (from `summary.json`; {} for channel units)."""
  targets = summary.get("targets") or {}
  names = {n.replace("/", "_"): n for n in targets}
  entry = targets.get(names.get(layer.target, layer.target)) or {}
  return {int(k): v for k, v in (entry.get("class_names") or {}).items()}


def _quality_html(summary: Mapping, layer: LayerRuns, unit: int, setting: str) -> str:
  q = (_summary_entry(summary, layer, setting).get("quality") or {}).get(str(unit))
  if not q:
    return ""
  return _e(quality.describe(q, layer.layer == _LOGITS))


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


def _index_page(workdir: str, layers: Sequence[LayerRuns], figures: Mapping[str, Any],
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
  summary = _read_json(os.path.join(workdir, "summary.json")) or {}
  seed = layers[0].runs[0].seed if layers else summary.get("seed")
  links = [f'<a href="{f}">{f}</a>' for f in ("config.json", "summary.json")
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
{compare}
"""
  return _page(f"{model} · stviz_jax", body,
               _url(workdir, os.path.join(gallery_dir, "gallery.css")),
               _url(workdir, os.path.join(gallery_dir, "gallery.js")), None)


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
  stale = files.remove_stale_temps(workdir)
  if stale:
    logging.info("%s: removed %d temporary file(s) of an interrupted run", workdir, len(stale))
  names = class_names(workdir)
  if compare is None:
    pairs = [(int(c["a"]), int(c["b"])) for c in (_read_json(
        os.path.join(workdir, "summary.json")) or {}).get("comparisons") or ()]
  else:
    pairs = parse_compare(compare, names)
  comps = comparisons(layers, pairs, names)
  if compare is not None:
    shown = sorted({u for l in layers if l.layer == _LOGITS and l.kind == "class_logit"
                    for u in l.units})
    for u in (u for pair in pairs for u in pair):
      if u not in shown:
        raise ValueError(f"compare: class {names.get(u, u)!r} (unit {u}) is not visualised "
                         f"by a class_logit target on {_LOGITS!r} in {workdir} "
                         f"(visualised: {shown or 'none'})")
  stats_path = stats or find_stats(workdir)
  all_stats = load_stats(stats_path) if stats_path else {}
  gallery_dir = os.path.join(workdir, GALLERY_DIR)
  os.makedirs(gallery_dir, exist_ok=True)
  _write(os.path.join(gallery_dir, "gallery.css"), _CSS)
  _write(os.path.join(gallery_dir, "gallery.js"), _JS)
  if "hsv" in encodings:
    render.save_png(os.path.join(gallery_dir, "flow_legend_hsv.png"),
                    render.flow_legend(64, "hsv"))
  config = _read_json(os.path.join(workdir, "config.json")) or {}
  model = (_read_json(os.path.join(workdir, "summary.json")) or {}).get(
      "model", config.get("model", "model"))
  figures = {}
  for layer in layers:
    page_dir = os.path.join(gallery_dir, layer.rel_dir)
    os.makedirs(page_dir, exist_ok=True)
    n = ensure_media(layer, encodings, formats, fps)
    stats_layer = all_stats.get(layer.layer)
    _plots(layer, page_dir, stats_layer)
    fig_stem = os.path.join(page_dir, "figure")
    mtime = max(r.mtime for r in layer.runs)
    if _stale(fig_stem + ".npz", mtime):
      figures[layer.rel_dir] = _layer_figure(
          layer, fig_stem, encodings, figure_units,
          _class_names_of(_read_json(os.path.join(workdir, "summary.json")) or {}, layer))
    else:
      figures[layer.rel_dir] = {f: f"{fig_stem}.{f}" for f in ("png", "gif", "mp4", "npz")
                                if os.path.exists(f"{fig_stem}.{f}")}
    _write(os.path.join(page_dir, "index.html"),
           _layer_page(workdir, layer, page_dir, encodings, stats_layer,
                       figures[layer.rel_dir], model))
    units = layer.units
    for k, u in enumerate(units):
      _write(os.path.join(page_dir, f"unit_{u:04d}.html"),
             _unit_page(workdir, layer, page_dir, u, units[k - 1] if k else None,
                        units[k + 1] if k + 1 < len(units) else None, encodings,
                        stats_layer, model, comps))
    logging.info("gallery: layer %s, %d units, %d settings, %d media rendered",
                 layer.layer, len(units), len(layer.runs), n)
  for comp in comps:
    _write(os.path.join(gallery_dir, COMPARE_DIR, comp.file),
           _compare_page(workdir, comp, encodings, model))
  index = os.path.join(workdir, "index.html")
  _write(index, _index_page(workdir, layers, figures, model, stats_path, comps))
  logging.info("gallery: open file://%s", index)
  return index


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {list(argv)[1:]}")
  logging.set_verbosity(logging.INFO)
  f = flags.FLAGS
  # Bad input is one line, no traceback (stviz_jax.cli).
  build(f.workdir, stats=f.stats or None,
        encodings=[e.strip() for e in f.encodings.split(",") if e.strip()],
        fps=f.fps, figure_units=f.figure_units, compare=f.compare or None)


def _define_flags() -> None:
  # Defined only when run as a program: the job imports this module under its
  # own flags (--workdir among them).
  flags.DEFINE_string("workdir", None, "Work directory of a run (stviz_jax.main).")
  flags.DEFINE_string("stats", "", "Optional statistics file (JSON or npz).")
  flags.DEFINE_string("encodings", "rgb", "Flow colourings, comma separated: rgb, hsv.")
  flags.DEFINE_float("fps", render.DEFAULT_FPS,
                     "Frame rate of rendered videos (4: an 8-frame clip loops in 2 s).")
  flags.DEFINE_integer("figure_units", FIGURE_UNITS, "Rows of each layer's figure.")
  flags.DEFINE_string("compare", "", "Class units side by side: 'A:B;C:D' (class names or "
                      "indices); default: the run's config.gallery.compare.")
  flags.mark_flag_as_required("workdir")


if __name__ == "__main__":
  from stviz_jax import cli  # pylint: disable=import-outside-toplevel
  _define_flags()
  cli.run_absl(main)
