"""Building blocks shared by the model zoo.

`relu` is the one activation every zoo model uses. Inside
`redirected_relu(flag)` its gradient is redirected (Olah et al. 2017, Lucid):
where the ordinary ReLU gradient of an example is zero everywhere, gradient
that would push a negative pre-activation up is let through, so units that
never fire at initialisation still receive a signal. `flag` is a traced
boolean, so switching redirection off after a few optimisation steps does not
recompile anything.

`Conv` is `flax.linen.Conv` computing with `conv.conv_general_dilated`, which
inside `conv.cpu_rewrites()` takes the forms XLA:CPU runs fast (see
`stviz_jax.models.conv`).

Inside `only_channel(layer, c)` the convolution producing `layer` computes
only output channel c (a traced index) and leaves the others zero: when an
objective reads one channel of a layer, the other C - 1 channels of its last
convolution are wasted work (VGG-16 conv4_3: 13% of a step's FLOPs). Zoo
layer graphs get their convolution function from `conv_for(layer)`.

Inside `straight_through_relu()` the gradient of `relu` is the identity; the
receptive-field measurement uses it so that units dead at a random input still
reveal which input pixels they are connected to.
"""

from __future__ import annotations

import contextlib
import contextvars

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from stviz_jax.models import conv as conv_lib

_REDIRECT = contextvars.ContextVar("stviz_redirect_relu", default=None)


@contextlib.contextmanager
def redirected_relu(flag):
  """Within this context (at trace time), `relu` uses redirected gradients when `flag`."""
  token = _REDIRECT.set(flag)
  try:
    yield
  finally:
    _REDIRECT.reset(token)


@jax.custom_vjp
def _redirectable_relu(x, flag):
  return jnp.maximum(x, 0)


def _fwd(x, flag):
  return jnp.maximum(x, 0), (x, flag)


def _bwd(res, g):
  x, flag = res
  relu_grad = jnp.where(x > 0, g, 0)
  # Cotangent g < 0 means the loss falls as the output rises: let it raise x.
  redirected = jnp.where((x <= 0) & (g > 0), 0, g)
  dead = jnp.sum(jnp.abs(relu_grad)) == 0
  return jnp.where(flag & dead, redirected, relu_grad), None


_redirectable_relu.defvjp(_fwd, _bwd)


_STRAIGHT_THROUGH = "straight_through"


@contextlib.contextmanager
def straight_through_relu():
  """Within this context (at trace time), `relu` back-propagates as the identity."""
  token = _REDIRECT.set(_STRAIGHT_THROUGH)
  try:
    yield
  finally:
    _REDIRECT.reset(token)


@jax.custom_vjp
def _straight_through(x):
  return jnp.maximum(x, 0)


_straight_through.defvjp(lambda x: (jnp.maximum(x, 0), None), lambda _, g: (g,))


def relu(x):
  """ReLU; redirectable inside `redirected_relu` (see module docstring)."""
  flag = _REDIRECT.get()
  if flag is None:
    return jax.nn.relu(x)
  if isinstance(flag, str) and flag == _STRAIGHT_THROUGH:
    return _straight_through(x)
  return _redirectable_relu(x, jnp.asarray(flag, bool))


class Conv(nn.Conv):
  """`nn.Conv` whose input gradient can run as a forward convolution (module docstring)."""

  conv_general_dilated: Any = conv_lib.conv_general_dilated


_ONLY_CHANNEL = contextvars.ContextVar("stviz_only_channel", default=None)


@contextlib.contextmanager
def only_channel(layer: str, channel):
  """Within this context (at trace time), `conv_for(layer)` computes channel `channel` only."""
  token = _ONLY_CHANNEL.set((layer, channel))
  try:
    yield
  finally:
    _ONLY_CHANNEL.reset(token)


def conv_for(layer: str):
  """The convolution function (for `Conv`) of the layer whose output is `layer`.

  Inside `only_channel(layer, c)` it convolves with kernel column c alone and
  places the result in channel c of an otherwise zero output (channels last,
  as in `nn.Conv`), so bias, batch norm and ReLU downstream see the usual
  shape; elsewhere it is `conv.conv_general_dilated`.
  """
  restriction = _ONLY_CHANNEL.get()
  if restriction is None or restriction[0] != layer:
    return conv_lib.conv_general_dilated
  channel = restriction[1]

  def one_channel(lhs, rhs, *args, **kwargs):
    kernel = jax.lax.dynamic_slice_in_dim(rhs, channel, 1, axis=-1)
    y = conv_lib.conv_general_dilated(lhs, kernel, *args, **kwargs)
    return y * jax.nn.one_hot(channel, rhs.shape[-1], dtype=y.dtype)

  return one_channel
