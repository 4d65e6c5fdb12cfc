"""The persistent compilation cache: a rerun with another budget loads every program."""

import os
import subprocess
import sys

import numpy as np

from stviz_jax import compile_cache

RUN = r"""
import sys
import jax
import numpy as np
from stviz_jax import compile_cache
import stviz_jax as sv

cache, steps, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
if cache:
  assert compile_cache.enable(cache) == cache
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)  # tiny programs too
model = sv.models.load("tiny_two_stream", size=16, frames=3, width=8)
config = sv.default_config()
config.steps = steps
result = sv.Visualizer(model, "fusion", config).run([0, 3], seed=1, log_progress=False)
np.savez(out, **result.inputs, activations=result.activations)
"""


# The optimisation's programs (jit names) of a Visualizer.run: start, calls, finish.
PROGRAMS = ("jit__start_", "jit_segment", "jit__finish_")


def _run(cache, steps, out):
  subprocess.run([sys.executable, "-c", RUN, str(cache), str(steps), str(out)], check=True,
                 env={**os.environ, "JAX_COMPILATION_CACHE_DIR": ""}, timeout=300)
  return dict(np.load(out))


def test_rerun_with_another_budget_compiles_nothing_and_matches(tmp_path):
  cache = tmp_path / "xla"
  _run(cache, 3, tmp_path / "a.npz")
  optimisation = lambda: {n for n in os.listdir(cache) if n.startswith(PROGRAMS)}
  written = optimisation()
  assert all(any(n.startswith(p) for n in written) for p in PROGRAMS), written
  cached = _run(cache, 12, tmp_path / "b.npz")
  # The start, the calls of steps and the finish came from the cache (eager
  # ops on the history, whose length is the budget, are not the optimisation).
  assert optimisation() == written
  fresh = _run("", 12, tmp_path / "c.npz")
  for k in fresh:
    np.testing.assert_array_equal(cached[k], fresh[k])


def test_default_dir(monkeypatch, tmp_path):
  monkeypatch.setenv("STVIZ_CACHE_DIR", str(tmp_path / "mine"))
  assert compile_cache.default_dir() == str(tmp_path / "mine")
  monkeypatch.delenv("STVIZ_CACHE_DIR")
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
  assert compile_cache.default_dir() == os.path.join(str(tmp_path), "stviz_jax", "xla")


OFF = r"""
import sys
import jax
from stviz_jax import compile_cache
assert compile_cache.enable("") is None            # '' = off
assert compile_cache.enable(sys.argv[1]) is None   # cannot be created: off, the run goes on
assert not jax.config.jax_compilation_cache_dir
print(jax.jit(lambda x: x + 1)(1))
"""


def test_off_and_a_directory_that_cannot_be_made(tmp_path):
  blocker = tmp_path / "file"
  blocker.write_text("")
  out = subprocess.run([sys.executable, "-c", OFF, str(blocker / "xla")], check=True,
                       capture_output=True, text=True, timeout=120,
                       env={**os.environ, "JAX_COMPILATION_CACHE_DIR": ""})
  assert out.stdout.strip() == "2"
  assert "compilation cache off: cannot create" in out.stderr
