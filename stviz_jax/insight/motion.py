r"""Motion sensitivity of units: does a unit respond to appearance, to motion, or to both?

For a unit and a clip x (every stream), the unit's activation a(x) is the mean
of its channel over all feature positions (for 'logits', the class logit),
measured on variants of the clip:

  * `original`: x;
  * `static`: the motion removed: every frame of an appearance stream replaced
    by the clip's mean frame, every motion stream (optical flow) set to zero;
  * `shuffled`: the frames of every stream permuted in time by one seeded
    derangement (no frame stays in place; T = 1 leaves the clip as it is);
  * `no_<stream>` (models with several streams): that stream replaced by its
    neutral input, zero flow or the mid-grey of an appearance stream's value
    range, the others kept.

From them, per unit and clip (NaN where the unit does not fire, a(x) <= 0):

  static index   s = clip(a(static) / a(x), 0, 1)   1: fires as well without motion
  motion index   m = 1 - s                          1: needs the motion
  shuffle drop   d = clip(1 - a(shuffled) / a(x), 0, 1)   1: needs the frames' order
  stream share   share_k = c_k / sum_j c_j,  c_k = max(a(x) - a(no_k), 0)

c_k is the activation lost when stream k is removed. A unit reading one stream
only has share 1 there; a fusion unit that needs both (an AND of appearance
and motion) loses everything when either goes, so each share is 1/2, the
paper's "fusion units tie appearance to motion" as a number. With one stream,
its share is 1. Kowal et al. (CVPR 2022) measure static and dynamic bias of
video-network units the same way, by what survives when one factor is removed.

API:

    acts = responses(apply, variables, layer, units, clips, streams, key)  # pure, jit-able
    idx = indices(acts, streams)                                           # pure
    table = sensitivity(model, layer, units, clips, seed=0)                # host, batched
    table.to_json(), table.write_csv(path), table.rows

`clips` is `{stream: (U, N, T, H, W, C)}` (unit u's own N clips: its optimised
clip, its top natural clips) or `{stream: (N, T, H, W, C)}` shared by all
units; `unit_activations(model, layer, units, clips)` gives `(U, N)` a(x) alone.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import math
import warnings
from typing import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from stviz_jax import files, quality
from stviz_jax import progress as progress_lib
from stviz_jax.models import LOGITS, StreamSpec

ORIGINAL, STATIC, SHUFFLED = "original", "static", "shuffled"


def is_motion_stream(name: str, spec: StreamSpec) -> bool:
  """A stream that carries motion itself (optical flow): named 'flow' or 2 channels."""
  return name == "flow" or spec.channels == 2


def variant_names(streams: Mapping[str, StreamSpec]) -> tuple[str, ...]:
  names = (ORIGINAL, STATIC, SHUFFLED)
  if len(streams) > 1:
    names += tuple(f"no_{s}" for s in sorted(streams))
  return names


def _neutral(name: str, spec: StreamSpec, x: jax.Array) -> jax.Array:
  if is_motion_stream(name, spec):
    return jnp.zeros_like(x)
  lo, hi = spec.value_range
  return jnp.full_like(x, (lo + hi) / 2)


def derangement(frames: int, key: jax.Array) -> jax.Array:
  """A seeded permutation of `frames` indices that moves every one (identity for T = 1)."""
  if frames < 2:
    return jnp.arange(frames)
  # A random cyclic order visited one step ahead: no index maps to itself.
  order = jax.random.permutation(key, frames)
  position = jnp.argsort(order)
  return order[(position + 1) % frames]


def variants(clip: Mapping[str, jax.Array], streams: Mapping[str, StreamSpec],
             key: jax.Array) -> dict[str, dict[str, jax.Array]]:
  """The variants of one clip `{stream: (T, H, W, C)}` (module docstring), by name."""
  static = {s: (jnp.zeros_like(x) if is_motion_stream(s, streams[s])
                else jnp.broadcast_to(x.mean(0, keepdims=True), x.shape))
            for s, x in clip.items()}
  shuffled = {s: x[derangement(x.shape[0], key)] for s, x in clip.items()}
  out = {ORIGINAL: dict(clip), STATIC: static, SHUFFLED: shuffled}
  if len(streams) > 1:
    for removed in sorted(streams):
      out[f"no_{removed}"] = {s: (_neutral(s, streams[s], x) if s == removed else x)
                              for s, x in clip.items()}
  return out


def _unit_activation(apply, variables, layer: str, inputs, units) -> jax.Array:
  """`(n, U)`: each unit's channel mean over positions (the logit for 'logits')."""
  logits, feats = apply(variables, inputs)
  a = logits if layer == LOGITS else feats[layer]
  a = a.reshape(a.shape[0], -1, a.shape[-1]).mean(1)
  return a[:, units]


