"""The work directory of a run: every file and folder name, written once.

The job writes through these names and the gallery reads through them, so
renaming an output changes both. NumPy only (no JAX): the gallery and other
readers import it cheaply.

    WORKDIR/
      config.json, summary.json                      (CONFIG_FILE, SUMMARY_FILE)
      [host_<k>/]<target>/                           (host_dir, target_dir)
        grid.png, samples_grid.png, sweep_state/     (GRID_FILE, ..., SWEEP_STATE_DIR)
        <setting>/                                   (setting_name)
          result.npz                                 (RESULT_FILE)
          unit_0003.npz, unit_0003_<stream>.png ...  (unit_file)
          unit_0003_samples.npz, unit_0003_sample1_<stream>.gif   (samples_file, sample_stem)
          unit_0003_attribution_<stream>.gif, unit_0003_accentuated2_<stream>.gif
                                                     (attribution_stem, accentuated_stem)
          motion.csv, motion_histogram.png           (MOTION_TABLE_FILE, ...)
      gallery/                                       (GALLERY_DIR)

A setting is named after the temporal regularisation of the stream it acts on
(the flow stream of a two-stream net, else the first clip stream given):
`kappa1_gamma10`. The gallery reads kappa and gamma back from the name for
labels and order, so one representation travels from the job to the page.
"""

from __future__ import annotations

import json
import re
import zipfile
from typing import Any, Mapping, Sequence

import numpy as np

from stviz_jax import files

CONFIG_FILE = "config.json"
SUMMARY_FILE = "summary.json"
RESULT_FILE = "result.npz"
GRID_FILE = "grid.png"
SAMPLES_GRID_FILE = "samples_grid.png"
SWEEP_STATE_DIR = "sweep_state"
GALLERY_DIR = "gallery"
DEFAULT_SETTING = "default"  # a run without a temporal setting (one-frame streams, no gammas).

_HOST = re.compile(r"host_(\d+)")
_UNIT = re.compile(r"unit_(\d+)[_.]")
_SETTING = re.compile(r"kappa(?P<kappa>[-+.\deE]+)_gamma(?P<gamma>[-+.\deE]+)")


# --- folders -------------------------------------------------------------------

def target_dir(target: str) -> str:
  """Folder of a target (its name, or its layer for the single target): '/' -> '_'."""
  return target.replace("/", "_")


def host_dir(process_index: int) -> str:
  """Folder of one host's share of a multi-host sweep."""
  return f"host_{int(process_index)}"


def is_host_dir(name: str) -> bool:
  return _HOST.fullmatch(name) is not None


# --- files of a unit ---------------------------------------------------------------

def unit_file(unit: int, suffix: str = "") -> str:
  """'unit_0003' + suffix: '.npz' (its arrays), '_rgb' (media stem), '.html' (its page)."""
  return f"unit_{int(unit):04d}{suffix}"


def unit_arrays(inputs: Mapping[str, np.ndarray], activation: float, unit: int, seed: int,
                config_json: str) -> dict[str, np.ndarray]:
  """What `unit_file(unit, '.npz')` holds: `inputs_<stream>` (one unit's
  optimised input), `activation`, `unit`, `seed` and the run's `config` (JSON)."""
  arrays = {f"inputs_{k}": np.asarray(v) for k, v in inputs.items()}
  arrays.update(activation=np.float32(activation), unit=np.int32(unit), seed=np.int32(seed),
                config=np.asarray(config_json))
  return arrays


