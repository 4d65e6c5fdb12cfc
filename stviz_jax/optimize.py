"""The Visualizer: the paper's optimisation of a layer's units, compiled once.

The maths of one step lives in `stviz_jax.ascent` (pure `init` / `step` /
`finish`: Adam on the transformed canvas, then the projection onto the
B-ball). This module turns a model, a layer and a config into those
functions' arguments and compiles them once:

* `Visualizer.run` / `run_chunk`: a chunk of units, `jax.vmap` over
  elements (unit, kappa/gamma); units, step index and kappa/gamma are traced,
  so one compilation serves every chunk of a sweep;
* `Visualizer.run_diverse`: K samples of one unit coupled by Lucid's
  Gram-matrix diversity, the same step on a batched canvas.

Both run as calls of `STEPS_PER_CALL` steps (a loop on the device, the step
budget traced, so no compilation depends on `config.steps`) or, opt-in, a host loop
over one compiled step (`Visualizer.loop`), through one `Compiled`. Beyond the paper,
`config.param` chooses what is optimised (`stviz_jax.param`, e.g. a 3-D 1/f
Fourier spectrum, decorrelated colour or MACO's phase) and
`config.transforms` the per-step transforms (`stviz_jax.transforms`; the
default is the paper's stride jitter). The defaults are the paper's, bit for
bit.
"""

from __future__ import annotations

import contextlib
import functools
from typing import Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from stviz_jax.plan import a_hat_given, build_target
from stviz_jax.result import Result
from stviz_jax import ascent
from stviz_jax import chunks
from stviz_jax import config as config_lib
from stviz_jax import objective as objective_lib
from stviz_jax import param as param_lib
from stviz_jax import progress as progress_lib
from stviz_jax import regularizers
from stviz_jax import transforms as transforms_lib
from stviz_jax.models import LOGITS, Model, conv as conv_lib, layers as layers_lib
from stviz_jax.models import pooling as pooling_lib
@contextlib.contextmanager
def _network_context(step, redirect_steps: int, only_channel=None):
  """Trace-time settings of the network pass inside one optimisation step.

  ReLU gradients are redirected during the first `redirect_steps` steps
  (`step` is traced: no recompilation when redirection ends). With
  `only_channel = (layer, unit)` the layer's convolution computes that one
  channel (`layers.only_channel`). Max pools keep only the position of each
  maximum for the backward pass (`pooling.compact_gradient`). On CPU
  convolutions take the forms XLA:CPU runs fast (`stviz_jax.models.conv`:
  input gradients as forward convolutions, 3-D ones as 2-D ones).
  """
  with contextlib.ExitStack() as stack:
    if redirect_steps > 0:
      stack.enter_context(layers_lib.redirected_relu(step < redirect_steps))
    if only_channel is not None:
      stack.enter_context(layers_lib.only_channel(*only_channel))
    stack.enter_context(pooling_lib.compact_gradient())
    stack.enter_context(_cpu_rewrites())
    yield


def _cpu_rewrites():
  """`stviz_jax.models.conv`'s convolution rewrites, on the CPU backend only."""
  return conv_lib.cpu_rewrites(jax.default_backend() == "cpu")


def with_compute_dtype(apply, dtype: str):
  """`apply` running in `dtype` (weights and inputs cast), returning float32.

  bfloat16 halves memory traffic and is native on TPUs and recent GPUs/CPUs;
  the optimised variable, Adam state and regularisers stay float32, so only
  the network's forward and backward pass run in reduced precision.
  """
  if dtype == "float32":
    return apply
  if dtype not in ("bfloat16", "float16"):
    raise ValueError(f"unknown compute_dtype {dtype!r}; valid: float32, bfloat16, float16")
  dt = jnp.dtype(dtype)
  cast = lambda tree, t: jax.tree.map(
      lambda a: a.astype(t) if jnp.issubdtype(a.dtype, jnp.floating) else a, tree)

  def apply_in_dtype(variables, inputs):
    return cast(apply(cast(variables, dt), cast(inputs, dt)), jnp.float32)

  return apply_in_dtype


