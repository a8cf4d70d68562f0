// CudaBackend: the Backend on one NVIDIA Hopper GPU (sm_90), bf16 storage, fp32 accumulation.
//
// Every op validates its tensors like the CPU backend (INVALID_ARGUMENT naming the tensor and the
// expected shape) and then enqueues kernels on the backend's stream; nothing synchronizes except
// CopyToHost, ToHostF32, SampleToken and Synchronize. Device memory comes from a caching pool
// (CudaMemoryPool), linear layers from cuBLASLt (CublasLtGemm, bias fused into the epilogue),
// attention from the sm_90a paged prefill kernel (kernels/cuda/paged_prefill_attention.h) for
// head_dim 64/128 and block sizes that are multiples of 64, and from a simple generic kernel for
// other geometries (counted in stats().generic_attention_calls).
//
// Ids, positions and block tables may be host tensors; they are copied to the device first.
// Device ids are copied to the host once to be validated (Embedding must reject ids outside the
// vocabulary), which synchronizes the stream.
//
// Streams and events: stream() is the one stream all ops run on. RecordEvent() marks the
// current point of it and WaitForEvent() makes it wait for an event of another stream, so that
// transfers on other streams can overlap compute (the memory pool orders reuse on this stream
// only: memory used by another stream must stay referenced until an event says it is done).
//
// Not thread-safe: one thread issues ops (as for every Backend).
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "kernels/cuda/decode_attention.h"
#include "runtime/backend.h"
#include "runtime/cublaslt_gemm.h"
#include "runtime/cuda_memory_pool.h"
#include "runtime/cuda_op_timer.h"
#include "runtime/tensor.h"

namespace mp {

struct CudaBackendOptions {
  int device = 0;  // CUDA device ordinal
  size_t gemm_workspace_bytes = CublasLtGemm::kDefaultWorkspaceBytes;
  // Host-to-device weight conversions (f32/f16 -> bf16) are staged through chunks of this size.
  size_t upload_staging_bytes = size_t{64} << 20;
};

struct CudaBackendStats {
  int64_t prefill_attention_calls = 0;  // sm_90a paged prefill kernel
  int64_t single_query_attention_calls = 0;
  int64_t decode_attention_calls = 0;  // ... of them through the split-KV decode kernel
  int64_t generic_attention_calls = 0;  // shapes the sm_90a kernel does not take
  int64_t dca_prefill_calls = 0;        // fused sm_90a DCA prefill kernel
  int64_t dca_decode_calls = 0;         // split-KV DCA decode kernel
  int64_t sparse_prefill_calls = 0;     // vertical-slash sparse prefill (estimate, index, attend)
  int64_t sparse_workspace_bytes = 0;   // held for it (grown by calls and reservations)
  int64_t gemm_plans = 0;               // distinct cuBLASLt plans built
};

// A CUDA event (timing disabled) owned by one backend's device.
class CudaEvent {
 public:
  CudaEvent() = default;
  explicit CudaEvent(std::shared_ptr<CUevent_st> event) : event_(std::move(event)) {}
  cudaEvent_t get() const { return event_.get(); }
  bool defined() const { return event_ != nullptr; }
  // True once the work before the event has finished (cudaEventQuery).
  bool Done() const;
  absl::Status Wait() const;  // blocks the calling thread

 private:
  std::shared_ptr<CUevent_st> event_;
};

// Device bytes the sparse prefill workspace of `r` needs on the CUDA backend: the largest of
// cuda::VerticalSlashPrefillMaxWorkspaceBytes over its budget sets (host arithmetic, no GPU
// needed). INVALID_ARGUMENT for a request the kernels do not support.
absl::StatusOr<int64_t> CudaSparseWorkspaceBytes(const VerticalSlashReservation& r);

class CudaBackend final : public Backend {
 public:
  // FAILED_PRECONDITION when there is no such device or it is not an sm_90 GPU (the kernels are
  // built for sm_90a only).
  static absl::StatusOr<std::unique_ptr<CudaBackend>> Create(const CudaBackendOptions& options = {});
  ~CudaBackend() override;

  DeviceKind device() const override { return DeviceKind::kCuda; }
  std::string name() const override { return name_; }
  DType compute_dtype() const override { return DType::kBF16; }

  absl::StatusOr<Tensor> Allocate(std::vector<int64_t> shape, DType dtype) override;
  // Host f32/f16/bf16 -> bf16 on the device. A device bf16 tensor of this backend is returned as
  // is (aliased); device f32/f16 tensors are converted.
  absl::StatusOr<Tensor> UploadWeight(const Tensor& host) override;
  absl::Status CopyFromHost(const Tensor& host, Tensor& dst) override;
  absl::Status CopyToHost(const Tensor& src, Tensor& host) override;  // synchronizes
  absl::Status Copy(const Tensor& src, Tensor& dst) override;
  absl::StatusOr<Tensor> ToHostF32(const Tensor& src) override;  // synchronizes
  absl::Status Synchronize() override;

