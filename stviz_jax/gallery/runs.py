"""What a work directory holds, read for the gallery: one `SettingRun` per
`<target>/<setting>/result.npz` (merged over hosts), grouped by target into
`LayerRuns` (`discover`)."""

from __future__ import annotations

import dataclasses
import json
import os
import re
from typing import Any, Sequence

from absl import logging
import numpy as np

from stviz_jax import files, layout, render

GALLERY_DIR = layout.GALLERY_DIR
RESULT_FILE = layout.RESULT_FILE
COMPARE_DIR = "compare"  # gallery/compare/: side-by-side pages of two class units.
LOGITS = "logits"      # stviz_jax.models.LOGITS (not imported: the gallery needs no JAX).


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
    """'κ=1, γ=10' (`layout.setting_label` of the setting's folder name)."""
    return layout.setting_label(self.name, plain)

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
    name = layout.samples_file(unit)
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
        unit_of = layout.unit_of_file(name)
        if unit_of is not None:
          self._files[d].setdefault(unit_of, []).append(name)
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
        "class_logit" if self.layer == LOGITS else "channel")

  @property
  def units(self) -> list[int]:
    return sorted({int(u) for r in self.runs for u in r.units})

  @property
  def streams(self) -> list[str]:
    return render.display_order(self.runs[0].shapes)


def read_run(path: str) -> SettingRun:
  """Reads everything but the inputs from a `stviz_jax.Result` `.npz`."""
  r = layout.read_result(path, inputs=False)
  units = r["units"].astype(int)
  return SettingRun(
      name=os.path.basename(os.path.dirname(path)), layer=r["layer"], units=units,
      activations=np.asarray(r["activations"], np.float64), history=r["history"],
      seed=r["seed"], settings=r["settings"], a_hat_given=r["a_hat_given"],
      config=r["config"], shapes=r["input_shapes"], parts=[Part(path, units)])


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


def _target_dir(workdir: str, path: str) -> str:
  """`<target>` of `[host_<k>/]<target>/<setting>/result.npz` ('' at the top)."""
  rel = os.path.relpath(os.path.dirname(os.path.dirname(path)), workdir)
  parts = [p for p in rel.split(os.sep) if p not in ("", ".")]
  if parts and layout.is_host_dir(parts[0]):
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
    runs = sorted((_merge(r) for r in by_setting.values()), key=lambda r: layout.setting_order(r.name))
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


def read_json(path: str) -> Any:
  """A JSON file of the work directory (config.json, summary.json); None when absent."""
  if not os.path.isfile(path):
    return None
  with open(path) as f:
    return json.load(f)
