#!/usr/bin/env bash
# Sets up Millipede on a fresh Debian 12 machine and runs every CPU test (unit and integration).
# GPU tests (ctest label gpu) run only on a machine with a GPU: ctest -L gpu.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
"$root/scripts/install_deps.sh"
"$root/scripts/build.sh"
export PATH="$root/.venv/bin:$PATH"
export MILLIPEDE_BIN="$root/build/cli/millipede"
export MILLIPEDE_SMOLLM2_DIR=$("$root/scripts/fetch_default_model.sh" | tail -n 1)
export MILLIPEDE_SMOLLM2_GGUF=$(cat "$MILLIPEDE_SMOLLM2_DIR/source_gguf_path" 2>/dev/null || true)
export MILLIPEDE_QWEN_TOKENIZER=$("$root/tests/unit/tokenizer/fetch_qwen_tokenizer.sh" | tail -n 1)
cd "$root/build"
ctest --output-on-failure -j "$(nproc)" -LE gpu "$@"