def responses(apply, variables, layer: str, units: jax.Array,
              clips: Mapping[str, jax.Array], streams: Mapping[str, StreamSpec],
              key: jax.Array) -> dict[str, jax.Array]:
  """Each unit's activation on every variant of its clips: `{variant: (U, N)}`.

  Pure: `jit` it with `layer` and `streams` static. `clips` is `{stream:
  (U, N, T, H, W, C)}`; unit u is read on its own clips only. Clip j of every
  unit is shuffled by the same derangement (from `fold_in(key, j)`).
  """
  names = variant_names(streams)
  u, n = next(iter(clips.values())).shape[:2]
  keys = jax.vmap(lambda j: jax.random.fold_in(key, j))(jnp.arange(n))

  def of_clip(clip, k):
    v = variants(clip, streams, k)
    return {s: jnp.stack([v[name][s] for name in names]) for s in clip}

  # (U, N, V, T, H, W, C) -> one network batch of U * N * V clips.
  batch = jax.vmap(jax.vmap(of_clip, in_axes=(0, 0)), in_axes=(0, None))(clips, keys)
  flat = {s: x.reshape((-1,) + x.shape[3:]) for s, x in batch.items()}
  acts = _unit_activation(apply, variables, layer, flat, units)  # (U * N * V, U)
  acts = acts.reshape(u, n, len(names), u)
  own = jnp.take_along_axis(acts, jnp.arange(u)[:, None, None, None], axis=3)[..., 0]
  return {name: own[:, :, i] for i, name in enumerate(names)}


def _ratio(num, den):
  return jnp.where(den > 0, num / jnp.where(den > 0, den, 1.0), jnp.nan)


def indices(acts: Mapping[str, jax.Array], streams: Mapping[str, StreamSpec]
            ) -> dict[str, jax.Array]:
  """Static / motion index, shuffle drop and stream shares (module docstring), same shapes."""
  a = acts[ORIGINAL]
  static = jnp.clip(_ratio(acts[STATIC], a), 0.0, 1.0)
  out = {"static_index": static, "motion_index": 1.0 - static,
         "shuffle_drop": jnp.clip(1.0 - _ratio(acts[SHUFFLED], a), 0.0, 1.0)}
  if len(streams) == 1:
    (s,) = streams
    out[f"share_{s}"] = jnp.where(a > 0, 1.0, jnp.nan)
    return out
  lost = {s: jnp.maximum(a - acts[f"no_{s}"], 0.0) for s in sorted(streams)}
  total = sum(lost.values())
  for s, c in lost.items():
    out[f"share_{s}"] = jnp.where(a > 0, _ratio(c, total), jnp.nan)
  return out


