// NcclTransport: GPU-to-GPU transfers with ncclSend/ncclRecv (NVLink, PCIe, InfiniBand or
// sockets, whatever NCCL picks), for activations and KV that live in device memory.
//
// One transport links exactly one peer: it owns a 2-rank communicator formed at Connect()
// from the ncclUniqueId in the descriptor of the side with the smaller instance id (rank 0).
// Both sides call Connect(); each waits up to TransportOptions::nccl_connect_timeout for the
// other. A stage with several neighbours creates one NcclTransport per neighbour.
//
// Differences from the general contract (transport.h), all forced by NCCL:
//  * NCCL has no tags: a receive matches the peer's send at the same position in submission
//    order, and sizes must agree. Both sides must submit their transfers in the same order
//    (the pipeline does: chunk k before chunk k+1, layers in order). Tags are not checked.
//  * Operations go onto one CUDA stream at Submit() and cannot be withdrawn: Cancel() is a
//    no-op and a Released unfinished batch keeps its memory in use until the stream passes it.
//    Disconnect() and destruction abort the communicator, which ends everything in flight.
//  * A dead peer shows as UNAVAILABLE when NCCL reports an error on the communicator (network
//    transports); over NVLink/PCIe a lost peer may only show as DEADLINE_EXCEEDED in Wait().
// Memory must be device memory of the transport's GPU. Thread-safe (see transport.h).
#pragma once

#include <cuda_runtime_api.h>
#include <nccl.h>

#include <deque>
#include <memory>
#include <string>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "kvtransfer/transport_base.h"
#include "kvtransfer/transport_options.h"

namespace mp::kvtransfer {

class NcclTransport final : public TransportBase {
 public:
  // FAILED_PRECONDITION when the CUDA device does not exist or NCCL cannot make an id.
  static absl::StatusOr<std::unique_ptr<NcclTransport>> Create(const TransportOptions& options);
  ~NcclTransport() override;

  absl::StatusOr<std::string> LocalEndpoint() override;
  absl::Status Connect(absl::string_view peer_id, absl::string_view descriptor) override;
  absl::Status Disconnect(absl::string_view peer_id) override;

 protected:
  absl::Status CheckMemoryKind(const MemoryRegion& region) override;
  absl::Status CheckPeer(absl::string_view peer) override;
  void StartBatch(const std::shared_ptr<Batch>& batch) override;
  void CancelBatch(const std::shared_ptr<Batch>& batch) override {}

 private:
  struct InFlight {
    std::shared_ptr<Batch> batch;
    cudaEvent_t done = nullptr;
  };

  explicit NcclTransport(const TransportOptions& options);
  absl::Status Start();
  // Completes batches whose events fired; fails everything when the communicator broke.
  void WatchLoop();
  // Aborts the communicator and fails every batch in flight with `why`.
  void AbortLocked(absl::Status why) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void FailAll(std::deque<InFlight> batches, const absl::Status& why);

  const TransportOptions options_;
  const uint64_t instance_id_;
  const int device_;
  ncclUniqueId unique_id_;
  std::string descriptor_;
  cudaStream_t stream_ = nullptr;
  std::thread watcher_;

  mutable absl::Mutex mu_;
  std::string peer_ ABSL_GUARDED_BY(mu_);
  int peer_rank_ ABSL_GUARDED_BY(mu_) = -1;
  ncclComm_t comm_ ABSL_GUARDED_BY(mu_) = nullptr;
  bool used_ ABSL_GUARDED_BY(mu_) = false;  // the unique id has been consumed
  absl::Status gone_ ABSL_GUARDED_BY(mu_);
  std::deque<InFlight> in_flight_ ABSL_GUARDED_BY(mu_);  // in stream order
  std::deque<InFlight> to_fail_ ABSL_GUARDED_BY(mu_);    // aborted, waiting to be failed
  absl::Status abort_status_ ABSL_GUARDED_BY(mu_);
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
};

}  // namespace mp::kvtransfer
