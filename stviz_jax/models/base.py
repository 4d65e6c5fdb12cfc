"""The model abstraction: a forward function, its variables and a spec.

A `Model` never hides its weights: `Model.apply(variables, inputs)` is a pure
function, so the objective built on it can be `jit`-ed, `vmap`-ped and
differentiated with the weights as an ordinary argument (house style 4).

Forward contract (big_vision style): `apply(variables, inputs)` returns
`(logits, features)` where `inputs` is a dict keyed by stream name with arrays
`(N, T, H, W, C)` and `features` maps every tap-able layer name to a
channels-last array `(N, ..., C)`. Under `jit`, whatever the caller does not use
is pruned, so asking for an early layer only computes up to that layer.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
from typing import Any, Callable, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from stviz_jax.models import receptive_field as rf_lib
from stviz_jax.models.specs import LOGITS, LayerGeometry, StreamSpec, example_inputs

PyTree = Any


class ModelSpec:
  """Input streams, ordered tap-able layers and their geometry.

  Geometry (receptive field, stride) is measured from the network itself the
  first time a layer is asked for and cached, so a wrapped model needs no
  hand-written table.
  """

  def __init__(self, streams: Mapping[str, StreamSpec], layers: Sequence[str],
               feature_shapes: Mapping[str, tuple[int, ...]],
               measure: Callable[[str], LayerGeometry] | None = None,
               geometry: Mapping[str, LayerGeometry] | None = None):
    self.streams = dict(streams)
    self.layers = tuple(layers)
    self._feature_shapes = dict(feature_shapes)
    self._measure = measure
    self._geometry = dict(geometry or {})

  def check_layer(self, layer: str) -> None:
    if layer not in self._feature_shapes:
      raise ValueError(
          f"unknown layer {layer!r}; valid layers: {', '.join(self.layers)}")

  def feature_shape(self, layer: str) -> tuple[int, ...]:
    """Shape of one example's features at `layer` (batch axis dropped)."""
    self.check_layer(layer)
    return self._feature_shapes[layer]

  def num_units(self, layer: str) -> int:
    """Number of channels (units) of `layer`."""
    return self.feature_shape(layer)[-1]

  def check_units(self, layer: str, units: Sequence[int]) -> None:
    n = self.num_units(layer)
    bad = [int(u) for u in np.asarray(units).ravel() if not 0 <= int(u) < n]
    if bad:
      raise ValueError(f"unit(s) {bad} out of range for layer {layer!r}: "
                       f"valid units are 0..{n - 1}")

  def geometry(self, layer: str) -> LayerGeometry:
    self.check_layer(layer)
    if layer not in self._geometry:
      if self._measure is None:
        raise ValueError(f"no geometry known for layer {layer!r}")
      self._geometry[layer] = self._measure(layer)
    return self._geometry[layer]

  def receptive_field(self, layer: str) -> tuple[int, int]:
    """`(size, stride)`: spatial receptive field size rho_l and cumulative stride."""
    g = self.geometry(layer)
    return g.spatial_size, g.spatial_stride

  def __repr__(self) -> str:
    streams = ", ".join(f"{k}={v.shape}" for k, v in self.streams.items())
    return f"ModelSpec(streams: {streams}; {len(self.layers)} layers)"


@dataclasses.dataclass(frozen=True, eq=False)
class Model:
  """A network ready for visualisation.

  Attributes:
    apply: pure `(variables, inputs) -> (logits, features)`.
    variables: the weights (a pytree), passed explicitly to `apply`.
    spec: streams, layers and geometry.
    name: registry or user name.
    labels: optional class names for the logits.
  """

  apply: Callable[[PyTree, Mapping[str, jax.Array]], tuple[Any, dict]]
  variables: PyTree
  spec: ModelSpec
  name: str = "model"
  labels: tuple[str, ...] | None = None
  module: nn.Module | None = None

  def __call__(self, inputs: Mapping[str, jax.Array]):
    """Logits for a batch of inputs (dict stream -> `(N, T, H, W, C)`), compiled
    (run op by op, the real I3D takes ~10 s for two clips on a CPU; compiled, < 1 s)."""
    return _select_features(self.apply, self.variables, dict(inputs), (LOGITS,))[LOGITS]

  def activations(self, inputs: Mapping[str, jax.Array],
                  layers: Sequence[str]) -> dict[str, jax.Array]:
    """Features `{layer: (N, ..., C)}` for the requested layers."""
    for layer in layers:
      self.spec.check_layer(layer)
    return _select_features(self.apply, self.variables, dict(inputs), tuple(layers))

  def example_inputs(self, batch: int = 1, seed: int = 0) -> dict[str, jax.Array]:
    """Random inputs of the right shapes, in each stream's value range."""
    return example_inputs(self.spec.streams, batch, seed)

  def class_index(self, name: str) -> int:
    """The index of class `name`.

    Raises:
      ValueError: one line naming the unknown class with its close matches
        (case-insensitive, containing, difflib) or else a few valid names.
    """
    if not self.labels:
      raise ValueError(f"model {self.name!r} has no class names")
    labels = list(self.labels)
    if name in labels:
      return labels.index(name)
    close = close_matches(name, labels)
    shown = (close or labels)[:5]
    raise ValueError(f"unknown class {name!r} of model {self.name!r}; "
                     f"{'did you mean' if close else 'valid classes include'} "
                     f"{', '.join(repr(l) for l in shown)}"
                     + ("" if close or len(labels) <= 5 else f" (and {len(labels) - 5} more)"))


