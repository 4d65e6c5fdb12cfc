"""A folder of videos, one subfolder per class (UCF101 / HMDB51 layout), as clips.

  root/
    ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi     a video file (any format ffmpeg reads)
    Archery/v_Archery_g01_c01/00001.jpg ...         or a folder of frames (sorted by name)

Class k is the k-th class folder in sorted order (or the order of `classes`);
an optional split file (UCF101's `testlist01.txt`: lines `Class/video.avi
[label]`) restricts the videos. Each video gives `clips_per_video` clips at
evenly spaced starts, so clip i is video i // clips_per_video, and a dataset
is a deterministic function of its files and settings (what resuming
`stviz_jax.stats` relies on).

A clip for a model with streams `rgb` (T_r frames) and `flow` (T_f flow
frames) spans L = T_f + 1 consecutive video frames (T_r when there is no flow
stream). Flow frame k is the forward flow from frame k to k + 1, channels
(horizontal, vertical) in pixels per frame at the model's resolution (v
positive downward), computed by OpenCV: TV-L1 (Zach et al. 2007, as the
two-stream papers) from `opencv-contrib-python-headless` when available,
Farneback otherwise. RGB frame i is video frame floor((i + 1/2) T_f / T_r),
the centre of its share of the flow (the centre frame when T_r = 1).

Frames are resized so the short side matches the model, then centre-cropped.
Decoded frames and flow are cached on disk per video (atomic `.npz`, keyed by
the file's path, size, mtime and every setting that changes them), so a second
pass decodes nothing. Preprocessing per model happens when a batch is read:

  rgb:  x = (pixel - mean) * scale, by default the affine map of [0, 255] onto
        the stream's `value_range` (overridable per channel);
  flow: f clipped to [-B, B] pixels (B = `flow_bound`, 20 in the two-stream
        and I3D releases) and mapped linearly onto `value_range` (so a model
        taking the 8-bit JPEG flow encoding, minus 128, gets exactly that).
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Mapping, Sequence

from absl import logging
import numpy as np

from stviz_jax import files
from stviz_jax.models.base import StreamSpec

VIDEO_EXTENSIONS = (".avi", ".mp4", ".mkv", ".webm", ".mov", ".mpg", ".mpeg", ".m4v")
FRAME_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")
CACHE_VERSION = 1


# --- optical flow ------------------------------------------------------------------


def flow_method(name: str = "auto") -> str:
  """'tvl1' when OpenCV has the contrib TV-L1 solver, else 'farneback' ('auto')."""
  import cv2  # pylint: disable=import-outside-toplevel
  has_tvl1 = hasattr(cv2, "optflow") and hasattr(cv2.optflow, "createOptFlow_DualTVL1")
  if name == "auto":
    return "tvl1" if has_tvl1 else "farneback"
  if name == "tvl1" and not has_tvl1:
    raise ValueError("flow method 'tvl1' needs opencv-contrib-python-headless "
                     "(pip install 'stviz_jax[data]'); 'farneback' works with plain OpenCV")
  if name not in ("tvl1", "farneback"):
    raise ValueError(f"unknown flow method {name!r}; valid: auto, tvl1, farneback")
  return name


def optical_flow(frames: np.ndarray, method: str = "auto") -> np.ndarray:
  """Forward optical flow of consecutive frames.

  Args:
    frames: `(L, H, W, 3)` uint8 RGB.
    method: 'tvl1', 'farneback' or 'auto'.

  Returns:
    `(L - 1, H, W, 2)` float32: flow k maps frame k to k + 1, channels (u, v)
    in pixels per frame, u rightward, v downward.
  """
  import cv2  # pylint: disable=import-outside-toplevel
  method = flow_method(method)
  frames = np.asarray(frames)
  if frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[0] < 2:
    raise ValueError(f"optical_flow needs (L >= 2, H, W, 3) frames, got {frames.shape}")
  grey = [cv2.cvtColor(np.ascontiguousarray(f, np.uint8), cv2.COLOR_RGB2GRAY) for f in frames]
  if method == "tvl1":
    solver = cv2.optflow.createOptFlow_DualTVL1()
    flows = [solver.calc(a, b, None) for a, b in zip(grey[:-1], grey[1:])]
  else:
    flows = [cv2.calcOpticalFlowFarneback(a, b, None, pyr_scale=0.5, levels=3, winsize=15,
                                          iterations=3, poly_n=5, poly_sigma=1.2, flags=0)
             for a, b in zip(grey[:-1], grey[1:])]
  return np.stack(flows).astype(np.float32)


# --- decoding ------------------------------------------------------------------------


def read_frames(path: str, height: int, width: int) -> np.ndarray:
  """All frames of a video file or frame folder, resized and centre-cropped: `(F, H, W, 3)` uint8."""
  import cv2  # pylint: disable=import-outside-toplevel
  import imageio.v2 as imageio  # pylint: disable=import-outside-toplevel

  def fit(frame):
    frame = np.asarray(frame)
    if frame.ndim == 2:
      frame = np.repeat(frame[..., None], 3, -1)
    frame = frame[..., :3]
    h, w = frame.shape[:2]
    s = max(height / h, width / w)
    nh, nw = max(height, int(round(h * s))), max(width, int(round(w * s)))
    interp = cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR
    frame = cv2.resize(np.ascontiguousarray(frame, np.uint8), (nw, nh), interpolation=interp)
    y, x = (nh - height) // 2, (nw - width) // 2
    return frame[y:y + height, x:x + width]

  try:
    if os.path.isdir(path):
      names = sorted(f for f in os.listdir(path) if f.lower().endswith(FRAME_EXTENSIONS))
      frames = [fit(imageio.imread(os.path.join(path, f))) for f in names]
    else:
      with imageio.get_reader(path, "ffmpeg") as reader:
        frames = [fit(f) for f in reader]
  except Exception as e:  # pylint: disable=broad-except
    raise IOError(f"{path}: cannot decode video ({type(e).__name__}: {e})") from e
  if not frames:
    raise IOError(f"{path}: no frames")
  return np.stack(frames)


def clip_starts(num_frames: int, span: int, clips: int) -> np.ndarray:
  """`clips` evenly spaced start frames of `span`-frame windows in a `num_frames` video."""
  last = max(num_frames - span, 0)
  return np.round(np.linspace(0, last, clips)).astype(np.int64) if clips > 1 else np.asarray([last // 2])


# --- the dataset ---------------------------------------------------------------------


class VideoFolder:
  """Clips of a class-per-folder video collection, preprocessed for one model.

  Args:
    root: the folder holding one subfolder per class.
    streams: the model's `StreamSpec`s (`model.spec.streams`); 'rgb' and/or
      'flow' (2 channels).
    clips_per_video: clips per video, at evenly spaced starts.
    classes: class folder names in label order (default: sorted subfolders).
    split_file: optional list of `Class/video` lines restricting the videos.
    flow: 'auto' (TV-L1 when available), 'tvl1' or 'farneback'.
    flow_bound: B, flow clipped to [-B, B] pixels/frame and mapped onto the
      flow stream's value range.
    rgb_mean, rgb_scale: RGB preprocessing x = (pixel - mean) * scale; default
      from the rgb stream's value range.
    cache_dir: where decoded frames and flow are kept ('' = `root/.stviz_cache`).
  """

  def __init__(self, root: str, streams: Mapping[str, StreamSpec], *,
               clips_per_video: int = 1, classes: Sequence[str] = (),
               split_file: str = "", flow: str = "auto", flow_bound: float = 20.0,
               rgb_mean: Sequence[float] = (), rgb_scale: float = 0.0,
               cache_dir: str = ""):
    if not os.path.isdir(root):
      raise FileNotFoundError(f"video folder {root!r} does not exist")
    unknown = set(streams) - {"rgb", "flow"}
    if unknown or not streams:
      raise ValueError(f"VideoFolder makes streams 'rgb' and 'flow'; the model has "
                       f"{sorted(streams)}")
    if "flow" in streams and streams["flow"].channels != 2:
      raise ValueError(f"flow stream has {streams['flow'].channels} channels, expected 2")
    if clips_per_video < 1 or flow_bound <= 0:
      raise ValueError("clips_per_video must be >= 1 and flow_bound > 0")
    self.root, self.streams = root, dict(streams)
    self.clips_per_video = int(clips_per_video)
    self.flow = flow_method(flow) if "flow" in streams else "none"
    self.flow_bound = float(flow_bound)
    self.cache_dir = cache_dir or os.path.join(root, ".stviz_cache")
    self._starts: dict[str, np.ndarray] = {}
    cache = os.path.abspath(self.cache_dir)
    folders = sorted(d for d in os.listdir(root)
                     if os.path.isdir(os.path.join(root, d)) and not d.startswith(".")
                     and os.path.abspath(os.path.join(root, d)) != cache)
    self.class_names = tuple(classes) or tuple(folders)
    missing = [c for c in self.class_names if c not in folders]
    if len(missing) == len(self.class_names):
      raise ValueError(f"{root}: no folder for class(es) {missing}; folders: {folders}")
    if missing:  # e.g. the model's full label list over a subset of classes.
      logging.warning("%s: no folder for class(es) %s; they get no clips", root, missing)
    wanted = _read_split(split_file) if split_file else None
    self.videos: list[tuple[str, int]] = []
    for label, name in enumerate(self.class_names):
      d = os.path.join(root, name)
      if name in missing:
        continue
      for entry in sorted(os.listdir(d)):
        p = os.path.join(d, entry)
        is_video = os.path.isfile(p) and entry.lower().endswith(VIDEO_EXTENSIONS)
        is_frames = os.path.isdir(p) and any(
            f.lower().endswith(FRAME_EXTENSIONS) for f in os.listdir(p))
        if (is_video or is_frames) and (wanted is None or f"{name}/{entry}" in wanted):
          self.videos.append((p, label))
    if not self.videos:
      raise ValueError(f"{root}: no videos ({', '.join(VIDEO_EXTENSIONS)}) or frame "
                       "folders in the class folders" + (f" listed in {split_file}" if wanted else ""))
    self._size = _stream_size(self.streams)
    self.rgb_frames = self.streams["rgb"].frames if "rgb" in self.streams else 0
    self.flow_frames = self.streams["flow"].frames if "flow" in self.streams else 0
    self.span = self.flow_frames + 1 if self.flow_frames else self.rgb_frames
    if "rgb" in self.streams:
      lo, hi = self.streams["rgb"].value_range
      self.rgb_scale = float(rgb_scale) or (hi - lo) / 255.0
      self.rgb_mean = (np.asarray(rgb_mean, np.float32) if len(rgb_mean)
                       else np.full(3, -lo / self.rgb_scale, np.float32))
      if self.rgb_mean.shape != (3,):
        raise ValueError(f"rgb_mean must have 3 values (R, G, B), got {list(rgb_mean)}")

  @classmethod
  def from_config(cls, d, streams: Mapping[str, StreamSpec]) -> "VideoFolder":
    """From `config.dataset` (fields as the constructor's, `root` required)."""
    return cls(d.root, streams, clips_per_video=d.clips_per_video,
               classes=[c for c in str(d.classes).split(",") if c.strip()],
               split_file=d.split_file, flow=d.flow, flow_bound=d.flow_bound,
               rgb_mean=tuple(d.rgb_mean), rgb_scale=d.rgb_scale, cache_dir=d.cache_dir)

  def __len__(self) -> int:
    return len(self.videos) * self.clips_per_video

  def label(self, index: int) -> int:
    return self.videos[index // self.clips_per_video][1]

  def describe(self, index: int) -> dict:
    """`{"video": path, "frame": first frame of the clip}` (decodes via the cache)."""
    path, _ = self.videos[index // self.clips_per_video]
    if path not in self._starts:  # asked once per top clip: keep it off the disk.
      self._starts[path] = self._load(path)["starts"]
    return {"video": path, "frame": int(self._starts[path][index % self.clips_per_video])}

  def fingerprint(self) -> str:
    h = hashlib.sha1(json.dumps([self._key_settings(), self.class_names,
                                 [(os.path.relpath(p, self.root), l) for p, l in self.videos],
                                 self.flow_bound,
                                 getattr(self, "rgb_mean", np.zeros(0)).tolist(),
                                 getattr(self, "rgb_scale", 0.0)]).encode())
    return f"videos:{len(self)}:{h.hexdigest()[:16]}"

  # --- reading -------------------------------------------------------------------

  def raw_clip(self, index: int) -> dict[str, np.ndarray]:
    """Clip `index` before preprocessing: `rgb` uint8 `(T_r, H, W, 3)`, `flow` pixels `(T_f, H, W, 2)`."""
    if not 0 <= index < len(self):
      raise IndexError(f"clip {index} out of range 0..{len(self) - 1}")
    path, _ = self.videos[index // self.clips_per_video]
    data = self._load(path)
    j = index % self.clips_per_video
    out = {}
    if "rgb" in self.streams:
      out["rgb"] = data["rgb"][j]
    if "flow" in self.streams:
      out["flow"] = data["flow"][j].astype(np.float32)
    return out

  def batch(self, indices):
    indices = np.asarray(indices, np.int64).ravel()
    raws = [self.raw_clip(int(i)) for i in indices]
    inputs = {}
    if "rgb" in self.streams:
      rgb = np.stack([r["rgb"] for r in raws]).astype(np.float32)
      inputs["rgb"] = (rgb - self.rgb_mean) * self.rgb_scale
    if "flow" in self.streams:
      lo, hi = self.streams["flow"].value_range
      b = self.flow_bound
      flow = np.clip(np.stack([r["flow"] for r in raws]), -b, b)
      inputs["flow"] = (lo + (flow + b) * (hi - lo) / (2 * b)).astype(np.float32)
    labels = np.asarray([self.label(int(i)) for i in indices], np.int32)
    return inputs, labels

  # --- the cache -------------------------------------------------------------------

  def _key_settings(self) -> dict:
    return {"version": CACHE_VERSION, "size": self._size, "rgb_frames": self.rgb_frames,
            "flow_frames": self.flow_frames, "clips": self.clips_per_video, "flow": self.flow}

  def _cache_path(self, path: str) -> str:
    st = os.stat(path)
    key = json.dumps([os.path.abspath(path), st.st_size, st.st_mtime_ns, self._key_settings()])
    name = os.path.basename(path.rstrip("/")) + "_" + hashlib.sha1(key.encode()).hexdigest()[:16]
    return os.path.join(self.cache_dir, name + ".npz")

  def _load(self, path: str) -> dict[str, np.ndarray]:
    cache = self._cache_path(path)
    if os.path.exists(cache):
      try:
        with files.load_npz(cache) as f:
          return {k: f[k] for k in f.files}
      except (OSError, ValueError) as e:  # a damaged entry is recomputed, not fatal.
        logging.warning("%s: unreadable cache entry (%s); recomputing", cache, e)
    data = self._compute(path)
    files.savez(cache, data)
    return data

  def _compute(self, path: str) -> dict[str, np.ndarray]:
    h, w = self._size
    frames = read_frames(path, h, w)
    if frames.shape[0] < self.span:  # too short: hold the last frame.
      frames = np.concatenate([frames, np.repeat(frames[-1:], self.span - frames.shape[0], 0)])
    starts = clip_starts(frames.shape[0], self.span, self.clips_per_video)
    out = {"starts": starts, "num_frames": np.int64(frames.shape[0])}
    if self.rgb_frames:
      if self.flow_frames:
        offs = np.floor((np.arange(self.rgb_frames) + 0.5) * self.flow_frames
                        / self.rgb_frames).astype(np.int64)
      else:
        offs = np.arange(self.rgb_frames)
      out["rgb"] = np.stack([frames[s + offs] for s in starts])
    if self.flow_frames:
      out["flow"] = np.stack([optical_flow(frames[s:s + self.span], self.flow)
                              for s in starts]).astype(np.float16)
    return out


def _stream_size(streams: Mapping[str, StreamSpec]) -> tuple[int, int]:
  sizes = {(s.height, s.width) for s in streams.values()}
  if len(sizes) != 1:
    raise ValueError(f"streams have different frame sizes {sorted(sizes)}; VideoFolder "
                     "needs one")
  return sizes.pop()


def _read_split(path: str) -> set[str]:
  if not os.path.isfile(path):
    raise FileNotFoundError(f"split file {path!r} does not exist")
  with open(path) as f:
    return {line.split()[0].strip().replace("\\", "/") for line in f if line.strip()}
