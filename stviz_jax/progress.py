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
import warnings

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


class Bar:
  """Progress of a loop over `total` items (units, (unit, setting) pairs, clips).

  A `tqdm.auto` bar with rate and ETA, which draws in a terminal and as a
  widget in Jupyter / Colab, and an absl log line per `update` (for log
  files). `enabled=False` prints nothing (the log lines stay); `TQDM_DISABLE=1`
  in the environment also turns the bar off. Items restored rather than
  computed (`skip`) advance the bar but not the rate.
  """

  def __init__(self, desc: str, total: int, unit: str, enabled: bool = True,
               noun: str | None = None):
    with warnings.catch_warnings():  # without ipywidgets a notebook gets the text bar.
      warnings.simplefilter("ignore")
      from tqdm.auto import tqdm  # pylint: disable=import-outside-toplevel
    self.desc, self.total, self.unit = desc, int(total), unit
    self.noun = noun or f"{unit}s"  # what the log line counts, e.g. "(unit, setting) pairs".
    self.bar = tqdm(total=self.total, desc=desc, unit=unit, disable=not enabled,
                    dynamic_ncols=True)
    self.done = self.computed = 0
    self.t0 = time.time()

  def skip(self, n: int) -> None:
    """`n` items already done (e.g. restored from a checkpoint)."""
    self.done += n
    self.bar.update(n)

  def update(self, n: int, log: bool = True, where: str = "") -> None:
    """`n` more items computed; logs `where` (e.g. "chunk 2/5, "), done/total, rate
    and ETA when `log`."""
    n = min(n, self.total - self.done)
    self.done += n
    self.computed += n
    self.bar.update(n)
    if log:
      rate = self.computed / max(time.time() - self.t0, 1e-9)
      logging.info("%s: %s%d/%d %s, %.2f %ss/s, ETA %.0fs", self.desc, where, self.done,
                   self.total, self.noun, rate, self.unit,
                   (self.total - self.done) / max(rate, 1e-9))

  def close(self) -> None:
    self.bar.close()

  def __enter__(self) -> "Bar":
    return self

  def __exit__(self, *exc) -> None:
    self.close()