  absl::Status Embedding(const Tensor& ids, const Tensor& table, Tensor& out) override;
  absl::Status RmsNorm(const Tensor& x, const Tensor& weight, float eps, Tensor& out) override;
  absl::Status Add(Tensor& x, const Tensor& y) override;
  absl::Status Linear(const Tensor& x, const Tensor& w, const Tensor* bias, Tensor& y) override;
  absl::Status Rope(Tensor& x, const Tensor& positions, double theta) override;
  absl::Status SiluMul(const Tensor& gate_up, Tensor& out) override;
  absl::Status WriteKv(const Tensor& k, const Tensor& v, int64_t start,
                       const KvLayerView& kv) override;
  absl::Status Attention(const AttentionParams& params) override;
  absl::Status DcaAttention(const DcaAttentionParams& params) override;
  // Vertical-slash sparse prefill through kernels/cuda/vertical_slash_prefill.h (head_dim 64 or
  // 128, at most 256 q heads, positions below 2^30, chunk_len a multiple of 64).
  absl::Status VerticalSlashAttention(const VerticalSlashAttentionParams& params) override;
  // Grows the sparse workspace to VerticalSlashPrefillMaxWorkspaceBytes of the largest set.
  absl::StatusOr<int64_t> ReserveVerticalSlashWorkspace(
      const VerticalSlashReservation& r) override;
  // Greedy argmax or top-p sampling on the device (kernels/cuda/sampling.h).
  absl::StatusOr<int32_t> SampleToken(const Tensor& logits, float temperature, float top_p,
                                      double uniform) override;

  // ---- CUDA specifics ----
  int device_index() const { return device_; }
  cudaStream_t stream() const { return stream_; }
  absl::StatusOr<CudaEvent> RecordEvent();
  absl::Status WaitForEvent(const CudaEvent& event);
  CudaMemoryPool& memory_pool() const { return *pool_; }
  const std::shared_ptr<CudaMemoryPool>& shared_memory_pool() const { return pool_; }
  CublasLtGemm& gemm() const { return *gemm_; }
  CudaBackendStats stats() const;
  // GPU time per op kind (runtime/cuda_op_timer.h): off by default; TakeOpTimes() waits for the
  // ops recorded since it was switched on (or since the last Take) and returns their totals.
  void EnableOpTiming(bool on);
  absl::StatusOr<std::vector<CudaOpTime>> TakeOpTimes();

 private:
  CudaBackend() = default;
  // A device i32 view of `t`: device tensors as they are, host ones copied (valid until the next
  // call with other host contents).
  absl::StatusOr<const int32_t*> DeviceInts(const Tensor& t);
  absl::StatusOr<const float*> InvFreq(double theta, int64_t head_dim);
  // The single-query (decode) path of Attention; see Attention().
  absl::Status SingleQueryAttention(const AttentionParams& p, const int32_t* block_table);
  // The split-KV decode kernel's arguments for one query over keys [key_begin, key_end) (the
  // workspace grown as needed); StageDecodeRange() then puts the range on the device.
  absl::StatusOr<cuda::DecodeAttentionArgs> DecodeArgs(const Tensor& q, const KvLayerView& kv,
                                                       const int32_t* table, Tensor& out,
                                                       Tensor* lse, int64_t key_begin,
                                                       int64_t key_end, float scale);
  absl::Status StageDecodeRange(int64_t key_begin, int64_t key_end);
  // The sparse workspace at least `bytes` long (reallocated when shorter).
  absl::Status GrowSparseWorkspace(int64_t bytes);

  int device_ = 0;
  std::string name_;
  CudaBackendOptions options_;
  cudaStream_t stream_ = nullptr;
  std::shared_ptr<CudaMemoryPool> pool_;
  std::unique_ptr<CublasLtGemm> gemm_;
  Tensor staged_ints_;                // the last host ids/positions/table copied, on the device
  std::vector<int32_t> staged_host_;  // ... and their values
  Tensor sample_out_;        // [1] i32 device
  Tensor sample_workspace_;  // top-p workspace, grown on demand
  int32_t* sample_host_ = nullptr;  // pinned [1]
  int num_sms_ = 0;
  Tensor decode_ranges_;     // [2] i32 device: key_begin, key_end of the decode kernel
  Tensor decode_workspace_;  // split-KV partial results, grown on demand
  Tensor sparse_workspace_;  // vertical-slash estimation, selection and index, grown on demand
  struct InvFreqKey {
    double theta;
    int64_t head_dim;
    bool operator==(const InvFreqKey&) const = default;
    template <typename H>
    friend H AbslHashValue(H h, const InvFreqKey& k) {
      return H::combine(std::move(h), k.theta, k.head_dim);
    }
  };
  absl::flat_hash_map<InvFreqKey, Tensor> inv_freq_;
  CudaBackendStats stats_;
  std::unique_ptr<CudaOpTimer> op_timer_;  // null: ops are not timed
};

}  // namespace mp
