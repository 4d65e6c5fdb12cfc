"""The natural clips a unit is compared with (`config.insight.clips`).

The sanity check needs a unit's top natural clips, the motion indices are
measured on them too, and accentuation starts from them. `from_config`
gives them as one in-memory set `(inputs, labels, names)`, checked against
the model's streams:

* `"synthetic"`: `insight.num_clips` clips of `config.data` (the synthetic
  net's own distribution; `configs/synthetic_two_stream.py` has it), drawn
  from `insight.seed`, labels `i mod K`;
* a `.npz`: arrays `<stream>` of shape `(N, T, H, W, C)` in model input units
  (and optionally `labels (N,)`), e.g. clips a researcher preprocessed;
* a folder of videos, one subfolder per class (`stviz_jax.data.videos`):
  up to `insight.num_clips` clips at evenly spaced indices, flow computed
  by OpenCV and cached beside the videos.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np

from stviz_jax import files
from stviz_jax.data import clips as clips_lib


@dataclasses.dataclass(frozen=True)
class NaturalClips:
  """Clips held in memory: `inputs` stream -> `(N, T, H, W, C)` float32, `labels` `(N,)`
  (-1: unknown), `names` `(N,)` what each clip is (a class name and index, or a file)."""

  inputs: dict[str, np.ndarray]
  labels: np.ndarray
  names: tuple[str, ...]
  source: str

  def __len__(self) -> int:
    return int(self.labels.shape[0])

  def take(self, indices) -> dict[str, np.ndarray]:
    """The clips `indices` (a list or array), stream -> `(n, T, H, W, C)`."""
    indices = np.asarray(indices, np.int64)
    bad = [int(i) for i in indices.ravel() if not 0 <= i < len(self)]
    if bad:
      raise ValueError(f"clip index(es) {bad} out of range for {self.source}: "
                       f"valid 0..{len(self) - 1}")
    return {s: v[indices] for s, v in self.inputs.items()}


def _check_streams(inputs, streams, source: str) -> None:
  missing = sorted(set(streams) - set(inputs))
  if missing:
    raise ValueError(f"{source}: no array for stream(s) {missing}; the model's streams "
                     f"are {sorted(streams)}")
  sizes = set()
  for s, spec in streams.items():
    shape = tuple(inputs[s].shape)
    if len(shape) != 5 or shape[1:] != tuple(spec.shape):
      raise ValueError(f"{source}: stream {s!r} has shape {shape}; expected "
                       f"(N, {', '.join(map(str, spec.shape))}) (N clips of the model's input)")
    sizes.add(shape[0])
  if len(sizes) > 1:
    raise ValueError(f"{source}: streams hold different numbers of clips {sorted(sizes)}")


def _synthetic(config, model) -> NaturalClips:
  if "data" not in config:
    raise ValueError("config.insight.clips='synthetic' needs config.data (the synthetic "
                     "clips' settings, as in configs/synthetic_two_stream.py); give a .npz "
                     "or a video folder instead")
  ins = config.insight
  dataset = clips_lib.synthetic_from_config(config.data, int(ins.num_clips), int(ins.seed))
  inputs, labels = dataset.batch(np.arange(len(dataset)))
  inputs = {s: inputs[s] for s in model.spec.streams if s in inputs}
  _check_streams(inputs, model.spec.streams, "config.insight.clips='synthetic'")
  names = tuple(f"{dataset.class_names[l]} #{i}" for i, l in enumerate(labels))
  return NaturalClips(inputs, np.asarray(labels, np.int32), names, "synthetic clips")


def _npz(path: str, model) -> NaturalClips:
  with files.load_npz(path) as f:
    arrays = {k: np.asarray(f[k]) for k in f.files}
  inputs = {s: arrays[s].astype(np.float32) for s in model.spec.streams if s in arrays}
  _check_streams(inputs, model.spec.streams, path)
  n = next(iter(inputs.values())).shape[0]
  labels = np.asarray(arrays.get("labels", np.full(n, -1)), np.int32).reshape(-1)
  if labels.shape[0] != n:
    raise ValueError(f"{path}: 'labels' has {labels.shape[0]} entries for {n} clips")
  names = tuple(f"{os.path.basename(path)} #{i}" for i in range(n))
  return NaturalClips(inputs, labels, names, path)


def _folder(path: str, config, model) -> NaturalClips:
  from stviz_jax.data import videos  # pylint: disable=import-outside-toplevel (OpenCV)
  dataset = videos.VideoFolder(path, model.spec.streams)
  n = min(len(dataset), int(config.insight.num_clips))
  indices = np.unique(np.linspace(0, len(dataset) - 1, n).round().astype(np.int64))
  inputs, labels = dataset.batch(indices)
  names = tuple(os.path.relpath(dataset.describe(int(i))["video"], path) for i in indices)
  return NaturalClips({s: np.asarray(v, np.float32) for s, v in inputs.items()},
                      np.asarray(labels, np.int32), names, path)


def from_config(config, model) -> NaturalClips | None:
  """The clips `config.insight.clips` names (module docstring); None when it is ""."""
  spec = str(config.insight.clips).strip()
  if not spec:
    return None
  if int(config.insight.num_clips) < 1:
    raise ValueError(f"config.insight.num_clips must be >= 1, got {config.insight.num_clips}")
  if spec == "synthetic":
    return _synthetic(config, model)
  if os.path.isdir(spec):
    return _folder(spec, config, model)
  if spec.endswith((".npz", ".npy")) or os.path.isfile(spec):
    return _npz(spec, model)
  raise ValueError(f"config.insight.clips={spec!r}: not 'synthetic', an existing folder of "
                   "videos or a .npz of clip arrays")
