#include "kvtransfer/nccl_transport.h"

#include <unistd.h>

#include <cstring>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/logging.h"
#include "common/status.h"
#include "kvtransfer/descriptor.h"

namespace mp::kvtransfer {
namespace {

constexpr size_t kPayloadBytes = 4 + sizeof(ncclUniqueId);
// How long a failed batch may take to leave the stream after ncclCommAbort.
constexpr absl::Duration kDrainAfterAbort = absl::Seconds(5);

absl::Status CudaError(absl::string_view what, cudaError_t e) {
  return absl::FailedPreconditionError(absl::StrCat(what, ": ", cudaGetErrorString(e)));
}

absl::Status NcclError(absl::string_view what, ncclResult_t r) {
  return absl::UnavailableError(absl::StrCat(what, ": ", ncclGetErrorString(r)));
}

}  // namespace

NcclTransport::NcclTransport(const TransportOptions& options)
    : TransportBase("nccl", options.limits),
      options_(options),
      instance_id_(NewInstanceId()),
      device_(options.cuda_device) {
  std::memset(&unique_id_, 0, sizeof(unique_id_));
}

absl::StatusOr<std::unique_ptr<NcclTransport>> NcclTransport::Create(
    const TransportOptions& options) {
  std::unique_ptr<NcclTransport> t(new NcclTransport(options));
  MP_RETURN_IF_ERROR(t->Start());
  return t;
}

absl::Status NcclTransport::Start() {
  int count = 0;
  if (cudaError_t e = cudaGetDeviceCount(&count); e != cudaSuccess) {
    return CudaError("nccl transport: no usable CUDA device", e);
  }
  if (device_ < 0 || device_ >= count) {
    return absl::InvalidArgumentError(absl::StrCat("nccl transport: cuda_device ", device_,
                                                   " does not exist (", count, " devices)"));
  }
  if (cudaError_t e = cudaSetDevice(device_); e != cudaSuccess) {
    return CudaError("nccl transport: cudaSetDevice", e);
  }
  if (cudaError_t e = cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking);
      e != cudaSuccess) {
    return CudaError("nccl transport: cudaStreamCreate", e);
  }
  if (ncclResult_t r = ncclGetUniqueId(&unique_id_); r != ncclSuccess) {
    return absl::FailedPreconditionError(
        absl::StrCat("nccl transport: ncclGetUniqueId: ", ncclGetErrorString(r)));
  }
  EndpointDescriptor d;
  d.kind = "nccl";
  d.instance_id = instance_id_;
  d.pid = static_cast<uint32_t>(getpid());
  d.host = LocalHostName();
  d.scope = ProcessScope();
  d.payload.resize(kPayloadBytes);
  const uint32_t device = static_cast<uint32_t>(device_);
  std::memcpy(d.payload.data(), &device, 4);
  std::memcpy(d.payload.data() + 4, &unique_id_, sizeof(unique_id_));
  descriptor_ = EncodeDescriptor(d);
  watcher_ = std::thread([this] { WatchLoop(); });
  return absl::OkStatus();
}

NcclTransport::~NcclTransport() {
  if (watcher_.joinable()) {
    absl::MutexLock lock(&mu_);
    auto drained = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return in_flight_.empty(); };
    mu_.AwaitWithTimeout(absl::Condition(&drained), options_.shutdown_timeout);
    AbortLocked(absl::CancelledError("transport shut down"));
    stop_ = true;
  }
  if (watcher_.joinable()) watcher_.join();
  Shutdown(absl::Seconds(1));
  if (stream_ != nullptr) cudaStreamDestroy(stream_);
}

absl::StatusOr<std::string> NcclTransport::LocalEndpoint() { return descriptor_; }

