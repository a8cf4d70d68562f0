// LocalTransport: an in-process backend that moves bytes with memcpy between Transport objects
// of one process. It implements the full contract (tags, out-of-order matching, peer loss,
// cancellation) and is the workhorse of protocol tests.
//
// Matching is rendezvous: a send stays in progress until its peer posts the matching receive
// (or the reverse); the copy runs on the thread whose Submit() completed the match. Descriptors
// name a live LocalTransport of this process; one from another process is INVALID_ARGUMENT.
// Thread-safe (see transport.h).
#pragma once

#include <memory>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "kvtransfer/transport_base.h"

namespace mp::kvtransfer {

namespace local_internal {
class Mailbox;
struct OwnerGuard;
struct PendingOp;
}  // namespace local_internal

class LocalTransport final : public TransportBase {
 public:
  explicit LocalTransport(BatchLimits limits = {});
  ~LocalTransport() override;

  absl::StatusOr<std::string> LocalEndpoint() override;
  absl::Status Connect(absl::string_view peer_id, absl::string_view descriptor) override;
  absl::Status Disconnect(absl::string_view peer_id) override;

  uint64_t instance_id() const { return instance_id_; }

 protected:
  absl::Status CheckMemoryKind(const MemoryRegion& region) override;
  absl::Status CheckPeer(absl::string_view peer) override;
  void StartBatch(const std::shared_ptr<Batch>& batch) override;
  void CancelBatch(const std::shared_ptr<Batch>& batch) override;

 private:
  friend struct local_internal::OwnerGuard;
  struct Connection {
    uint64_t peer_instance = 0;
    std::shared_ptr<local_internal::Mailbox> mailbox;  // the peer's
  };

  // Ends an operation owned by this transport or, through its guard, by another one.
  void Complete(const local_internal::PendingOp& op, absl::Status status);
  void CopyAndComplete(const local_internal::PendingOp& send,
                       const local_internal::PendingOp& recv);
  absl::StatusOr<Connection> FindConnection(absl::string_view peer) const;

  const uint64_t instance_id_;
  const std::shared_ptr<local_internal::Mailbox> mailbox_;   // receives addressed to us
  const std::shared_ptr<local_internal::OwnerGuard> guard_;  // lets peers end our operations

  mutable absl::Mutex mu_;
  absl::flat_hash_map<std::string, Connection> connections_ ABSL_GUARDED_BY(mu_);
};

}  // namespace mp::kvtransfer
