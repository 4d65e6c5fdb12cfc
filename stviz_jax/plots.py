"""The plots a researcher expects beside the pictures (matplotlib, Agg, PNG).

- `unit_history`: the objective E(x) and the normalised activation term
  <a_l(x), e_c> / (rho_l^2 a_hat_{l,c}) against the optimisation step for one
  unit, one line per regularisation setting;
- `layer_activations`: the final activation of every unit across a layer, one
  series per setting;
- `layer_objective`: the objective against the step for all units of a layer
  (median and 10-90 % band per setting);
- `class_activity`: a unit's maximum activity per class on a dataset, the
  highest classes as bars (the last column of the paper's Figs. 10 and 11);
- `motion_histogram`: a layer's units by motion index (and stream share).

Figures are built with `matplotlib.figure.Figure` and the Agg canvas directly
(no pyplot global state, safe in threads and without a display) and written
atomically.
"""

from __future__ import annotations

import io
from typing import Mapping, Sequence

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
import numpy as np

from stviz_jax import files


def _save(fig: Figure, path: str, dpi: int = 80) -> None:
  FigureCanvasAgg(fig)
  buf = io.BytesIO()
  fig.savefig(buf, format="png", dpi=dpi)
  files.write_bytes(path, buf.getvalue())


def unit_history(path: str, histories: Mapping[str, Mapping[str, np.ndarray]],
                 title: str = "") -> None:
  """Objective and activation against step for one unit.

  Args:
    path: output PNG.
    histories: setting label -> {"objective": (steps,), "activation": (steps,)}
      (either key may be missing).
    title: figure title (e.g. "fusion unit 3").
  """
  fig = Figure(figsize=(7.0, 2.6))
  axes = fig.subplots(1, 2)
  for ax, key, name in zip(axes, ("objective", "activation"),
                           ("objective E(x)", "activation term")):
    for label, h in histories.items():
      if key in h:
        y = np.asarray(h[key], np.float64)
        ax.plot(np.arange(1, len(y) + 1), y, label=label, linewidth=1.2)
    ax.set_xlabel("step")
    ax.set_ylabel(name)
    ax.grid(alpha=0.3)
  labelled = [ax for ax in axes if ax.lines]
  if len(histories) > 1 and labelled:
    labelled[-1].legend(fontsize=7, loc="best")
  if title:
    fig.suptitle(title, fontsize=9)
  # Fixed margins: tight_layout costs a second draw, and this plot is made per unit.
  fig.subplots_adjust(left=0.1, right=0.98, bottom=0.17, top=0.88, wspace=0.3)
  _save(fig, path)


def layer_activations(path: str, units: Sequence[int],
                      activations: Mapping[str, np.ndarray], title: str = "") -> None:
  """Final normalised activation per unit across a layer.

  Args:
    path: output PNG.
    units: `(U,)` unit indices (x axis).
    activations: setting label -> `(U,)` final activations (NaN = not run).
    title: figure title.
  """
  units = np.asarray(units)
  fig = Figure(figsize=(7.0, 2.6))
  ax = fig.subplots()
  n = len(activations)
  width = 0.8 / max(n, 1)
  for k, (label, acts) in enumerate(activations.items()):
    acts = np.asarray(acts, np.float64)
    if len(units) <= 64:
      ax.bar(np.arange(len(units)) + (k - (n - 1) / 2) * width, acts, width, label=label)
    else:
      ax.plot(np.arange(len(units)), acts, ".", markersize=3, label=label)
  if len(units) <= 32:
    ax.set_xticks(np.arange(len(units)), [str(u) for u in units], fontsize=7)
  else:
    ticks = np.linspace(0, len(units) - 1, 9).astype(int)
    ax.set_xticks(ticks, [str(units[t]) for t in ticks], fontsize=7)
  ax.set_xlabel("unit")
  ax.set_ylabel("final activation")
  ax.grid(alpha=0.3, axis="y")
  if n > 1:
    ax.legend(fontsize=7)
  if title:
    ax.set_title(title, fontsize=9)
  fig.tight_layout()
  _save(fig, path)


