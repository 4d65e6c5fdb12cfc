r"""stviz_jax versus a lean plain-PyTorch loop at the video scale.

Workloads (issue "Speed"), random weights from a fixed seed, the paper's
objective (channel c summed over locations / rho^2, R_B with the B-ball
projection and R_TV on every stream, flow TV x10), stride jitter, Adam:

* `--net=vgg16_fusion`: the VGG-16 two-stream conv-fusion network, target
  `conv5_fusion` (3x3x3 over [appearance; motion] `relu5_3`); inputs RGB
  `(T, S, S, 3)` and a flow video stacked 10 frames per time step (20
  channels). Default T = 3, S = 112 (reduced from 5 x 224 for a 2-core CPU).
* `--net=i3d`: I3D (RGB), target `Mixed_4f`, clip 16 x 112 x 112 by default.

PyTorch: the same network up to the target with the same weights
(`torch_nets.twin`, checked against the Flax model on one random input before
anything is timed: `max_rel_err`), weights frozen, one batch of U inputs,
Adam on the inputs (`torch_nets.optimisation_runner`). Its memory format
(contiguous or channels_last[_3d]) is the faster of the two in a warm-up.
stviz_jax: `Visualizer` with the default config (its default step loop), one
vmapped chunk of U. Both run in this one process, alternating over
`--repeats` rounds, with the same thread count.

Prints one JSON line: seconds per unit-step (median), GFLOP/s (convolution
FLOPs of forward + backward-to-input, from the layer shapes), the fraction of
the float32 matmul peak measured in this run (NumPy/OpenBLAS and XLA),
compile time, memory per unit (XLA's memory analysis of the compiled call:
what each further unit of a chunk adds, and what one unit alone needs with
the call's shared rewritten kernels; for PyTorch the tensors autograd saves
for the backward pass), compilations.

  python benchmarks/speed_video.py --net=vgg16_fusion [--frames=3 --size=112 --units=4 --steps=8]
  python benchmarks/speed_video.py --net=i3d [--frames=16 --size=112]

`--ablate=space_to_depth` also compiles stviz_jax with that CPU rewrite off
(`models.conv.space_to_depth(False)`), `--ablate=cpu_compiler_options` with
XLA:CPU's default options (YNNPACK fusions on, `conv.CPU_COMPILER_OPTIONS`
not applied), and times it in the same rounds: what the lever buys, as a
ratio within one run.
"""

import argparse
import json
import os
import platform
import resource
import sys
import time
from unittest import mock

import jax
import numpy as np

import stviz_jax as sv
from stviz_jax import chunks
from stviz_jax.models import conv
from common import matmul_peak

# net: (registry name, target layer, default frames, default size, factory arguments).
WORKLOADS = {
    "vgg16_fusion": ("vgg16_fusion", "conv5_fusion", 3, 112, {"flow_stack": 10}),
    "i3d": ("i3d", "Mixed_4f", 16, 112, {"streams": ("rgb",)}),
}
# --ablate: each lever's "off" context, entered while the ablated run compiles.
LEVERS = {
    "space_to_depth": lambda: conv.space_to_depth(False),
    "cpu_compiler_options": lambda: mock.patch.object(conv, "compiler_options",
                                                      lambda: None),
}
CHECK_TOL = 1e-4  # max relative difference of the target activations, PyTorch vs Flax.


def torch_saved_bytes(net, inputs) -> int:
  """Bytes autograd keeps for the backward pass of one forward (distinct storages)."""
  import torch
  seen = {}

  def pack(t):
    seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
    return t

  x = {k: v.clone().requires_grad_(True) for k, v in inputs.items()}
  with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
    net(x).sum()
  return sum(seen.values())


