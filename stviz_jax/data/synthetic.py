"""Synthetic two-stream clips whose right answer is known.

A clip shows one textured shape of a given colour moving in a straight line
at constant velocity over a static background cluttered with grey shapes and
with static shapes in the classes' colours (distractors). Because
the motion is generated, its optical flow is exact, not estimated.

Conventions (the same ones `stviz_jax.analysis` measures with):

* Image coordinates: x (columns) points right, y (rows) points **down**.
* Flow channels are `(horizontal, vertical)` = `(u, v)` in pixels per frame;
  positive u moves right, positive v moves **down**. Flow frame k maps frame k
  to frame k + 1 (forward flow).
* A direction angle theta (degrees) is measured from the +x axis towards +y:
  velocity = speed * (cos theta, sin theta). So 0 = rightward, 90 = downward,
  180 = leftward, 270 = upward (clockwise as seen on screen);
  `analysis.flow_direction` returns atan2(v, u) in the same convention.
* Colours are RGB in [0, 1]; model inputs map them to [-1, 1].

Exactness: a pixel covered by the object in frame k (coverage w in [0, 1],
anti-aliased at the boundary) has flow w * velocity; every other pixel has
flow 0, since the background and clutter are static. The object's texture is
painted in object coordinates, so it moves with the object and the flow
explains the intensity change of every interior pixel exactly.

Everything is pure JAX, so a training step can draw a fresh batch inside
`jit` (`sample_batch`), and a clip is a deterministic function of its key.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

# Fully saturated, slightly dimmed primaries/secondaries (RGB in [0, 1]).
COLOURS = {
    "red": (0.9, 0.1, 0.1),
    "yellow": (0.9, 0.9, 0.1),
    "green": (0.1, 0.9, 0.1),
    "cyan": (0.1, 0.9, 0.9),
    "blue": (0.1, 0.1, 0.9),
    "magenta": (0.9, 0.1, 0.9),
}
SHAPES = ("disk", "square", "diamond")
DIRECTION_NAMES = {0: "right", 90: "down", 180: "left", 270: "up"}


@dataclasses.dataclass(frozen=True)
class MotionClass:
  """One class: an object of `colour` moving at `direction` degrees and `speed`.

  Attributes:
    colour: a name in `COLOURS` or an RGB triple in [0, 1].
    direction: degrees; 0 = rightward, 90 = downward (image y points down).
    speed: pixels per frame (the mean; clips jitter it by `ClipSpec.speed_jitter`).
  """

  colour: str | tuple[float, float, float]
  direction: float
  speed: float = 1.5

  @property
  def rgb(self) -> tuple[float, float, float]:
    if isinstance(self.colour, str):
      if self.colour not in COLOURS:
        raise ValueError(f"unknown colour {self.colour!r}; valid: {', '.join(COLOURS)} "
                         "or an RGB triple in [0, 1]")
      return COLOURS[self.colour]
    rgb = tuple(float(c) for c in self.colour)
    if len(rgb) != 3 or not all(0.0 <= c <= 1.0 for c in rgb):
      raise ValueError(f"colour {self.colour!r} is not an RGB triple in [0, 1]")
    return rgb

  @property
  def name(self) -> str:
    colour = self.colour if isinstance(self.colour, str) else "rgb{:.2f},{:.2f},{:.2f}".format(*self.rgb)
    d = self.direction % 360
    direction = DIRECTION_NAMES.get(int(d), f"{d:g}deg") if float(d).is_integer() else f"{d:g}deg"
    return f"{colour} {direction}"


def parse_classes(spec: str | Sequence) -> tuple[MotionClass, ...]:
  """Classes from `"red:0:1.5, green:90"` (colour:direction[:speed]) or a sequence.

  A sequence may hold `MotionClass`es or `(colour, direction[, speed])` tuples.
  """
  if isinstance(spec, str):
    items = [tuple(p.strip() for p in c.split(":")) for c in spec.split(",") if c.strip()]
    out = []
    for item in items:
      if len(item) not in (2, 3):
        raise ValueError(f"class {':'.join(item)!r} is not colour:direction[:speed]")
      out.append(MotionClass(item[0], float(item[1]), *(float(s) for s in item[2:])))
  else:
    out = [c if isinstance(c, MotionClass) else MotionClass(*c) for c in spec]
  if not out:
    raise ValueError("no classes given")
  for c in out:
    c.rgb  # validates the colour.  pylint: disable=pointless-statement
  names = [c.name for c in out]
  if len(set(names)) != len(names):
    raise ValueError(f"duplicate classes in {names}")
  return tuple(out)


def grid_classes(colours: Sequence[str] = ("red", "green", "blue"),
                 directions: Sequence[float] = (0, 90, 180, 270),
                 speed: float = 1.5) -> tuple[MotionClass, ...]:
  """Every colour x every direction, colour-major."""
  return tuple(MotionClass(c, float(d), speed) for c in colours for d in directions)


@dataclasses.dataclass(frozen=True)
class ClipSpec:
  """How clips look. Defaults give 32 x 32 clips with 5 flow frames.

  Attributes:
    frames: number of flow frames T (the video has T + 1 frames).
    size: height = width in pixels.
    radius: (min, max) object radius in pixels.
    speed_jitter: the speed is drawn from speed * [1 - j, 1 + j].
    direction_jitter: degrees; the direction is drawn from direction +- this.
    colour_jitter: per-channel uniform jitter of the object colour; a common
      brightness factor is applied on top, which leaves the hue unchanged.
    texture: amplitude of the object's texture (multiplicative, hue-neutral).
    clutter: number of static grey shapes in the background.
    distractors: number of static shapes coloured like a random class colour
      (from `palette`); they make the colour of the *moving* object the only
      cue, so a model has to bind appearance to motion (fusion).
    palette: RGB colours of the distractors; empty = the classes' colours
      (filled in by `sample_batch`).
    noise: standard deviation of per-pixel RGB noise (fresh in every frame).
  """

  frames: int = 5
  size: int = 32
  radius: tuple[float, float] = (4.0, 7.0)
  speed_jitter: float = 0.3
  direction_jitter: float = 15.0
  colour_jitter: float = 0.05
  texture: float = 0.3
  clutter: int = 3
  distractors: int = 1
  palette: tuple[tuple[float, float, float], ...] = ()
  noise: float = 0.03

  def __post_init__(self):
    if self.frames < 1 or self.size < 8:
      raise ValueError(f"ClipSpec needs frames >= 1 and size >= 8, got {self}")
    if not 0 < self.radius[0] <= self.radius[1]:
      raise ValueError(f"ClipSpec.radius must be 0 < min <= max, got {self.radius}")


def class_table(classes: Sequence[MotionClass]):
  return (jnp.asarray([c.rgb for c in classes], jnp.float32),
          jnp.asarray([c.direction for c in classes], jnp.float32),
          jnp.asarray([c.speed for c in classes], jnp.float32))


def _coverage(shape_id, q, radius):
  """Anti-aliased coverage in [0, 1] of a shape centred at 0; q is (..., 2) = (x, y)."""
  dist = jnp.stack([
      jnp.sqrt(jnp.sum(q * q, axis=-1)),                        # disk: L2
      jnp.max(jnp.abs(q), axis=-1),                              # square: Linf
      jnp.sum(jnp.abs(q), axis=-1) / math.sqrt(2.0),             # diamond: L1, same area scale
  ])[shape_id]
  return jnp.clip(radius - dist + 0.5, 0.0, 1.0)


def _grating_texture(key, q, n=3):
  """Sum of n random oriented sinusoids in [-1, 1], evaluated at coordinates q (..., 2)."""
  k_freq, k_angle, k_phase = jax.random.split(key, 3)
  freq = jax.random.uniform(k_freq, (n,), minval=0.3, maxval=1.0)
  angle = jax.random.uniform(k_angle, (n,), maxval=2 * jnp.pi)
  phase = jax.random.uniform(k_phase, (n,), maxval=2 * jnp.pi)
  k = freq[:, None] * jnp.stack([jnp.cos(angle), jnp.sin(angle)], -1)  # (n, 2)
  return jnp.mean(jnp.sin(q @ k.T + phase), axis=-1)


def render_clip(key: jax.Array, rgb: jax.Array, direction: jax.Array,
                speed: jax.Array, spec: ClipSpec = ClipSpec()) -> dict[str, jax.Array]:
  """Renders one clip with its exact flow (pure; vmap over keys and classes).

  Args:
    key: PRNG key; the clip is a deterministic function of it.
    rgb: (3,) object colour in [0, 1].
    direction: degrees, 0 = rightward, 90 = downward (before jitter).
    speed: pixels per frame (before jitter).
    spec: appearance and jitter settings.

  Returns:
    dict with `video` (T + 1, H, W, 3) in [0, 1], `flow` (T, H, W, 2) as
    (u, v) pixels/frame with v positive downward, `mask` (T + 1, H, W) object
    coverage, `velocity` (2,) the true (u, v), and `rgb` (3,) the drawn colour.
  """
  t, s = spec.frames, spec.size
  keys = jax.random.split(key, 10)
  theta = jnp.deg2rad(direction + jax.random.uniform(
      keys[0], (), minval=-spec.direction_jitter, maxval=spec.direction_jitter))
  speed = speed * jax.random.uniform(keys[1], (), minval=1 - spec.speed_jitter,
                                     maxval=1 + spec.speed_jitter)
  velocity = speed * jnp.stack([jnp.cos(theta), jnp.sin(theta)])  # (u, v), v down.
  radius = jax.random.uniform(keys[2], (), minval=spec.radius[0], maxval=spec.radius[1])
  shape_id = jax.random.randint(keys[3], (), 0, len(SHAPES))
  # The object is anywhere in the frame at mid-clip; it may be partly outside at the ends.
  mid = jax.random.uniform(keys[4], (2,), minval=radius, maxval=s - 1 - radius)
  steps = jnp.arange(t + 1, dtype=jnp.float32) - t / 2.0
  centres = mid + steps[:, None] * velocity  # (T + 1, 2)

  yy, xx = jnp.mgrid[0:s, 0:s].astype(jnp.float32)
  pix = jnp.stack([xx, yy], -1)  # (H, W, 2) as (x, y).
  q = pix[None] - centres[:, None, None]  # object coordinates per frame.
  mask = _coverage(shape_id, q, radius)  # (T + 1, H, W)

  colour = jnp.clip(rgb + jax.random.uniform(keys[5], (3,), minval=-spec.colour_jitter,
                                             maxval=spec.colour_jitter), 0.0, 1.0)
  colour = colour * jax.random.uniform(keys[6], (), minval=0.8, maxval=1.0)
  shade = 1.0 + spec.texture * _grating_texture(keys[7], q)  # moves with the object.
  obj = jnp.clip(colour * shade[..., None], 0.0, 1.0)

  background = _background(keys[8], pix, spec)  # (H, W, 3), static.
  video = background[None] * (1 - mask[..., None]) + obj * mask[..., None]
  video = video + spec.noise * jax.random.normal(keys[9], video.shape)
  flow = mask[:-1, ..., None] * velocity  # forward flow of frame k -> k + 1.
  return {"video": jnp.clip(video, 0.0, 1.0), "flow": flow, "mask": mask,
          "velocity": velocity, "rgb": colour}


def _background(key, pix, spec: ClipSpec):
  """Static background (H, W, 3): textured grey, grey clutter, coloured distractors."""
  k_level, k_tex, k_clutter, k_dis = jax.random.split(key, 4)
  level = jax.random.uniform(k_level, (), minval=0.35, maxval=0.65)
  bg = level + 0.08 * _grating_texture(k_tex, pix, n=4)
  for i in range(spec.clutter):  # a handful, unrolled at trace time.
    k = jax.random.fold_in(k_clutter, i)
    k_pos, k_r, k_shape, k_grey = jax.random.split(k, 4)
    centre = jax.random.uniform(k_pos, (2,), maxval=spec.size)
    r = jax.random.uniform(k_r, (), minval=2.0, maxval=6.0)
    cov = _coverage(jax.random.randint(k_shape, (), 0, len(SHAPES)), pix - centre, r)
    grey = jax.random.uniform(k_grey, (), minval=0.1, maxval=0.9)
    bg = bg * (1 - cov) + grey * cov
  bg = jnp.repeat(bg[..., None], 3, axis=-1)
  if spec.distractors and not spec.palette:
    raise ValueError("ClipSpec.distractors > 0 needs a palette (sample_batch fills it "
                     "with the class colours)")
  palette = jnp.asarray(spec.palette, jnp.float32).reshape(-1, 3)
  for i in range(spec.distractors):
    k = jax.random.fold_in(k_dis, i)
    k_pos, k_r, k_shape, k_col = jax.random.split(k, 4)
    centre = jax.random.uniform(k_pos, (2,), maxval=spec.size)
    r = jax.random.uniform(k_r, (), minval=spec.radius[0], maxval=spec.radius[1])
    cov = _coverage(jax.random.randint(k_shape, (), 0, len(SHAPES)), pix - centre, r)
    colour = palette[jax.random.randint(k_col, (), 0, palette.shape[0])]
    bg = bg * (1 - cov[..., None]) + colour * cov[..., None]
  return bg


def model_inputs(clip: dict[str, jax.Array]) -> dict[str, jax.Array]:
  """A clip -> two-stream inputs: `rgb` (1, H, W, 3) in [-1, 1], `flow` (T, H, W, 2).

  The appearance frame is the video frame at the centre of the flow stack
  (index T // 2), as two-stream networks sample it.
  """
  t = clip["flow"].shape[-4]
  rgb = clip["video"][..., t // 2:t // 2 + 1, :, :, :] * 2.0 - 1.0
  return {"rgb": rgb, "flow": clip["flow"]}


def sample_batch(key: jax.Array, classes: Sequence[MotionClass], batch: int,
                 spec: ClipSpec = ClipSpec()) -> tuple[dict[str, jax.Array], jax.Array]:
  """A batch of model inputs with uniformly drawn labels (jit-able given static args).

  Returns:
    `(inputs, labels)`: inputs as `model_inputs` with a leading batch axis,
    labels `(batch,)` int32 indices into `classes`.
  """
  colours, directions, speeds = class_table(classes)
  spec = with_palette(spec, classes)
  k_label, k_clip = jax.random.split(key)
  labels = jax.random.randint(k_label, (batch,), 0, len(classes))
  clips = jax.vmap(render_clip, in_axes=(0, 0, 0, 0, None))(
      jax.random.split(k_clip, batch), colours[labels], directions[labels],
      speeds[labels], spec)
  return model_inputs(clips), labels


def with_palette(spec: ClipSpec, classes: Sequence[MotionClass]) -> ClipSpec:
  """`spec` with an empty distractor palette filled by the classes' colours."""
  if spec.palette:
    return spec
  return dataclasses.replace(spec, palette=tuple(dict.fromkeys(c.rgb for c in classes)))


def make_clip(motion: MotionClass, seed: int = 0, spec: ClipSpec = ClipSpec(),
              classes: Sequence[MotionClass] = ()) -> dict[str, np.ndarray]:
  """One clip of `motion` as numpy arrays (see `render_clip`), deterministic in `seed`.

  Distractors take their colours from `spec.palette`, else from `classes`,
  else from `motion` itself.
  """
  spec = with_palette(spec, tuple(classes) or (motion,))
  rgb, direction, speed = (jnp.asarray(v, jnp.float32) for v in
                           (motion.rgb, motion.direction, motion.speed))
  return jax.tree.map(np.asarray, _render_clip_jit(jax.random.PRNGKey(seed), rgb,
                                                   direction, speed, spec))


_render_clip_jit = jax.jit(render_clip, static_argnums=4)
_sample_batch_jit = jax.jit(sample_batch, static_argnums=(1, 2, 3))


def dataset(classes: Sequence[MotionClass], size: int, seed: int,
            spec: ClipSpec = ClipSpec(), batch: int = 256
            ) -> tuple[dict[str, np.ndarray], np.ndarray]:
  """A fixed set of `size` examples (e.g. the test set), deterministic in `seed`."""
  batch = min(batch, size)
  key = jax.random.PRNGKey(seed)
  parts = [_sample_batch_jit(jax.random.fold_in(key, i), tuple(classes), batch, spec)
           for i in range(-(-size // batch))]
  inputs = {k: np.concatenate([np.asarray(p[0][k]) for p in parts])[:size]
            for k in parts[0][0]}
  labels = np.concatenate([np.asarray(p[1]) for p in parts])[:size]
  return inputs, labels
