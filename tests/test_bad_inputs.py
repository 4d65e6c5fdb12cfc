"""Bad input against the real command lines, in subprocesses: exactly one line
`error: ...` on stderr naming what is wrong, exit code 2, no traceback, and
no file written or changed in the workdir (stviz_jax.cli, config.validate,
job.check_workdir)."""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--config=configs/tiny_two_stream.py:quick", "--config.model_overrides.size=8",
        "--config.model_overrides.frames=2", "--config.steps=2", "--config.quality.transforms=0"]
# Lines that libraries print on their own (absl INFO/WARNING, JAX platform notes).
_NOISE = ("I0", "I1", "W0", "W1", "WARNING:", "INFO:")


def _run(module, *args, timeout=300):
  return subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, capture_output=True,
                        text=True, timeout=timeout)


def _tree(path):
  """Every file under `path` with its bytes and mode ({} when absent)."""
  out = {}
  if os.path.isfile(path):
    return {"": (open(path, "rb").read(), os.stat(path).st_mode)}
  for d, dirs, names in os.walk(path):
    for n in names + dirs:
      p = os.path.join(d, n)
      out[os.path.relpath(p, path)] = (open(p, "rb").read() if os.path.isfile(p) else None,
                                       os.stat(p).st_mode)
  return out


def _assert_one_error(res, code, *needles):
  lines = [l for l in res.stderr.splitlines() if l.strip() and not l.startswith(_NOISE)]
  assert "Traceback" not in res.stderr, res.stderr[-3000:]
  assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr[-3000:]
  assert res.returncode == code, (res.returncode, lines)
  for needle in needles:
    assert needle in lines[0], (needle, lines[0])
  return lines[0]


MAIN_CASES = [
    # (flags, needles in the error line)
    (["--config.stepz=3"], ["--config.stepz", "did you mean 'steps'"]),
    (["--config.optimizer.lr=3"], ["--config.optimizer.lr", "no config field 'lr'"]),
    (["--config.steps=abc"], ["--config.steps=abc"]),
    (["--config.steps=0"], ["config.steps must be an integer >= 1"]),
    (["--config.steps=-5"], ["config.steps", "got -5"]),
    (["--config.optimizer.learning_rate=0"], ["config.optimizer.learning_rate", "> 0"]),
    (["--config.optimizer.learning_rate=nan"], ["config.optimizer.learning_rate", "finite"]),
    (["--config.optimizer.learning_rate=1e39"], ["config.optimizer.learning_rate"]),
    (["--config.chunk_size=-1"], ["config.chunk_size", ">= 0"]),
    (["--config.objective.a_hat=-1"], ["config.objective.a_hat", "> 0"]),
    (["--config.objective.a_hat=0"], ["config.objective.a_hat"]),
    (["--config.regularizer.flow.gamma=-1"], ["config.regularizer.flow.gamma", ">= 0"]),
    (["--config.regularizer.rgb.kappa=-0.5"], ["config.regularizer.rgb.kappa"]),
    (["--config.gammas=(1.0, -2.0)"], ["config.gammas"]),
    (["--config.init_scale=1e39"], ["config.init_scale", "finite"]),
    (["--config.init_scale=0"], ["config.init_scale"]),
    (["--config.quality.transforms=-1"], ["config.quality.transforms", ">= 0"]),
    (["--config.progress_every=-1"], ["config.progress_every"]),
    (["--config.layer=fusoin"], ["unknown layer 'fusoin'", "fusion"]),
    (["--config.model=tiny_two_steram"], ["unknown model", "tiny_two_stream"]),
    (["--config.model_overrides.sizee=8"], ["--config.model_overrides.sizee", "'size'"]),
    (["--config.units=99"], ["99"]),
    (["--config.units=3-1"], ["config.units: range '3-1' is empty", "'1-3'", "'0-7'"]),
    (["--config.units=a,b"], ["config.units: 'a,b' is not a unit list", "'1,4,9'"]),
    (["--config.transforms=scale(a,b)"], ["config.transforms item 'scale(a,b)'", "numbers"]),
]


@pytest.mark.parametrize("flags,needles", MAIN_CASES, ids=[" ".join(c[0]) for c in MAIN_CASES])
def test_main_bad_config_is_one_line_and_writes_nothing(flags, needles, tmp_path):
  workdir = tmp_path / "run"
  res = _run("stviz_jax.main", *TINY, *flags, f"--workdir={workdir}")
  _assert_one_error(res, 2, *needles)
  assert not workdir.exists()


