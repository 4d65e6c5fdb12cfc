"""a_hat_{l,c}, the maximum activation of each unit on validation data, read
from the statistics file `python -m stviz_jax.stats` writes (`DIR/stats.npz`,
arrays `<layer>/a_hat`). The objective divides by it (the paper's
normalisation); `config.objective.a_hat_from` names the file.

Its own module so the plan can read a_hat without importing the statistics
program (`python -m stviz_jax.stats` must not find itself imported already).
"""

from __future__ import annotations

import os

from absl import logging
import numpy as np

from stviz_jax import files


def check_stats_file(path: str) -> str:
  if not os.path.isfile(path):
    raise FileNotFoundError(f"statistics file {path!r} does not exist; compute it with "
                            "`python -m stviz_jax.stats --config=... --workdir=DIR` "
                            "(writes DIR/stats.npz)")
  return path


def load_a_hat(path: str, layer: str, num_units: int | None = None) -> np.ndarray:
  """a_hat_{l,c} of every unit of `layer` from a statistics file, `(U,)` float32.

  Units that never fired on the data (a_hat <= 0) cannot normalise; they get 1
  (the paper's fallback when no a_hat is known) and a warning.

  Raises:
    ValueError: the file has no a_hat for `layer` (lists the layers it has),
      or a different number of units than the model's layer.
  """
  with files.load_npz(check_stats_file(path)) as f:
    key = f"{layer}/a_hat"
    if key not in f.files:
      have = sorted(k.rsplit("/", 1)[0] for k in f.files if k.endswith("/a_hat"))
      raise ValueError(f"{path}: no a_hat for layer {layer!r}; layers in the file: "
                       f"{', '.join(have) or 'none'}")
    a_hat = np.asarray(f[key], np.float32)
  if a_hat.ndim != 1 or (num_units is not None and a_hat.shape[0] != num_units):
    raise ValueError(f"{path}: layer {layer!r} has a_hat for {a_hat.shape} units, the "
                     f"model's layer has {num_units}; were the statistics computed "
                     "for another model?")
  if not np.all(np.isfinite(a_hat)):
    bad = np.nonzero(~np.isfinite(a_hat))[0][:10].tolist()
    raise ValueError(f"{path}: layer {layer!r} unit(s) {bad} have no finite a_hat")
  dead = np.nonzero(a_hat <= 0)[0]
  if dead.size:
    logging.warning("%s: layer %s units %s never activated on the data (a_hat <= 0); "
                    "using a_hat = 1 for them", path, layer, dead[:20].tolist())
    a_hat = np.where(a_hat > 0, a_hat, 1.0).astype(np.float32)
  return a_hat
