#!/usr/bin/env bash
# Sets up Millipede on a fresh Debian 12 machine and runs the main job: a two-stage cluster on
# this machine (`millipede local`: a coordinator and two stage workers, each holding half of the
# layers of the embedded default model, SmolLM2-135M-Instruct) reads a long document and answers
# a question about it (`millipede generate`: prefill progress and TTFT on stderr, the answer on
# stdout). Extra arguments go to `millipede generate`.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
"$root/scripts/install_deps.sh"
"$root/scripts/build.sh"
export MILLIPEDE_BIN="$root/build/cli/millipede"
model_dir=$("$root/scripts/fetch_default_model.sh" | tail -n 1)
ready=$(mktemp)
echo "== millipede local --model $model_dir --stages 2 --max-chunk 512"
# Chunks of at most 512 tokens, so that the stages work on different chunks at once; the
# cluster's own log lines are kept to warnings.
MILLIPEDE_LOG_LEVEL=${MILLIPEDE_LOG_LEVEL:-warning} "$MILLIPEDE_BIN" local --model "$model_dir" \
  --stages 2 --max-chunk 512 --coordinator-arg=--min-chunk=128 --kv-tokens 8192 \
  --listen 127.0.0.1:0 --metrics-listen 127.0.0.1:0 --ready-file "$ready" &
local_pid=$!
cleanup() {
  kill -TERM "$local_pid" 2>/dev/null || true
  wait "$local_pid" 2>/dev/null || true
  rm -f "$ready"
}
trap cleanup EXIT
for _ in $(seq 1 600); do
  [ -s "$ready" ] && break
  kill -0 "$local_pid" 2>/dev/null || { echo "quickstart: millipede local exited" >&2; exit 1; }
  sleep 0.2
done
[ -s "$ready" ] || { echo "quickstart: the cluster did not become ready" >&2; exit 1; }
address=$(cat "$ready")
echo "== millipede generate --address $address --prompt-file examples/long_document.txt"
"$MILLIPEDE_BIN" generate --address "$address" --prompt-file "$root/examples/long_document.txt" \
  --max-new-tokens 48 "$@"
