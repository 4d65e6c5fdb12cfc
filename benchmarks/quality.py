r"""Picture quality per recipe and budget: which recipe gives readable pictures?

For each recipe (a set of config overrides) and step budget, optimises the
same units under the same temporal settings and measures them with
`stviz_jax.quality` (transform robustness and class rank under 16 seeded
random crops / flips / time rolls / blurs the optimisation did not use,
spectral slope of the frames and of the flow magnitude, temporal variation,
flow speed), with the wall time of the optimisation (compilation included,
as a user waits for it).

Networks:
* `--net=i3d`: the real Kinetics-400 RGB I3D at `--frames` x `--size`
  (default 8 x 112, README command 1's size): class units "playing chess",
  "playing squash or racquetball" and Mixed_4f channels 0, 256, 576, 704.
* `--net=synthetic`: the shipped synthetic two-stream net, where the right
  answer is known (class c's colour and direction): four class units.

Prints one JSON line per recipe x steps; `RECIPES` below lists the recipes
(`--recipes=a,b`), each a set of config overrides.

  python benchmarks/quality.py --net=i3d --recipes=paper,fourier_imagenet --steps=30,100
  python benchmarks/quality.py --net=synthetic --steps=50,150
"""

import argparse
import json
import os
import platform
import time

import jax

import stviz_jax as sv
from stviz_jax import job, plan, quality, render
from stviz_jax.config import default_config

# Config overrides per recipe (dotted field -> value). "paper" is the paper's
# pixel recipe, unchanged; the others are what Lucid, Lucent, Horama and MACO
# use, alone and together.
RECIPES = {
    "paper": {},
    "fourier": {"param.kind": "fourier"},
    "fourier_imagenet": {"param.kind": "fourier", "param.colour": "imagenet"},
    "fourier_imagenet_decay0.75": {"param.kind": "fourier", "param.colour": "imagenet",
                                   "param.decay": 0.75},
    "fourier_imagenet_decay0.5": {"param.kind": "fourier", "param.colour": "imagenet",
                                  "param.decay": 0.5},
    "fourier_imagenet_decay1.5": {"param.kind": "fourier", "param.colour": "imagenet",
                                  "param.decay": 1.5},
    "fourier_imagenet_decay1.25_lucid_tf": {
        "param.kind": "fourier", "param.colour": "imagenet", "param.decay": 1.25,
        "transforms": "pad(6), jitter(4), scale(0.9,1.1), rotate(5), jitter"},
    "fourier_imagenet_decay1.5_lucid_tf": {
        "param.kind": "fourier", "param.colour": "imagenet", "param.decay": 1.5,
        "transforms": "pad(6), jitter(4), scale(0.9,1.1), rotate(5), jitter"},
    "fourier_imagenet_decay1.5_lucid_tf_chunk1": {
        "param.kind": "fourier", "param.colour": "imagenet", "param.decay": 1.5,
        "transforms": "pad(6), jitter(4), scale(0.9,1.1), rotate(5), jitter", "chunk_size": 1},
    "fourier_imagenet_decay1.5_lucid_tf_flip": {
        "param.kind": "fourier", "param.colour": "imagenet", "param.decay": 1.5,
        "transforms": "pad(6), jitter(4), scale(0.9,1.1), rotate(5), flip, jitter"},
    "fourier_imagenet_decay1.5_lucid_tf_flip_time": {
        "param.kind": "fourier", "param.colour": "imagenet", "param.decay": 1.5,
        "transforms": "pad(6), jitter(4), scale(0.9,1.1), rotate(5), flip, time_jitter(2), "
                      "jitter"},
    "fourier_imagenet_decay1.5_chunk1": {"param.kind": "fourier", "param.colour": "imagenet",
                                         "param.decay": 1.5, "chunk_size": 1},
    "fourier_imagenet_decay1.5_logprob": {"param.kind": "fourier", "param.colour": "imagenet",
                                          "param.decay": 1.5, "objective.class_score": "log_prob"},
    "fourier_imagenet_decay1.5_lucid_tf_logprob": {
        "param.kind": "fourier", "param.colour": "imagenet", "param.decay": 1.5,
        "objective.class_score": "log_prob",
        "transforms": "pad(6), jitter(4), scale(0.9,1.1), rotate(5), jitter"},
    "fourier_imagenet_lucid_tf_lr0.1": {"param.kind": "fourier", "param.colour": "imagenet",
                                        "optimizer.learning_rate": 0.1,
                                        "transforms": "pad(6), jitter(4), scale(0.9,1.1), "
                                                      "rotate(5), jitter"},
    "fourier_imagenet_lr0.1": {"param.kind": "fourier", "param.colour": "imagenet",
                               "optimizer.learning_rate": 0.1},
    "fourier_imagenet_lr0.02": {"param.kind": "fourier", "param.colour": "imagenet",
                                "optimizer.learning_rate": 0.02},
    "fourier_imagenet_const": {"param.kind": "fourier", "param.colour": "imagenet",
                               "optimizer.schedule": "constant"},
    "fourier_imagenet_lucid_tf": {"param.kind": "fourier", "param.colour": "imagenet",
                                  "transforms": "pad(6), jitter(4), scale(0.9,1.1), "
                                                "rotate(5), jitter"},
    "fourier_imagenet_scale": {"param.kind": "fourier", "param.colour": "imagenet",
                               "transforms": "jitter, scale(0.85,1.15)"},
    "fourier_imagenet_time": {"param.kind": "fourier", "param.colour": "imagenet",
                              "transforms": "jitter, scale(0.85,1.15), time_jitter(1)"},
    "maco_imagenet": {"param.kind": "maco", "param.colour": "imagenet"},
    "pixel_lucid_tf": {"transforms": "pad(6), jitter(4), scale(0.9,1.1), rotate(5), jitter"},
    "pixel_lr0.1": {"optimizer.learning_rate": 0.1},
}

