r"""Lucid-style choices on the synthetic two-stream benchmark (beyond the paper).

The trained synthetic net (`configs/synthetic_two_stream.py`) with what a
Lucid user expects, extended to space-time and two streams: a 3-D 1/f
Fourier parameterisation (space and time) with decorrelated ImageNet colour
for RGB, and Lucid's per-step transforms applied identically to appearance
and flow (pad, jitter, random scale and rotation, which turn and scale the
flow vectors too, and a shift in time).

Command:
  python -m stviz_jax.main --config=configs/synthetic_lucid.py --workdir=/tmp/syn_lucid
Runtime: about 1-2 min on a 2-core CPU (12 class units x gamma in {0, 10}).
Output: as `synthetic_two_stream.py`: per class the RGB image (its class
colour) and the flow GIF (its class direction), `logits/grid.png`,
`summary.json`.

Variants (`configs/synthetic_lucid.py:NAME`):
  maco      magnitude-constrained Fourier (phase only) instead of 1/f Fourier.
  pixel     raw pixels (the paper's parameterisation) with the Lucid transforms.
  contrast  class A minus class B (the paper's Figs. 13-15 confusion study):
            red-rightward (0) against red-leftward (2).
  compare   the confusion study as a gallery page: class units 'red right' and
            'red left' side by side (RGB image and flow video of each, their
            class ranks) with the contrast 'red right' - 'red left' beside them,
            `gallery/compare/class_0000_vs_0002.html` (linked from index.html).
            60 steps, gamma in {0, 10}: about 40 s on a 2-core CPU.
  quick     20 steps (smoke runs).
"""

import ml_collections

from stviz_jax.config import default_config


def get_config(arg=None):
  config = default_config()
  config.model = "synthetic_two_stream"
  config.layer = "logits"
  config.units = "all"
  config.gammas = (0.0, 10.0)
  config.steps = 150
  config.objective.kind = "class_logit"
  config.param.kind = "fourier"
  config.param.decay = 1.0
  config.param.colour = "imagenet"
  config.transforms = "pad(2), jitter(3), scale(0.95,1.05), rotate(5), time_jitter(1), jitter"
  if arg == "maco":
    config.param.kind = "maco"
  elif arg == "pixel":
    config.param.kind, config.param.colour = "pixel", "none"
  elif arg == "contrast":
    config.units = "0"
    config.objective.kind = "class_contrast"
    config.objective.other = 2
  elif arg == "compare":
    config.steps = 60
    config.targets = ml_collections.ConfigDict(dict(
        classes=dict(layer="logits", units="red right;red left", kind="class_logit"),
        contrast=dict(layer="logits", units="red right", kind="class_contrast",
                      other="red left")))
    config.gallery.compare = "red right:red left"
  elif arg == "quick":
    config.steps = 20
  elif arg:
    raise ValueError(f"unknown variant {arg!r}; valid: maco, pixel, contrast, compare, quick")
  return config
