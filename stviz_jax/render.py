"""Turning optimised inputs into pictures: RGB images and flow videos.

Flow is shown as the paper does: RGB = (horizontal, vertical, magnitude),
min-max scaled over the whole sequence (not per frame), so speed differences
between frames stay visible.
"""

from __future__ import annotations

import os
import tempfile

import imageio.v3 as iio
import numpy as np


def to_uint8(x: np.ndarray) -> np.ndarray:
  """Min-max scales an array (over all its elements) to uint8."""
  x = np.asarray(x, np.float32)
  lo, hi = float(x.min()), float(x.max())
  return np.round((x - lo) / max(hi - lo, 1e-12) * 255).astype(np.uint8)


def appearance(x: np.ndarray) -> np.ndarray:
  """`(T, H, W, 3)` RGB input -> `(T, H, W, 3)` uint8, min-max over the clip."""
  return to_uint8(x)


def flow_to_rgb(flow: np.ndarray) -> np.ndarray:
  """`(T, H, W, 2)` flow (horizontal, vertical) -> `(T, H, W, 3)` uint8.

  R = horizontal, G = vertical, B = magnitude, each min-max scaled over the
  whole sequence.
  """
  flow = np.asarray(flow, np.float32)
  mag = np.sqrt(np.sum(flow ** 2, axis=-1, keepdims=True))
  return np.concatenate([to_uint8(flow[..., :1]), to_uint8(flow[..., 1:2]),
                         to_uint8(mag)], axis=-1)


def stream_frames(stream: str, x: np.ndarray) -> np.ndarray:
  """Frames `(T, H, W, 3)` uint8 for one stream's `(T, H, W, C)` input."""
  if stream == "flow" or x.shape[-1] == 2:
    return flow_to_rgb(x)
  if x.shape[-1] == 3:
    return appearance(x)
  return to_uint8(np.repeat(x.mean(-1, keepdims=True), 3, axis=-1))


def _atomic_write(path: str, data: bytes) -> None:
  d = os.path.dirname(os.path.abspath(path))
  os.makedirs(d, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=d, suffix=os.path.splitext(path)[1] + ".tmp")
  with os.fdopen(fd, "wb") as f:
    f.write(data)
  os.replace(tmp, path)


def save_png(path: str, image: np.ndarray) -> None:
  _atomic_write(path, iio.imwrite("<bytes>", image, extension=".png"))


def save_gif(path: str, frames: np.ndarray, fps: float = 8.0) -> None:
  """Looping GIF of `(T, H, W, 3)` uint8 frames."""
  _atomic_write(path, iio.imwrite("<bytes>", frames, extension=".gif",
                                  duration=1000.0 / fps, loop=0))


def upscale(image: np.ndarray, factor: int) -> np.ndarray:
  """Nearest-neighbour upscaling along H and W (axes -3, -2)."""
  return np.repeat(np.repeat(image, factor, axis=-3), factor, axis=-2)


def grid(tiles: list[list[np.ndarray]], pad: int = 2) -> np.ndarray:
  """Rows x columns of equally sized `(H, W, 3)` uint8 tiles, white gaps."""
  h, w = tiles[0][0].shape[:2]
  rows, cols = len(tiles), max(len(r) for r in tiles)
  out = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad, 3), 255, np.uint8)
  for i, row in enumerate(tiles):
    for j, t in enumerate(row):
      y, x = pad + i * (h + pad), pad + j * (w + pad)
      out[y:y + h, x:x + w] = t
  return out
