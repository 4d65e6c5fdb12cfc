r"""Filter evolution: the same units, the same seed, across training checkpoints.

  python -m stviz_jax.evolution --config=configs/synthetic_two_stream.py \
      --workdir=DIR --checkpoints=A.npz,B.npz,C.npz [--labels=step50,step100,final]

The paper's Figure 9 follows units of a network through training. Here every
checkpoint's units start from the same noise (unit u from fold_in(PRNGKey(seed),
u)) under the same regularisation, so what changes between rows is only what
the weights learnt. Checkpoints must share one architecture; the optimisation
is compiled once and the weights are swapped in (they are an argument of the
compiled function).

Writes under DIR (the gallery then shows every checkpoint as a row of each
unit page):

    <layer>/evolution.png                  checkpoints (rows) x units (columns),
                                           appearance | flow, middle frame
    <layer>/<NN>_<label>/result.npz        each checkpoint's units (stviz_jax.Result)
    <layer>/<NN>_<label>/unit_0003_*       media per unit
    evolution.json, index.html, gallery/
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from typing import Mapping, Sequence

from absl import app, flags, logging
import jax
import ml_collections
import numpy as np

from stviz_jax import gallery, job, models, plan, render
from stviz_jax.optimize import Visualizer
from stviz_jax.result import Result


def _same_structure(a, b) -> bool:
  shapes = lambda t: jax.tree.map(lambda x: (tuple(np.shape(x)), str(np.asarray(x).dtype)), t)
  return (jax.tree.structure(a) == jax.tree.structure(b)
          and jax.tree.leaves(shapes(a)) == jax.tree.leaves(shapes(b)))


def evolve(checkpoints: Sequence[models.Model], layer: str, units: Sequence[int],
           config: ml_collections.ConfigDict, seed: int = 0,
           tv: Mapping[str, tuple[float, float]] | None = None,
           visualizer: Visualizer | None = None) -> list[Result]:
  """Visualises `units` of `layer` for each checkpoint with the same seed.

  Args:
    checkpoints: models of one architecture (e.g. `models.load(name,
      weights=path)` per saved epoch), in training order.
    layer, units, config, seed, tv: as `stviz_jax.visualize`.
    visualizer: optional, a `Visualizer` of `layer` of the first checkpoint
      to reuse (its compilation serves every checkpoint).

  Returns:
    One `Result` per checkpoint. Unit u starts from the same noise in every
    one, so the rows differ only through the weights.
  """
  if not checkpoints:
    raise ValueError("no checkpoints given")
  first = checkpoints[0]
  vis = visualizer or Visualizer(first, layer, config)
  results = []
  for i, model in enumerate(checkpoints):
    if not _same_structure(first.variables, model.variables):
      raise ValueError(f"checkpoint {i} ({model.name}) has different variables from "
                       f"checkpoint 0 ({first.name}); evolution needs one architecture")
    vis.model = dataclasses.replace(vis.model, variables=model.variables)
    results.append(vis.run(units, seed=seed, tv=tv, log_progress=False))
    logging.info("evolution: checkpoint %d/%d done (%d compilation(s))", i + 1,
                 len(checkpoints), vis.trace_count)
  return results


def evolution_grid(results: Sequence[Result], labels: Sequence[str] | None = None,
                   size: int = 64) -> np.ndarray:
  """Checkpoints (rows) x units (columns), each cell appearance | flow (middle frame).

  Flow is coloured as in the paper (R = u, G = v, B = |f|, min-max per cell).
  With `labels`, each row gets a text strip on the left.
  """
  rows = []
  for r in results:
    row = []
    for i in range(len(r.units)):
      cells = []
      for stream in render.display_order(r.inputs):
        frames = render.stream_frames(stream, r.inputs[stream][i])
        cells.append(frames[len(frames) // 2])
      tile = np.concatenate(cells, axis=1)
      row.append(render.upscale(tile, render.display_scale(tile.shape[0], size)))
    rows.append(row)
  image = render.grid(rows)
  if labels:
    image = _with_row_labels(image, labels, rows[0][0].shape[0])
  return image


def _with_row_labels(image: np.ndarray, labels: Sequence[str], tile_h: int,
                     pad: int = 2) -> np.ndarray:
  from PIL import Image, ImageDraw  # pylint: disable=import-outside-toplevel
  width = 8 + 7 * max(len(l) for l in labels)
  strip = Image.new("RGB", (width, image.shape[0]), "white")
  draw = ImageDraw.Draw(strip)
  for k, label in enumerate(labels):
    draw.text((4, pad + k * (tile_h + pad) + tile_h // 2 - 5), label, fill="black")
  return np.concatenate([np.asarray(strip), image], axis=1)


def run(config: ml_collections.ConfigDict, workdir: str, checkpoints: Sequence[str],
        labels: Sequence[str] = ()) -> list[Result]:
  """Loads `config.model` from each checkpoint path and writes the evolution."""
  if labels and len(labels) != len(checkpoints):
    raise ValueError(f"{len(labels)} labels for {len(checkpoints)} checkpoints")
  labels = list(labels) or [os.path.splitext(os.path.basename(c.rstrip("/")))[0]
                            for c in checkpoints]
  kwargs = dict(config.model_overrides)
  loaded = []
  for path in checkpoints:
    if not os.path.exists(path):
      raise FileNotFoundError(f"checkpoint {path!r} does not exist")
    loaded.append(models.load(config.model, weights=path, **kwargs))
  layer = config.layer
  loaded[0].spec.check_layer(layer)
  try:
    units = plan.parse_units(config.units, loaded[0], layer)
  except ValueError as e:
    raise ValueError(f"config.units: {e}") from None
  settings = plan.settings_from_config(config, loaded[0].spec.streams)[0]
  results = evolve(loaded, layer, units, config, config.seed, settings)
  layer_dir = os.path.join(workdir, layer.replace("/", "_"))
  for k, (label, result) in enumerate(zip(labels, results)):
    # No regularisation settings in the file: the gallery labels the row by its folder.
    result = dataclasses.replace(result, settings={})
    out = os.path.join(layer_dir, f"{k:02d}_{re.sub(r'[^A-Za-z0-9_.-]', '_', label)}")
    result.save(os.path.join(out, "result.npz"), config)
    for i in range(len(result.units)):
      job.save_unit_media(out, result, config, i)
  render.save_png(os.path.join(layer_dir, "evolution.png"), evolution_grid(results, labels))
  summary = {"model": config.model, "layer": layer, "units": units, "seed": config.seed,
             "settings": {s: list(v) for s, v in (settings or {}).items()},
             "checkpoints": [{"label": l, "path": os.path.abspath(p),
                              "activations": r.activations.tolist()}
                             for l, p, r in zip(labels, checkpoints, results)]}
  render.atomic_write(os.path.join(workdir, "evolution.json"),
                      json.dumps(summary, indent=1).encode())
  with open(os.path.join(workdir, "config.json"), "w") as f:
    f.write(config.to_json(indent=2))
  gallery.build(workdir)
  return results


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.INFO)
  run(_CONFIG.value, _WORKDIR.value, _CHECKPOINTS.value, _LABELS.value)


if __name__ == "__main__":
  from ml_collections import config_flags
  _CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config.",
                                            lock_config=True)
  _WORKDIR = flags.DEFINE_string("workdir", None, "Directory receiving the evolution.")
  _CHECKPOINTS = flags.DEFINE_list("checkpoints", [], "Weight files of the model, in "
                                   "training order (config.model's `weights=`).")
  _LABELS = flags.DEFINE_list("labels", [], "Row labels (default: the file names).")
  flags.mark_flags_as_required(["config", "workdir", "checkpoints"])
  from stviz_jax import cli  # pylint: disable=import-outside-toplevel
  cli.run_absl(main)
