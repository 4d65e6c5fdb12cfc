#!/usr/bin/env bash
# Every speed benchmark at accelerator sizes, one JSON line each, for one GPU/TPU run.
#
#   bash benchmarks/gpu.sh [OUT.jsonl]             on the accelerator machine (aim: < 8 min on one recent GPU)
#   STVIZ_DRY_RUN=1 bash benchmarks/gpu.sh OUT     the same commands at test size on a CPU
#                                                  (tests/test_gpu_script.py, slow)
#
# Each line is a benchmark's own JSON (device name, seconds per unit-step, the
# fraction of the matmul peak measured in the same run, memory per unit) plus
# "cmd"; the main job's full variant adds a line with its wall time. The
# PyTorch twins run only with STVIZ_TORCH=1 (they need a CUDA build of torch
# to mean anything on a GPU). Record the table in benchmarks/README.md with the
# card's name (nvidia-smi --query-gpu=name --format=csv).
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-/tmp/stviz_gpu_bench.jsonl}
: > "$out"
torch_flag="--no-torch"
[[ "${STVIZ_TORCH:-0}" == 1 ]] && torch_flag=""

if [[ "${STVIZ_DRY_RUN:-0}" == 1 ]]; then
  vgg="--size=32 --units=2 --steps=2 --repeats=1"
  fusion="--frames=2 --size=32 --units=2 --steps=2 --repeats=1"
  i3d="--frames=8 --size=32 --units=2 --steps=2 --repeats=1"
  vmap="--units=2 --steps=2 --size=32 --repeats=1"
  chunks="--units=4 --steps=2 --size=32 --chunks=1,2,4"
  job="configs/i3d_kinetics400.py:quick"
else
  vgg="--size=224 --units=64 --steps=32 --repeats=2"
  fusion="--frames=5 --size=224 --units=16 --steps=16 --repeats=2"
  i3d="--frames=32 --size=224 --units=8 --steps=16 --repeats=2"
  vmap="--units=64 --steps=32 --size=224 --repeats=2"
  chunks="--units=64 --steps=16 --size=224 --chunks=1,4,16,64"
  job="configs/i3d_kinetics400.py:full"
fi

run() {  # run SCRIPT ARGS...: appends the script's last JSON line, with its command.
  local cmd="python benchmarks/$*"
  echo "# $cmd" >&2
  python "benchmarks/$1" "${@:2}" | tail -1 \
    | python -c 'import json, sys; d = json.loads(sys.stdin.read()); d["cmd"] = sys.argv[1]; print(json.dumps(d))' "$cmd" \
    | tee -a "$out"
}

for dtype in float32 bfloat16; do
  run speed_vgg16.py $vgg --dtype=$dtype $torch_flag
  run speed_video.py --net=vgg16_fusion $fusion --dtype=$dtype $torch_flag
  run speed_video.py --net=i3d $i3d --dtype=$dtype $torch_flag
done
run vmap_vs_loop.py $vmap
run sweep_chunks.py $chunks

workdir=$(mktemp -d /tmp/stviz_gpu_job.XXXXXX)
start=$(date +%s.%N)
python -m stviz_jax.main --config="$job" --workdir="$workdir/run" >/dev/null 2>"$workdir/log" \
  || { tail -5 "$workdir/log" >&2; exit 1; }
python - "$job" "$start" "$workdir/run" <<'PY' | tee -a "$out"
import json, sys, time, jax
job, start, run = sys.argv[1], float(sys.argv[2]), sys.argv[3]
summary = json.load(open(f"{run}/summary.json"))
print(json.dumps({"benchmark": "main_job", "config": job, "wall_s": round(time.time() - start, 1),
                  "job_s": summary.get("seconds"), "device": str(jax.devices()[0].device_kind),
                  "backend": jax.default_backend(), "cmd": f"python -m stviz_jax.main --config={job}"}))
PY
rm -rf "$workdir"
echo "# wrote $out" >&2
