#!/usr/bin/env bash
# Packs the GPU tests and benchmarks of a CUDA build, with the shared libraries they need, into
# .gpu-bundle/ (git-ignored, < 40 MB: the programs and libraries travel as one .tar.xz) and
# writes .gpu-bundle/run.sh, which on a machine with an H100/H200 runs every ctest test labelled
# `gpu` (dense, DCA, decode and vertical-slash sparse kernels, the CUDA backend, the memcheck
# runs), then the benchmarks, and prints a summary table last. The build is switched to
# MP_ATTENTION_VARIANTS=ON, so the candidate prefill kernels (bench/cuda/prefill_variants.h),
# their GPU test and the peer library's candidate list are in the same bundle.
#
#   scripts/gpu_bundle.sh [BUILD_DIR]          (default: build/, configured with CUDA)
#   MP_BUNDLE_LABEL_EXCLUDE=  scripts/gpu_bundle.sh   also the multigpu tests (default: left out)
#   MP_BUNDLE_VARIANTS=OFF scripts/gpu_bundle.sh      without the candidate kernels
#
# On the GPU machine, from the repository root (tests/testdata is read from there):
#   .gpu-bundle/run.sh                 tests, benchmarks, then the candidates against cuDNN
#   .gpu-bundle/run.sh tests           only the tests
#   .gpu-bundle/run.sh bench           only the benchmarks
#   .gpu-bundle/run.sh variants        the candidates' GPU test, then every candidate
#                                      interleaved with cuDNN (bench/attention_peer.py --variants)
#   MP_TTFT_LENGTHS=1048576 .gpu-bundle/run.sh bench     the 1M-token prefill (several minutes)
# Logs and JSON lines go to $OUT when it is set, else to /tmp/mp-gpu-bundle/out.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=$(cd "${1:-$root/build}" && pwd)
bundle=$root/.gpu-bundle
bundle_libs=${BUNDLE_LIBS:-$root/../shared/tools/bundle-libs}
[ -x "$bundle_libs" ] || bundle_libs=/work/shared/tools/bundle-libs
[ -x "$bundle_libs" ] || { echo "gpu_bundle.sh: bundle-libs not found (set BUNDLE_LIBS)" >&2; exit 1; }
if ! grep -q 'mp_kernels_cuda' "$build/build.ninja" 2>/dev/null; then
  echo "gpu_bundle.sh: $build is not a CUDA build (configure with the CUDA toolkit)" >&2
  exit 1
fi
variants=${MP_BUNDLE_VARIANTS:-ON}
case "$variants" in
  ON|OFF) ;;
  *) echo "gpu_bundle.sh: MP_BUNDLE_VARIANTS must be ON or OFF, got '$variants'" >&2; exit 1 ;;
esac
cmake -S "$root" -B "$build" -DMP_ATTENTION_VARIANTS="$variants" >/dev/null

echo "building the GPU tests and benchmarks in $build"
ninja -C "$build" -j "${MILLIPEDE_JOBS:-2}" tests/gpu/all bench/cuda/all millipede mp_passkey_eval

# Every gpu-labelled ctest test: gtest binaries run whole (once each), other tests as written.
plan=$(mktemp)
trap 'rm -f "$plan"' EXIT
exclude=${MP_BUNDLE_LABEL_EXCLUDE-multigpu}  # tests that need more than one GPU
ctest --test-dir "$build" -L gpu ${exclude:+-LE "$exclude"} --show-only=json-v1 | python3 -c '
import json, os, sys
tests = json.load(sys.stdin)["tests"]
binaries, commands = [], []
for t in tests:
    cmd = t["command"]
    if any(a.startswith("--gtest_filter=") for a in cmd[1:]) and len(cmd) <= 3 and \
       not cmd[0].endswith(".sh"):
        if cmd[0] not in binaries:
            binaries.append(cmd[0])
    else:
        commands.append((t["name"], cmd))
for b in binaries:
    print("binary\t" + b)
for name, cmd in commands:
    print("command\t" + name + "\t" + "\t".join(cmd))
' > "$plan"
[ -s "$plan" ] || { echo "gpu_bundle.sh: ctest lists no gpu tests in $build" >&2; exit 1; }

# Test binaries outside tests/gpu (other modules' gpu-labelled tests) are built by name.
targets=$(awk -F'\t' '$1 == "binary" {n = split($2, p, "/"); print p[n]}' "$plan")
ninja -C "$build" -j "${MILLIPEDE_JOBS:-2}" $targets

rm -rf "$bundle"
stage=$(mktemp -d)
trap 'rm -f "$plan"; rm -rf "$stage"' EXIT
exes=()
while IFS=$'\t' read -r kind a b rest; do
  if [ "$kind" = binary ]; then
    exes+=("$a")
  fi
