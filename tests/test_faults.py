"""SIGKILL at random points of a run: in the sweep, in the rendering of the
media and in the gallery build. Rerunning the same command completes, leaves
no temporary file behind, and gives results bitwise equal to a run that was
never interrupted (arrays, pictures and the summary).

Each kill hits the whole process group (the job and its ffmpeg encoders), as a
machine that loses power would; the moment is a seeded random delay after the
phase's first file appears.
"""

import json
import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from stviz_jax import files

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FLAGS = ["--config=configs/tiny_two_stream.py:quick", "--config.model_overrides.size=8",
         "--config.model_overrides.frames=2", "--config.steps=4", "--config.units=0-5",
         "--config.chunk_size=1", "--config.gammas=(0.0, 10.0)", "--config.quality.transforms=0"]
SETTINGS = ("kappa1_gamma0", "kappa1_gamma10")


def _marker(phase: str):
  """A test of the workdir that says the run has entered `phase`."""
  def sweep(w):
    return os.path.isdir(os.path.join(w, "fusion", "sweep_state", "chunks"))

  def rendering(w):
    return os.path.exists(os.path.join(w, "fusion", SETTINGS[0], "unit_0000_rgb.png"))

  def gallery(w):
    return os.path.isdir(os.path.join(w, "gallery"))
  return {"sweep": sweep, "rendering": rendering, "gallery": gallery}[phase]


def _start(workdir: str) -> subprocess.Popen:
  return subprocess.Popen([sys.executable, "-m", "stviz_jax.main", *FLAGS, f"--workdir={workdir}"],
                          cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                          start_new_session=True)  # its own group: the kill takes ffmpeg too.


def _run(workdir: str) -> None:
  proc = _start(workdir)
  _, err = proc.communicate(timeout=600)
  assert proc.returncode == 0, err[-3000:]


def _kill_during(workdir: str, phase: str, rng: random.Random) -> bool:
  """Starts the run and SIGKILLs it a random 0-1 s after `phase` began;
  False when the run finished first."""
  entered = _marker(phase)
  proc = _start(workdir)
  deadline = time.time() + 600
  while not entered(workdir) and proc.poll() is None and time.time() < deadline:
    time.sleep(0.01)
  time.sleep(rng.uniform(0.0, 1.0))  # each phase lasts 1.5-6 s here.
  if proc.poll() is not None:
    return False
  os.killpg(proc.pid, signal.SIGKILL)
  proc.wait()
  return True


def _results(workdir: str) -> dict:
  """What a run produced: arrays of every .npz, bytes of every picture, the
  summary without its timings, and the list of all files (sweep checkpoints and
  the HTML pages aside, whose bytes hold paths and times)."""
  out = {}
  for d, dirs, names in os.walk(workdir):
    dirs[:] = [x for x in dirs if x != "sweep_state"]
    for name in names:
      path = os.path.join(d, name)
      rel = os.path.relpath(path, workdir)
      if name.endswith(".npz"):
        with np.load(path) as f:
          out[rel] = {k: f[k] for k in f.files}
      elif name.endswith((".png", ".gif")):
        with open(path, "rb") as f:
          out[rel] = f.read()
      elif name == "summary.json":
        with open(path) as f:
          summary = json.load(f)
        out[rel] = {k: v for k, v in summary.items() if k not in ("seconds", "compilations")}
      else:
        out[rel] = None  # present; contents not compared.
  return out


def _assert_equal_runs(got: dict, want: dict) -> None:
  assert sorted(got) == sorted(want)
  for rel, value in want.items():
    if isinstance(value, dict) and rel.endswith(".npz"):
      assert sorted(got[rel]) == sorted(value), rel
      for k in value:
        np.testing.assert_array_equal(got[rel][k], value[k], err_msg=f"{rel}:{k}")
    else:
      assert got[rel] == value, rel


def _temporaries(workdir: str) -> list[str]:
  """Files under `workdir` named as `files.atomic_path` names its temporaries."""
  return [os.path.join(d, n) for d, _, names in os.walk(workdir) for n in names
          if n.startswith(files.TMP_PREFIX)]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("faults") / "uninterrupted")
  _run(workdir)
  return _results(workdir)


def _killed_and_rerun(workdir: str, seed: int, phases) -> list[str]:
  rng = random.Random(seed)
  killed = [p for p in phases if _kill_during(workdir, p, rng)]
  _run(workdir)
  return killed


def test_kills_in_sweep_rendering_and_gallery_then_rerun_equals_uninterrupted(reference, tmp_path):
  workdir = str(tmp_path / "run")
  phases = ("sweep", "rendering", "gallery")
  killed = _killed_and_rerun(workdir, 0, phases)
  assert killed == list(phases), "a run finished before its kill; the test would show less"
  assert _temporaries(workdir) == []
  _assert_equal_runs(_results(workdir), reference)


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize("phase", ["sweep", "rendering", "gallery"])
def test_one_kill_at_a_seeded_moment_then_rerun_equals_uninterrupted(reference, tmp_path, seed,
                                                                     phase):
  workdir = str(tmp_path / "run")
  _killed_and_rerun(workdir, seed, (phase,))
  assert _temporaries(workdir) == []
  _assert_equal_runs(_results(workdir), reference)
