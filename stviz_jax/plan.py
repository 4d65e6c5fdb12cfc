"""The plan of a run: what the config asks for, read once and checked against
the model, before anything is computed or written.

`targets_from_config` (layer, units, objective per target), `parse_units`,
`settings_from_config` (one `{stream: (kappa, gamma)}` per gamma),
`samples_from_config`, `comparisons_from_config` (class pairs) and
`build_target` (the objective of a target). Dependencies point one way:
config -> plan -> optimize -> sweep -> job -> gallery.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Sequence

import ml_collections
import numpy as np

from stviz_jax import config as config_lib
from stviz_jax import layout, models
from stviz_jax import objective as objective_lib
from stviz_jax.a_hat import load_a_hat
from stviz_jax.models import LOGITS, Model


def _units_syntax(model: models.Model, layer: str) -> str:
  n = model.spec.num_units(layer)
  names = layer == models.LOGITS and bool(model.labels)
  return ("valid: 'all', a range '0-7', a list '1,4,9'"
          + (", class names separated by ';'" if names else "")
          + f"; units of layer {layer!r} are 0..{n - 1}")


def parse_units(spec, model: models.Model, layer: str) -> list[int]:
  """'all' | '0-7' | '1,4,9' | class names separated by ';' (for 'logits') -> indices.

  Raises:
    ValueError: one line naming the bad part, the valid syntax and range (the
      caller prefixes the field, e.g. `config.units: `).
  """
  n = model.spec.num_units(layer)
  syntax = lambda: _units_syntax(model, layer)
  if isinstance(spec, (list, tuple)):
    units = []
    for s in spec:
      units += parse_units(s, model, layer)
    if not units:
      raise ValueError(f"no units given ({spec!r}); {syntax()}")
    return units
  if isinstance(spec, bool) or not isinstance(spec, (str, int, np.integer)):
    raise ValueError(f"{spec!r} is not a unit list; {syntax()}")
  if isinstance(spec, (int, np.integer)):
    units = [int(spec)]
  else:
    spec = str(spec).strip()
    if spec == "all":
      return list(range(n))
    if not spec:
      raise ValueError(f"no units given ({spec!r}); {syntax()}")
    if re.fullmatch(r"[\d\s,\-]+", spec):
      units = []
      parts = [p.strip() for p in spec.split(",") if p.strip()]
      if not parts:
        raise ValueError(f"no units given ({spec!r}); {syntax()}")
      for part in parts:
        at = repr(part) + (f" in {spec!r}" if part != spec else "")
        single = re.fullmatch(r"\d+", part)
        span = re.fullmatch(r"(\d+)\s*-\s*(\d+)", part)
        if single:
          units.append(int(part))
        elif span:
          lo, hi = int(span.group(1)), int(span.group(2))
          if lo > hi:
            raise ValueError(f"range {at} is empty (start > end; "
                             f"did you mean '{hi}-{lo}'?); {syntax()}")
          units += list(range(lo, hi + 1))
        elif part.startswith("-") and re.fullmatch(r"-\d+", part):
          raise ValueError(f"{at} is negative; {syntax()}")
        else:
          raise ValueError(f"{at} is not a unit index or a range 'a-b'; "
                           f"{syntax()}")
    elif layer == models.LOGITS and model.labels:
      units = []
      for name in filter(None, (p.strip() for p in spec.split(";"))):
        try:
          units.append(model.class_index(name))
        except ValueError as e:
          raise ValueError(f"{e}; " + ("class names are separated by ';', not ','; "
                                       if "," in name else "") + syntax()) from None
    else:
      raise ValueError(f"{spec!r} is not a unit list"
                       + (f" (layer {layer!r} has no class names)" if layer != models.LOGITS
                          else f" (model {model.name!r} has no class names)")
                       + f"; {syntax()}")
  bad = [u for u in units if not 0 <= u < n]
  if bad:
    raise ValueError(f"unit(s) {bad}" + (f" in {spec!r}" if isinstance(spec, str) else "")
                     + f" out of range for layer {layer!r}; "
                     f"{syntax()}")
  return units


def settings_from_config(config: ml_collections.ConfigDict, streams) -> list[dict]:
  """One `{stream: (kappa, gamma)}` per requested gamma (or just the config's).

  gamma weighs temporal variation, so it applies to the motion stream of a
  two-stream network; a model without a flow stream (a 3D ConvNet on RGB
  clips such as I3D) gets it on every stream with more than one frame.
  """
  if not config.gammas:
    return [{}]
  if "flow" in streams:
    temporal = ["flow"]
  else:
    temporal = [s for s, spec in streams.items() if spec.frames > 1]
  if not temporal:
    return [{}]
  return [{s: (float(config.regularizer[s].kappa if s in config.regularizer else 1.0),
               float(g)) for s in temporal} for g in config.gammas]


TARGET_FIELDS = ("layer", "units", "kind")
TARGET_OPTIONAL = ("a_hat", "other", "steps")


@dataclasses.dataclass(frozen=True)
class Target:
  """What one part of a run visualises: `units` of `layer` under `objective`.

  `objective` is `config.objective` with the target's `kind` (and `a_hat`).
  """

  name: str
  layer: str
  units: tuple[int, ...]
  objective: ml_collections.ConfigDict
  steps: int | None = None  # Adam steps of this target (None: config.steps).

  @property
  def kind(self) -> str:
    return self.objective.kind


def targets_from_config(config: ml_collections.ConfigDict,
                        model: models.Model) -> list[Target]:
  """The run's targets, validated before anything is optimised.

  `config.targets` (a ConfigDict of named `{layer, units, kind[, a_hat,
  other, steps]}`; `other`: class or unit B of a contrast, an index or a class
  name; `steps`: this target's Adam steps, e.g. more for class units than for
  cheaper channel units)
  when non-empty, else the single target `config.layer`, `config.units`,
  `config.objective`.

  Raises:
    ValueError: naming the target and field for a missing or unknown field,
      an unknown layer (listing the valid ones), objective kind or unit.
  """
  config = config_lib.complete(config)
  entries = config.targets
  if isinstance(entries, (list, tuple)):  # a list of entries: named by position and layer.
    entries = {f"{i}_{dict(e).get('layer', '')}": e for i, e in enumerate(entries)}
  explicit = bool(entries)
  if not explicit:
    entries = {config.layer: dict(layer=config.layer, units=config.units,
                                  kind=config.objective.kind)}
  targets = []
  for name, entry in entries.items():
    entry = dict(entry)
    where = f"config.targets.{name}" if explicit else "config"
    unknown = sorted(set(entry) - set(TARGET_FIELDS) - set(TARGET_OPTIONAL))
    missing = [f for f in TARGET_FIELDS if f not in entry]
    if unknown or missing:
      raise ValueError(
          f"{where}: " + "; ".join(
              ([f"unknown field(s) {unknown}"] if unknown else [])
              + ([f"missing field(s) {missing}"] if missing else []))
          + f"; valid fields: {', '.join(TARGET_FIELDS + TARGET_OPTIONAL)}")
    layer = entry["layer"]
    try:
      model.spec.check_layer(layer)
    except ValueError as e:
      raise ValueError(f"{where}.layer: {e}") from None
    try:
      units = parse_units(entry["units"], model, layer)
    except ValueError as e:
      raise ValueError(f"{where}.units: {e}") from None
    objective = ml_collections.ConfigDict(config.objective.to_dict())
    objective.kind = entry["kind"]
    if "a_hat" in entry:
      objective.a_hat = float(entry["a_hat"])
    if "other" in entry:
      try:
        objective.other = class_or_index(entry["other"], model, layer)
      except ValueError as e:
        raise ValueError(f"{where}.other: {e}") from None
    if objective.kind == "class_logit" and layer != models.LOGITS:
      raise ValueError(f"{where}: kind 'class_logit' needs layer {models.LOGITS!r}, "
                       f"not {layer!r}")
    try:
      build_target(model, layer, objective)
    except ValueError as e:  # its messages name the objective.* field at fault.
      raise ValueError(f"{where}: {e}") from None
    steps = None
    if "steps" in entry:
      steps = entry["steps"]
      if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1:
        raise ValueError(f"{where}.steps must be an integer >= 1 (Adam steps of this "
                         f"target), got {steps!r}")
      steps = int(steps)
    targets.append(Target(str(name), layer, tuple(units), objective, steps))
  dirs = [layout.target_dir(t.name) for t in targets]
  if len(set(dirs)) != len(dirs):
    raise ValueError(f"config.targets: names {dirs} collide as directory names")
  return targets


def class_or_index(spec, model: models.Model, layer: str = models.LOGITS) -> int:
  """A unit of `layer` given as an index or (for 'logits') a class name.

  Raises:
    ValueError: one line naming the bad class and a few valid names.
  """
  if isinstance(spec, (int, np.integer)) or re.fullmatch(r"\s*-?\d+\s*", str(spec)):
    unit, n = int(spec), model.spec.num_units(layer)
    if not 0 <= unit < n:
      raise ValueError(f"unit(s) [{unit}] out of range for layer {layer!r}: "
                       f"valid units are 0..{n - 1}")
    return unit
  name = str(spec).strip()
  labels = list(model.labels or ()) if layer == models.LOGITS else []
  if not labels:
    raise ValueError(f"{name!r} is not a unit index of layer {layer!r}"
                     + ("" if layer != models.LOGITS else
                        f" and model {model.name!r} has no class names")
                     + f" (units are 0..{model.spec.num_units(layer) - 1})")
  return model.class_index(name)


def samples_from_config(config: ml_collections.ConfigDict, model: models.Model) -> int:
  """K diverse samples per unit (0: plain runs), validated.

  Raises:
    ValueError: naming `config.objective.diversity` / `.samples` /
      `.diversity_layer` (listing the valid layers).
  """
  config = config_lib.complete(config)
  w = float(config.objective.diversity or 0.0)
  if not np.isfinite(w) or w < 0:
    raise ValueError(f"config.objective.diversity must be >= 0 (the diversity weight), got {w}")
  if w == 0:
    return 0
  k = int(config.objective.samples)
  if k < 2:
    raise ValueError(f"config.objective.samples must be >= 2 when config.objective.diversity "
                     f"> 0 (K diverse samples per unit), got {k}")
  layer = config.objective.diversity_layer
  if layer:
    try:
      model.spec.check_layer(layer)
    except ValueError as e:
      raise ValueError(f"config.objective.diversity_layer: {e}") from None
  return k


def comparisons_from_config(config: ml_collections.ConfigDict, model: models.Model,
                            targets: Sequence[Target]) -> list[dict]:
  """`config.gallery.compare` ("A:B; C:D", names or indices) as class-unit pairs.

  Each class of a pair must be a unit of a `class_logit` target on 'logits'
  (its visualisation is what the page shows).

  Returns:
    `[{"a": int, "b": int, "names": [name_a, name_b]}, ...]`, in order, repeats dropped.

  Raises:
    ValueError: naming `config.gallery.compare` for a malformed pair, an unknown
      class (with a few valid names) or a class no target visualises.
  """
  config = config_lib.complete(config)
  spec = config.gallery.compare or ""
  where = "config.gallery.compare"
  if isinstance(spec, str):
    pairs = [p.strip() for p in re.split(r"[;,]", spec) if p.strip()]
  else:
    pairs = list(spec)
  class_units = {u for t in targets if t.layer == models.LOGITS and t.kind == "class_logit"
                 for u in t.units}
  out, seen = [], set()
  for pair in pairs:
    sides = pair.split(":") if isinstance(pair, str) else list(pair)
    if len(sides) != 2 or not all(str(x).strip() for x in sides):
      raise ValueError(f"{where}: {pair!r} is not a pair 'A:B' (class names or indices; "
                       "pairs separated by ';')")
    ab = []
    for side in sides:
      try:
        ab.append(class_or_index(side, model))
      except ValueError as e:
        raise ValueError(f"{where}: {e}") from None
    for u, side in zip(ab, sides):
      if u not in class_units:
        raise ValueError(
            f"{where}: class {str(side).strip()!r} (unit {u}) is not visualised in this run; "
            f"add it to the units of a class_logit target on {models.LOGITS!r} "
            f"(visualised: {sorted(class_units) or 'none'})")
    if ab[0] == ab[1]:
      raise ValueError(f"{where}: {pair!r} compares class {ab[0]} with itself")
    if tuple(ab) not in seen:
      seen.add(tuple(ab))
      names = [model.labels[u] if model.labels else str(u) for u in ab]
      out.append({"a": ab[0], "b": ab[1], "names": names})
  return out


def build_target(model: Model, layer: str,
                 cfg: ml_collections.ConfigDict) -> objective_lib.Objective:
  """The activation term named by `cfg.kind` for `layer`.

  a_hat is `cfg.a_hat`, or per unit from the statistics file `cfg.a_hat_from`
  (`stviz_jax.a_hat.load_a_hat`; the class logits are the layer 'logits').
  """
  cfg = config_lib.complete(cfg, config_lib.default_config().objective)
  kind = cfg.kind
  a_hat = cfg.a_hat
  if cfg.a_hat_from:
    try:
      a_hat = load_a_hat(cfg.a_hat_from, layer, model.spec.num_units(layer))
    except ValueError as e:
      raise ValueError(f"objective.a_hat_from: {e}") from None
  if kind in _MORE_KINDS or (kind == "neuron" and cfg.location):
    return _more_targets(model, layer, cfg, a_hat)
  if kind == "channel":
    rho, _ = model.spec.receptive_field(layer)
    return objective_lib.channel(layer, rho=rho, a_hat=a_hat)
  if kind == "neuron":
    return objective_lib.neuron(layer, a_hat=a_hat)
  if kind == "class_logit":
    return objective_lib.class_logit(a_hat=a_hat, score=cfg.class_score)
  raise ValueError(f"unknown objective.kind {kind!r}; valid: channel, neuron, class_logit, "
                   f"{', '.join(_MORE_KINDS)}")


_MORE_KINDS = ("direction", "channel_interaction", "class_contrast")


def _more_targets(model: Model, layer: str, cfg: ml_collections.ConfigDict,
                  a_hat) -> objective_lib.Objective:
  """Lucid-style targets (`objective.direction`, ...) and `neuron` at `cfg.location`."""
  kind = cfg.kind
  rho, _ = model.spec.receptive_field(layer)
  if kind == "neuron":
    return objective_lib.neuron(layer, tuple(cfg.location), a_hat=a_hat)
  if kind == "direction":
    if not len(cfg.direction or ()):
      raise ValueError("objective.kind 'direction' needs objective.direction (a vector "
                       f"of {model.spec.num_units(layer)} channel weights of layer {layer!r})")
    return objective_lib.direction(layer, cfg.direction, rho=rho, a_hat=a_hat)
  other = cfg.other
  if other < 0:
    raise ValueError(f"objective.kind {kind!r} needs objective.other (the unit or class "
                     f"of {layer!r} to suppress)")
  model.spec.check_units(layer, [other])
  if kind == "channel_interaction":
    return objective_lib.channel_interaction(layer, other, cfg.other_weight,
                                             rho=rho, a_hat=a_hat)
  if layer != LOGITS:
    raise ValueError(f"objective.kind 'class_contrast' needs layer {LOGITS!r}, got {layer!r}")
  return objective_lib.class_contrast(other, cfg.other_weight, a_hat=a_hat)


def a_hat_given(config: ml_collections.ConfigDict) -> bool:
  """Whether a_hat comes from data (a statistics file or a value other than 1)."""
  objective = config_lib.complete(config).objective
  return bool(objective.a_hat_from) or objective.a_hat not in (None, 1.0)
