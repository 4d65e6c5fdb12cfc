r"""Built-in example: the small random two-stream network, fusion layer.

Command:
  python -m stviz_jax.main --config=configs/tiny_two_stream.py --workdir=/tmp/tiny

Runtime: about 30 s on a 2-core CPU (4 units x 3 temporal settings, 200 steps).
Output: per unit and gamma in {0, 1, 10} the optimised RGB frame (PNG) and the
flow video (GIF; R = horizontal, G = vertical, B = magnitude), `.npz` arrays,
`fusion/grid.png` (units x gamma) and `summary.json`. With random weights the
pictures show the method running, not learned features.

`configs/tiny_two_stream.py:quick` runs 20 steps (used by the tests).
"""

from stviz_jax.config import default_config


def get_config(arg=None):
  config = default_config()
  config.model = "tiny_two_stream"
  config.model_overrides = dict(size=32, frames=4, width=16)
  config.layer = "fusion"
  config.units = "0-3"
  config.gammas = (0.0, 1.0, 10.0)
  if arg == "quick":
    config.steps = 20
  elif arg:
    raise ValueError(f"unknown variant {arg!r}; valid: quick")
  return config
