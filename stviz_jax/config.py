"""Default hyper-parameters (the paper's), as an `ml_collections.ConfigDict`.

Experiment configs in `configs/` start from `default_config()` and change what
they need. Every field is documented here once.
"""

from __future__ import annotations

import ml_collections

from stviz_jax import regularizers


def default_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.model = "tiny_two_stream"     # registry name (stviz_jax.models.names()).
  c.model_overrides = ml_collections.ConfigDict()  # factory arguments (size, frames, ...).
  c.weights = ""                  # converted weights (orbax dir) for the model; "" = default.
  c.layer = "fusion"              # tap to visualise.
  # Units: "all", "0-7", "1,4,9", or class names for the logits ("playing chess;yoga").
  c.units = "0-3"
  # Several targets in one run: named {layer, units, kind[, a_hat]} entries, e.g.
  # c.targets.mixed_4f = dict(layer="Mixed_4f", units="0-3", kind="channel");
  # empty = the one target (layer, units, objective.kind).
  c.targets = ml_collections.ConfigDict()
  c.seed = 0                      # unit u starts from fold_in(PRNGKey(seed), u).
  c.steps = 200                   # Adam steps per unit.
  c.chunk_size = 0                # units optimised together (vmapped); 0 = all.
  c.init_scale = 0.5              # initial noise: per-pixel RMS norm = init_scale * V.
  c.jitter = True                 # random spatial shift in [0, jitter_fraction * stride_l).
  c.redirect_relu_steps = 0       # steps with redirected ReLU gradients (0 = off).
  c.loop = "scan"                 # steps: scan | host (one compiled step per call; profiling).
  c.compute_dtype = "float32"     # network forward/backward dtype: float32 | bfloat16.
  c.progress_every = 10.0         # log step, s/step and ETA inside a chunk every N s (0 = off).

  c.optimizer = ml_collections.ConfigDict(dict(
      learning_rate=0.05,         # in units of the bound B (inputs are optimised as x / B).
      schedule="cosine",          # cosine | exponential | constant.
      final_fraction=0.05,        # learning rate at the last step / learning_rate.
      b1=0.9, b2=0.999,
  ))
  c.objective = ml_collections.ConfigDict(dict(
      kind="channel",             # channel | neuron | class_logit.
      a_hat=1.0,                  # max activation on validation data; 1 = none given.
      # Beyond the paper (stviz_jax.objective); kind may also be direction |
      # channel_interaction | class_contrast.
      location=(),                # neuron: (t, y, x) in the layer; () = the centre.
      direction=(),               # direction: weights over the layer's channels.
      other=-1,                   # channel_interaction / class_contrast: the unit (class B) subtracted.
      other_weight=1.0,           # ... times this weight.
      # > 0: every unit is optimised as `samples` results pushed apart by Lucid's
      # Gram diversity with this weight w (Visualizer.run_diverse; the job too).
      diversity=0.0,
      samples=4,                  # K >= 2 diverse samples per unit (when diversity > 0).
      diversity_layer="",         # its layer ("" = the visualised one).
      a_hat_from="",              # stats.npz of `python -m stviz_jax.stats`: per-unit a_hat.
  ))
  # What is optimised (stviz_jax.param): kind pixel (the paper) | fourier (1/f^decay
  # spectrum over t, y, x) | maco (phase only); colour none | imagenet | data
  # (decorrelated RGB; 'data' from the 3x3 colour_covariance).
  c.param = ml_collections.ConfigDict(dict(
      kind="pixel", decay=1.0, colour="none", colour_covariance=()))
  # Per-step transforms (stviz_jax.transforms.parse), same draw for every stream:
  # e.g. "pad(4), jitter(8), scale(0.9,1.1), rotate(10), time_jitter(1), jitter";
  # a bare "jitter" is the paper's (jitter_fraction * stride_l, off when c.jitter is False).
  c.transforms = "jitter"
  # Paper: B = 160, alpha = 3, V = B / 6.5 (8-bit pixel units); flow TV x10.
  c.regularizer = regularizers.paper_preset()
  # Temporal regularisation settings of the flow stream to run (kappa fixed),
  # each a full result; empty = just regularizer.flow.gamma.
  c.gammas = ()
  # Gallery pages comparing two class units side by side (the paper's Figs. 13-15:
  # confusions such as PlayingCello vs PlayingViolin): "A:B; C:D" by class name or
  # index. Each class must be a unit of a class_logit target on 'logits'; a
  # class_contrast target's A - B result joins its pair's page (and makes one).
  c.gallery = ml_collections.ConfigDict(dict(compare=""))
  # Picture quality of every result (stviz_jax.quality; summary.json, the gallery):
  # transform robustness under `transforms` seeded random crops / flips / time
  # rolls / blurs (0 = off), spectral slope, temporal variation, flow speed.
  c.quality = ml_collections.ConfigDict(dict(transforms=16, seed=0))
  c.sweep = ml_collections.ConfigDict(dict(
      memory_budget_gb=0.0,       # > 0: chunk_size (when 0) from XLA's memory analysis.
      resume=True,                # checkpoint finished chunks; a rerun continues.
      distributed=False,          # jax.distributed.initialize(): one process per host.
      # Multi-host without cluster auto-detection (TPU, SLURM, Open MPI detect these).
      coordinator_address="",     # "host0:1234"
      num_processes=0,
      process_id=-1,
  ))
  return c
