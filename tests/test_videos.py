"""Video folders: synthetic clips written to disk (MP4 and PNG frames) and read back
through the real reader; OpenCV flow agrees in direction with the known flow;
clip sampling, per-model preprocessing and the disk cache."""

import os

import imageio.v2 as imageio
import numpy as np
import pytest

pytest.importorskip("cv2", reason="needs OpenCV: pip install 'stviz_jax[data]'")

from stviz_jax.data import synthetic, videos  # pylint: disable=wrong-import-position
from stviz_jax.models.base import StreamSpec  # pylint: disable=wrong-import-position

SIZE, FLOW_FRAMES = 64, 4
CLASSES = {"right": 0.0, "up": 270.0, "down_left": 135.0}


@pytest.fixture(scope="module")
def root(tmp_path_factory):
  """root/<class>/clip.mp4 and root/<class>/frames/NNN.png of one moving textured disk."""
  root = tmp_path_factory.mktemp("videos")
  spec = synthetic.ClipSpec(frames=FLOW_FRAMES, size=SIZE, radius=(12.0, 14.0), clutter=0,
                            distractors=0, noise=0.0, speed_jitter=0.0,
                            direction_jitter=0.0, texture=0.5)
  truth = {}
  for name, direction in CLASSES.items():
    clip = synthetic.make_clip(synthetic.MotionClass("red", direction, 2.0), seed=1, spec=spec)
    frames = np.round(clip["video"] * 255).astype(np.uint8)
    os.makedirs(root / name / "frames")
    for i, f in enumerate(frames):
      imageio.imwrite(root / name / "frames" / f"{i:03d}.png", f)
    imageio.mimwrite(root / name / "clip.mp4", frames, fps=8, quality=10,
                     macro_block_size=16)
    truth[name] = (clip["velocity"], frames)
  return root, truth


def _streams(flow_range=(-5.0, 5.0)):
  return {"rgb": StreamSpec(1, SIZE, SIZE, 3, (-1.0, 1.0)),
          "flow": StreamSpec(FLOW_FRAMES, SIZE, SIZE, 2, flow_range)}


def _angle(u, v):
  return np.degrees(np.arctan2(v, u)) % 360


@pytest.mark.parametrize("method", ["tvl1", "farneback"])
def test_flow_direction_agrees_with_the_known_flow(root, tmp_path, method):
  root, truth = root
  ds = videos.VideoFolder(str(root), _streams(), flow=method, flow_bound=5.0,
                          cache_dir=str(tmp_path / "cache"))
  assert ds.class_names == tuple(sorted(CLASSES))
  assert len(ds) == 2 * len(CLASSES)  # an MP4 and a frame folder per class.
  inputs, labels = ds.batch(np.arange(len(ds)))
  for i in range(len(ds)):
    name = ds.class_names[labels[i]]
    velocity = truth[name][0]
    flow = inputs["flow"][i]  # flow_bound 5 onto (-5, 5): pixels per frame.
    magnitude = np.linalg.norm(flow, axis=-1)
    moving = flow[magnitude > 0.5 * magnitude.max()]
    u, v = moving.mean(0)
    error = abs((_angle(u, v) - _angle(*velocity) + 180) % 360 - 180)
    assert error < 10, (ds.describe(i), method, _angle(u, v), _angle(*velocity))
    assert 0.6 * 2.0 < np.hypot(u, v) < 1.3 * 2.0  # speed 2 px/frame, roughly.


