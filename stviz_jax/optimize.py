"""Activation maximisation with optax: Adam, jitter, projection, scan, vmap.

For each unit c the optimised variable is z = x / B per stream (so the
learning rate is unitless and the bound is ||z(i,j,k,:)|| <= 1). Each step:

  1. draw a spatial offset (dy, dx) in [0, J)^2, J = jitter_fraction * stride_l,
     the same for every stream so appearance and motion stay aligned;
  2. feed the (H, W) window of the (H + J - 1, W + J - 1) variable at that offset;
  3. ascend E(x) = activation - penalties with optax.adam and a decreasing
     learning rate;
  4. project every pixel back onto the B-ball.

Beyond the paper, `config.param` chooses what is optimised (`stviz_jax.param`:
z = to_pixels(theta), e.g. a 3-D 1/f Fourier spectrum, decorrelated colour or
MACO's phase) and `config.transforms` the per-step transforms
(`stviz_jax.transforms`; step 1 is its default "jitter"). The bound stays a
pixel-space constraint for every parameterisation: step 4 is
`Param.project`, the pixels' projection mapped back to theta (MACO clips
inside `to_pixels`). The defaults are the paper's, bit for bit.
`Visualizer.run_diverse` optimises K samples of one unit together with
Lucid's Gram-matrix diversity term coupling them.

Steps run in `lax.scan` (or, opt-in, a host loop over one compiled step:
see `Visualizer.loop`), units in `jax.vmap`; one compiled step serves every chunk
of a sweep (units, step and kappa/gamma are traced arguments).

Size (~570 lines): one concept, the compiled optimisation; `run_diverse` (K
coupled samples of one unit) shares the Visualizer's canvas, transforms and
projection, so it lives beside it.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any, Mapping, Sequence

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from stviz_jax.plan import a_hat_given, build_target
from stviz_jax.result import Result
from stviz_jax import config as config_lib
from stviz_jax import objective as objective_lib
from stviz_jax import param as param_lib
from stviz_jax import progress as progress_lib
from stviz_jax import regularizers
from stviz_jax import transforms as transforms_lib
from stviz_jax.models import Model, conv as conv_lib, layers as layers_lib


def _schedule(opt: ml_collections.ConfigDict, steps: int):
  lr, end = opt.learning_rate, opt.final_fraction
  if opt.schedule == "cosine":
    return optax.cosine_decay_schedule(lr, max(steps, 1), alpha=end)
  if opt.schedule == "exponential":
    return optax.exponential_decay(lr, max(steps, 1), decay_rate=end)
  if opt.schedule == "constant":
    return optax.constant_schedule(lr)
  raise ValueError(f"unknown optimizer.schedule {opt.schedule!r}; "
                   "valid: cosine, exponential, constant")


@contextlib.contextmanager
def _network_context(step, redirect_steps: int, only_channel=None):
  """Trace-time settings of the network pass inside one optimisation step.

  ReLU gradients are redirected during the first `redirect_steps` steps
  (`step` is traced: no recompilation when redirection ends). With
  `only_channel = (layer, unit)` the layer's convolution computes that one
  channel (`layers.only_channel`). On CPU convolutions take the forms
  XLA:CPU runs fast (`stviz_jax.models.conv`: input gradients as forward
  convolutions, 3-D ones as 2-D ones).
  """
  with contextlib.ExitStack() as stack:
    if redirect_steps > 0:
      stack.enter_context(layers_lib.redirected_relu(step < redirect_steps))
    if only_channel is not None:
      stack.enter_context(layers_lib.only_channel(*only_channel))
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


class Visualizer:
  """Compiles the optimisation of a chunk of units of one layer once.

  `run(units, seed, tv)` may be called with any units and any kappa/gamma
  values without recompiling; `trace_count` counts compilations (tests and
  sweeps assert it stays 1).
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
    self.transform = transforms_lib.parse(config.transforms, self.jitter)
    self.margin = max(0, self.transform.margin)
    self.params = {
        s: param_lib.build(config.param, s,
                           (spec.frames, spec.height + self.margin, spec.width + self.margin,
                            spec.channels),
                           config.init_scale * self.weights[s].v / self.weights[s].bound)
        for s, spec in self.streams.items()}
    self.terms = objective_lib.regularized(
        with_compute_dtype(model.apply, config.compute_dtype),
        self.target, self.weights)
    self.trace_count = 0
    # Steps, s/step and ETA logged from inside the compiled loop (0 = off).
    self.progress = progress_lib.StepProgress(float(config.progress_every))
    self.last_timing = (0.0, 0.0)  # (start-up incl. compilation, loop) seconds of the last call.
    self._run = jax.jit(self._run_chunk)
    self._start_j = jax.jit(jax.vmap(self._start))
    self._step_j = jax.jit(self._step_chunk, donate_argnums=(3,))
    self._finish_j = jax.jit(jax.vmap(self._finish, in_axes=(None, 0, 0, 0)))
    self.loop  # validates config.loop early.

  def default_tv(self) -> dict[str, tuple[float, float]]:
    return {s: (w.kappa, w.gamma) for s, w in self.weights.items()}

  def lower_element(self):
    """The lowered computation one (unit, setting) element runs: the whole
    optimisation of a chunk of one under `loop='scan'`, the step under 'host'.

    For planning (XLA's memory analysis of `.compile()`): it does not count as
    a compilation of a run (`trace_count` is left as it was).
    """
    units = np.zeros((1,), np.int32)
    keys = jax.random.split(jax.random.PRNGKey(0), 1)
    tv = {s: (np.ones((1,), np.float32), np.ones((1,), np.float32)) for s in self.streams}
    traces = self.trace_count
    try:
      if self.loop == "host":  # what runs is the step; its state is per element.
        state = jax.eval_shape(self._start_j, keys)
        return self._step_j.lower(self.model.variables, units, tv, state, np.int32(0))
      return self._run.lower(self.model.variables, units, keys, tv)
    finally:
      self.trace_count = traces

  # --- the traced computation -------------------------------------------------

  def _init(self, key) -> dict[str, Any]:
    """Mahendran & Vedaldi: Gaussian noise rescaled to a fixed norm (here RMS per pixel = V).

    Returns theta per stream; for pixels theta = z, for other
    parameterisations noise whose pixels have the same RMS.
    """
    z = {}
    for i, (s, _) in enumerate(sorted(self.streams.items())):
      w = self.weights[s]
      z[s] = self.params[s].init(jax.random.fold_in(key, i),
                                 self.config.init_scale * w.v / w.bound)
    return z

  def _canvas(self, z) -> dict[str, jax.Array]:
    """x = B * to_pixels(theta) on the whole canvas, in model input units."""
    return {s: self.params[s].to_pixels(z[s]) * self.weights[s].bound for s in self.streams}

  def _fit(self, x) -> dict[str, jax.Array]:
    """Each stream's centre at its model size (a no-op when the margins match)."""
    return {s: transforms_lib.center_crop({s: v}, self.streams[s].height,
                                          self.streams[s].width)[s] for s, v in x.items()}

  def _transformed(self, z, key) -> dict[str, jax.Array]:
    """The per-step input: the transforms (keyed by `key`) of the canvas."""
    return self._fit(self.transform(key, self._canvas(z)))

  def _project(self, z):
    return {s: self.params[s].project(v) for s, v in z.items()}

  def _final(self, z) -> dict[str, jax.Array]:
    """The result: the centre of the canvas, no transform."""
    return self._fit(self._canvas(z))

  def _optimizer(self):
    cfg = self.config
    return optax.adam(_schedule(cfg.optimizer, cfg.steps), b1=cfg.optimizer.b1,
                      b2=cfg.optimizer.b2)

  def _start(self, key):
    """Initial state of one element: (theta, Adam state, jitter key)."""
    k_init, k_jit = jax.random.split(key)
    z = self._init(k_init)
    return z, self._optimizer().init(z), k_jit

  def _step(self, variables, unit, tv, state, step):
    """One Adam step of one element; returns the new state and (objective, activation)."""
    z, opt_state, k_jit = state
    redirect_steps = self.config.redirect_relu_steps

    def loss(z, key):
      x = self._transformed(z, key)
      with _network_context(step, redirect_steps,
                            (self.layer, unit) if self.one_channel else None):
        t = self.terms(variables, x, unit, tv)
      return -t["objective"], t

    grads, t = jax.grad(loss, has_aux=True)(z, jax.random.fold_in(k_jit, step))
    updates, opt_state = self._optimizer().update(grads, opt_state, z)
    z = self._project(optax.apply_updates(z, updates))
    return (z, opt_state, k_jit), (t["objective"], t["activation"])

  def _finish(self, variables, unit, tv, z):
    """The result of one element: its input (centre, no transform) and activation."""
    x = self._final(z)
    with _cpu_rewrites():
      return x, self.terms(variables, x, unit, tv)["activation"]

  def _vmapped_step(self, variables, units, tv, state, step):
    return jax.vmap(self._step, in_axes=(None, 0, 0, 0, None))(variables, units, tv, state,
                                                                step)

  def _run_chunk(self, variables, units, keys, tv):
    """The whole optimisation of a chunk: a `lax.scan` over steps of the vmapped step
    (the same arithmetic as a vmap of per-unit scans, and one place to report progress)."""
    self.trace_count += 1  # runs only while tracing.

    def body(state, step):
      self.progress.in_loop(step)
      return self._vmapped_step(variables, units, tv, state, step)

    state, (obj, act) = jax.lax.scan(body, jax.vmap(self._start)(keys),
                                     jnp.arange(self.config.steps))
    x, activation = jax.vmap(self._finish, in_axes=(None, 0, 0, 0))(variables, units, tv,
                                                                    state[0])
    return x, activation, {"objective": obj.T, "activation": act.T}

  def _step_chunk(self, variables, units, tv, state, step):
    self.trace_count += 1  # runs only while tracing.
    return self._vmapped_step(variables, units, tv, state, step)

  def _host_loop(self, variables, units, keys, tv):
    """The steps as a host loop over one compiled vmapped step (see `loop`)."""
    state = self._start_j(keys)
    objs, acts = [], []
    for step in range(self.config.steps):
      self.progress.tick(step)
      state, (obj, act) = self._step_j(variables, units, tv, state, np.int32(step))
      objs.append(obj)
      acts.append(act)
    x, activation = self._finish_j(variables, units, tv, state[0])
    history = {"objective": jnp.stack(objs, axis=1), "activation": jnp.stack(acts, axis=1)}
    return x, activation, history

  @property
  def loop(self) -> str:
    """'scan' (lax.scan over steps, the default) or 'host' (a host loop over one
    compiled step); both give the same results.

    Scan keeps the whole optimisation on the device in one call. The host loop
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
      `(inputs, activations, history)` as numpy arrays with a leading element axis.
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
    run = self._run if self.loop == "scan" else self._host_loop
    self.progress.start(f"{self.layer}: {len(units)} unit(s)", self.config.steps)
    out = jax.device_get(run(variables, units, keys, tv))
    self.last_timing = self.progress.finish()
    _check_finite(out[2]["objective"], np.asarray(jax.device_get(units)))
    return out

  def run(self, units: Sequence[int], seed: int = 0,
          tv: Mapping[str, tuple[float, float]] | None = None,
          chunk_size: int | None = None, log_progress: bool = True) -> Result:
    """Optimises `units` in chunks of `chunk_size` (the last one padded; one compilation)."""
    units = np.asarray(units, np.int32).ravel()
    if units.size == 0:
      raise ValueError("no units to visualise")
    self.model.spec.check_units(self.layer, units)
    settings = self.settings(tv)
    chunk = min(int(chunk_size or self.config.chunk_size or units.size), units.size)
    n_chunks = -(-units.size // chunk)
    padded = np.concatenate([units, np.full(n_chunks * chunk - units.size, units[-1],
                                            np.int32)])
    outs = []
    t0 = time.time()
    for i in range(n_chunks):
      u = padded[i * chunk:(i + 1) * chunk]
      outs.append(self.run_chunk(u, [settings] * chunk, seed))
      if log_progress:
        done = min((i + 1) * chunk, units.size)
        rate = done / (time.time() - t0)
        logging.info("%s: %d/%d units, %.2f units/s, ETA %.0fs", self.layer, done,
                     units.size, rate, (units.size - done) / rate)
    n = units.size
    x, act, hist = jax.tree.map(lambda *xs: np.concatenate(xs)[:n], *outs)
    return Result(layer=self.layer, units=units, inputs=dict(x),
                  activations=np.asarray(act), history=dict(hist),
                  a_hat_given=a_hat_given(self.config),
                  seed=seed, settings=settings)


class _DiverseSamples:
  """The compiled optimisation of `run_diverse` for one `Visualizer`.

  K samples of one unit optimised jointly: the ascended quantity is
  sum_k E(x_k) + w * diversity(G_1..G_K). The unit, the sample keys, kappa/gamma
  and w are traced, so every unit and weight of a run reuses one compilation
  (counted in `Visualizer.trace_count`). The network runs in
  `config.compute_dtype`; `config.loop` chooses `lax.scan` or a host loop
  over one compiled step, as for `Visualizer.run`.
  """

  def __init__(self, vis: "Visualizer"):
    cfg = vis.config
    self.vis = vis
    self.tx = optax.adam(_schedule(cfg.optimizer, cfg.steps), b1=cfg.optimizer.b1,
                         b2=cfg.optimizer.b2)
    layer = cfg.objective.diversity_layer or vis.layer
    try:
      vis.model.spec.check_layer(layer)
    except ValueError as e:
      raise ValueError(f"objective.diversity_layer: {e}") from None
    self.diversity = objective_lib.diversity(layer)
    self.apply = with_compute_dtype(vis.model.apply, cfg.compute_dtype)
    self._run_j = jax.jit(self._run)
    self._start_j = jax.jit(self._start)
    self._step_j = jax.jit(self._step_traced, donate_argnums=(4,))
    self._finish_j = jax.jit(self._finish)

  def _start(self, keys):
    """(theta, Adam state, jitter keys) of the K samples; Adam is elementwise, so
    one optimiser over the batch is K separate ones."""
    k_init, k_jit = jnp.moveaxis(jax.vmap(jax.random.split)(keys), 1, 0)
    z = jax.vmap(self.vis._init)(k_init)
    return z, self.tx.init(z), k_jit

  def _step(self, variables, unit, tv, weight, state, step):
    vis = self.vis
    z, opt_state, k_jit = state
    terms = objective_lib.regularized_batch(
        self.apply, vis.target + weight * self.diversity, vis.weights)
    redirect_steps = vis.config.redirect_relu_steps

    def loss(z):
      x = jax.vmap(lambda zk, kk: vis._transformed(zk, jax.random.fold_in(kk, step)))(z, k_jit)
      with _network_context(step, redirect_steps):
        t = terms(variables, x, unit, tv)
      return -t["objective"], t

    grads, t = jax.grad(loss, has_aux=True)(z)
    updates, opt_state = self.tx.update(grads, opt_state, z)
    z = jax.vmap(vis._project)(optax.apply_updates(z, updates))
    return (z, opt_state, k_jit), (t["objective"], t["activation"])

  def _step_traced(self, variables, unit, tv, weight, state, step):
    self.vis.trace_count += 1  # runs only while tracing.
    return self._step(variables, unit, tv, weight, state, step)

  def _finish(self, variables, unit, tv, z):
    """Each sample's input (centre, no transform) and its own target activation."""
    vis = self.vis
    x = jax.vmap(vis._final)(z)
    with _cpu_rewrites():
      act = jax.vmap(lambda xk: vis.terms(variables, xk, unit, tv)["activation"])(x)
    return x, act

  def _run(self, variables, unit, keys, tv, weight):
    self.vis.trace_count += 1  # runs only while tracing.

    def body(state, step):
      self.vis.progress.in_loop(step)
      return self._step(variables, unit, tv, weight, state, step)

    state, (obj, act) = jax.lax.scan(body, self._start(keys), jnp.arange(self.vis.config.steps))
    x, final = self._finish(variables, unit, tv, state[0])
    return x, final, {"objective": obj, "activation": act}

  def __call__(self, variables, unit, keys, tv, weight):
    self.vis.progress.start(f"{self.vis.layer}: unit {int(unit)} x {len(keys)} samples",
                            self.vis.config.steps)
    try:
      return self._call(variables, unit, keys, tv, weight)
    finally:
      self.vis.last_timing = self.vis.progress.finish()

  def _call(self, variables, unit, keys, tv, weight):
    if self.vis.loop == "scan":
      return self._run_j(variables, unit, keys, tv, weight)
    state = self._start_j(keys)
    objs, acts = [], []
    for step in range(self.vis.config.steps):
      self.vis.progress.tick(step)
      state, (obj, act) = self._step_j(variables, unit, tv, weight, state, np.int32(step))
      objs.append(obj)
      acts.append(act)
    x, final = self._finish_j(variables, unit, tv, state[0])
    return x, final, {"objective": jnp.stack(objs), "activation": jnp.stack(acts)}


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
  if not hasattr(vis, "_diverse"):
    vis._diverse = _DiverseSamples(vis)
  x, act, hist = jax.device_get(vis._diverse(
      vis.model.variables, jnp.int32(unit), keys, tv_arr, jnp.float32(weight)))
  obj = np.asarray(hist["objective"])[None]
  _check_finite(obj, np.array([unit]))
  return Result(layer=vis.layer, units=np.full(samples, unit, np.int32),
                inputs={k: np.asarray(v) for k, v in x.items()},
                activations=np.asarray(act),
                history={k: np.broadcast_to(np.asarray(v), (samples, vis.config.steps)).copy()
                         for k, v in hist.items()},
                a_hat_given=a_hat_given(vis.config),
                seed=seed, settings=settings)


def _check_finite(obj_hist: np.ndarray, units: np.ndarray) -> None:
  bad = ~np.isfinite(obj_hist)
  if bad.any():
    row = int(np.argmax(bad.any(axis=1)))
    step = int(np.argmax(bad[row]))
    raise FloatingPointError(f"non-finite objective for unit {int(units[row])} at "
                             f"step {step}; lower optimizer.learning_rate or check "
                             "the model's weights")


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
