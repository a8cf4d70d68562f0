// UcxTransport: UCP tagged messages between processes over host memory — TCP, shared memory
// (posix/sysv + cma) or RDMA, whichever UCX_TLS allows and the peers share.
//
// Each transport owns one UCP context and worker, and one progress thread that makes every UCX
// call: API calls hand work to it and, where they need a result, wait for it. The thread spins
// while transfers make progress and sleeps on the worker's event fd when idle, so an idle
// transport costs no CPU. Poll() and Wait() never drive progress themselves.
//
// Descriptors carry the UCP worker address. A send becomes one tagged UCP message whose 64-bit
// tag hashes (sender instance id, request id, chunk index, kind, part); the receiver posts the
// same tag from the descriptor it connected with, so matching is exact up to 64-bit hash
// collisions between in-flight transfers. A receive also checks the length.
//
// Peer loss: endpoints use UCX peer-failure handling where the transports support it (TCP,
// RDMA): a closed connection or a failed keepalive fails the endpoint. UCX 1.13's
// shared-memory transports do not support it; for a peer in the same machine and pid namespace
// such links run without it and the progress thread watches the peer's pid instead (every
// ucx_keepalive_interval). Disconnect() and destruction also send a goodbye message, so a peer
// learns of an orderly exit at once. Operations with a lost peer fail with UNAVAILABLE; on links
// without UCX failure handling a send to a lost peer is abandoned (nothing reads its buffer any
// more), while a receive that had already started taking a message in stays in progress until
// Wait's deadline, since late bytes could still land in its buffer. Thread-safe (transport.h).
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "kvtransfer/transport_base.h"
#include "kvtransfer/transport_options.h"

namespace mp::kvtransfer {

namespace ucx_internal {
struct Conn;
struct OpContext;
struct Worker;
}  // namespace ucx_internal

class UcxTransport final : public TransportBase {
 public:
  // Starts UCX with `options` (ucx_* fields). FAILED_PRECONDITION when UCX cannot start,
  // INVALID_ARGUMENT for a UCX setting it rejects.
  static absl::StatusOr<std::unique_ptr<UcxTransport>> Create(const TransportOptions& options);
  ~UcxTransport() override;

  absl::StatusOr<std::string> LocalEndpoint() override;
  absl::Status Connect(absl::string_view peer_id, absl::string_view descriptor) override;
  absl::Status Disconnect(absl::string_view peer_id) override;

  // The UCX transports one connected endpoint uses, e.g. "tcp/lo" or "posix/memory;cma/memory"
  // (diagnostics and tests). NOT_FOUND for an unknown peer.
  absl::StatusOr<std::string> DescribeLink(absl::string_view peer_id);
  // Just the transports/devices of its lanes, e.g. "tcp/lo" (what Connect() logs).
  absl::StatusOr<std::string> LinkLanes(absl::string_view peer_id);

 protected:
  absl::Status CheckMemoryKind(const MemoryRegion& region) override;
  absl::StatusOr<void*> MapMemory(const MemoryRegion& region) override;
  void UnmapMemory(const MemoryRegion& region, void* backend) override;
  absl::Status CheckPeer(absl::string_view peer) override;
  void StartBatch(const std::shared_ptr<Batch>& batch) override;
  void CancelBatch(const std::shared_ptr<Batch>& batch) override;

 private:
  friend struct ucx_internal::Worker;
  explicit UcxTransport(const TransportOptions& options);

  absl::Status Start();
  void ProgressLoop();
  // Queues `fn` for the progress thread; false once the thread has stopped.
  bool Post(std::function<void()> fn);
  // Runs `fn` on the progress thread and waits for its result.
  absl::Status Run(std::function<absl::Status()> fn);
  void FinishFromWorker(const std::shared_ptr<Batch>& batch, size_t i, absl::Status status) {
    FinishOp(batch, i, std::move(status));
  }

  const TransportOptions options_;
  const uint64_t instance_id_;
  const bool shm_only_;                           // UCX_TLS names shared-memory transports only
  std::unique_ptr<ucx_internal::Worker> worker_;  // touched by the progress thread only
  std::string descriptor_;
  std::thread thread_;

  absl::Mutex queue_mu_;
  std::vector<std::function<void()>> queue_ ABSL_GUARDED_BY(queue_mu_);
  bool stop_ ABSL_GUARDED_BY(queue_mu_) = false;

  // Connection state that API threads read (CheckPeer).
  mutable absl::Mutex mu_;
  absl::flat_hash_map<std::string, std::shared_ptr<ucx_internal::Conn>> peers_ ABSL_GUARDED_BY(mu_);
};

}  // namespace mp::kvtransfer
