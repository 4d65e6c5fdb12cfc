"""`Result`: the optimised inputs of a set of units of one layer, and its file
(the schema is `stviz_jax.layout.result_arrays`)."""

from __future__ import annotations

import dataclasses
import json

import ml_collections
import numpy as np

from stviz_jax import files, layout


@dataclasses.dataclass
class Result:
  """Optimised inputs of a set of units of one layer.

  Attributes:
    layer: the visualised layer.
    units: `(U,)` unit indices.
    inputs: stream -> `(U, T, H, W, C)` optimised inputs, in model input units.
    activations: `(U,)` the normalised target term at the end (centre crop).
    history: name -> `(U, steps)`: 'objective', 'activation' per step.
    a_hat_given: whether a_hat came from validation data (else 1).
    seed: the seed.
    settings: regularisation values used, e.g. {'flow': (kappa, gamma)}.
    attribution: stream -> `(U, T, H, W)` MACO's transparency map in [0, 1]
      (the input gradient accumulated during the optimisation, the model's
      frame; `config.insight.attribution`), or None when not computed.
    class_names: the model's class names when `layer` is 'logits' (labels the
      display; not saved in the file).
  """

  layer: str
  units: np.ndarray
  inputs: dict[str, np.ndarray]
  activations: np.ndarray
  history: dict[str, np.ndarray]
  a_hat_given: bool
  seed: int
  settings: dict[str, tuple[float, float]] = dataclasses.field(default_factory=dict)
  attribution: dict[str, np.ndarray] | None = None
  class_names: tuple[str, ...] | None = dataclasses.field(default=None, repr=False,
                                                          compare=False)

  def save(self, path: str, config: ml_collections.ConfigDict | None = None,
           weights: str = "") -> None:
    """Writes an `.npz` atomically (temporary name, then rename).

    `config` and `weights` (a digest of the model's variables) are recorded so a
    resumed run can tell whether the file belongs to the same run and weights.
    """
    files.savez(path, layout.result_arrays(
        layer=self.layer, units=self.units, inputs=self.inputs, activations=self.activations,
        history=self.history, a_hat_given=self.a_hat_given, seed=self.seed,
        settings=self.settings, attribution=self.attribution,
        config=json.loads(config.to_json()) if config is not None else None, weights=weights))

  def _repr_html_(self) -> str:
    """Jupyter / Colab display: the clips playing, labelled (`stviz_jax.notebook.show`)."""
    from stviz_jax import notebook  # rendering needs imageio; a Result alone does not.
    return notebook.show(self)._repr_html_()

  @classmethod
  def load(cls, path: str) -> "Result":
    """The Result `save` wrote (schema: `layout.result_arrays`)."""
    r = layout.read_result(path)
    return cls(layer=r["layer"], units=r["units"], inputs=r["inputs"],
               activations=r["activations"], history=r["history"],
               a_hat_given=r["a_hat_given"], seed=r["seed"], settings=r["settings"],
               attribution=r["attribution"])
