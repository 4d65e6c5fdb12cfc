r"""Top-5 classes of a video clip, to check a model's weights before visualising.

Command:
  python -m stviz_jax.classify --model=i3d_kinetics400 --video=clip.mp4

`--video` is a GIF, MP4 (any format imageio/ffmpeg reads) or `.npy` array
`(T, H, W, 3)`: uint8 in [0, 255], or float in [0, 255] or already in [-1, 1]
(a float array within [-1, 1] is taken as preprocessed). Preprocessing is
DeepMind's for I3D: the shorter side resized to 256 (bilinear), the centre
224 x 224 crop, RGB scaled to [-1, 1]; all frames are used (at most
`--max_frames`). The model is built for the clip's length.
"""

from __future__ import annotations

import os
from typing import Sequence

from absl import app, flags
import jax
import jax.numpy as jnp
import numpy as np

from stviz_jax import files, models

RESIZE_SHORT_SIDE = 256
CROP = 224


def read_video(path: str) -> np.ndarray:
  """`(T, H, W, 3)` frames of a GIF/MP4/`.npy` file (uint8, or float as stored)."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f"--video {path}: no such file")
  if path.endswith(".npy"):
    frames = files.load_npz(path)
  else:
    import imageio.v3 as iio
    try:
      frames = np.asarray(iio.imread(path, index=None))
    except Exception as e:  # imageio raises many types for unreadable files.
      raise ValueError(f"--video {path}: cannot read as a video ({e})") from e
  if frames.ndim == 3:  # a single frame or a grey clip
    frames = frames[..., None] if frames.shape[-1] not in (3, 4) else frames[None]
  if frames.ndim != 4:
    raise ValueError(f"--video {path}: expected (T, H, W, C) frames, got {frames.shape}")
  if frames.shape[-1] == 4:  # RGBA (GIF)
    frames = frames[..., :3]
  if frames.shape[-1] == 1:
    frames = np.repeat(frames, 3, axis=-1)
  if frames.shape[-1] != 3:
    raise ValueError(f"--video {path}: expected 3 colour channels, got {frames.shape[-1]}")
  if not frames.size:
    raise ValueError(f"--video {path}: the clip is empty (shape {frames.shape})")
  if not np.issubdtype(frames.dtype, np.number) or np.issubdtype(frames.dtype, np.complexfloating):
    raise ValueError(f"--video {path}: expected real-valued frames, got dtype {frames.dtype}")
  bad = int(frames.size - np.isfinite(frames).sum())
  if bad:
    raise ValueError(f"--video {path}: {bad} of {frames.size} values are NaN or infinite; "
                     "a clip must hold finite pixel values")
  return frames


def preprocess(frames: np.ndarray, crop: int = CROP,
               short_side: int = RESIZE_SHORT_SIDE) -> np.ndarray:
  """DeepMind I3D RGB preprocessing: resize shorter side, centre crop, scale to [-1, 1].

  Args:
    frames: `(T, H, W, 3)` uint8, or float in [0, 255] or in [-1, 1].
    crop: output side (224).
    short_side: the shorter side after bilinear resizing (256).

  Returns:
    `(T, crop, crop, 3)` float32 in [-1, 1].
  """
  x = np.asarray(frames)
  if np.issubdtype(x.dtype, np.integer):
    x = x.astype(np.float32) / 255.0 * 2.0 - 1.0
  else:
    x = x.astype(np.float32)
    if x.min() < -1.0 or x.max() > 1.0:  # float in [0, 255]
      x = x / 255.0 * 2.0 - 1.0
  t, h, w, c = x.shape
  scale = short_side / min(h, w)
  nh, nw = max(crop, round(h * scale)), max(crop, round(w * scale))
  x = np.asarray(jax.image.resize(jnp.asarray(x), (t, nh, nw, c), "bilinear"))
  top, left = (nh - crop) // 2, (nw - crop) // 2
  return np.clip(x[:, top:top + crop, left:left + crop], -1.0, 1.0)


def top_k(model: models.Model, clip: np.ndarray, k: int = 5
          ) -> list[tuple[str, float, float]]:
  """`[(class name, probability, logit)]` of the k best classes of one clip."""
  logits = np.asarray(model({"rgb": jnp.asarray(clip)[None]})[0], np.float64)
  if not np.isfinite(logits).all():
    raise FloatingPointError(f"model {model.name!r} gave non-finite logits for this clip "
                             "(NaN or infinite weights?); no ranking")
  probs = np.exp(logits - logits.max())
  probs /= probs.sum()
  order = np.argsort(-logits)[:k]
  labels = model.labels or tuple(str(i) for i in range(len(logits)))
  return [(labels[i], float(probs[i]), float(logits[i])) for i in order]


def classify(model_name: str, video: str, k: int = 5, max_frames: int = 0,
             weights: str = "") -> list[tuple[str, float, float]]:
  """Reads, preprocesses and classifies `video` with model `model_name`."""
  frames = read_video(video)
  if max_frames:
    frames = frames[:max_frames]
  clip = preprocess(frames)
  overrides = dict(frames=clip.shape[0], size=CROP)
  if weights:
    overrides["weights"] = weights
  model = models.load(model_name, **overrides)
  if set(model.spec.streams) != {"rgb"}:
    raise ValueError(f"model {model_name!r} has streams {sorted(model.spec.streams)}; "
                     "classify takes RGB-only models")
  return top_k(model, clip, k)


_MODEL = flags.DEFINE_string("model", "i3d_kinetics400", "Registered model name.")
_VIDEO = flags.DEFINE_string("video", None, "GIF/MP4/.npy clip (T, H, W, 3).")
_TOP = flags.DEFINE_integer("top_k", 5, "How many classes to print.")
_MAX_FRAMES = flags.DEFINE_integer("max_frames", 0, "Use at most this many frames (0 = all).")
_WEIGHTS = flags.DEFINE_string("weights", "", "Converted weights directory (optional).")


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if not _VIDEO.value:
    raise app.UsageError("--video is required")
  # Bad input is one line, no traceback (stviz_jax.cli).
  ranked = classify(_MODEL.value, _VIDEO.value, _TOP.value, _MAX_FRAMES.value,
                    _WEIGHTS.value)
  print(f"{'rank':>4}  {'prob':>7}  {'logit':>8}  class")
  for i, (name, p, logit) in enumerate(ranked, 1):
    print(f"{i:>4}  {p:7.4f}  {logit:8.3f}  {name}")


if __name__ == "__main__":
  from stviz_jax import cli  # pylint: disable=import-outside-toplevel
  cli.run_absl(main)
