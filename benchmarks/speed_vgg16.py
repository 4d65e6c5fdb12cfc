r"""stviz_jax versus a lean plain-PyTorch loop on the standard workload.

Workload (issue "Speed"): VGG-16 (ImageNet layout, random weights from a fixed
seed), RGB 128x128, maximise channel c of `conv4_3` (after ReLU) summed over
locations, the paper's regularisers (R_B with the B-ball projection, R_TV),
stride jitter, Adam, 64 steps, 16 units.

Both run in this one process, alternating over `--repeats` rounds, with the
same thread count. PyTorch: the network cut at conv4_3, weights frozen, one
batch of 16 inputs (one per unit), `torch.optim.Adam` on the inputs. stviz_jax:
`Visualizer` on the zoo's `vgg16_two_stream` appearance tower (jit prunes
everything above conv4_3), one vmapped chunk of 16.

Prints one JSON line: seconds per unit-step (median), GFLOP/s (convolution
FLOPs of forward + backward-to-input, counted from the layer shapes), the fraction of the float32 matmul peak measured
in this run (NumPy/OpenBLAS and XLA), compile time and memory per unit.

  python benchmarks/speed_vgg16.py [--units=16 --steps=64 --size=128 --repeats=3]
  python benchmarks/speed_vgg16.py --dtype=bfloat16    # reduced-precision mode
"""

import argparse
import json
import os
import platform
import resource
import time

import jax
import jax.numpy as jnp
import numpy as np

import stviz_jax as sv
from stviz_jax import sweep

VGG_CONV4 = [(3, 64), (64, 64), "M", (64, 128), (128, 128), "M",
             (128, 256), (256, 256), (256, 256), "M", (256, 512), (512, 512), (512, 512)]


def conv_gflop_per_unit_step(size: int) -> float:
  """Forward conv FLOPs up to conv4_3 at `size`, times two: the backward pass
  to the input costs one more of each (weight gradients are not needed)."""
  flops, hw = 0, size * size
  for item in VGG_CONV4:
    if item == "M":
      hw //= 4
    else:
      flops += 2 * hw * 9 * item[0] * item[1]
  return 2 * flops / 1e9


def matmul_peak(n=2048, repeats=5):
  """Best float32 matmul GFLOP/s: NumPy (OpenBLAS) and XLA, measured now."""
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


def torch_runner(units, steps, size, threads):
  """A lean PyTorch loop doing the same optimisation; returns run() -> seconds."""
  import torch
  torch.set_num_threads(threads)
  torch.manual_seed(0)
  layers = []
  for item in VGG_CONV4:
    if item == "M":
      layers.append(torch.nn.MaxPool2d(2, 2))
    else:
      layers += [torch.nn.Conv2d(*item, 3, padding=1), torch.nn.ReLU(inplace=True)]
  net = torch.nn.Sequential(*layers).eval()
  for p in net.parameters():
    p.requires_grad_(False)
  bound, alpha = 160.0, 3.0
  v = bound / 6.5
  hw = size * size
  stride = 8
  idx = torch.arange(units)

  def run():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(units, 3, size + stride - 1, size + stride - 1, generator=g) * 10
    x.requires_grad_(True)
    opt = torch.optim.Adam([x], lr=0.05 * bound)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps, eta_min=0.0025 * bound)
    t = time.perf_counter()
    for _ in range(steps):
      dy, dx = torch.randint(0, stride, (2,), generator=g).tolist()
      crop = x[:, :, dy:dy + size, dx:dx + size]
      a = net(crop)
      act = a[idx, idx].sum((1, 2)) / 92.0 ** 2
      energy = (crop.pow(2).sum(1) ** (alpha / 2)).sum((1, 2)) / (hw * bound ** alpha)
      tv = ((crop[..., 1:, :] - crop[..., :-1, :]).pow(2).sum((1, 2, 3))
            + (crop[..., :, 1:] - crop[..., :, :-1]).pow(2).sum((1, 2, 3))) / (hw * v * v)
      loss = -(act - energy - tv).sum()
      opt.zero_grad(set_to_none=True)
      loss.backward()
      opt.step()
      sched.step()
      with torch.no_grad():
        norm = x.pow(2).sum(1, keepdim=True).sqrt().clamp_min(1e-12)
        x.mul_(torch.clamp(bound / norm, max=1.0))
    return time.perf_counter() - t

  return run


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--units", type=int, default=16)
  p.add_argument("--steps", type=int, default=64)
  p.add_argument("--size", type=int, default=128)
  p.add_argument("--repeats", type=int, default=3)
  p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
  p.add_argument("--no-torch", action="store_true")
  args = p.parse_args()
  threads = os.cpu_count() or 1

  model = sv.models.load("vgg16_two_stream", streams=("rgb",), size=args.size)
  config = sv.default_config()
  config.steps = args.steps
  config.loop = "host"  # 2-D network on CPU: see Visualizer.loop.
  if args.dtype != "float32":
    config.compute_dtype = args.dtype
  vis = sv.Visualizer(model, "rgb/conv4_3", config)
  units = list(range(args.units))

  t = time.perf_counter()
  vis.run(units, chunk_size=args.units, log_progress=False)
  compile_and_first_s = time.perf_counter() - t
  flops_per_unit_step = conv_gflop_per_unit_step(args.size) * 1e9
  per_element = sweep.element_memory_bytes(vis)  # XLA's memory analysis of the step.
  jax_mem_per_unit = per_element

  torch_run = None if args.no_torch else torch_runner(args.units, args.steps, args.size,
                                                      threads)
  if torch_run:
    torch_run()  # warm-up (oneDNN primitive creation).
  times = {"stviz_jax": [], "torch": []}
  rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
  for _ in range(args.repeats):
    t = time.perf_counter()
    vis.run(units, chunk_size=args.units, log_progress=False)
    times["stviz_jax"].append(time.perf_counter() - t)
    if torch_run:
      times["torch"].append(torch_run())
  np_peak, xla_peak = matmul_peak()

  per = {k: float(np.median(v)) / (args.units * args.steps) for k, v in times.items() if v}
  gflops = flops_per_unit_step / per["stviz_jax"] / 1e9
  out = {
      "benchmark": "speed_vgg16_conv4_3", "dtype": args.dtype, "units": args.units,
      "steps": args.steps, "size": args.size, "threads": threads,
      "s_per_unit_step": {k: round(v, 5) for k, v in per.items()},
      "speedup_vs_torch": round(per["torch"] / per["stviz_jax"], 3) if "torch" in per else None,
      "gflop_per_unit_step": round(flops_per_unit_step / 1e9, 2),
      "stviz_gflops": round(gflops, 1),
      "matmul_peak_gflops": {"numpy_openblas": round(np_peak, 1), "xla": round(xla_peak, 1)},
      "fraction_of_peak": round(gflops / max(np_peak, xla_peak), 3),
      "compile_and_first_run_s": round(compile_and_first_s, 2),
      "stviz_mem_per_unit_mb": round(jax_mem_per_unit / 2**20, 1) if jax_mem_per_unit else None,
      "process_max_rss_mb": round(max(rss0, resource.getrusage(
          resource.RUSAGE_SELF).ru_maxrss) / 1024, 1),
      "compilations": vis.trace_count,
      "backend": jax.default_backend(), "device": str(jax.devices()[0].device_kind),
      "machine": platform.machine(), "jax": jax.__version__,
  }
  print(json.dumps(out))


if __name__ == "__main__":
  main()