def test_sampling_preprocessing_and_cache(root, tmp_path, monkeypatch):
  root, truth = root
  cache = tmp_path / "cache"
  flow_range = (-128.0, 127.0)  # the 8-bit JPEG flow encoding minus 128 (VGG two-stream).
  ds = videos.VideoFolder(str(root), _streams(flow_range), flow="farneback", flow_bound=20.0,
                          clips_per_video=1, cache_dir=str(cache))
  frame_clip = [i for i in range(len(ds)) if ds.describe(i)["video"].endswith("frames")][0]
  inputs, labels = ds.batch([frame_clip])
  raw = ds.raw_clip(frame_clip)
  name = ds.class_names[labels[0]]
  # RGB: the centre frame of the flow span (PNG frames are lossless), onto [-1, 1].
  centre = truth[name][1][FLOW_FRAMES // 2]
  np.testing.assert_array_equal(raw["rgb"][0], centre)
  np.testing.assert_allclose(inputs["rgb"][0, 0], centre / 255.0 * 2 - 1, atol=1e-6)
  # Flow: clip to +-20 px and map [-20, 20] linearly onto [-128, 127].
  np.testing.assert_allclose(inputs["flow"][0], -128 + (np.clip(raw["flow"], -20, 20) + 20)
                             * 255 / 40, rtol=1e-5, atol=1e-4)
  assert len(os.listdir(cache)) == len(ds)
  assert not any(f.endswith(".tmp") for f in os.listdir(cache))

  # A second dataset reads everything from the cache: no decoding, same values.
  def no_decoding(*args, **kwargs):
    raise AssertionError("decoded a cached video")

  monkeypatch.setattr(videos, "read_frames", no_decoding)
  again = videos.VideoFolder(str(root), _streams(flow_range), flow="farneback",
                             flow_bound=20.0, cache_dir=str(cache))
  np.testing.assert_array_equal(again.batch([frame_clip])[0]["flow"], inputs["flow"])
  assert again.fingerprint() == ds.fingerprint()


def test_clip_starts_and_split_file(root, tmp_path):
  root, _ = root
  np.testing.assert_array_equal(videos.clip_starts(20, 5, 3), [0, 8, 15])
  np.testing.assert_array_equal(videos.clip_starts(3, 5, 2), [0, 0])  # short: padded.
  split = tmp_path / "testlist.txt"
  split.write_text("up/clip.mp4\nright/frames\n")
  ds = videos.VideoFolder(str(root), {"rgb": StreamSpec(3, 32, 32, 3, (0.0, 255.0))},
                          clips_per_video=2, split_file=str(split),
                          cache_dir=str(tmp_path / "c"))
  assert len(ds) == 4 and [ds.label(i) for i in range(4)] == [1, 1, 2, 2]  # sorted folders.
  x, _ = ds.batch(np.arange(4))
  assert x["rgb"].shape == (4, 3, 32, 32, 3) and 0 <= x["rgb"].min() and x["rgb"].max() <= 255
  # Two clips of 3 consecutive frames from 5 frames: starts 0 and 2.
  assert [ds.describe(i)["frame"] for i in range(4)] == [0, 2, 0, 2]
  with pytest.raises(ValueError, match="no folder for class"):
    videos.VideoFolder(str(root), _streams(), classes=["jumping"])  # none exists.
  with pytest.raises(ValueError, match="unknown flow method"):
    videos.flow_method("lucas")


def test_statistics_over_a_video_folder_recognise_the_classes(tmp_path):
  """Known answer end to end: synthetic clips of 3 classes written as MP4, read back
  with TV-L1 flow, through `python -m stviz_jax.stats`'s run on the shipped
  synthetic model: class unit c fires most for the clips of class c."""
  import importlib.util  # pylint: disable=import-outside-toplevel
  from stviz_jax import stats  # pylint: disable=import-outside-toplevel
  classes = synthetic.grid_classes()
  shown = [0, 7, 10]  # red right, green up, blue left.
  root = tmp_path / "videos"
  for c in shown:
    for seed in range(2):
      clip = synthetic.make_clip(classes[c], seed=seed, spec=synthetic.ClipSpec(),
                                 classes=classes)
      d = root / classes[c].name.replace(" ", "_")
      os.makedirs(d, exist_ok=True)
      imageio.mimwrite(d / f"v{seed}.mp4", np.round(clip["video"] * 255).astype(np.uint8),
                       fps=8, quality=10, macro_block_size=16)
  path = os.path.join(os.path.dirname(__file__), "..", "configs", "synthetic_stats.py")
  spec = importlib.util.spec_from_file_location("synthetic_stats_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config("videos")
  config.dataset.root = str(root)
  config.dataset.classes = ",".join(c.name.replace(" ", "_") for c in classes)  # label order.
  config.stats.layers, config.stats.batch_size, config.stats.top_k = "logits", 4, 2
  config.stats.thumbnails = False
  out = tmp_path / "out"
  result = stats.run(config, str(out)).layers["logits"]
  np.testing.assert_array_equal(result["top_labels"][shown], np.repeat([shown], 2, 0).T)
  per_class = result["per_class_max"][shown][:, shown]
  assert (np.argmax(per_class, 1) == np.arange(3)).all()
  assert np.isnan(result["per_class_max"][:, 1]).all()  # no 'red down' videos.
  saved = np.load(out / "stats.npz")
  assert str(saved["logits/top_videos"][0, 0]).endswith(".mp4")
