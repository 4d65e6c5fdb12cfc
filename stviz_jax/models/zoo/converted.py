"""`converted`: a layer graph converted from another framework, read from its
weights directory (`stviz_jax.models.converted`; e.g. `python -m
converters.torch_graph ... --out DIR`, then `--config.model=converted
--config.weights=DIR` in the main job)."""

from __future__ import annotations

from stviz_jax.models import converted as converted_lib
from stviz_jax.models.registry import register


@register("converted")
def converted(weights: str = "", name: str | None = None):
  """The model saved in weights directory `weights` (graph and weights)."""
  if not weights:
    raise ValueError("model 'converted' needs weights=DIR, a directory written by a "
                     "converter (python -m converters.torch_graph --help)")
  return converted_lib.load(weights, name=name)
