#!/usr/bin/env bash
# Pipeline TTFT and efficiency: one stage against N stages, dynamic against fixed chunks, for
# each prompt length — TTFT of a prefill-only request of random token ids on a fresh
# `millipede local` cluster, after one warm-up request (so the chunk planner has fitted its cost
# model). Prints one JSON line per measurement and then, per length and chunk mode, the
# pipeline efficiency T1 / (N * TN).
#
#   bench/pipeline_ttft.sh [--preset qwen2.5-7b-instruct-1m] [--stages 2]
#                          [--lengths 131072,262144,1000000] [--device cuda] [--transport nccl]
#                          [--max-chunk 32768] [--min-chunk 2048] [--kv-tokens 1010000]
#                          [--vocab 152064] [--bin build/cli/millipede]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
bin=$root/build/cli/millipede
preset=qwen2.5-7b-instruct-1m
stages=2
lengths=131072,262144,1000000
device=cuda
transport=nccl
max_chunk=32768
min_chunk=2048
kv_tokens=1010000
vocab=152064
while [ $# -gt 0 ]; do
  case "$1" in
    --preset) preset=$2; shift 2 ;;
    --stages) stages=$2; shift 2 ;;
    --lengths) lengths=$2; shift 2 ;;
    --device) device=$2; shift 2 ;;
    --transport) transport=$2; shift 2 ;;
    --max-chunk) max_chunk=$2; shift 2 ;;
    --min-chunk) min_chunk=$2; shift 2 ;;
    --kv-tokens) kv_tokens=$2; shift 2 ;;
    --vocab) vocab=$2; shift 2 ;;
    --bin) bin=$2; shift 2 ;;
    *) echo "pipeline_ttft.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
IFS=, read -r -a lens <<<"$lengths"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
results=$work/results.jsonl

measure() {  # stages mode
  local n=$1 mode=$2 ready=$work/ready.$1.$2 log=$work/local.$1.$2.log
  "$bin" local --model-preset "$preset" --stages "$n" --device "$device" --transport "$transport" \
    --kv-tokens "$kv_tokens" --max-chunk "$max_chunk" --chunk-mode "$mode" \
    --coordinator-arg=--min-chunk="$min_chunk" --listen 127.0.0.1:0 --metrics-listen 127.0.0.1:0 \
    --startup-timeout 1800 --ready-file "$ready" >"$log" 2>&1 &
  local pid=$!
  for _ in $(seq 1 18000); do
    [ -s "$ready" ] && break
    kill -0 "$pid" 2>/dev/null || { cat "$log" >&2; return 1; }
    sleep 0.1
  done
  local address
  address=$(cat "$ready")
  "$bin" generate --address "$address" --random-prompt "${lens[0]}" --random-vocab "$vocab" \
    --prefill-only --quiet --json --timeout 7200 >/dev/null
  for len in "${lens[@]}"; do
    "$bin" generate --address "$address" --random-prompt "$len" --random-vocab "$vocab" \
      --seed "$len" --prefill-only --quiet --json --timeout 7200 |
      sed "s/^{/{\"preset\": \"$preset\", \"stages\": $n, \"chunk_mode\": \"$mode\", \"device\": \"$device\", \"transport\": \"$transport\", \"max_chunk\": $max_chunk, /" |
      tee -a "$results"
  done
  kill -INT "$pid"
  wait "$pid" || true
}

for mode in dynamic fixed; do
  measure 1 "$mode"
  measure "$stages" "$mode"
done
"${PYTHON:-python3}" - "$results" "$stages" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
n = int(sys.argv[2])
t = {(r["stages"], r["chunk_mode"], r["prompt_tokens"]): r["ttft_seconds"] for r in rows}
for (stages, mode, tokens), t1 in sorted(t.items()):
    if stages != 1 or (n, mode, tokens) not in t:
        continue
    tn = t[(n, mode, tokens)]
    print(json.dumps({"prompt_tokens": tokens, "chunk_mode": mode, "t1_seconds": t1,
                      f"t{n}_seconds": tn, "efficiency": t1 / (n * tn)}))
PY
