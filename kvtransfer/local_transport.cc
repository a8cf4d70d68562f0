#include "kvtransfer/local_transport.h"

#include <unistd.h>

#include <cstring>
#include <deque>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/logging.h"
#include "common/status.h"
#include "kvtransfer/descriptor.h"

namespace mp::kvtransfer {
namespace local_internal {

// Lets other transports end this transport's operations while it is alive, and lets its
// destructor wait until none of them is inside a call into it.
struct OwnerGuard {
  absl::Mutex mu;
  LocalTransport* transport ABSL_GUARDED_BY(mu) = nullptr;

  void Finish(const std::shared_ptr<Batch>& batch, size_t index, absl::Status status) {
    absl::ReaderMutexLock lock(&mu);
    if (transport != nullptr) {
      transport->FinishOp(batch, index, std::move(status));
    } else {
      batch->FinishOp(index, std::move(status));
    }
  }
};

struct PendingOp {
  std::shared_ptr<Batch> batch;
  size_t index = 0;
  std::shared_ptr<OwnerGuard> owner;
  uint64_t sender = 0;  // instance id of the sending transport
  const TransferOp& op() const { return batch->op(index); }
};

struct MatchKey {
  uint64_t sender = 0;
  TransferTag tag;
  friend bool operator==(const MatchKey&, const MatchKey&) = default;
  template <typename H>
  friend H AbslHashValue(H h, const MatchKey& k) {
    return H::combine(std::move(h), k.sender, k.tag);
  }
};

// The matching queues of one transport: sends addressed to it that no receive has claimed
// yet, and its receives that no send has reached yet.
class Mailbox {
 public:
  struct Offer {
    enum What { kQueued, kMatched, kRejected } what = kQueued;
    PendingOp partner;   // kMatched
    absl::Status error;  // kRejected
  };
  struct Drained {
    std::vector<PendingOp> sends;  // queued sends (owned by their senders)
    std::vector<PendingOp> recvs;  // queued receives (owned by this mailbox's transport)
  };

  Offer OfferSend(PendingOp send) {
    absl::MutexLock lock(&mu_);
    if (absl::Status s = RejectLocked(send); !s.ok()) return {Offer::kRejected, {}, s};
    const MatchKey key{send.sender, send.op().tag};
    if (auto it = posted_.find(key); it != posted_.end()) {
      Offer offer{Offer::kMatched, std::move(it->second.front()), {}};
      it->second.pop_front();
      if (it->second.empty()) posted_.erase(it);
      return offer;
    }
    unexpected_[key].push_back(std::move(send));
    return {};
  }

  Offer OfferRecv(PendingOp recv) {
    absl::MutexLock lock(&mu_);
    if (absl::Status s = RejectLocked(recv); !s.ok()) return {Offer::kRejected, {}, s};
    const MatchKey key{recv.sender, recv.op().tag};
    if (auto it = unexpected_.find(key); it != unexpected_.end()) {
      Offer offer{Offer::kMatched, std::move(it->second.front()), {}};
      it->second.pop_front();
      if (it->second.empty()) unexpected_.erase(it);
      return offer;
    }
    posted_[key].push_back(std::move(recv));
    return {};
  }

  // Removes a queued operation; false when it is not queued here (matched or never offered).
  bool Withdraw(const Batch* batch, size_t index, uint64_t sender) {
    absl::MutexLock lock(&mu_);
    const TransferOp& op = batch->op(index);
    auto& queues = op.direction == TransferDirection::kSend ? unexpected_ : posted_;
    auto it = queues.find(MatchKey{sender, op.tag});
    if (it == queues.end()) return false;
    for (auto q = it->second.begin(); q != it->second.end(); ++q) {
      if (q->batch.get() == batch && q->index == index) {
        it->second.erase(q);
        if (it->second.empty()) queues.erase(it);
        return true;
      }
    }
    return false;
  }

  // Stops accepting operations with `sender` and hands back the queued ones.
  Drained Forget(uint64_t sender, std::string reason) {
    absl::MutexLock lock(&mu_);
    gone_[sender] = std::move(reason);
    Drained out;
    ExtractLocked(&unexpected_, sender, &out.sends);
    ExtractLocked(&posted_, sender, &out.recvs);
    return out;
  }

