"""Whole-layer sweeps: sharding equals one device, kill-and-resume is bitwise,
ragged chunk sizes, one compilation per sweep."""

import os
import pathlib
import signal
import subprocess
import sys
import textwrap
import time

import jax
import numpy as np
import pytest

import stviz_jax as sv
from stviz_jax import chunks, sweep

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _config(steps=4, chunk_size=0):
  c = sv.default_config()
  c.steps = steps
  c.chunk_size = chunk_size
  return c


@pytest.fixture(scope="module")
def model():
  return sv.models.load("tiny_two_stream", size=16, frames=3, width=8)


@pytest.mark.parametrize("n_units,chunk", [(5, 2), (3, 8), (4, 4)])
def test_ragged_chunks_match_plain_run_and_compile_once(model, n_units, chunk):
  vis = sv.Visualizer(model, "flow/conv2", _config(chunk_size=chunk))
  units = list(range(n_units))
  settings = [{"flow": (1.0, 0.0)}, {"flow": (1.0, 10.0)}]
  results = sweep.run_sweep(vis, units, settings, vis.config, seed=3)
  assert vis.trace_count == 1
  assert [r.settings["flow"] for r in results] == [(1.0, 0.0), (1.0, 10.0)]
  for r, s in zip(results, settings):
    assert list(r.units) == units
    ref = sv.Visualizer(model, "flow/conv2", _config()).run(units, seed=3, tv=s,
                                                            log_progress=False)
    for k in ref.inputs:
      np.testing.assert_allclose(r.inputs[k], ref.inputs[k], rtol=0, atol=2e-3 * 12.5)


def test_chunk_size_from_memory_budget(model):
  vis = sv.Visualizer(model, "flow/conv2", _config())
  per = chunks.element_memory_bytes(vis)
  assert per is None or per > 0
  if per is not None:  # a budget of three elements per device, four devices.
    assert chunks.plan_chunk_size(vis, 100, 4, 0, memory_budget_gb=3 * per / 2**30) == 12
  assert chunks.plan_chunk_size(vis, 6, 4, chunk_size=3) == 4  # rounded to devices.
  assert chunks.plan_chunk_size(vis, 10, 1, chunk_size=64) == 10  # capped at the count.
  assert vis.trace_count == 0


def test_automatic_chunk_size_per_backend(model):
  """chunk_size 0 without a budget: one element per device on CPU; on an
  accelerator as many as fit half its memory by the memory analysis."""
  assert chunks.auto_chunk_size("cpu", 1) == 1
  assert chunks.auto_chunk_size("cpu", 4, per_element_bytes=10, device_bytes=10**9) == 4
  assert chunks.auto_chunk_size("gpu", 1, per_element_bytes=100 * 2**20,
                               device_bytes=16 * 2**30) == 81  # 8 GiB / 100 MiB
  assert chunks.auto_chunk_size("tpu", 2, per_element_bytes=2**30, device_bytes=2**30) == 2
  assert chunks.auto_chunk_size("gpu", 2) == 2 * chunks.FALLBACK_CHUNK  # nothing known
  if jax.default_backend() == "cpu":
    vis = sv.Visualizer(model, "flow/conv2", _config())
    assert chunks.plan_chunk_size(vis, 6, 4, chunk_size=0) == 4
    assert chunks.plan_chunk_size(vis, 6, 1, chunk_size=0) == 1
    result = vis.run([0, 1, 2], log_progress=False)  # config.chunk_size 0: one at a time
    assert list(result.units) == [0, 1, 2] and vis.trace_count == 1


def test_sharded_sweep_equals_single_device(tmp_path):
  script = textwrap.dedent("""
      import sys, numpy as np, jax
      import stviz_jax as sv
      from stviz_jax import sweep
      assert len(jax.devices()) == 4, jax.devices()
      m = sv.models.load("tiny_two_stream", size=16, frames=3, width=8)
      c = sv.default_config(); c.steps = 4; c.chunk_size = 4
      vis = sv.Visualizer(m, "fusion", c)
      sharded = sweep.run_sweep(vis, [0, 1, 2, 3, 4, 5, 6], [{}], c, seed=1)[0]
      single = sv.Visualizer(m, "fusion", c).run([0, 1, 2, 3, 4, 5, 6], seed=1,
                                                 chunk_size=7, log_progress=False)
      np.savez(sys.argv[1], sharded=sharded.inputs["flow"], single=single.inputs["flow"],
               traces=vis.trace_count)
  """)
  out = tmp_path / "out.npz"
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4",
             JAX_PLATFORMS="cpu")
  subprocess.run([sys.executable, "-c", script, str(out)], check=True, env=env, cwd=ROOT,
                 timeout=600)
  with np.load(out) as f:
    assert int(f["traces"]) == 1
    np.testing.assert_allclose(f["sharded"], f["single"], rtol=0, atol=2e-3 * 12.5)


def _main_cmd(workdir):
  return [sys.executable, "-m", "stviz_jax.main",
          "--config=configs/tiny_two_stream.py:quick", f"--workdir={workdir}",
          "--config.steps=3", "--config.units=0-5", "--config.chunk_size=2",
          "--config.model_overrides.size=16", "--config.model_overrides.width=8"]