done < "$plan"
benches=("$build/bench/cuda/mp_ttft_bench" "$build/bench/cuda/mp_attention_bench"
         "$build/bench/cuda/mp_sparse_bench" "$build/bench/cuda/mp_sparse_kernel_bench"
         "$build/bench/cuda/mp_decode_bench" "$build/bench/cuda/libmp_attention_bench.so")
exes+=("${benches[@]}" "$build/cli/millipede" "$build/bench/mp_passkey_eval")
"$bundle_libs" "$stage" "${exes[@]}" >/dev/null
cp "$root/tests/gpu/run_memcheck.sh" "$stage/bin/"
strip --strip-unneeded "$stage"/bin/* 2>/dev/null || true

# The commands of non-gtest tests, with build paths replaced by bundle paths.
{
  echo "# name<TAB>command... (paths relative to the unpacked bundle)"
  while IFS=$'\t' read -r kind name rest; do
    [ "$kind" = command ] || continue
    line=$name
    IFS=$'\t' read -r -a args <<< "$rest"
    for arg in "${args[@]}"; do
      case "$arg" in
        */run_memcheck.sh) arg=bin/run_memcheck.sh ;;
        "$build"/*) arg=bin/$(basename "$arg") ;;
      esac
      line+=$'\t'$arg
    done
    echo "$line"
  done < "$plan"
} > "$stage/commands.tsv"
for exe in "${exes[@]}"; do basename "$exe"; done | grep -vE '^((lib)?mp_.*_bench(\.so)?|millipede|mp_passkey_eval)$' \
  > "$stage/tests.txt"

mkdir -p "$bundle"
tar -C "$stage" -cJf "$bundle/payload.tar.xz" bin lib commands.tsv tests.txt

cat > "$bundle/run.sh" <<'RUN'
#!/usr/bin/env bash
# Runs the GPU tests and benchmarks of this bundle (made by scripts/gpu_bundle.sh).
#   run.sh [all|tests|bench]     env: MP_TTFT_LENGTHS (default 32768,131072,262144),
#                                     MP_TTFT_ATTENTION (dense or dca; default dense),
#                                     MP_ATTENTION_CASES (default 32k,128k), OUT (log folder),
#                                     MP_SPARSE_CASES (default 128k,256k,512k,1m),
#                                     MP_SPARSE_CONFIG (Qwen's sparse_attention_config.json;
#                                     default: budgets sampled from its statistics)
#   run.sh variants              env: MP_VARIANT_CASES (default 32k,128k,512k,1m)
# Each test program runs under `timeout`: MP_TEST_TIMEOUT seconds per gtest binary (default
# 300), MP_MEMCHECK_TIMEOUT per memcheck run (default 900); one that runs longer (a deadlocked
# kernel) is killed and reported as TIMEOUT, with the test case it was in.
set -u
mode=${1:-all}
here=$(cd "$(dirname "$0")" && pwd)
work=${MP_BUNDLE_WORK:-/tmp/mp-gpu-bundle}
out=${OUT:-$work/out}
mkdir -p "$work" "$out"
if [ ! -f "$work/.unpacked" ] || [ "$here/payload.tar.xz" -nt "$work/.unpacked" ]; then
  rm -rf "$work/bin" "$work/lib"
  if ! tar -C "$work" -xJf "$here/payload.tar.xz" 2>/dev/null; then
    python3 -c 'import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2])' \
      "$here/payload.tar.xz" "$work" || { echo "cannot unpack $here/payload.tar.xz"; exit 1; }
  fi
  touch "$work/.unpacked"
fi
# The CUDA runtime and cuBLAS come from the machine: the toolkit, or the wheels next to PyTorch.
cuda_libs=""
for d in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib; do
  [ -d "$d" ] && cuda_libs+=":$d"
done
py_libs=$(python3 - 2>/dev/null <<'PY'
import glob, os, site
dirs = []
for base in site.getsitepackages():
    dirs += glob.glob(os.path.join(base, "nvidia", "*", "lib"))
print(":".join(dirs))
PY
)
export LD_LIBRARY_PATH="$work/lib$cuda_libs${py_libs:+:$py_libs}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
if [ -z "${MP_TESTDATA_DIR:-}" ] && [ -d "$here/../tests/testdata" ]; then
  export MP_TESTDATA_DIR=$(cd "$here/../tests/testdata" && pwd)
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null \
  | sed 's/^/gpu: /'

summary=()
add() { summary+=("$(printf '| %-44s | %-7s | %s |' "$1" "$2" "$3")"); }
test_timeout=${MP_TEST_TIMEOUT:-300}
memcheck_timeout=${MP_MEMCHECK_TIMEOUT:-900}
# Runs "$@" for at most $1 seconds (then SIGTERM, SIGKILL 10 s later): exit 124 or 137 then.
bounded() { local limit=$1; shift; timeout -k 10 "$limit" "$@"; }
timed_out() { [ "$1" -eq 124 ] || [ "$1" -eq 137 ]; }
# The gtest case a log was in when it stopped (its last "[ RUN ]" line).
last_case() {
  local c
  c=$(grep -a -oE '^\[ RUN      \] .*' "$1" | tail -n 1 | sed 's/^\[ RUN      \] //')
  echo "${c:-its start}"
}

if [ "$mode" = all ] || [ "$mode" = tests ]; then
  : > "$out/tests.log"
  while read -r t; do
    echo "=== $t" | tee -a "$out/tests.log"
    bounded "$test_timeout" "$work/bin/$t" --gtest_color=no > "$work/$t.log" 2>&1
    rc=$?
    cat "$work/$t.log" >> "$out/tests.log"
    passed=$(grep -a -oE '^\[  PASSED  \] [0-9]+' "$work/$t.log" | grep -oE '[0-9]+$' || true)
    failed=$(grep -a -cE '^\[  FAILED  \] .* \([0-9]+ ms\)$' "$work/$t.log" || true)
    skipped=$(grep -a -oE '^\[  SKIPPED \] [0-9]+' "$work/$t.log" | grep -oE '[0-9]+$' || true)
    if timed_out "$rc"; then
      add "$t" TIMEOUT "killed after ${test_timeout}s in $(last_case "$work/$t.log") (tests.log)"
    elif [ "$rc" -eq 0 ] && [ -n "$skipped" ] && [ "$skipped" -gt 0 ]; then
      add "$t" FAIL "${passed:-0} passed, $skipped SKIPPED (a GPU test must not skip)"
    elif [ "$rc" -eq 0 ]; then
      add "$t" PASS "${passed:-?} tests"
    else
      add "$t" FAIL "exit $rc, ${passed:-0} passed, ${failed:-?} failed (tests.log)"
    fi
  done < "$work/tests.txt"
  : > "$out/memcheck.log"
  while IFS=$'\t' read -r -a cmd; do
    [ "${cmd[0]:0:1}" = "#" ] && continue
    name=${cmd[0]}
    args=("${cmd[@]:1}")
    for i in "${!args[@]}"; do
      case "${args[$i]}" in bin/*) args[$i]="$work/${args[$i]}" ;; esac
    done
    echo "=== $name" | tee -a "$out/memcheck.log"
    (cd "$work" && bounded "$memcheck_timeout" "${args[@]}") >> "$out/memcheck.log" 2>&1
    rc=$?
    errors=$(grep -a -oE 'ERROR SUMMARY: [0-9]+ error' "$out/memcheck.log" | tail -n 1)
    if timed_out "$rc"; then
      add "$name" TIMEOUT "killed after ${memcheck_timeout}s (memcheck.log)"
    elif [ "$rc" -eq 0 ]; then
      add "$name" PASS "${errors:-ok}"
    else
      add "$name" FAIL "exit $rc ${errors:-} (memcheck.log)"
    fi
  done < "$work/commands.tsv"
fi

if [ "$mode" = all ] || [ "$mode" = bench ]; then
  echo "=== mp_attention_bench"
  "$work/bin/mp_attention_bench" --cases "${MP_ATTENTION_CASES:-32k,128k}" \
    --json "$out/attention.json" 2>&1 | tee "$out/attention.log"
  rc=${PIPESTATUS[0]}
  [ "$rc" -eq 0 ] && add mp_attention_bench DONE "attention.log, attention.json" \
                  || add mp_attention_bench FAIL "exit $rc"
  echo "=== attention_peer.py (our kernel interleaved with cuDNN SDPA)"
  python3 "$here/../bench/attention_peer.py" --lib "$work/bin/libmp_attention_bench.so" \
    --cases "${MP_ATTENTION_CASES:-32k,128k}" --json "$out/attention_peer.json" 2>&1 \
    | tee "$out/attention_peer.log"
  rc=${PIPESTATUS[0]}
  [ "$rc" -eq 0 ] && add attention_peer.py DONE "attention_peer.log, attention_peer.json" \
                  || add attention_peer.py FAIL "exit $rc"
  echo "=== mp_sparse_bench (vertical-slash sparse DCA prefill vs dense and DCA kernels)"
  "$work/bin/mp_sparse_bench" --cases "${MP_SPARSE_CASES:-128k,256k,512k,1m}" \
    ${MP_SPARSE_CONFIG:+--config "$MP_SPARSE_CONFIG"} \
    --json "$out/sparse.jsonl" 2>&1 | tee "$out/sparse.log"
  rc=${PIPESTATUS[0]}
  [ "$rc" -eq 0 ] && add mp_sparse_bench DONE "sparse.log, sparse.jsonl" \
                  || add mp_sparse_bench FAIL "exit $rc"
  echo "=== mp_sparse_kernel_bench (the sparse kernel on indices of equal work, unequal locality)"
  "$work/bin/mp_sparse_kernel_bench" 2>&1 | tee "$out/sparse_kernel.log"
  rc=${PIPESTATUS[0]}
  [ "$rc" -eq 0 ] && add mp_sparse_kernel_bench DONE "sparse_kernel.log" \
                  || add mp_sparse_kernel_bench FAIL "exit $rc"
  echo "=== mp_decode_bench"
  "$work/bin/mp_decode_bench" --json "$out/decode.json" 2>&1 | tee "$out/decode.log"
  rc=${PIPESTATUS[0]}
  [ "$rc" -eq 0 ] && add mp_decode_bench DONE "decode.log, decode.json" \
                  || add mp_decode_bench FAIL "exit $rc"
  echo "=== mp_ttft_bench"
  "$work/bin/mp_ttft_bench" --lengths "${MP_TTFT_LENGTHS:-32768,131072,262144}" \
    --attention "${MP_TTFT_ATTENTION:-dense}" \
    --json "$out/ttft.jsonl" 2>&1 | tee "$out/ttft.log"
  rc=${PIPESTATUS[0]}
  [ "$rc" -eq 0 ] && add mp_ttft_bench DONE "ttft.log, ttft.jsonl" || add mp_ttft_bench FAIL "exit $rc"
fi

if [ "$mode" = all ] || [ "$mode" = variants ]; then
  if [ ! -x "$work/bin/paged_prefill_attention_variants_test" ]; then
    add "attention_peer.py --variants" FAIL "bundle made with MP_BUNDLE_VARIANTS=OFF"
  else
    rc=0
    if [ "$mode" = variants ]; then  # (run.sh all ran it with the other tests)
      echo "=== paged_prefill_attention_variants_test"
      bounded "$test_timeout" "$work/bin/paged_prefill_attention_variants_test" \
        --gtest_color=no 2>&1 | tee "$out/variants_test.log"
      rc=${PIPESTATUS[0]}
      if timed_out "$rc"; then
        add paged_prefill_attention_variants_test TIMEOUT \
          "killed after ${test_timeout}s in $(last_case "$out/variants_test.log")"
      elif [ "$rc" -eq 0 ]; then
        add paged_prefill_attention_variants_test PASS "variants_test.log"
      else
        add paged_prefill_attention_variants_test FAIL "exit $rc"
      fi
    fi
    if [ "$rc" -eq 0 ]; then
      echo "=== attention_peer.py --variants (every candidate interleaved with cuDNN SDPA)"
      python3 "$here/../bench/attention_peer.py" --lib "$work/bin/libmp_attention_bench.so" \
        --variants --cases "${MP_VARIANT_CASES:-32k,128k,512k,1m}" \
        --json "$out/peer_variants.json" 2>&1 | tee "$out/peer_variants.log"
      rc=${PIPESTATUS[0]}
      [ "$rc" -eq 0 ] && add "attention_peer.py --variants" DONE "peer_variants.log, .json" \
                      || add "attention_peer.py --variants" FAIL "exit $rc"
    fi
  fi
fi

{
  echo
  echo "| run                                          | result  | detail |"
  echo "|----------------------------------------------|---------|--------|"
  printf '%s\n' "${summary[@]}"
  if [ -f "$out/ttft.log" ] && [ "$mode" != tests ]; then
    echo
    sed -n '/^| tokens/,$p' "$out/ttft.log"
  fi
  if [ -f "$out/sparse.log" ] && [ "$mode" != tests ]; then
    echo
    sed -n '/^| keys/,$p' "$out/sparse.log"
  fi
  if [ -f "$out/sparse_kernel.log" ] && [ "$mode" != tests ]; then
    echo
    sed -n '/^| kernel/,$p' "$out/sparse_kernel.log"
  fi
  if [ -f "$out/peer_variants.log" ] && { [ "$mode" = all ] || [ "$mode" = variants ]; }; then
    echo
    sed -n '/^TFLOP\/s (ratio/,$p' "$out/peer_variants.log"
  fi
} | tee "$out/summary.txt"
! printf '%s\n' "${summary[@]}" | grep -qE '\| (FAIL|TIMEOUT) '
RUN
chmod +x "$bundle/run.sh"
size=$(du -sm "$bundle" | cut -f1)
echo "bundle: $(du -sh "$bundle" | cut -f1) in $bundle ($(wc -l < "$stage/tests.txt") test binaries," \
     "$(grep -vc '^#' "$stage/commands.tsv") other gpu tests, ${#benches[@]} benchmarks," \
     "candidates $variants; payload $(du -k "$bundle/payload.tar.xz" | cut -f1) KB)"
[ "$size" -lt 40 ] || { echo "gpu_bundle.sh: the bundle is ${size} MB, over 40 MB" >&2; exit 1; }
