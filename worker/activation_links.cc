#include "worker/activation_links.h"

#include <cstdint>
#include <cstring>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/logging.h"
#include "common/status.h"
#include "kvtransfer/transport_factory.h"

namespace mp {
namespace {

using kvtransfer::MemoryKind;
using kvtransfer::MemoryRegion;
using kvtransfer::TransferBatch;
using kvtransfer::TransferHandle;
using kvtransfer::TransferKind;
using kvtransfer::TransferOp;
using kvtransfer::TransferTag;

constexpr char kPrevious[] = "previous";
constexpr char kNext[] = "next";

TransferTag Tag(uint64_t request, uint32_t chunk) {
  TransferTag tag;
  tag.request_id = request;
  tag.chunk_index = chunk;
  tag.kind = TransferKind::kActivations;
  return tag;
}

// The link probe's tag: request 0 (the coordinator numbers requests from 1), kind "other".
TransferTag ProbeTag() {
  TransferTag tag;
  tag.kind = TransferKind::kOther;
  return tag;
}

// The probe's bytes.
void FillProbe(void* dst, size_t bytes) {
  auto* b = static_cast<uint8_t*>(dst);
  for (size_t i = 0; i < bytes; ++i) b[i] = static_cast<uint8_t>(i * 131 + 17);
}

}  // namespace

absl::StatusOr<std::unique_ptr<ActivationLinks>> ActivationLinks::Create(
    const ActivationLinkOptions& options, std::shared_ptr<Backend> backend) {
  if (backend == nullptr) return absl::InvalidArgumentError("activation links: no backend");
  if (options.max_rows <= 0 || options.hidden <= 0 || options.send_buffers <= 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "activation links: max_rows (", options.max_rows, "), hidden (", options.hidden,
        ") and send_buffers (", options.send_buffers, ") must be positive"));
  }
  auto links = std::unique_ptr<ActivationLinks>(new ActivationLinks(options, std::move(backend)));
  MP_RETURN_IF_ERROR(links->Init());
  return links;
}

size_t ActivationLinks::RowBytes() const {
  return static_cast<size_t>(options_.hidden) * DTypeSize(backend_->compute_dtype());
}

absl::StatusOr<ActivationLinks::Slot> ActivationLinks::NewBuffer(kvtransfer::Transport& t,
                                                                 bool need_device) {
  Slot slot;
  if (!staging_ || need_device) {
    MP_ASSIGN_OR_RETURN(slot.device, backend_->Allocate({options_.max_rows, options_.hidden},
                                                        backend_->compute_dtype()));
  }
  MemoryRegion region;
  if (staging_) {
    slot.host = Tensor::Host({options_.max_rows, options_.hidden}, backend_->compute_dtype());
    region = {slot.host.data(), slot.host.nbytes(), MemoryKind::kHost, 0};
  } else if (backend_->device() == DeviceKind::kCuda) {
    region = {slot.device.data(), slot.device.nbytes(), MemoryKind::kCuda, options_.cuda_device};
  } else {
    region = {slot.device.data(), slot.device.nbytes(), MemoryKind::kHost, 0};
  }
  absl::StatusOr<kvtransfer::RegionId> id = t.RegisterMemory(region);
  if (!id.ok()) return Annotate(id.status(), "registering an activation buffer");
  return slot;
}

absl::Status ActivationLinks::Init() {
  // Only nccl moves device memory; other transports get host staging buffers on CUDA.
  staging_ = backend_->device() == DeviceKind::kCuda && options_.kind != "nccl";
  if (backend_->device() == DeviceKind::kCpu && options_.kind == "nccl") {
    return absl::InvalidArgumentError(
        "transport nccl moves GPU memory only; the cpu device needs ucx (or local)");
  }
  kvtransfer::TransportOptions t = options_.transport;
  t.cuda_device = options_.cuda_device;
  if (options_.upstream) {
    MP_ASSIGN_OR_RETURN(up_, kvtransfer::NewTransport(options_.kind, t));
    if (!options_.inject_receive_faults.empty()) {
      auto wrapped = std::make_unique<kvtransfer::FaultInjectingTransport>(std::move(up_));
      for (kvtransfer::FaultRule rule : options_.inject_receive_faults) {
        rule.direction = kvtransfer::TransferDirection::kRecv;
        MP_RETURN_IF_ERROR(wrapped->AddRule(rule));
      }
      up_ = std::move(wrapped);
    }
    MP_ASSIGN_OR_RETURN(recv_, NewBuffer(*up_, /*need_device=*/true));
    MP_ASSIGN_OR_RETURN(upstream_endpoint_, up_->LocalEndpoint());
  }
  if (options_.downstream) {
    MP_ASSIGN_OR_RETURN(down_, kvtransfer::NewTransport(options_.kind, t));
    for (int i = 0; i < options_.send_buffers; ++i) {
      MP_ASSIGN_OR_RETURN(Slot slot, NewBuffer(*down_, /*need_device=*/false));
      slots_.push_back(std::move(slot));
    }
    MP_ASSIGN_OR_RETURN(downstream_endpoint_, down_->LocalEndpoint());
  }
  return absl::OkStatus();
}

