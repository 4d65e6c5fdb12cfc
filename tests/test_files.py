"""Outputs honour the umask: atomic writes (tempfile.mkstemp is 0600) end with
the mode a plain open() would give, and leave no temporary file."""

import os

import numpy as np
import pytest

from stviz_jax import files, render
from stviz_jax.optimize import Result


@pytest.fixture
def umask_022():
  old = os.umask(0o022)
  yield
  os.umask(old)


def _mode(path):
  return os.stat(path).st_mode & 0o777


def test_atomic_writers_give_the_umask_mode(tmp_path, umask_022):
  files.write_text(str(tmp_path / "a.html"), "<p>")
  files.savez(str(tmp_path / "a.npz"), {"x": np.zeros(3)})
  render.save_png(str(tmp_path / "a.png"), np.zeros((4, 4, 3), np.uint8))
  r = Result(layer="l", units=np.arange(1), inputs={"rgb": np.zeros((1, 1, 2, 2, 3))},
             activations=np.zeros(1), history={}, a_hat_given=False, seed=0)
  r.save(str(tmp_path / "result.npz"))
  for name in ("a.html", "a.npz", "a.png", "result.npz"):
    assert _mode(tmp_path / name) == 0o644, name
  assert sorted(os.listdir(tmp_path)) == ["a.html", "a.npz", "a.png", "result.npz"]
  os.umask(0o077)
  files.write_text(str(tmp_path / "private.txt"), "x")
  assert _mode(tmp_path / "private.txt") == 0o600


def test_failed_write_leaves_the_old_file(tmp_path):
  path = str(tmp_path / "f.txt")
  files.write_text(path, "old")
  with pytest.raises(RuntimeError):
    with files.atomic_path(path) as tmp:
      open(tmp, "w").write("half")
      raise RuntimeError
  assert open(path).read() == "old" and os.listdir(tmp_path) == ["f.txt"]
