r"""The readable-picture recipe (`configs/i3d_kinetics400.py:READABLE`) in plain PyTorch.

`torch_nets.optimisation_runner` is the paper's pixel recipe; this module is
the main job's default recipe written the way a PyTorch user would write it,
for `benchmarks/time_to_readable.py`. Every setting is read from a
`stviz_jax.Visualizer` (its config, canvas and regulariser weights), so the
two sides run the same recipe:

* Parameterisation (`Fourier`): theta = (re, im) of the 3-D spectrum over
  (t, y, x), `(2, T, H, W//2+1, C)` per unit, and

      z = irfftn(s(f) * (theta_re + i theta_im), norm='ortho') @ M^T,

  with `stviz_jax.param.spectrum_scale` (the same numpy array s, 1/f^decay
  with f_min = 1 / max(T, H, W), normalised) and M the same ImageNet colour
  matrix (`param.imagenet_colour_matrix`; identity for colour 'none').
  `kind='pixel'` is z = theta. Initial noise: theta ~ N(0, 1) rescaled so the
  pixels' per-pixel RMS norm is `init_scale * V / B`, as `stviz_jax`.
* Transforms (`Transforms`, parsed from `config.transforms`): pad (zeros),
  jitter (a random window), scale and rotate (`warp`: `affine_grid` +
  `grid_sample`, bilinear, `align_corners=True`, border padding: the same
  x'(p) = x(A^{-1} p) about the centre as `transforms._warp`'s
  `map_coordinates(order=1, mode='nearest')`, one resampling per transform as
  there), flip with probability 1/2, and the bare "jitter" of size J =
  `vis.jitter`; each unit gets its own draws. Differences: the random numbers
  come from `torch.Generator`, not `jax.random`, so the draws (and the
  initial noise) are other samples of the same distributions; `time_jitter`
  is not implemented (the recipe does not use it).
* Objective: the class logit (`class_logit`, score 'logit') or a channel
  summed over locations / rho^2, minus `torch_nets.penalty` (lambda_B R_B +
  lambda_TV R_TV with the Visualizer's kappa, gamma) of the transformed input
  x = B z.
* Adam (lr, b1, b2, eps 1e-8 as optax) with optax's cosine decay to
  `final_fraction` over the budget, then the projection onto the B-ball in
  pixel space: theta <- from_pixels(P_1(to_pixels(theta))) (the exact
  projection, `param._project_in_pixels`).
* The result: the centre of the canvas at the model's size, no transform,
  x = B z (`ascent.Canvas.final`).
"""

from __future__ import annotations

import math
import re
import time
from typing import Mapping

import numpy as np
import torch
import torch.nn.functional as F

import torch_nets
from stviz_jax import param as param_lib
from stviz_jax import transforms as transforms_lib
from stviz_jax.models import LOGITS

_DIMS = (-4, -3, -2)  # (T, H, W) of a (..., T, H, W, C) canvas.