ActivationLinks::~ActivationLinks() {
  if (down_ != nullptr) {
    for (Slot& s : slots_) {
      if (s.handle.valid()) down_->Release(s.handle);
    }
  }
}

absl::Status ActivationLinks::Connect(const std::string& previous, const std::string& next) {
  if (options_.upstream) {
    if (previous.empty()) {
      return absl::InvalidArgumentError("ConnectPeers: this stage needs its previous stage");
    }
    MP_RETURN_IF_ERROR(
        Annotate(up_->Connect(kPrevious, previous), "connecting the previous stage"));
  }
  if (options_.downstream) {
    if (next.empty())
      return absl::InvalidArgumentError("ConnectPeers: this stage needs its next stage");
    MP_RETURN_IF_ERROR(Annotate(down_->Connect(kNext, next), "connecting the next stage"));
  }
  // Send first: a middle stage's probe to the next stage must not wait for its own input.
  if (options_.downstream) MP_RETURN_IF_ERROR(SendProbe());
  if (options_.upstream) MP_RETURN_IF_ERROR(ReceiveProbe());
  return absl::OkStatus();
}

absl::Status ActivationLinks::SendProbe() {
  // A send slot like any other: the next Send() on it waits for the probe, CheckSends()
  // reports its failure.
  Slot& slot = slots_[next_slot_];
  next_slot_ = (next_slot_ + 1) % slots_.size();
  const size_t bytes = RowBytes();
  if (staging_) {
    FillProbe(slot.host.data(), bytes);
  } else {
    Tensor pattern = Tensor::Host({1, options_.hidden}, backend_->compute_dtype());
    FillProbe(pattern.data(), bytes);
    Tensor to = slot.device.Slice(0, 1);
    MP_RETURN_IF_ERROR(backend_->CopyFromHost(pattern, to));
    MP_RETURN_IF_ERROR(backend_->Synchronize());
  }
  void* addr = staging_ ? slot.host.data() : slot.device.data();
  TransferBatch batch;
  batch.ops.push_back(TransferOp::Send(kNext, ProbeTag(), addr, bytes));
  absl::StatusOr<TransferHandle> handle = down_->Submit(std::move(batch));
  if (!handle.ok()) return Annotate(handle.status(), "sending the link probe to the next stage");
  slot.handle = *handle;
  return absl::OkStatus();
}

absl::Status ActivationLinks::ReceiveProbe() {
  const size_t bytes = RowBytes();
  void* addr = staging_ ? recv_.host.data() : recv_.device.data();
  TransferBatch batch;
  batch.ops.push_back(TransferOp::Recv(kPrevious, ProbeTag(), addr, bytes));
  absl::StatusOr<TransferHandle> handle = up_->Submit(std::move(batch));
  if (!handle.ok()) {
    return Annotate(handle.status(), "receiving the link probe from the previous stage");
  }
  absl::Status s = up_->Wait(*handle, absl::Now() + options_.connect_timeout);
  up_->Release(*handle);
  if (absl::IsDeadlineExceeded(s)) {
    return absl::UnavailableError(absl::StrCat(
        "the link probe from the previous stage did not arrive within ",
        absl::FormatDuration(options_.connect_timeout), " (", up_->kind(),
        ", --connect-timeout): the link between the stages carries nothing (is the network path "
        "between them down?)"));
  }
  if (!s.ok()) return Annotate(s, "receiving the link probe from the previous stage");
  Tensor got = Tensor::Host({1, options_.hidden}, backend_->compute_dtype());
  if (staging_) {
    std::memcpy(got.data(), recv_.host.data(), bytes);
  } else {
    Tensor from = recv_.device.Slice(0, 1);
    MP_RETURN_IF_ERROR(backend_->CopyToHost(from, got));
    MP_RETURN_IF_ERROR(backend_->Synchronize());
  }
  Tensor want = Tensor::Host({1, options_.hidden}, backend_->compute_dtype());
  FillProbe(want.data(), bytes);
  if (std::memcmp(got.data(), want.data(), bytes) != 0) {
    return absl::DataLossError(absl::StrCat("the link probe from the previous stage arrived (",
                                            bytes, " bytes, ", up_->kind(),
                                            ") with other bytes than were sent"));
  }
  return absl::OkStatus();
}

