"""Data for visualisation experiments: synthetic clips with known answers."""

from stviz_jax.data import synthetic

__all__ = ["synthetic"]
