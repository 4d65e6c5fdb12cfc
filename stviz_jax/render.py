"""Turning optimised inputs into pictures: RGB images, flow videos, figure grids.

Flow is shown as the paper does (Sect. 3, "Visualization"): a video whose
channels are

  R = u (horizontal, positive to the right),
  G = v (vertical, positive downwards),
  B = |f| = sqrt(u^2 + v^2),

each min-max scaled over the whole sequence (all frames and pixels together,
not per frame), so speed differences between frames stay visible. The common
HSV colour-wheel encoding (hue = direction, value = |f| / max |f| over the
sequence) is available too, with a legend image.

Attribution maps (`stviz_jax.insight.attribution`) are drawn beside their
clip by `attribution_overlay`: the clip seen through the map (MACO's
transparency, alpha = map) and the map as heat.

Media: PNG, looping GIF, MP4 (H.264) and WebM (VP9), all encoded by
imageio / imageio-ffmpeg (no system ffmpeg needed) and written atomically
(temporary name, then rename). Figure grids follow the paper's layout: rows
of units, columns of regularisation settings, appearance beside motion; each
figure keeps its raw input arrays in an `.npz` beside the pictures so it can be
remade without re-optimising.
"""

from __future__ import annotations

import json
import os
import tempfile
from typing import Mapping, Sequence

import imageio.v3 as iio
import imageio_ffmpeg
import numpy as np

from stviz_jax import files

VIDEO_FORMATS = ("gif", "mp4", "webm")
# Playback rate of every clip: optimised clips are short (8-16 frames), and at
# 4 frames per second an 8-frame loop lasts 2 s, slow enough to follow the motion.
DEFAULT_FPS = 4.0
ENCODINGS = ("rgb", "hsv")


def to_uint8(x: np.ndarray) -> np.ndarray:
  """Min-max scales an array (over all its elements) to uint8.

  A constant array (max = min) maps to 0: it carries no contrast to show.
  """
  x = np.asarray(x, np.float32)
  lo, hi = float(x.min()), float(x.max())
  return np.round((x - lo) / max(hi - lo, 1e-12) * 255).astype(np.uint8)


def appearance(x: np.ndarray) -> np.ndarray:
  """`(T, H, W, 3)` RGB input -> `(T, H, W, 3)` uint8, min-max over the clip."""
  return to_uint8(x)


def flow_to_rgb(flow: np.ndarray) -> np.ndarray:
  """The paper's flow colouring: `(T, H, W, 2)` flow -> `(T, H, W, 3)` uint8.

  With f = (u, v) in pixels per frame (u to the right, v downwards),
  R = u, G = v, B = |f|, each scaled by its min and max over the whole
  sequence: c' = 255 (c - min c) / (max c - min c).

  Args:
    flow: `(..., 2)` horizontal and vertical flow; any leading shape (usually
      `(T, H, W)`); the min-max runs over all of it.

  Returns:
    `(..., 3)` uint8.
  """
  flow = _check_flow(flow)
  mag = np.sqrt(np.sum(flow ** 2, axis=-1, keepdims=True))
  return np.concatenate([to_uint8(flow[..., :1]), to_uint8(flow[..., 1:2]),
                         to_uint8(mag)], axis=-1)


def flow_to_hsv(flow: np.ndarray, max_magnitude: float | None = None) -> np.ndarray:
  """Colour-wheel flow colouring: `(T, H, W, 2)` flow -> `(T, H, W, 3)` uint8.

  Hue = atan2(v, u) / 2 pi (0 = rightward = red, 1/4 = downward = chartreuse,
  1/2 = leftward = cyan, 3/4 = upward = violet), saturation 1, value
  |f| / M with M = `max_magnitude` or the largest |f| over the whole sequence;
  no flow is black. `flow_legend` draws the wheel.

  Args:
    flow: `(..., 2)` horizontal (right +) and vertical (down +) flow.
    max_magnitude: the speed shown at full brightness; default max |f|.

  Returns:
    `(..., 3)` uint8.
  """
  flow = _check_flow(flow)
  u, v = flow[..., 0], flow[..., 1]
  mag = np.sqrt(u * u + v * v)
  m = float(mag.max()) if max_magnitude is None else float(max_magnitude)
  hue = np.mod(np.arctan2(v, u), 2 * np.pi) / (2 * np.pi)
  value = np.clip(mag / max(m, 1e-12), 0.0, 1.0)
  return np.round(_hsv_to_rgb(hue, np.ones_like(hue), value) * 255).astype(np.uint8)


