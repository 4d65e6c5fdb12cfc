"""Whole-layer sweeps: every unit x every regularisation setting, chunked,
sharded over devices (and hosts), resumable after a kill, with progress.

The (unit, setting) pairs are flattened into one element axis and cut into
equal chunks; the last chunk is padded with copies of the last element, so
one compiled step serves the whole sweep. The element axis is sharded over
the local devices with a `NamedSharding` (weights replicated). Each finished
chunk is checkpointed with orbax's `CheckpointManager`; a rerun of the same
command restores finished chunks and computes the rest with the same compiled
function, so on CPU the final results are bitwise those of an uninterrupted
run. Across hosts (`jax.distributed`), each process takes a disjoint slice of
the units and writes its own results.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from typing import Mapping, Sequence

from absl import logging
import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from stviz_jax import chunks
from stviz_jax import config as config_lib
from stviz_jax import files
from stviz_jax import progress as progress_lib
from stviz_jax.models import checkpoint
from stviz_jax.optimize import Visualizer
from stviz_jax.plan import a_hat_given
from stviz_jax.result import Result

def host_units(units: Sequence[int]) -> list[int]:
  """The disjoint slice of `units` this process sweeps (all of them on one host)."""
  return list(units)[jax.process_index()::jax.process_count()]


def _fingerprint(model_name, layer, units, settings, config) -> str:
  blob = json.dumps(dict(model=model_name, layer=layer, units=list(map(int, units)),
                         settings=settings, config=json.loads(config.to_json())),
                    sort_keys=True)
  return hashlib.sha256(blob.encode()).hexdigest()


_digest_cache: list = []  # [(variables, digest)] of the last model swept.


def weights_digest(variables) -> str:
  """`checkpoint.digest` of the weights, computed once per variables object."""
  if _digest_cache and _digest_cache[0][0] is variables:
    return _digest_cache[0][1]
  d = checkpoint.digest(variables)
  _digest_cache[:] = [(variables, d)]
  return d


class _ChunkStore:
  """Finished chunks in an orbax CheckpointManager, guarded by a sweep fingerprint.

  The fingerprint names the sweep (model, layer, units, settings, config) and
  `weights` the content of the weights (`weights_digest`), not the path they
  were loaded from: weights re-saved at the same path make the finished chunks
  stale, so they are discarded and recomputed, never restored.
  """

  def __init__(self, directory: str, fingerprint: str, weights: str = ""):
    os.makedirs(directory, exist_ok=True)
    stamp = os.path.join(directory, "sweep.json")
    chunks = os.path.join(os.path.abspath(directory), "chunks")
    if os.path.exists(stamp):
      with open(stamp) as f:
        old = json.load(f)
      if old["fingerprint"] != fingerprint:
        raise ValueError(f"{directory} holds a sweep with a different model, layer, "
                         "units or config; use another --workdir or delete it")
      if old.get("weights", "") != weights:
        logging.warning("%s: the model's weights changed since its chunks were saved "
                        "(content sha256 %.12s, now %.12s); recomputing every chunk",
                        directory, old.get("weights", "") or "unrecorded", weights)
        shutil.rmtree(chunks, ignore_errors=True)  # ours, and stale.
        os.remove(stamp)
    if not os.path.exists(stamp):
      files.write_text(stamp, json.dumps({"fingerprint": fingerprint, "weights": weights}))
    self.manager = ocp.CheckpointManager(
        chunks,
        options=ocp.CheckpointManagerOptions(max_to_keep=None, create=True))

  def done(self) -> set[int]:
    return set(self.manager.all_steps())

  def save(self, index: int, out) -> None:
    self.manager.save(index, args=ocp.args.StandardSave(_as_tree(out)))
    self.manager.wait_until_finished()

  def restore(self, index: int):
    tree = self.manager.restore(index, args=ocp.args.StandardRestore())
    out = (tree["inputs"], tree["activation"], tree["history"])
    return out + ((tree["attribution"],) if "attribution" in tree else ())

  def chunk_path(self, index: int) -> str:
    return os.path.join(str(self.manager.directory), str(index))

  def discard(self, index: int) -> None:
    """Removes a chunk that cannot be restored, so it is computed and saved anew."""
    try:
      self.manager.delete(index)
    except Exception:  # pylint: disable=broad-except  # a corrupt step may not delete cleanly.
      pass
    shutil.rmtree(self.chunk_path(index), ignore_errors=True)
    self.manager.reload()


def _as_tree(out):
  inputs, act, hist, *attribution = out
  tree = {"inputs": dict(inputs), "activation": np.asarray(act), "history": dict(hist)}
  if attribution:
    tree["attribution"] = dict(attribution[0])
  return tree


def run_sweep(vis: Visualizer, units: Sequence[int],
              settings: Sequence[Mapping[str, tuple[float, float]]],
              config: ml_collections.ConfigDict, state_dir: str | None = None,
              seed: int = 0) -> list[Result]:
  """Optimises every unit under every setting; returns one `Result` per setting.

  Args:
    vis: the compiled optimisation for one layer (and objective).
    units: unit indices (this host's share; see `host_units`).
    settings: `{stream: (kappa, gamma)}` per setting ({} = the config's).
    config: uses `chunk_size`, `sweep.memory_budget_gb` (when present).
    state_dir: where finished chunks are checkpointed; None = no resume.
    seed: unit u starts from `fold_in(PRNGKey(seed), u)` under every setting.
  """
  units = np.asarray(list(units), np.int32)
  if units.size == 0:
    raise ValueError(f"no units to sweep for layer {vis.layer!r} on this host")
  vis.model.spec.check_units(vis.layer, units)
  full = [vis.settings(s) for s in settings] or [vis.settings()]
  elements = [(int(u), k) for k in range(len(full)) for u in units]

  devices = jax.local_devices()
  mesh = Mesh(np.asarray(devices), ("units",))
  sharding = NamedSharding(mesh, P("units"))
  replicated = NamedSharding(mesh, P())
  full_config = config_lib.complete(config)  # the fingerprint keeps the config as given.
  sweep_cfg = full_config.sweep
  chunk = chunks.plan_chunk_size(vis, len(elements), len(devices), int(config.chunk_size or 0),
                          float(sweep_cfg.memory_budget_gb))
  n_chunks = -(-len(elements) // chunk)
  padded = elements + [elements[-1]] * (n_chunks * chunk - len(elements))

  store = None
  if state_dir:
    store = _ChunkStore(state_dir, _fingerprint(vis.model.name, vis.layer, units, full,
                                                config),
                        weights=weights_digest(vis.model.variables))
  done = store.done() if store else set()
  if done:
    logging.info("%s: resuming, %d/%d chunks already done", vis.layer, len(done), n_chunks)

  outs = []
  t0 = time.time()
  compile_s = 0.0
  with progress_lib.Bar(vis.layer, len(elements), "unit",
                         bool(full_config.progress_bar),
                         noun="(unit, setting) pairs") as bar:
    for i in range(n_chunks):
      part = padded[i * chunk:(i + 1) * chunk]
      n_part = min(chunk, len(elements) - i * chunk)
      if i in done:
        try:
          restored = store.restore(i)
          jax.tree.map(np.asarray, restored)  # a corrupt chunk fails here, not later.
          if (len(restored) == 4) != vis.attribution:  # e.g. saved before the maps existed.
            raise ValueError("saved with%s the attribution maps; config.insight.attribution "
                             "is %s" % ("" if len(restored) == 4 else "out", vis.attribution))
          outs.append(restored)
          bar.skip(n_part)
          continue
        except Exception as e:  # pylint: disable=broad-except  # orbax/tensorstore raise many types.
          first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
          logging.warning("%s: checkpoint chunk %d (%s) cannot be restored (%s: %s); "
                          "recomputing it", vis.layer, i, store.chunk_path(i),
                          type(e).__name__, first)
          store.discard(i)
          done.discard(i)
      traces = vis.trace_count
      out = vis.run_chunk(np.array([u for u, _ in part], np.int32),
                          [full[k] for _, k in part], seed, sharding, replicated)
      if vis.trace_count > traces:
        compile_s = vis.last_timing[0]  # start-up of the call that compiled.
      if store:
        store.save(i, out)
      outs.append(out)
      bar.update(n_part, where=f"chunk {i + 1}/{n_chunks}, ")
  total = time.time() - t0
  logging.info("%s: sweep of %d pairs done in %.1fs (of which compilation %.1fs, "
               "%d chunks restored, %d compilation(s))", vis.layer, len(elements), total,
               compile_s, len(done), vis.trace_count)

  inputs, act, hist, *attribution = jax.tree.map(
      lambda *xs: np.concatenate(xs)[:len(elements)], *outs)
  results = []
  n = units.size
  for k, s in enumerate(full):
    sl = slice(k * n, (k + 1) * n)
    results.append(Result(
        layer=vis.layer, units=units, inputs={m: v[sl] for m, v in inputs.items()},
        activations=np.asarray(act[sl]), history={m: v[sl] for m, v in hist.items()},
        a_hat_given=a_hat_given(config), seed=seed, settings=s, class_names=vis.class_names,
        attribution={m: v[sl] for m, v in attribution[0].items()} if attribution else None))
  return results
