"""Flow colouring known answers, media files and the paper-layout figure."""

import os

import imageio.v3 as iio
import imageio_ffmpeg
from matplotlib import colors as mcolors
import numpy as np
from PIL import Image
import pytest

from stviz_jax import render


def _flow(t, h, w, u, v):
  """(T, H, W, 2) flow from callables u(t, y, x), v(t, y, x)."""
  tt, yy, xx = np.meshgrid(np.arange(t), np.arange(h), np.arange(w), indexing="ij")
  return np.stack([u(tt, yy, xx), v(tt, yy, xx)], axis=-1).astype(np.float32)


def _minmax(x):
  """Independent reference: 255 (x - min) / (max - min), rounded."""
  x = np.asarray(x, np.float64)
  return np.round((x - x.min()) / (x.max() - x.min()) * 255)


def test_rightward_flow_is_red_and_blue_only():
  # Speed 1, 2, 3, 4 px/frame to the right in frames 0..3; no vertical flow.
  flow = _flow(4, 3, 5, lambda t, y, x: t + 1.0, lambda t, y, x: 0.0 * t)
  rgb = render.flow_to_rgb(flow)
  assert rgb.shape == (4, 3, 5, 3) and rgb.dtype == np.uint8
  np.testing.assert_array_equal(rgb[..., 0][:, 0, 0], [0, 85, 170, 255])
  np.testing.assert_array_equal(rgb[..., 1], 0)                 # constant v: no contrast
  np.testing.assert_array_equal(rgb[..., 2], rgb[..., 0])       # |f| = u here
  for t in range(4):                                            # uniform within a frame
    assert len(np.unique(rgb[t, ..., 0])) == 1


def test_downward_flow_is_green_and_blue_only():
  flow = _flow(4, 3, 5, lambda t, y, x: 0.0 * t, lambda t, y, x: t + 1.0)
  rgb = render.flow_to_rgb(flow)
  np.testing.assert_array_equal(rgb[..., 0], 0)
  np.testing.assert_array_equal(rgb[..., 1][:, 0, 0], [0, 85, 170, 255])
  np.testing.assert_array_equal(rgb[..., 2], rgb[..., 1])


def test_rightward_and_leftward_separate_in_red():
  # Frame 0 moves left (u = -2), frame 1 right (u = +2): red 0 then 255, same blue.
  flow = _flow(2, 2, 2, lambda t, y, x: 4.0 * t - 2.0, lambda t, y, x: 0.0 * t)
  rgb = render.flow_to_rgb(flow)
  np.testing.assert_array_equal(rgb[0, ..., 0], 0)
  np.testing.assert_array_equal(rgb[1, ..., 0], 255)
  np.testing.assert_array_equal(rgb[..., 2], 0)  # |f| = 2 everywhere: no contrast


def test_rotation_field_maps_rows_to_red_columns_to_green_radius_to_blue():
  # Rotation about the centre (2, 2): u = -(y - 2), v = x - 2.
  flow = _flow(1, 5, 5, lambda t, y, x: -(y - 2.0), lambda t, y, x: x - 2.0)
  rgb = render.flow_to_rgb(flow)[0].astype(np.float64)
  yy, xx = np.mgrid[0:5, 0:5]
  np.testing.assert_array_equal(rgb[..., 0], _minmax(-(yy - 2.0)))
  np.testing.assert_array_equal(rgb[..., 1], _minmax(xx - 2.0))
  np.testing.assert_array_equal(rgb[..., 2], _minmax(np.hypot(yy - 2.0, xx - 2.0)))
  assert rgb[0, 2, 0] == 255 and rgb[4, 2, 0] == 0      # top moves right, bottom left
  assert rgb[2, 0, 1] == 0 and rgb[2, 4, 1] == 255      # left moves up, right down
  assert rgb[2, 2, 2] == 0 and rgb[0, 0, 2] == 255      # still centre, fastest corners


