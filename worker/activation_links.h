// ActivationLinks: the data plane of one pipeline stage — hidden states [rows, hidden] in from
// the previous stage and out to the next, over kvtransfer.
//
// Each side has its own transport (one per neighbour, as NCCL needs), so a stage holds an
// upstream transport (receives; absent on stage 0) and a downstream one (sends; absent on the
// last stage). Transfers are tagged (request id, chunk index, activations). Buffers are
// registered once: one receive buffer and `send_buffers` send slots of max_rows rows each. A
// send is submitted and not waited for, so a stage never waits for its successor to be ready;
// a slot is reused once its previous send has finished (that wait counts as send time).
//
// Readiness: Connect() proves the data path before the stage reports itself connected. The
// transports connect lazily (a UCX endpoint exists at once; its wire-up happens with the first
// message), so a link that cannot carry anything — a network path that is down or
// black-holed — would otherwise surface only as the first request's activations never
// arriving. Each stage with a next stage sends it a link probe (one row of a fixed byte pattern,
// tagged request 0, kind "other", through the same buffers as activations); each stage with a
// previous stage waits up to connect_timeout for that probe and checks its bytes. So once every
// stage of a pipeline has connected, every link has carried a message.
//
// Memory: buffers live in the backend's memory when the transport can move it (host memory on
// the CPU backend; device memory with nccl). A CUDA backend over ucx (Debian's UCX has no CUDA
// transports) stages through host buffers: device -> host before a send, host -> device after a
// receive.
//
// Not thread-safe: the stage's step thread uses it (Connect() runs before that thread starts).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "kvtransfer/fault_injecting_transport.h"
#include "kvtransfer/transport.h"
#include "kvtransfer/transport_options.h"
#include "runtime/backend.h"
#include "runtime/tensor.h"

namespace mp {

struct ActivationLinkOptions {
  std::string kind = "ucx";  // "local", "ucx", "nccl"
  kvtransfer::TransportOptions transport;
  bool upstream = false;    // receives from a previous stage
  bool downstream = false;  // sends to a next stage
  int64_t max_rows = 0;     // largest chunk
  int64_t hidden = 0;
  int send_buffers = 4;
  int cuda_device = 0;  // device ordinal of a CUDA backend
  // A receive or a wait for a send slot fails with DEADLINE_EXCEEDED after this long.
  absl::Duration timeout = absl::Seconds(600);
  // Connect() fails with UNAVAILABLE when the previous stage's link probe has not arrived
  // within this long.
  absl::Duration connect_timeout = absl::Seconds(30);
  // A wait this long is logged as a warning (and again each time it doubles).
  absl::Duration slow_wait = absl::Seconds(10);
  // Tests: faults injected into the upstream transport (it is then wrapped in kvtransfer's
  // FaultInjectingTransport), e.g. every receive delayed, or a request's receives dropped.
  std::vector<kvtransfer::FaultRule> inject_receive_faults;
};

struct TransferTiming {
  double seconds = 0;
  uint64_t bytes = 0;
};

class ActivationLinks {
 public:
  // Returns true when the caller wants the current wait abandoned (ABORTED).
  using AbortCheck = std::function<bool()>;

  static absl::StatusOr<std::unique_ptr<ActivationLinks>> Create(
      const ActivationLinkOptions& options, std::shared_ptr<Backend> backend);
  ~ActivationLinks();

  // Descriptors for the neighbours ("" for a side this stage does not have).
  const std::string& upstream_endpoint() const { return upstream_endpoint_; }
  const std::string& downstream_endpoint() const { return downstream_endpoint_; }
  std::string kind() const { return options_.kind; }

  // `previous` is the previous stage's downstream endpoint, `next` the next stage's upstream
  // endpoint (each required exactly when this stage has that side). Sends the link probe to the
  // next stage, then waits for the previous stage's (see above): the neighbours' Connect() calls
  // must overlap in time, or the previous stage's must come first. UNAVAILABLE when the probe
  // does not arrive within connect_timeout, DATA_LOSS when its bytes differ.
  absl::Status Connect(const std::string& previous, const std::string& next);

  // Receives `rows` rows of (request, chunk) into the receive buffer and returns them as a
  // tensor of the backend [rows, hidden], valid until the next Receive().
  absl::StatusOr<Tensor> Receive(uint64_t request, uint32_t chunk, int64_t rows,
                                 const AbortCheck& aborted, TransferTiming* timing);
  // Sends `rows` rows of `src` (a backend tensor [>= rows, hidden]). With `src` undefined it
  // sends a slot's current bytes: the stage passes a chunk through without computing it.
  absl::Status Send(uint64_t request, uint32_t chunk, const Tensor& src, int64_t rows,
                    const AbortCheck& aborted, TransferTiming* timing);
  // The first error of a finished send since the last call (OK when none).
  absl::Status CheckSends();

 private:
  struct Slot {
    Tensor device;  // backend buffer [max_rows, hidden] (not on staged send slots)
    Tensor host;    // host staging buffer, when staging
    kvtransfer::TransferHandle handle;
  };

  ActivationLinks(const ActivationLinkOptions& options, std::shared_ptr<Backend> backend)
      : options_(options), backend_(std::move(backend)) {}
  absl::Status Init();
  absl::Status SendProbe();
  absl::Status ReceiveProbe();
  // A registered buffer; with staging, a host buffer plus (when `need_device`) a device one.
  absl::StatusOr<Slot> NewBuffer(kvtransfer::Transport& transport, bool need_device);
  // Waits for `handle` on `transport` until it ends, `aborted` says so, or the timeout. `what`
  // names the transfer in warnings and errors.
  absl::Status Await(kvtransfer::Transport& transport, kvtransfer::TransferHandle handle,
                     const AbortCheck& aborted, const std::string& what);
  size_t RowBytes() const;

  const ActivationLinkOptions options_;
  const std::shared_ptr<Backend> backend_;
  bool staging_ = false;
  // Buffers are declared before the transports: the transports are destroyed first.
  Slot recv_;
  std::vector<Slot> slots_;
  size_t next_slot_ = 0;
  absl::Status send_error_;
  std::unique_ptr<kvtransfer::Transport> up_;
  std::unique_ptr<kvtransfer::Transport> down_;
  std::string upstream_endpoint_, downstream_endpoint_;
};

}  // namespace mp