  void Accept(uint64_t sender) {
    absl::MutexLock lock(&mu_);
    gone_.erase(sender);
  }

  // OK when operations with `sender` are accepted; UNAVAILABLE with the reason otherwise.
  absl::Status Accepts(uint64_t sender, absl::string_view peer) const {
    absl::MutexLock lock(&mu_);
    if (closed_) {
      return absl::UnavailableError(absl::StrCat("peer '", peer,
                                                 "' is gone: its transport "
                                                 "was destroyed"));
    }
    if (auto it = gone_.find(sender); it != gone_.end()) {
      return absl::UnavailableError(absl::StrCat("peer '", peer, "' is gone: ", it->second));
    }
    return absl::OkStatus();
  }

  Drained Close() {
    absl::MutexLock lock(&mu_);
    closed_ = true;
    Drained out;
    ExtractLocked(&unexpected_, 0, &out.sends, /*all=*/true);
    ExtractLocked(&posted_, 0, &out.recvs, /*all=*/true);
    return out;
  }

 private:
  using Queues = absl::flat_hash_map<MatchKey, std::deque<PendingOp>>;

  absl::Status RejectLocked(const PendingOp& p) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (p.batch->cancelled()) return absl::CancelledError("transfer batch was cancelled");
    if (closed_) {
      return absl::UnavailableError(absl::StrCat("peer '", p.op().peer,
                                                 "' is gone: its "
                                                 "transport was destroyed"));
    }
    // For a send the sender is the other side; for a receive it is the peer we expect.
    if (auto it = gone_.find(p.sender); it != gone_.end()) {
      return absl::UnavailableError(absl::StrCat("peer '", p.op().peer, "' is gone: ", it->second));
    }
    return absl::OkStatus();
  }

  static void ExtractLocked(Queues* queues, uint64_t sender, std::vector<PendingOp>* out,
                            bool all = false) {
    for (auto it = queues->begin(); it != queues->end();) {
      if (all || it->first.sender == sender) {
        for (PendingOp& p : it->second) out->push_back(std::move(p));
        queues->erase(it++);
      } else {
        ++it;
      }
    }
  }

  mutable absl::Mutex mu_;
  bool closed_ ABSL_GUARDED_BY(mu_) = false;
  absl::flat_hash_map<uint64_t, std::string> gone_ ABSL_GUARDED_BY(mu_);
  Queues unexpected_ ABSL_GUARDED_BY(mu_);
  Queues posted_ ABSL_GUARDED_BY(mu_);
};

namespace {

// Every live LocalTransport of the process, by instance id.
class Hub {
 public:
  static Hub& Get() {
    static Hub* hub = new Hub();
    return *hub;
  }
  void Add(uint64_t id, std::shared_ptr<Mailbox> mailbox) {
    absl::MutexLock lock(&mu_);
    mailboxes_[id] = std::move(mailbox);
  }
  void Remove(uint64_t id) {
    absl::MutexLock lock(&mu_);
    mailboxes_.erase(id);
  }
  std::shared_ptr<Mailbox> Find(uint64_t id) const {
    absl::MutexLock lock(&mu_);
    auto it = mailboxes_.find(id);
    return it == mailboxes_.end() ? nullptr : it->second;
  }
  std::vector<std::shared_ptr<Mailbox>> All() const {
    absl::MutexLock lock(&mu_);
    std::vector<std::shared_ptr<Mailbox>> out;
    for (const auto& [id, mailbox] : mailboxes_) out.push_back(mailbox);
    return out;
  }

 private:
  mutable absl::Mutex mu_;
  absl::flat_hash_map<uint64_t, std::shared_ptr<Mailbox>> mailboxes_ ABSL_GUARDED_BY(mu_);
};

}  // namespace
}  // namespace local_internal

using local_internal::Hub;
using local_internal::Mailbox;
using local_internal::OwnerGuard;
using local_internal::PendingOp;

LocalTransport::LocalTransport(BatchLimits limits)
    : TransportBase("local", limits),
      instance_id_(NewInstanceId()),
      mailbox_(std::make_shared<Mailbox>()),
      guard_(std::make_shared<OwnerGuard>()) {
  {
    absl::MutexLock lock(&guard_->mu);
    guard_->transport = this;
  }
  Hub::Get().Add(instance_id_, mailbox_);
}