def test_min_max_is_over_the_sequence_not_per_frame():
  # The same rotation at speed s and 2 s: frame 0's brightest blue is half of frame 1's.
  base = _flow(1, 5, 5, lambda t, y, x: -(y - 2.0), lambda t, y, x: x - 2.0)
  rgb = render.flow_to_rgb(np.concatenate([base, 2 * base]))
  assert rgb[0, ..., 2].max() == 128 and rgb[1, ..., 2].max() == 255
  # Per-frame scaling would have made both frames identical.
  assert not np.array_equal(rgb[0], rgb[1])
  # The reference: one min-max per channel over everything.
  ref = _minmax(np.concatenate([base, 2 * base])[..., 0])
  np.testing.assert_array_equal(rgb[..., 0], ref)


def test_hsv_known_directions():
  dirs = np.array([[1, 0], [0, 1], [-1, 0], [0, -1], [0.5, 0], [0, 0]], np.float32)
  out = render.flow_to_hsv(dirs.reshape(1, 1, 6, 2))[0, 0]
  np.testing.assert_array_equal(out, [
      [255, 0, 0],      # right: red (hue 0)
      [128, 255, 0],    # down: chartreuse (hue 1/4)
      [0, 255, 255],    # left: cyan (hue 1/2)
      [128, 0, 255],    # up: violet (hue 3/4)
      [128, 0, 0],      # right at half the maximum speed: half brightness
      [0, 0, 0],        # no flow: black
  ])


def test_hsv_matches_matplotlib_reference():
  rng = np.random.default_rng(0)
  flow = rng.normal(size=(3, 6, 7, 2)).astype(np.float32)
  mag = np.hypot(flow[..., 0], flow[..., 1])
  hsv = np.stack([np.mod(np.arctan2(flow[..., 1], flow[..., 0]), 2 * np.pi) / (2 * np.pi),
                  np.ones_like(mag), mag / mag.max()], axis=-1)
  ref = np.round(mcolors.hsv_to_rgb(hsv) * 255)
  np.testing.assert_allclose(render.flow_to_hsv(flow), ref, atol=1)


def test_flow_legend():
  key = render.flow_legend(65, "hsv")
  assert key.shape == (65, 65, 3)
  np.testing.assert_array_equal(key[32, 32], [0, 0, 0])        # centre: no flow
  np.testing.assert_array_equal(key[32, 64], [255, 0, 0])      # right rim: red
  np.testing.assert_array_equal(key[64, 32], [128, 255, 0])    # bottom rim: downward
  np.testing.assert_array_equal(key[0, 0], [255, 255, 255])    # outside the disc
  rgb_key = render.flow_legend(65, "rgb")
  np.testing.assert_array_equal(rgb_key[32, 64], [255, 128, 255])  # u = 1, v = 0, |f| = 1
  np.testing.assert_array_equal(rgb_key[32, 32], [128, 128, 0])


def test_stream_frames_and_bad_input():
  rgb = np.linspace(-1, 1, 2 * 2 * 2 * 3).reshape(2, 2, 2, 3)
  out = render.stream_frames("rgb", rgb)
  assert out[0, 0, 0, 0] == 0 and out[-1, -1, -1, -1] == 255   # min-max over the clip
  flow = np.zeros((2, 4, 4, 2))
  flow[1, ..., 0] = 1
  np.testing.assert_array_equal(render.stream_frames("motion", flow)[1, ..., 0], 255)
  with pytest.raises(ValueError, match="2 channels"):
    render.flow_to_rgb(np.zeros((1, 2, 2, 3)))
  with pytest.raises(ValueError, match="valid: rgb, hsv"):
    render.stream_frames("flow", flow, encoding="middlebury")
  with pytest.raises(ValueError, match=r"\(T, H, W, C\)"):
    render.stream_frames("flow", flow[0])


