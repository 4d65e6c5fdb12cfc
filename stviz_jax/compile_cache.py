"""XLA's persistent compilation cache: a rerun loads its programs instead of compiling.

Compiling the real I3D's optimisation takes ~9 s on a 2-core CPU, often more
than the steps it then runs. The compiled programs do not depend on the step
budget (`optimize.STEPS_PER_CALL`), so with this cache a rerun of a job, or
of a picture with more steps, at the same shapes and recipe loads them from
disk (~0.5 s). JAX keys each entry by the program, the compile options, the
backend and jax's version, so a cached program is the one XLA would build.

    from stviz_jax import compile_cache
    compile_cache.enable()          # before the first compilation

The main job enables it (`--compilation_cache`, default `default_dir()`).
"""

from __future__ import annotations

import os

from absl import logging
import jax

# Programs compiling faster than this are not worth a file (JAX's default: 1 s;
# the optimisation's start-up, ~0.9 s for the real I3D, is).
MIN_COMPILE_SECONDS = 0.5


def default_dir() -> str:
  """`$STVIZ_CACHE_DIR`, else `$XDG_CACHE_HOME/stviz_jax/xla` (`~/.cache/...`)."""
  if os.environ.get("STVIZ_CACHE_DIR"):
    return os.environ["STVIZ_CACHE_DIR"]
  base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return os.path.join(base, "stviz_jax", "xla")


def enable(path: str | None = None) -> str | None:
  """Turns on JAX's persistent compilation cache in `path` (None: `default_dir()`).

  A cache directory already configured (`JAX_COMPILATION_CACHE_DIR`,
  `jax.config`) is kept. Call before the first compilation: JAX reads the
  setting once. Returns the directory in use, or None when `path` is ""
  (off) or cannot be created, and none was configured.
  """
  current = jax.config.jax_compilation_cache_dir
  if current:
    return current
  if path == "":
    return None
  path = os.path.abspath(os.path.expanduser(path or default_dir()))
  try:
    os.makedirs(path, exist_ok=True)
  except OSError as e:  # a read-only home: run on, compiling as without a cache.
    logging.warning("compilation cache off: cannot create %s (%s)", path, e)
    return None
  jax.config.update("jax_compilation_cache_dir", path)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_SECONDS)
  return path
