"""What a unit uses: the video questions no feature-visualisation library answers.

* `motion`: does the unit respond to appearance, to motion or to both? Its
  activation on a clip, on the clip with motion removed, with time shuffled and
  with each stream removed; a static/motion index and the share carried by
  each stream, per unit and per layer (Kowal et al., CVPR 2022, for
  two-stream and fusion units).
* `accentuate`: what in a real clip drives the unit (Hamblin, Fel et al. 2024,
  "Feature Accentuation"): the optimisation seeded from the clip, kept near it.
* `attribution`: where in space-time the unit looks (MACO's accumulated input
  gradient; gradient x input for real clips), rendered as overlay videos.
* `sanity`: is the unit's picture processed like natural clips? (Geirhos et al.
  2023, "Don't trust your eyes": the rank correlation of activation paths.)
* `clips`: the natural clips they compare with (`config.insight.clips`).
"""