def _smooth_clip(t=6, h=30, w=34):
  tt, yy, xx = np.meshgrid(np.arange(t), np.arange(h), np.arange(w), indexing="ij")
  return np.stack([(xx * 7 + tt * 20) % 256, yy * 8, np.full_like(xx, 128)],
                  axis=-1).astype(np.uint8)


def test_gif_loops_with_all_frames(tmp_path):
  frames = _smooth_clip()
  render.save_gif(str(tmp_path / "a.gif"), frames, fps=10)
  with Image.open(tmp_path / "a.gif") as im:
    assert im.info.get("loop") == 0                 # loop forever
    assert im.n_frames == len(frames)
    assert im.info.get("duration") == 100
  back = iio.imread(tmp_path / "a.gif", index=None)[..., :3]
  assert np.abs(back.astype(int) - frames).mean() < 8  # 256-colour palette


@pytest.mark.parametrize("ext", ["mp4", "webm"])
def test_video_round_trip(tmp_path, ext):
  frames = _smooth_clip(h=31, w=33)                 # odd sizes are padded to even
  path = str(tmp_path / f"a.{ext}")
  render.save_video(path, frames, fps=8)
  reader = imageio_ffmpeg.read_frames(path)
  meta = reader.__next__()
  assert tuple(meta["size"]) == (34, 32)
  back = np.stack([np.frombuffer(f, np.uint8).reshape(32, 34, 3) for f in reader])
  assert len(back) == len(frames)
  err = np.abs(back[:, :31, :33].astype(int) - frames).mean()
  assert err < 6, err
  assert not [f for f in os.listdir(tmp_path) if f.startswith(".tmp_")]  # atomic


def test_save_stream_media_formats(tmp_path):
  flow = np.random.default_rng(0).normal(size=(4, 16, 16, 2))
  files = render.save_stream_media(str(tmp_path / "u_flow"), "flow", flow)
  assert sorted(files) == ["gif", "mp4", "png", "webm"]
  png = iio.imread(files["png"])
  assert png.shape == (128, 128, 3)                 # upscaled x8 to about 128
  expected = render.upscale(render.flow_to_rgb(flow), 8)[2]   # the middle frame
  np.testing.assert_array_equal(png, expected)
  still = render.save_stream_media(str(tmp_path / "u_rgb"), "rgb",
                                   np.zeros((1, 16, 16, 3)))
  assert sorted(still) == ["png"]                   # no video of a single image
  with pytest.raises(ValueError, match="unknown media format"):
    render.save_frames(str(tmp_path / "x"), np.zeros((2, 4, 4, 3), np.uint8), ["avi"])


def _marked_cell(i, j, t=1, channels=3, size=32):
  """An input whose only dark pixel sits at (i, j): identifies its cell."""
  x = np.ones((t, size, size, channels))
  x[:, i, j] = -1
  return x


def test_figure_layout_rows_units_columns_settings_appearance_beside_motion():
  rows, cols = 2, 3
  cells = [[{"rgb": _marked_cell(i, j), "flow": _marked_cell(i, j + 10, t=4, channels=2)}
            for j in range(cols)] for i in range(rows)]
  frames = render.figure(cells, target_size=96, pad=2)
  cell_h, rgb_w = 96, 96                            # 32 px x 3
  cell_w = rgb_w + 2 + 96                           # rgb | 2 px gap | flow
  assert frames.shape == (4, rows * (cell_h + 2) + 2, cols * (cell_w + 2) + 2, 3)
  for i in range(rows):
    for j in range(cols):
      y0, x0 = 2 + i * (cell_h + 2), 2 + j * (cell_w + 2)
      rgb = frames[0, y0:y0 + cell_h, x0:x0 + rgb_w]
      dark = np.argwhere(rgb.sum(-1) == 0)
      assert dark.min(0).tolist() == [3 * i, 3 * j] and len(dark) == 9
      flow = frames[0, y0:y0 + cell_h, x0 + rgb_w + 2:x0 + cell_w]
      dark = np.argwhere(flow[..., 0] == 0)
      assert dark.min(0).tolist() == [3 * i, 3 * (j + 10)]
  # The still appearance image repeats in every frame.
  np.testing.assert_array_equal(frames[0, 2:98, 2:98], frames[3, 2:98, 2:98])
  labelled = render.figure(cells, ["unit 0", "unit 1"], ["g=0", "g=1", "g=10"])
  assert labelled.shape[1] > frames.shape[1] and labelled.shape[2] > frames.shape[2]