LocalTransport::~LocalTransport() {
  Hub::Get().Remove(instance_id_);
  Mailbox::Drained mine = mailbox_->Close();
  for (const PendingOp& p : mine.sends) {
    Complete(p, p.owner == guard_
                    ? absl::CancelledError("transport shut down")
                    : absl::UnavailableError(absl::StrCat(
                          "peer '", p.op().peer, "' is gone: its transport was destroyed")));
  }
  for (const PendingOp& p : mine.recvs) Complete(p, absl::CancelledError("transport shut down"));
  for (const std::shared_ptr<Mailbox>& other : Hub::Get().All()) {
    Mailbox::Drained theirs = other->Forget(instance_id_, "its transport was destroyed");
    for (const PendingOp& p : theirs.sends) {
      Complete(p, absl::CancelledError("transport shut down"));
    }
    for (const PendingOp& p : theirs.recvs) {
      Complete(p, absl::UnavailableError(absl::StrCat("peer '", p.op().peer,
                                                      "' is gone: its transport was destroyed")));
    }
  }
  if (size_t left = Shutdown(absl::Seconds(30)); left != 0) {
    MP_LOG(Error) << "local transport destroyed with " << left << " unfinished batches";
  }
  absl::MutexLock lock(&guard_->mu);
  guard_->transport = nullptr;
}

absl::StatusOr<std::string> LocalTransport::LocalEndpoint() {
  EndpointDescriptor d;
  d.kind = "local";
  d.instance_id = instance_id_;
  d.pid = static_cast<uint32_t>(getpid());
  d.host = LocalHostName();
  d.scope = ProcessScope();
  return EncodeDescriptor(d);
}

absl::Status LocalTransport::Connect(absl::string_view peer_id, absl::string_view descriptor) {
  if (peer_id.empty()) return absl::InvalidArgumentError("Connect: peer id is empty");
  MP_ASSIGN_OR_RETURN(EndpointDescriptor d, DecodeDescriptor(descriptor, "local"));
  const uint32_t pid = static_cast<uint32_t>(getpid());
  const std::string host = LocalHostName();
  if (d.pid != pid || d.host != host || d.scope != ProcessScope()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "Connect('", peer_id, "'): the descriptor comes from process ", d.pid, " on '", d.host,
        "' but the local transport only connects objects of one process (this is ", pid, " on '",
        host, "')"));
  }
  std::shared_ptr<Mailbox> mailbox = Hub::Get().Find(d.instance_id);
  if (mailbox == nullptr) {
    return absl::UnavailableError(absl::StrCat("Connect('", peer_id, "'): local transport ",
                                               d.instance_id, " no longer exists"));
  }
  absl::MutexLock lock(&mu_);
  if (auto it = connections_.find(peer_id); it != connections_.end()) {
    const Connection& c = it->second;
    if (c.mailbox->Accepts(instance_id_, peer_id).ok() &&
        mailbox_->Accepts(c.peer_instance, peer_id).ok()) {
      return absl::AlreadyExistsError(
          absl::StrCat("Connect: peer '", peer_id, "' is already connected"));
    }
  }
  connections_[peer_id] = Connection{d.instance_id, std::move(mailbox)};
  mailbox_->Accept(d.instance_id);
  return absl::OkStatus();
}

absl::Status LocalTransport::Disconnect(absl::string_view peer_id) {
  Connection conn;
  {
    absl::MutexLock lock(&mu_);
    auto it = connections_.find(peer_id);
    if (it == connections_.end()) {
      return absl::NotFoundError(absl::StrCat("Disconnect: unknown peer '", peer_id, "'"));
    }
    conn = std::move(it->second);
    connections_.erase(it);
  }
  Mailbox::Drained here = mailbox_->Forget(conn.peer_instance, "it disconnected");
  for (const PendingOp& p : here.sends) {
    Complete(p, absl::UnavailableError(
                    absl::StrCat("peer '", p.op().peer, "' is gone: it disconnected")));
  }
  for (const PendingOp& p : here.recvs) {
    Complete(p, absl::CancelledError(absl::StrCat("disconnected from peer '", peer_id, "'")));
  }
  Mailbox::Drained there = conn.mailbox->Forget(instance_id_, "it disconnected");
  for (const PendingOp& p : there.sends) {
    Complete(p, absl::CancelledError(absl::StrCat("disconnected from peer '", peer_id, "'")));
  }
  for (const PendingOp& p : there.recvs) {
    Complete(p, absl::UnavailableError(
                    absl::StrCat("peer '", p.op().peer, "' is gone: it disconnected")));
  }
  return absl::OkStatus();
}

