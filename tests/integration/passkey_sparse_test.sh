#!/usr/bin/env bash
# mp_passkey_eval's sparse modes on the CPU with the embedded SmolLM2-135M-Instruct
# ($MILLIPEDE_SMOLLM2_DIR, set by scripts/test.sh; the test fails when it is unset) and a tiny
# prompt (512 tokens, DCA with chunk_size 256 so that three DCA chunks are in play):
#   * at or below --sparse-threshold, dca-sparse answers exactly as dca and the table marks the
#     row as dense;
#   * above it, with full budgets, dca-sparse gives the same answers as dca (qwen1m-spec.md §9.6);
#   * above it, with the committed SmolLM2 config and with tiny budgets, both sparse modes run
#     and report the sparse settings;
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
uniform_config 30 100 "$tmp/tiny.json"
grid=(--model "$model" --lengths 512 --depths 50 --trials 1 --max-new-tokens 6 --chunk-size 200
      --dca-chunk-size 256 --dca-local-size 64 --quiet)
# answers FILE MODE: the trials' answers of MODE, in order.
answers() { grep "\"mode\":\"$2\"" "$1" | sed -E 's/.*"answer":"([^"]*)".*/\1/'; }

# At or below the threshold: exactly dense.
if out=$("$bin" "${grid[@]}" --modes dca,dca-sparse --sparse-config "$committed" \
    --sparse-threshold 100000 --jsonl "$tmp/gate.jsonl" 2>&1); then
  if [ "$(answers "$tmp/gate.jsonl" dca)" == "$(answers "$tmp/gate.jsonl" dca-sparse)" ] &&
      grep -q "| dca-sparse | 512 | [0-9]* (dense: <= threshold) |" <<<"$out"; then
    ok below_threshold_is_dense
  else
    fail below_threshold_is_dense; echo "$out"; cat "$tmp/gate.jsonl"
  fi
else
  fail "below_threshold_is_dense: exit code $?"; echo "$out"
fi

# Full budgets above the threshold: the dense answers.
if out=$("$bin" "${grid[@]}" --modes dca,dca-sparse --sparse-config "$tmp/full.json" \
    --sparse-threshold 256 --jsonl "$tmp/full.jsonl" 2>&1); then
  if [ "$(answers "$tmp/full.jsonl" dca)" == "$(answers "$tmp/full.jsonl" dca-sparse)" ] &&
      grep -q '"mode":"dca-sparse".*"sparse":{"active":true,' <<<"$out"; then
    ok full_budget_answers_as_dense
  else
    fail full_budget_answers_as_dense; echo "$out"; cat "$tmp/full.jsonl"
  fi
else
  fail "full_budget_answers_as_dense: exit code $?"; echo "$out"
fi

# The committed config and tiny budgets: both sparse modes run.
for config in "$committed" "$tmp/tiny.json"; do
  if out=$("$bin" "${grid[@]}" --modes rope-sparse,dca-sparse --sparse-config "$config" \
      --sparse-threshold 256 --jsonl "$tmp/run.jsonl" 2>&1) &&
      grep -q "^sparse: $config, prompts longer than 256 tokens, last_q 64" <<<"$out" &&
      [ "$(grep -c '"sparse":{"active":true,' <<<"$out")" -eq 2 ] &&
      [ "$(wc -l < "$tmp/run.jsonl")" -eq 2 ]; then
    ok "sparse_modes_run ($config)"
  else
    fail "sparse_modes_run ($config)"; echo "$out"
  fi
done

if out=$("$bin" "${grid[@]}" --modes dca-sparse 2>&1); then
  fail "sparse_mode_without_config: exit 0"
elif grep -q "need --sparse-config" <<<"$out"; then
  ok sparse_mode_without_config
else
  fail sparse_mode_without_config; echo "$out"
fi
if out=$("$bin" "${grid[@]}" --modes sparse 2>&1); then
  fail "unknown_mode: exit 0"
elif grep -q "none of rope, dca, rope-sparse and dca-sparse" <<<"$out"; then
  ok unknown_mode
else
  fail unknown_mode; echo "$out"
fi

echo "$passed passed, $failures failed"
[ "$failures" -eq 0 ]
