r"""Units per second: 16 units one at a time versus one vmapped batch of 16.

Workload: a VGG-style appearance network (VGG-16 blocks 1-3, half width:
32-64-128 channels) on 112x112 RGB, channel objective at `conv3_3`, the
paper's regularisers, Adam, 64 steps. Both modes use the same compiled
`Visualizer` code path; 'loop' calls it once per unit (chunk of 1), 'vmap'
once for all units (chunk of 16). Modes alternate over `--repeats` rounds so
machine noise hits both alike; the JSON line reports the median.

  python benchmarks/vmap_vs_loop.py [--units=16 --steps=64 --size=112 --repeats=2]

`--net=i3d`: the real Kinetics-400 I3D of README command 1 (8 x `--size`
clips, class units of 'logits', the main job's default recipe), e.g.
`--net=i3d --units=6 --steps=8` (its 2 classes x 3 gammas).
"""

import argparse
import json
import time

import os
import sys

import numpy as np

import stviz_jax as sv
from common import machine, vgg_style_model

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "configs"))


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--units", type=int, default=16)
  p.add_argument("--steps", type=int, default=64)
  p.add_argument("--size", type=int, default=112)
  p.add_argument("--repeats", type=int, default=2)
  p.add_argument("--net", default="vgg", choices=("vgg", "i3d"))
  args = p.parse_args()

  config = sv.default_config()
  if args.net == "vgg":
    model, layer = vgg_style_model(args.size), "conv3_3"
  else:
    import i3d_kinetics400  # configs/, on the path below.
    model, layer = sv.models.load("i3d_kinetics400", frames=8, size=args.size), "logits"
    config = i3d_kinetics400.get_config()
    config.objective.kind = "class_logit"
  config.steps = args.steps
  config.progress_every = 0.0
  units = list(range(args.units))

  loop_vis = sv.Visualizer(model, layer, config)
  vmap_vis = sv.Visualizer(model, layer, config)
  compile_s = {}
  for name, vis, chunk in (("loop", loop_vis, 1), ("vmap", vmap_vis, args.units)):
    t = time.perf_counter()
    vis.run(units[:chunk], chunk_size=chunk, log_progress=False)  # compile + warm up.
    compile_s[name] = time.perf_counter() - t

  times = {"loop": [], "vmap": []}
  for _ in range(args.repeats):
    t = time.perf_counter()
    for u in units:
      loop_vis.run([u], chunk_size=1, log_progress=False)
    times["loop"].append(time.perf_counter() - t)
    t = time.perf_counter()
    vmap_vis.run(units, chunk_size=args.units, log_progress=False)
    times["vmap"].append(time.perf_counter() - t)

  med = {k: float(np.median(v)) for k, v in times.items()}
  print(json.dumps({
      "benchmark": "vmap_vs_loop", "units": args.units, "steps": args.steps,
      "net": args.net, "size": args.size, "layer": layer,
      "loop_units_per_s": round(args.units / med["loop"], 4),
      "vmap_units_per_s": round(args.units / med["vmap"], 4),
      "speedup_vmap_over_loop": round(med["loop"] / med["vmap"], 3),
      "loop_s_per_unit_step": round(med["loop"] / (args.units * args.steps), 5),
      "vmap_s_per_unit_step": round(med["vmap"] / (args.units * args.steps), 5),
      "compile_s": {k: round(v, 2) for k, v in compile_s.items()},
      "compilations": {"loop": loop_vis.trace_count, "vmap": vmap_vis.trace_count},
      **machine(),
  }))


if __name__ == "__main__":
  main()
