"""The main job: visualise units of one or more targets (layer, units,
objective) under one or more regularisation settings and write arrays,
pictures and a summary to a work directory.

A target is `config.layer` / `config.units` / `config.objective.kind`, or, when
`config.targets` is set, each named entry `{layer, units, kind}` of it (e.g.
units of `Mixed_4f` and class units of `logits` in one run); `<target>` below
is the layer (single target) or the entry's name.

Layout of `workdir`::

    config.json                       the exact config (and seed) of the run
    summary.json                      final normalised activation per target/setting/unit
    <target>/grid.png                 units (rows) x settings (columns), appearance | flow
    <target>/<setting>/result.npz     all units of that setting (stviz_jax.Result)
    <target>/<setting>/unit_0003.npz  one unit's inputs, with config and seed
    <target>/<setting>/unit_0003_<stream>.png / .gif / .mp4 / .webm
    index.html, gallery/              the HTML gallery (stviz_jax.gallery)
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import re
import time
from typing import Sequence

from absl import logging
import jax
import ml_collections
import numpy as np

from stviz_jax import gallery, models, render, sweep
from stviz_jax.optimize import Result, Visualizer, _atomic_savez, build_target


def parse_units(spec, model: models.Model, layer: str) -> list[int]:
  """'all' | '0-7' | '1,4,9' | class names separated by ';' (for 'logits') -> indices."""
  n = model.spec.num_units(layer)
  if isinstance(spec, (list, tuple)):
    units = []
    for s in spec:
      units += parse_units(s, model, layer) if isinstance(s, str) else [int(s)]
    return units
  if isinstance(spec, (int, np.integer)):
    units = [int(spec)]
  else:
    spec = str(spec).strip()
    if spec == "all":
      return list(range(n))
    if re.fullmatch(r"[\d\s,\-]+", spec):
      units = []
      for part in filter(None, (p.strip() for p in spec.split(","))):
        if "-" in part:
          lo, hi = (int(v) for v in part.split("-"))
          units += list(range(lo, hi + 1))
        else:
          units.append(int(part))
    else:
      units = [model.class_index(name.strip()) for name in spec.split(";") if name.strip()]
  model.spec.check_units(layer, units)
  return units


def setting_name(tv: dict) -> str:
  """'kappa1_gamma10' from the flow stream's (else the first clip stream's) setting."""
  kg = tv.get("flow") or next(iter(tv.values()), None)
  if kg is None:
    return "default"
  return f"kappa{kg[0]:g}_gamma{kg[1]:g}"


def settings_from_config(config: ml_collections.ConfigDict, streams) -> list[dict]:
  """One `{stream: (kappa, gamma)}` per requested gamma (or just the config's).

  gamma weighs temporal variation, so it applies to the motion stream of a
  two-stream network; a model without a flow stream (a 3D ConvNet on RGB
  clips such as I3D) gets it on every stream with more than one frame.
  """
  if not config.gammas:
    return [{}]
  if "flow" in streams:
    temporal = ["flow"]
  else:
    temporal = [s for s, spec in streams.items() if spec.frames > 1]
  if not temporal:
    return [{}]
  return [{s: (float(config.regularizer[s].kappa if s in config.regularizer else 1.0),
               float(g)) for s in temporal} for g in config.gammas]


TARGET_FIELDS = ("layer", "units", "kind")
TARGET_OPTIONAL = ("a_hat",)


@dataclasses.dataclass(frozen=True)
class Target:
  """What one part of a run visualises: `units` of `layer` under `objective`.

  `objective` is `config.objective` with the target's `kind` (and `a_hat`).
  """

  name: str
  layer: str
  units: tuple[int, ...]
  objective: ml_collections.ConfigDict

  @property
  def kind(self) -> str:
    return self.objective.kind


def targets_from_config(config: ml_collections.ConfigDict,
                        model: models.Model) -> list[Target]:
  """The run's targets, validated before anything is optimised.

  `config.targets` (a ConfigDict of named `{layer, units, kind[, a_hat]}`)
  when non-empty, else the single target `config.layer`, `config.units`,
  `config.objective`.

  Raises:
    ValueError: naming the target and field for a missing or unknown field,
      an unknown layer (listing the valid ones), objective kind or unit.
  """
  entries = config.get("targets", None) or {}
  if isinstance(entries, (list, tuple)):  # a list of entries: named by position and layer.
    entries = {f"{i}_{dict(e).get('layer', '')}": e for i, e in enumerate(entries)}
  explicit = bool(entries)
  if not explicit:
    entries = {config.layer: dict(layer=config.layer, units=config.units,
                                  kind=config.objective.kind)}
  targets = []
  for name, entry in entries.items():
    entry = dict(entry)
    where = f"config.targets.{name}" if explicit else "config"
    unknown = sorted(set(entry) - set(TARGET_FIELDS) - set(TARGET_OPTIONAL))
    missing = [f for f in TARGET_FIELDS if f not in entry]
    if unknown or missing:
      raise ValueError(
          f"{where}: " + "; ".join(
              ([f"unknown field(s) {unknown}"] if unknown else [])
              + ([f"missing field(s) {missing}"] if missing else []))
          + f"; valid fields: {', '.join(TARGET_FIELDS + TARGET_OPTIONAL)}")
    layer = entry["layer"]
    try:
      model.spec.check_layer(layer)
    except ValueError as e:
      raise ValueError(f"{where}.layer: {e}") from None
    try:
      units = parse_units(entry["units"], model, layer)
    except ValueError as e:
      raise ValueError(f"{where}.units: {e}") from None
    objective = ml_collections.ConfigDict(config.objective.to_dict())
    objective.kind = entry["kind"]
    if "a_hat" in entry:
      objective.a_hat = float(entry["a_hat"])
    if objective.kind == "class_logit" and layer != models.LOGITS:
      raise ValueError(f"{where}: kind 'class_logit' needs layer {models.LOGITS!r}, "
                       f"not {layer!r}")
    try:
      build_target(model, layer, objective)
    except ValueError as e:
      raise ValueError(f"{where}.kind: {e}") from None
    targets.append(Target(str(name), layer, tuple(units), objective))
  dirs = [_layer_dir(t.name) for t in targets]
  if len(set(dirs)) != len(dirs):
    raise ValueError(f"config.targets: names {dirs} collide as directory names")
  return targets


def _layer_dir(layer: str) -> str:
  return layer.replace("/", "_")


def save_unit_media(out_dir: str, result: Result, config, i: int) -> dict[str, str]:
  """Writes unit i's .npz, PNG (first frame) and GIF (clips) per stream."""
  unit = int(result.units[i])
  stem = os.path.join(out_dir, f"unit_{unit:04d}")
  arrays = {f"inputs_{k}": v[i] for k, v in result.inputs.items()}
  arrays.update(activation=np.float32(result.activations[i]), unit=np.int32(unit),
                seed=np.int32(result.seed), config=np.asarray(config.to_json()))
  _atomic_savez(stem + ".npz", arrays)
  files = {}
  for stream, x in result.inputs.items():
    # PNG (middle frame); clips also as looping GIF, MP4 (H.264), WebM (VP9).
    written = render.save_stream_media(f"{stem}_{stream}", stream, x[i])
    files.update({f"{stream}_{fmt}": path for fmt, path in written.items()})
  return files


def layer_grid(results: Sequence[Result]) -> np.ndarray:
  """Units (rows) x settings (columns); each cell all streams side by side."""
  rows = []
  for i in range(len(results[0].units)):
    row = []
    for r in results:
      cells = [render.stream_frames(s, r.inputs[s][i]) for s in render.display_order(r.inputs)]
      cells = [c[len(c) // 2] for c in cells]
      row.append(np.concatenate(cells, axis=1))
    rows.append(row)
  tile = rows[0][0]
  scale = max(1, 96 // tile.shape[0])
  return render.grid([[render.upscale(t, scale) for t in row] for row in rows])


def class_ranks(model: models.Model, result: Result) -> dict[str, dict]:
  """For class units: where each optimised input ranks its own class among all.

  A sanity check of a class visualisation: rank 1 means the optimised input
  is classified as the class it was optimised for.
  """
  logits = np.asarray(model(result.inputs))
  out = {}
  for i, unit in enumerate(result.units):
    order = np.argsort(-logits[i])
    rank = int(np.nonzero(order == int(unit))[0][0]) + 1
    out[str(int(unit))] = {
        "rank": rank, "logit": float(logits[i, int(unit)]),
        "top3": [model.labels[j] if model.labels else int(j) for j in order[:3]]}
  return out


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Runs the job described by `config` and writes everything under `workdir`.

  Units x settings run as one resumable sweep (`stviz_jax.sweep`): rerunning
  the same command after a kill continues from the last finished chunk. With
  `config.sweep.distributed`, each host sweeps its own slice of the units and
  writes under `workdir/host_<k>`.
  """
  if config.sweep.distributed:
    sw = config.sweep
    jax.distributed.initialize(
        coordinator_address=sw.coordinator_address or None,
        num_processes=sw.num_processes or None,
        process_id=sw.process_id if sw.process_id >= 0 else None)
  if jax.process_count() > 1:
    workdir = os.path.join(workdir, f"host_{jax.process_index()}")
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, "config.json"), "w") as f:
    f.write(config.to_json(indent=2))
  kwargs = dict(config.model_overrides)
  if config.weights:
    kwargs["weights"] = config.weights
  model = models.load(config.model, **kwargs)
  targets = targets_from_config(config, model)
  settings = settings_from_config(config, model.spec.streams)
  summary = {"model": model.name, "seed": config.seed, "layers": {}, "targets": {}}
  t0 = time.time()
  compilations = 0
  for n, target in enumerate(targets, 1):
    layer, units = target.layer, list(target.units)
    logging.info("target %d/%d %r: model %s, layer %s (rf, stride = %s), %s, %d units",
                 n, len(targets), target.name, model.name, layer,
                 model.spec.receptive_field(layer), target.kind, len(units))
    # The run's config with this target's objective: what the Visualizer, the
    # sweep fingerprint and every saved file see.
    target_config = copy.deepcopy(config)
    target_config.objective = target.objective
    vis = Visualizer(model, layer, target_config)
    target_dir = os.path.join(workdir, _layer_dir(target.name))
    state_dir = os.path.join(target_dir, "sweep_state") if config.sweep.resume else None
    sweep_results = sweep.run_sweep(vis, sweep.host_units(units), settings, target_config,
                                    state_dir, seed=config.seed)
    results = []
    class_names = ({str(u): model.labels[u] for u in units}
                   if layer == models.LOGITS and model.labels else None)
    for tv, result in zip(settings, sweep_results):
      name = setting_name(tv)
      out_dir = os.path.join(target_dir, name)
      result.save(os.path.join(out_dir, "result.npz"), target_config)
      for i in range(len(result.units)):
        save_unit_media(out_dir, result, target_config, i)
      entry = {
          "layer": layer,
          "kind": target.kind,
          "a_hat_given": result.a_hat_given,
          "settings": {k: list(v) for k, v in result.settings.items()},
          "activations": {str(int(u)): float(a) for u, a in
                          zip(result.units, result.activations)},
      }
      if class_names is not None:
        entry["class_ranks"] = class_ranks(model, result)
      summary["layers"].setdefault(target.name, {})[name] = entry
      results.append(result)
    summary["targets"][target.name] = {
        "layer": layer, "kind": target.kind, "units": units,
        **({"class_names": class_names} if class_names is not None else {})}
    render.save_png(os.path.join(target_dir, "grid.png"), layer_grid(results))
    compilations += vis.trace_count
  summary["seconds"] = round(time.time() - t0, 2)
  summary["compilations"] = compilations
  with open(os.path.join(workdir, "summary.json"), "w") as f:
    json.dump(summary, f, indent=2)
  gallery.build(workdir)
  logging.info("done in %.1fs; results in %s", summary["seconds"], workdir)
  return summary