absl::Status ActivationLinks::Await(kvtransfer::Transport& t, TransferHandle handle,
                                    const AbortCheck& aborted, const std::string& what) {
  const absl::Time start = absl::Now();
  const absl::Time end = start + options_.timeout;
  absl::Duration warn_after = options_.slow_wait;
  while (true) {
    const absl::Time now = absl::Now();
    absl::Status s = t.Wait(handle, std::min(end, now + absl::Milliseconds(50)));
    if (!absl::IsDeadlineExceeded(s)) {
      if (!s.ok()) return Annotate(s, what);
      return s;
    }
    if (aborted && aborted()) {
      t.Cancel(handle);
      return absl::AbortedError(absl::StrCat(what, " abandoned: the pipeline is stopping"));
    }
    const absl::Time later = absl::Now();
    if (later >= end) {
      MP_LOG(Warning) << what << " gave up after " << absl::FormatDuration(options_.timeout) << " ("
                      << t.kind() << ")";
      return absl::DeadlineExceededError(absl::StrCat(what, " did not finish within ",
                                                      absl::FormatDuration(options_.timeout),
                                                      " (--activation-timeout)"));
    }
    if (warn_after > absl::ZeroDuration() && later - start >= warn_after) {
      MP_LOG(Warning) << "still " << what << " after " << absl::FormatDuration(later - start)
                      << " (" << t.kind() << "; gives up after "
                      << absl::FormatDuration(options_.timeout) << ")";
      warn_after *= 2;
    }
  }
}

absl::StatusOr<Tensor> ActivationLinks::Receive(uint64_t request, uint32_t chunk, int64_t rows,
                                                const AbortCheck& aborted, TransferTiming* timing) {
  if (up_ == nullptr) return absl::FailedPreconditionError("the first stage receives no input");
  if (rows <= 0 || rows > options_.max_rows) {
    return absl::InvalidArgumentError(
        absl::StrCat("chunk of ", rows, " rows; the stage's buffers hold ", options_.max_rows));
  }
  const absl::Time start = absl::Now();
  const size_t bytes = static_cast<size_t>(rows) * RowBytes();
  void* addr = staging_ ? recv_.host.data() : recv_.device.data();
  TransferBatch batch;
  batch.ops.push_back(TransferOp::Recv(kPrevious, Tag(request, chunk), addr, bytes));
  MP_ASSIGN_OR_RETURN(TransferHandle handle, up_->Submit(std::move(batch)));
  absl::Status s = Await(*up_, handle, aborted,
                         absl::StrCat("receiving the activations of request ", request, " chunk ",
                                      chunk, " from the previous stage"));
  up_->Release(handle);
  if (!s.ok()) return s;
  Tensor out = recv_.device.Slice(0, rows);
  if (staging_) {
    Tensor host = recv_.host.Slice(0, rows);
    MP_RETURN_IF_ERROR(backend_->CopyFromHost(host, out));
  }
  if (timing != nullptr) {
    timing->seconds = absl::ToDoubleSeconds(absl::Now() - start);
    timing->bytes = bytes;
  }
  return out;
}

absl::Status ActivationLinks::Send(uint64_t request, uint32_t chunk, const Tensor& src,
                                   int64_t rows, const AbortCheck& aborted,
                                   TransferTiming* timing) {
  if (down_ == nullptr) return absl::FailedPreconditionError("the last stage sends no output");
  if (rows <= 0 || rows > options_.max_rows) {
    return absl::InvalidArgumentError(
        absl::StrCat("chunk of ", rows, " rows; the stage's buffers hold ", options_.max_rows));
  }
  const absl::Time start = absl::Now();
  Slot& slot = slots_[next_slot_];
  next_slot_ = (next_slot_ + 1) % slots_.size();
  if (slot.handle.valid()) {
    absl::Status prev = Await(*down_, slot.handle, aborted,
                              absl::StrCat("waiting for an earlier send to the next stage (before "
                                           "request ",
                                           request, " chunk ", chunk, ")"));
    down_->Release(slot.handle);
    slot.handle = {};
    if (!prev.ok()) return prev;
  }
  if (src.defined()) {
    Tensor from = src.Slice(0, rows);
    if (staging_) {
      Tensor host = slot.host.Slice(0, rows);
      MP_RETURN_IF_ERROR(backend_->CopyToHost(from, host));
    } else {
      Tensor to = slot.device.Slice(0, rows);
      MP_RETURN_IF_ERROR(backend_->Copy(from, to));
    }
  }
  MP_RETURN_IF_ERROR(backend_->Synchronize());
  const size_t bytes = static_cast<size_t>(rows) * RowBytes();
  void* addr = staging_ ? slot.host.data() : slot.device.data();
  TransferBatch batch;
  batch.ops.push_back(TransferOp::Send(kNext, Tag(request, chunk), addr, bytes));
  MP_ASSIGN_OR_RETURN(slot.handle, down_->Submit(std::move(batch)));
  if (timing != nullptr) {
    timing->seconds = absl::ToDoubleSeconds(absl::Now() - start);
    timing->bytes = bytes;
  }
  return absl::OkStatus();
}

absl::Status ActivationLinks::CheckSends() {
  if (down_ == nullptr) return absl::OkStatus();
  for (Slot& slot : slots_) {
    if (!slot.handle.valid()) continue;
    const kvtransfer::TransferState state = down_->Poll(slot.handle);
    if (state == kvtransfer::TransferState::kInProgress) continue;
    absl::Status s = down_->Wait(slot.handle, absl::InfinitePast());
    down_->Release(slot.handle);
    slot.handle = {};
    if (!s.ok() && send_error_.ok()) send_error_ = s;
  }
  absl::Status out = send_error_;
  send_error_ = absl::OkStatus();
  return out;
}

}  // namespace mp
