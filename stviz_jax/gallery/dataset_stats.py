"""Optional dataset statistics shown on unit pages (schema in the package
docstring): `load_stats`, `find_stats`."""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import numpy as np

from stviz_jax import files, layout
from stviz_jax.gallery.runs import read_json


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
  cfg = read_json(os.path.join(workdir, layout.CONFIG_FILE)) or {}
  path = (cfg.get("objective") or {}).get("a_hat_from")
  return path if path and os.path.isfile(path) else None