def result_arrays(*, layer: str, units, inputs: Mapping[str, np.ndarray], activations,
                  history: Mapping[str, np.ndarray], a_hat_given: bool, seed: int,
                  settings: Mapping[str, Sequence[float]], config: dict | None = None,
                  weights: str = "",
                  attribution: Mapping[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
  """What `RESULT_FILE` (and a unit's `samples_file`) holds: `inputs_<stream>`
  (U, T, H, W, C), `history_<name>` (U, steps), `units`, `activations` and
  `meta` (JSON: layer, a_hat_given, seed, settings, the run's config and a
  digest of the weights); optionally `attribution_<stream>` (U, T, H, W), the
  transparency maps of `config.insight.attribution` (absent when not computed)."""
  arrays = {f"inputs_{k}": np.asarray(v) for k, v in inputs.items()}
  arrays.update({f"attribution_{k}": np.asarray(v, np.float32)
                 for k, v in (attribution or {}).items()})
  arrays.update({f"history_{k}": np.asarray(v) for k, v in history.items()})
  meta = dict(layer=layer, a_hat_given=bool(a_hat_given), seed=int(seed),
              settings={k: [float(x) for x in v] for k, v in settings.items()},
              config=config, weights=weights)
  arrays.update(units=np.asarray(units), activations=np.asarray(activations),
                meta=np.asarray(json.dumps(meta)))
  return arrays


def read_result(path: str, inputs: bool = True) -> dict[str, Any]:
  """The fields of `result_arrays` from `path`; without `inputs` (they can be
  large) `input_shapes` gives each stream's per-unit shape instead.
  `attribution` is `{stream: (U, T, H, W)}` or None (a file without maps); it
  is read with the inputs (without them, `attribution_shapes` gives its
  per-unit shapes, `{}` for none).

  Raises:
    ValueError: naming `path` when it is not a readable result.
  """
  try:
    shapes = npz_shapes(path)
    with files.load_npz(path) as f:
      meta = json.loads(str(f["meta"]))
      out = dict(
          layer=meta["layer"], units=np.asarray(f["units"]), activations=f["activations"],
          history={k[len("history_"):]: f[k] for k in f.files if k.startswith("history_")},
          a_hat_given=bool(meta.get("a_hat_given", False)), seed=int(meta["seed"]),
          settings={k: tuple(v) for k, v in meta.get("settings", {}).items()},
          config=meta.get("config"), weights=meta.get("weights", ""),
          input_shapes={k[len("inputs_"):]: tuple(s[1:]) for k, s in shapes.items()
                        if k.startswith("inputs_")})
      out["attribution_shapes"] = {k[len("attribution_"):]: tuple(s[1:])
                                   for k, s in shapes.items() if k.startswith("attribution_")}
      if inputs:
        out["inputs"] = {k[len("inputs_"):]: f[k] for k in f.files if k.startswith("inputs_")}
        out["attribution"] = {k[len("attribution_"):]: f[k] for k in f.files
                              if k.startswith("attribution_")} or None
  except (OSError, KeyError, ValueError, zipfile.BadZipFile) as e:
    raise ValueError(f"{path}: not a readable stviz_jax result ({e})") from e
  return out


def npz_shapes(path: str) -> dict[str, tuple[int, ...]]:
  """Array shapes inside an `.npz` without reading the arrays."""
  shapes = {}
  with zipfile.ZipFile(path) as z:
    for name in z.namelist():
      with z.open(name) as f:
        version = np.lib.format.read_magic(f)
        reader = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                  else np.lib.format.read_array_header_2_0)
        shapes[name[:-4] if name.endswith(".npy") else name] = reader(f)[0]
  return shapes


def samples_file(unit: int) -> str:
  """The K diverse samples of a unit, one `.npz` beside its result."""
  return unit_file(unit, "_samples.npz")


def sample_stem(unit: int, k: int, view: str) -> str:
  """Media stem of the unit's k-th diverse sample (k = 0: the unit's own media)."""
  return unit_file(unit, f"_sample{int(k)}_{view}" if k else f"_{view}")


def attribution_stem(unit: int, stream: str) -> str:
  """Media stem of the unit's space-time attribution overlay of one stream."""
  return unit_file(unit, f"_attribution_{stream}")


def accentuated_stem(unit: int, clip: int, stream: str) -> str:
  """Media stem of natural clip `clip` and its accentuation toward the unit, side by side."""
  return unit_file(unit, f"_accentuated{int(clip)}_{stream}")


MOTION_TABLE_FILE = "motion.csv"            # per setting: one line per unit (insight.motion).
MOTION_HISTOGRAM_FILE = "motion_histogram.png"


def unit_of_file(name: str) -> int | None:
  """The unit a file `unit_0003...` belongs to (None for other files)."""
  m = _UNIT.match(name)
  return int(m.group(1)) if m else None


# --- settings -----------------------------------------------------------------------

def temporal_setting(settings: Mapping[str, Sequence[float]]) -> tuple[float, float] | None:
  """(kappa, gamma) of the stream the setting is about: 'flow', else the first given."""
  kg = settings.get("flow") or next(iter(settings.values()), None)
  return None if kg is None else (float(kg[0]), float(kg[1]))


def setting_name(settings: Mapping[str, Sequence[float]]) -> str:
  """'kappa1_gamma10' (`temporal_setting`), or 'default'."""
  kg = temporal_setting(settings)
  return DEFAULT_SETTING if kg is None else f"kappa{kg[0]:g}_gamma{kg[1]:g}"


def parse_setting(name: str) -> tuple[float, float] | None:
  """(kappa, gamma) from a setting folder's name; None for other names."""
  m = _SETTING.fullmatch(name)
  if not m:
    return None
  try:
    return float(m.group("kappa")), float(m.group("gamma"))
  except ValueError:
    return None


def setting_label(name: str, plain: bool = False) -> str:
  """'κ=1, γ=10' (or, `plain`, 'kappa=1 gamma=10') for a setting name; else the name."""
  kg = parse_setting(name)
  if kg is None:
    return name
  k, g = (f"{v:g}" for v in kg)
  return f"kappa={k} gamma={g}" if plain else f"κ={k}, γ={g}"


def setting_order(name: str) -> tuple:
  """Sort key: by kappa, then gamma, numerically (gamma 5 before gamma 10);
  names that are not settings after them, alphabetically."""
  kg = parse_setting(name)
  return (0, kg[0], kg[1], name) if kg else (1, 0.0, 0.0, name)
