"""Progress of compiled optimisations: steps done, seconds per step, ETA.

An optimisation runs as compiled calls of `optimize.STEPS_PER_CALL` steps.
The host dispatches call k + 1 before waiting for call k, so the device never
idles, and `StepProgress.tick` hears of each call as it completes; it logs
at most every `every` seconds. The time from the start to the first call's
launch is reported separately as start-up (compilation, when the call
compiled). Nothing reports from inside a compiled program: no host callback,
so the programs stay pure and cacheable (`stviz_jax.compile_cache`).
"""

from __future__ import annotations

import time
import warnings

from absl import logging


class StepProgress:
  """Host-side state of the optimisation that is running now (one at a time)."""

  def __init__(self, every: float = 10.0):
    self.every = every
    self.label, self.steps = "", 0
    self.started = self.first = self.last_log = None
    self.done = 0

  @property
  def enabled(self) -> bool:
    return self.every > 0

  def start(self, label: str, steps: int) -> None:
    """Called just before the first compiled call (its compilation counts as start-up)."""
    self.label, self.steps = label, int(steps)
    self.started = time.time()
    self.first = self.last_log = None
    self.done = 0

  def tick(self, done: int) -> None:
    """`done` steps have run; `tick(0)`: the first call has been launched."""
    now = time.time()
    if self.started is None or done < self.done:
      return
    if self.first is None:
      self.first = self.last_log = now
      startup = now - self.started
      if self.enabled and startup >= 1.0:
        logging.info("%s: started after %.1fs (compilation)", self.label, startup)
      return
    self.done = done
    if self.enabled and done and now - self.last_log >= self.every:
      self.last_log = now
      per_step = (now - self.first) / done
      logging.info("%s: step %d/%d, %.3fs/step, ETA %.0fs", self.label, done, self.steps,
                   per_step, per_step * (self.steps - done))

  def finish(self) -> tuple[float, float]:
    """`(start-up seconds, loop seconds)` of the optimisation just finished."""
    now = time.time()
    if self.started is None:
      return 0.0, 0.0
    first = self.first if self.first is not None else now
    out = first - self.started, now - first
    self.started = None
    return out


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