absl::Status NcclTransport::Connect(absl::string_view peer_id, absl::string_view descriptor) {
  if (peer_id.empty()) return absl::InvalidArgumentError("Connect: peer id is empty");
  MP_ASSIGN_OR_RETURN(EndpointDescriptor d, DecodeDescriptor(descriptor, "nccl"));
  if (d.payload.size() != kPayloadBytes) {
    return absl::InvalidArgumentError(absl::StrCat("Connect('", peer_id, "'): nccl payload is ",
                                                   d.payload.size(), " bytes, expected ",
                                                   kPayloadBytes));
  }
  if (d.instance_id == instance_id_) {
    return absl::InvalidArgumentError("Connect: an nccl transport cannot connect to itself");
  }
  ncclUniqueId peer_id_blob;
  std::memcpy(&peer_id_blob, d.payload.data() + 4, sizeof(peer_id_blob));
  const int rank = instance_id_ < d.instance_id ? 0 : 1;
  {
    absl::MutexLock lock(&mu_);
    if (comm_ != nullptr && peer_ == peer_id) {
      return absl::AlreadyExistsError(
          absl::StrCat("Connect: peer '", peer_id, "' is already connected"));
    }
    if (used_) {
      return absl::FailedPreconditionError(
          absl::StrCat("Connect('", peer_id, "'): this nccl transport already linked peer '", peer_,
                       "'; an nccl transport links exactly one peer, create one per peer"));
    }
    used_ = true;
    peer_ = std::string(peer_id);
  }
  if (cudaError_t e = cudaSetDevice(device_); e != cudaSuccess) {
    return CudaError("nccl transport: cudaSetDevice", e);
  }
  ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
  config.blocking = 0;  // so that a peer that never connects cannot hang us
  ncclComm_t comm = nullptr;
  ncclResult_t r =
      ncclCommInitRankConfig(&comm, 2, rank == 0 ? unique_id_ : peer_id_blob, rank, &config);
  const absl::Time deadline = absl::Now() + options_.nccl_connect_timeout;
  while (r == ncclSuccess || r == ncclInProgress) {
    ncclResult_t state = ncclInProgress;
    ncclCommGetAsyncError(comm, &state);
    if (state == ncclSuccess) break;
    if (state != ncclInProgress) {
      r = state;
      break;
    }
    if (absl::Now() > deadline) {
      ncclCommAbort(comm);
      return absl::DeadlineExceededError(
          absl::StrCat("Connect('", peer_id, "'): the peer did not connect within ",
                       absl::FormatDuration(options_.nccl_connect_timeout)));
    }
    absl::SleepFor(absl::Milliseconds(1));
  }
  if (r != ncclSuccess && r != ncclInProgress) {
    if (comm != nullptr) ncclCommAbort(comm);
    return NcclError(absl::StrCat("Connect('", peer_id, "'): NCCL could not form the link"), r);
  }
  absl::MutexLock lock(&mu_);
  comm_ = comm;
  peer_rank_ = 1 - rank;
  gone_ = absl::OkStatus();
  return absl::OkStatus();
}

absl::Status NcclTransport::Disconnect(absl::string_view peer_id) {
  absl::MutexLock lock(&mu_);
  if (peer_.empty() || peer_ != peer_id) {
    return absl::NotFoundError(absl::StrCat("Disconnect: unknown peer '", peer_id, "'"));
  }
  AbortLocked(absl::CancelledError(absl::StrCat("disconnected from peer '", peer_id, "'")));
  peer_.clear();
  return absl::OkStatus();
}

absl::Status NcclTransport::CheckMemoryKind(const MemoryRegion& region) {
  if (region.kind != MemoryKind::kCuda) {
    return absl::UnimplementedError(absl::StrCat("the nccl backend moves device memory only, not ",
                                                 MemoryKindName(region.kind)));
  }
  if (region.device != device_) {
    return absl::InvalidArgumentError(absl::StrCat("memory region is on GPU ", region.device,
                                                   ", this nccl transport on GPU ", device_));
  }
  cudaPointerAttributes attr;
  if (cudaPointerGetAttributes(&attr, region.addr) != cudaSuccess ||
      (attr.type != cudaMemoryTypeDevice && attr.type != cudaMemoryTypeManaged) ||
      attr.device != device_) {
    cudaGetLastError();  // clear the sticky-free error state of the failed query
    return absl::InvalidArgumentError(
        absl::StrCat("address ", absl::Hex(reinterpret_cast<uintptr_t>(region.addr)),
                     " is not device memory of GPU ", device_));
  }
  return absl::OkStatus();
}

absl::Status NcclTransport::CheckPeer(absl::string_view peer) {
  absl::MutexLock lock(&mu_);
  if (peer_.empty() || peer_ != peer) {
    return absl::FailedPreconditionError(
        absl::StrCat("peer '", peer, "' is not connected (call Connect first)"));
  }
  if (!gone_.ok()) return gone_;
  if (comm_ == nullptr) {
    return absl::FailedPreconditionError(absl::StrCat("peer '", peer, "' is not connected"));
  }
  return absl::OkStatus();
}