# Steps per compiled call. The optimisation runs as calls of up to this many
# steps (the budget and the step offset traced, the last call's loop shorter),
# so its compiled program does not depend on `config.steps`: a
# rerun with another budget reuses it (in this process, or from the persistent
# compilation cache, `stviz_jax.compile_cache`), where a budget-long scan
# recompiled (I3D: ~9 of the 17 s a 20-step run took). The host dispatches
# the calls without waiting between them.
STEPS_PER_CALL = 10


class Compiled:
  """One optimisation compiled once, for any number of steps: calls of
  `STEPS_PER_CALL` steps (`segment`) or, under `loop='host'`, one
  compiled step per call, chosen by `Visualizer.loop`; `run` is the host loop.

  It is given, for traced arguments `args = (variables, units, tv, *extra)`,
  `start(keys) -> state` (`keys`: any pytree, e.g. keys and seed clips),
  `step(args, state, i, tx) -> (state, ascent.Metrics)` (`tx`: the optimiser,
  its schedule over the traced budget; the metrics float32, `(n,)` for the n
  elements along the state's leading axis when `steps_axis` is 1, else
  scalars) and
  `finish(args, state) -> (inputs, activation, *more)`. Calls return
  `(inputs, activation, history, *more)`, the history's steps along
  `steps_axis` (`more`: e.g. the attribution maps).
  Every trace of the steps adds one to the Visualizer's `trace_count`.
  """

  def __init__(self, vis: "Visualizer", start: Callable, step: Callable, finish: Callable,
               steps_axis: int):
    self.vis, self.start, self.step, self.finish = vis, start, step, finish
    self.steps_axis = steps_axis
    options = conv_lib.compiler_options()
    self.start_j = jax.jit(start)
    self.segment_j = jax.jit(self.segment, donate_argnums=(1,), compiler_options=options)
    self.step_j = jax.jit(self._traced_step, donate_argnums=(1,), compiler_options=options)
    self.finish_j = jax.jit(finish, compiler_options=options)

  def segment(self, args, state, first, total):
    """Steps `first .. min(first + STEPS_PER_CALL, total) - 1` of a `total`-step
    optimisation, traced: a loop whose trip count is an argument.

    Returns the state and the steps' metrics, `STEPS_PER_CALL` of them stacked
    (zeros after the last step run).
    """
    self.vis.trace_count += 1  # runs only while tracing.
    tx = self.vis.optimizer(total)
    # The metrics' shapes, known without tracing the step twice: float32 per
    # element (the state's leading axis) when the history is per element
    # (steps_axis 1), else one scalar per step.
    shape = (jax.tree.leaves(state)[0].shape[0],) if self.steps_axis == 1 else ()
    history = ascent.Metrics(*(jnp.zeros((STEPS_PER_CALL,) + shape, jnp.float32)
                               for _ in ascent.Metrics._fields))

    def body(j, carry):
      state, history = carry
      state, metrics = self.step(args, state, first + j, tx)
      return state, jax.tree.map(lambda h, m: h.at[j].set(m), history, metrics)

    n = jnp.clip(total - first, 0, STEPS_PER_CALL)
    return jax.lax.fori_loop(0, n, body, (state, history))

  def _traced_step(self, args, state, i, total):
    self.vis.trace_count += 1  # runs only while tracing.
    return self.step(args, state, i, self.vis.optimizer(total))

  def _history(self, metrics, steps: int) -> dict[str, jax.Array]:
    """Per-step metrics `(steps, ...)` -> `{name: array}` with steps on `steps_axis`."""
    return {k: jnp.moveaxis(v[:steps], 0, self.steps_axis) for k, v in metrics._asdict().items()}

  def run(self, variables, units, keys, tv, *extra):
    """The whole optimisation of `config.steps` steps (device arrays).

    Call k + 1 is dispatched before the host waits for call k to report
    progress, so the device is never idle.
    """
    steps, progress = int(self.vis.config.steps), self.vis.progress
    # On the device once, not once per call (arrays already placed stay put).
    args = jax.device_put((variables, units, tv, *extra))
    state, metrics = self.start_j(keys), []
    total = np.int32(steps)
    host = self.vis.loop == "host"
    stride = 1 if host else STEPS_PER_CALL
    for first in range(0, steps, stride):
      if host:
        state, m = self.step_j(args, state, np.int32(first), total)
        m = jax.tree.map(lambda a: a[None], m)
      else:
        state, m = self.segment_j(args, state, np.int32(first), total)
      if metrics:
        jax.block_until_ready(metrics[-1])
      progress.tick(first)  # first = 0: launched, so compiled.
      metrics.append(m)
    x, activation, *more = self.finish_j(args, state)
    jax.block_until_ready(metrics[-1])
    progress.tick(steps)
    history = jax.tree.map(lambda *m: jnp.concatenate(m), *metrics)
    return (x, activation, self._history(history, steps), *more)

  def __call__(self, label: str, variables, units, keys, tv, *extra):
    """Runs on the host, with progress under `label`; returns numpy arrays."""
    vis = self.vis
    vis.progress.start(label, vis.config.steps)
    try:
      return jax.device_get(self.run(variables, units, keys, tv, *extra))
    finally:
      vis.last_timing = vis.progress.finish()


