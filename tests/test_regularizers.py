"""R_B, R_TV and the projection: finite differences, invariances, known values."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from stviz_jax import regularizers



def _finite_difference_check(f, x, eps=1e-3, n=12, seed=0):
  """Compares jax.grad(f) with central differences along random directions (float64)."""
  with jax.enable_x64(True):
    x = jnp.asarray(x, jnp.float64)
    g = jax.grad(f)(x)
    rng = np.random.default_rng(seed)
    for _ in range(n):
      d = jnp.asarray(rng.normal(size=x.shape))
      numeric = (f(x + eps * d) - f(x - eps * d)) / (2 * eps)
      analytic = jnp.vdot(g, d)
      np.testing.assert_allclose(analytic, numeric, rtol=1e-5, atol=1e-7)




@pytest.mark.parametrize("alpha", [2.0, 3.0, 6.0])
def test_local_energy_gradient_matches_finite_differences(alpha):
  x = np.random.default_rng(1).normal(size=(3, 5, 6, 2))
  _finite_difference_check(lambda v: regularizers.local_energy(v, alpha), x)


def test_total_variation_gradient_matches_finite_differences():
  x = np.random.default_rng(2).normal(size=(4, 5, 6, 3))
  _finite_difference_check(lambda v: regularizers.total_variation(v, 1.3, 0.7), x)


def _plain_total_variation(x, kappa, gamma):
  """R_TV as JAX differentiates it itself (the reference for the written-out derivative)."""
  axes = (-4, -3, -2, -1)
  spatial = (jnp.sum(jnp.diff(x, axis=-2) ** 2, axis=axes)
             + jnp.sum(jnp.diff(x, axis=-3) ** 2, axis=axes))
  return kappa * spatial + gamma * jnp.sum(jnp.diff(x, axis=-4) ** 2, axis=axes)


def test_total_variation_derivatives_equal_jaxs_own():
  """The written-out derivative: gradients in x, kappa and gamma, vmapped and
  with per-clip weights, forward mode and a Hessian-vector product, all equal
  to JAX's derivatives of the plain formula."""
  rng = np.random.default_rng(3)
  x = jnp.asarray(rng.normal(size=(3, 4, 5, 6, 2)), jnp.float32)
  kappa, gamma = jnp.array([0.5, 1.0, 2.0]), jnp.array([3.0, 0.0, 1.5])
  got = jax.grad(lambda v, k, g: jnp.sum(regularizers.total_variation(v, k, g) ** 2),
                 argnums=(0, 1, 2))(x, kappa, gamma)
  want = jax.grad(lambda v, k, g: jnp.sum(_plain_total_variation(v, k, g) ** 2),
                  argnums=(0, 1, 2))(x, kappa, gamma)
  for a, b in zip(got, want):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-3)
  vmapped = jax.grad(lambda v: jnp.sum(jax.jit(jax.vmap(regularizers.total_variation))(
      v, kappa, gamma)))(x)
  np.testing.assert_allclose(vmapped, jax.grad(lambda v: jnp.sum(
      _plain_total_variation(v, kappa, gamma)))(x), rtol=1e-5, atol=1e-4)
  t = jnp.asarray(rng.normal(size=x.shape), jnp.float32)
  np.testing.assert_allclose(
      jax.jvp(lambda v: regularizers.total_variation(v, 1.3, 0.7), (x,), (t,))[1],
      jax.jvp(lambda v: _plain_total_variation(v, 1.3, 0.7), (x,), (t,))[1],
      rtol=1e-5, atol=1e-3)  # float32 sums of ~700 terms of order 1
  hvp = lambda f: jax.jvp(jax.grad(lambda v: jnp.sum(f(v, 1.3, 0.7))), (x,), (t,))[1]
  np.testing.assert_allclose(hvp(regularizers.total_variation),
                             hvp(_plain_total_variation), rtol=1e-5, atol=1e-4)


def test_penalty_gradient_matches_finite_differences():
  w = regularizers.StreamWeights(bound=2.0, energy_norm=2.0, alpha=3.0, v=0.3,
                                 kappa=1.0, gamma=5.0, tv_factor=10.0)
  x = np.random.default_rng(3).normal(size=(3, 4, 4, 2))
  _finite_difference_check(lambda v: regularizers.penalty(v, w), x)