NETS = {
    "i3d": dict(model="i3d_kinetics400", targets={
        "classes": ("logits", "playing chess;playing squash or racquetball", "class_logit"),
        "mixed_4f": ("Mixed_4f", "0,256,576,704", "channel")}),
    "synthetic": dict(model="synthetic_two_stream", targets={
        "classes": ("logits", "0,4,8,11", "class_logit")}),
}


def _set(config, dotted, value):
  *path, leaf = dotted.split(".")
  node = config
  for p in path:
    node = node[p]
  node[leaf] = value


def recipe_config(net: str, recipe: str, steps: int, frames: int, size: int):
  config = default_config()
  config.model = NETS[net]["model"]
  if net == "i3d":
    config.model_overrides.frames = frames
    config.model_overrides.size = size
  config.steps = steps
  config.progress_every = 0.0
  for k, v in RECIPES[recipe].items():
    _set(config, k, v)
  return config


def measure(model, config, targets, gammas, transforms, save: str = "") -> dict:
  """Optimises every target under every gamma; the quality of each and the wall time.

  With `save`, each result's grid (units x gammas, middle frames) goes to
  `save/<target>.png`, so the pictures can be looked at beside the numbers.
  """
  out = {"seconds": 0.0, "targets": {}}
  for name, (layer, units_spec, kind) in targets.items():
    units = plan.parse_units(units_spec, model, layer)
    cfg = config.copy_and_resolve_references()
    cfg.objective.kind = kind
    vis = sv.optimize.Visualizer(model, layer, cfg)
    per_gamma, results = {}, []
    for g in gammas:
      tv = plan.settings_from_config(_with_gammas(cfg, [g]), model.spec.streams)[0]
      t0 = time.time()
      result = vis.run(units, seed=0, tv=tv, log_progress=False)
      out["seconds"] += time.time() - t0
      results.append(result)
      q = quality.assess(model, layer, result.inputs, units, transforms)
      per_gamma[f"{g:g}"] = {"summary": quality.summarise(q, layer == sv.models.LOGITS),
                             "units": q}
    out["targets"][name] = per_gamma
    if save:
      os.makedirs(save, exist_ok=True)
      for g, r in zip(gammas, results):
        r.save(os.path.join(save, f"{name}_gamma{g:g}.npz"), config)
      render.save_png(os.path.join(save, f"{name}.png"), job.layer_grid(
          results, [job.unit_label(u, model.labels, layer) for u in units],
          [job.setting_label(r) for r in results]))
  return out


def _with_gammas(config, gammas):
  c = config.copy_and_resolve_references()
  c.gammas = tuple(gammas)
  return c


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--net", default="i3d", choices=sorted(NETS))
  p.add_argument("--recipes", default="paper,fourier_imagenet")
  p.add_argument("--steps", default="30,100")
  p.add_argument("--gammas", default="1")
  p.add_argument("--frames", type=int, default=8)
  p.add_argument("--size", type=int, default=112)
  p.add_argument("--transforms", type=int, default=16, help="evaluation transforms")
  p.add_argument("--targets", default="", help="only these targets (comma-separated)")
  p.add_argument("--save", default="", help="write each recipe's grids under SAVE/<recipe>_<steps>/")
  args = p.parse_args()
  targets = NETS[args.net]["targets"]
  if args.targets:
    targets = {k: v for k, v in targets.items() if k in args.targets.split(",")}
  gammas = [float(g) for g in args.gammas.split(",")]
  first = recipe_config(args.net, "paper", 1, args.frames, args.size)
  kwargs = dict(first.model_overrides)
  model = sv.models.load(first.model, **kwargs)
  frames = next(iter(model.spec.streams.values())).frames
  transforms = quality.transform_set(args.transforms, frames=frames, seed=0)
  for recipe in args.recipes.split(","):
    if recipe not in RECIPES:
      raise SystemExit(f"error: unknown recipe {recipe!r}; valid: {', '.join(RECIPES)}")
    for steps in (int(s) for s in args.steps.split(",")):
      config = recipe_config(args.net, recipe, steps, args.frames, args.size)
      m = measure(model, config, targets, gammas, transforms,
                  os.path.join(args.save, f"{recipe}_{steps}") if args.save else "")
      line = {"benchmark": "quality", "net": args.net, "recipe": recipe, "steps": steps,
              "frames": args.frames, "size": args.size, "gammas": gammas,
              "seconds": round(m["seconds"], 1),
              "summary": {t: {g: v["summary"] for g, v in per.items()}
                          for t, per in m["targets"].items()},
              "units": {t: {g: v["units"] for g, v in per.items()}
                        for t, per in m["targets"].items()},
              "overrides": RECIPES[recipe], "backend": jax.default_backend(),
              "machine": platform.processor() or platform.machine()}
      print(json.dumps(line), flush=True)


if __name__ == "__main__":
  main()
