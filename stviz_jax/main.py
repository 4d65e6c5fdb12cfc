r"""Command line: `python -m stviz_jax.main --config=configs/<exp>.py --workdir=DIR`.

Any config field can be overridden, e.g. `--config.steps=50 --config.units=0-15`;
a misspelt field fails with the list of valid ones (`lock_config=True`).
"""

import logging as std_logging

from absl import app, flags, logging
from ml_collections import config_flags

from stviz_jax import cli, compile_cache, job

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment config file (configs/*.py[:arg]).", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory receiving all outputs.")
_CACHE = flags.DEFINE_string(
    "compilation_cache", compile_cache.default_dir(),
    "Directory of XLA's persistent compilation cache, so reruns load their compiled "
    "programs instead of compiling them ('' = off).")
flags.mark_flags_as_required(["config", "workdir"])


class _QuietLibraries(std_logging.Filter):
  """Drops orbax's per-save INFO chatter so progress lines stay readable."""

  def filter(self, record):
    return record.levelno >= std_logging.WARNING or "orbax" not in record.pathname


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.INFO)
  logging.get_absl_handler().addFilter(_QuietLibraries())
  # Bad input (unknown layer, unit, class, file) is one clear line, not a
  # traceback: stviz_jax.cli turns what this raises into it.
  cache = compile_cache.enable(_CACHE.value)
  if cache:
    logging.info("compilation cache: %s", cache)
  job.run(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
  cli.run_absl(main)