class Fourier:
  """z = irfftn(s * theta) @ M^T on a `(T, H, W, C)` canvas (`kind='pixel'`: z = theta)."""

  def __init__(self, shape, kind: str = "fourier", decay: float = 1.0, colour: str = "none"):
    if kind not in ("pixel", "fourier"):
      raise ValueError(f"torch recipe: param.kind {kind!r} not implemented (pixel, fourier)")
    if colour not in ("none", "imagenet"):
      raise ValueError(f"torch recipe: param.colour {colour!r} not implemented (none, imagenet)")
    self.shape, self.kind = tuple(shape), kind
    t, h, w, c = self.shape
    self.theta_shape = (2, t, h, w // 2 + 1, c) if kind == "fourier" else self.shape
    self.scale = torch.from_numpy(param_lib.spectrum_scale(self.shape, decay))[..., None]
    m = (param_lib.imagenet_colour_matrix() if colour == "imagenet" and c == 3
         else np.eye(c, dtype=np.float32))
    self.mt = torch.from_numpy(np.ascontiguousarray(m.T))
    self.mt_inv = torch.from_numpy(np.linalg.inv(m.T.astype(np.float64)).astype(np.float32))

  def to_pixels(self, theta: torch.Tensor) -> torch.Tensor:
    """theta `(..., *theta_shape)` -> z `(..., T, H, W, C)`."""
    if self.kind == "pixel":
      return theta @ self.mt
    spec = torch.complex(theta[..., 0, :, :, :, :], theta[..., 1, :, :, :, :]) * self.scale
    z = torch.fft.irfftn(spec, s=self.shape[:3], dim=_DIMS, norm="ortho")
    return z @ self.mt

  def from_pixels(self, z: torch.Tensor) -> torch.Tensor:
    """The exact inverse of `to_pixels` (on theta's Hermitian part)."""
    z = z @ self.mt_inv
    if self.kind == "pixel":
      return z
    spec = torch.fft.rfftn(z, dim=_DIMS, norm="ortho") / self.scale
    return torch.stack([spec.real, spec.imag], dim=-5).to(torch.float32)

  def init(self, n: int, rms: float, generator: torch.Generator) -> torch.Tensor:
    """n thetas of white noise whose pixels have per-pixel RMS norm `rms`."""
    theta = torch.randn(n, *self.theta_shape, generator=generator)
    z = self.to_pixels(theta)
    norm = z.pow(2).sum(-1).mean((-3, -2, -1)).sqrt()
    return theta * (rms / norm).reshape(n, *([1] * len(self.theta_shape)))

  def project(self, theta: torch.Tensor) -> torch.Tensor:
    """Every pixel onto the unit ball, mapped back to theta."""
    z = self.to_pixels(theta)
    norm = z.pow(2).sum(-1, keepdim=True).sqrt()
    return self.from_pixels(z * torch.clamp(1.0 / norm.clamp_min(1e-12), max=1.0))


# --- transforms ------------------------------------------------------------------


def warp(x: torch.Tensor, matrices: torch.Tensor) -> torch.Tensor:
  """x'(p) = A x(A^{-1} p) about the centre per element: `x (N, T, H, W, C)`, `A (N, 2, 2)`
  on (x, y) image coordinates; bilinear, edge values outside (`transforms._warp`, no vectors)."""
  n, t, h, w, c = x.shape
  inv = torch.linalg.inv(matrices.to(torch.float64))
  # Normalised coordinates (align_corners): u = p / ((size - 1) / 2) about the centre.
  d = torch.tensor([(w - 1) / 2.0, (h - 1) / 2.0], dtype=torch.float64)
  theta = torch.zeros(n, 2, 3, dtype=torch.float64)
  theta[:, :, :2] = inv * d[None, None, :] / d[None, :, None]
  theta = theta.to(torch.float32).repeat_interleave(t, 0)
  planes = x.reshape(n * t, h, w, c).permute(0, 3, 1, 2)
  grid = F.affine_grid(theta, (n * t, c, h, w), align_corners=True)
  out = F.grid_sample(planes, grid, mode="bilinear", padding_mode="border", align_corners=True)
  return out.permute(0, 2, 3, 1).reshape(n, t, h, w, c)


def rotation(degrees: torch.Tensor) -> torch.Tensor:
  """R_theta `(N, 2, 2)` on (x, y) with y down (`transforms._rotation`)."""
  a = torch.deg2rad(degrees.to(torch.float32))
  c, s = torch.cos(a), torch.sin(a)
  return torch.stack([torch.stack([c, s], -1), torch.stack([-s, c], -1)], -2)


def crop(x: torch.Tensor, offsets, height: int, width: int) -> torch.Tensor:
  """Element i's `(height, width)` window at `offsets[i] = (dy, dx)` of `x (N, T, H, W, C)`."""
  return torch.stack([x[i, :, dy:dy + height, dx:dx + width]
                      for i, (dy, dx) in enumerate(offsets)])


_ITEM = re.compile(r"\s*([a-z_]+)\s*(?:\(([^)]*)\))?\s*(?:,|$)")


class Transforms:
  """The per-step transforms of `config.transforms` (`stviz_jax.transforms.parse`), in torch.

  Args:
    spec: e.g. "pad(6), jitter(4), scale(0.9,1.1), rotate(5), flip, jitter".
    stride_jitter: the size of a bare "jitter" (`Visualizer.jitter`).
  """

  def __init__(self, spec: str, stride_jitter: int):
    transforms_lib.parse(spec, stride_jitter)  # the same validation and errors.
    self.items = []
    for m in _ITEM.finditer(spec.strip()):
      if not m.group(1):
        continue
      name, args = m.group(1), m.group(2)
      vals = [float(a) for a in args.split(",")] if args and args.strip() else []
      if name == "jitter":
        vals = [int(vals[0]) if vals else int(stride_jitter)]
      if name == "time_jitter":
        raise ValueError("torch recipe: time_jitter is not implemented")
      self.items.append((name, vals))

  def __call__(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Transforms `x (N, T, H, W, C)`, each element with its own draw."""
    n = x.shape[0]
    for name, vals in self.items:
      if name == "pad":
        p = int(vals[0])
        x = F.pad(x, (0, 0, p, p, p, p))
      elif name == "jitter":
        j = vals[0]
        offsets = torch.randint(0, j, (n, 2), generator=g).tolist()
        x = crop(x, offsets, x.shape[2] - j + 1, x.shape[3] - j + 1)
      elif name == "scale":
        f = vals[0] + (vals[1] - vals[0]) * torch.rand(n, generator=g)
        x = warp(x, f[:, None, None] * torch.eye(2))
      elif name == "rotate":
        a = vals[0] * (2 * torch.rand(n, generator=g) - 1)
        x = warp(x, rotation(a))
      elif name == "flip":
        flip = torch.rand(n, generator=g) < 0.5
        x = torch.where(flip[:, None, None, None, None], x.flip(3), x)
    return x


def center_crop(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
  h, w = x.shape[-3], x.shape[-2]
  top, left = (h - height) // 2, (w - width) // 2
  return x[..., top:top + height, left:left + width, :]


# --- the optimisation --------------------------------------------------------------


def activation(net, x: Mapping[str, torch.Tensor], units: torch.Tensor, layer: str,
               rho: float) -> torch.Tensor:
  """The target term per element: the class logit (layer 'logits') or channel
  `units[u]` summed over locations / rho^2."""
  a = net(x)
  idx = torch.arange(a.shape[0])
  if layer == LOGITS:
    return a[idx, units]
  return a[idx, ..., units].sum((1, 2, 3)) / rho ** 2


def stviz_initial_theta(vis, units, seed: int = 0) -> dict[str, np.ndarray]:
  """The initial theta `{stream: (U, ...)}` that `vis.run(units, seed)` starts from."""
  import jax  # pylint: disable=import-outside-toplevel
  base = jax.random.PRNGKey(seed)
  keys = jax.vmap(lambda u: jax.random.fold_in(base, u))(np.asarray(units, np.int32))
  theta = jax.vmap(lambda k: vis.canvas.init(k)[0])(keys)
  return {s: np.asarray(v) for s, v in theta.items()}


def readable_runner(net, vis, units, tv: Mapping[str, tuple] | None = None, seed: int = 0,
                    init: Mapping[str, np.ndarray] | None = None):
  """The PyTorch loop of `vis`'s recipe on `units`; returns `run() -> (seconds, x, E)`.

  `init` optionally gives the initial theta per stream (e.g.
  `stviz_initial_theta`, for equivalence checks); by default it is drawn from
  `torch.Generator(seed)`. `x` is `{stream: (U, T, H, W, C)}` numpy, the result in model input units;
  `E` the `(steps, U)` objective before each step; `seconds` the wall time
  from the initial noise to the result.
  """
  cfg = vis.config
  if cfg.objective.kind not in ("class_logit", "channel") or cfg.objective.class_score != "logit":
    raise ValueError(f"torch recipe: objective {cfg.objective.kind!r} "
                     f"({cfg.objective.class_score}) not implemented")
  if (cfg.objective.a_hat or 1.0) != 1.0 or cfg.redirect_relu_steps:
    raise ValueError("torch recipe: a_hat and redirected ReLUs are not implemented")
  layer, steps = vis.layer, cfg.steps
  rho, _ = vis.model.spec.receptive_field(layer)
  settings = vis.settings(tv)
  params = {s: Fourier(vis.canvas.params[s].shape, cfg.param.kind, cfg.param.decay,
                       cfg.param.colour) for s in vis.streams}
  transform = Transforms(cfg.transforms, vis.jitter)
  units_t = torch.as_tensor(np.asarray(units, np.int64))
  n = len(units_t)
  lr, final = cfg.optimizer.learning_rate, cfg.optimizer.final_fraction
  if cfg.optimizer.schedule != "cosine":
    raise ValueError("torch recipe: only the cosine schedule is implemented")
  # optax.cosine_decay_schedule(lr, steps, alpha=final) as a factor of lr.
  cosine = lambda k: final + (1 - final) * 0.5 * (1 + math.cos(math.pi * min(k, steps) / steps))

  def run():
    g = torch.Generator().manual_seed(seed)
    t = time.perf_counter()
    theta = {s: (torch.from_numpy(np.array(init[s], np.float32)) if init is not None
                 else p.init(n, vis.canvas.init_rms[s], g)).requires_grad_(True)
             for s, p in params.items()}
    opt = torch.optim.Adam(list(theta.values()), lr=lr, betas=(cfg.optimizer.b1,
                                                                cfg.optimizer.b2), eps=1e-8)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, cosine)
    history = []
    for _ in range(steps):
      x = {}
      for s, p in params.items():
        canvas = p.to_pixels(theta[s]) * vis.canvas.bounds[s]
        x[s] = center_crop(transform(canvas, g), *vis.canvas.sizes[s])
      e = activation(net, x, units_t, layer, rho) - sum(
          torch_nets.penalty(v, vis.weights[s], *settings[s]) for s, v in x.items())
      history.append(e.detach())
      opt.zero_grad(set_to_none=True)
      (-e.sum()).backward()
      opt.step()
      sched.step()
      with torch.no_grad():
        for s, p in params.items():
          theta[s].copy_(p.project(theta[s]))
    with torch.no_grad():
      out = {s: center_crop(p.to_pixels(theta[s]) * vis.canvas.bounds[s],
                            *vis.canvas.sizes[s]).numpy() for s, p in params.items()}
    seconds = time.perf_counter() - t
    return seconds, out, torch.stack(history).numpy()

  return run
