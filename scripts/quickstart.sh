#!/usr/bin/env bash
# Sets up Millipede on a fresh Debian 12 machine and runs the main job: the embedded default
# model (SmolLM2-135M-Instruct) reads a long document and answers a question about it.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
"$root/scripts/install_deps.sh"
"$root/scripts/build.sh"
export MILLIPEDE_BIN="$root/build/cli/millipede"
model_dir=$("$root/scripts/fetch_default_model.sh" | tail -n 1)
echo "== millipede run --model $model_dir --prompt-file examples/long_document.txt"
"$MILLIPEDE_BIN" run --model "$model_dir" --prompt-file "$root/examples/long_document.txt" \
  --max-new-tokens 48 "$@"