def close_matches(name: str, names: Sequence[str], n: int = 5) -> list[str]:
  """Names like `name`: equal ignoring case, containing it (or contained), then
  difflib's close matches; at most `n`, in that order."""
  low = str(name).strip().lower()
  names = [str(x) for x in names]
  out = [x for x in names if x.lower() == low]
  out += [x for x in names if low and (low in x.lower() or x.lower() in low)]
  lower = {x.lower(): x for x in reversed(names)}
  out += [lower[x] for x in difflib.get_close_matches(low, list(lower), n=n, cutoff=0.6)]
  return list(dict.fromkeys(out))[:n]


@functools.partial(jax.jit, static_argnums=(0, 3))
def _select_features(apply, variables, inputs, layers):
  logits, features = apply(variables, inputs)
  features = dict(features, **{LOGITS: logits})
  return {l: features[l] for l in layers}


def _flatten_intermediates(tree, prefix=()) -> dict[str, jax.Array]:
  """Flax `capture_intermediates` tree -> {'block/conv': array}."""
  out = {}
  for key, value in tree.items():
    if key == "__call__":
      if prefix:
        out["/".join(prefix)] = value[0]
    elif isinstance(value, Mapping):
      out.update(_flatten_intermediates(value, prefix + (key,)))
  return out


def _module_apply(module: nn.Module, adapt_inputs, method):
  """Turns a Flax module into the `(variables, inputs) -> (logits, features)` contract.

  A module that already returns `(logits, features_dict)` is used as is; any
  other module has every submodule output captured as a tap, named by its
  path ('block1/conv'), which is what makes `wrap` work on unmodified code.
  """

  def apply(variables, inputs):
    x = adapt_inputs(inputs)
    out, state = module.apply(variables, x, method=method,
                              capture_intermediates=True,
                              mutable=["intermediates"])
    if (isinstance(out, tuple) and len(out) == 2 and isinstance(out[1], Mapping)):
      return out
    return out, _flatten_intermediates(state["intermediates"])

  return apply


def wrap(module: nn.Module | Callable, variables: PyTree,
         streams: Mapping[str, StreamSpec | Sequence[int]], *,
         layers: Sequence[str] | None = None, name: str = "model",
         adapt_inputs: Callable[[dict], Any] | None = None,
         labels: Sequence[str] | None = None,
         geometry: Mapping[str, LayerGeometry] | None = None) -> Model:
  """Wraps your own Flax module (or pure function) as a `Model`.

  Example, an image classifier taking `(N, H, W, 3)`::

      model = stviz_jax.models.wrap(
          MyNet(), variables, {"rgb": (1, 64, 64, 3)},
          adapt_inputs=lambda inputs: inputs["rgb"][:, 0])

  Args:
    module: a `flax.linen.Module`, or a pure `(variables, inputs) -> (logits,
      features)` function. A module returning `(logits, {name: feature})` keeps
      its own tap names; otherwise every submodule output becomes a tap.
    variables: the module's variables (e.g. `{'params': ...}`).
    streams: stream name -> `StreamSpec` or a `(T, H, W, C)` shape.
    layers: the tap-able layers, in network order (default: all found).
    name: a name for messages and outputs.
    adapt_inputs: maps the input dict to what the module's `__call__` takes
      (default: the dict itself).
    labels: class names of the logits.
    geometry: known receptive fields; others are measured on demand.

  Returns:
    A `Model` whose spec is derived by tracing the module once (shapes only).
  """
  streams = {k: v if isinstance(v, StreamSpec) else StreamSpec(*v)
             for k, v in streams.items()}
  if isinstance(module, nn.Module):
    apply = _module_apply(module, adapt_inputs or (lambda x: x), None)
  else:
    apply = module
    if adapt_inputs is not None:
      apply = lambda v, x, _f=module: _f(v, adapt_inputs(x))
  dummy = {k: jax.ShapeDtypeStruct((1,) + s.shape, jnp.float32)
           for k, s in streams.items()}
  try:
    logits_shape, feature_shapes = jax.eval_shape(apply, variables, dummy)
  except Exception as e:  # surface which model/streams, not a deep trace.
    raise ValueError(f"model {name!r} does not run on inputs "
                     f"{ {k: s.shape for k, s in streams.items()} }: {e}") from e
  shapes = {k: tuple(v.shape[1:]) for k, v in feature_shapes.items()}
  if hasattr(logits_shape, "shape"):
    shapes[LOGITS] = tuple(logits_shape.shape[1:])
  found = list(feature_shapes)
  if layers is None:
    layers = found + ([LOGITS] if LOGITS in shapes else [])
  missing = [l for l in layers if l not in shapes]
  if missing:
    raise ValueError(f"model {name!r} has no layer(s) {missing}; "
                     f"its taps are: {', '.join(shapes)}")
  spec = ModelSpec(streams, layers, shapes, geometry=geometry,
                   measure=lambda layer: rf_lib.measure(apply, variables, streams, layer))
  return Model(apply=apply, variables=variables, spec=spec, name=name,
               labels=tuple(labels) if labels is not None else None,
               module=module if isinstance(module, nn.Module) else None)
