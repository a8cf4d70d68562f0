#!/usr/bin/env bash
# mp_passkey_eval's sparse modes on the CPU with the embedded SmolLM2-135M-Instruct
# ($MILLIPEDE_SMOLLM2_DIR, set by scripts/test.sh; the test fails when it is unset) and a tiny
# prompt (512 tokens, DCA with chunk_size 256 so that three DCA chunks are in play):
#   * at or below --sparse-threshold, dca-sparse answers exactly as dca and the table marks the
#     row as dense;
#   * above it, with full budgets, dca-sparse gives the same answers as dca (qwen1m-spec.md §9.6);
#   * above it, with the committed SmolLM2 config, both sparse modes run and report the sparse
#     settings;
#   * a sparse mode without --sparse-config, and an unknown mode, are errors.
#   passkey_sparse_test.sh MP_PASSKEY_EVAL SMOLLM2_SPARSE_CONFIG
set -u
bin=$1
committed=$2
model=${MILLIPEDE_SMOLLM2_DIR:-}
if [ -z "$model" ] || [ ! -d "$model" ]; then
  echo "FAIL: MILLIPEDE_SMOLLM2_DIR must name the converted SmolLM2 directory (scripts/test.sh sets it)"
  exit 1
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
failures=0
passed=0
fail() { echo "FAIL $1"; failures=$((failures + 1)); }
ok() { echo "ok   $1"; passed=$((passed + 1)); }

# uniform_config V S FILE: 30 layers x 9 heads with budgets (V, S).
uniform_config() {
  awk -v v="$1" -v s="$2" 'BEGIN { printf "["; for (l = 0; l < 30; ++l) { printf "%s{", l ? ", " : "";
    for (h = 0; h < 9; ++h) printf "%s\"%d\": [\"vertical_and_slash\", %d, %d, 0.0]", h ? ", " : "", h, v, s;
    printf "}" } print "]" }' > "$3"
}
uniform_config 100000 100000 "$tmp/full.json"
grid=(--model "$model" --depths 50 --trials 1 --max-new-tokens 6 --chunk-size 200
      --dca-chunk-size 256 --dca-local-size 64 --quiet)
# answers FILE MODE: the trials' answers of MODE, in order.
answers() { grep "\"mode\":\"$2\"" "$1" | sed -E 's/.*"answer":"([^"]*)".*/\1/'; }

# One run over a prompt at or below the threshold (256 tokens: exactly dense, marked so) and one
# above it (512 tokens) with full budgets (the dense answers).
if out=$("$bin" "${grid[@]}" --lengths 256,512 --modes dca,dca-sparse --sparse-config "$tmp/full.json" \
    --sparse-threshold 300 --jsonl "$tmp/full.jsonl" 2>&1); then
  if [ "$(answers "$tmp/full.jsonl" dca)" == "$(answers "$tmp/full.jsonl" dca-sparse)" ] &&
      [ "$(answers "$tmp/full.jsonl" dca | wc -l)" -eq 2 ] &&
      grep -q "| dca-sparse | 256 | [0-9]* (dense: <= threshold) |" <<<"$out" &&
      grep -q '"length":256,.*"mode":"dca-sparse".*"sparse":{"active":false,' <<<"$out" &&
      grep -q '"length":512,.*"mode":"dca-sparse".*"sparse":{"active":true,' <<<"$out"; then
    ok dense_below_threshold_and_at_full_budget
  else
    fail dense_below_threshold_and_at_full_budget; echo "$out"; cat "$tmp/full.jsonl"
  fi
else
  fail "dense_below_threshold_and_at_full_budget: exit code $?"; echo "$out"
fi

# The committed config: both sparse modes run (it must load for the model, 30 x 9 heads).
if out=$("$bin" "${grid[@]}" --lengths 512 --modes rope-sparse,dca-sparse \
    --sparse-config "$committed" --sparse-threshold 256 --jsonl "$tmp/run.jsonl" 2>&1) &&
    grep -q "^sparse: $committed, prompts longer than 256 tokens, last_q 64" <<<"$out" &&
    [ "$(grep -c '"sparse":{"active":true,' <<<"$out")" -eq 2 ] &&
    [ "$(wc -l < "$tmp/run.jsonl")" -eq 2 ]; then
  ok sparse_modes_run_with_the_committed_config
else
  fail sparse_modes_run_with_the_committed_config; echo "$out"
fi

if out=$("$bin" "${grid[@]}" --lengths 512 --modes dca-sparse 2>&1); then
  fail "sparse_mode_without_config: exit 0"
elif grep -q "need --sparse-config" <<<"$out"; then
  ok sparse_mode_without_config
else
  fail sparse_mode_without_config; echo "$out"
fi
if out=$("$bin" "${grid[@]}" --lengths 512 --modes sparse 2>&1); then
  fail "unknown_mode: exit 0"
elif grep -q "none of rope, dca, rope-sparse and dca-sparse" <<<"$out"; then
  ok unknown_mode
else
  fail unknown_mode; echo "$out"
fi

echo "$passed passed, $failures failed"
[ "$failures" -eq 0 ]
