r"""stviz_jax versus a lean plain-PyTorch loop on the standard workload.

Workload (issue "Speed"): VGG-16 (ImageNet layout, random weights from a fixed
seed), RGB 128x128, maximise channel c of `conv4_3` (after ReLU) summed over
locations, the paper's regularisers (R_B with the B-ball projection, R_TV),
stride jitter, Adam, 64 steps, 16 units.

Both run in this one process, alternating over `--repeats` rounds, with the
same thread count. PyTorch: the network cut at conv4_3, weights frozen, one
batch of 16 inputs (one per unit), `torch.optim.Adam` on the inputs, in the
faster of the contiguous and channels-last memory formats (timed in a
warm-up). stviz_jax: `Visualizer` with its defaults on the zoo's
`vgg16_two_stream` appearance tower (jit prunes everything above conv4_3, and
conv4_3 computes only the target channel), one vmapped chunk of 16.

Prints one JSON line: seconds per unit-step (median), GFLOP/s of the workload
(convolution FLOPs of forward + backward-to-input of the whole cut network,
counted from the layer shapes; `stviz_executed_gflops` counts what runs), the
fraction of the best float32 matmul throughput measured in this run (NumPy's
OpenBLAS, XLA and PyTorch), compile time, and memory per unit (XLA's memory
analysis of the step; PyTorch's peak resident growth in its warm-up).

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
from stviz_jax import chunks

from common import matmul_peak  # pylint: disable=wrong-import-order

VGG_CONV4 = [(3, 64), (64, 64), "M", (64, 128), (128, 128), "M",
             (128, 256), (256, 256), (256, 256), "M", (256, 512), (512, 512), (512, 512)]


def conv_gflop_per_unit_step(size: int, last_layer_channels: int | None = None) -> float:
  """Forward conv FLOPs up to conv4_3 at `size`, times two: the backward pass
  to the input costs one more of each (weight gradients are not needed).

  `last_layer_channels=1` counts what runs when only the target channel of
  conv4_3 is computed (`Visualizer.one_channel`).
  """
  flops, hw = 0, size * size
  for i, item in enumerate(VGG_CONV4):
    if item == "M":
      hw //= 4
    else:
      c_out = item[1]
      if i == len(VGG_CONV4) - 1 and last_layer_channels is not None:
        c_out = last_layer_channels
      flops += 2 * hw * 9 * item[0] * c_out
  return 2 * flops / 1e9


def torch_matmul_peak(threads: int, n: int = 2048, repeats: int = 5) -> float:
  """Best float32 matmul GFLOP/s of PyTorch (oneDNN/MKL) at `threads`, measured now."""
  import torch
  torch.set_num_threads(threads)
  a = torch.randn(n, n)
  best = 0.0
  for _ in range(repeats):
    t = time.perf_counter()
    a @ a
    best = max(best, 2 * n ** 3 / (time.perf_counter() - t) / 1e9)
  return best


def torch_runner(units, steps, size, threads, channels_last=False):
  """A lean PyTorch loop doing the same optimisation; returns run() -> seconds.

  `channels_last` stores activations and weights NHWC (oneDNN's preferred
  layout on CPU); `main` times both in a warm-up and keeps the faster.
  """
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
  fmt = torch.channels_last if channels_last else torch.contiguous_format
  net = net.to(memory_format=fmt)
  bound, alpha = 160.0, 3.0
  v = bound / 6.5
  hw = size * size
  stride = 8
  idx = torch.arange(units)

  def run():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(units, 3, size + stride - 1, size + stride - 1, generator=g) * 10
    x = x.contiguous(memory_format=fmt)
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
  p.add_argument("--loop", choices=["scan", "host"], default=None,
                 help="step loop (default: the Visualizer's, config.loop)")
  args = p.parse_args()
  threads = os.cpu_count() or 1

  # PyTorch first, while the process is small: its warm-up's growth of the
  # peak resident memory is its peak memory (the JAX side is measured by
  # XLA's memory analysis of the compiled step).
  torch_run, torch_format, torch_mem = None, None, None
  if not args.no_torch:
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    candidates = {}
    for fmt in ("contiguous", "channels_last"):
      run = torch_runner(args.units, args.steps, args.size, threads, fmt == "channels_last")
      run()  # warm-up (oneDNN primitive creation).
      candidates[fmt] = (run(), run)
    torch_mem = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) * 1024
    torch_format = min(candidates, key=lambda f: candidates[f][0])
    torch_run = candidates[torch_format][1]

  model = sv.models.load("vgg16_two_stream", streams=("rgb",), size=args.size)
  config = sv.default_config()
  config.steps = args.steps
  if args.loop:
    config.loop = args.loop
  if args.dtype != "float32":
    config.compute_dtype = args.dtype
  vis = sv.Visualizer(model, "rgb/conv4_3", config)
  units = list(range(args.units))

  t = time.perf_counter()
  vis.run(units, chunk_size=args.units, log_progress=False)
  compile_and_first_s = time.perf_counter() - t
  flops_per_unit_step = conv_gflop_per_unit_step(args.size) * 1e9
  executed_per_unit_step = conv_gflop_per_unit_step(
      args.size, 1 if vis.one_channel else None) * 1e9
  # XLA's memory analysis of the compiled call: what each further unit of a
  # chunk adds, and what one unit alone needs (with what a call holds once for
  # all its units: on CPU the rewritten kernels, `models.conv`).
  jax_mem_per_unit = chunks.marginal_element_memory_bytes(vis)
  one_unit_mem = chunks.element_memory_bytes(vis)

  times = {"stviz_jax": [], "torch": []}
  for _ in range(args.repeats):
    t = time.perf_counter()
    vis.run(units, chunk_size=args.units, log_progress=False)
    times["stviz_jax"].append(time.perf_counter() - t)
    if torch_run:
      times["torch"].append(torch_run())
  np_peak, xla_peak = matmul_peak()
  torch_peak = None if args.no_torch else torch_matmul_peak(threads)
  peak = max(p for p in (np_peak, xla_peak, torch_peak) if p)

  per = {k: float(np.median(v)) / (args.units * args.steps) for k, v in times.items() if v}
  gflops = flops_per_unit_step / per["stviz_jax"] / 1e9
  out = {
      "benchmark": "speed_vgg16_conv4_3", "dtype": args.dtype, "units": args.units,
      "steps": args.steps, "size": args.size, "threads": threads, "loop": vis.loop,
      "s_per_unit_step": {k: round(v, 5) for k, v in per.items()},
      "speedup_vs_torch": round(per["torch"] / per["stviz_jax"], 3) if "torch" in per else None,
      "torch_memory_format": torch_format,
      "gflop_per_unit_step": round(flops_per_unit_step / 1e9, 2),
      "stviz_executed_gflop_per_unit_step": round(executed_per_unit_step / 1e9, 2),
      "stviz_gflops": round(gflops, 1),
      "stviz_executed_gflops": round(executed_per_unit_step / per["stviz_jax"] / 1e9, 1),
      "torch_gflops": round(flops_per_unit_step / per["torch"] / 1e9, 1) if "torch" in per
                      else None,
      "matmul_peak_gflops": {"numpy_openblas": round(np_peak, 1), "xla": round(xla_peak, 1),
                             "torch": round(torch_peak, 1) if torch_peak else None},
      "fraction_of_peak": round(gflops / peak, 3),
      "compile_and_first_run_s": round(compile_and_first_s, 2),
      "stviz_mem_per_unit_mb": round(jax_mem_per_unit / 2**20, 1) if jax_mem_per_unit else None,
      "stviz_mem_one_unit_mb": round(one_unit_mem / 2**20, 1) if one_unit_mem else None,
      "torch_mem_per_unit_mb": round(torch_mem / args.units / 2**20, 1) if torch_mem else None,
      "process_max_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
      "compilations": vis.trace_count,
      "backend": jax.default_backend(), "device": str(jax.devices()[0].device_kind),
      "machine": platform.machine(), "jax": jax.__version__,
  }
  print(json.dumps(out))


if __name__ == "__main__":
  main()
