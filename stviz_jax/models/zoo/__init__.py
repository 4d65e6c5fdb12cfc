"""The model zoo: one file per architecture, each registering itself."""

from stviz_jax.models.zoo import tiny_two_stream  # noqa: F401
