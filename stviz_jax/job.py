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

With `config.objective.diversity` w > 0 every unit is optimised as K =
`config.objective.samples` results pushed apart by Lucid's Gram diversity
(`stviz_jax.optimize.run_diverse`, one compilation per target). Sample 0 of
each unit is the unit's result above (grid, summary, gallery tiles); all K
are in::

    <target>/<setting>/unit_0003_samples.npz          a Result with K rows of unit 3
    <target>/<setting>/unit_0003_sample2_<stream>.*   media of sample k >= 1
    <target>/<setting>/samples_grid.png               units (rows) x the K samples

What each unit uses (`config.insight`, `stviz_jax.insight.report`), per setting:
`summary.json`'s `insight` block (motion index, shuffle drop and stream shares
of the optimised clip and of the unit's top natural clips; the sanity check;
accentuation), and beside the result::

    <target>/<setting>/motion.csv, motion_histogram.png    one line / count per unit
    <target>/<setting>/unit_0003_attribution_<stream>.*   MACO's map as an overlay video
    <target>/<setting>/unit_0003_accentuated0_<stream>.*  natural clip 0 | it pushed toward unit 3

`config.gallery.compare` ("A:B; ...", class names or indices) and every
`class_contrast` target give gallery pages with two class units side by side
(the paper's Figs. 13-15); the resolved pairs are `summary.json`'s `comparisons`.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import shutil
import time
from typing import Sequence

from absl import logging
import jax
import ml_collections
import numpy as np

from stviz_jax import config as config_lib
from stviz_jax import files, gallery, layout, models, quality, render, sweep
from stviz_jax.insight import report as insight_report
from stviz_jax.optimize import Visualizer, run_diverse
from stviz_jax.plan import (comparisons_from_config, samples_from_config, settings_from_config,
                            targets_from_config)
from stviz_jax.result import Result


def save_unit_media(out_dir: str, result: Result, config, i: int) -> dict[str, str]:
  """Writes unit i's .npz, PNG (first frame) and GIF (clips) per stream."""
  unit = int(result.units[i])
  stem = os.path.join(out_dir, layout.unit_file(unit))
  files.savez(stem + ".npz", layout.unit_arrays({k: v[i] for k, v in result.inputs.items()},
                                                result.activations[i], unit, result.seed,
                                                config.to_json()))
  media = {}
  for stream, x in result.inputs.items():
    # PNG (middle frame); clips also as looping GIF, MP4 (H.264), WebM (VP9).
    written = render.save_stream_media(f"{stem}_{stream}", stream, x[i])
    media.update({f"{stream}_{fmt}": path for fmt, path in written.items()})
  return media


def layer_grid(results: Sequence[Result], row_labels: Sequence[str] | None = None,
               col_labels: Sequence[str] | None = None) -> np.ndarray:
  """Units (rows) x settings (columns); each cell all streams side by side, with labels."""
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
  tiles = [[render.upscale(t, scale) for t in row] for row in rows]
  h, w = tiles[0][0].shape[:2]
  return render.add_labels(render.grid(tiles)[None], h, w, 2, row_labels, col_labels)[0]


def unit_label(unit: int, labels: Sequence[str] | None, layer: str) -> str:
  """'unit 3', or for a class unit 'playing chess (#61)'."""
  if layer == models.LOGITS and labels:
    return f"{labels[int(unit)]} (#{int(unit)})"
  return f"unit {int(unit)}"


def setting_label(result: Result) -> str:
  """'kappa=1 gamma=10' for the temporal setting of a result ('default' when none)."""
  return layout.setting_label(layout.setting_name(result.settings), plain=True)


def sample_spread(result: Result) -> dict[str, float]:
  """Per stream, the mean pairwise RMS distance between the rows of `result`:

      (2 / (K (K - 1))) sum_{i < j} ||x_i - x_j||_2 / sqrt(n),  n = T H W C,

  in the stream's input units; 0 when all K samples are equal.
  """
  out = {}
  for stream, x in result.inputs.items():
    flat = np.asarray(x, np.float64).reshape(len(x), -1)
    d = [np.linalg.norm(flat[i] - flat[j]) for i in range(len(flat))
         for j in range(i + 1, len(flat))]
    out[stream] = float(np.mean(d) / np.sqrt(flat.shape[1])) if d else 0.0
  return out


def degenerate_units(result: Result) -> dict[str, str]:
  """Units whose result is no picture: {unit: why}, empty when all are fine.

  Degenerate: an input that is not finite or constant over (T, H, W, C) in
  every stream (e.g. all 0), or a final activation that is exactly 0 or not
  finite (a dead unit, or an optimisation that went nowhere).
  """
  out = {}
  for i, unit in enumerate(result.units):
    xs = {s: np.asarray(v[i]) for s, v in result.inputs.items()}
    act = float(result.activations[i])
    if not all(np.isfinite(x).all() for x in xs.values()):
      why = "non-finite input"
    elif all(np.ptp(x) == 0 for x in xs.values()):
      why = "constant input " + ", ".join(f"{s} = {float(x.flat[0]):g}" for s, x in xs.items())
    elif not np.isfinite(act):
      why = f"non-finite activation {act}"
    elif act == 0:
      why = "activation exactly 0"
    else:
      continue
    out[str(int(unit))] = why
  return out


def samples_path(out_dir: str, unit: int) -> str:
  return os.path.join(out_dir, layout.samples_file(unit))


def _finished_samples(path: str, config: ml_collections.ConfigDict, seed: int,
                      settings: dict, samples: int, weights: str) -> Result | None:
  """The K samples saved by an earlier run of the same config and weights, else None."""
  if not os.path.isfile(path):
    return None
  try:
    with files.load_npz(path) as f:
      meta = json.loads(str(f["meta"]))
    result = Result.load(path)
  except (OSError, KeyError, ValueError):
    return None
  same = (meta.get("config") == json.loads(config.to_json()) and meta.get("seed") == seed
          and meta.get("weights") == weights
          and json.loads(json.dumps(meta.get("settings")))
          == json.loads(json.dumps(settings)) and len(result.units) == samples)
  return result if same else None


def run_diverse_units(vis: Visualizer, units: Sequence[int], tv: dict,
                      config: ml_collections.ConfigDict, samples: int,
                      out_dir: str) -> tuple[Result, dict[int, Result]]:
  """K diverse samples of every unit under one setting (one compilation for all).

  Each unit's K samples are saved as `unit_0003_samples.npz` (with media of
  samples 1..K-1) as soon as they are done; with `config.sweep.resume` a rerun
  reuses the saved ones of an identical config.

  Returns:
    `(sample 0 of every unit as one Result, {unit: its K-row Result})`.
  """
  per_unit = {}
  settings = vis.settings(tv)
  weights = sweep.weights_digest(vis.model.variables)
  t0 = time.time()
  for n, unit in enumerate(units, 1):
    path = samples_path(out_dir, unit)
    r = (_finished_samples(path, config, config.seed, settings, samples, weights)
         if config.sweep.resume else None)
    if r is None:
      r = run_diverse(vis, unit, samples, config.seed, tv=tv)
      r.save(path, config, weights=weights)
      for k in range(1, samples):
        for stream, x in r.inputs.items():
          render.save_stream_media(
              os.path.join(out_dir, layout.sample_stem(unit, k, stream)), stream, x[k])
    per_unit[int(unit)] = r
    logging.info("%s: %d/%d units x %d diverse samples, %.1fs", vis.layer, n, len(units),
                 samples, time.time() - t0)
  first = [per_unit[int(u)] for u in units]
  result = Result(
      layer=vis.layer, units=np.asarray(units, np.int32),
      inputs={s: np.stack([r.inputs[s][0] for r in first]) for s in first[0].inputs},
      activations=np.asarray([r.activations[0] for r in first]),
      history={k: np.stack([r.history[k][0] for r in first]) for k in first[0].history},
      a_hat_given=first[0].a_hat_given, seed=config.seed, settings=first[0].settings)
  return result, per_unit


def samples_grid(per_unit: dict[int, Result],
                 row_labels: Sequence[str] | None = None) -> np.ndarray:
  """Units (rows) x the K samples (columns); each cell all streams side by side."""
  units = list(per_unit)
  k = len(per_unit[units[0]].units)
  columns = [dataclasses.replace(
      per_unit[units[0]], units=np.asarray(units),
      inputs={s: np.stack([per_unit[u].inputs[s][j] for u in units])
              for s in per_unit[units[0]].inputs}) for j in range(k)]
  return layer_grid(columns, row_labels, [f"sample {j}" for j in range(k)])


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


def quality_transforms(config: ml_collections.ConfigDict,
                       model: models.Model) -> quality.TransformSet | None:
  """The seeded evaluation transforms of `config.quality` (None when off)."""
  cfg = config.quality
  n = int(cfg.transforms)
  if n < 0:
    raise ValueError(f"config.quality.transforms must be >= 0 (0 = no quality measures), got {n}")
  if n == 0:
    return None
  frames = max(s.frames for s in model.spec.streams.values())
  return quality.transform_set(n, frames=frames, seed=int(cfg.seed))


def _differences(old, new, prefix: str = "") -> list[str]:
  """Dotted names of the fields where two JSON configs differ."""
  if isinstance(old, dict) and isinstance(new, dict):
    out = []
    for k in sorted(set(old) | set(new)):
      out += _differences(old.get(k), new.get(k), f"{prefix}{k}.")
    return out
  return [] if old == new else [prefix.rstrip(".")]


def check_workdir(workdir: str, config: ml_collections.ConfigDict) -> list[str]:
  """Raises unless `workdir` can receive this run without mixing it with another.

  A workdir holds one run: it must be new, empty, or hold a run of this same
  config (`config.json`; the rerun resumes it). A run of another config that
  never finished (no `summary.json`) is replaced when the workdir holds only
  what that run writes (config.json, its target folders): the paths returned,
  which `run` removes once every other check has passed.

  Raises:
    ValueError: one line naming the workdir and what is in the way.
  """
  where = f"--workdir {workdir}"
  if os.path.lexists(workdir) and not os.path.isdir(workdir):
    raise ValueError(f"{where}: exists and is a file, not a directory; give a new --workdir")
  probe = os.path.abspath(workdir)
  while not os.path.lexists(probe):  # the nearest existing folder receives the new ones.
    probe = os.path.dirname(probe)
  if not os.path.isdir(probe):
    raise ValueError(f"{where}: {probe} is a file, so no directory can be made under it; "
                     "give a new --workdir")
  if not os.access(probe, os.W_OK | os.X_OK):
    raise ValueError(f"{where}: {probe} is not writable; give a --workdir you can write to")
  if probe != os.path.abspath(workdir) or not os.listdir(workdir):
    return []
  stamp = os.path.join(workdir, layout.CONFIG_FILE)
  if not os.path.isfile(stamp):
    names = sorted(os.listdir(workdir))
    shown = ", ".join(names[:5]) + (f" (+{len(names) - 5} more)" if len(names) > 5 else "")
    raise ValueError(f"{where}: directory is not empty ({shown}) and holds no run "
                     "(no config.json); give a new or empty --workdir")
  try:
    with open(stamp) as f:
      old = json.load(f)
  except (OSError, ValueError) as e:
    raise ValueError(f"{stamp}: not a readable config ({e}); give a new --workdir") from None
  diff = _differences(old, json.loads(config.to_json()))
  if not diff:
    return []
  shown = ", ".join(diff[:6]) + (f" (+{len(diff) - 6} more)" if len(diff) > 6 else "")
  if os.path.exists(os.path.join(workdir, layout.SUMMARY_FILE)):
    raise ValueError(f"{where}: holds another run (its config.json differs in {shown}); "
                     "give a new --workdir, or the same config to resume that run")
  # No summary.json: that run never finished. What it wrote may be replaced by
  # this corrected run, but only if the workdir holds nothing else.
  ours = _unfinished_run_files(old)
  others = sorted(n for n in os.listdir(workdir) if n not in ours)
  if others:
    listed = ", ".join(others[:5]) + (f" (+{len(others) - 5} more)" if len(others) > 5 else "")
    raise ValueError(f"{where}: holds an unfinished run (config.json differs in {shown}; no "
                     f"summary.json) and files that run did not write ({listed}); move "
                     "them, or give a new --workdir")
  return sorted(os.path.join(workdir, n) for n in os.listdir(workdir))


def _unfinished_run_files(old: dict) -> set[str]:
  """Names directly under a workdir that a run of config `old` writes itself."""
  names = {layout.CONFIG_FILE, "index.html", layout.GALLERY_DIR}
  targets = old.get("targets") or {}
  for name in (targets if isinstance(targets, dict) and targets else [old.get("layer")]):
    if isinstance(name, str) and name:
      names.add(layout.target_dir(name))
  return names


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Runs the job described by `config` and writes everything under `workdir`.

  Units x settings run as one resumable sweep (`stviz_jax.sweep`): rerunning
  the same command after a kill continues from the last finished chunk. With
  `config.sweep.distributed`, each host sweeps its own slice of the units and
  writes under `workdir/host_<k>`.

  Everything that can be checked (config ranges, the workdir, the model,
  targets, units, comparisons) is checked before the first file is written,
  so a refused run leaves the workdir as it was.
  """
  config_lib.validate(config)
  if config.sweep.distributed:
    sw = config.sweep
    jax.distributed.initialize(
        coordinator_address=sw.coordinator_address or None,
        num_processes=sw.num_processes or None,
        process_id=sw.process_id if sw.process_id >= 0 else None)
  if jax.process_count() > 1:
    workdir = os.path.join(workdir, layout.host_dir(jax.process_index()))
  unfinished = check_workdir(workdir, config)
  kwargs = dict(config.model_overrides)
  if config.weights:
    kwargs["weights"] = config.weights
  model = models.load(config.model, **kwargs)
  targets = targets_from_config(config, model)
  samples = samples_from_config(config, model)
  comparisons = comparisons_from_config(config, model, targets)
  settings = settings_from_config(config, model.spec.streams)
  insight_plan = insight_report.plan(config, model)
  if unfinished:
    logging.warning("%s: replacing an unfinished run of another config (no summary.json): "
                    "removing %s", workdir, ", ".join(os.path.basename(p) for p in unfinished))
    for p in unfinished:
      if os.path.isdir(p) and not os.path.islink(p):
        shutil.rmtree(p)
      else:
        os.remove(p)
  os.makedirs(workdir, exist_ok=True)
  stale = files.remove_stale_temps(workdir)
  if stale:
    logging.info("%s: removed %d temporary file(s) of an interrupted run", workdir, len(stale))
  files.write_text(os.path.join(workdir, layout.CONFIG_FILE), config.to_json(indent=2))
  summary = {"model": model.name, "seed": config.seed, "layers": {}, "targets": {}}
  if comparisons:
    summary["comparisons"] = comparisons
  eval_transforms = quality_transforms(config, model)
  if eval_transforms is not None:
    summary["quality"] = {"transforms": len(eval_transforms),
                          "goal": {"robust": quality.ROBUST_GOAL,
                                   "slope_range": list(quality.SLOPE_RANGE)},
                          "targets": {}}
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
    if target.steps is not None:
      target_config.steps = target.steps
    vis = Visualizer(model, layer, target_config)
    target_dir = os.path.join(workdir, layout.target_dir(target.name))
    state_dir = os.path.join(target_dir, layout.SWEEP_STATE_DIR) if config.sweep.resume else None
    if samples:
      sweep_results, diverse = [], []
      for tv in settings:
        result, per_unit = run_diverse_units(
            vis, sweep.host_units(units), tv, target_config, samples,
            os.path.join(target_dir, layout.setting_name(tv)))
        sweep_results.append(result)
        diverse.append(per_unit)
    else:
      sweep_results = sweep.run_sweep(vis, sweep.host_units(units), settings, target_config,
                                      state_dir, seed=config.seed)
    results = []
    class_names = ({str(u): model.labels[u] for u in units}
                   if layer == models.LOGITS and model.labels else None)
    for j, (tv, result) in enumerate(zip(settings, sweep_results)):
      name = layout.setting_name(tv)
      out_dir = os.path.join(target_dir, name)
      t_media = time.time()
      result.save(os.path.join(out_dir, layout.RESULT_FILE), target_config)
      for i in range(len(result.units)):
        save_unit_media(out_dir, result, target_config, i)
      t_media = time.time() - t_media
      entry = {
          "layer": layer,
          "kind": target.kind,
          "a_hat_given": result.a_hat_given,
          "settings": {k: list(v) for k, v in result.settings.items()},
          "activations": {str(int(u)): float(a) for u, a in
                          zip(result.units, result.activations)},
      }
      degenerate = degenerate_units(result)
      if degenerate:  # a blank result must not pass for one.
        entry["degenerate"] = degenerate
        summary.setdefault("degenerate", []).extend(
            f"{target.name}/{name}/unit {u}" for u in degenerate)
        for u, why in degenerate.items():
          logging.warning("%s/%s: unit %s gave a degenerate result (%s); check the "
                          "weights, optimizer.learning_rate, init_scale and objective.a_hat",
                          target.name, name, u, why)
      if class_names is not None:
        entry["class_ranks"] = class_ranks(model, result)
      t_quality = time.time()
      if eval_transforms is not None:
        entry["quality"] = quality.assess(model, layer, result.inputs, result.units,
                                          eval_transforms)
        block = quality.summarise(entry["quality"], layer == models.LOGITS)
        summary["quality"]["targets"].setdefault(target.name, {})[name] = block
        logging.info("%s/%s: picture quality: %d of %d units pass (slopes %s)", target.name,
                     name, block["passing"], block["units"],
                     ", ".join(f"{q[k]:.2f}" for q in entry["quality"].values()
                               for k in q if k.startswith("slope_")))
      t_insight = time.time()
      insight = insight_report.assess(vis, result, target_config, insight_plan, out_dir)
      if insight:
        entry["insight"] = insight
        summary.setdefault("insight", {}).setdefault(target.name, {})[name] = (
            insight_report.summarise(insight))
      logging.info("%s/%s: %d units written (media %.1fs, ranks and quality %.1fs, "
                   "insight %.1fs)", target.name, name, len(result.units), t_media,
                   t_insight - t_quality, time.time() - t_insight)
      if samples:
        per_unit = diverse[j]
        entry["samples"] = {
            "count": samples, "weight": float(config.objective.diversity),
            "layer": config.objective.diversity_layer or layer,
            "activations": {str(u): [float(a) for a in r.activations]
                            for u, r in per_unit.items()},
            "spread": {str(u): sample_spread(r) for u, r in per_unit.items()}}
        render.save_png(os.path.join(out_dir, layout.SAMPLES_GRID_FILE), samples_grid(
            per_unit, [unit_label(u, model.labels, layer) for u in per_unit]))
      summary["layers"].setdefault(target.name, {})[name] = entry
      results.append(result)
    summary["targets"][target.name] = {
        "layer": layer, "kind": target.kind, "units": units,
        **({"other": int(target.objective.other)}
           if target.kind in ("class_contrast", "channel_interaction") else {}),
        **({"class_names": class_names} if class_names is not None else {})}
    render.save_png(os.path.join(target_dir, layout.GRID_FILE), layer_grid(
        results, [unit_label(u, model.labels, layer) for u in results[0].units],
        [setting_label(r) for r in results]))
    compilations += vis.trace_count
  summary["seconds"] = round(time.time() - t0, 2)
  summary["compilations"] = compilations
  if eval_transforms is not None:
    blocks = [b for per in summary["quality"]["targets"].values() for b in per.values()]
    summary["quality"]["passing"] = sum(b["passing"] for b in blocks)
    summary["quality"]["units"] = sum(b["units"] for b in blocks)
  # Atomic: a summary.json marks a finished run, so it must never be half-written.
  with files.atomic_path(os.path.join(workdir, layout.SUMMARY_FILE)) as tmp:
    with open(tmp, "w") as f:
      json.dump(summary, f, indent=2)
  gallery.build(workdir)
  logging.info("done in %.1fs; results in %s", summary["seconds"], workdir)
  return summary
