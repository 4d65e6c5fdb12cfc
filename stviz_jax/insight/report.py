"""The insight analyses of one result, as the main job runs them (`config.insight`).

`plan(config, model)` reads and checks what is asked (natural clips, the clips
to accentuate) before the job writes anything; `assess(vis, result, config,
plan, out_dir)` measures one target's result under one setting, writes its
media beside the result and returns the `insight` block of that setting in
`summary.json`:

    motion            {unit: {motion_index, static_index, shuffle_drop, shares, ...}}
                      on the unit's optimised clip (insight.motion)
    motion_top_clips  the same, averaged over the unit's top natural clips, with
                      `top_clips` (their names)                 (insight.clips)
    sanity            {unit: {layers, correlation, natural, score, natural_score,
                      flag, why}}                    (insight.clips, insight.sanity)
    attribution       {unit: {stream: {stem, frames, height, width}}}: MACO's map of
                      the optimisation, as an overlay video     (insight.attribution)
    accentuation      {unit: [{clip, name, activation_before, activation_after,
                      distance, streams: {stream: {stem, frames, ...}}}]}
                                                           (insight.accentuate)

Files per setting folder: `motion.csv` and `motion_histogram.png` (one line
/ one count per unit), `unit_0003_attribution_<stream>.*`,
`unit_0003_accentuated<k>_<stream>.*` (seed | accentuated on one colour
scale; `stviz_jax.layout`).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import numpy as np

from stviz_jax import layout, plots, render
from stviz_jax.insight import accentuate as accentuate_lib
from stviz_jax.insight import clips as clips_lib
from stviz_jax.insight import motion as motion_lib
from stviz_jax.insight import sanity as sanity_lib
from stviz_jax.result import Result

# Media of the insight clips: a still, and the clip as looping GIF, MP4, WebM.
_FORMATS = ("png", "gif", "mp4", "webm")


@dataclasses.dataclass(frozen=True)
class Plan:
  """What `config.insight` asks for, resolved against the model."""

  natural: clips_lib.NaturalClips | None
  accentuate: tuple[int, ...]


def parse_clip_indices(spec: str, natural: clips_lib.NaturalClips | None) -> tuple[int, ...]:
  """`config.insight.accentuate` ("0,5") as clip indices, checked against the clips."""
  parts = [p.strip() for p in str(spec).split(",") if p.strip()]
  if not parts:
    return ()
  if natural is None:
    raise ValueError("config.insight.accentuate needs config.insight.clips (the clips it "
                     "starts from): 'synthetic', a .npz of clips or a video folder")
  try:
    indices = tuple(int(p) for p in parts)
  except ValueError:
    raise ValueError(f"config.insight.accentuate={spec!r}: give clip indices like '0,5' "
                     f"(0..{len(natural) - 1})") from None
  natural.take(indices)  # Raises one line naming the valid range.
  return indices


def plan(config, model) -> Plan:
  """The natural clips and accentuation seeds of `config.insight` (checked, loaded)."""
  natural = clips_lib.from_config(config, model)
  return Plan(natural, parse_clip_indices(config.insight.accentuate, natural))


def _media(stem: str, frames: np.ndarray) -> dict[str, Any]:
  """Writes uint8 frames as the insight media of `stem`; what the gallery needs of them."""
  render.save_frames(stem, frames, _FORMATS)
  t, h, w = frames.shape[:3]
  return {"stem": os.path.basename(stem), "frames": int(t), "height": int(h), "width": int(w)}


def top_clips(vis, units, natural: clips_lib.NaturalClips, k: int) -> np.ndarray:
  """`(U, k)` indices of each unit's most activating natural clips (best first)."""
  acts = motion_lib.unit_activations(vis.model, vis.layer, units, natural.inputs)
  k = min(int(k), len(natural))
  return np.argsort(-acts, axis=1, kind="stable")[:, :k]


