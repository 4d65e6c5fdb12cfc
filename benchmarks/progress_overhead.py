r"""Cost of progress reports: the same chunk with progress on and off.

With `config.progress_every > 0` the host logs as each compiled call of
`optimize.STEPS_PER_CALL` steps completes (`stviz_jax.progress`; the program
is the same either way). This times `Visualizer.run_chunk` both
ways on one model, alternating over `--repeats` rounds after a warm-up, and
prints one JSON line with the median seconds per step of each and their ratio.

  python benchmarks/progress_overhead.py [--model=tiny_two_stream --steps=100 --units=4]
"""

import argparse
import json
import platform
import time

import jax
import numpy as np

import stviz_jax as sv


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--model", default="tiny_two_stream")
  p.add_argument("--layer", default="fusion")
  p.add_argument("--steps", type=int, default=100)
  p.add_argument("--units", type=int, default=4)
  p.add_argument("--repeats", type=int, default=5)
  args = p.parse_args()
  model = sv.models.load(args.model)
  units = np.arange(args.units)
  vis = {}
  for every in (0.0, 10.0):
    config = sv.default_config()
    config.steps, config.progress_every = args.steps, every
    vis[every] = sv.optimize.Visualizer(model, args.layer, config)
  settings = [vis[0.0].settings()] * len(units)
  times = {k: [] for k in vis}
  for _ in range(args.repeats + 1):  # the first round compiles.
    for k, v in vis.items():
      t = time.time()
      v.run_chunk(units, settings, seed=0)
      times[k].append((time.time() - t) / args.steps)
  off, on = (float(np.median(times[k][1:])) for k in (0.0, 10.0))
  print(json.dumps({"benchmark": "progress_overhead", "model": args.model, "layer": args.layer,
                    "units": args.units, "steps": args.steps, "s_per_step_off": round(off, 6),
                    "s_per_step_on": round(on, 6), "ratio_on_off": round(on / off, 4),
                    "backend": jax.default_backend(),
                    "machine": platform.processor() or platform.machine()}))


if __name__ == "__main__":
  main()