def test_figure_shrinks_large_inputs():
  x = np.random.default_rng(0).normal(size=(1, 224, 224, 3))
  frames = render.figure([[{"rgb": x}]], target_size=96)
  assert frames.shape[1:3] == (112 + 4, 112 + 4)    # 2x2 block mean, 2 px border


def test_save_figure_keeps_raw_arrays(tmp_path):
  rng = np.random.default_rng(1)
  cells = [[{"rgb": rng.normal(size=(1, 8, 8, 3)), "flow": rng.normal(size=(3, 8, 8, 2))}
            for _ in range(2)] for _ in range(3)]
  files = render.save_figure(str(tmp_path / "fig"), cells, ["u0", "u1", "u2"],
                             ["gamma=0", "gamma=10"], meta={"layer": "fusion"})
  assert sorted(files) == ["gif", "mp4", "npz", "png"]
  back, row_labels, col_labels = render.load_figure_cells(files["npz"])
  assert row_labels == ["u0", "u1", "u2"] and col_labels == ["gamma=0", "gamma=10"]
  for i in range(3):
    for j in range(2):
      for s in ("rgb", "flow"):
        np.testing.assert_array_equal(back[i][j][s], cells[i][j][s])
  # Remade from the raw arrays alone, the figure is the same picture.
  again = render.figure(back, row_labels, col_labels)
  np.testing.assert_array_equal(iio.imread(files["png"]), again[len(again) // 2])


def test_labelled_grid_has_row_and_column_labels():
  tile = np.full((40, 60, 3), 128, np.uint8)
  grid = render.grid([[tile, tile], [tile, tile]])
  labelled = render.add_labels(grid[None], 40, 60, 2, ["playing chess (#224)", "unit 3"],
                               ["kappa=1 gamma=0", "kappa=1 gamma=10"])[0]
  assert labelled.shape[0] == grid.shape[0] + 16  # a strip of column labels on top,
  assert labelled.shape[1] == grid.shape[1] + 96  # a column of (long) row labels on the left.
  top, left = labelled[:16, 96:], labelled[16:, :96]
  assert (top < 100).any() and (left < 100).any()  # dark text drawn in both.
  # Each label sits over its own column / beside its own row.
  assert (top[:, 2:62] < 100).any() and (top[:, 64:124] < 100).any()
  assert (left[2:42] < 100).any() and (left[44:84] < 100).any()


def test_clips_side_by_side_share_one_colour_scale():
  """A flow and the same flow doubled look alike coloured alone (min-max per video), but
  not side by side: there one colour means one motion in both."""
  rng = np.random.default_rng(0)
  flow = rng.normal(size=(3, 8, 8, 2)).astype(np.float32)
  alone = [render.stream_frames("flow", f) for f in (flow, 2 * flow)]
  np.testing.assert_array_equal(alone[0], alone[1])
  frames = render.clips_side_by_side([flow, 2 * flow], "flow", ("seed", "accentuated"),
                                     target_size=8, gap=2)
  assert frames.shape == (3, 16 + 8, 8 + 2 + 8, 3) and frames.dtype == np.uint8
  left, right = frames[:, 16:, :8], frames[:, 16:, 10:]
  assert np.abs(left.astype(int) - right.astype(int)).max() > 20
  np.testing.assert_array_equal(frames[:, 16:, 8:10], 255)  # the white gap.
