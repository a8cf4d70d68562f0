#!/usr/bin/env bash
# `millipede refine-sparsity` end to end on the tiny random Llama fixture (3 layers x 4 heads):
#   * full budgets measure recall 1.0 for every head and nothing is raised;
#   * from small budgets, heads are raised (in steps of --step, both budgets) until every head
#     reaches the target, no layer loses recall, and the written config loads back: through
#     `millipede run --sparse-config`, which then runs sparse prefill with it;
#   * --initial-search picks base candidates and writes a loadable config;
#   * bad inputs end with a non-zero exit and a message naming the problem.
#   refine_sparsity_test.sh MILLIPEDE_BIN FIXTURE_MODEL_DIR
set -u
bin=$1
model=$2
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
failures=0
passed=0
fail() { echo "FAIL $1"; failures=$((failures + 1)); }
ok() { echo "ok   $1"; passed=$((passed + 1)); }

# Two calibration documents of seeded random token ids (vocab 512), 700 and 560 tokens.
awk 'BEGIN { srand(7); for (d = 0; d < 2; ++d) { n = d == 0 ? 700 : 560; printf "{\"ids\": [";
  for (i = 0; i < n; ++i) printf "%s%d", i ? ", " : "", int(rand() * 512); print "]}" } }' \
  > "$tmp/docs.jsonl"
# A config of 3 layers x 4 heads with budgets (V, S): uniform_config V S FILE.
uniform_config() {
  awk -v v="$1" -v s="$2" 'BEGIN { printf "["; for (l = 0; l < 3; ++l) { printf "%s{", l ? ", " : "";
    for (h = 0; h < 4; ++h) printf "%s\"%d\": [\"vertical_and_slash\", %d, %d, 0.0]", h ? ", " : "", h, v, s;
    printf "}" } print "]" }' > "$3"
}
uniform_config 4096 4096 "$tmp/full.json"
uniform_config 30 100 "$tmp/small.json"
dca=(--dca-chunk-size 256 --dca-local-size 64 --dca-original-max-position-embeddings 200)
common=(--model "$model" --calibration "$tmp/docs.jsonl" --threshold 256 --chunk-size 192 "${dca[@]}" --quiet)

# Full budgets: recall 1.
if out=$("$bin" refine-sparsity "${common[@]}" --config "$tmp/full.json" --out "$tmp/out_full.json" 2>&1); then
  if grep -q "all 12 heads (mean recall, target 0.950): 1.0000 -> 1.0000, worst head 1.0000 -> 1.0000, 0 raised, 0 below target" <<<"$out"; then
    ok full_budget_recall_one
  else
    fail "full_budget_recall_one: unexpected report"; echo "$out"
  fi
else
  fail "full_budget_recall_one: exit code $?"; echo "$out"
fi

# Measuring only: the last chunks of full budgets keep every key (recall 1, density >= 100%).
if out=$("$bin" refine-sparsity "${common[@]}" --config "$tmp/full.json" --max-rounds 0 \
    --measure-from 384 --out "$tmp/out_measure.json" 2>&1); then
  if grep -q "measured from token 384" <<<"$out" &&
     grep -Eq "^all 12 heads .*: 1.0000 -> 1.0000, .* density (1[0-9][0-9]\.[0-9]+)% -> \1%; highest query recall 1.0000 -> 1.0000;" <<<"$out"; then
    ok measure_only_last_chunks
  else
    fail "measure_only_last_chunks: unexpected report"; echo "$out"
  fi
else
  fail "measure_only_last_chunks: exit code $?"; echo "$out"
fi

# Small budgets: raised until the target holds; recall never falls.
if out=$("$bin" refine-sparsity "${common[@]}" --config "$tmp/small.json" --step 128 --steps-per-pass 3 \
    --out "$tmp/out_small.json" 2>&1); then
  summary=$(grep "^all 12 heads" <<<"$out")
  read -r before after worst_before worst_after raised below < <(sed -E \
    's/.*: ([0-9.]+) -> ([0-9.]+), worst head ([0-9.]+) -> ([0-9.]+), ([0-9]+) raised, ([0-9]+) below.*/\1 \2 \3 \4 \5 \6/' <<<"$summary")
  if awk -v b="$before" -v a="$after" -v wb="$worst_before" -v wa="$worst_after" -v r="$raised" -v n="$below" \
      'BEGIN { exit !(a >= b && wa >= wb && wa >= 0.95 && r > 0 && n == 0 && b < 0.95) }'; then
    ok "small_budgets_raised ($summary)"
  else
    fail "small_budgets_raised: $summary"; echo "$out"
  fi
  # Per layer: after >= before (columns 2 and 3 of the table).
  if awk -F'|' '/^\| [0-9]+ \|/ { if ($4 + 0 < $3 + 0) bad = 1 } END { exit bad }' <<<"$out"; then
    ok per_layer_recall_not_lower
  else
    fail per_layer_recall_not_lower; echo "$out"
  fi
  # Budgets are 30 / 100 plus the same multiple of 128, or the cap (the longest document, 700).
  if python3 - "$tmp/out_small.json" <<'PY'
import json, sys
layers = json.load(open(sys.argv[1]))
assert len(layers) == 3 and all(len(l) == 4 for l in layers), "shape"
for l in layers:
    for h, (pattern, v, s, score) in l.items():
        assert pattern == "vertical_and_slash"
        assert score >= 0.95, score
        k = (s - 100) // 128
        assert s == 700 or (s - 100) % 128 == 0, s
        assert v == 700 or v == 30 + 128 * k, (v, s)
PY
  then ok written_config_budgets; else fail written_config_budgets; fi
