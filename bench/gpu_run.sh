#!/usr/bin/env bash
# The benchmark suite on a GPU machine, in one go (bench/README.md, "GPU"): installs wheels made by
# bench/offline_wheels.sh when given (no network needed), checks the device, runs bench/run.py with the device
# section, and leaves the log and the results JSON in OUT.
# usage: bench/gpu_run.sh [WHEELS_DIR|-] OUT [bench/run.py options, default: --device cuda]
set -uo pipefail
cd "$(dirname "$0")/.."
wheels=${1:?usage: bench/gpu_run.sh WHEELS_DIR|- OUT [run.py options]}
out=${2:?usage: bench/gpu_run.sh WHEELS_DIR|- OUT [run.py options]}
shift 2
[ $# -gt 0 ] || set -- --device cuda
mkdir -p "$out"
site=${TMPDIR:-/tmp}/troubadour-bench-site
if [ "$wheels" != - ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target "$site" "$wheels"/*.whl || exit
fi
export PYTHONPATH="$PWD:$site${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
python3 - <<'PY' 2>&1 | tee "$out/versions.txt"
import platform, torch, transformers
print("python", platform.python_version(), "torch", torch.__version__, "transformers", transformers.__version__)
print("cuda", torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else "-")
import troubadour.engine, zmq, soundfile, soxr, diskcache   # everything the suite imports
PY
python3 bench/run.py "$@" 2>&1 | tee "$out/bench.log"
rc=${PIPESTATUS[0]}
cp bench/results/latest.json "$out/" 2>/dev/null
cp bench/results/latest-full.json "$out/" 2>/dev/null
exit "$rc"
