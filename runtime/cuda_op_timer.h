// CudaOpTimer: GPU time of a backend's ops by kind, for profiling a prefill end to end.
//
// Each timed op is bracketed by two CUDA events on the backend's stream (recorded around the
// launches, so the time is the GPU's, not the host's); completed pairs are folded into per-kind
// totals as later ops are recorded, and Take() waits for the rest. Opt in through
// CudaBackend::EnableOpTiming(): when off the backend records nothing.
//
// Not thread-safe (like the backend).
#pragma once

#include <cuda_runtime_api.h>

#include <array>
#include <cstdint>
#include <deque>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

namespace mp {

enum class CudaOpKind {
  kLinear,           // cuBLASLt GEMMs (projections, MLP, LM head)
  kAttention,        // causal attention (prefill and decode kernels)
  kDcaAttention,     // dual chunk attention (prefill and decode kernels)
  kSparseAttention,  // vertical-slash sparse prefill: estimation, selection, index, kernel
  kElementwise,      // embedding, norms, RoPE, SiLU, residual adds, KV writes
  kCount,
};

std::string_view CudaOpKindName(CudaOpKind kind);  // "linear", "attention", ...

struct CudaOpTime {
  CudaOpKind kind = CudaOpKind::kLinear;
  int64_t calls = 0;
  double seconds = 0;
};

class CudaOpTimer {
 public:
  explicit CudaOpTimer(cudaStream_t stream) : stream_(stream) {}
  ~CudaOpTimer();
  CudaOpTimer(const CudaOpTimer&) = delete;
  CudaOpTimer& operator=(const CudaOpTimer&) = delete;

  // Marks the start of an op of `kind` on the stream; End() marks its end. An op whose events
  // cannot be recorded is not counted (the op itself is unaffected).
  void Begin(CudaOpKind kind);
  void End();

  // Waits for the ops recorded so far and returns one entry per kind (in enum order, kinds
  // without calls included), then starts over from zero.
  absl::StatusOr<std::vector<CudaOpTime>> Take();

 private:
  struct Pending {
    cudaEvent_t start = nullptr, end = nullptr;
    CudaOpKind kind = CudaOpKind::kLinear;
  };
  cudaEvent_t NewEvent();
  // Folds finished pairs from the front into the totals; with `wait`, waits for all of them.
  absl::Status Fold(bool wait);

  cudaStream_t stream_;
  std::deque<Pending> pending_;
  Pending open_;  // Begin() recorded, End() not yet
  bool has_open_ = false;
  std::vector<cudaEvent_t> free_;
  std::array<double, static_cast<size_t>(CudaOpKind::kCount)> ms_{};
  std::array<int64_t, static_cast<size_t>(CudaOpKind::kCount)> calls_{};
};

// Times the enclosing scope as one op of `kind` when `timer` is not null.
class ScopedCudaOpTime {
 public:
  ScopedCudaOpTime(CudaOpTimer* timer, CudaOpKind kind) : timer_(timer) {
    if (timer_ != nullptr) timer_->Begin(kind);
  }
  ~ScopedCudaOpTime() {
    if (timer_ != nullptr) timer_->End();
  }
  ScopedCudaOpTime(const ScopedCudaOpTime&) = delete;
  ScopedCudaOpTime& operator=(const ScopedCudaOpTime&) = delete;

 private:
  CudaOpTimer* timer_;
};

}  // namespace mp
