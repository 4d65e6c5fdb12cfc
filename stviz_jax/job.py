"""The main job: visualise units of a layer under one or more regularisation
settings and write arrays, pictures and a summary to a work directory.

Layout of `workdir`::

    config.json                      the exact config (and seed) of the run
    summary.json                     final normalised activation per layer/setting/unit
    <layer>/grid.png                 units (rows) x settings (columns), appearance | flow
    <layer>/<setting>/result.npz     all units of that setting (stviz_jax.Result)
    <layer>/<setting>/unit_0003.npz  one unit's inputs, with config and seed
    <layer>/<setting>/unit_0003_<stream>.png / .gif / .mp4 / .webm
    index.html, gallery/             the HTML gallery (stviz_jax.gallery)
"""

from __future__ import annotations

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
from stviz_jax.optimize import Result, Visualizer, _atomic_savez


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
  flow = tv.get("flow")
  if flow is None:
    return "default"
  return f"kappa{flow[0]:g}_gamma{flow[1]:g}"


def settings_from_config(config: ml_collections.ConfigDict, streams) -> list[dict]:
  """One `{stream: (kappa, gamma)}` per requested flow gamma (or just the config's)."""
  if "flow" not in streams or not config.gammas:
    return [{}]
  kappa = config.regularizer.flow.kappa
  return [{"flow": (kappa, float(g))} for g in config.gammas]


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
      cells = [render.stream_frames(s, x[i]) for s, x in sorted(r.inputs.items())]
      cells = [c[len(c) // 2] for c in cells]
      row.append(np.concatenate(cells, axis=1))
    rows.append(row)
  tile = rows[0][0]
  scale = max(1, 96 // tile.shape[0])
  return render.grid([[render.upscale(t, scale) for t in row] for row in rows])


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
  layer = config.layer
  model.spec.check_layer(layer)
  units = parse_units(config.units, model, layer)
  logging.info("model %s, layer %s (rf, stride = %s), %d units", model.name, layer,
               model.spec.receptive_field(layer), len(units))
  vis = Visualizer(model, layer, config)
  summary = {"model": model.name, "seed": config.seed, "layers": {}}
  results = []
  t0 = time.time()
  settings = settings_from_config(config, model.spec.streams)
  state_dir = (os.path.join(workdir, _layer_dir(layer), "sweep_state")
               if config.sweep.resume else None)
  sweep_results = sweep.run_sweep(vis, sweep.host_units(units), settings, config,
                                  state_dir, seed=config.seed)
  for tv, result in zip(settings, sweep_results):
    name = setting_name(tv)
    out_dir = os.path.join(workdir, _layer_dir(layer), name)
    result.save(os.path.join(out_dir, "result.npz"), config)
    for i in range(len(result.units)):
      save_unit_media(out_dir, result, config, i)
    summary["layers"].setdefault(layer, {})[name] = {
        "a_hat_given": result.a_hat_given,
        "settings": {k: list(v) for k, v in result.settings.items()},
        "activations": {str(int(u)): float(a) for u, a in
                        zip(result.units, result.activations)},
    }
    results.append(result)
  render.save_png(os.path.join(workdir, _layer_dir(layer), "grid.png"), layer_grid(results))
  summary["seconds"] = round(time.time() - t0, 2)
  summary["compilations"] = vis.trace_count
  with open(os.path.join(workdir, "summary.json"), "w") as f:
    json.dump(summary, f, indent=2)
  gallery.build(workdir)
  logging.info("done in %.1fs; results in %s", summary["seconds"], workdir)
  return summary