void NcclTransport::StartBatch(const std::shared_ptr<Batch>& batch) {
  absl::Status failure;
  {
    absl::MutexLock lock(&mu_);
    if (!gone_.ok() || comm_ == nullptr) {
      failure = gone_.ok() ? absl::FailedPreconditionError("nccl peer is not connected") : gone_;
    } else {
      cudaSetDevice(device_);
      ncclGroupStart();
      for (size_t i = 0; i < batch->size(); ++i) {
        const TransferOp& op = batch->op(i);
        if (op.direction == TransferDirection::kSend) {
          ncclSend(op.addr, op.bytes, ncclUint8, peer_rank_, comm_, stream_);
        } else {
          ncclRecv(op.addr, op.bytes, ncclUint8, peer_rank_, comm_, stream_);
        }
      }
      ncclResult_t r = ncclGroupEnd();
      while (r == ncclInProgress) {
        ncclCommGetAsyncError(comm_, &r);
      }
      cudaEvent_t done = nullptr;
      cudaError_t e = cudaSuccess;
      if (r == ncclSuccess) {
        e = cudaEventCreateWithFlags(&done, cudaEventDisableTiming);
        if (e == cudaSuccess) e = cudaEventRecord(done, stream_);
      }
      if (r != ncclSuccess || e != cudaSuccess) {
        failure = r != ncclSuccess ? NcclError("NCCL could not enqueue the batch", r)
                                   : CudaError("cudaEventRecord", e);
        // Whatever part of the group was enqueued is ended by the abort.
        in_flight_.push_back(InFlight{batch, done});
        AbortLocked(failure);
        return;
      }
      in_flight_.push_back(InFlight{batch, done});
      return;
    }
  }
  for (size_t i = 0; i < batch->size(); ++i) FinishOp(batch, i, failure);
}

void NcclTransport::AbortLocked(absl::Status why) {
  if (comm_ != nullptr) {
    ncclCommAbort(comm_);
    comm_ = nullptr;
  }
  if (gone_.ok()) gone_ = why;
  for (InFlight& f : in_flight_) to_fail_.push_back(std::move(f));
  in_flight_.clear();
  abort_status_ = std::move(why);
}

void NcclTransport::FailAll(std::deque<InFlight> batches, const absl::Status& why) {
  cudaSetDevice(device_);
  for (InFlight& f : batches) {
    if (f.done != nullptr) {
      const absl::Time deadline = absl::Now() + kDrainAfterAbort;
      while (cudaEventQuery(f.done) == cudaErrorNotReady && absl::Now() < deadline) {
        absl::SleepFor(absl::Microseconds(100));
      }
      cudaEventDestroy(f.done);
    }
    for (size_t i = 0; i < f.batch->size(); ++i) FinishOp(f.batch, i, why);
  }
}

void NcclTransport::WatchLoop() {
  cudaSetDevice(device_);
  while (true) {
    std::deque<InFlight> failed;
    absl::Status why;
    InFlight finished;
    {
      absl::MutexLock lock(&mu_);
      auto work = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
        return stop_ || !in_flight_.empty() || !to_fail_.empty();
      };
      mu_.AwaitWithTimeout(absl::Condition(&work), absl::Milliseconds(100));
      if (!to_fail_.empty()) {
        failed.swap(to_fail_);
        why = abort_status_;
      } else if (!in_flight_.empty()) {
        cudaError_t q = cudaEventQuery(in_flight_.front().done);
        if (q == cudaSuccess) {
          finished = std::move(in_flight_.front());
          in_flight_.pop_front();
        } else if (q != cudaErrorNotReady) {
          AbortLocked(CudaError("nccl transport: CUDA reported an error on its stream", q));
          continue;
        } else if (comm_ != nullptr) {
          ncclResult_t state = ncclSuccess;
          ncclCommGetAsyncError(comm_, &state);
          if (state != ncclSuccess && state != ncclInProgress) {
            AbortLocked(absl::UnavailableError(absl::StrCat(
                "peer '", peer_, "' is gone: NCCL reports ", ncclGetErrorString(state))));
            continue;
          }
        }
      } else if (stop_) {
        break;
      }
    }
    if (!failed.empty()) {
      FailAll(std::move(failed), why);
    } else if (finished.batch != nullptr) {
      cudaEventDestroy(finished.done);
      for (size_t i = 0; i < finished.batch->size(); ++i) {
        FinishOp(finished.batch, i, absl::OkStatus());
      }
    } else {
      absl::SleepFor(absl::Microseconds(20));
    }
  }
}

}  // namespace mp::kvtransfer
