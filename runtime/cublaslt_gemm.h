// CublasLtGemm: the bf16 linear layers of the CUDA backend through cuBLASLt.
//
//   y[m, n] = x[m, k] . w[n, k]^T (+ bias[n])      (row-major, bf16 in/out, fp32 accumulation)
//
// The bias is fused into the GEMM epilogue. Matmul descriptors, matrix layouts and the algorithm
// cuBLASLt's heuristic picks are cached per (m, n, k, bias, pointer alignments); the workspace is
// allocated once. Thread-safe (calls are serialized).
#pragma once

#include <cublasLt.h>
#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "runtime/cuda_memory_pool.h"

namespace mp {

class CublasLtGemm {
 public:
  static constexpr size_t kDefaultWorkspaceBytes = size_t{64} << 20;

  // A handle on the current device and a workspace of `workspace_bytes` from `pool`.
  static absl::StatusOr<std::unique_ptr<CublasLtGemm>> Create(
      std::shared_ptr<CudaMemoryPool> pool, size_t workspace_bytes = kDefaultWorkspaceBytes);
  ~CublasLtGemm();
  CublasLtGemm(const CublasLtGemm&) = delete;
  CublasLtGemm& operator=(const CublasLtGemm&) = delete;

  // Enqueues y = x w^T (+ bias) on `stream`. m, n, k > 0 (m == 0 or n == 0 does nothing). y must
  // not overlap x, w or bias.
  absl::Status LinearBf16(const void* x,     // [m, k] bf16
                          const void* w,     // [n, k] bf16
                          const void* bias,  // [n] bf16 or null
                          void* y,           // [m, n] bf16
                          int64_t m, int64_t n, int64_t k, cudaStream_t stream);

  // Plans built so far (one per distinct shape/alignment).
  size_t cached_plans() const;

 private:
  struct Key {
    int64_t m, n, k;
    bool bias;
    uint16_t align_x, align_w, align_y, align_bias;
    bool operator==(const Key&) const = default;
    template <typename H>
    friend H AbslHashValue(H h, const Key& key) {
      return H::combine(std::move(h), key.m, key.n, key.k, key.bias, key.align_x, key.align_w,
                        key.align_y, key.align_bias);
    }
  };
  struct Plan;

  CublasLtGemm() = default;
  absl::StatusOr<Plan*> GetPlan(const Key& key);

  cublasLtHandle_t handle_ = nullptr;
  std::shared_ptr<void> workspace_;
  size_t workspace_bytes_ = 0;
  mutable std::mutex mu_;
  absl::flat_hash_map<Key, std::unique_ptr<Plan>> plans_;
};

}  // namespace mp
