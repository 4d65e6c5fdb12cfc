"""A two-stream fusion network trained on synthetic clips with known answers.

Trained by `python -m stviz_jax.train_synthetic` on `stviz_jax.data.synthetic`
clips (a coloured shape moving in one of four directions); the trained
weights ship in `stviz_jax/assets/synthetic_two_stream.npz` and load by
default, so visualising it needs no training. Class c's optimised inputs
should show the class colour in the appearance and the class direction in
the flow; `tests/test_claims.py` checks exactly that.

Architecture (every ReLU is `layers.relu`):
  appearance: one RGB frame (1, H, W, 3) -> conv3x3(8) -> pool2 -> conv3x3(16) -> pool2
  motion:     flow (T, H, W, 2) -> conv3x3x3(8) -> pool1x2x2 -> conv3x3x3(16) -> pool1x2x2
  fusion:     [appearance repeated over T, motion] -> conv3x3x3(16)
  classifier: global average pool -> dense(classes)
Global pooling makes the network accept any frame count and size.
"""

from __future__ import annotations

import io
import json
import os

import flax.linen as nn
from flax import traverse_util
import jax
import jax.numpy as jnp
import numpy as np

from stviz_jax import files
from stviz_jax.models import base, checkpoint, layers, registry

ARCHITECTURE = "synthetic_two_stream"
ASSET = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))), "assets", "synthetic_two_stream.npz")
LAYERS = ("rgb/conv1", "rgb/conv2", "flow/conv1", "flow/conv2", "fusion", "logits")
# Flow is in pixels/frame; like an 8-bit flow encoding of +-5 px/frame, so the
# paper's bound B = 160 levels is ~6.3 px/frame.
FLOW_RANGE = (-5.0, 5.0)


class SyntheticTwoStream(nn.Module):
  """Appearance + motion streams, convolutional fusion, linear classifier."""

  num_classes: int
  width: int = 16

  @nn.compact
  def __call__(self, inputs):
    feats = {}
    w = self.width
    x = inputs["rgb"][:, 0]  # (N, H, W, 3): the appearance stream sees one frame.
    x = layers.relu(layers.Conv(w // 2, (3, 3), name="rgb_conv1")(x))
    feats["rgb/conv1"] = x
    x = nn.max_pool(x, (2, 2), (2, 2))
    x = layers.relu(layers.Conv(w, (3, 3), name="rgb_conv2")(x))
    feats["rgb/conv2"] = x
    x = nn.max_pool(x, (2, 2), (2, 2))

    y = inputs["flow"]  # (N, T, H, W, 2)
    y = layers.relu(layers.Conv(w // 2, (3, 3, 3), name="flow_conv1")(y))
    feats["flow/conv1"] = y
    y = nn.max_pool(y, (1, 2, 2), (1, 2, 2))
    y = layers.relu(layers.Conv(w, (3, 3, 3), name="flow_conv2")(y))
    feats["flow/conv2"] = y
    y = nn.max_pool(y, (1, 2, 2), (1, 2, 2))

    # Appearance first, as in Feichtenhofer et al. (2016) conv fusion.
    a = jnp.broadcast_to(x[:, None], y.shape[:-1] + (x.shape[-1],))
    z = layers.relu(layers.Conv(w, (3, 3, 3), name="fusion")(jnp.concatenate([a, y], -1)))
    feats["fusion"] = z
    logits = nn.Dense(self.num_classes, name="fc")(z.mean(axis=(1, 2, 3)))
    return logits, feats


def save_npz(path: str, variables, metadata: dict) -> None:
  """Writes variables (flattened with '/') and JSON metadata to one `.npz`, atomically."""
  flat = traverse_util.flatten_dict(jax.device_get(variables), sep="/")
  arrays = {k: np.asarray(v) for k, v in flat.items()}
  arrays["__metadata__"] = np.asarray(json.dumps(metadata))
  buf = io.BytesIO()
  np.savez_compressed(buf, **arrays)
  files.write_bytes(path, buf.getvalue())


def load_weights(path: str):
  """`(variables, metadata)` from an `.npz` (`save_npz`) or an orbax weights directory."""
  if os.path.isdir(path):
    variables, metadata = checkpoint.restore(path)
  else:
    if not os.path.exists(path):
      raise FileNotFoundError(
          f"{path}: no such weights file; train them with `python -m "
          "stviz_jax.train_synthetic --config=configs/synthetic_two_stream.py "
          "--workdir=DIR --install`")
    with files.load_npz(path) as f:
      if "__metadata__" not in f.files:
        raise ValueError(f"{path}: not a {ARCHITECTURE} weights file (no __metadata__)")
      metadata = json.loads(str(f["__metadata__"]))
      flat = {k: jnp.asarray(f[k]) for k in f.files if k != "__metadata__"}
    variables = traverse_util.unflatten_dict(flat, sep="/")
  if metadata.get("architecture") != ARCHITECTURE:
    raise ValueError(f"{path}: weights are for architecture "
                     f"{metadata.get('architecture')!r}, not {ARCHITECTURE!r}")
  return variables, metadata


@registry.register(ARCHITECTURE)
def synthetic_two_stream(weights: str | None = None, pretrained: bool = True,
                         labels=None, frames: int | None = None,
                         size: int | None = None, width: int = 16,
                         seed: int = 0) -> base.Model:
  """The synthetic benchmark model.

  Args:
    weights: an `.npz` or orbax directory written by `train_synthetic`;
      None = the shipped asset (when `pretrained`).
    pretrained: False gives random weights from `seed` (what training starts
      from); then `labels` (class names) must be given.
    labels: class names (taken from the weights' metadata when loading).
    frames, size: input flow frames T and height = width (default: as trained).
    width: channels of the second conv layers and the fusion layer.
    seed: random-init seed.

  Returns:
    A `Model` with streams `rgb` (1, size, size, 3) in [-1, 1] and `flow`
    (frames, size, size, 2) in pixels/frame, and labels like 'red right'.
  """
  metadata = {}
  if weights or pretrained:
    variables, metadata = load_weights(weights or ASSET)
    labels = tuple(metadata["labels"])
    width = metadata.get("width", width)
  elif labels is None:
    raise ValueError(f"{ARCHITECTURE}: random init (pretrained=False) needs labels=")
  clip = metadata.get("clip", {})
  frames = frames or clip.get("frames", 5)
  size = size or clip.get("size", 32)
  streams = {
      "rgb": base.StreamSpec(1, size, size, 3, (-1.0, 1.0)),
      "flow": base.StreamSpec(frames, size, size, 2, FLOW_RANGE),
  }
  module = SyntheticTwoStream(num_classes=len(labels), width=width)
  if not metadata:
    dummy = {k: jnp.zeros((1,) + s.shape) for k, s in streams.items()}
    variables = module.init(jax.random.PRNGKey(seed), dummy)
  return base.wrap(module, variables, streams, layers=LAYERS, name=ARCHITECTURE,
                   labels=labels)