@pytest.mark.parametrize("config,needles", [
    ("configs/nope.py", ["configs/nope.py", "no such config file"]),
    ("configs/tiny_two_stream.py:foo", ["unknown variant 'foo'", "valid: quick"]),
])
def test_main_bad_config_file(config, needles, tmp_path):
  res = _run("stviz_jax.main", f"--config={config}", f"--workdir={tmp_path / 'run'}")
  _assert_one_error(res, 2, *needles)
  assert not (tmp_path / "run").exists()


def test_main_bad_workdirs_are_refused_untouched(tmp_path):
  afile = tmp_path / "afile"
  afile.write_text("mine")
  foreign = tmp_path / "foreign"
  foreign.mkdir()
  (foreign / "index.html").write_text("my page")
  for workdir, needle in [(afile, "is a file"), (afile / "run", "is a file"),
                          (foreign, "holds no run")]:
    before = _tree(str(tmp_path))
    res = _run("stviz_jax.main", *TINY, f"--workdir={workdir}")
    _assert_one_error(res, 2, str(workdir), needle)
    assert _tree(str(tmp_path)) == before


def test_finished_workdir_refuses_another_run_and_resumes_the_same(tmp_path):
  workdir = tmp_path / "run"
  first = _run("stviz_jax.main", *TINY, "--config.units=0", f"--workdir={workdir}")
  assert first.returncode == 0, first.stderr[-3000:]
  before = _tree(str(workdir))
  res = _run("stviz_jax.main", *TINY, "--config.units=0", "--config.layer=flow/conv2",
             f"--workdir={workdir}")
  _assert_one_error(res, 2, str(workdir), "holds another run", "layer", "new --workdir")
  assert _tree(str(workdir)) == before  # config.json included.
  again = _run("stviz_jax.main", *TINY, "--config.units=0", f"--workdir={workdir}")
  assert again.returncode == 0, again.stderr[-3000:]
  assert "resuming" in again.stderr
  assert json.load(open(workdir / "config.json"))["layer"] == "fusion"


OTHER_CASES = [
    ("stviz_jax.models", ["--describe", "tiny_two_steram"], ["unknown model", "tiny_two_stream"]),
    ("stviz_jax.models", ["--describe", "tiny_two_stream", "--set", "sizee=8"], ["sizee"]),
    ("stviz_jax.models", ["--describe", "tiny_two_stream", "--set", "size"], ["--set 'size'"]),
    ("stviz_jax.models", ["--describe", "tiny_two_stream", "--layers", "nope*"],
     ["no layer of 'tiny_two_stream' matches 'nope*'"]),
    ("stviz_jax.models", ["--bogus"], ["unrecognized arguments: --bogus"]),
    ("stviz_jax.gallery", ["--workdir={tmp}/none"], ["none"]),
    ("stviz_jax.stats", ["--config=configs/nope.py", "--workdir={tmp}/s"], ["configs/nope.py"]),
    ("stviz_jax.stats", ["--config=configs/synthetic_stats.py:quick", "--config.stepz=1",
                         "--workdir={tmp}/s"], ["--config.stepz"]),
    ("stviz_jax.classify", ["--model=nope", "--video={tmp}/none.gif"], ["none.gif"]),
    ("converters.caffe", ["{tmp}/out", "--net", "{tmp}/a.prototxt", "{tmp}/a.caffemodel"],
     ["a.prototxt"]),
    ("converters.caffe", ["{tmp}/out"], ["give either --net"]),
    ("converters.matconvnet", ["{tmp}/nope.mat", "{tmp}/out"], ["nope.mat"]),
    ("converters.pytorch", ["{tmp}/nope.pth", "{tmp}/out"], ["nope.pth"]),
]


@pytest.mark.parametrize("module,args,needles", OTHER_CASES,
                         ids=[f"{m} {' '.join(a)}" for m, a, _ in OTHER_CASES])
def test_other_entry_points_bad_input_is_one_line(module, args, needles, tmp_path):
  res = _run(module, *[a.replace("{tmp}", str(tmp_path)) for a in args])
  _assert_one_error(res, 2, *needles)
  assert os.listdir(tmp_path) == []


