"""Weights directories never lose a file nobody asked to lose: a converter
refuses a folder that is not a previous conversion (or holds its own inputs),
replaces a previous conversion atomically, and a kill mid-write leaves the old
weights."""

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from stviz_jax.models import checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LENET = ("lenet_mnist_caffe_ahmdtaha/mnist_deploy.prototxt",
         "lenet_mnist_caffe_ahmdtaha/lenet_iter_10000.caffemodel")


def _vars(value):
  return {"dense": {"kernel": np.full((2, 3), value, np.float32)}}


def _tree(path):
  """Every file under `path` with its bytes (what must not change)."""
  out = {}
  for d, _, names in os.walk(path):
    for n in names:
      p = os.path.join(d, n)
      out[os.path.relpath(p, path)] = open(p, "rb").read()
  return out


def test_previous_conversion_is_replaced(tmp_path):
  out = str(tmp_path / "w")
  checkpoint.save(out, _vars(1.0), {"architecture": "a"})
  checkpoint.save(out, _vars(2.0), {"architecture": "b"})
  variables, meta = checkpoint.restore(out)
  assert meta["architecture"] == "b"
  np.testing.assert_array_equal(variables["dense"]["kernel"], 2.0)
  assert sorted(os.listdir(tmp_path)) == ["w"]  # no temporary or old directory left.


def test_non_empty_folder_is_refused_and_kept(tmp_path):
  out = tmp_path / "mine"
  out.mkdir()
  (out / "notes.txt").write_text("precious")
  with pytest.raises(ValueError, match=r"mine: directory is not empty \(notes.txt\) and is "
                                       r"not a previous conversion.*--overwrite"):
    checkpoint.save(str(out), _vars(1.0), {})
  assert _tree(str(out)) == {"notes.txt": b"precious"}
  assert sorted(os.listdir(tmp_path)) == ["mine"]
  # A previous conversion with a file of the user's added is not ours either.
  conv = str(tmp_path / "conv")
  checkpoint.save(conv, _vars(1.0), {})
  open(os.path.join(conv, "README"), "w").write("mine")
  with pytest.raises(ValueError, match="not a previous conversion"):
    checkpoint.save(conv, _vars(2.0), {})
  assert open(os.path.join(conv, "README")).read() == "mine"
  # Asked for explicitly, it is replaced.
  checkpoint.save(str(out), _vars(3.0), {}, overwrite=True)
  assert checkpoint.is_weights_dir(str(out))


def test_output_that_is_a_file_or_holds_the_input_is_refused(tmp_path):
  f = tmp_path / "file"
  f.write_text("x")
  with pytest.raises(ValueError, match=r"file: exists and is a file"):
    checkpoint.save(str(f), _vars(1.0), {})
  assert f.read_text() == "x"
  src = tmp_path / "d" / "net.caffemodel"
  src.parent.mkdir()
  src.write_bytes(b"weights")
  for overwrite in (False, True):  # its own input, even with --overwrite.
    with pytest.raises(ValueError, match=r"holds the input .*net.caffemodel"):
      checkpoint.save(str(src.parent), _vars(1.0), {"source": str(src)}, overwrite=overwrite)
  assert src.read_bytes() == b"weights"


def test_kill_while_writing_keeps_the_old_weights(tmp_path, monkeypatch):
  out = str(tmp_path / "w")
  checkpoint.save(out, _vars(1.0), {"architecture": "old"})

  def killed(*args, **kwargs):
    raise KeyboardInterrupt

  monkeypatch.setattr(checkpoint.json, "dump", killed)
  with pytest.raises(KeyboardInterrupt):
    checkpoint.save(out, _vars(2.0), {"architecture": "new"})
  monkeypatch.undo()
  variables, meta = checkpoint.restore(out)
  assert meta["architecture"] == "old"
  np.testing.assert_array_equal(variables["dense"]["kernel"], 1.0)
  assert sorted(os.listdir(tmp_path)) == ["w"]


def test_a_killed_saves_leftovers_are_removed_by_the_next_save(tmp_path):
  """A SIGKILL mid-save leaves `w.tmpXXXXXXXX` (and, without an atomic exchange,
  its `.old`); the next save to `w` removes them, but no folder of the user's."""
  out = str(tmp_path / "w")
  checkpoint.save(out, _vars(1.0), {"architecture": "a"})
  for name in ("w.tmpab12cd_9", "w.tmpzz99yy00.old"):
    shutil.copytree(out, tmp_path / name)
  (tmp_path / "w.tmpkeep0000").mkdir()
  (tmp_path / "w.tmpkeep0000" / "notes.txt").write_text("mine")
  checkpoint.save(out, _vars(2.0), {"architecture": "a"})
  assert sorted(os.listdir(tmp_path)) == ["w", "w.tmpkeep0000"]
  np.testing.assert_array_equal(checkpoint.restore(out)[0]["dense"]["kernel"], 2.0)


def _caffe(*args):
  return subprocess.run([sys.executable, "-m", "converters.caffe", *args], cwd=ROOT,
                        capture_output=True, text=True, timeout=300)


def test_caffe_cli_never_deletes_its_inputs_or_a_folder(fixtures_dir, tmp_path):
  d = tmp_path / "lenet"
  d.mkdir()
  proto, weights = (str(d / os.path.basename(p)) for p in LENET)
  for rel, dst in zip(LENET, (proto, weights)):
    shutil.copy(fixtures_dir / rel, dst)
  before = _tree(str(d))
  res = _caffe(str(d), "--net", proto, weights)  # into the folder of its own inputs.
  assert res.returncode == 2, res.stderr
  lines = [l for l in res.stderr.splitlines() if l.startswith("error:")]
  assert len(lines) == 1 and str(d) in lines[0] and "Traceback" not in res.stderr
  assert _tree(str(d)) == before
  res = _caffe(str(d), "--net", proto, weights, "--overwrite")
  assert res.returncode == 2 and "holds the input" in res.stderr
  assert _tree(str(d)) == before
  out = tmp_path / "out"
  assert _caffe(str(out), "--net", proto, weights).returncode == 0
  assert _caffe(str(out), "--net", proto, weights).returncode == 0  # a rerun replaces it.
  assert checkpoint.is_weights_dir(str(out))
  (out / "variables").rename(tmp_path / "moved")
  res = _caffe(str(out), "--net", proto, weights)  # metadata.json alone: not ours.
  assert res.returncode == 2 and "--overwrite" in res.stderr
  assert sorted(os.listdir(out)) == ["metadata.json"]
  afile = tmp_path / "afile"
  afile.write_text("x")
  res = _caffe(str(afile), "--net", proto, weights)
  assert res.returncode == 2 and "is a file" in res.stderr and afile.read_text() == "x"
