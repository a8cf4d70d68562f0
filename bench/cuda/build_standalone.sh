#!/usr/bin/env bash
# Builds the sm_90a attention library (dense and DCA prefill, decode), its GPU tests, the
# benchmarks and the shared library that bench/attention_peer.py loads, with plain nvcc/g++ (no
# CMake tree), statically linked against cudart and GoogleTest, so the binaries run on a GPU
# machine that lacks the -dev packages. The candidate kernel configurations of
# bench/cuda/prefill_variants.h are compiled in (attention_bench --variants, attention_peer.py
# --variants, paged_prefill_attention_variants_test).
#
#   bench/cuda/build_standalone.sh OUT_DIR [CUTLASS_INCLUDE_DIR]     (JOBS=N: parallel compiles)
set -euo pipefail
out=${1:?usage: build_standalone.sh OUT_DIR [CUTLASS_INCLUDE_DIR]}
cutlass=${2:-${CUTLASS_INCLUDE_DIR:?set CUTLASS_INCLUDE_DIR or pass it}}
root=$(cd "$(dirname "$0")/../.." && pwd)
nvcc=${NVCC:-/usr/local/cuda/bin/nvcc}
jobs=${JOBS:-$(nproc)}
mkdir -p "$out/obj"
flags=(-std=c++17 -O3 -gencode=arch=compute_90a,code=sm_90a --expt-relaxed-constexpr
       -Xcompiler -fPIC -I"$root" -isystem "$cutlass" -Xptxas -v
       -DMP_PREFILL_CANDIDATES -DMP_ATTENTION_BENCH_VARIANTS)
build() {  # build SRC OBJ: recompile only when a source or header is newer
  local src=$1 obj=$2
  if [ -f "$obj" ] && [ -z "$(find "$root/kernels/cuda" "$root/bench/cuda" "$src" -newer "$obj" -print -quit)" ]; then
    return
  fi
  echo "nvcc $src"
  "$nvcc" "${flags[@]}" -c "$src" -o "$obj" 2> "$obj.log" || { cat "$obj.log"; return 1; }
  grep -E "registers|spill" "$obj.log" | sort | uniq -c || true
}
pids=()
spawn() {  # at most $jobs compiles at a time
  while [ "$(jobs -rp | wc -l)" -ge "$jobs" ]; do sleep 0.2; done
  build "$@" &
  pids+=($!)
}
lib=()
for f in paged_prefill_attention tma_tensor_map paged_prefill_attention_hd64 \
         paged_prefill_attention_hd128 paged_prefill_dca_attention \
         paged_prefill_dca_attention_hd64 paged_prefill_dca_attention_hd128 \
         decode_attention decode_attention_hd64 decode_attention_hd128; do
  spawn "$root/kernels/cuda/$f.cu" "$out/obj/$f.o"
  lib+=("$out/obj/$f.o")
done
variants=()
for f in prefill_variants prefill_variants_dense prefill_variants_dca prefill_variants_exact_max; do
  spawn "$root/bench/cuda/$f.cu" "$out/obj/$f.o"
  variants+=("$out/obj/$f.o")
done
for f in attention_bench attention_capi decode_bench; do
  spawn "$root/bench/cuda/$f.cu" "$out/obj/$f.o"
done
failed=0
for pid in "${pids[@]}"; do wait "$pid" || failed=1; done
[ "$failed" = 0 ] || { echo "build_standalone.sh: a compile failed" >&2; exit 1; }
"$nvcc" -shared -o "$out/libmp_attention_bench.so" "$out/obj/attention_capi.o" "${variants[@]}" \
  "${lib[@]}"
"$nvcc" -o "$out/attention_bench" "$out/obj/attention_bench.o" "${variants[@]}" "${lib[@]}"
"$nvcc" -o "$out/decode_bench" "$out/obj/decode_bench.o" "${lib[@]}"
# GPU tests (the CPU reference RoPE comes from kernels/cpu).
g++ -std=c++20 -O2 -I"$root" -c "$root/kernels/cpu/rope.cc" -o "$out/obj/cpu_rope.o"
tests=(paged_prefill_attention_test decode_attention_test paged_prefill_dca_attention_test
       paged_prefill_attention_variants_test)
for t in "${tests[@]}"; do
  g++ -std=c++20 -O2 -I"$root" -I/usr/local/cuda/include \
    -c "$root/tests/gpu/$t.cc" -o "$out/obj/$t.o"
  g++ -o "$out/$t" "$out/obj/$t.o" "$out/obj/cpu_rope.o" "${variants[@]}" "${lib[@]}" \
    /usr/lib/x86_64-linux-gnu/libgtest_main.a /usr/lib/x86_64-linux-gnu/libgtest.a \
    -L/usr/local/cuda/lib64 -lcudart_static -ldl -lrt -lpthread
done
echo "built: $out/{attention_bench,decode_bench,libmp_attention_bench.so}" \
     "$out/{$(IFS=,; echo "${tests[*]}")}"