else
  fail "small_budgets_raised: exit code $?"; echo "$out"
fi

# The written config loads in `millipede run` and turns sparse prefill on.
if out=$("$bin" run --model "$model" --prompt-ids "$(seq -s, 1 300)" --max-new-tokens 2 "${dca[@]}" \
    --max-context 400 --sparse-config "$tmp/out_small.json" --sparse-threshold 100 2>&1); then
  if grep -q "sparse prefill: prompts longer than 100 tokens" <<<"$out"; then
    ok run_loads_refined_config
  else
    fail "run_loads_refined_config: no sparse line"; echo "$out"
  fi
else
  fail "run_loads_refined_config: exit code $?"; echo "$out"
fi

# The initial search (the fixture ships no config).
if out=$("$bin" refine-sparsity "${common[@]}" --initial-search --step 128 --out "$tmp/out_search.json" 2>&1) &&
    grep -q "initial search (one pass over the base candidates):" <<<"$out" &&
    "$bin" run --model "$model" --prompt-ids "1,2,3" --max-new-tokens 1 "${dca[@]}" \
      --sparse-config "$tmp/out_search.json" >/dev/null 2>&1; then
  ok initial_search
else
  fail initial_search; echo "$out"
fi

# expect_error NAME SUBSTRING -- ARGS...
expect_error() {
  local name=$1 want=$2
  shift 3
  local out rc
  out=$("$bin" "$@" 2>&1 </dev/null)
  rc=$?
  if [ "$rc" -eq 0 ] || [ "$rc" -ge 128 ]; then
    fail "$name: exit code $rc (want a non-zero error exit, not a signal)"; echo "$out"; return
  fi
  if ! grep -qF -- "$want" <<<"$out"; then
    fail "$name: message does not contain '$want':"; echo "$out"; return
  fi
  ok "$name: $(head -n 1 <<<"$out")"
}
r=(refine-sparsity "${common[@]}" --config "$tmp/full.json")
expect_error missing_calibration "$tmp/none.txt" -- refine-sparsity --model "$model" \
  --calibration "$tmp/none.txt" --config "$tmp/full.json" --out "$tmp/o.json"
expect_error missing_model "$tmp/nomodel" -- refine-sparsity --model "$tmp/nomodel" \
  --calibration "$tmp/docs.jsonl" --out "$tmp/o.json"
expect_error target_above_one "--target-recall must be in (0, 1], got 1.5" -- "${r[@]}" --out "$tmp/o.json" --target-recall 1.5
expect_error target_zero "--target-recall must be in (0, 1], got 0" -- "${r[@]}" --out "$tmp/o.json" --target-recall 0
expect_error out_dir_missing "$tmp/nodir" -- "${r[@]}" --out "$tmp/nodir/o.json"
expect_error short_document "not above the sparse threshold 1000" -- refine-sparsity --model "$model" \
  --calibration "$tmp/docs.jsonl" --config "$tmp/full.json" --out "$tmp/o.json" --threshold 1000
expect_error search_and_config "at most one of --config and --initial-search" -- "${r[@]}" \
  --out "$tmp/o.json" --initial-search
expect_error no_start "ships no sparse_attention_config.json" -- refine-sparsity --model "$model" \
  --calibration "$tmp/docs.jsonl" --out "$tmp/o.json" --threshold 256
echo '[{"0": ["vertical_and_slash", 10, 10, 0]}]' > "$tmp/one_layer.json"
expect_error bad_config_shape "--config" -- refine-sparsity "${common[@]}" \
  --config "$tmp/one_layer.json" --out "$tmp/o.json"
echo '{"text": 5}' > "$tmp/bad.jsonl"
expect_error bad_jsonl "line 1 of $tmp/bad.jsonl" -- refine-sparsity --model "$model" \
  --calibration "$tmp/bad.jsonl" --config "$tmp/full.json" --out "$tmp/o.json"
expect_error bad_aggregate "--aggregate must be mean or p05" -- "${r[@]}" --out "$tmp/o.json" --aggregate max
expect_error repeat_without_length "--repeat needs --max-tokens" -- "${r[@]}" --out "$tmp/o.json" --repeat
expect_error measure_from_negative "--measure-from must be >= 0, got -5" -- "${r[@]}" --out "$tmp/o.json" --measure-from -5
expect_error measure_from_past_end "--measure-from: recall meter: measure_from (600) must be in [0, 576]" -- \
  "${r[@]}" --out "$tmp/o.json" --measure-from 600
expect_error run_sparse_and_no_sparse "at most one of --sparse-config and --no-sparse" -- run \
  --model "$model" --prompt-ids "1,2" --sparse-config "$tmp/full.json" --no-sparse
expect_error run_missing_sparse_config "--sparse-config: $tmp/none.json does not exist" -- run \
  --model "$model" --prompt-ids "1,2" --sparse-config "$tmp/none.json"
expect_error worker_missing_sparse_config "--sparse-config: $tmp/none.json does not exist" -- \
  worker --coordinator 127.0.0.1:1 --sparse-config "$tmp/none.json"
expect_error local_missing_sparse_config "--sparse-config: $tmp/none.json does not exist" -- \
  local --model "$model" --sparse-config "$tmp/none.json"
expect_error worker_bad_sparse_last_q "--sparse-last-q must be in [1, 64], got 65" -- \
  worker --coordinator 127.0.0.1:1 --sparse-last-q 65
expect_error run_sparse_config_shape "layers" -- run --model "$model" --prompt-ids "1,2" \
  --sparse-config "$tmp/one_layer.json"

echo "$passed passed, $failures failed"
[ "$failures" -eq 0 ]
