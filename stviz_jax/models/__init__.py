"""Models: the `Model` abstraction, the registry and `wrap` for your own modules."""

from stviz_jax.models.base import (LOGITS, LayerGeometry, Model, ModelSpec,
                                   StreamSpec, example_inputs, wrap)
from stviz_jax.models.layers import redirected_relu, relu
from stviz_jax.models.registry import load, names, register

__all__ = ["LOGITS", "LayerGeometry", "Model", "ModelSpec", "StreamSpec",
           "example_inputs", "load", "names", "redirected_relu", "register",
           "relu", "wrap"]
