#include "runtime/cuda_op_timer.h"

#include "absl/strings/str_cat.h"

namespace mp {

std::string_view CudaOpKindName(CudaOpKind kind) {
  switch (kind) {
    case CudaOpKind::kLinear:
      return "linear";
    case CudaOpKind::kAttention:
      return "attention";
    case CudaOpKind::kDcaAttention:
      return "dca_attention";
    case CudaOpKind::kSparseAttention:
      return "sparse_attention";
    case CudaOpKind::kElementwise:
      return "elementwise";
    case CudaOpKind::kCount:
      break;
  }
  return "unknown";
}

CudaOpTimer::~CudaOpTimer() {
  // The events may still be pending on the stream: destroying a recorded event is allowed.
  for (const Pending& p : pending_) {
    cudaEventDestroy(p.start);
    cudaEventDestroy(p.end);
  }
  if (has_open_) cudaEventDestroy(open_.start);
  for (cudaEvent_t e : free_) cudaEventDestroy(e);
}

cudaEvent_t CudaOpTimer::NewEvent() {
  if (!free_.empty()) {
    cudaEvent_t e = free_.back();
    free_.pop_back();
    return e;
  }
  cudaEvent_t e = nullptr;
  if (cudaEventCreate(&e) != cudaSuccess) {
    cudaGetLastError();
    return nullptr;
  }
  return e;
}

void CudaOpTimer::Begin(CudaOpKind kind) {
  if (has_open_) {  // nested ops count once, as the outer one
    return;
  }
  cudaEvent_t start = NewEvent();
  if (start == nullptr) return;
  if (cudaEventRecord(start, stream_) != cudaSuccess) {
    cudaGetLastError();
    free_.push_back(start);
    return;
  }
  open_ = {start, nullptr, kind};
  has_open_ = true;
}

void CudaOpTimer::End() {
  if (!has_open_) return;
  has_open_ = false;
  cudaEvent_t end = NewEvent();
  if (end == nullptr || cudaEventRecord(end, stream_) != cudaSuccess) {
    cudaGetLastError();
    free_.push_back(open_.start);
    if (end != nullptr) free_.push_back(end);
    return;
  }
  open_.end = end;
  pending_.push_back(open_);
  (void)Fold(/*wait=*/false);
}

absl::Status CudaOpTimer::Fold(bool wait) {
  while (!pending_.empty()) {
    const Pending p = pending_.front();
    if (wait) {
      const cudaError_t e = cudaEventSynchronize(p.end);
      if (e != cudaSuccess) {
        cudaGetLastError();
        return absl::InternalError(
            absl::StrCat("op timer: cudaEventSynchronize: ", cudaGetErrorString(e)));
      }
    } else if (cudaEventQuery(p.end) != cudaSuccess) {
      return absl::OkStatus();  // not done yet (cudaErrorNotReady is not a sticky error)
    }
    float ms = 0;
    if (cudaEventElapsedTime(&ms, p.start, p.end) == cudaSuccess) {
      ms_[static_cast<size_t>(p.kind)] += ms;
      ++calls_[static_cast<size_t>(p.kind)];
    } else {
      cudaGetLastError();
    }
    free_.push_back(p.start);
    free_.push_back(p.end);
    pending_.pop_front();
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<CudaOpTime>> CudaOpTimer::Take() {
  if (absl::Status s = Fold(/*wait=*/true); !s.ok()) return s;
  std::vector<CudaOpTime> out;
  for (size_t k = 0; k < ms_.size(); ++k) {
    out.push_back({static_cast<CudaOpKind>(k), calls_[k], ms_[k] * 1e-3});
  }
  ms_.fill(0);
  calls_.fill(0);
  return out;
}

}  // namespace mp
