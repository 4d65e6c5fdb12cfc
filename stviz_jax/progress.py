"""Progress of compiled optimisation loops: steps done, seconds per step, ETA.

A chunk of units runs as one compiled `lax.scan`, so the host hears nothing
until it ends (a minute or more for a real network on a CPU). `StepProgress`
is fed by a `jax.debug.callback` inside the loop (`tick`, once per step: a few
microseconds against steps of 0.01-1 s) and logs at most every `every`
seconds. The time from the call to the first step is reported separately as
start-up (compilation, when the call compiled).
"""

from __future__ import annotations

import threading
import time

from absl import logging
import jax
import numpy as np


class StepProgress:
  """Host-side state of the loop that is running now (one at a time)."""

  def __init__(self, every: float = 10.0):
    self.every = every
    self._lock = threading.Lock()
    self.label, self.steps = "", 0
    self.started = self.first = self.last_log = None
    self.done = 0

  @property
  def enabled(self) -> bool:
    return self.every > 0

  def start(self, label: str, steps: int) -> None:
    """Called on the host just before the compiled loop is launched."""
    with self._lock:
      self.label, self.steps = label, int(steps)
      self.started = time.time()
      self.first = self.last_log = None
      self.done = 0

  def tick(self, step) -> None:
    """Called from inside the loop at the start of step `step`."""
    step = int(np.asarray(step).ravel()[0])
    now = time.time()
    with self._lock:
      if self.started is None or step < self.done:
        return
      if self.first is None:
        self.first = self.last_log = now
        startup = now - self.started
        if startup >= 1.0:
          logging.info("%s: started after %.1fs (compilation)", self.label, startup)
        return
      self.done = step
      if now - self.last_log >= self.every:
        self.last_log = now
        per_step = (now - self.first) / step
        logging.info("%s: step %d/%d, %.3fs/step, ETA %.0fs", self.label, step, self.steps,
                     per_step, per_step * (self.steps - step))

  def finish(self) -> tuple[float, float]:
    """`(start-up seconds, loop seconds)` of the loop just finished."""
    now = time.time()
    with self._lock:
      if self.started is None:
        return 0.0, 0.0
      first = self.first if self.first is not None else now
      out = first - self.started, now - first
      self.started = None
      return out

  def in_loop(self, step) -> None:
    """Traced: reports `step` to `tick` (nothing when disabled)."""
    if self.enabled:
      jax.debug.callback(self.tick, step)
