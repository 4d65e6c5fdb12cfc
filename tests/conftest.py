"""Shared test settings: markers and the path of the external fixtures."""

import os
import pathlib

import pytest

# Real model files from public repositories (see its SOURCES.md); tests that
# need them skip when the folder is absent.
FIXTURES = pathlib.Path(os.environ.get(
    "STVIZ_FIXTURES", pathlib.Path(__file__).resolve().parents[2] / "shared" / "fixtures"))


def pytest_configure(config):
  config.addinivalue_line("markers", "slow: full-size runs (deselect with -m 'not slow')")
  config.addinivalue_line("markers", "browser: needs headless Chromium and chromedriver")


@pytest.fixture
def fixtures_dir():
  if not FIXTURES.is_dir():
    pytest.skip(f"external fixtures folder {FIXTURES} is absent (set STVIZ_FIXTURES)")
  return FIXTURES
