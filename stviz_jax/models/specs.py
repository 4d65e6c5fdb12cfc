"""The plain value types of a model's interface: its input streams, the
geometry of its layers, the name of the class-score layer and example inputs.

They depend on nothing else in `stviz_jax.models`, so both the model
abstraction (`base`) and the receptive-field measurement use them.
"""

from __future__ import annotations

import dataclasses
from typing import Mapping

import jax

LOGITS = "logits"


@dataclasses.dataclass(frozen=True)
class StreamSpec:
  """One input stream: `(frames, height, width, channels)` and its value range.

  `value_range` is the range of a typical preprocessed input (for an 8-bit
  source, what 0 and 255 map to). Regulariser bounds expressed in 8-bit pixel
  units (the paper's B = 160) are rescaled by it, so one config fits models
  fed with [0, 255], [-1, 1] or mean-subtracted pixels alike.
  """

  frames: int
  height: int
  width: int
  channels: int
  value_range: tuple[float, float] = (-1.0, 1.0)

  def __post_init__(self):
    lo, hi = self.value_range
    if not lo < hi:  # a reversed range would make every regulariser bound negative.
      raise ValueError(f"stream value_range {tuple(self.value_range)}: give (low, high) "
                       "with low < high, e.g. (-1.0, 1.0) or (0.0, 255.0)")

  @property
  def shape(self) -> tuple[int, int, int, int]:
    return (self.frames, self.height, self.width, self.channels)

  @property
  def pixel_scale(self) -> float:
    """Input units per 8-bit pixel level."""
    lo, hi = self.value_range
    return (hi - lo) / 255.0


@dataclasses.dataclass(frozen=True)
class LayerGeometry:
  """Receptive field and cumulative stride of a layer, per axis (T, H, W)."""

  size: tuple[int, int, int]
  stride: tuple[int, int, int]
  feature_shape: tuple[int, ...]

  @property
  def spatial_size(self) -> int:
    return max(self.size[1], self.size[2])

  @property
  def spatial_stride(self) -> int:
    return max(self.stride[1], self.stride[2])


def example_inputs(streams: Mapping[str, StreamSpec], batch: int = 1,
                   seed: int = 0) -> dict[str, jax.Array]:
  """Uniform random inputs `(batch, T, H, W, C)` per stream, in its value range."""
  keys = jax.random.split(jax.random.PRNGKey(seed), len(streams))
  out = {}
  for key, (name, s) in zip(keys, sorted(streams.items())):
    lo, hi = s.value_range
    out[name] = jax.random.uniform(key, (batch,) + s.shape, minval=lo, maxval=hi)
  return out
