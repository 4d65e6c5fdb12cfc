r"""Sweep throughput against chunk size, and memory per unit.

Workload: the VGG-style network of `common.py` (VGG-16 blocks 1-3, half
width) at 112x112, all units of `conv3_3` (128) under one setting, 32 steps,
through `stviz_jax.sweep.run_sweep` with chunk sizes 1, 4, 16, 64 (no
checkpointing). Memory per unit is XLA's compiled memory analysis of the
chunk step (temporaries + outputs) divided by the chunk size.

  python benchmarks/sweep_chunks.py [--units=64 --steps=32 --size=112]
"""

import argparse
import json
import time

import stviz_jax as sv
from stviz_jax import chunks, sweep
from common import machine, vgg_style_model


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--units", type=int, default=64)
  p.add_argument("--steps", type=int, default=32)
  p.add_argument("--size", type=int, default=112)
  p.add_argument("--chunks", default="1,4,16,64")
  args = p.parse_args()
  model = vgg_style_model(args.size)
  rows = []
  for chunk in map(int, args.chunks.split(",")):
    config = sv.default_config()
    config.steps = args.steps
    config.chunk_size = chunk
    vis = sv.Visualizer(model, "conv3_3", config)
    per_element = chunks.element_memory_bytes(vis)
    t = time.perf_counter()
    sweep.run_sweep(vis, list(range(chunk)), [{}], config)  # compile + warm-up.
    compile_s = time.perf_counter() - t
    t = time.perf_counter()
    sweep.run_sweep(vis, list(range(args.units)), [{}], config)
    seconds = time.perf_counter() - t
    rows.append({"chunk": chunk, "units_per_s": round(args.units / seconds, 3),
                 "s_per_unit_step": round(seconds / (args.units * args.steps), 5),
                 "compile_s": round(compile_s, 2),
                 "mem_per_unit_mb": round(per_element / 2**20, 1) if per_element else None,
                 "compilations": vis.trace_count})
  print(json.dumps({"benchmark": "sweep_chunks", "layer": "conv3_3", "size": args.size,
                    "units": args.units, "steps": args.steps, "rows": rows, **machine()}))


if __name__ == "__main__":
  main()
