"""What a unit uses: the video questions no feature-visualisation library answers.

* `motion`: does the unit respond to appearance, to motion or to both? Its
  activation on a clip, on the clip with motion removed, with time shuffled and
  with each stream removed; a static/motion index and the share carried by
  each stream, per unit and per layer (Kowal et al., CVPR 2022, for
  two-stream and fusion units).
* `accentuate`: what in a real clip drives the unit (Hamblin, Fel et al. 2024,
  "Feature Accentuation"): the optimisation seeded from the clip, kept near it
  (`accentuate.accentuate(vis, units, seeds, weight, seed=0, tv=None) ->
  Accentuation`; compiled once per layer as `Visualizer.compiled_accentuation`).
* `attribution`: where in space-time the unit looks (MACO's accumulated input
  gradient, computed inside the job's optimisation when
  `config.insight.attribution`: `Result.attribution`, `attribution_<stream>`
  in result.npz; `attribution.gradient_x_input` for real clips), rendered as
  overlay videos (`render.attribution_overlay`).
* `sanity`: is the unit's picture processed like natural clips? (Geirhos et al.
  2023, "Don't trust your eyes": the rank correlation of activation paths.)
* `clips`: the natural clips they compare with (`config.insight.clips`).
* `report`: all of them for one result, as the main job runs them
  (`summary.json`'s `insight` block per target and setting, and their media).
"""
