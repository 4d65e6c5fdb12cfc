"""Building blocks shared by the model zoo.

`relu` is the one activation every zoo model uses. Inside
`redirected_relu(flag)` its gradient is redirected (Olah et al. 2017, Lucid):
where the ordinary ReLU gradient of an example is zero everywhere, gradient
that would push a negative pre-activation up is let through, so units that
never fire at initialisation still receive a signal. `flag` is a traced
boolean, so switching redirection off after a few optimisation steps does not
recompile anything.

Inside `straight_through_relu()` the gradient of `relu` is the identity; the
receptive-field measurement uses it so that units dead at a random input still
reveal which input pixels they are connected to.
"""

from __future__ import annotations

import contextlib
import contextvars

import jax
import jax.numpy as jnp

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
