#!/usr/bin/env bash
# Configures and builds Millipede into build/ (CUDA is auto-detected: set MP_CUDA=OFF to skip).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=${MILLIPEDE_BUILD_DIR:-$root/build}
jobs=${MILLIPEDE_JOBS:-$(nproc)}
cmake -S "$root" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DMP_CUDA="${MP_CUDA:-AUTO}" \
  -DPython3_EXECUTABLE="$root/.venv/bin/python" >/dev/null
ninja -C "$build" -j "$jobs"