def flow_legend(size: int = 64, encoding: str = "hsv") -> np.ndarray:
  """A `(size, size, 3)` uint8 key for a flow colouring.

  Pixel (y, x) shows the colour of the flow (x - c, y - c) / c, c = (size - 1)
  / 2, i.e. the direction and relative speed of a point on the disc; outside
  the unit disc is white. For "rgb" the key is exact for a sequence whose u
  and v span [-1, 1] and |f| spans [0, 1] (each video is min-max scaled by its
  own range, so read it for directions, not speeds).
  """
  check_encoding(encoding)
  c = (size - 1) / 2.0
  yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
  flow = np.stack([(xx - c) / c, (yy - c) / c], axis=-1)
  inside = np.sum(flow ** 2, axis=-1) <= 1.0
  flow = np.where(inside[..., None], flow, 0.0)
  if encoding == "hsv":
    img = flow_to_hsv(flow, max_magnitude=1.0)
  else:  # u, v spanning [-1, 1] and |f| spanning [0, 1], min-max scaled.
    rgb = np.stack([(flow[..., 0] + 1) / 2, (flow[..., 1] + 1) / 2,
                    np.sqrt(np.sum(flow ** 2, axis=-1))], axis=-1)
    img = np.round(np.clip(rgb, 0, 1) * 255).astype(np.uint8)
  img[~inside] = 255
  return img


def stream_frames(stream: str, x: np.ndarray, encoding: str = "rgb") -> np.ndarray:
  """Frames `(T, H, W, 3)` uint8 for one stream's `(T, H, W, C)` input.

  Flow (stream "flow" or 2 channels) uses `encoding` ("rgb": the paper's
  R, G, B = u, v, |f|; "hsv": colour wheel); 3 channels are RGB; other channel
  counts are shown as their grey mean.
  """
  check_encoding(encoding)
  x = np.asarray(x)
  if x.ndim != 4:
    raise ValueError(f"stream {stream!r}: expected (T, H, W, C), got shape {x.shape}")
  if stream == "flow" or x.shape[-1] == 2:
    return flow_to_hsv(x) if encoding == "hsv" else flow_to_rgb(x)
  if x.shape[-1] == 3:
    return appearance(x)
  return to_uint8(np.repeat(x.mean(-1, keepdims=True), 3, axis=-1))


def display_order(streams: Mapping[str, np.ndarray] | Sequence[str]) -> list[str]:
  """Stream names appearance first, motion last (the paper's figures)."""
  return sorted(streams, key=lambda s: (s == "flow" or "flow" in s, s))


