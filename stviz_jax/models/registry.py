"""Models chosen by name: `load(name, **overrides)`, `names()`, `register`."""

from __future__ import annotations

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
    raise ValueError(f"unknown model {name!r}; available: {', '.join(sorted(_FACTORIES))}")
  return _FACTORIES[name](**overrides)


def _import_zoo():
  # Importing the zoo package registers every architecture file in it.
  from stviz_jax.models import zoo  # noqa: F401
