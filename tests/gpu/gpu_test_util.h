// Helpers of the CUDA backend tests: the shared backend (tests fail, never skip, without an sm_90
// GPU), bf16-exact random inputs, and comparisons that make sense for bf16 results.
#pragma once

#include <gtest/gtest.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "runtime/backend.h"
#include "runtime/cuda_backend.h"
#include "runtime/tensor.h"

namespace mp::testing {

// One CudaBackend for the whole test binary. Null (and the calling test fails with the reason)
// when the machine has no sm_90 GPU.
std::shared_ptr<CudaBackend> SharedCudaBackend();

// Fails the current test and returns from it when no backend is available.
#define MP_REQUIRE_CUDA_BACKEND(var)                                 \
  std::shared_ptr<::mp::CudaBackend> var = ::mp::testing::SharedCudaBackend(); \
  if (var == nullptr) return

// f32 -> bf16 bits, rounding to nearest even (NaN stays NaN).
uint16_t Bf16Bits(float f);
float Bf16Value(uint16_t bits);
float RoundToBf16(float f);

// Values representable in bf16 (so the f32 CPU reference and the bf16 GPU see the same inputs).
struct Bf16Input {
  Tensor f32;   // host f32
  Tensor bf16;  // host bf16, the same values
};
Bf16Input RandomBf16Input(std::vector<int64_t> shape, uint64_t seed, float stddev = 1.0f,
                          float mean = 0.0f);
// The same values as a host bf16 tensor (f32 values must be bf16-representable to be exact).
Tensor HostBf16(const Tensor& f32);

// A device copy of a host tensor (same dtype).
absl::StatusOr<Tensor> ToDevice(CudaBackend& backend, const Tensor& host);

// A paged cache [num_blocks, kv_heads, block_size, head_dim] holding the same random
// (bf16-exact) values on both backends, with a block table of table_len entries from a seeded
// shuffle of the blocks.
struct PagedCache {
  Tensor cpu_k, cpu_v, cpu_table;
  Tensor gpu_k, gpu_v, gpu_table;
  int64_t block_size = 0;
  KvLayerView Cpu() const { return {cpu_k, cpu_v, cpu_table, block_size}; }
  KvLayerView Gpu() const { return {gpu_k, gpu_v, gpu_table, block_size}; }
};
// key_stddev scales the keys; outlier > 0 gives them outlier channels (AddOutlierChannels).
PagedCache MakePagedCache(CudaBackend& gpu, int64_t num_blocks, int64_t kv_heads,
                          int64_t block_size, int64_t head_dim, int64_t table_len, uint64_t seed,
                          float key_stddev = 1.0f, float outlier = 0.0f);

// The large channels of real models' queries and keys: in every row of head_dim values, the
// RoPE pairs (c, c + head_dim / 2) of c = 2 and c = head_dim / 4 + 5 get integers of magnitude
// in [size / 2, size] and random sign (bf16-exact up to 256); f32 and bf16 stay equal.
void AddOutlierChannels(Bf16Input* x, int64_t head_dim, float size, uint64_t seed);

// Compares a bf16 result (as f32) with an fp32 reference of the same shape:
//   relative Frobenius error ||got - want|| / ||want|| <= fro_tol, and for every element
//   |got - want| <= elem_tol * (|want| + rms(want))
// i.e. a relative error with a floor at the tensor's scale, so that values near zero (which a
// bf16 rounding of cancelling sums leaves with a large relative error) are judged against the
// size of the tensor. Reports the worst element.
void ExpectBf16Close(const Tensor& got, const Tensor& want, double fro_tol, double elem_tol,
                     const std::string& what);

// Bitwise equality of two host tensors of the same dtype and shape.
void ExpectBitwiseEqual(const Tensor& got, const Tensor& want, const std::string& what);

}  // namespace mp::testing
