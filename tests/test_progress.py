"""Progress of the compiled calls: steps, s/step, ETA and start-up reported by the host; off means silent."""

from absl import logging as absl_logging
import numpy as np

import stviz_jax as sv
from stviz_jax import optimize, progress

import handbuilt


def _messages(caplog):
  return [r.getMessage() for r in caplog.records]


def test_each_call_reports_its_steps_and_eta(caplog, monkeypatch):
  steps = 2 * optimize.STEPS_PER_CALL + 5  # the last call runs 5 steps, skips the rest.
  config = handbuilt.config(steps=steps, chunk_size=0)
  config.progress_every = 1e-9  # log at every report.
  vis = sv.Visualizer(handbuilt.model(), "motion", config)
  seen = []
  monkeypatch.setattr(vis.progress, "tick", lambda done, _t=vis.progress.tick: (
      seen.append(done), _t(done)))
  with caplog.at_level("INFO"):
    absl_logging.set_verbosity(absl_logging.INFO)
    vis.run_chunk(np.array([0, 1]), [vis.settings()] * 2, seed=0)
  call = optimize.STEPS_PER_CALL
  assert seen == [0, call, 2 * call, steps]  # launched, then each call as it completes.
  logs = [m for m in _messages(caplog) if "step" in m and "ETA" in m]
  assert [m.split(",")[0].split()[-1] for m in logs] == [
      f"{call}/{steps}", f"{2 * call}/{steps}", f"{steps}/{steps}"]
  assert "ETA 0s" in logs[-1]
  startup, loop = vis.last_timing
  assert startup >= 0 and loop > 0


def test_compiled_program_has_no_host_callback():
  # Progress is reported by the host between calls, so the program is the
  # same with progress on or off, and cacheable (no callback in it).
  on, off = handbuilt.config(steps=3), handbuilt.config(steps=3)
  off.progress_every = 0.0
  model = handbuilt.model()
  texts = {}
  for name, config in (("on", on), ("off", off)):
    vis = sv.Visualizer(model, "motion", config)
    texts[name] = vis.lower_element().as_text()
  assert "callback" not in texts["on"]
  assert texts["on"] == texts["off"]


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
