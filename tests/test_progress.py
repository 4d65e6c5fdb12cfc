"""Progress inside the compiled loop: steps, s/step, ETA and start-up reported; off means silent."""

from absl import logging as absl_logging
import jax
import numpy as np

import stviz_jax as sv
from stviz_jax import progress

import handbuilt


def _messages(caplog):
  return [r.getMessage() for r in caplog.records]


def test_ticks_from_inside_scan_report_steps_and_eta(caplog, monkeypatch):
  config = handbuilt.config(steps=12, chunk_size=0)
  config.progress_every = 1e-9  # log at every step.
  vis = sv.Visualizer(handbuilt.model(), "motion", config)
  seen = []
  monkeypatch.setattr(vis.progress, "tick", lambda step, _t=vis.progress.tick: (
      seen.append(int(np.asarray(step).ravel()[0])), _t(step)))
  # The callback is bound at trace time, so patch before the first call.
  with caplog.at_level("INFO"):
    absl_logging.set_verbosity(absl_logging.INFO)
    vis.run_chunk(np.array([0, 1]), [vis.settings()] * 2, seed=0)
  assert sorted(set(seen)) == list(range(12))  # every step reported once per loop.
  logs = [m for m in _messages(caplog) if "step" in m and "ETA" in m]
  assert logs and "step 11/12" in logs[-1]
  startup, loop = vis.last_timing
  assert startup >= 0 and loop > 0


def test_progress_off_adds_no_callback_to_the_loop():
  on, off = handbuilt.config(steps=3), handbuilt.config(steps=3)
  off.progress_every = 0.0
  model = handbuilt.model()
  texts = {}
  for name, config in (("on", on), ("off", off)):
    vis = sv.Visualizer(model, "motion", config)
    units = np.array([0], np.int32)
    keys = jax.vmap(lambda c: jax.random.fold_in(jax.random.PRNGKey(0), c))(units)
    tv = {s: (np.ones(1, np.float32), np.zeros(1, np.float32)) for s in model.spec.streams}
    texts[name] = str(jax.make_jaxpr(vis.compiled_units.scan)(model.variables, units, keys, tv))
  assert "callback" in texts["on"] and "callback" not in texts["off"]


def test_results_do_not_depend_on_progress():
  a, b = handbuilt.config(steps=5), handbuilt.config(steps=5)
  b.progress_every = 0.0
  model = handbuilt.model()
  ra = sv.Visualizer(model, "motion", a).run([0, 2], seed=1)
  rb = sv.Visualizer(model, "motion", b).run([0, 2], seed=1)
  for s in ra.inputs:
    np.testing.assert_array_equal(ra.inputs[s], rb.inputs[s])


def test_step_progress_without_a_loop_is_silent():
  p = progress.StepProgress(every=0.0)
  assert not p.enabled
  assert p.finish() == (0.0, 0.0)