def _motion(vis, result: Result, config, out_dir: str) -> dict:
  table = motion_lib.sensitivity(vis.model, vis.layer, result.units,
                                 {s: x[:, None] for s, x in result.inputs.items()},
                                 seed=int(config.insight.seed),
                                 progress=bool(config.progress_bar))
  table.write_csv(os.path.join(out_dir, layout.MOTION_TABLE_FILE))
  shares = ({s: table.measures[f"share_{s}"] for s in table.streams if s != "rgb"}
            if len(table.streams) > 1 else None)
  plots.motion_histogram(os.path.join(out_dir, layout.MOTION_HISTOGRAM_FILE),
                         table.measures["motion_index"], shares,
                         f"{vis.layer}: {len(result.units)} units, optimised clips "
                         f"({layout.setting_label(layout.setting_name(result.settings))})")
  return table.to_json()


def _attribution(result: Result, out_dir: str) -> dict:
  block = {}
  for i, unit in enumerate(result.units):
    block[str(int(unit))] = {
        s: _media(os.path.join(out_dir, layout.attribution_stem(int(unit), s)),
                  render.attribution_overlay(result.inputs[s][i], maps[i], s))
        for s, maps in result.attribution.items()}
  return block


def _accentuation(vis, result: Result, config, natural: clips_lib.NaturalClips,
                  indices, out_dir: str) -> dict:
  block: dict[str, list] = {str(int(u)): [] for u in result.units}
  tv = {s: tuple(v) for s, v in result.settings.items()}
  for k in indices:
    seed_clip = {s: v[0] for s, v in natural.take([k]).items()}
    acc = accentuate_lib.accentuate(vis, result.units, seed_clip,
                                    float(config.insight.accentuate_weight),
                                    seed=int(config.insight.seed), tv=tv)
    for i, unit in enumerate(result.units):
      # Seed and result on one colour scale (a flow colour means one motion in both).
      streams = {s: _media(os.path.join(out_dir, layout.accentuated_stem(int(unit), k, s)),
                           render.clips_side_by_side([x, acc.inputs[s][i]], s,
                                                     ("seed", "accentuated")))
                 for s, x in seed_clip.items()}
      block[str(int(unit))].append({
          "clip": int(k), "name": natural.names[k],
          "activation_before": float(acc.seed_activations[i]),
          "activation_after": float(acc.activations[i]),
          "distance": {s: float(d[i]) for s, d in acc.distances.items()},
          "streams": streams})
  return block


def assess(vis, result: Result, config, insight_plan: Plan, out_dir: str) -> dict:
  """The `insight` block of one target and setting (module docstring); writes its media."""
  ins = config.insight
  block: dict[str, Any] = {}
  if ins.motion:
    block["motion"] = _motion(vis, result, config, out_dir)
  natural = insight_plan.natural
  if natural is not None:
    if ins.sanity and len(natural) >= 2:
      report = sanity_lib.check(vis.model, vis.layer, result.units, result.inputs,
                                natural.inputs, top_k=int(ins.top_k))
      block["sanity"] = report.to_json()
      top = report.top_clips
    else:
      top = top_clips(vis, result.units, natural, int(ins.top_k))
    table = motion_lib.sensitivity(vis.model, vis.layer, result.units,
                                   {s: v[top] for s, v in natural.inputs.items()},
                                   seed=int(ins.seed), progress=bool(config.progress_bar))
    block["motion_top_clips"] = {
        u: dict(m, top_clips=[natural.names[j] for j in top[i]])
        for i, (u, m) in enumerate(table.to_json().items())}
  if result.attribution:
    block["attribution"] = _attribution(result, out_dir)
  if insight_plan.accentuate:
    block["accentuation"] = _accentuation(vis, result, config, natural,
                                          insight_plan.accentuate, out_dir)
  return block


def summarise(block: dict) -> dict:
  """A target and setting in a few numbers (summary.json's top-level `insight`)."""
  out: dict[str, Any] = {}
  motion = [m["motion_index"] for m in (block.get("motion") or {}).values()
            if m.get("motion_index") is not None]
  if motion:
    out["units"] = len(block["motion"])
    out["median_motion_index"] = float(np.median(motion))
    out["dynamic_units"] = int(sum(m > 0.5 for m in motion))
  sanity = block.get("sanity") or {}
  if sanity:
    out["flagged"] = sorted(int(u) for u, r in sanity.items() if r["flag"])
    out["checked"] = len(sanity)
  return out

