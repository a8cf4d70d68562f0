// Dual Chunk Attention (DCA) position rules shared by the CUDA attention kernels, their launchers
// and their tests: qwen1m-spec.md §2.2 (Qwen / vLLM semantics). Header-only, plain C++ usable
// from host and device code; includes no CUDA header.
//
// Notation: C = chunk_len (positions fold modulo C), S = chunk_size (>= C, the saturation value
// of the successive and inter query positions). Keys are stored rotated by (j mod C). A query at
// absolute position p (chunk c(p) = floor(p / C)) sees three disjoint key regions:
//   inter : keys [0, (c(p) - 1) C)          query rotated by min(2C - 1, S)
//   succ  : keys [(c(p) - 1) C, c(p) C)     query rotated by min(p mod C + C, S)
//   intra : keys [c(p) C, p]                query rotated by p mod C (the only causal part)
// (regions below key 0 are empty).
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define MP_CUDA_HD __host__ __device__
#else
#define MP_CUDA_HD
#endif

namespace mp::cuda {

// DCA constants of a model (qwen1m-spec.md §1: C = 253952, S = 262144, theta = 1e7 for Qwen2.5-1M).
struct DcaParams {
  int64_t chunk_len = 0;   // C: a positive multiple of 64 (of 128 makes prefill fastest)
  int64_t chunk_size = 0;  // S: >= chunk_len
  double rope_theta = 0;   // RoPE base; NeoX rotate-half over the full head_dim
};

// RoPE positions of the query at position p for each of its key regions.
template <class Int>
struct DcaQueryPositions {
  Int intra;
  Int succ;
  Int inter;
};

template <class Int>
MP_CUDA_HD inline DcaQueryPositions<Int> DcaQueryPositionsAt(Int p, Int chunk_len,
                                                             Int chunk_size) {
  const Int i = p % chunk_len;
  DcaQueryPositions<Int> r;
  r.intra = i;
  r.succ = i + chunk_len < chunk_size ? i + chunk_len : chunk_size;
  const Int last = chunk_len + (chunk_len - 1);  // 2C - 1 without overflowing at C = 2^30
  r.inter = last < chunk_size ? last : chunk_size;
  return r;
}

// Key regions of the query at position p >= 0: inter [0, succ_begin), succ [succ_begin,
// intra_begin), intra [intra_begin, p].
template <class Int>
struct DcaKeyRegions {
  Int succ_begin;
  Int intra_begin;
};

template <class Int>
MP_CUDA_HD inline DcaKeyRegions<Int> DcaKeyRegionsAt(Int p, Int chunk_len) {
  DcaKeyRegions<Int> r;
  r.intra_begin = p / chunk_len * chunk_len;
  r.succ_begin = r.intra_begin >= chunk_len ? r.intra_begin - chunk_len : 0;
  return r;
}

// RoPE query position that the query at position p uses against key j (j <= p).
template <class Int>
MP_CUDA_HD inline Int DcaQueryPositionForKey(Int p, Int j, Int chunk_len, Int chunk_size) {
  const DcaKeyRegions<Int> reg = DcaKeyRegionsAt(p, chunk_len);
  const DcaQueryPositions<Int> pos = DcaQueryPositionsAt(p, chunk_len, chunk_size);
  return j >= reg.intra_begin ? pos.intra : j >= reg.succ_begin ? pos.succ : pos.inter;
}

// inv_freq[i] = 1 / theta^(2i / head_dim) for i < head_dim / 2, every step in fp32, exactly as
// the CPU reference mp::cpu::RopeNeox (and transformers) compute it. Host only.
inline void RopeInvFreq(int head_dim, double theta, float* inv_freq) {  // [head_dim / 2]
  const float base = static_cast<float>(theta);
  for (int i = 0; i < head_dim / 2; ++i) {
    const float exponent = static_cast<float>(2 * i) / static_cast<float>(head_dim);
    inv_freq[i] = 1.0f / std::pow(base, exponent);
  }
}

}  // namespace mp::cuda
