r"""Synthetic benchmark: a two-stream net trained on clips whose answer is known.

Twelve classes: a red, green or blue shape moving right (0 deg), down (90),
left (180) or up (270) over grey clutter (image y points down; see
`stviz_jax.data.synthetic`). Class c's optimised appearance should be c's
colour and its optimised flow should move in c's direction.

Visualise (uses the shipped weights, stviz_jax/assets/synthetic_two_stream.npz):
  python -m stviz_jax.main --config=configs/synthetic_two_stream.py --workdir=/tmp/syn
Runtime: about 3 min on a 2-core CPU (12 class units x gamma in {0, 1, 10},
150 Adam steps; measured 3m10s, 2m17s CPU). Output: per class and gamma the
RGB image and flow GIF (R = horizontal, G = vertical, B = magnitude),
`logits/grid.png` (classes x gamma) and `summary.json`. With the shipped
weights every class's appearance has its colour's hue (max error 8 / 12 / 25
deg at gamma 0 / 1 / 10) and its flow its direction (max error 18 / 18 / 21
deg), as `stviz_jax.analysis` measures.

Train (and measure the claims) from scratch:
  python -m stviz_jax.train_synthetic --config=configs/synthetic_two_stream.py \
      --workdir=/tmp/syn_train [--install]
Runtime: 200 steps of batch 64, about 3-6 min on a 2-core CPU (test
accuracy 99.2 % on 1024 clips for the shipped weights), plus ~3 min for the
claims. Output: `metrics.json` (test accuracy,
confusion matrix), `claims.json` (measured hue / direction / temporal
variation per class and gamma vs. the truth), `weights/` (orbax) and
`synthetic_two_stream.npz`; `--install` copies the latter into
stviz_jax/assets/.

Variants: `configs/synthetic_two_stream.py:quick` (a few steps; the tests).
"""

import ml_collections

from stviz_jax.config import default_config


def get_config(arg=None):
  config = default_config()
  config.model = "synthetic_two_stream"
  config.layer = "logits"
  config.units = "all"
  config.gammas = (0.0, 1.0, 10.0)
  # 150 steps: with fewer, Adam has not removed the initial noise's temporal
  # variation and gamma = 10 can measure above gamma = 1 (tests/test_claims.py).
  config.steps = 150
  config.objective.kind = "class_logit"
  config.regularizer.flow.kappa = 1.0

  # The clips (stviz_jax.data.synthetic.ClipSpec) and classes (colour:direction:speed).
  config.data = ml_collections.ConfigDict(dict(
      colours="red,green,blue",
      directions="0,90,180,270",
      speed=1.5,
      frames=5,
      size=32,
      clutter=3,
      distractors=2,     # static shapes in class colours: colour must bind to motion.
      noise=0.03,
      direction_jitter=15.0,
      speed_jitter=0.3,
  ))
  config.train = ml_collections.ConfigDict(dict(
      steps=200,
      batch_size=64,
      learning_rate=3e-3,
      weight_decay=1e-4,
      width=16,
      seed=0,
      test_size=1024,
      test_seed=12345,   # the test clips are never drawn during training.
      log_every=100,
      claims=True,       # after training, visualise every class and measure.
      save_every=0,      # > 0: checkpoints/step_NNNNNN.npz every this many steps
                         # (filter evolution: python -m stviz_jax.evolution).
  ))
  # What each class unit uses (stviz_jax.insight): natural clips of the net's own
  # distribution for the sanity check and the top clips' motion indices, and clip 0
  # ('red right') accentuated toward every class (the confusion study, concrete).
  config.insight.clips = "synthetic"
  config.insight.accentuate = "0"
  if arg == "quick":
    config.insight.num_clips = 24
    config.insight.top_k = 3
    config.steps = 20
    config.gammas = (0.0, 10.0)
    config.train.steps = 10
    config.train.batch_size = 16
    config.train.test_size = 64
    config.train.log_every = 5
    config.train.claims = False
  elif arg:
    raise ValueError(f"unknown variant {arg!r}; valid: quick")
  return config
