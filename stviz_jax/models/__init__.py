"""Models: the `Model` abstraction, the registry and `wrap` for your own modules."""

from stviz_jax.models.base import (LOGITS, LayerGeometry, Model, ModelSpec,
                                   StreamSpec, example_inputs, wrap)
from stviz_jax.models.layers import redirected_relu, relu
from stviz_jax.models.registry import load, names, register


def from_torch(module, example_inputs, stream="rgb", value_range=(-1.0, 1.0), **kwargs):
  """A PyTorch `nn.Module` as a `Model`: `stviz_jax.models.torch_graph.from_torch`.

  Imported on first use (it needs torch, an optional extra, and orbax).
  """
  from stviz_jax.models import torch_graph  # pylint: disable=import-outside-toplevel
  return torch_graph.from_torch(module, example_inputs, stream, value_range, **kwargs)


def two_stream(appearance, motion, **kwargs):
  """Late fusion of two converted towers: `stviz_jax.models.converted.two_stream`."""
  from stviz_jax.models import converted  # pylint: disable=import-outside-toplevel
  return converted.two_stream(appearance, motion, **kwargs)


__all__ = ["LOGITS", "LayerGeometry", "Model", "ModelSpec", "StreamSpec",
           "example_inputs", "from_torch", "load", "names", "redirected_relu",
           "register", "relu", "two_stream", "wrap"]