def source_version() -> str:
  """The commit measured, '+dirty' when stviz_jax/ has uncommitted changes."""
  import subprocess
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  try:
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, check=True,
                          capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "stviz_jax"], cwd=root,
                           check=True, capture_output=True, text=True).stdout.strip()
  except (OSError, subprocess.CalledProcessError):
    return "unknown"
  return head + ("+dirty" if dirty else "")


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--net", default="vgg16_fusion", choices=sorted(WORKLOADS))
  p.add_argument("--frames", type=int, default=0, help="time steps T (0: the net's default)")
  p.add_argument("--size", type=int, default=0, help="frame height = width (0: default)")
  p.add_argument("--units", type=int, default=4)
  p.add_argument("--steps", type=int, default=8)
  p.add_argument("--repeats", type=int, default=3)
  p.add_argument("--seed", type=int, default=0, help="weights and inputs")
  p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
  p.add_argument("--no-torch", action="store_true")
  p.add_argument("--ablate", default="", choices=["", *LEVERS],
                 help="also time stviz_jax compiled with this CPU lever off, in the "
                      "same rounds (key stviz_jax_no_<lever>)")
  args = p.parse_args()
  threads = os.cpu_count() or 1
  arch, layer, frames, size, factory_args = WORKLOADS[args.net]
  frames, size = args.frames or frames, args.size or size

  model = sv.models.load(arch, frames=frames, size=size, seed=args.seed, **factory_args)
  config = sv.default_config()
  config.steps = args.steps
  if args.dtype != "float32":
    config.compute_dtype = args.dtype
  vis = sv.Visualizer(model, layer, config)  # the default step loop (vis.loop).
  units = list(range(args.units))

  t = time.perf_counter()
  vis.run(units, chunk_size=args.units, log_progress=False)
  compile_and_first_s = time.perf_counter() - t
  # XLA's memory analysis of the compiled call: what each further unit of a
  # chunk adds, and what one unit alone needs (with what a call holds once for
  # all its units: on CPU the rewritten kernels, `models.conv`).
  mem_per_unit = chunks.marginal_element_memory_bytes(vis)
  one_unit_mem = chunks.element_memory_bytes(vis)
  ablated = None
  if args.ablate:
    with LEVERS[args.ablate]():  # levers apply at trace (and jit) time
      ablated = sv.Visualizer(model, layer, config)
      ablated.run(units, chunk_size=args.units, log_progress=False)
      ablated_mem = chunks.marginal_element_memory_bytes(ablated)

  out = {"benchmark": f"speed_video_{args.net}_{layer}", "dtype": args.dtype,
         "units": args.units, "steps": args.steps, "frames": frames, "size": size,
         "streams": {s: list(sp.shape) for s, sp in model.spec.streams.items()},
         "threads": threads, "stviz_loop": vis.loop, "jitter": vis.jitter}
  times = {"stviz_jax": [], "torch": []}
  torch_run = net = None
  if not args.no_torch:
    import torch
    import torch_nets
    torch.set_num_threads(threads)
    torch.manual_seed(args.seed)
    net = torch_nets.twin(model, layer)
    rng = np.random.default_rng(args.seed)
    one = {s: rng.uniform(*sp.value_range, (1,) + sp.shape).astype(np.float32)
           for s, sp in model.spec.streams.items()}
    err = torch_nets.max_relative_error(model, net, layer, one)
    out["torch_check_max_rel_err"] = float(f"{err:.3g}")
    if not err < CHECK_TOL:
      sys.exit(f"error: the PyTorch twin of {args.net} differs from the Flax model at "
               f"{layer!r} by {err:.3g} (relative); not benchmarking a different network")
    one_t = {k: torch.from_numpy(v) for k, v in one.items()}
    flops_per_unit_step = 2 * net.conv_flops(one_t)  # forward + backward to the input.
    # Warm-up (oneDNN primitives) and layout choice: each format's best of
    # two short runs, alternating (the machine is noisy).
    short = min(args.steps, 3)
    warm = {fmt: float("inf") for fmt in torch_nets.FORMATS}
    for rnd in range(3):
      for fmt in torch_nets.FORMATS:
        net.set_memory_format(fmt)
        seconds = torch_nets.optimisation_runner(net, vis, args.units, short, args.seed)()[0]
        if rnd:  # round 0 creates the primitives.
          warm[fmt] = min(warm[fmt], seconds / (args.units * short))
    fmt = min(warm, key=warm.get)
    net.set_memory_format(fmt)
    torch_run = torch_nets.optimisation_runner(net, vis, args.units, args.steps, args.seed)
    out["torch_memory_format"] = fmt
    out["torch_warmup_s_per_unit_step"] = {k: round(v, 4) for k, v in warm.items()}
    saved = torch_saved_bytes(net, {k: v.expand(args.units, *v.shape[1:])
                                    for k, v in one_t.items()})
    out["torch_saved_for_backward_mb_per_unit"] = round(saved / args.units / 2**20, 1)
  else:
    flops_per_unit_step = None

  rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
  for _ in range(args.repeats):
    t = time.perf_counter()
    vis.run(units, chunk_size=args.units, log_progress=False)
    times["stviz_jax"].append(time.perf_counter() - t)
    if torch_run:
      times["torch"].append(torch_run()[0])
    if ablated is not None:
      t = time.perf_counter()
      ablated.run(units, chunk_size=args.units, log_progress=False)
      times.setdefault(f"stviz_jax_no_{args.ablate}", []).append(time.perf_counter() - t)
  np_peak, xla_peak = matmul_peak()

  per = {k: float(np.median(v)) / (args.units * args.steps) for k, v in times.items() if v}
  out.update({
      "s_per_unit_step": {k: round(v, 4) for k, v in per.items()},
      "speedup_vs_torch": round(per["torch"] / per["stviz_jax"], 3) if "torch" in per else None,
      "matmul_peak_gflops": {"numpy_openblas": round(np_peak, 1), "xla": round(xla_peak, 1)},
      "compile_and_first_run_s": round(compile_and_first_s, 2),
      "stviz_mem_per_unit_mb": round(mem_per_unit / 2**20, 1) if mem_per_unit else None,
      "stviz_mem_one_unit_mb": round(one_unit_mem / 2**20, 1) if one_unit_mem else None,
      "process_max_rss_mb": round(max(rss0, resource.getrusage(
          resource.RUSAGE_SELF).ru_maxrss) / 1024, 1),
      "compilations": vis.trace_count,
  })
  if ablated is not None:
    out[f"ablation_no_{args.ablate}"] = {
        "speedup_of_lever": round(per[f"stviz_jax_no_{args.ablate}"] / per["stviz_jax"], 3),
        "mem_per_unit_mb": round(ablated_mem / 2**20, 1) if ablated_mem else None,
        "compilations": ablated.trace_count}
  if flops_per_unit_step:
    gflops = {k: flops_per_unit_step / v / 1e9 for k, v in per.items()}
    out["gflop_per_unit_step"] = round(flops_per_unit_step / 1e9, 2)
    out["gflops"] = {k: round(v, 1) for k, v in gflops.items()}
    out["fraction_of_peak"] = {k: round(v / max(np_peak, xla_peak), 3)
                               for k, v in gflops.items()}
  out.update({"backend": jax.default_backend(), "device": str(jax.devices()[0].device_kind),
              "machine": platform.machine(), "jax": jax.__version__,
              "source": source_version()})
  if net is not None:
    import torch
    out["torch"] = torch.__version__
  print(json.dumps(out))


if __name__ == "__main__":
  main()