class Visualizer:
  """Compiles the optimisation of a chunk of units of one layer once.

  `run(units, seed, tv)` may be called with any units and any kappa/gamma
  values without recompiling; `trace_count` counts compilations (tests and
  sweeps assert it stays 1). `compiled_units`, `compiled_samples` and
  `compiled_accentuation` are the compiled optimisations of `run_chunk`,
  `run_diverse` and `stviz_jax.insight.accentuate`.

  With `config.insight.attribution` the unit optimisation also accumulates
  MACO's transparency map (`ascent.step_attributed`: sum over steps of
  sum_c |da/dx| of the unit's activation a on the canvas, from the same
  backward pass), so `run_chunk` returns a fourth output and
  `Result.attribution` is set; the optimisation itself is unchanged (bit for
  bit on CPU). Without it the compiled program is the plain one.
  """

  def __init__(self, model: Model, layer: str, config: ml_collections.ConfigDict,
               target: objective_lib.Objective | None = None):
    model.spec.check_layer(layer)
    config = config_lib.complete(config)
    self.model, self.layer, self.config = model, layer, config
    self.target = target or build_target(model, layer, config.objective)
    # Objectives built from config.objective of kind channel / neuron read
    # only channel `unit` of `layer`, so its convolution computes just that one.
    self.one_channel = target is None and config.objective.kind in ("channel", "neuron")
    self.streams = model.spec.streams
    self.weights = {
        s: regularizers.stream_weights(config.regularizer, s, spec.pixel_scale)
        for s, spec in self.streams.items()}
    _, stride = model.spec.receptive_field(layer)
    frac = config.regularizer.jitter_fraction
    self.jitter = max(1, int(round(stride * frac))) if config.jitter else 1
    # The canvas is larger than the input by what the transforms crop away, so
    # their last output is the model's size ("jitter" alone: H + J - 1).
    transform = transforms_lib.parse(config.transforms, self.jitter)
    margin = max(0, transform.margin)
    init_rms = {s: config.init_scale * w.v / w.bound for s, w in self.weights.items()}
    self.canvas = ascent.Canvas(
        params={s: param_lib.build(config.param, s,
                                   (spec.frames, spec.height + margin, spec.width + margin,
                                    spec.channels), init_rms[s])
                for s, spec in self.streams.items()},
        bounds={s: w.bound for s, w in self.weights.items()},
        sizes={s: (spec.height, spec.width) for s, spec in self.streams.items()},
        transform=transform, init_rms=init_rms)
    # The optimiser's state has the same structure for any budget; `optimizer`
    # gives it with its schedule over a (traced) budget.
    self.tx = self.optimizer(config.steps)
    self.apply = with_compute_dtype(model.apply, config.compute_dtype)
    self.terms = objective_lib.regularized(self.apply, self.target, self.weights)
    self.attribution = bool(config.insight.attribution)
    self.trace_count = 0
    # Steps, s/step and ETA logged from inside the compiled loop (0 = off).
    self.progress = progress_lib.StepProgress(float(config.progress_every))
    self.last_timing = (0.0, 0.0)  # (start-up incl. compilation, loop) seconds of the last call.
    if self.attribution:
      self.compiled_units = Compiled(self, self._start_attributed, self._step_attributed,
                                     self._finish_attributed, steps_axis=1)
    else:
      self.compiled_units = Compiled(self, self._start_units, self._step_units,
                                     self._finish_units, steps_axis=1)
    self.loop  # validates config.loop early.

  def optimizer(self, steps) -> optax.GradientTransformation:
    """`config.optimizer` with its schedule over `steps` (may be traced)."""
    return ascent.optimizer(self.config.optimizer, steps)

  @property
  def class_names(self) -> tuple[str, ...] | None:
    """The model's class names when the layer is the logits (labels results)."""
    return tuple(self.model.labels) if self.layer == LOGITS and self.model.labels else None

  def default_tv(self) -> dict[str, tuple[float, float]]:
    return {s: (w.kappa, w.gamma) for s, w in self.weights.items()}

  def lower_element(self, elements: int = 1):
    """The lowered computation one (unit, setting) element runs: one call of
    `STEPS_PER_CALL` steps of a chunk of one (or of `elements`) under
    `loop='scan'`, the step under 'host'.

    For planning (XLA's memory analysis of `.compile()`): it does not count as
    a compilation of a run (`trace_count` is left as it was).
    """
    units = np.zeros((elements,), np.int32)
    keys = jax.random.split(jax.random.PRNGKey(0), elements)
    tv = {s: (np.ones((elements,), np.float32), np.ones((elements,), np.float32))
          for s in self.streams}
    compiled, traces = self.compiled_units, self.trace_count
    try:
      args = (self.model.variables, units, tv)
      state = jax.eval_shape(compiled.start_j, keys)
      run = compiled.step_j if self.loop == "host" else compiled.segment_j
      return run.lower(args, state, np.int32(0), np.int32(self.config.steps))
    finally:
      self.trace_count = traces

  @property
  def loop(self) -> str:
    """'scan' (calls of `STEPS_PER_CALL` steps looped on the device, the
    default) or 'host' (one compiled step per call); both give the same results.

    Scan keeps `STEPS_PER_CALL` steps on the device per call. The host loop
    exists for profiling single steps; on XLA:CPU it is slower (measured on 2
    cores, jax 0.10: VGG-16 conv4_3 at 128 px 0.141 against 0.115 s per
    unit-step under scan; I3D Mixed_4f at 8x64x64 ~6.6 against 0.17 s, as
    XLA:CPU runs the strided 3-D convolution's input gradient slowly outside
    a loop). Before `stviz_jax.models.conv` the convolution gradients inside
    scan were the slow ones (0.58 s for that VGG step). 'auto' = scan.
    """
    loop = self.config.loop
    if loop == "auto":
      return "scan"
    if loop not in ("scan", "host"):
      raise ValueError(f"unknown loop {loop!r}; valid: auto, scan, host")
    return loop

  # --- the arguments of ascent.step -------------------------------------------

  def _energy(self, terms, variables, unit, tv, only_channel=None) -> ascent.Energy:
    """`terms` of `unit` under the network context of step i (see `_network_context`)."""
    redirect_steps = self.config.redirect_relu_steps

    def energy(x, i):
      with _network_context(i, redirect_steps, only_channel):
        return terms(variables, x, unit, tv)

    return energy

  def _unit_energy(self, variables, unit, tv) -> ascent.Energy:
    """The energy of one unit's element (`_energy` of the regularised target; its
    layer computes just that channel when the objective reads one)."""
    only_channel = (self.layer, unit) if self.one_channel else None
    return self._energy(self.terms, variables, unit, tv, only_channel)

  def _measure(self, variables, unit, tv) -> Callable:
    """The reported activation of a result: the target term of one input."""

    def measure(x):
      with _cpu_rewrites():
        return self.terms(variables, x, unit, tv)["activation"]

    return measure

  # Units: element i optimises units[i] under tv[i], independently (vmap).

  def _start_units(self, keys):
    return jax.vmap(lambda key: ascent.init(self.canvas, self.tx, key))(keys)

  def _step_units(self, args, state, i, tx):
    variables, units, tv = args

    def one(unit, tv, state):
      return ascent.step(self.canvas, tx, self._unit_energy(variables, unit, tv), state, i)

    return jax.vmap(one)(units, tv, state)

  def _finish_units(self, args, state):
    variables, units, tv = args
    one = lambda unit, tv, state: ascent.finish(
        self.canvas, self._measure(variables, unit, tv), state)
    return jax.vmap(one)(units, tv, state)

  # Units with attribution: the state carries sum_steps sum_c |da/dx| per stream.

  def _start_attributed(self, keys):
    zeros = {s: jnp.zeros((len(keys),) + p.shape[:3], jnp.float32)
             for s, p in self.canvas.params.items()}
    return self._start_units(keys), zeros

  def _step_attributed(self, args, carry, i, tx):
    variables, units, tv = args
    state, total = carry

    def one(unit, tv, state):
      energy = self._unit_energy(variables, unit, tv)
      return ascent.step_attributed(self.canvas, tx, energy, state, i,
                                    lambda x: objective_lib.penalties(x, self.weights, tv))

    state, metrics, saliency = jax.vmap(one)(units, tv, state)
    return (state, jax.tree.map(jnp.add, total, saliency)), metrics

  def _finish_attributed(self, args, carry):
    state, total = carry
    x, activation = self._finish_units(args, state)
    return x, activation, jax.vmap(self._attribution_map)(total)

  def _attribution_map(self, total):
    """The canvas's centre (the model's frame), each stream scaled to max 1."""
    centre = self.canvas.fit({s: v[..., None] for s, v in total.items()})
    return {s: v[..., 0] / jnp.maximum(jnp.max(v), 1e-30) for s, v in centre.items()}

  # Diverse samples: K samples of one unit, coupled (see run_diverse).

  @functools.cached_property
  def compiled_samples(self) -> Compiled:
    """The compiled optimisation of `run_diverse`: args `(variables, unit, tv, weight)`."""
    layer = self.config.objective.diversity_layer or self.layer
    try:
      self.model.spec.check_layer(layer)
    except ValueError as e:
      raise ValueError(f"objective.diversity_layer: {e}") from None
    diversity = objective_lib.diversity(layer)
    canvas = self.canvas.batched()

    def start(keys):
      return ascent.init(canvas, self.tx, keys)

    def step(args, state, i, tx):
      variables, unit, tv, weight = args
      terms = objective_lib.regularized_batch(self.apply, self.target + weight * diversity,
                                              self.weights)
      return ascent.step(canvas, tx, self._energy(terms, variables, unit, tv), state, i)

    def finish(args, state):
      variables, unit, tv, _ = args
      return ascent.finish(canvas, jax.vmap(self._measure(variables, unit, tv)), state)

    return Compiled(self, start, step, finish, steps_axis=0)

  # Accentuation: units started from seed clips, kept near them.

  @functools.cached_property
  def compiled_accentuation(self) -> Compiled:
    """The compiled optimisation of `stviz_jax.insight.accentuate`.

    Called as `(label, variables, units, (keys, seeds), tv, weights)`: element i
    starts at the clip `seeds[s][i]` (`ascent.init_at`) and ascends
    E(x) - weights[i] * D(theta, theta_seed) (`ascent.distance`, in steps of
    `config.optimizer.learning_rate`); units, clips and weights are traced,
    so one compilation serves a layer. Returns
    `(inputs, activation, history, seed_activation)`, the last the target of
    the seed itself (after the projection onto the B-ball, no transform).
    """

    eta = float(self.config.optimizer.learning_rate)  # D counts distance in steps.

    def start(keys_and_seeds):
      keys, seeds = keys_and_seeds
      state = jax.vmap(lambda k, x: ascent.init_at(self.canvas, self.tx, k, x))(keys, seeds)
      return state, state.theta

    def step(args, carry, i, tx):
      variables, units, tv, weights = args
      state, theta_seed = carry

      def one(unit, tv, weight, state, theta_seed):
        energy = self._unit_energy(variables, unit, tv)
        near = lambda theta: weight * ascent.distance(self.canvas, theta, theta_seed, eta)
        return ascent.step(self.canvas, tx, energy, state, i, theta_penalty=near)

      state, metrics = jax.vmap(one)(units, tv, weights, state, theta_seed)
      return (state, theta_seed), metrics

    def finish(args, carry):
      variables, units, tv, _ = args
      state, theta_seed = carry
      x, activation = self._finish_units(args[:3], state)
      before = jax.vmap(lambda unit, tv, theta: self._measure(variables, unit, tv)(
          self.canvas.final(theta)))(units, tv, theta_seed)
      return x, activation, before

    return Compiled(self, start, step, finish, steps_axis=1)

  # --- the public loop ---------------------------------------------------------

  def run_diverse(self, unit: int, samples: int, seed: int = 0, weight: float | None = None,
                  tv: Mapping[str, tuple[float, float]] | None = None) -> "Result":
    """K = `samples` results for one unit pushed apart by Gram diversity (`run_diverse`)."""
    return run_diverse(self, unit, samples, seed, weight, tv)

  def settings(self, tv: Mapping[str, tuple[float, float]] | None = None
               ) -> dict[str, tuple[float, float]]:
    """The config's `{stream: (kappa, gamma)}` updated with `tv` (validated)."""
    settings = dict(self.default_tv())
    settings.update({k: tuple(float(x) for x in v) for k, v in (tv or {}).items()})
    bad = set(settings) - set(self.streams)
    if bad:
      raise ValueError(f"regularisation given for unknown stream(s) {sorted(bad)}; "
                       f"streams: {sorted(self.streams)}")
    return settings

  def run_chunk(self, units: np.ndarray, settings: Sequence[Mapping[str, tuple]],
                seed: int, sharding=None, replicated=None):
    """One compiled call: element i optimises `units[i]` under `settings[i]`.

    Every call with the same number of elements reuses one compilation. With
    `sharding` (a `NamedSharding` over the element axis) and `replicated` the
    chunk is split across devices and the weights copied to each.

    Returns:
      `(inputs, activations, history)` as numpy arrays with a leading element
      axis, and with `config.insight.attribution` a fourth, the maps
      `{stream: (n, T, H, W)}` in [0, 1].
    """
    units = jnp.asarray(np.asarray(units, np.int32))
    base_key = jax.random.PRNGKey(seed)
    keys = jax.vmap(lambda c: jax.random.fold_in(base_key, c))(units)
    tv = {s: tuple(jnp.asarray([st[s][j] for st in settings], jnp.float32)
                   for j in range(2)) for s in self.streams}
    variables = self.model.variables
    if sharding is not None:
      units, keys, tv = jax.device_put((units, keys, tv), sharding)
      variables = jax.device_put(variables, replicated)
    out = self.compiled_units(f"{self.layer}: {len(units)} unit(s)", variables, units, keys, tv)
    check_finite(out[2]["objective"], np.asarray(jax.device_get(units)))
    return out

  def run(self, units: Sequence[int], seed: int = 0,
          tv: Mapping[str, tuple[float, float]] | None = None,
          chunk_size: int | None = None, log_progress: bool = True) -> Result:
    """Optimises `units` in chunks of `chunk_size` (the last one padded; one compilation).

    `chunk_size` None or 0: `config.chunk_size`, and when that is 0 too the
    backend's automatic chunk (`chunks.auto_chunk_size`: 1 on CPU, as many as
    fit half an accelerator's memory).
    """
    units = np.asarray(units, np.int32).ravel()
    if units.size == 0:
      raise ValueError("no units to visualise")
    self.model.spec.check_units(self.layer, units)
    settings = self.settings(tv)
    chunk = int(chunk_size or self.config.chunk_size or 0)
    if chunk <= 0:  # automatic, per backend (`chunks.auto_chunk_size`)
      chunk = chunks.plan_chunk_size(self, units.size, 1)
    chunk = min(chunk, units.size)
    n_chunks = -(-units.size // chunk)
    padded = np.concatenate([units, np.full(n_chunks * chunk - units.size, units[-1],
                                            np.int32)])
    outs = []
    with progress_lib.Bar(self.layer, units.size, "unit",
                          log_progress and self.config.progress_bar) as bar:
      for i in range(n_chunks):
        u = padded[i * chunk:(i + 1) * chunk]
        outs.append(self.run_chunk(u, [settings] * chunk, seed))
        bar.update(chunk, log=log_progress)
    n = units.size
    x, act, hist, *attribution = jax.tree.map(lambda *xs: np.concatenate(xs)[:n], *outs)
    return Result(layer=self.layer, units=units, inputs=dict(x),
                  activations=np.asarray(act), history=dict(hist),
                  a_hat_given=a_hat_given(self.config),
                  seed=seed, settings=settings, class_names=self.class_names,
                  attribution=dict(attribution[0]) if attribution else None)


def run_diverse(vis: "Visualizer", unit: int, samples: int, seed: int = 0,
                weight: float | None = None,
                tv: Mapping[str, tuple[float, float]] | None = None) -> Result:
  """K = `samples` visualisations of one unit, pushed apart by a diversity term.

  Diversity couples samples, so it cannot live inside the per-unit vmap of
  `Visualizer.run` (each unit's optimisation is independent there). Here the
  K samples of one unit form the batch instead: the network sees all K at
  once and the maximised quantity is

      sum_k [target(x_k) - penalties(x_k)] + w * diversity(G_1..G_K),

  with `objective.diversity` (Lucid's Gram-matrix dissimilarity) of the
  layer `config.objective.diversity_layer` (default: the visualised one).
  Each sample keeps its own noise, transforms and Adam moments; w = 0 gives
  K independent runs. The diversity term lies in [-(K-1), K-1], while the
  target is in the units of `objective.channel` (a sum over positions / rho^2),
  so w must be of the order of one sample's target to matter: on the
  hand-built flow unit (target ~1e4) w = 3e3 fans K = 4 results out to
  right-up and right-down motions at ~85% of the target each.
  One compilation serves every unit, weight and kappa/gamma of `vis` (all
  traced); the network runs in `config.compute_dtype` and the steps follow
  `config.loop`, as in `Visualizer.run`.

  Args:
    vis: a `Visualizer` (its parameterisation, transforms and target are used).
    unit: the unit.
    samples: K >= 2.
    seed: sample k starts from fold_in(fold_in(PRNGKey(seed), unit), k).
    weight: w; None = `config.objective.diversity`.
    tv: optional `{stream: (kappa, gamma)}`.

  Returns:
    A `Result` with K rows, all for `unit` (`activations`: each sample's
    target; `history`: the joint objective and activation, the same row K times).
  """
  if samples < 2:
    raise ValueError(f"run_diverse needs samples >= 2, got {samples}")
  vis.model.spec.check_units(vis.layer, [unit])
  settings = vis.settings(tv)
  if weight is None:
    weight = vis.config.objective.diversity
  base = jax.random.fold_in(jax.random.PRNGKey(seed), unit)
  keys = jax.vmap(lambda k: jax.random.fold_in(base, k))(jnp.arange(samples))
  tv_arr = {s: tuple(jnp.float32(v) for v in settings[s]) for s in vis.streams}
  x, act, hist = vis.compiled_samples(
      f"{vis.layer}: unit {int(unit)} x {samples} samples", vis.model.variables,
      jnp.int32(unit), keys, tv_arr, jnp.float32(weight))
  obj = np.asarray(hist["objective"])[None]
  check_finite(obj, np.array([unit]))
  return Result(layer=vis.layer, units=np.full(samples, unit, np.int32),
                inputs={k: np.asarray(v) for k, v in x.items()},
                activations=np.asarray(act),
                history={k: np.broadcast_to(np.asarray(v), (samples, vis.config.steps)).copy()
                         for k, v in hist.items()},
                a_hat_given=a_hat_given(vis.config),
                seed=seed, settings=settings, class_names=vis.class_names)


def check_finite(obj_hist: np.ndarray, units: np.ndarray, what: str = "",
                 check: str = "the model's weights") -> None:
  """Raises one line naming the first unit and step whose objective `(U, steps)` is not finite."""
  bad = ~np.isfinite(obj_hist)
  if bad.any():
    row = int(np.argmax(bad.any(axis=1)))
    step = int(np.argmax(bad[row]))
    raise FloatingPointError(f"{what}non-finite objective for unit {int(units[row])} at "
                             f"step {step}; lower optimizer.learning_rate or check {check}")


def visualize(model: Model, layer: str, units: Sequence[int],
              config: ml_collections.ConfigDict | None = None, seed: int = 0,
              tv: Mapping[str, tuple[float, float]] | None = None) -> Result:
  """Finds the inputs that maximise each unit of `layer` (the paper's method).

  Args:
    model: the network (`stviz_jax.models.load` or `wrap`).
    layer: a tap of `model.spec.layers` ('logits' for class units).
    units: channel (or class) indices.
    config: hyper-parameters (`stviz_jax.config.default_config()` if None).
    seed: unit u starts from noise drawn from `fold_in(PRNGKey(seed), u)`,
      so a unit's result does not depend on which other units run with it.
    tv: optional `{stream: (kappa, gamma)}` overriding the config.

  Returns:
    A `Result`.
  """
  from stviz_jax.config import default_config
  config = config or default_config()
  return Visualizer(model, layer, config).run(units, seed, tv)