@dataclasses.dataclass
class MotionTable:
  """Motion sensitivity of the units of one layer, one row per unit (means over its clips).

  Attributes:
    layer: the layer.
    units: `(U,)`.
    streams: the model's streams (sorted).
    activations: variant -> `(U,)` mean activation over the unit's clips.
    measures: 'static_index', 'motion_index', 'shuffle_drop', 'share_<stream>' ->
      `(U,)`, the mean over the clips the unit fires on (NaN: on none).
    clips: clips per unit.
  """

  layer: str
  units: np.ndarray
  streams: tuple[str, ...]
  activations: dict[str, np.ndarray]
  measures: dict[str, np.ndarray]
  clips: int

  @property
  def columns(self) -> list[str]:
    return (["unit"] + [f"a_{v}" for v in self.activations] + list(self.measures))

  @property
  def rows(self) -> list[dict]:
    """One dict per unit, the CSV's columns (NaN as None)."""
    out = []
    for i, u in enumerate(self.units):
      row = {"unit": int(u)}
      row.update({f"a_{v}": _num(a[i]) for v, a in self.activations.items()})
      row.update({k: _num(m[i]) for k, m in self.measures.items()})
      out.append(row)
    return out

  def to_json(self) -> dict[str, dict]:
    """`{unit: {motion_index, static_index, shuffle_drop, shares: {stream: ..},
    activation: {variant: ..}}}`, JSON-able (NaN as None)."""
    out = {}
    for i, u in enumerate(self.units):
      out[str(int(u))] = {
          "motion_index": _num(self.measures["motion_index"][i]),
          "static_index": _num(self.measures["static_index"][i]),
          "shuffle_drop": _num(self.measures["shuffle_drop"][i]),
          "shares": {s: _num(self.measures[f"share_{s}"][i]) for s in self.streams},
          "activation": {v: _num(a[i]) for v, a in self.activations.items()},
          "clips": self.clips}
    return out

  def write_csv(self, path: str) -> None:
    """The table as CSV, one line per unit, written atomically."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, self.columns, lineterminator="\n")
    writer.writeheader()
    for row in self.rows:
      writer.writerow({k: ("" if v is None else v) for k, v in row.items()})
    files.write_text(path, buf.getvalue())


def _num(v) -> float | None:
  v = float(v)
  return None if math.isnan(v) else v


def _check(model, layer: str, units, clips) -> tuple[np.ndarray, dict[str, np.ndarray]]:
  model.spec.check_layer(layer)
  units = np.asarray(units, np.int32).ravel()
  if units.size == 0:
    raise ValueError("no units given")
  model.spec.check_units(layer, units)
  streams = model.spec.streams
  missing = sorted(set(streams) - set(clips))
  if missing:
    raise ValueError(f"clips lack stream(s) {missing}; the model's streams are {sorted(streams)}")
  out = {}
  for s, spec in streams.items():
    x = np.asarray(clips[s], np.float32)
    if x.ndim == 5:
      x = np.broadcast_to(x[None], (units.size,) + x.shape)
    if x.ndim != 6 or x.shape[0] != units.size or x.shape[2:] != spec.shape:
      raise ValueError(f"clips of stream {s!r} have shape {x.shape}; expected (U={units.size}, "
                       f"N, {', '.join(map(str, spec.shape))}) or (N, "
                       f"{', '.join(map(str, spec.shape))})")
    out[s] = x
  if len({x.shape[1] for x in out.values()}) > 1:
    raise ValueError(f"streams hold different numbers of clips: "
                     f"{ {s: x.shape[1] for s, x in out.items()} }")
  return units, out


def _batches(units: np.ndarray, clips: Mapping[str, np.ndarray], batch_size: int):
  """(unit chunk, clip batch) pieces of about `batch_size` (unit, clip) pairs each.

  Clips are batched along N (`min(batch_size, N)` at a time) and units in
  chunks so that a piece holds at most `batch_size` pairs: a whole layer's
  units never meet in one network call. The last chunk and batch are padded
  by repeating their final element, so every piece has one shape (one
  compilation). Yields `(b, rows, cols, units, clips)`: `rows` / `cols` the
  slices of the (U, N) table the piece fills (its padding excluded), `b` the
  clip batch's index (it keys the shuffles).
  """
  u, n = units.size, next(iter(clips.values())).shape[1]
  cn = max(1, min(int(batch_size), n))
  cu = max(1, min(int(batch_size) // cn, u))
  for b, start in enumerate(range(0, n, cn)):
    cidx = np.minimum(np.arange(start, start + cn), n - 1)
    for ustart in range(0, u, cu):
      uidx = np.minimum(np.arange(ustart, ustart + cu), u - 1)
      yield (b, slice(ustart, min(ustart + cu, u)), slice(start, min(start + cn, n)),
             units[uidx], {s: x[uidx][:, cidx] for s, x in clips.items()})


def _compiled(model, layer: str):
  streams = model.spec.streams
  return jax.jit(lambda variables, units, clips, key: responses(
      model.apply, variables, layer, units, clips, streams, key))


def _run(model, layer, units, clips, seed: int, batch_size: int, progress: bool):
  """`{variant: (U, N)}` over pieces of (unit, clip) pairs, through one compilation."""
  fn = _compiled(model, layer)
  key = jax.random.PRNGKey(seed)
  n = next(iter(clips.values())).shape[1]
  out = {name: np.zeros((units.size, n), np.float32)
         for name in variant_names(model.spec.streams)}
  with progress_lib.Bar(f"{layer}: motion", units.size * n, "clip", progress,
                        noun="(unit, clip) pairs") as bar:
    for b, rows, cols, piece_units, piece in _batches(units, clips, batch_size):
      acts = fn(model.variables, jnp.asarray(piece_units), piece, jax.random.fold_in(key, b))
      nu, nc = rows.stop - rows.start, cols.stop - cols.start
      for name, v in acts.items():
        out[name][rows, cols] = np.asarray(v)[:nu, :nc]
      bar.update(nu * nc, log=False)
  return out


def sensitivity(model, layer: str, units: Sequence[int], clips: Mapping[str, np.ndarray],
                *, seed: int = 0, batch_size: int = 8, progress: bool = True) -> MotionTable:
  """The motion sensitivity of `units` of `layer` on their clips (module docstring).

  Args:
    model: a `stviz_jax.models.Model`.
    layer: a tap of the model, or 'logits'.
    units: unit (or class) indices.
    clips: `{stream: (U, N, T, H, W, C)}` per unit, or `(N, T, H, W, C)` for all,
      in model input units.
    seed: the shuffles' seed.
    batch_size: (unit, clip) pairs per network call (each pair becomes one input
      per variant), so memory is bounded for a whole layer.
    progress: a progress bar over the pairs (`stviz_jax.progress.Bar`).

  Returns:
    A `MotionTable`: activations and measures averaged over each unit's clips.
  """
  units, clips = _check(model, layer, units, clips)
  acts = _run(model, layer, units, clips, seed, batch_size, progress)
  idx = {k: np.asarray(v) for k, v in indices(acts, model.spec.streams).items()}
  with warnings.catch_warnings():
    # 'Mean of empty slice' for a unit firing on none of its clips: NaN says so.
    warnings.simplefilter("ignore", RuntimeWarning)
    measures = {k: np.nanmean(v, axis=1) for k, v in idx.items()}
  return MotionTable(layer=layer, units=units, streams=tuple(sorted(model.spec.streams)),
                     activations={k: v.mean(axis=1) for k, v in acts.items()},
                     measures=measures, clips=int(next(iter(clips.values())).shape[1]))


def unit_activations(model, layer: str, units: Sequence[int],
                     clips: Mapping[str, np.ndarray], *, batch_size: int = 16) -> np.ndarray:
  """`(U, N)` each unit's activation a(x) on clips `{stream: (N, T, H, W, C)}`."""
  units, per_unit = _check(model, layer, units, clips)
  shared = {s: x[0] for s, x in per_unit.items()}  # (N, T, H, W, C)
  return quality.pooled_features(model, shared, [layer], batch_size)[layer][:, units].T
