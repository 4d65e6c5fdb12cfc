r"""Dataset statistics of units: a_hat, top activating clips, per-class maximum.

  python -m stviz_jax.stats --config=configs/synthetic_stats.py --workdir=DIR

One pass over a labelled clip dataset (`stviz_jax.data.clips`) records, for
every unit c of the chosen layers l,

  * a_hat_{l,c} = max_{clips x} max_{locations p} a_{l,c}(x)[p]   (the paper's
    normalisation in equation 1: the maximum activation on a validation set),
  * the top-k clips by m_c(x) = max_p a_{l,c}(x)[p], each with the location
    p* = argmax_p (time, row, column in the feature map) where it is reached,
  * the per-class maximum activity  M_{c,k} = max_{x in class k} m_c(x)
    (the last column of the paper's Figures 10 and 11).

Batches stream through one jitted step (forward pass plus a reduction that
is vectorised over units: a segment maximum over labels and `lax.top_k` over
the running top-k concatenated with the batch), so memory is bounded by one
batch and O(units x (k + classes)). The last batch is padded and masked, so
there is one compilation. Every `checkpoint_every` batches the running
statistics are written atomically; a rerun continues from there and gives
the same result as an uninterrupted pass.

Output (`DIR/stats.npz`, the gallery's schema, see `stviz_jax.gallery`):

  class_names (K,), meta (JSON string),
  <layer>/a_hat (U,), <layer>/per_class_max (U, K) (NaN: class absent),
  <layer>/top_scores (U, k), <layer>/top_clips (U, k) clip indices (-1: none),
  <layer>/top_labels (U, k), <layer>/top_videos (U, k), <layer>/top_frames (U, k),
  <layer>/top_t, top_y, top_x (U, k) feature-map location, <layer>/feature_shape,
  <layer>/top_thumbnails (U, k, h, w, 3) uint8 (the input around the location).

`config.objective.a_hat_from=DIR/stats.npz` makes the visualisation objective
divide by these a_hat (`stviz_jax.a_hat.load_a_hat`), and the gallery shows the top clips and
the 10 highest-activating classes per unit.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import os
from typing import Any, Mapping, Sequence

from absl import app, flags, logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from stviz_jax import files, models, render
from stviz_jax import progress as progress_lib
from stviz_jax.a_hat import check_stats_file
from stviz_jax.data import clips as clips_lib
from stviz_jax.models import LOGITS

STATS_FILE = "stats.npz"
STATE_FILE = "stats_state.npz"
SUMMARY_FILE = "stats_summary.json"
THUMBNAIL_SIZE = 48


# --- the per-batch reduction (pure, jit-able) ----------------------------------


def init_layer_state(num_units: int, num_classes: int, top_k: int) -> dict[str, jax.Array]:
  """Running statistics of one layer before any clip: maxima at -inf, no clips."""
  return {
      "a_hat": jnp.full((num_units,), -jnp.inf, jnp.float32),
      "per_class_max": jnp.full((num_classes, num_units), -jnp.inf, jnp.float32),
      "top_scores": jnp.full((num_units, top_k), -jnp.inf, jnp.float32),
      "top_clips": jnp.full((num_units, top_k), -1, jnp.int32),
      "top_positions": jnp.zeros((num_units, top_k), jnp.int32),
      "top_labels": jnp.full((num_units, top_k), -1, jnp.int32),
  }


def update_layer_state(state: Mapping[str, jax.Array], features: jax.Array,
                       labels: jax.Array, clip_ids: jax.Array,
                       valid: jax.Array) -> dict[str, jax.Array]:
  """Folds one batch into the running statistics of one layer.

  With m_c(x_n) = max_p a_c(x_n)[p] over the P locations of the feature map:
  a_hat_c <- max(a_hat_c, max_n m_c(x_n)); M_{k,c} <- max(M_{k,c}, max_{n: y_n = k}
  m_c(x_n)); top-k of unit c <- top_k(previous top-k ++ (m_c(x_n))_n). Ties keep
  the earlier clip (running entries come first and `lax.top_k` prefers lower
  indices), so streaming equals one pass over everything at once.

  Args:
    state: `init_layer_state` or a previous result.
    features: `(N, ..., U)` activations of the layer (any number of
      spatiotemporal axes, including none).
    labels: `(N,)` class indices.
    clip_ids: `(N,)` global clip indices.
    valid: `(N,)` bool; False rows (padding) are ignored.

  Returns:
    The updated state (same structure and shapes).
  """
  n, units = features.shape[0], features.shape[-1]
  flat = features.reshape(n, -1, units).astype(jnp.float32)
  clip_max = jnp.where(valid[:, None], jnp.max(flat, axis=1), -jnp.inf)  # (N, U)
  position = jnp.argmax(flat, axis=1).astype(jnp.int32)                # (N, U)
  top_k = state["top_scores"].shape[1]
  scores = jnp.concatenate([state["top_scores"], clip_max.T], axis=1)
  ids = jnp.concatenate([state["top_clips"],
                         jnp.broadcast_to(clip_ids.astype(jnp.int32), (units, n))], axis=1)
  positions = jnp.concatenate([state["top_positions"], position.T], axis=1)
  labelled = jnp.concatenate([state["top_labels"],
                              jnp.broadcast_to(labels.astype(jnp.int32), (units, n))], axis=1)
  top_scores, order = jax.lax.top_k(scores, top_k)
  return {
      "a_hat": jnp.maximum(state["a_hat"], jnp.max(clip_max, axis=0)),
      "per_class_max": state["per_class_max"].at[labels].max(clip_max),
      "top_scores": top_scores,
      "top_clips": jnp.take_along_axis(ids, order, axis=1),
      "top_positions": jnp.take_along_axis(positions, order, axis=1),
      "top_labels": jnp.take_along_axis(labelled, order, axis=1),
  }


def make_step(apply, layers: Sequence[str]):
  """jit of `(variables, state, inputs, labels, ids, valid) -> state` for all `layers`."""

  def step(variables, state, inputs, labels, clip_ids, valid):
    logits, features = apply(variables, inputs)
    features = dict(features, **{LOGITS: logits})
    return {l: update_layer_state(state[l], features[l], labels, clip_ids, valid)
            for l in layers}

  return jax.jit(step)


# --- the pass over a dataset ---------------------------------------------------


@dataclasses.dataclass
class UnitStats:
  """Statistics of the units of several layers over one dataset.

  Attributes:
    layers: layer -> arrays `a_hat (U,)`, `per_class_max (U, K)`, `top_scores
      (U, k)`, `top_clips (U, k)`, `top_t/top_y/top_x (U, k)`, `feature_shape`.
    class_names: `(K,)`.
    num_clips: clips seen.
    meta: model, dataset fingerprint, batch size, top_k.
  """

  layers: dict[str, dict[str, np.ndarray]]
  class_names: tuple[str, ...]
  num_clips: int
  meta: dict[str, Any] = dataclasses.field(default_factory=dict)

  def save(self, path: str, dataset: clips_lib.ClipDataset | None = None,
           thumbnails: Mapping[str, np.ndarray] | None = None) -> None:
    """Writes the `.npz` of the module docstring atomically."""
    arrays = {"class_names": np.asarray(self.class_names, dtype=str),
              "meta": np.asarray(json.dumps(dict(self.meta, num_clips=self.num_clips)))}
    for layer, d in self.layers.items():
      arrays.update({f"{layer}/{k}": v for k, v in d.items()})
      ids = d["top_clips"]
      videos = np.full(ids.shape, "", dtype=object)
      frames = np.zeros(ids.shape, np.int32)
      stride = int(self.meta.get("time_stride", {}).get(layer, 1))
      if dataset is not None:
        for u, k in zip(*np.nonzero(ids >= 0)):
          info = _describe(dataset, int(ids[u, k]))
          videos[u, k] = info.get("video", "")
          frames[u, k] = int(info.get("frame", 0)) + int(d["top_t"][u, k]) * stride
      arrays[f"{layer}/top_videos"] = np.asarray(videos.astype(str))
      arrays[f"{layer}/top_frames"] = frames
      if thumbnails and layer in thumbnails:
        arrays[f"{layer}/top_thumbnails"] = thumbnails[layer]
    files.savez(path, arrays)

  @classmethod
  def load(cls, path: str) -> "UnitStats":
    with files.load_npz(check_stats_file(path)) as f:
      meta = json.loads(str(f["meta"])) if "meta" in f.files else {}
      layers: dict[str, dict[str, np.ndarray]] = {}
      for key in f.files:
        if "/" in key:
          layer, field = key.rsplit("/", 1)
          layers.setdefault(layer, {})[field] = f[key]
      names = tuple(str(s) for s in f["class_names"]) if "class_names" in f.files else ()
    return cls(layers=layers, class_names=names, num_clips=int(meta.get("num_clips", 0)),
               meta=meta)


def _describe(dataset, index: int) -> dict:
  return dataset.describe(index) if hasattr(dataset, "describe") else {}


def _fingerprint(dataset) -> str:
  if hasattr(dataset, "fingerprint"):
    return str(dataset.fingerprint())
  return f"{type(dataset).__name__}:{len(dataset)}"


def compute(model: models.Model, dataset: clips_lib.ClipDataset, layers: Sequence[str],
            *, batch_size: int = 32, top_k: int = 8, state_path: str | None = None,
            checkpoint_every: int = 10, log_every: int = 10,
            progress_bar: bool = True) -> UnitStats:
  """One pass over `dataset`: a_hat, top-k clips and per-class maximum per unit.

  Args:
    model: the network.
    dataset: clips with labels (`stviz_jax.data.clips`), in the model's input units.
    layers: taps of `model.spec.layers` ('logits' for class units).
    batch_size: clips per forward pass (bounds memory).
    top_k: clips kept per unit.
    state_path: where the running statistics are checkpointed (atomically)
      every `checkpoint_every` batches; if it holds a checkpoint of the same
      model, layers, dataset, batch size and top_k, the pass resumes from it.
    checkpoint_every: batches between checkpoints.
    log_every: batches between progress lines.
    progress_bar: show a progress bar (terminal or notebook).

  Returns:
    A `UnitStats`.
  """
  layers = tuple(dict.fromkeys(layers))
  if not layers:
    raise ValueError("no layers given for statistics")
  for layer in layers:
    model.spec.check_layer(layer)
  n = len(dataset)
  if n == 0:
    raise ValueError("the dataset has no clips")
  if batch_size < 1 or top_k < 1:
    raise ValueError(f"batch_size and top_k must be >= 1, got {batch_size}, {top_k}")
  num_classes = len(dataset.class_names)
  shapes = {l: model.spec.feature_shape(l) for l in layers}
  fingerprint = {"model": model.name, "layers": list(layers), "dataset": _fingerprint(dataset),
                 "num_clips": n, "batch_size": int(batch_size), "top_k": int(top_k),
                 "num_classes": num_classes}
  state = {l: init_layer_state(shapes[l][-1], num_classes, top_k) for l in layers}
  n_batches = -(-n // batch_size)
  start = 0
  if state_path and os.path.exists(state_path):
    state, start = _restore_state(state_path, fingerprint, state)
    logging.info("statistics: resuming at batch %d/%d from %s", start, n_batches, state_path)

  step = make_step(model.apply, layers)
  variables = model.variables

  def load(b):
    idx = np.arange(b * batch_size, min((b + 1) * batch_size, n))
    inputs, labels = dataset.batch(idx)
    pad = batch_size - idx.size
    valid = np.arange(batch_size) < idx.size
    if pad:  # repeat the last clip; masked out, keeps one compilation.
      inputs = {k: np.concatenate([v, np.repeat(v[-1:], pad, 0)]) for k, v in inputs.items()}
      labels = np.concatenate([labels, np.repeat(labels[-1:], pad)])
      idx = np.concatenate([idx, np.repeat(idx[-1:], pad)])
    for s, spec in model.spec.streams.items():
      if s not in inputs or tuple(inputs[s].shape[1:]) != spec.shape:
        raise ValueError(f"dataset gives stream {s!r} shape "
                         f"{None if s not in inputs else inputs[s].shape[1:]}, model "
                         f"{model.name!r} expects {spec.shape}")
    return inputs, np.asarray(labels, np.int32), idx.astype(np.int32), valid

  bar = progress_lib.Bar("statistics", n, "clip", progress_bar)
  bar.skip(min(start * batch_size, n))
  with bar, concurrent.futures.ThreadPoolExecutor(1) as pool:  # decode batch b+1 during b.
    pending = pool.submit(load, start) if start < n_batches else None
    for b in range(start, n_batches):
      inputs, labels, idx, valid = pending.result()
      pending = pool.submit(load, b + 1) if b + 1 < n_batches else None
      state = step(variables, state, inputs, labels, idx, valid)
      done = b + 1
      if state_path and (done % checkpoint_every == 0) and done < n_batches:
        _save_state(state_path, state, done, fingerprint)
      log = done % log_every == 0 or done == n_batches
      if log:
        jax.block_until_ready(state)
      bar.update(min(done * batch_size, n) - bar.done, log=log,
                 where=f"batch {done}/{n_batches}, ")
  state = jax.device_get(state)
  if state_path:
    _save_state(state_path, state, n_batches, fingerprint)

  out = {}
  time_stride = {}
  for layer in layers:
    s = state[layer]
    spatial = shapes[layer][:-1]
    positions = np.unravel_index(np.asarray(s["top_positions"]), spatial or (1,))
    coords = [np.zeros_like(s["top_positions"])] * (3 - len(positions)) + list(positions)
    ids = np.where(np.isfinite(s["top_scores"]), s["top_clips"], -1).astype(np.int32)
    per_class = np.asarray(s["per_class_max"]).T
    out[layer] = {
        "a_hat": np.asarray(s["a_hat"]),
        "per_class_max": np.where(np.isfinite(per_class), per_class, np.nan),
        "top_scores": np.asarray(s["top_scores"]),
        "top_clips": ids,
        "top_labels": np.where(ids >= 0, s["top_labels"], -1).astype(np.int32),
        "top_t": np.asarray(coords[-3], np.int32), "top_y": np.asarray(coords[-2], np.int32),
        "top_x": np.asarray(coords[-1], np.int32),
        "feature_shape": np.asarray(shapes[layer], np.int32),
    }
    time_stride[layer] = _time_stride(model, layer)
  meta = dict(fingerprint, time_stride=time_stride)
  return UnitStats(layers=out, class_names=tuple(dataset.class_names), num_clips=n, meta=meta)


def _time_stride(model: models.Model, layer: str) -> int:
  """Input frames per feature-map time step (1 when the layer has no time axis)."""
  shape = model.spec.feature_shape(layer)
  if len(shape) < 4:
    return 1
  frames = max(s.frames for s in model.spec.streams.values())
  return max(1, frames // max(shape[0], 1))


def _save_state(path: str, state, next_batch: int, fingerprint: dict) -> None:
  arrays = {f"{l}/{k}": np.asarray(v) for l, d in state.items() for k, v in d.items()}
  arrays["meta"] = np.asarray(json.dumps(dict(fingerprint, next_batch=int(next_batch))))
  files.savez(path, arrays)


def _restore_state(path: str, fingerprint: dict, template):
  with files.load_npz(path) as f:
    meta = json.loads(str(f["meta"]))
    saved = {k: meta.get(k) for k in fingerprint}
    if saved != fingerprint:
      diff = {k: (saved[k], fingerprint[k]) for k in fingerprint if saved[k] != fingerprint[k]}
      raise ValueError(f"{path}: checkpoint of a different statistics pass ({diff} as "
                       "(saved, now)); delete it or use another workdir")
    state = {l: {k: jnp.asarray(f[f"{l}/{k}"]) for k in d} for l, d in template.items()}
  return state, int(meta["next_batch"])


# --- using the statistics -----------------------------------------------------


def thumbnails(model: models.Model, stats: UnitStats, dataset: clips_lib.ClipDataset,
               size: int = THUMBNAIL_SIZE, batch_size: int = 32) -> dict[str, np.ndarray]:
  """Per layer `(U, k, size, size, 3)` uint8: each top clip around its location.

  The crop is the unit's receptive field (measured, `Model.spec.geometry`)
  centred on the input pixel under the feature-map location, from the
  appearance stream when there is one (else the flow, coloured as in the
  paper), at the frame under the location's time step.
  """
  stream = "rgb" if "rgb" in model.spec.streams else sorted(model.spec.streams)[0]
  spec = model.spec.streams[stream]
  ids = np.unique(np.concatenate([d["top_clips"].ravel() for d in stats.layers.values()]))
  ids = ids[ids >= 0]
  frames = {}
  for s in range(0, ids.size, batch_size):
    chunk = ids[s:s + batch_size]
    # Padded to the pass's batch size: a jitted dataset reuses its compilation.
    padded = np.concatenate([chunk, np.repeat(chunk[-1:], batch_size - chunk.size)])
    x = dataset.batch(padded)[0][stream]
    for i, clip in zip(chunk, x):
      frames[int(i)] = render.stream_frames(stream, clip)  # (T, H, W, 3) uint8
  out = {}
  for layer, d in stats.layers.items():
    shape = tuple(int(v) for v in d["feature_shape"])
    spatial = (1,) * (4 - len(shape)) + shape[:-1]  # (T', H', W')
    try:
      rf = model.spec.geometry(layer).spatial_size if len(shape) > 1 else spec.height
    except Exception:  # pylint: disable=broad-except
      rf = spec.height  # geometry not measurable (e.g. logits): whole frame.
    crop = int(min(max(rf, 8), spec.height, spec.width))
    units, k = d["top_clips"].shape
    thumbs = np.zeros((units, k, size, size, 3), np.uint8)
    for u, j in zip(*np.nonzero(d["top_clips"] >= 0)):
      clip = frames[int(d["top_clips"][u, j])]
      t = min(int((d["top_t"][u, j] + 0.5) * clip.shape[0] / spatial[0]), clip.shape[0] - 1)
      cy = (d["top_y"][u, j] + 0.5) * spec.height / spatial[1]
      cx = (d["top_x"][u, j] + 0.5) * spec.width / spatial[2]
      y0 = int(np.clip(round(cy - crop / 2), 0, spec.height - crop))
      x0 = int(np.clip(round(cx - crop / 2), 0, spec.width - crop))
      patch = clip[t, y0:y0 + crop, x0:x0 + crop]
      sel = (np.arange(size) * crop // size)
      thumbs[u, j] = patch[sel][:, sel]
    out[layer] = thumbs
  return out


# --- the job ---------------------------------------------------------------------


def dataset_from_config(config: ml_collections.ConfigDict, model: models.Model):
  """The dataset named by `config.dataset.kind`: 'synthetic' or 'videos'."""
  d = config.dataset
  if d.kind == "synthetic":
    return clips_lib.synthetic_from_config(config.data, d.size, d.seed)
  if d.kind == "videos":
    from stviz_jax.data import videos
    return videos.VideoFolder.from_config(d, model.spec.streams)
  raise ValueError(f"unknown dataset.kind {d.kind!r}; valid: synthetic, videos")


def parse_layers(spec, model: models.Model) -> list[str]:
  layers = [l.strip() for l in (spec.split(",") if isinstance(spec, str) else spec)
            if l.strip()]
  if layers == ["all"]:
    return [l for l in model.spec.layers]
  for layer in layers:
    model.spec.check_layer(layer)
  return layers


def run(config: ml_collections.ConfigDict, workdir: str) -> UnitStats:
  """Computes and writes `DIR/stats.npz` (+ `stats_summary.json`), resumably."""
  os.makedirs(workdir, exist_ok=True)
  kwargs = dict(config.model_overrides)
  if config.weights:
    kwargs["weights"] = config.weights
  model = models.load(config.model, **kwargs)
  dataset = dataset_from_config(config, model)
  layers = parse_layers(config.stats.layers, model)
  sc = config.stats
  logging.info("statistics of %s layers %s over %d clips (%d classes)", model.name,
               layers, len(dataset), len(dataset.class_names))
  stats = compute(model, dataset, layers, batch_size=sc.batch_size, top_k=sc.top_k,
                  state_path=os.path.join(workdir, STATE_FILE),
                  checkpoint_every=sc.checkpoint_every, log_every=sc.log_every)
  thumbs = (thumbnails(model, stats, dataset, batch_size=sc.batch_size)
            if sc.thumbnails else None)
  path = os.path.join(workdir, STATS_FILE)
  stats.save(path, dataset, thumbs)
  summary = {"model": model.name, "num_clips": stats.num_clips,
             "class_names": list(stats.class_names), "layers": {}}
  for layer, d in stats.layers.items():
    summary["layers"][layer] = {
        str(u): {"a_hat": float(d["a_hat"][u]),
                 "top_classes": [stats.class_names[k] for k in
                                 np.argsort(-np.nan_to_num(d["per_class_max"][u], nan=-np.inf),
                                            kind="stable")[:3]]}
        for u in range(d["a_hat"].shape[0])}
  files.write_bytes(os.path.join(workdir, SUMMARY_FILE),
                      json.dumps(summary, indent=1).encode())
  logging.info("wrote %s", path)
  return stats


_CONFIG = None
_WORKDIR = None


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.INFO)
  run(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
  from ml_collections import config_flags
  _CONFIG = config_flags.DEFINE_config_file(
      "config", None, "Experiment config (configs/synthetic_stats.py).", lock_config=True)
  _WORKDIR = flags.DEFINE_string("workdir", None, "Directory receiving stats.npz.")
  flags.mark_flags_as_required(["config", "workdir"])
  from stviz_jax import cli  # pylint: disable=import-outside-toplevel
  cli.run_absl(main)