def display_scale(height: int, target: int = 128) -> int:
  """Integer nearest-neighbour factor bringing `height` up to about `target`."""
  return max(1, target // max(int(height), 1))


def upscale(image: np.ndarray, factor: int) -> np.ndarray:
  """Nearest-neighbour upscaling along H and W (axes -3, -2)."""
  if factor == 1:
    return image
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


# --- attribution maps ------------------------------------------------------------

# A perceptually ordered heat scale (black, purple, red, orange, pale yellow; as
# matplotlib's inferno at 0, 1/4, 1/2, 3/4, 1), linearly interpolated.
_HEAT = np.asarray([[0, 0, 4], [87, 16, 110], [188, 55, 84], [249, 142, 9],
                    [252, 255, 164]], np.float32)


def heat(values: np.ndarray) -> np.ndarray:
  """`(...)` values in [0, 1] -> `(..., 3)` uint8 on the heat scale (0 black, 1 pale yellow)."""
  v = np.clip(np.asarray(values, np.float32), 0.0, 1.0) * (len(_HEAT) - 1)
  lo = np.minimum(np.floor(v).astype(np.int32), len(_HEAT) - 2)
  f = (v - lo)[..., None]
  return np.round(_HEAT[lo] * (1 - f) + _HEAT[lo + 1] * f).astype(np.uint8)


def _check_map(frames: np.ndarray, attribution: np.ndarray) -> np.ndarray:
  m = np.asarray(attribution, np.float32)
  if m.shape != frames.shape[:3]:
    raise ValueError(f"attribution map has shape {m.shape}; valid: {frames.shape[:3]} "
                     "(the clip's (T, H, W))")
  if not np.all(np.isfinite(m)):
    raise ValueError("attribution map contains NaN or infinite values")
  # Scaled by its 99th percentile, not its maximum: a few hot pixels would
  # otherwise leave the whole map (and the clip seen through it) nearly black.
  scale = float(np.percentile(m, ATTRIBUTION_PERCENTILE))
  return np.clip(m / max(scale if scale > 0 else float(m.max()), 1e-30), 0.0, 1.0)


def attribution_rgba(clip: np.ndarray, attribution: np.ndarray, stream: str = "rgb",
                     encoding: str = "rgb") -> np.ndarray:
  """MACO's picture: the clip coloured as `stream_frames` does, alpha = the map.

  Args:
    clip: `(T, H, W, C)` one stream's input (RGB, or flow coloured by `encoding`).
    attribution: `(T, H, W)` map, >= 0 (scaled to max 1 here).
    stream: the stream's name ('flow' or 2 channels: flow colouring).
    encoding: flow colouring, "rgb" (paper) or "hsv".

  Returns:
    `(T, H, W, 4)` uint8; alpha = round(255 * min(map / p99, 1)) with p99 the map's
    99th percentile (its maximum if that is 0), 0 where the map is 0.
  """
  frames = stream_frames(stream, clip, encoding)
  alpha = np.round(_check_map(frames, attribution) * 255).astype(np.uint8)
  return np.concatenate([frames, alpha[..., None]], axis=-1)


ATTRIBUTION_PANELS = ("clip", "seen through the map", "map")
ATTRIBUTION_PERCENTILE = 99.0  # the map value shown fully opaque.


def attribution_overlay(clip: np.ndarray, attribution: np.ndarray, stream: str = "rgb",
                        encoding: str = "rgb", target_size: int = 128, gap: int = 4,
                        background: int = 0, labels: bool = True) -> np.ndarray:
  """Three panels per frame, left to right: the clip, the clip seen through the
  map (MACO: alpha = map over a `background` grey level, black by default, so
  what the unit ignores fades out) and the map as heat over the clip's grey.

  Save the frames with `save_frames` / `save_gif` / `save_video`. Small clips
  are upscaled nearest-neighbour to about `target_size` pixels high.

  Args:
    clip: `(T, H, W, C)` one stream's input, model input units.
    attribution: `(T, H, W)` map (e.g. `Result.attribution[stream][i]` or
      `insight.attribution.gradient_x_input`), >= 0.
    stream: the stream's name ('flow' or 2 channels: flow colouring).
    encoding: flow colouring, "rgb" (paper) or "hsv".
    target_size: about the panels' height in pixels.
    gap: white pixels between panels.
    background: 0..255, the grey the transparent parts fade to.
    labels: a 16-pixel strip above naming the panels (`ATTRIBUTION_PANELS`).

  Returns:
    `(T, H' [+ 16], 3 W' + 2 gap, 3)` uint8 frames.
  """
  rgba = attribution_rgba(clip, attribution, stream, encoding)
  frames, alpha = rgba[..., :3].astype(np.float32), rgba[..., 3:].astype(np.float32) / 255
  seen = frames * alpha + float(background) * (1 - alpha)
  grey = frames.mean(axis=-1, keepdims=True)
  hot = heat(alpha[..., 0]).astype(np.float32)
  heated = 0.35 * grey + 0.65 * hot
  factor = display_scale(frames.shape[1], target_size)
  panels = [upscale(np.round(p).astype(np.uint8), factor) for p in (frames, seen, heated)]
  return _panels(panels, ATTRIBUTION_PANELS if labels else None, gap)


def _panels(panels: Sequence[np.ndarray], labels: Sequence[str] | None,
            gap: int) -> np.ndarray:
  """`(T, H, W_i, 3)` clips left to right per frame, under a strip naming each (`labels`)."""
  out = np.stack([_side_by_side([p[t] for p in panels], gap) for t in range(len(panels[0]))])
  if labels:
    strip = _label_strip(labels, [p.shape[2] for p in panels], 16, gap)[:, gap:-gap]
    out = np.concatenate([np.broadcast_to(strip, (len(out),) + strip.shape), out], axis=1)
  return np.ascontiguousarray(out)


def clips_side_by_side(clips: Sequence[np.ndarray], stream: str, labels: Sequence[str],
                       encoding: str = "rgb", target_size: int = 128,
                       gap: int = 4) -> np.ndarray:
  """Clips of one stream left to right on ONE colour scale, labelled above.

  Flow colours are min-max over the video (`flow_to_rgb`); colouring each clip
  alone would give a seed and its accentuated version different scales, so
  the same colour could mean different motions. Here the min-max spans all
  the clips.

  Args:
    clips: `(T, H, W, C)` inputs of one stream, equal shapes.
    stream: the stream's name ('flow' or 2 channels: flow colouring).
    labels: one text per clip.
    encoding: flow colouring, "rgb" (paper) or "hsv".

  Returns:
    `(T, 16 + H', n W' + (n - 1) gap, 3)` uint8 frames.
  """
  joined = stream_frames(stream, np.concatenate([np.asarray(c) for c in clips], axis=2),
                         encoding)
  factor = display_scale(joined.shape[1], target_size)
  panels = [upscale(p, factor) for p in np.split(joined, len(clips), axis=2)]
  return _panels(panels, labels, gap)


# --- files ---------------------------------------------------------------------


def save_png(path: str, image: np.ndarray) -> None:
  files.write_bytes(path, encode(image[None], "png"))


def save_gif(path: str, frames: np.ndarray, fps: float = DEFAULT_FPS) -> None:
  """Looping GIF of `(T, H, W, 3)` uint8 frames."""
  files.write_bytes(path, encode(frames, "gif", fps))


def encode(frames: np.ndarray, fmt: str, fps: float = DEFAULT_FPS) -> bytes:
  """The bytes of `(T, H, W, 3)` uint8 frames as a file of format `fmt`: "png"
  (the middle frame), "gif", "mp4" or "webm" (looping videos)."""
  if fmt == "png":
    return iio.imwrite("<bytes>", frames[len(frames) // 2], extension=".png")
  if fmt == "gif":
    return iio.imwrite("<bytes>", frames, extension=".gif", duration=1000.0 / fps, loop=0)
  if fmt not in VIDEO_FORMATS:
    raise ValueError(f"unknown media format {fmt!r}; valid: png, " + ", ".join(VIDEO_FORMATS))
  with tempfile.TemporaryDirectory(prefix="stviz_encode_") as tmp:
    path = os.path.join(tmp, f"clip.{fmt}")
    save_video(path, frames, fps)
    with open(path, "rb") as f:
      return f.read()


# H.264 in MP4 plays everywhere (browsers, slides, players); VP9 in WebM is the
# open codec every Chromium and Firefox build decodes. yuv420p needs even sizes.
_VIDEO_CODECS = {
    ".mp4": ("libx264", ["-crf", "17", "-preset", "fast", "-movflags", "+faststart"]),
    ".webm": ("libvpx-vp9", ["-b:v", "0", "-crf", "24", "-deadline", "realtime",
                             "-cpu-used", "8"]),
}


def save_video(path: str, frames: np.ndarray, fps: float = DEFAULT_FPS) -> None:
  """MP4 (H.264) or WebM (VP9), chosen by `path`'s extension, via imageio-ffmpeg.

  Frames `(T, H, W, 3)` uint8; odd heights/widths are padded by repeating the
  last row/column (the codecs' 4:2:0 chroma needs even sizes). A one-frame clip
  is written as two identical frames so every player shows it.
  """
  ext = os.path.splitext(path)[1].lower()
  if ext not in _VIDEO_CODECS:
    raise ValueError(f"{path}: video extension must be one of {sorted(_VIDEO_CODECS)}")
  frames = _check_frames(frames)
  if frames.shape[0] == 1:
    frames = np.concatenate([frames, frames])
  t, h, w, _ = frames.shape
  frames = np.pad(frames, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), mode="edge")
  codec, params = _VIDEO_CODECS[ext]
  with files.atomic_path(path) as tmp:
    writer = imageio_ffmpeg.write_frames(
        tmp, (frames.shape[2], frames.shape[1]), fps=fps, codec=codec,
        pix_fmt_in="rgb24", pix_fmt_out="yuv420p", macro_block_size=1,
        quality=None, bitrate=None, output_params=params, ffmpeg_log_level="error")
    writer.send(None)
    for frame in frames:
      writer.send(np.ascontiguousarray(frame))
    writer.close()


def save_frames(stem: str, frames: np.ndarray, formats: Sequence[str] = ("png", "gif"),
                fps: float = DEFAULT_FPS) -> dict[str, str]:
  """Writes `(T, H, W, 3)` uint8 frames as `stem.<format>` for each format.

  "png" is the middle frame (the whole clip when T = 1); "gif", "mp4",
  "webm" are looping videos, written only when T > 1. Returns format -> path.
  """
  frames = _check_frames(frames)
  written = {}
  for fmt in formats:
    path = f"{stem}.{fmt}"
    if fmt == "png":
      save_png(path, frames[len(frames) // 2])
    elif fmt in VIDEO_FORMATS:
      if len(frames) < 2:
        continue
      if fmt == "gif":
        save_gif(path, frames, fps)
      else:
        save_video(path, frames, fps)
    else:
      raise ValueError(f"unknown media format {fmt!r}; valid: png, "
                       + ", ".join(VIDEO_FORMATS))
    written[fmt] = path
  return written


def save_stream_media(stem: str, stream: str, x: np.ndarray,
                      formats: Sequence[str] = ("png", "gif", "mp4", "webm"),
                      encoding: str = "rgb", fps: float = DEFAULT_FPS,
                      target_size: int = 128) -> dict[str, str]:
  """Renders one stream's `(T, H, W, C)` input to `stem.<format>` files.

  Frames are coloured by `stream_frames` (flow with `encoding`) and
  nearest-neighbour upscaled to about `target_size` pixels high. Returns
  format -> path of the files written (videos only for clips, T > 1).
  """
  frames = stream_frames(stream, x, encoding)
  frames = upscale(frames, display_scale(frames.shape[1], target_size))
  return save_frames(stem, frames, formats, fps)


# --- figures in the paper's layout ---------------------------------------------


def _label_strip(texts: Sequence[str], widths: Sequence[int], height: int,
                 pad: int) -> np.ndarray:
  """A white strip with each text centred over its column."""
  from PIL import Image, ImageDraw, ImageFont  # pillow: an install requirement.
  width = sum(widths) + pad * (len(widths) + 1)
  img = Image.new("RGB", (width, height), (255, 255, 255))
  draw = ImageDraw.Draw(img)
  font = ImageFont.load_default()
  x = pad
  for text, w in zip(texts, widths):
    box = draw.textbbox((0, 0), text, font=font)
    tw, th = box[2] - box[0], box[3] - box[1]
    draw.text((x + (w - tw) // 2, (height - th) // 2 - box[1]), text, fill=(0, 0, 0),
              font=font)
    x += w + pad
  return np.asarray(img)


def _block_mean(frames: np.ndarray, k: int) -> np.ndarray:
  """Shrinks `(T, H, W, 3)` uint8 frames k times by averaging k x k blocks."""
  t, h, w, c = frames.shape
  f = frames[:, :h - h % k, :w - w % k].astype(np.float32)
  f = f.reshape(t, h // k, k, w // k, k, c).mean(axis=(2, 4))
  return np.round(f).astype(np.uint8)


def _resample_time(frames: np.ndarray, length: int) -> np.ndarray:
  """Stretches a clip to `length` frames (a still image repeats)."""
  idx = np.arange(length) * len(frames) // length
  return frames[idx]


def _side_by_side(images: Sequence[np.ndarray], gap: int) -> np.ndarray:
  """`(H, W_i, 3)` images left to right with white `gap`-pixel columns between."""
  h = images[0].shape[0]
  white = np.full((h, gap, 3), 255, np.uint8)
  parts = [images[0]]
  for image in images[1:]:
    parts += [white, image]
  return np.concatenate(parts, axis=1)


def figure(cells: Sequence[Sequence[Mapping[str, np.ndarray]]],
           row_labels: Sequence[str] | None = None,
           col_labels: Sequence[str] | None = None,
           encoding: str = "rgb", target_size: int = 96, pad: int = 2) -> np.ndarray:
  """Animated figure in the paper's layout (e.g. its Figs. 7 and 10).

  `cells[i][j]` is `{stream: (T, H, W, C)}`: row i (a unit) under column j
  (a regularisation setting); inside a cell the streams are side by side,
  appearance first, then motion (`display_order`). Clips of
  different lengths are stretched to the longest; still images repeat.

  Args:
    cells: rows x columns of per-stream inputs (every cell the same streams
      and shapes).
    row_labels, col_labels: optional text left of each row / above each column.
    encoding: flow colouring, "rgb" (paper) or "hsv".
    target_size: about the rendered height of a cell in pixels (small inputs
      are upscaled nearest-neighbour, inputs twice as tall or more are
      block-averaged down).
    pad: white gap in pixels.

  Returns:
    `(T, H, W, 3)` uint8 frames of the whole figure.
  """
  if not cells or not cells[0]:
    raise ValueError("figure needs at least one row and one column of cells")
  streams = display_order(cells[0][0])
  coloured = [[{s: stream_frames(s, c[s], encoding) for s in streams} for c in row]
              for row in cells]
  length = max(f.shape[0] for row in coloured for c in row for f in c.values())
  h = coloured[0][0][streams[0]].shape[1]
  shrink = max(1, h // target_size) if h >= 2 * target_size else 1
  if shrink > 1:
    coloured = [[{s: _block_mean(f, shrink) for s, f in c.items()} for c in row]
                for row in coloured]
    h = coloured[0][0][streams[0]].shape[1]
  factor = display_scale(h, target_size)
  frames = []
  for t in range(length):
    tiles = []
    for row in coloured:
      tiles.append([_side_by_side([upscale(_resample_time(c[s], length)[t], factor)
                                   for s in streams], pad) for c in row])
    frames.append(grid(tiles, pad))
  out = np.stack(frames)
  cell_h, cell_w = tiles[0][0].shape[:2]
  return add_labels(out, cell_h, cell_w, pad, row_labels, col_labels)


def _wrap(draw, font, text: str, width: int) -> list[str]:
  """`text` broken at spaces into lines no wider than `width` pixels (long words stay whole)."""
  lines, line = [], ""
  for word in str(text).split():
    trial = f"{line} {word}".strip()
    if line and draw.textlength(trial, font=font) > width:
      lines.append(line)
      line = word
    else:
      line = trial
  return lines + ([line] if line else [])


def _text_cell(text: str, width: int, height: int) -> np.ndarray:
  """A white `(height, width, 3)` image with `text` wrapped and centred."""
  from PIL import Image, ImageDraw, ImageFont  # pillow: an install requirement.
  img = Image.new("RGB", (width, height), (255, 255, 255))
  draw = ImageDraw.Draw(img)
  font = ImageFont.load_default()
  lines = _wrap(draw, font, text, width - 4)
  line_h = 12
  y = max(0, (height - line_h * len(lines)) // 2)
  for line in lines:
    tw = draw.textlength(line, font=font)
    draw.text((max(0, (width - tw) // 2), y), line, fill=(0, 0, 0), font=font)
    y += line_h
  return np.asarray(img)


def add_labels(frames: np.ndarray, cell_h: int, cell_w: int, pad: int,
               row_labels: Sequence[str] | None = None,
               col_labels: Sequence[str] | None = None) -> np.ndarray:
  """A grid's `(T, H, W, 3)` frames (`grid` layout) with a label above each column
  and left of each row; long labels (e.g. class names) wrap onto several lines."""
  out = frames
  length = out.shape[0]
  if col_labels is not None:
    strip = np.full((16, out.shape[2], 3), 255, np.uint8)
    for j, text in enumerate(col_labels):
      x = pad + j * (cell_w + pad)
      if x + cell_w > out.shape[2]:
        break
      strip[:, x:x + cell_w] = _text_cell(text, cell_w, 16)
    out = np.concatenate([np.broadcast_to(strip, (length,) + strip.shape), out], axis=1)
  if row_labels is not None:
    width = 96 if any(len(str(t)) > 8 for t in row_labels) else 48
    top = out.shape[1] - (len(row_labels) * (cell_h + pad) + pad)
    strip = np.full((out.shape[1], width, 3), 255, np.uint8)
    for i, text in enumerate(row_labels):
      y = top + pad + i * (cell_h + pad)
      strip[y:y + cell_h] = _text_cell(text, width, cell_h)
    out = np.concatenate([np.broadcast_to(strip, (length,) + strip.shape), out], axis=2)
  return np.ascontiguousarray(out)


def save_figure(stem: str, cells: Sequence[Sequence[Mapping[str, np.ndarray]]],
                row_labels: Sequence[str] | None = None,
                col_labels: Sequence[str] | None = None,
                formats: Sequence[str] = ("png", "gif", "mp4"), encoding: str = "rgb",
                fps: float = DEFAULT_FPS, target_size: int = 96,
                meta: Mapping | None = None) -> dict[str, str]:
  """Writes `figure(...)` as `stem.<format>` plus its raw arrays `stem.npz`.

  The `.npz` holds `cell_<i>_<j>_<stream>` (the inputs, float), `row_labels`,
  `col_labels`, `encoding` and `meta` (JSON), enough to remake the figure
  with `load_figure_cells` without re-optimising.

  Returns:
    format -> path, including "npz".
  """
  frames = figure(cells, row_labels, col_labels, encoding, target_size)
  arrays = {f"cell_{i}_{j}_{s}": np.asarray(x) for i, row in enumerate(cells)
            for j, c in enumerate(row) for s, x in c.items()}
  arrays.update(row_labels=np.asarray(list(row_labels or []), dtype=str),
                col_labels=np.asarray(list(col_labels or []), dtype=str),
                encoding=np.asarray(encoding), meta=np.asarray(json.dumps(meta or {})))
  with files.atomic_path(stem + ".npz") as tmp:
    with open(tmp, "wb") as f:
      np.savez(f, **arrays)
  written = save_frames(stem, frames, formats, fps)
  written["npz"] = stem + ".npz"
  return written


def load_figure_cells(path: str) -> tuple[list[list[dict[str, np.ndarray]]], list[str],
                                         list[str]]:
  """Reads a `save_figure` `.npz` back: (cells, row_labels, col_labels)."""
  with files.load_npz(path) as f:
    cells: dict[int, dict[int, dict[str, np.ndarray]]] = {}
    for key in f.files:
      if key.startswith("cell_"):
        _, i, j, stream = key.split("_", 3)
        cells.setdefault(int(i), {}).setdefault(int(j), {})[stream] = f[key]
    rows = [[cells[i][j] for j in sorted(cells[i])] for i in sorted(cells)]
    return rows, [str(s) for s in f["row_labels"]], [str(s) for s in f["col_labels"]]


# --- checks and colour maths ---------------------------------------------------


def _check_flow(flow: np.ndarray) -> np.ndarray:
  flow = np.asarray(flow, np.float32)
  if flow.shape[-1] != 2:
    raise ValueError(f"flow must end in 2 channels (horizontal, vertical); got shape "
                     f"{flow.shape}")
  if not np.all(np.isfinite(flow)):
    raise ValueError("flow contains NaN or infinite values")
  return flow


def _check_frames(frames: np.ndarray) -> np.ndarray:
  frames = np.asarray(frames)
  if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
    raise ValueError(f"frames must be (T, H, W, 3) uint8; got {frames.shape} "
                     f"{frames.dtype}")
  return frames


def check_encoding(encoding: str) -> None:
  if encoding not in ENCODINGS:
    raise ValueError(f"unknown flow encoding {encoding!r}; valid: {', '.join(ENCODINGS)}")


def _hsv_to_rgb(h: np.ndarray, s: np.ndarray, v: np.ndarray) -> np.ndarray:
  """Vectorised HSV -> RGB in [0, 1] (h in [0, 1))."""
  h6 = h * 6.0
  i = np.floor(h6).astype(np.int32) % 6
  f = h6 - np.floor(h6)
  p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
  choices = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)]
  rgb = [np.choose(i, [c[k] for c in choices]) for k in range(3)]
  return np.stack(rgb, axis=-1)
