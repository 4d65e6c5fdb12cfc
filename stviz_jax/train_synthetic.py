r"""Trains the synthetic two-stream benchmark model and measures the paper's claims.

  python -m stviz_jax.train_synthetic --config=configs/synthetic_two_stream.py \
      --workdir=DIR [--install]

Every training batch is drawn fresh from `stviz_jax.data.synthetic` inside
the jitted step (no dataset on disk, no overfitting to a fixed set); the test
set is a fixed draw from a seed the training stream never uses. Writes to DIR:

    metrics.json                 test accuracy, per-class accuracy, confusion, loss curve
    weights/                     orbax checkpoint (models.load(..., weights=DIR/weights))
    synthetic_two_stream.npz     the same weights as one small file (the shipped asset)
    claims.json                  per class and gamma: measured hue / direction /
                                 temporal variation of the optimised inputs vs. truth

`--install` copies the `.npz` to stviz_jax/assets/, the default weights.
"""

from __future__ import annotations

import json
import os
import time

from absl import app, flags, logging
import jax
import jax.numpy as jnp
import ml_collections
from ml_collections import config_flags
import numpy as np
import optax

from stviz_jax import analysis, files
from stviz_jax.data import synthetic
from stviz_jax.models import base, checkpoint
from stviz_jax.models.zoo import synthetic_two_stream as zoo_model
from stviz_jax.optimize import Visualizer


def classes_from_config(data: ml_collections.ConfigDict) -> tuple[synthetic.MotionClass, ...]:
  colours = [c.strip() for c in str(data.colours).split(",") if c.strip()]
  directions = [float(d) for d in str(data.directions).split(",") if d.strip()]
  return synthetic.grid_classes(colours, directions, data.speed)


def clip_spec_from_config(data: ml_collections.ConfigDict) -> synthetic.ClipSpec:
  return synthetic.ClipSpec(frames=data.frames, size=data.size, clutter=data.clutter,
                            distractors=data.distractors, noise=data.noise, direction_jitter=data.direction_jitter,
                            speed_jitter=data.speed_jitter)


def train(config: ml_collections.ConfigDict, snapshot=None):
  """Trains from random init; returns `(model, metrics)`.

  Loss: softmax cross-entropy of the logits, optimised with AdamW and a
  cosine-decayed learning rate. With `config.train.save_every > 0`,
  `snapshot(step, params)` is called every that many steps (the training
  checkpoints `stviz_jax.evolution` follows units through).
  """
  tc = config.train
  classes = classes_from_config(config.data)
  spec = clip_spec_from_config(config.data)
  labels = tuple(c.name for c in classes)
  model = zoo_model.synthetic_two_stream(pretrained=False, labels=labels,
                                         frames=spec.frames, size=spec.size,
                                         width=tc.width, seed=tc.seed)
  tx = optax.adamw(optax.cosine_decay_schedule(tc.learning_rate, tc.steps, 0.05),
                   weight_decay=tc.weight_decay)
  params = model.variables["params"]
  opt_state = tx.init(params)

  def loss_fn(params, inputs, y):
    logits, _ = model.apply({"params": params}, inputs)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    return loss, jnp.mean(jnp.argmax(logits, -1) == y)

  @jax.jit
  def step(params, opt_state, key):
    inputs, y = synthetic.sample_batch(key, classes, tc.batch_size, spec)
    (loss, acc), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, inputs, y)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss, acc

  # The training stream folds the step into seed; the test set uses test_seed.
  key = jax.random.PRNGKey(tc.seed)
  curve = []
  t0 = time.time()
  for i in range(tc.steps):
    params, opt_state, loss, acc = step(params, opt_state, jax.random.fold_in(key, i))
    if snapshot is not None and tc.get("save_every") and (i + 1) % tc.save_every == 0:
      snapshot(i + 1, params)
    if (i + 1) % tc.log_every == 0 or i + 1 == tc.steps:
      loss, acc = float(loss), float(acc)
      if not np.isfinite(loss):
        raise FloatingPointError(f"training loss is {loss} at step {i + 1}; lower "
                                 "config.train.learning_rate")
      curve.append({"step": i + 1, "loss": loss, "batch_accuracy": acc})
      logging.info("step %d/%d: loss %.4f, batch accuracy %.3f (%.1fs)", i + 1,
                   tc.steps, loss, acc, time.time() - t0)
  train_seconds = time.time() - t0
  variables = {"params": params}
  model = base.wrap(model.module, variables, model.spec.streams,
                    layers=zoo_model.LAYERS, name=model.name, labels=labels)
  metrics = evaluate(model, classes, spec, tc.test_size, tc.test_seed)
  metrics.update(train_seconds=round(train_seconds, 1), curve=curve)
  return model, metrics


def evaluate(model, classes, spec: synthetic.ClipSpec, size: int, seed: int) -> dict:
  """Accuracy, per-class accuracy and confusion matrix on a fixed test draw."""
  inputs, y = synthetic.dataset(classes, size, seed, spec)
  logits = jax.jit(model.apply)(model.variables, inputs)[0]
  pred = np.asarray(jnp.argmax(logits, -1))
  k = len(classes)
  confusion = np.zeros((k, k), np.int64)
  np.add.at(confusion, (y, pred), 1)
  per_class = confusion.diagonal() / np.maximum(confusion.sum(1), 1)
  return {"test_accuracy": float(np.mean(pred == y)), "test_size": int(size),
          "per_class_accuracy": {c.name: float(a) for c, a in zip(classes, per_class)},
          "confusion": confusion.tolist(), "labels": [c.name for c in classes]}