_PROTOTXT_TWENTY = """name: "x"
input: "data"
input_dim: 1
input_dim: 3
input_dim: 8
input_dim: 8
layer {
  name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param { num_output: "twenty" kernel_size: 3 }
}
"""


def _truncated(path, data):
  with open(path, "wb") as f:
    f.write(data[:len(data) // 2])


def _npy_bytes(array):
  import io  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  buf = io.BytesIO()
  np.save(buf, np.asarray(array))
  return buf.getvalue()


def _npz_bytes(**arrays):
  import io  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  buf = io.BytesIO()
  np.savez(buf, **arrays)
  return buf.getvalue()


# (module, args, {file name in the input folder: how to make it}, needles); the
# inputs lie in their own folder, which must be left as it was.
DAMAGED_FILE_CASES = [
    ("converters.caffe", ["{tmp}/out", "--net", "{in}/a.prototxt", "{in}/a.caffemodel"],
     {"a.prototxt": lambda p: open(p, "w").write(_PROTOTXT_TWENTY),
      "a.caffemodel": lambda p: open(p, "wb").write(b"\x00" * 64)},
     ["a.prototxt:9:", "'num_output' should be an integer, got 'twenty'"]),
    ("converters.pytorch", ["{in}/random.pth", "{tmp}/out"],
     {"random.pth": lambda p: open(p, "wb").write(bytes(range(7, 250)) * 8)},
     ["random.pth", "neither a PyTorch state dict", "nor a .safetensors file"]),
    ("stviz_jax.classify", ["--model=tiny_two_stream", "--video={in}/clip.npy"],
     {"clip.npy": lambda p: _truncated(p, _npy_bytes([[[[0.0] * 3] * 8] * 8] * 4))},
     ["clip.npy: not a readable numpy file", "truncated"]),
    ("stviz_jax.main", TINY + ["--config.objective.a_hat_from={in}/stats.npz",
                               "--workdir={tmp}/run"],
     {"stats.npz": lambda p: _truncated(p, _npz_bytes(**{"fusion/mean": [0.0] * 4}))},
     ["objective.a_hat_from", "stats.npz: not a readable numpy file"]),
]


@pytest.mark.parametrize("module,args,inputs,needles", DAMAGED_FILE_CASES,
                         ids=[f"{m} {' '.join(i)}" for m, _, i, _ in DAMAGED_FILE_CASES])
def test_damaged_input_files_are_named_in_one_line(module, args, inputs, needles, tmp_path):
  in_dir, out_dir = tmp_path / "in", tmp_path / "out"
  in_dir.mkdir(), out_dir.mkdir()
  for name, make in inputs.items():
    make(str(in_dir / name))
  before = _tree(str(in_dir))
  res = _run(module, *[a.replace("{tmp}", str(out_dir)).replace("{in}", str(in_dir))
                       for a in args])
  _assert_one_error(res, 2, *needles)
  assert _tree(str(in_dir)) == before and os.listdir(out_dir) == []


def test_verbose_shows_the_traceback(tmp_path):
  res = _run("stviz_jax.models", "--describe", "nope", "--verbose")
  assert res.returncode == 2 and "Traceback" in res.stderr
  assert res.stderr.strip().splitlines()[-1].startswith("error: unknown model 'nope'")


def _labelled_model():
  sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
  import handbuilt  # pylint: disable=g-import-not-at-top
  from stviz_jax import models  # pylint: disable=g-import-not-at-top
  hand = handbuilt.model()
  return models.wrap(handbuilt.apply, hand.variables, {"rgb": handbuilt.RGB,
                                                      "flow": handbuilt.FLOW},
                     labels=list(handbuilt.MOTION_UNITS) + list(handbuilt.COLOUR_UNITS))


@pytest.mark.parametrize("spec,layer,needles", [
    ("3-1", "motion", ["range '3-1' is empty", "'1-3'"]),
    ("a,b", "motion", ["'a,b' is not a unit list", "no class names"]),
    ("-1", "motion", ["'-1' is negative"]),
    ("1-2-3", "motion", ["'1-2-3' is not a unit index or a range"]),
    ("0,5", "motion", ["unit(s) [5] in '0,5' out of range"]),
    ("leftwrd;red", "logits", ["unknown class 'leftwrd'", "did you mean 'leftward'"]),
    ("rightward,red", "logits", ["separated by ';', not ','"]),
])
def test_unit_lists_name_the_bad_part_the_syntax_and_the_range(spec, layer, needles):
  from stviz_jax import plan  # pylint: disable=g-import-not-at-top
  model = _labelled_model()
  with pytest.raises(ValueError) as e:
    plan.parse_units(spec, model, layer)
  message = str(e.value)
  assert "\n" not in message
  n = model.spec.num_units(layer)
  for needle in needles + ["'all'", "'0-7'", "'1,4,9'", f"0..{n - 1}"]:
    assert needle in message, (needle, message)
  assert ("class names separated by ';'" in message) == (layer == "logits")
  assert plan.parse_units("0, 2-3", model, "motion") == [0, 2, 3]


def test_unknown_class_lists_close_matches():
  from stviz_jax import plan  # pylint: disable=g-import-not-at-top
  model = _labelled_model()
  for call in (model.class_index, lambda n: plan.class_or_index(n, model)):
    with pytest.raises(ValueError, match=r"unknown class 'dwonward' of model 'model'; "
                                         r"did you mean 'downward'"):
      call("dwonward")
    with pytest.raises(ValueError, match=r"did you mean 'red'$"):
      call("Red")
  assert model.class_index("upward") == 3


@pytest.mark.parametrize("spec,needle", [
    ("scale(a,b)", "config.transforms item 'scale(a,b)'"),
    ("jitter, pad(x)", "config.transforms item 'pad(x)'"),
    ("rotate(nan)", "finite"),
    ("scale(1)", "config.transforms item 'scale(1)'"),
])
def test_garbage_transforms_name_the_field_and_item(spec, needle):
  from stviz_jax import config as config_lib  # pylint: disable=g-import-not-at-top
  c = config_lib.default_config()
  c.transforms = spec
  with pytest.raises(ValueError) as e:
    config_lib.validate(c)
  assert needle in str(e.value) and "could not convert" not in str(e.value), str(e.value)


def test_classify_refuses_a_non_finite_clip(tmp_path):
  import numpy as np  # pylint: disable=g-import-not-at-top
  clip = tmp_path / "nan.npy"
  np.save(clip, np.full((2, 8, 8, 3), np.nan, np.float32))
  res = _run("stviz_jax.classify", "--model=nope", f"--video={clip}")
  _assert_one_error(res, 2, str(clip), "NaN or infinite")
  assert "rank" not in res.stdout


def test_unfinished_run_does_not_block_the_corrected_rerun_and_temps_are_swept(tmp_path):
  workdir = tmp_path / "run"
  first = _run("stviz_jax.main", *TINY, "--config.units=0", f"--workdir={workdir}")
  assert first.returncode == 0, first.stderr[-3000:]
  os.remove(workdir / "summary.json")  # as if that run had failed before finishing.
  (workdir / "fusion" / ".tmp_abcd1234.webm").write_bytes(b"half a video")
  (workdir / "notes.txt").write_text("mine")
  before = _tree(str(workdir))
  res = _run("stviz_jax.main", *TINY, "--config.units=0", "--config.layer=flow/conv2",
             f"--workdir={workdir}")
  _assert_one_error(res, 2, str(workdir), "unfinished run", "notes.txt", "move them")
  assert _tree(str(workdir)) == before
  os.remove(workdir / "notes.txt")
  res = _run("stviz_jax.main", *TINY, "--config.units=0", "--config.layer=flow/conv2",
             f"--workdir={workdir}")
  assert res.returncode == 0, res.stderr[-3000:]
  assert json.load(open(workdir / "config.json"))["layer"] == "flow/conv2"
  assert not (workdir / "fusion").exists() and (workdir / "summary.json").exists()
  # A finished workdir of the same config: a rerun resumes and sweeps stale temporaries.
  stale = workdir / "flow_conv2" / ".tmp_wxyz9876.npz"
  stale.write_bytes(b"")
  keep = workdir / "flow_conv2" / ".tmp_mine.txt"
  keep.write_text("not a temporary of ours")
  again = _run("stviz_jax.main", *TINY, "--config.units=0", "--config.layer=flow/conv2",
               f"--workdir={workdir}")
  assert again.returncode == 0, again.stderr[-3000:]
  assert not stale.exists() and keep.exists()
