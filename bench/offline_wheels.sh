#!/usr/bin/env bash
# Wheels for running the benchmarks on a GPU machine that has PyTorch + transformers but cannot reach PyPI
# (bench/README.md, "GPU"): run here, copy DIR there, then `bench/gpu_run.sh DIR OUT` there.
# usage: bench/offline_wheels.sh DIR [PYTHON_VERSION, default 3.12]
set -euo pipefail
dir=${1:?usage: bench/offline_wheels.sh DIR [PYTHON_VERSION]}
py=${2:-3.12}
plat=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_26_x86_64 manylinux_2_17_x86_64 \
         manylinux2014_x86_64 any; do plat+=(--platform "$p"); done
# what the package needs beyond torch, transformers, numpy, scipy, sentencepiece and tqdm (the GPU image's)
for pkg in pyzmq msgpack xxhash diskcache soundfile cffi pycparser soxr pyloudnorm watchdog mutagen; do
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$py" --implementation cp \
    "${plat[@]}" -d "$dir" "$pkg"
done
ls "$dir"
