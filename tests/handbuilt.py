"""Hand-built networks whose preferred inputs are known in advance."""

import jax.numpy as jnp
import numpy as np

import stviz_jax as sv
from stviz_jax import models

RGB = models.StreamSpec(1, 16, 16, 3, (-1.0, 1.0))
FLOW = models.StreamSpec(3, 16, 16, 2, (-10.0, 10.0))

# 1x1 "convolutions": unit -> weights over input channels.
MOTION_UNITS = {"rightward": (1.0, 0.0), "leftward": (-1.0, 0.0),
                "downward": (0.0, 1.0), "upward": (0.0, -1.0)}
COLOUR_UNITS = {"red": (1.0, -0.5, -0.5), "green": (-0.5, 1.0, -0.5),
                "blue": (-0.5, -0.5, 1.0)}


def apply(variables, inputs):
  """Linear 1x1 units on flow ('motion') and on RGB ('colour'), plus a ReLU unit
  with a large negative bias ('dead': never fires at initialisation)."""
  flow, rgb = inputs["flow"], inputs["rgb"]
  motion = jnp.einsum("nthwc,ck->nthwk", flow, variables["motion"])
  colour = jnp.einsum("nthwc,ck->nthwk", rgb, variables["colour"])
  dead = models.relu(jnp.einsum("nthwc,ck->nthwk", rgb, variables["colour"]) - 0.5)
  logits = jnp.concatenate([motion.mean((1, 2, 3)), colour.mean((1, 2, 3))], -1)
  return logits, {"motion": motion, "colour": colour, "dead": dead}


def model():
  variables = {
      "motion": jnp.asarray(np.array(list(MOTION_UNITS.values()), np.float32).T),
      "colour": jnp.asarray(np.array(list(COLOUR_UNITS.values()), np.float32).T),
  }
  return models.wrap(apply, variables, {"rgb": RGB, "flow": FLOW}, name="handbuilt")


def config(**fields):
  """`default_config()` with the top-level `fields` set: the tests' shorthand."""
  c = sv.default_config()
  for k, v in fields.items():
    setattr(c, k, v)
  return c