def test_local_energy_known_value():
  x = np.zeros((1, 2, 2, 2), np.float32)
  x[0, 0, 0] = [3.0, 4.0]  # norm 5
  x[0, 1, 1] = [0.0, 1.0]  # norm 1
  assert float(regularizers.local_energy(x, 3.0)) == pytest.approx(125.0 + 1.0)


def test_total_variation_known_value():
  # A ramp in x of slope 2 over W = 4: 3 differences of 2 per row, 2 rows, T = 1.
  x = np.tile(np.arange(4, dtype=np.float32) * 2, (1, 2, 1))[..., None]
  assert float(regularizers.total_variation(x, 1.0, 0.0)) == pytest.approx(3 * 4.0 * 2)
  # Two frames differing by 1 everywhere: gamma * H * W * C.
  clip = np.stack([np.zeros((2, 3, 1)), np.ones((2, 3, 1))]).astype(np.float32)
  assert float(regularizers.total_variation(clip, 0.0, 5.0)) == pytest.approx(5.0 * 6)


def test_tv_without_gamma_ignores_frame_order():
  x = np.random.default_rng(4).normal(size=(6, 8, 8, 2)).astype(np.float32)
  perm = np.random.default_rng(5).permutation(6)
  a = regularizers.total_variation(x, 1.0, 0.0)
  b = regularizers.total_variation(x[perm], 1.0, 0.0)
  np.testing.assert_allclose(a, b, rtol=1e-6)
  # ... while with gamma > 0 it does not.
  assert abs(float(regularizers.total_variation(x, 1.0, 1.0)
                   - regularizers.total_variation(x[perm], 1.0, 1.0))) > 1e-3


def test_projection_keeps_every_pixel_within_bound():
  x = 50 * np.random.default_rng(6).normal(size=(3, 7, 7, 2)).astype(np.float32)
  p = np.asarray(regularizers.project_to_ball(x, 10.0))
  norms = np.linalg.norm(p, axis=-1)
  assert norms.max() <= 10.0 * (1 + 1e-6)
  inside = np.linalg.norm(x, axis=-1) <= 10.0
  np.testing.assert_array_equal(p[inside], x[inside])  # inside the ball: unchanged.
  # Outside: scaled onto the sphere, direction kept.
  out = ~inside
  np.testing.assert_allclose(norms[out], 10.0, rtol=1e-5)
  cos = np.sum(p[out] * x[out], -1) / (norms[out] * np.linalg.norm(x[out], axis=-1))
  np.testing.assert_allclose(cos, 1.0, rtol=1e-5)


def test_paper_weights_and_flow_factor():
  reg = regularizers.paper_preset()
  rgb = regularizers.stream_weights(reg, "rgb", pixel_scale=1.0)
  flow = regularizers.stream_weights(reg, "flow", pixel_scale=1.0)
  assert (rgb.bound, rgb.alpha, rgb.v) == (160.0, 3.0, pytest.approx(160 / 6.5))
  assert flow.tv_factor == 10.0 * rgb.tv_factor
  # lambda_B = 1/(H W B^alpha): a uniform field at norm B costs T exactly.
  x = np.zeros((2, 4, 5, 3), np.float32)
  x[..., 0] = 160.0
  assert float(regularizers.penalty(x, rgb)) == pytest.approx(2.0, rel=1e-5)


def test_presets_differ_as_documented():
  mv = regularizers.preset("mahendran_vedaldi")
  assert (mv.alpha, mv.energy_norm, mv.bound, mv.jitter_fraction) == (6.0, 80.0, 160.0, 0.25)
  with pytest.raises(ValueError, match="valid: paper, mahendran_vedaldi"):
    regularizers.preset("lucid")


def test_regularizers_compose_with_vmap_and_jit():
  x = jnp.asarray(np.random.default_rng(7).normal(size=(5, 2, 4, 4, 2)), jnp.float32)
  gammas = jnp.array([0.0, 1.0, 2.0, 5.0, 10.0])
  batched = jax.jit(jax.vmap(regularizers.total_variation, in_axes=(0, None, 0)))(x, 1.0, gammas)
  single = [regularizers.total_variation(x[i], 1.0, gammas[i]) for i in range(5)]
  np.testing.assert_allclose(batched, single, rtol=1e-5)