def layer_objective(path: str, histories: Mapping[str, np.ndarray],
                    title: str = "") -> None:
  """Objective against step for all units of a layer.

  Args:
    path: output PNG.
    histories: setting label -> `(U, steps)` objective per unit and step.
    title: figure title.
  """
  fig = Figure(figsize=(7.0, 2.6))
  ax = fig.subplots()
  for label, h in histories.items():
    h = np.asarray(h, np.float64).reshape(-1, np.shape(h)[-1])
    steps = np.arange(1, h.shape[1] + 1)
    lo, med, hi = np.percentile(h, [10, 50, 90], axis=0)
    line, = ax.plot(steps, med, label=f"{label} (median)", linewidth=1.4)
    ax.fill_between(steps, lo, hi, color=line.get_color(), alpha=0.2, linewidth=0)
  ax.set_xlabel("step")
  ax.set_ylabel("objective E(x)")
  ax.grid(alpha=0.3)
  ax.legend(fontsize=7, loc="lower right")
  if title:
    ax.set_title(title + " (band: 10-90 % of units)", fontsize=9)
  fig.tight_layout()
  _save(fig, path)


def class_activity(path: str, class_names: Sequence[str], values: np.ndarray,
                   top: int = 10, title: str = "") -> list[int]:
  """Horizontal bars of the `top` classes by a unit's maximum activity.

  Args:
    path: output PNG.
    class_names: `(K,)` names.
    values: `(K,)` maximum activity of the unit per class (NaN: class absent).
    top: number of classes shown (the paper shows 10).
    title: figure title.

  Returns:
    The shown class indices, highest first.
  """
  values = np.asarray(values, np.float64)
  if values.shape != (len(class_names),):
    raise ValueError(f"per-class activity has shape {values.shape}, expected "
                     f"({len(class_names)},) for {len(class_names)} class names")
  # NaN marks a class absent from the dataset: never shown.
  order = [int(i) for i in np.argsort(-values, kind="stable") if np.isfinite(values[i])][:top]
  fig = Figure(figsize=(4.2, 0.25 * len(order) + 0.9))
  ax = fig.subplots()
  ax.barh(np.arange(len(order))[::-1], values[order], color="#4c72b0")
  ax.set_yticks(np.arange(len(order))[::-1], [str(class_names[i]) for i in order],
                fontsize=7)
  ax.set_xlabel("maximum activity")
  ax.grid(alpha=0.3, axis="x")
  if title:
    ax.set_title(title, fontsize=9)
  fig.tight_layout()
  _save(fig, path)
  return order


def motion_histogram(path: str, motion_index: np.ndarray,
                     shares: Mapping[str, np.ndarray] | None = None, title: str = "") -> None:
  """How a layer's units divide between appearance and motion (`stviz_jax.insight.motion`).

  Args:
    path: output PNG.
    motion_index: `(U,)` per unit, 0 (fires as well without motion) to 1 (needs
      it); NaN (a unit not firing on its clips) is counted apart.
    shares: optional stream -> `(U,)` share of the activation carried by that
      stream (two-stream models); one more panel per stream.
    title: figure title.
  """
  panels = [("motion index (0 appearance, 1 motion)", np.asarray(motion_index, np.float64))]
  panels += [(f"share carried by {s}", np.asarray(v, np.float64))
             for s, v in (shares or {}).items()]
  fig = Figure(figsize=(3.2 * len(panels), 2.6))
  axes = np.atleast_1d(fig.subplots(1, len(panels)))
  bins = np.linspace(0.0, 1.0, 11)
  for ax, (label, values) in zip(axes, panels):
    ok = np.isfinite(values)
    ax.hist(values[ok], bins=bins, color="#4477aa", edgecolor="white")
    ax.set_xlim(0, 1)
    ax.set_xlabel(label, fontsize=8)
    ax.set_ylabel("units")
    ax.grid(alpha=0.3, axis="y")
    if not ok.all():
      ax.text(0.98, 0.95, f"{int((~ok).sum())} not firing", transform=ax.transAxes,
              ha="right", va="top", fontsize=7)
  if title:
    fig.suptitle(title, fontsize=9)
  fig.tight_layout()
  _save(fig, path)
