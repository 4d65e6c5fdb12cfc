"""Shared pieces of the benchmarks: a VGG-style network and machine facts."""

import platform

import flax.linen as nn
import jax
import jax.numpy as jnp

import stviz_jax as sv
from stviz_jax.models import relu


class VGGBlocks(nn.Module):
  """VGG-16 blocks 1-3 (2, 2, 3 convs of 3x3, 2x2 max pools), given widths."""

  widths: tuple = (32, 64, 128)
  convs: tuple = (2, 2, 3)

  @nn.compact
  def __call__(self, inputs):
    x = inputs["rgb"][:, 0]
    feats = {}
    for b, (w, n) in enumerate(zip(self.widths, self.convs), start=1):
      for i in range(1, n + 1):
        name = f"conv{b}_{i}"
        x = relu(nn.Conv(w, (3, 3), name=name)(x))
        feats[name] = x
      if b < len(self.widths):
        x = nn.max_pool(x, (2, 2), (2, 2))
    return x.mean((1, 2)), feats


def vgg_style_model(size: int) -> sv.models.Model:
  module = VGGBlocks()
  shape = (1, size, size, 3)
  variables = module.init(jax.random.PRNGKey(0), {"rgb": jnp.zeros((1,) + shape)})
  return sv.models.wrap(module, variables,
                        {"rgb": sv.models.StreamSpec(*shape, (-128.0, 127.0))},
                        name="vgg_blocks_1_3")


def machine() -> dict:
  return {"backend": jax.default_backend(), "devices": len(jax.devices()),
          "device": str(jax.devices()[0].device_kind), "machine": platform.machine(),
          "jax": jax.__version__}


def matmul_peak(n: int = 2048, repeats: int = 5) -> tuple[float, float]:
  """Best float32 matmul GFLOP/s of an n x n product, measured now.

  Returns:
    `(numpy, xla)`: NumPy's BLAS (OpenBLAS) and XLA's own (`jax.jit` of `a @ a`),
    each the best of `repeats` (2 n^3 FLOPs per product).
  """
  import time

  import numpy as np

  a = np.random.default_rng(0).standard_normal((n, n), np.float32)
  best_np = 0.0
  for _ in range(repeats):
    t = time.perf_counter()
    a @ a
    best_np = max(best_np, 2 * n ** 3 / (time.perf_counter() - t) / 1e9)
  x = jnp.asarray(a)
  f = jax.jit(lambda m: m @ m)
  f(x).block_until_ready()
  best_xla = 0.0
  for _ in range(repeats):
    t = time.perf_counter()
    f(x).block_until_ready()
    best_xla = max(best_xla, 2 * n ** 3 / (time.perf_counter() - t) / 1e9)
  return best_np, best_xla
