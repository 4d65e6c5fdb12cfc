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
  # Several targets in one run: named {layer, units, kind[, a_hat, other, steps]} entries, e.g.
  # c.targets.mixed_4f = dict(layer="Mixed_4f", units="0-3", kind="channel");
  # empty = the one target (layer, units, objective.kind).
  c.targets = ml_collections.ConfigDict()
  c.seed = 0                      # unit u starts from fold_in(PRNGKey(seed), u).
  c.steps = 200                   # Adam steps per unit.
  # Units optimised together (vmapped). 0 = automatic per backend
  # (chunks.auto_chunk_size): CPU 1 (a vmapped chunk measured 0.55x a loop for
  # VGG-16 on 2 cores, 1.04x for I3D); accelerators as many as fit half a
  # device's memory by XLA's memory analysis of one unit (32 if unknown).
  c.chunk_size = 0
  c.init_scale = 0.5              # initial noise: per-pixel RMS norm = init_scale * V.
  c.jitter = True                 # random spatial shift in [0, jitter_fraction * stride_l).
  c.redirect_relu_steps = 0       # steps with redirected ReLU gradients (0 = off).
  c.loop = "scan"                 # steps: scan | host (one compiled step per call; profiling).
  c.compute_dtype = "float32"     # network forward/backward dtype: float32 | bfloat16.
  c.progress_every = 10.0         # log step, s/step and ETA inside a chunk every N s (0 = off).
  c.progress_bar = True           # a progress bar over units / pairs (terminal or notebook).

  c.optimizer = ml_collections.ConfigDict(dict(
      learning_rate=0.05,         # in units of the bound B (inputs are optimised as x / B).
      schedule="cosine",          # cosine | exponential | constant.
      final_fraction=0.05,        # learning rate at the last step / learning_rate.
      b1=0.9, b2=0.999,
  ))
  c.objective = ml_collections.ConfigDict(dict(
      kind="channel",             # channel | neuron | class_logit.
      a_hat=1.0,                  # max activation on validation data; 1 = none given.
      class_score="logit",        # class_logit: logit (the paper) | log_prob (log-softmax).
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
  # What a unit uses (stviz_jax.insight; summary.json's `insight`, the gallery).
  c.insight = ml_collections.ConfigDict(dict(
      # Activation of each optimised clip with motion removed, time shuffled and
      # each stream removed: static / motion index and stream shares per unit.
      motion=True,
      # Space-time transparency map per stream from the input gradient
      # accumulated during the optimisation (MACO's), an overlay video per unit.
      attribution=True,
      # Natural clips the unit is compared with: "" (none) | "synthetic" (clips of
      # config.data, the synthetic net's distribution) | a `.npz` of arrays
      # stream -> (N, T, H, W, C) in model input units | a folder of videos (one
      # subfolder per class, stviz_jax.data.videos). Enables the sanity check,
      # the motion indices of each unit's top clips and accentuation.
      clips="",
      num_clips=96,               # "synthetic": how many clips (seed insight.seed).
      top_k=8,                    # top natural clips per unit (by its activation).
      # Sanity check (Geirhos et al. 2023): rank correlation of the layer-by-layer
      # activation path of the optimised clip with the unit's top natural clips.
      sanity=True,
      # Clip-seeded accentuation (Hamblin, Fel et al. 2024): indices into
      # insight.clips ("0,5"; "" = off), each pushed toward every unit of the target
      # while staying near the seed with this weight.
      accentuate="",
      accentuate_weight=1.0,
      seed=0,
  ))
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


def complete(config, defaults: ml_collections.ConfigDict | None = None
             ) -> ml_collections.ConfigDict:
  """`config` with every field it lacks filled from `defaults` (default:
  `default_config()`), recursively; its own values and extra fields are kept.

  The library's entry points (`Visualizer`, `job.run`, `plan.build_target`)
  complete what they are given, so a researcher's partial config works and
  every other module reads fields as attributes: each default is written
  here once, never restated as `.get(name, default)` elsewhere.
  """
  defaults = default_config() if defaults is None else defaults

  def merge(base: dict, given: dict) -> dict:
    out = dict(base)
    for k, v in given.items():
      out[k] = merge(base[k], v) if isinstance(base.get(k), dict) and isinstance(v, dict) else v
    return out

  given = config.to_dict() if hasattr(config, "to_dict") else dict(config)
  return ml_collections.ConfigDict(merge(defaults.to_dict(), given))


# float32 is what the optimisation computes in: a value beyond it is inf there.
_FLOAT32_MAX = 3.4028235e38


def _check(where: str, value, what: str, ok) -> None:
  if not ok(value):
    raise ValueError(f"{where} must be {what}, got {value!r}")


def _number(where: str, value, what: str, low: float, strict: bool = False,
            integer: bool = False) -> None:
  """Raises unless `value` is a finite (integer) number >= low (> low if strict)."""
  def ok(v):
    if isinstance(v, bool) or not isinstance(v, (int, float)):
      return False
    if integer and not float(v).is_integer():
      return False
    if not -_FLOAT32_MAX <= v <= _FLOAT32_MAX:  # also false for NaN.
      return False
    return v > low if strict else v >= low
  _check(where, value, what, ok)


def validate(config: ml_collections.ConfigDict) -> None:
  """Checks the ranges of the config's numeric fields, before anything runs.

  One place for what `default_config` documents: the main job calls it
  before it writes a file. Names (model, layer, units, classes) are checked
  where they are resolved, against the model.

  Raises:
    ValueError: one line naming the field, what is valid and the value given.
  """
  c = config
  _number("config.steps", c.steps, "an integer >= 1 (Adam steps per unit)", 1, integer=True)
  _number("config.chunk_size", c.chunk_size,
          "an integer >= 0 (units optimised together; 0 = all)", 0, integer=True)
  _number("config.init_scale", c.init_scale,
          "a finite number > 0 (initial noise RMS in units of V)", 0, strict=True)
  _number("config.redirect_relu_steps", c.get("redirect_relu_steps", 0),
          "an integer >= 0 (0 = off)", 0, integer=True)
  _number("config.progress_every", c.get("progress_every", 10.0),
          "a finite number >= 0 (seconds between progress lines; 0 = off)", 0)
  _number("config.seed", c.seed, "an integer >= 0", 0, integer=True)
  opt = c.optimizer
  _number("config.optimizer.learning_rate", opt.learning_rate,
          "a finite number > 0 (in units of the bound B; the paper's is 0.05)", 0, strict=True)
  _number("config.optimizer.final_fraction", opt.final_fraction,
          "a finite number >= 0 (last learning rate / learning_rate)", 0)
  for name in ("b1", "b2"):
    _check(f"config.optimizer.{name}", opt[name], "a number in [0, 1) (Adam's decay rate)",
           lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v < 1)
  obj = c.objective
  if obj.a_hat is not None:
    _number("config.objective.a_hat", obj.a_hat,
            "a finite number > 0 (the unit's max activation on data; 1 = none given)",
            0, strict=True)
  _number("config.objective.other_weight", obj.get("other_weight", 1.0),
          "a finite number >= 0 (the weight of the subtracted unit)", 0)
  # objective.diversity / .samples: plan.samples_from_config (they depend on each other).
  reg = c.regularizer
  _number("config.regularizer.bound", reg.bound, "a finite number > 0 (B, 8-bit levels)",
          0, strict=True)
  _number("config.regularizer.energy_norm", reg.energy_norm, "a finite number > 0", 0,
          strict=True)
  _number("config.regularizer.v_ratio", reg.v_ratio, "a finite number > 0 (V = B / v_ratio)",
          0, strict=True)
  _number("config.regularizer.alpha", reg.alpha, "a finite number > 0 (the energy exponent)",
          0, strict=True)
  for name in ("energy_weight", "tv_weight", "flow_tv_factor", "jitter_fraction"):
    _number(f"config.regularizer.{name}", reg[name], "a finite number >= 0", 0)
  for stream in ("rgb", "flow"):
    for name in ("kappa", "gamma"):
      if stream in reg and name in reg[stream]:
        _number(f"config.regularizer.{stream}.{name}", reg[stream][name],
                f"a finite number >= 0 (the {name} of the TV regulariser)", 0)
  for g in c.gammas or ():
    _number("config.gammas", g, "finite numbers >= 0 (temporal TV weights)", 0)
  quality = c.get("quality", None) or {}
  _number("config.quality.transforms", quality.get("transforms", 16),
          "an integer >= 0 (seeded evaluation transforms; 0 = no quality measures)", 0,
          integer=True)
  insight = c.get("insight", None) or {}
  _number("config.insight.num_clips", insight.get("num_clips", 96),
          "an integer >= 1 (natural clips drawn for the insight analyses)", 1, integer=True)
  _number("config.insight.top_k", insight.get("top_k", 8),
          "an integer >= 2 (top natural clips per unit; the sanity check compares them "
          "with each other)", 2, integer=True)
  _number("config.insight.accentuate_weight", insight.get("accentuate_weight", 1.0),
          "a finite number >= 0 (the pull toward the seed clip)", 0)
  sweep = c.get("sweep", None) or {}
  _number("config.sweep.memory_budget_gb", sweep.get("memory_budget_gb", 0.0),
          "a finite number >= 0 (GB per device; 0 = off)", 0)
  for name, entry in (c.get("targets", None) or {}).items():
    entry = dict(entry)
    if entry.get("a_hat") is not None:
      _number(f"config.targets.{name}.a_hat", entry["a_hat"],
              "a finite number > 0 (the unit's max activation on data)", 0, strict=True)
  transforms = c.get("transforms", "jitter")
  if not isinstance(transforms, str):
    raise ValueError(f"config.transforms must be a string like 'jitter, pad(4)', "
                     f"got {transforms!r}")
  from stviz_jax import transforms as transforms_lib  # pylint: disable=g-import-not-at-top
  transforms_lib.parse(transforms, 1)  # Raises one line naming config.transforms.