absl::Status LocalTransport::CheckMemoryKind(const MemoryRegion& region) {
  if (region.kind != MemoryKind::kHost) {
    return absl::UnimplementedError(
        absl::StrCat("the local transport moves host memory only, "
                     "not ",
                     MemoryKindName(region.kind)));
  }
  return absl::OkStatus();
}

absl::StatusOr<LocalTransport::Connection> LocalTransport::FindConnection(
    absl::string_view peer) const {
  absl::MutexLock lock(&mu_);
  auto it = connections_.find(peer);
  if (it == connections_.end()) {
    return absl::FailedPreconditionError(
        absl::StrCat("peer '", peer, "' is not connected (call Connect first)"));
  }
  return it->second;
}

absl::Status LocalTransport::CheckPeer(absl::string_view peer) {
  MP_ASSIGN_OR_RETURN(Connection conn, FindConnection(peer));
  MP_RETURN_IF_ERROR(conn.mailbox->Accepts(instance_id_, peer));
  return mailbox_->Accepts(conn.peer_instance, peer);
}

void LocalTransport::StartBatch(const std::shared_ptr<Batch>& batch) {
  for (size_t i = 0; i < batch->size(); ++i) {
    const TransferOp& op = batch->op(i);
    absl::StatusOr<Connection> conn = FindConnection(op.peer);
    if (!conn.ok()) {
      FinishOp(batch, i, conn.status());
      continue;
    }
    PendingOp p{batch, i, guard_, 0};
    Mailbox::Offer offer;
    if (op.direction == TransferDirection::kSend) {
      p.sender = instance_id_;
      offer = conn->mailbox->OfferSend(p);
      if (offer.what == Mailbox::Offer::kMatched) CopyAndComplete(p, offer.partner);
    } else {
      p.sender = conn->peer_instance;
      offer = mailbox_->OfferRecv(p);
      if (offer.what == Mailbox::Offer::kMatched) CopyAndComplete(offer.partner, p);
    }
    if (offer.what == Mailbox::Offer::kRejected) FinishOp(batch, i, offer.error);
  }
}

void LocalTransport::CancelBatch(const std::shared_ptr<Batch>& batch) {
  for (size_t i = 0; i < batch->size(); ++i) {
    if (batch->op_finished(i)) continue;
    const TransferOp& op = batch->op(i);
    absl::StatusOr<Connection> conn = FindConnection(op.peer);
    if (!conn.ok()) continue;  // a Disconnect already ended the operation
    const bool withdrawn = op.direction == TransferDirection::kSend
                               ? conn->mailbox->Withdraw(batch.get(), i, instance_id_)
                               : mailbox_->Withdraw(batch.get(), i, conn->peer_instance);
    // Cancelling the rest of the batch is what this call does, so no recursion here.
    if (withdrawn) batch->FinishOp(i, absl::CancelledError("transfer batch was cancelled"));
  }
}

void LocalTransport::Complete(const PendingOp& p, absl::Status status) {
  if (p.owner == guard_) {
    FinishOp(p.batch, p.index, std::move(status));
  } else {
    p.owner->Finish(p.batch, p.index, std::move(status));
  }
}

void LocalTransport::CopyAndComplete(const PendingOp& send, const PendingOp& recv) {
  const TransferOp& s = send.op();
  const TransferOp& r = recv.op();
  if (s.bytes != r.bytes) {
    const absl::Status mismatch = absl::InvalidArgumentError(
        absl::StrCat("size mismatch for ", ToString(s.tag), ": the send carries ", s.bytes,
                     " bytes, the receive expects ", r.bytes));
    Complete(send, mismatch);
    Complete(recv, mismatch);
    return;
  }
  std::memcpy(r.addr, s.addr, s.bytes);
  Complete(send, absl::OkStatus());
  Complete(recv, absl::OkStatus());
}

}  // namespace mp::kvtransfer
