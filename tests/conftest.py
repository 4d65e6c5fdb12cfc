"""Shared test settings: markers and the path of the external fixtures."""

import os
import pathlib
import shutil
import tempfile

import pytest

# One persistent XLA compilation cache for the session, shared with the
# subprocesses the command-line tests start (they inherit the environment): the
# same small programs (model inits, Adam steps) are otherwise compiled afresh
# by each of some hundred processes. Set before anything imports JAX.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  _CACHE = tempfile.mkdtemp(prefix="stviz_jax_test_xla_cache_")
  os.environ["JAX_COMPILATION_CACHE_DIR"] = _CACHE
  os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
  os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
else:
  _CACHE = None

# Real model files from public repositories (see its SOURCES.md); tests that
# need them skip when the folder is absent.
FIXTURES = pathlib.Path(os.environ.get(
    "STVIZ_FIXTURES", pathlib.Path(__file__).resolve().parents[2] / "shared" / "fixtures"))


def pytest_unconfigure(config):
  if _CACHE:
    shutil.rmtree(_CACHE, ignore_errors=True)


def pytest_configure(config):
  config.addinivalue_line("markers", "slow: full-size runs (deselect with -m 'not slow')")
  config.addinivalue_line("markers", "browser: needs headless Chromium and chromedriver")


@pytest.fixture
def fixtures_dir():
  if not FIXTURES.is_dir():
    pytest.skip(f"external fixtures folder {FIXTURES} is absent (set STVIZ_FIXTURES)")
  return FIXTURES


@pytest.fixture(scope="session")
def run_dir(tmp_path_factory):
  """The main job on the tiny model (3 units x gamma in {0, 10}, 4 steps) with
  its gallery; shared read-only by the gallery tests."""
  from stviz_jax import job
  from stviz_jax.config import default_config
  workdir = tmp_path_factory.getbasetemp() / "tiny_gallery_run"
  config = default_config()
  config.units = "0-2"
  config.steps = 4
  config.gammas = (0.0, 10.0)
  job.run(config, str(workdir))  # builds the gallery at its end.
  return str(workdir)
