"""Models chosen by name: `load(name, **overrides)`, `names()`, `register`."""

from __future__ import annotations

import difflib
import inspect
from typing import Callable

_FACTORIES: dict[str, Callable] = {}


def register(name: str):
  """Decorator: registers `factory(**overrides) -> Model` under `name`."""

  def deco(factory):
    if name in _FACTORIES:
      raise ValueError(f"model {name!r} registered twice")
    _FACTORIES[name] = factory
    return factory

  return deco


def names() -> list[str]:
  """Registered model names, sorted."""
  _import_zoo()
  return sorted(_FACTORIES)


def load(name: str, **overrides):
  """Builds the registered model `name` (random weights unless `weights=` is given)."""
  _import_zoo()
  if name not in _FACTORIES:
    close = difflib.get_close_matches(str(name), _FACTORIES, n=3)
    raise ValueError(f"unknown model {name!r}"
                     + (f"; did you mean {', '.join(map(repr, close))}?" if close else "")
                     + f"; available: {', '.join(sorted(_FACTORIES))}")
  factory = _FACTORIES[name]
  try:  # a misspelt or unknown factory argument is bad input, not a crash inside.
    inspect.signature(factory).bind(**overrides)
  except TypeError as e:
    params = ", ".join(inspect.signature(factory).parameters)
    raise ValueError(f"model {name!r}: {e}; its arguments: {params}") from None
  return factory(**overrides)


def _import_zoo():
  # Importing the zoo package registers every architecture file in it.
  from stviz_jax.models import zoo  # noqa: F401