def measure_claims(model, classes, config: ml_collections.ConfigDict) -> dict:
  """Visualises every class unit at each gamma and compares with the truth.

  Per class and gamma: the dominant hue of the optimised appearance vs. the
  class colour's hue, the mean direction of the optimised flow vs. the class
  direction (both as circular errors in degrees), the flow's magnitude and
  relative temporal variation.
  """
  vis = Visualizer(model, "logits", config)
  units = list(range(len(classes)))
  true_hue = np.asarray(analysis.hue_chroma(jnp.asarray([c.rgb for c in classes]))[0])
  true_dir = np.asarray([c.direction for c in classes])
  out = {"gammas": list(config.gammas), "labels": [c.name for c in classes], "by_gamma": {}}
  for gamma in config.gammas or (config.regularizer.flow.gamma,):
    result = vis.run(units, seed=config.seed,
                     tv={"flow": (config.regularizer.flow.kappa, float(gamma))})
    m = analysis.measure(result)
    hue_err = np.asarray(analysis.angle_difference(m["rgb_hue"], true_hue))
    dir_err = np.asarray(analysis.angle_difference(m["flow_direction"], true_dir))
    out["by_gamma"][f"{gamma:g}"] = {
        "hue": m["rgb_hue"].tolist(), "hue_error": hue_err.tolist(),
        "direction": m["flow_direction"].tolist(), "direction_error": dir_err.tolist(),
        "magnitude": m["flow_magnitude"].tolist(),
        "temporal_variation": m["flow_temporal_variation"].tolist(),
        "max_hue_error": float(hue_err.max()), "max_direction_error": float(dir_err.max()),
        "mean_temporal_variation": float(m["flow_temporal_variation"].mean()),
    }
  return out


def _write_json(path: str, obj) -> None:
  files.write_text(path, json.dumps(obj, indent=2))


def run(config: ml_collections.ConfigDict, workdir: str, install: bool = False) -> dict:
  """Trains, evaluates, saves the weights and (if `config.train.claims`) measures claims."""
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, "config.json"), "w") as f:
    f.write(config.to_json(indent=2))
  classes = classes_from_config(config.data)
  spec = clip_spec_from_config(config.data)

  def snapshot(step, params):  # checkpoints/step_000050.npz, loadable as weights=.
    zoo_model.save_npz(
        os.path.join(workdir, "checkpoints", f"step_{step:06d}.npz"), {"params": params},
        {"architecture": zoo_model.ARCHITECTURE, "labels": [c.name for c in classes],
         "width": config.train.width, "clip": {"frames": spec.frames, "size": spec.size},
         "train_step": step, "source": "python -m stviz_jax.train_synthetic"})

  model, metrics = train(config, snapshot)
  logging.info("test accuracy %.4f on %d clips", metrics["test_accuracy"],
               metrics["test_size"])
  metadata = {
      "architecture": zoo_model.ARCHITECTURE, "labels": list(model.labels),
      "width": config.train.width,
      "classes": [[c.colour, c.direction, c.speed] for c in classes],
      "clip": {"frames": spec.frames, "size": spec.size, "clutter": spec.clutter,
               "distractors": spec.distractors,
               "noise": spec.noise, "direction_jitter": spec.direction_jitter,
               "speed_jitter": spec.speed_jitter},
      "test_accuracy": metrics["test_accuracy"], "train_steps": config.train.steps,
      "source": "python -m stviz_jax.train_synthetic",
  }
  checkpoint.save(os.path.join(workdir, "weights"), model.variables, metadata)
  npz = os.path.join(workdir, "synthetic_two_stream.npz")
  zoo_model.save_npz(npz, model.variables, metadata)
  _write_json(os.path.join(workdir, "metrics.json"), metrics)
  if install:
    with open(npz, "rb") as f:
      files.write_bytes(zoo_model.ASSET, f.read())
    logging.info("installed %s", zoo_model.ASSET)
  if config.train.claims:
    claims = measure_claims(model, classes, config)
    _write_json(os.path.join(workdir, "claims.json"), claims)
    for g, c in claims["by_gamma"].items():
      logging.info("gamma %s: max hue error %.1f deg, max direction error %.1f deg, "
                   "mean temporal variation %.3f", g, c["max_hue_error"],
                   c["max_direction_error"], c["mean_temporal_variation"])
    metrics["claims"] = claims
  return metrics


_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "configs/synthetic_two_stream.py[:quick]", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory receiving all outputs.")
_INSTALL = flags.DEFINE_bool("install", False,
                             "Copy the trained weights to stviz_jax/assets/ (the default).")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.INFO)
  run(_CONFIG.value, _WORKDIR.value, _INSTALL.value)


if __name__ == "__main__":
  flags.mark_flags_as_required(["config", "workdir"])
  from stviz_jax import cli  # pylint: disable=import-outside-toplevel
  cli.run_absl(main)
