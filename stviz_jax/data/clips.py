"""Labelled clip datasets with random access, as `stviz_jax.stats` reads them.

A dataset is anything with

  * `__len__()` -> number of clips N,
  * `class_names` -> tuple of K class names,
  * `batch(indices)` -> `(inputs, labels)`: inputs a dict stream ->
    `(n, T, H, W, C)` float32 in the model's input units, labels `(n,)` int32,
  * optionally `describe(index)` -> `{"video": path, "frame": int}` (where the
    clip comes from, for the gallery's top-clips table), and `fingerprint()`
    -> str (what resuming checks, so a changed dataset is never mixed in).

Clip i is a deterministic function of i, so a pass can be resumed at any
batch and the top clips can be fetched again afterwards by index.
"""

from __future__ import annotations

import functools
import hashlib
from typing import Mapping, Protocol, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from stviz_jax.data import synthetic


class ClipDataset(Protocol):
  class_names: tuple[str, ...]

  def __len__(self) -> int: ...

  def batch(self, indices: np.ndarray) -> tuple[dict[str, np.ndarray], np.ndarray]: ...


class ArrayClips:
  """Clips held in memory: `inputs` stream -> `(N, T, H, W, C)`, `labels` `(N,)`."""

  def __init__(self, inputs: Mapping[str, np.ndarray], labels: np.ndarray,
               class_names: Sequence[str], name: str = "arrays"):
    self.inputs = {k: np.asarray(v, np.float32) for k, v in inputs.items()}
    self.labels = np.asarray(labels, np.int32)
    self.class_names = tuple(class_names)
    self.name = name
    sizes = {k: v.shape[0] for k, v in self.inputs.items()}
    if any(s != self.labels.shape[0] for s in sizes.values()):
      raise ValueError(f"{name}: streams have {sizes} clips but there are "
                       f"{self.labels.shape[0]} labels")
    if self.labels.size and not 0 <= self.labels.min() <= self.labels.max() < len(self.class_names):
      raise ValueError(f"{name}: labels must lie in 0..{len(self.class_names) - 1}")

  def __len__(self) -> int:
    return int(self.labels.shape[0])

  def batch(self, indices):
    indices = np.asarray(indices)
    return {k: v[indices] for k, v in self.inputs.items()}, self.labels[indices]

  def describe(self, index: int) -> dict:
    return {"video": "", "frame": 0}

  def fingerprint(self) -> str:
    h = hashlib.sha1(self.labels.tobytes())
    for k in sorted(self.inputs):
      h.update(k.encode())
      h.update(np.ascontiguousarray(self.inputs[k][:4]).tobytes())
    return f"{self.name}:{len(self)}:{h.hexdigest()[:16]}"


class SyntheticClips:
  """The synthetic benchmark's clips (`stviz_jax.data.synthetic`) by index.

  Clip i has label `i mod K` (balanced classes) and is rendered from
  `fold_in(PRNGKey(seed), i)`, so any subset can be drawn again exactly.
  Inputs are `synthetic.model_inputs` (one RGB frame in [-1, 1], exact flow in
  pixels/frame), what `synthetic_two_stream` takes.
  """

  def __init__(self, classes: Sequence[synthetic.MotionClass], size: int, seed: int,
               spec: synthetic.ClipSpec = synthetic.ClipSpec()):
    self.classes = tuple(classes)
    self.class_names = tuple(c.name for c in self.classes)
    self.size, self.seed = int(size), int(seed)
    self.spec = synthetic.with_palette(spec, self.classes)
    if self.size < 1:
      raise ValueError(f"SyntheticClips: size must be >= 1, got {size}")

  def __len__(self) -> int:
    return self.size

  def batch(self, indices):
    indices = np.asarray(indices, np.int32)
    if indices.size and not 0 <= indices.min() <= indices.max() < self.size:
      raise IndexError(f"clip indices must lie in 0..{self.size - 1}")
    labels = indices % len(self.classes)
    inputs = _render(self.classes, self.spec, self.seed, jnp.asarray(indices),
                     jnp.asarray(labels))
    return jax.tree.map(np.asarray, inputs), labels.astype(np.int32)

  def describe(self, index: int) -> dict:
    return {"video": "", "frame": 0}  # no file: the clip index identifies it.

  def fingerprint(self) -> str:
    return f"synthetic:{self.size}:{self.seed}:{self.class_names}:{self.spec}"


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def _render(classes, spec, seed, indices, labels):
  colours, directions, speeds = synthetic.class_table(classes)
  key = jax.random.PRNGKey(seed)
  keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(indices)
  clips = jax.vmap(synthetic.render_clip, in_axes=(0, 0, 0, 0, None))(
      keys, colours[labels], directions[labels], speeds[labels], spec)
  return synthetic.model_inputs(clips)


def synthetic_from_config(data, size: int, seed: int) -> SyntheticClips:
  """`SyntheticClips` of the classes and clip settings of a `config.data`
  (configs/synthetic_two_stream.py: colours x directions at one speed)."""
  colours = [c.strip() for c in str(data.colours).split(",") if c.strip()]
  directions = [float(d) for d in str(data.directions).split(",") if d.strip()]
  spec = synthetic.ClipSpec(frames=data.frames, size=data.size, clutter=data.clutter,
                            distractors=data.distractors, noise=data.noise,
                            direction_jitter=data.direction_jitter,
                            speed_jitter=data.speed_jitter)
  return SyntheticClips(synthetic.grid_classes(colours, directions, data.speed), size, seed,
                        spec)