def _finished_chunks(workdir):
  d = pathlib.Path(workdir) / "fusion" / "sweep_state" / "chunks"
  return [p for p in d.iterdir() if p.name.isdigit()] if d.is_dir() else []


@pytest.mark.slow  # tests/test_faults.py kills in the sweep (and later) on every CI run.
def test_kill_and_resume_is_bitwise_identical(tmp_path):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  reference = tmp_path / "reference"
  subprocess.run(_main_cmd(reference), check=True, env=env, cwd=ROOT, timeout=600,
                 capture_output=True)

  resumed = tmp_path / "resumed"
  proc = subprocess.Popen(_main_cmd(resumed), env=env, cwd=ROOT,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  deadline = time.time() + 600
  while len(_finished_chunks(resumed)) < 2 and proc.poll() is None and time.time() < deadline:
    time.sleep(0.05)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  n_before = len(_finished_chunks(resumed))
  assert 2 <= n_before < 9, "the kill should land mid-sweep (9 chunks of 2)"
  assert not (resumed / "summary.json").exists()

  run = subprocess.run(_main_cmd(resumed), check=True, env=env, cwd=ROOT, timeout=600,
                       capture_output=True, text=True)
  assert f"resuming, {n_before}/9 chunks already done" in run.stderr
  for setting in ("kappa1_gamma0", "kappa1_gamma1", "kappa1_gamma10"):
    with np.load(reference / "fusion" / setting / "result.npz") as a, \
         np.load(resumed / "fusion" / setting / "result.npz") as b:
      for key in ("inputs_flow", "inputs_rgb", "activations", "history_objective"):
        np.testing.assert_array_equal(a[key], b[key])


def test_resume_refuses_a_different_sweep(tmp_path, model):
  vis = sv.Visualizer(model, "flow/conv2", _config(chunk_size=2))
  sweep.run_sweep(vis, [0, 1], [{}], vis.config, state_dir=str(tmp_path / "s"))
  with pytest.raises(ValueError, match="holds a sweep with a different model, layer, units or config"):
    sweep.run_sweep(vis, [0, 1, 2], [{}], vis.config, state_dir=str(tmp_path / "s"))


def test_resume_recomputes_when_the_weights_at_the_same_path_change(tmp_path):
  """The fingerprint is the weights' content: weights B re-saved where A was do
  not restore A's chunks."""
  from stviz_jax.models import checkpoint
  path, state = str(tmp_path / "weights"), str(tmp_path / "state")
  shape = dict(size=8, frames=2, width=8)

  def sweep_with(seed, state_dir):
    random = sv.models.load("tiny_two_stream", seed=seed, **shape)
    checkpoint.save(path, random.variables, {"architecture": "tiny_two_stream"})
    model = sv.models.load("tiny_two_stream", weights=path, **shape)
    vis = sv.Visualizer(model, "fusion", _config(steps=2, chunk_size=1))
    return sweep.run_sweep(vis, [0, 1], [{}], vis.config, state_dir=state_dir)[0]

  a = sweep_with(0, state)
  b = sweep_with(1, state)  # the same command after re-saving other weights.
  fresh_b = sweep_with(1, None)
  assert not np.array_equal(a.inputs["rgb"], fresh_b.inputs["rgb"])
  for stream in ("rgb", "flow"):
    np.testing.assert_array_equal(b.inputs[stream], fresh_b.inputs[stream])
  np.testing.assert_array_equal(b.activations, fresh_b.activations)
  again = sweep_with(1, state)  # unchanged weights: restored, still B's.
  np.testing.assert_array_equal(again.inputs["rgb"], fresh_b.inputs["rgb"])


def test_a_corrupt_chunk_is_named_and_recomputed(tmp_path, model, caplog):
  vis = sv.Visualizer(model, "flow/conv2", _config(steps=2, chunk_size=1))
  state = tmp_path / "s"
  fresh = sweep.run_sweep(vis, [0, 1], [{}], vis.config, state_dir=str(state))[0]
  chunk = state / "chunks" / "0"
  for f in chunk.rglob("*"):
    if f.is_file() and f.name != "_CHECKPOINT_METADATA":
      f.write_bytes(b"garbage")
  with caplog.at_level("WARNING"):
    again = sweep.run_sweep(vis, [0, 1], [{}], vis.config, state_dir=str(state))[0]
  warned = [r.getMessage() for r in caplog.records if "cannot be restored" in r.getMessage()]
  assert len(warned) == 1 and "checkpoint chunk 0" in warned[0] and str(chunk) in warned[0]
  np.testing.assert_array_equal(again.inputs["rgb"], fresh.inputs["rgb"])
  np.testing.assert_array_equal(again.activations, fresh.activations)
  caplog.clear()
  with caplog.at_level("WARNING"):  # recomputed and saved anew: restored cleanly now.
    sweep.run_sweep(vis, [0, 1], [{}], vis.config, state_dir=str(state))
  assert not [r for r in caplog.records if "cannot be restored" in r.getMessage()]
