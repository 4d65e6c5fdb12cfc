"""A small two-stream fusion network with random weights, for tests and examples.

Appearance stream: one RGB frame, 2-D convolutions. Motion stream: a stack of
flow frames, 3-D convolutions. Fusion: the appearance features are repeated
over time, concatenated with the motion features (appearance first, as in
Feichtenhofer et al. 2016) and fused by a 3x3x3 convolution, then global
average pooling and a linear classifier. It has the layout of the paper's
VGG-16 fusion model at a size that optimises in seconds on a CPU.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from stviz_jax.models import base, checkpoint, layers, registry


class TinyTwoStream(nn.Module):
  num_classes: int = 10
  width: int = 16

  @nn.compact
  def __call__(self, inputs):
    feats = {}
    rgb = inputs["rgb"]  # (N, 1, H, W, 3)
    x = rgb[:, 0]
    x = layers.relu(layers.Conv(self.width, (3, 3), name="rgb_conv1")(x))
    feats["rgb/conv1"] = x
    x = nn.max_pool(x, (2, 2), (2, 2))
    x = layers.relu(layers.Conv(self.width, (3, 3), name="rgb_conv2")(x))
    feats["rgb/conv2"] = x

    y = inputs["flow"]  # (N, T, H, W, 2)
    y = layers.relu(layers.Conv(self.width, (3, 3, 3), name="flow_conv1")(y))
    feats["flow/conv1"] = y
    y = nn.max_pool(y, (1, 2, 2), (1, 2, 2))
    y = layers.relu(layers.Conv(self.width, (3, 3, 3), name="flow_conv2")(y))
    feats["flow/conv2"] = y

    a = jnp.broadcast_to(x[:, None], y.shape[:-1] + (x.shape[-1],))
    z = jnp.concatenate([a, y], axis=-1)
    z = layers.relu(layers.Conv(self.width, (3, 3, 3), name="fusion")(z))
    feats["fusion"] = z
    logits = nn.Dense(self.num_classes, name="fc")(z.mean(axis=(1, 2, 3)))
    return logits, feats


LAYERS = ("rgb/conv1", "rgb/conv2", "flow/conv1", "flow/conv2", "fusion", "logits")


@registry.register("tiny_two_stream")
def tiny_two_stream(frames: int = 4, size: int = 32, num_classes: int = 10,
                    width: int = 16, seed: int = 0, weights: str | None = None
                    ) -> base.Model:
  """The built-in example: random weights from `seed`, or converted `weights`."""
  streams = {
      "rgb": base.StreamSpec(1, size, size, 3, (-1.0, 1.0)),
      "flow": base.StreamSpec(frames, size, size, 2, (-10.0, 10.0)),
  }
  module = TinyTwoStream(num_classes=num_classes, width=width)
  dummy = {k: jnp.zeros((1,) + s.shape) for k, s in streams.items()}
  variables = (checkpoint.restore_for(weights, "tiny_two_stream") if weights
               else module.init(jax.random.PRNGKey(seed), dummy))
  return base.wrap(module, variables, streams, layers=LAYERS,
                   name="tiny_two_stream")
