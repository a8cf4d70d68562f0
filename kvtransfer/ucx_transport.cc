#include "kvtransfer/ucx_transport.h"

#include <poll.h>
#include <ucp/api/ucp.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <future>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "common/logging.h"
#include "common/status.h"
#include "kvtransfer/descriptor.h"

namespace mp::kvtransfer {
namespace ucx_internal {
namespace {

constexpr ucp_tag_t kControlBit = ucp_tag_t{1} << 63;
constexpr ucp_tag_t kFullMask = ~ucp_tag_t{0};
constexpr uint32_t kControlMagic = 0x4D50434Bu;  // "MPCK"
// How long a goodbye waits for the peer's acknowledgement before the endpoint is closed.
constexpr absl::Duration kByeTimeout = absl::Seconds(1);
// Progress iterations without events before the thread sleeps on the event fd.
constexpr int kSpinBeforeSleep = 64;

enum class ControlType : uint32_t { kBye = 1, kByeAck = 2 };

struct ControlMessage {
  uint32_t magic = kControlMagic;
  uint32_t type = 0;
  uint64_t sender = 0;  // instance id
};
static_assert(sizeof(ControlMessage) == 16);

uint64_t Mix(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

ucp_tag_t DataTag(uint64_t sender, const TransferTag& t) {
  uint64_t h = Mix(sender);
  h = Mix(h ^ t.request_id);
  h = Mix(h ^ ((uint64_t{t.chunk_index} << 8) | static_cast<uint64_t>(t.kind)));
  h = Mix(h ^ t.part);
  return h & ~kControlBit;
}

absl::Status UcsError(absl::string_view what, ucs_status_t status) {
  return absl::InternalError(absl::StrCat(what, ": ", ucs_status_string(status)));
}

}  // namespace

// ucp_ep_print_info() of `ep` as text.
absl::StatusOr<std::string> EndpointInfo(ucp_ep_h ep) {
  char* buf = nullptr;
  size_t len = 0;
  FILE* f = open_memstream(&buf, &len);
  if (f == nullptr) return absl::InternalError("open_memstream failed");
  ucp_ep_print_info(ep, f);
  fclose(f);
  std::string out(buf, len);
  free(buf);
  return out;
}

// The transports and devices of an endpoint's lanes, e.g. "tcp/eth0" or "posix/memory,tcp/lo":
// the "<index>:<transport>/<device>.<n>" word after each "lane[i]:" of EndpointInfo().
std::string LaneSummary(absl::string_view info) {
  std::vector<std::string> lanes;
  for (absl::string_view line : absl::StrSplit(info, '\n')) {
    const size_t at = line.find("lane[");
    if (at == absl::string_view::npos) continue;
    const size_t colon = line.find("]:", at);
    if (colon == absl::string_view::npos) continue;
    absl::string_view rest = absl::StripLeadingAsciiWhitespace(line.substr(colon + 2));
    rest = rest.substr(0, rest.find(' '));
    if (const size_t c = rest.find(':'); c != absl::string_view::npos) rest.remove_prefix(c + 1);
    if (const size_t dot = rest.rfind('.'); dot != absl::string_view::npos) {
      rest = rest.substr(0, dot);
    }
    if (rest.empty()) continue;
    if (std::find(lanes.begin(), lanes.end(), rest) == lanes.end()) lanes.emplace_back(rest);
  }
  return lanes.empty() ? std::string("no lanes yet") : absl::StrJoin(lanes, ",");
}

namespace {

bool IsPeerFailure(ucs_status_t s) {
  return s == UCS_ERR_CONNECTION_RESET || s == UCS_ERR_ENDPOINT_TIMEOUT ||
         s == UCS_ERR_UNREACHABLE || s == UCS_ERR_REJECTED || s == UCS_ERR_IO_ERROR ||
         s == UCS_ERR_NOT_CONNECTED || s == UCS_ERR_TIMED_OUT;
}

}  // namespace

struct OpContext;

// One connection to a peer. `gone` is guarded by the transport's mu_; the rest belongs to
// the progress thread.
struct Conn {
  std::string peer_id;
  uint64_t peer_instance = 0;
  ucp_ep_h ep = nullptr;
  absl::Status gone;
  bool bye_acked = false;
  bool close_pending = false;  // the endpoint failed or the peer left: close it
  int control_in_flight = 0;   // goodbye messages not yet handed to the network
  // Set when UCX cannot detect this peer's failure (shared-memory-only links): the progress
  // thread watches the peer's pid instead.
  uint32_t watch_pid = 0;
  absl::Time close_by = absl::InfiniteFuture();
  absl::flat_hash_set<OpContext*> ops;
  Worker* worker = nullptr;
};

struct OpContext {
  std::shared_ptr<Batch> batch;
  size_t index = 0;
  std::shared_ptr<Conn> conn;
  void* request = nullptr;
  bool posting = false;  // inside ucp_tag_*_nbx: completion is handled by the poster
  bool completed = false;
  ucs_status_t status = UCS_OK;
  size_t received = 0;
  bool is_recv() const { return batch->op(index).direction == TransferDirection::kRecv; }
};

// Everything that only the progress thread touches.
struct Worker {
  UcxTransport* transport = nullptr;
  ucp_context_h context = nullptr;
  ucp_worker_h worker = nullptr;
  int efd = -1;
  uint64_t memory_types = 0;
  absl::flat_hash_map<uint64_t, std::shared_ptr<Conn>> by_instance;
  std::vector<std::shared_ptr<Conn>> all_conns;
  absl::flat_hash_map<uint64_t, std::vector<OpContext*>> batch_ops;  // by handle id
  absl::flat_hash_set<OpContext*> ops;
  // The standing receive for control messages.
  ControlMessage control_buf;
  void* control_request = nullptr;
  bool stopping = false;
  // UCX callbacks must not call back into UCX progress; they leave work here.
  std::vector<std::function<void()>> deferred;
  absl::Duration pid_check_interval = absl::Seconds(1);
  absl::Time next_pid_check = absl::InfinitePast();

  // ---- operations ----
  void PostOp(const std::shared_ptr<Batch>& batch, size_t i, std::shared_ptr<Conn> conn);
  void OnComplete(OpContext* ctx);
  absl::Status OpStatus(const OpContext& ctx);
  void CancelRecvs(const std::vector<OpContext*>& ctxs);
  void CancelBatch(uint64_t handle_id);

  // ---- connections ----
  void MarkGone(const std::shared_ptr<Conn>& conn, absl::Status why);
  void CloseEndpoint(const std::shared_ptr<Conn>& conn);
  void SendControl(const std::shared_ptr<Conn>& conn, ControlType type);
  void PostControlRecv();
  void OnControl(const ControlMessage& msg);
  // Sends goodbyes to `conns`, waits (bounded) for acknowledgements, closes the endpoints.
  void SayGoodbye(const std::vector<std::shared_ptr<Conn>>& conns);
  void CloseFailedEndpoints();
  // Marks peers whose watched process has exited as gone.
  void CheckWatchedPids();
  // One round: UCX progress, deferred callback work, standing control receive. Returns the
  // number of UCX events.
  unsigned ProgressOnce();
  bool ProgressUntil(const std::function<bool()>& done, absl::Time deadline);
};

namespace {

void SendCallback(void* request, ucs_status_t status, void* user_data) {
  auto* ctx = static_cast<OpContext*>(user_data);
  ctx->completed = true;
  ctx->status = status;
  if (!ctx->posting) ctx->conn->worker->OnComplete(ctx);
}

void RecvCallback(void* request, ucs_status_t status, const ucp_tag_recv_info_t* info,
                  void* user_data) {
  auto* ctx = static_cast<OpContext*>(user_data);
  ctx->completed = true;
  ctx->status = status;
  ctx->received = (status == UCS_OK && info != nullptr) ? info->length : 0;
  if (!ctx->posting) ctx->conn->worker->OnComplete(ctx);
}

void ErrorCallback(void* arg, ucp_ep_h ep, ucs_status_t status) {
  auto* conn = static_cast<Conn*>(arg);
  Worker* w = conn->worker;
  w->deferred.push_back([w, conn, status] {
    for (const auto& c : w->all_conns) {
      if (c.get() != conn) continue;
      c->close_pending = true;
      c->close_by = absl::InfinitePast();
      w->MarkGone(c, absl::UnavailableError(absl::StrCat("peer '", conn->peer_id,
                                                         "' is gone: connection failed (",
                                                         ucs_status_string(status), ")")));
    }
  });
}

void ControlCallback(void* request, ucs_status_t status, const ucp_tag_recv_info_t* info,
                     void* user_data) {
  auto* w = static_cast<Worker*>(user_data);
  ucp_request_free(request);
  w->control_request = nullptr;
  if (status == UCS_OK && info != nullptr && info->length == sizeof(ControlMessage)) {
    const ControlMessage msg = w->control_buf;
    w->deferred.push_back([w, msg] { w->OnControl(msg); });
  }
}

struct ControlSend {
  ControlMessage msg;
  std::shared_ptr<Conn> conn;
};

void ControlSendCallback(void* request, ucs_status_t status, void* user_data) {
  auto* send = static_cast<ControlSend*>(user_data);
  --send->conn->control_in_flight;
  ucp_request_free(request);
  delete send;
}

}  // namespace

void Worker::PostOp(const std::shared_ptr<Batch>& batch, size_t i, std::shared_ptr<Conn> conn) {
  const TransferOp& op = batch->op(i);
  auto* ctx = new OpContext{batch, i, std::move(conn)};
  {
    absl::MutexLock lock(&transport->mu_);
    if (!ctx->conn->gone.ok()) {
      const absl::Status gone = ctx->conn->gone;
      delete ctx;
      transport->FinishFromWorker(batch, i, gone);
      return;
    }
  }
  if (batch->cancelled()) {
    delete ctx;
    transport->FinishFromWorker(batch, i, absl::CancelledError("transfer batch was cancelled"));
    return;
  }
  ucp_request_param_t param;
  std::memset(&param, 0, sizeof(param));
  param.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA |
                       UCP_OP_ATTR_FIELD_DATATYPE | UCP_OP_ATTR_FIELD_MEMORY_TYPE |
                       UCP_OP_ATTR_FLAG_NO_IMM_CMPL;
  param.user_data = ctx;
  param.datatype = ucp_dt_make_contig(1);
  param.memory_type = UCS_MEMORY_TYPE_HOST;
  if (auto* memh = static_cast<ucp_mem_h>(transport->RegionBackend(batch->region(i)))) {
    param.op_attr_mask |= UCP_OP_ATTR_FIELD_MEMH;
    param.memh = memh;
  }
  ctx->posting = true;
  ucs_status_ptr_t req;
  if (op.direction == TransferDirection::kSend) {
    param.cb.send = SendCallback;
    req = ucp_tag_send_nbx(ctx->conn->ep, op.addr, op.bytes,
                           DataTag(transport->instance_id_, op.tag), &param);
  } else {
    param.cb.recv = RecvCallback;
    req = ucp_tag_recv_nbx(worker, op.addr, op.bytes, DataTag(ctx->conn->peer_instance, op.tag),
                           kFullMask, &param);
  }
  ctx->posting = false;
  if (UCS_PTR_IS_ERR(req)) {
    ctx->completed = true;
    ctx->status = UCS_PTR_STATUS(req);
    ctx->request = nullptr;
  } else {
    ctx->request = req;
  }
  ops.insert(ctx);
  ctx->conn->ops.insert(ctx);
  batch_ops[batch->handle().id].push_back(ctx);
  if (ctx->completed) OnComplete(ctx);
}

absl::Status Worker::OpStatus(const OpContext& ctx) {
  const TransferOp& op = ctx.batch->op(ctx.index);
  if (ctx.status == UCS_OK) {
    if (ctx.is_recv() && ctx.received != op.bytes) {
      return absl::InvalidArgumentError(absl::StrCat("size mismatch for ", ToString(op.tag),
                                                     ": the send carries ", ctx.received,
                                                     " bytes, the receive expects ", op.bytes));
    }
    return absl::OkStatus();
  }
  {
    absl::MutexLock lock(&transport->mu_);
    if (!ctx.conn->gone.ok()) return ctx.conn->gone;
  }
  if (ctx.status == UCS_ERR_CANCELED) {
    return absl::CancelledError("transfer batch was cancelled");
  }
  if (ctx.status == UCS_ERR_MESSAGE_TRUNCATED) {
    return absl::InvalidArgumentError(absl::StrCat("size mismatch for ", ToString(op.tag),
                                                   ": the send carries more than the ", op.bytes,
                                                   " bytes the receive expects"));
  }
  if (IsPeerFailure(ctx.status)) {
    return absl::UnavailableError(
        absl::StrCat("peer '", op.peer, "' is gone: ", ucs_status_string(ctx.status)));
  }
  return absl::InternalError(absl::StrCat("UCX ", ctx.is_recv() ? "receive" : "send", " of ",
                                          ToString(op.tag),
                                          " failed: ", ucs_status_string(ctx.status)));
}

void Worker::OnComplete(OpContext* ctx) {
  if (ctx->request != nullptr) ucp_request_free(ctx->request);
  ctx->request = nullptr;
  absl::Status status = OpStatus(*ctx);
  ops.erase(ctx);
  ctx->conn->ops.erase(ctx);
  auto it = batch_ops.find(ctx->batch->handle().id);
  if (it != batch_ops.end()) {
    auto& v = it->second;
    v.erase(std::remove(v.begin(), v.end(), ctx), v.end());
    if (v.empty()) batch_ops.erase(it);
  }
  std::shared_ptr<Batch> batch = std::move(ctx->batch);
  const size_t index = ctx->index;
  delete ctx;
  transport->FinishFromWorker(batch, index, std::move(status));
}

void Worker::CancelRecvs(const std::vector<OpContext*>& ctxs) {
  // ucp_request_cancel may complete (and free) the context synchronously.
  std::vector<void*> requests;
  for (OpContext* ctx : ctxs) {
    if (ctx->is_recv() && ctx->request != nullptr && !ctx->completed) {
      requests.push_back(ctx->request);
    }
  }
  for (void* req : requests) ucp_request_cancel(worker, req);
}

void Worker::CancelBatch(uint64_t handle_id) {
  auto it = batch_ops.find(handle_id);
  if (it == batch_ops.end()) return;
  CancelRecvs(std::vector<OpContext*>(it->second));
}

void Worker::MarkGone(const std::shared_ptr<Conn>& conn, absl::Status why) {
  {
    absl::MutexLock lock(&transport->mu_);
    if (!conn->gone.ok()) return;
    conn->gone = std::move(why);
  }
  CancelRecvs(std::vector<OpContext*>(conn->ops.begin(), conn->ops.end()));
  // Sends still pending on the endpoint fail when it is closed (CloseEndpoint).
}

void Worker::CloseEndpoint(const std::shared_ptr<Conn>& conn) {
  if (conn->ep == nullptr) return;
  ucp_request_param_t param;
  std::memset(&param, 0, sizeof(param));
  param.op_attr_mask = UCP_OP_ATTR_FIELD_FLAGS;
  param.flags = UCP_EP_CLOSE_FLAG_FORCE;
  ucs_status_ptr_t req = ucp_ep_close_nbx(conn->ep, &param);
  conn->ep = nullptr;
  if (req != nullptr && !UCS_PTR_IS_ERR(req)) {
    ProgressUntil([&] { return ucp_request_check_status(req) != UCS_INPROGRESS; },
                  absl::Now() + absl::Seconds(5));
    ucp_request_free(req);
  }
  // With UCX failure handling the close failed every send on the endpoint. Without it (shared
  // memory links) a rendezvous send can wait forever for a peer that is gone; nothing will
  // read its buffer any more, so it is abandoned. Receives are left to finish or be
  // cancelled: late data could still land in their buffers.
  std::vector<OpContext*> stuck;
  for (OpContext* ctx : conn->ops) {
    if (!ctx->is_recv() && !ctx->completed && ctx->request != nullptr) stuck.push_back(ctx);
  }
  for (OpContext* ctx : stuck) {
    ucp_request_free(ctx->request);  // UCX drops it when (if ever) it completes; no callback
    ctx->request = nullptr;
    ctx->completed = true;
    ctx->status = UCS_ERR_CANCELED;
    OnComplete(ctx);
  }
}

void Worker::SendControl(const std::shared_ptr<Conn>& conn, ControlType type) {
  if (conn->ep == nullptr) return;
  auto* send = new ControlSend{
      ControlMessage{kControlMagic, static_cast<uint32_t>(type), transport->instance_id_}, conn};
  ucp_request_param_t param;
  std::memset(&param, 0, sizeof(param));
  param.op_attr_mask =
      UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA | UCP_OP_ATTR_FIELD_DATATYPE;
  param.cb.send = ControlSendCallback;
  param.user_data = send;
  param.datatype = ucp_dt_make_contig(1);
  ucs_status_ptr_t req = ucp_tag_send_nbx(conn->ep, &send->msg, sizeof(send->msg),
                                          kControlBit | static_cast<uint32_t>(type), &param);
  if (req == nullptr || UCS_PTR_IS_ERR(req)) {
    delete send;  // completed at once (or failed): no callback
    return;
  }
  ++conn->control_in_flight;
}

void Worker::PostControlRecv() {
  ucp_request_param_t param;
  std::memset(&param, 0, sizeof(param));
  param.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA |
                       UCP_OP_ATTR_FIELD_DATATYPE | UCP_OP_ATTR_FLAG_NO_IMM_CMPL;
  param.cb.recv = ControlCallback;
  param.user_data = this;
  param.datatype = ucp_dt_make_contig(1);
  ucs_status_ptr_t req =
      ucp_tag_recv_nbx(worker, &control_buf, sizeof(control_buf), kControlBit, kControlBit, &param);
  if (UCS_PTR_IS_ERR(req)) {
    MP_LOG(Error) << "ucx transport: cannot post the control receive: "
                  << ucs_status_string(UCS_PTR_STATUS(req));
    return;
  }
  control_request = req;
}

void Worker::OnControl(const ControlMessage& msg) {
  if (msg.magic != kControlMagic) return;
  auto it = by_instance.find(msg.sender);
  if (it == by_instance.end()) return;
  std::shared_ptr<Conn> conn = it->second;
  switch (static_cast<ControlType>(msg.type)) {
    case ControlType::kBye:
      MarkGone(conn, absl::UnavailableError(
                         absl::StrCat("peer '", conn->peer_id, "' is gone: it disconnected")));
      SendControl(conn, ControlType::kByeAck);
      // Close once the acknowledgement is out (or soon regardless).
      conn->close_pending = true;
      conn->close_by = absl::Now() + kByeTimeout;
      break;
    case ControlType::kByeAck:
      conn->bye_acked = true;
      break;
  }
}

void Worker::SayGoodbye(const std::vector<std::shared_ptr<Conn>>& conns) {
  for (const auto& conn : conns) SendControl(conn, ControlType::kBye);
  ProgressUntil(
      [&] {
        for (const auto& conn : conns) {
          if (conn->ep != nullptr && !conn->bye_acked && !conn->close_pending) return false;
        }
        return true;
      },
      absl::Now() + kByeTimeout);
  for (const auto& conn : conns) {
    CloseEndpoint(conn);
    conn->close_pending = false;
  }
}

void Worker::CloseFailedEndpoints() {
  const absl::Time now = absl::Now();
  for (size_t i = 0; i < all_conns.size(); ++i) {
    std::shared_ptr<Conn> conn = all_conns[i];
    if (!conn->close_pending) continue;
    if (conn->control_in_flight > 0 && now < conn->close_by) continue;
    conn->close_pending = false;
    CloseEndpoint(conn);
  }
}

void Worker::CheckWatchedPids() {
  const absl::Time now = absl::Now();
  if (now < next_pid_check) return;
  next_pid_check = now + pid_check_interval;
  for (const auto& conn : all_conns) {
    if (conn->watch_pid == 0 || conn->ep == nullptr || conn->close_pending) continue;
    if (ProcessAlive(conn->watch_pid)) continue;
    {
      absl::MutexLock lock(&transport->mu_);
      if (!conn->gone.ok()) continue;
    }
    conn->close_pending = true;
    conn->close_by = absl::InfinitePast();
    MarkGone(conn, absl::UnavailableError(absl::StrCat("peer '", conn->peer_id,
                                                       "' is gone: its process (pid ",
                                                       conn->watch_pid, ") exited")));
  }
}

unsigned Worker::ProgressOnce() {
  const unsigned events = ucp_worker_progress(worker);
  while (!deferred.empty()) {
    std::vector<std::function<void()>> work;
    work.swap(deferred);
    for (auto& fn : work) fn();
  }
  if (control_request == nullptr && !stopping) PostControlRecv();
  return events;
}

bool Worker::ProgressUntil(const std::function<bool()>& done, absl::Time deadline) {
  while (!done()) {
    if (absl::Now() >= deadline) return false;
    if (ProgressOnce() == 0) usleep(50);
  }
  return true;
}

}  // namespace ucx_internal

namespace {

// Whether a UCX_TLS list names shared-memory transports only.
bool IsSharedMemoryOnly(absl::string_view tls) {
  if (tls.empty()) return false;
  for (absl::string_view name : absl::StrSplit(tls, ',')) {
    name = absl::StripAsciiWhitespace(name);
    if (!name.empty() && name[0] == '^') return false;
    if (name != "sm" && name != "shm" && name != "mm" && name != "posix" && name != "sysv" &&
        name != "cma" && name != "knem" && name != "xpmem" && name != "self") {
      return false;
    }
  }
  return true;
}

}  // namespace

using ucx_internal::Conn;
using ucx_internal::kSpinBeforeSleep;
using ucx_internal::OpContext;
using ucx_internal::UcsError;
using ucx_internal::Worker;

UcxTransport::UcxTransport(const TransportOptions& options)
    : TransportBase("ucx", options.limits),
      options_(options),
      instance_id_(NewInstanceId()),
      shm_only_(IsSharedMemoryOnly(options.ucx_transports)),
      worker_(std::make_unique<Worker>()) {
  worker_->transport = this;
}

absl::StatusOr<std::unique_ptr<UcxTransport>> UcxTransport::Create(
    const TransportOptions& options) {
  std::unique_ptr<UcxTransport> t(new UcxTransport(options));
  MP_RETURN_IF_ERROR(t->Start());
  return t;
}

absl::Status UcxTransport::Start() {
  Worker& w = *worker_;
  ucp_config_t* config = nullptr;
  ucs_status_t s = ucp_config_read(nullptr, nullptr, &config);
  if (s != UCS_OK) {
    return absl::FailedPreconditionError(
        absl::StrCat("UCX: cannot read its configuration: ", ucs_status_string(s)));
  }
  std::vector<std::pair<std::string, std::string>> settings;
  if (!options_.ucx_transports.empty()) settings.emplace_back("TLS", options_.ucx_transports);
  if (!options_.ucx_net_devices.empty()) {
    settings.emplace_back("NET_DEVICES", options_.ucx_net_devices);
  }
  settings.emplace_back(
      "KEEPALIVE_INTERVAL",
      absl::StrCat(absl::ToInt64Milliseconds(options_.ucx_keepalive_interval), "ms"));
  for (const auto& kv : options_.ucx_config) settings.push_back(kv);
  for (const auto& [name, value] : settings) {
    s = ucp_config_modify(config, name.c_str(), value.c_str());
    if (s != UCS_OK) {
      ucp_config_release(config);
      return absl::InvalidArgumentError(
          absl::StrCat("UCX rejected setting UCX_", name, "=", value, ": ", ucs_status_string(s)));
    }
  }
  ucp_params_t params;
  std::memset(&params, 0, sizeof(params));
  params.field_mask = UCP_PARAM_FIELD_FEATURES | UCP_PARAM_FIELD_NAME;
  params.features = UCP_FEATURE_TAG | UCP_FEATURE_WAKEUP;
  params.name = "millipede-kvtransfer";
  s = ucp_init(&params, config, &w.context);
  ucp_config_release(config);
  if (s != UCS_OK) {
    w.context = nullptr;
    return absl::FailedPreconditionError(absl::StrCat(
        "UCX could not start (UCX_TLS='", options_.ucx_transports, "', UCX_NET_DEVICES='",
        options_.ucx_net_devices, "'): ", ucs_status_string(s)));
  }
  ucp_context_attr_t cattr;
  cattr.field_mask = UCP_ATTR_FIELD_MEMORY_TYPES;
  if (ucp_context_query(w.context, &cattr) == UCS_OK) w.memory_types = cattr.memory_types;

  ucp_worker_params_t wparams;
  std::memset(&wparams, 0, sizeof(wparams));
  wparams.field_mask = UCP_WORKER_PARAM_FIELD_THREAD_MODE;
  wparams.thread_mode = UCS_THREAD_MODE_SINGLE;
  s = ucp_worker_create(w.context, &wparams, &w.worker);
  if (s != UCS_OK) {
    w.worker = nullptr;
    return absl::FailedPreconditionError(absl::StrCat(
        "UCX could not create a worker (UCX_TLS='", options_.ucx_transports, "', UCX_NET_DEVICES='",
        options_.ucx_net_devices, "'): ", ucs_status_string(s)));
  }
  s = ucp_worker_get_efd(w.worker, &w.efd);
  if (s != UCS_OK) return UcsError("UCX: cannot get the worker event fd", s);

  ucp_address_t* address = nullptr;
  size_t address_len = 0;
  s = ucp_worker_get_address(w.worker, &address, &address_len);
  if (s != UCS_OK) return UcsError("UCX: cannot get the worker address", s);
  EndpointDescriptor d;
  d.kind = "ucx";
  d.instance_id = instance_id_;
  d.pid = static_cast<uint32_t>(getpid());
  d.host = LocalHostName();
  d.scope = ProcessScope();
  d.payload.assign(reinterpret_cast<const char*>(address), address_len);
  ucp_worker_release_address(w.worker, address);
  descriptor_ = EncodeDescriptor(d);

  w.pid_check_interval = options_.ucx_keepalive_interval;
  w.PostControlRecv();
  thread_ = std::thread([this] { ProgressLoop(); });
  return absl::OkStatus();
}

UcxTransport::~UcxTransport() {
  Worker& w = *worker_;
  if (thread_.joinable()) {
    // Goodbye to every live peer, then close all endpoints: pending sends fail, receives are
    // cancelled, peers learn that we are gone.
    Run([&]() {
      std::vector<std::shared_ptr<Conn>> live;
      {
        absl::MutexLock lock(&mu_);
        for (const auto& conn : w.all_conns) {
          if (conn->ep == nullptr) continue;
          if (conn->gone.ok()) {
            conn->gone = absl::CancelledError("transport shut down");
            live.push_back(conn);
          }
        }
        peers_.clear();
      }
      for (const auto& conn : w.all_conns) {
        w.CancelRecvs(std::vector<OpContext*>(conn->ops.begin(), conn->ops.end()));
      }
      w.SayGoodbye(live);
      for (const auto& conn : w.all_conns) w.CloseEndpoint(conn);
      w.ProgressUntil([&] { return w.deferred.empty(); }, absl::Now() + absl::Seconds(1));
      return absl::OkStatus();
    }).IgnoreError();
    if (size_t left = Shutdown(options_.shutdown_timeout); left != 0) {
      MP_LOG(Warning) << "ucx transport: " << left << " transfer batches still unfinished after "
                      << absl::FormatDuration(options_.shutdown_timeout)
                      << "; destroying the UCX worker ends them";
    }
    Run([&]() {
      w.stopping = true;
      if (w.control_request != nullptr) ucp_request_cancel(w.worker, w.control_request);
      return absl::OkStatus();
    }).IgnoreError();
    {
      absl::MutexLock lock(&queue_mu_);
      stop_ = true;
    }
    ucp_worker_signal(w.worker);
    thread_.join();
  } else {
    Shutdown(absl::ZeroDuration());
  }
  // Operations UCX never completed: the worker goes away, so nothing touches their buffers.
  std::vector<OpContext*> leftovers(w.ops.begin(), w.ops.end());
  if (w.worker != nullptr) ucp_worker_destroy(w.worker);
  for (OpContext* ctx : leftovers) {
    FinishOp(ctx->batch, ctx->index, absl::CancelledError("transport shut down"));
    delete ctx;
  }
  if (w.context != nullptr) ucp_cleanup(w.context);
}

bool UcxTransport::Post(std::function<void()> fn) {
  {
    absl::MutexLock lock(&queue_mu_);
    if (stop_) return false;  // the progress thread is gone (destruction)
    queue_.push_back(std::move(fn));
  }
  ucp_worker_signal(worker_->worker);
  return true;
}

absl::Status UcxTransport::Run(std::function<absl::Status()> fn) {
  if (!thread_.joinable() || std::this_thread::get_id() == thread_.get_id()) return fn();
  auto promise = std::make_shared<std::promise<absl::Status>>();
  std::future<absl::Status> result = promise->get_future();
  if (!Post([fn = std::move(fn), promise]() { promise->set_value(fn()); })) {
    return absl::FailedPreconditionError("the ucx transport is shutting down");
  }
  return result.get();
}

void UcxTransport::ProgressLoop() {
  Worker& w = *worker_;
  int idle = 0;
  while (true) {
    std::vector<std::function<void()>> commands;
    bool stop = false;
    {
      absl::MutexLock lock(&queue_mu_);
      commands.swap(queue_);
      stop = stop_;
    }
    for (auto& fn : commands) fn();
    if (stop && commands.empty()) break;
    unsigned events = w.ProgressOnce();
    w.CheckWatchedPids();
    w.CloseFailedEndpoints();
    if (events != 0 || !commands.empty()) {
      idle = 0;
      continue;
    }
    if (++idle < kSpinBeforeSleep) continue;
    if (ucp_worker_arm(w.worker) != UCS_OK) continue;  // events pending
    {
      absl::MutexLock lock(&queue_mu_);
      if (!queue_.empty() || stop_) continue;
    }
    pollfd pfd{w.efd, POLLIN, 0};
    // The timeout bounds how late keepalive and timers run when nothing else happens.
    poll(&pfd, 1, 100);
    idle = 0;
  }
}

absl::StatusOr<std::string> UcxTransport::LocalEndpoint() { return descriptor_; }

absl::Status UcxTransport::Connect(absl::string_view peer_id, absl::string_view descriptor) {
  if (peer_id.empty()) return absl::InvalidArgumentError("Connect: peer id is empty");
  MP_ASSIGN_OR_RETURN(EndpointDescriptor d, DecodeDescriptor(descriptor, "ucx"));
  if (d.payload.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("Connect('", peer_id, "'): the ucx descriptor has no worker address"));
  }
  Worker& w = *worker_;
  return Run([&]() -> absl::Status {
    {
      absl::MutexLock lock(&mu_);
      auto it = peers_.find(peer_id);
      if (it != peers_.end() && it->second->gone.ok()) {
        return absl::AlreadyExistsError(
            absl::StrCat("Connect: peer '", peer_id, "' is already connected"));
      }
    }
    auto conn = std::make_shared<Conn>();
    conn->peer_id = std::string(peer_id);
    conn->peer_instance = d.instance_id;
    conn->worker = &w;
    ucp_ep_params_t ep_params;
    std::memset(&ep_params, 0, sizeof(ep_params));
    ep_params.field_mask = UCP_EP_PARAM_FIELD_REMOTE_ADDRESS |
                           UCP_EP_PARAM_FIELD_ERR_HANDLING_MODE | UCP_EP_PARAM_FIELD_ERR_HANDLER;
    ep_params.address = reinterpret_cast<const ucp_address_t*>(d.payload.data());
    ep_params.err_mode = UCP_ERR_HANDLING_MODE_PEER;
    ep_params.err_handler.cb = ucx_internal::ErrorCallback;
    ep_params.err_handler.arg = conn.get();
    const bool same_scope = !d.scope.empty() && d.scope == ProcessScope();
    // UCX 1.13 shared-memory transports cannot report peer failure; such links run without
    // UCX failure handling and the peer's pid is watched instead.
    if (shm_only_ && same_scope) ep_params.err_mode = UCP_ERR_HANDLING_MODE_NONE;
    ucs_status_t s = ucp_ep_create(w.worker, &ep_params, &conn->ep);
    if (s != UCS_OK && ep_params.err_mode == UCP_ERR_HANDLING_MODE_PEER && same_scope) {
      ep_params.err_mode = UCP_ERR_HANDLING_MODE_NONE;
      s = ucp_ep_create(w.worker, &ep_params, &conn->ep);
    }
    if (s != UCS_OK) {
      return absl::UnavailableError(absl::StrCat("Connect('", peer_id, "'): cannot reach peer ",
                                                 "on '", d.host, "' (pid ", d.pid,
                                                 "): ", ucs_status_string(s)));
    }
    if (ep_params.err_mode == UCP_ERR_HANDLING_MODE_NONE) conn->watch_pid = d.pid;
    // Which interfaces the link runs over: an interface that later vanishes takes its lanes'
    // connections with it, so this is the first thing to know about a stalled link.
    absl::StatusOr<std::string> info = ucx_internal::EndpointInfo(conn->ep);
    MP_LOG(Info) << "ucx: link to peer '" << peer_id << "' (pid " << d.pid << " on " << d.host
                 << ") over "
                 << (info.ok() ? ucx_internal::LaneSummary(*info) : info.status().ToString());
    w.all_conns.push_back(conn);
    w.by_instance[d.instance_id] = conn;
    absl::MutexLock lock(&mu_);
    peers_[conn->peer_id] = conn;
    return absl::OkStatus();
  });
}

absl::Status UcxTransport::Disconnect(absl::string_view peer_id) {
  Worker& w = *worker_;
  return Run([&]() -> absl::Status {
    std::shared_ptr<Conn> conn;
    {
      absl::MutexLock lock(&mu_);
      auto it = peers_.find(peer_id);
      if (it == peers_.end()) {
        return absl::NotFoundError(absl::StrCat("Disconnect: unknown peer '", peer_id, "'"));
      }
      conn = it->second;
      peers_.erase(it);
    }
    bool was_live;
    {
      absl::MutexLock lock(&mu_);
      was_live = conn->gone.ok() && conn->ep != nullptr;
    }
    w.MarkGone(conn, absl::CancelledError(absl::StrCat("disconnected from peer '", peer_id, "'")));
    if (was_live) {
      w.SayGoodbye({conn});  // the acknowledgement is looked up by instance id
    } else {
      w.CloseEndpoint(conn);
    }
    if (auto it = w.by_instance.find(conn->peer_instance);
        it != w.by_instance.end() && it->second == conn) {
      w.by_instance.erase(it);
    }
    return absl::OkStatus();
  });
}

absl::StatusOr<std::string> UcxTransport::DescribeLink(absl::string_view peer_id) {
  Worker& w = *worker_;
  std::string out;
  MP_RETURN_IF_ERROR(Run([&]() -> absl::Status {
    std::shared_ptr<Conn> conn;
    {
      absl::MutexLock lock(&mu_);
      auto it = peers_.find(peer_id);
      if (it == peers_.end()) {
        return absl::NotFoundError(absl::StrCat("DescribeLink: unknown peer '", peer_id, "'"));
      }
      conn = it->second;
    }
    if (conn->ep == nullptr) return absl::UnavailableError("endpoint closed");
    // Wireup may still be choosing lanes; let it settle briefly.
    w.ProgressUntil([] { return false; }, absl::Now() + absl::Milliseconds(20));
    MP_ASSIGN_OR_RETURN(out, ucx_internal::EndpointInfo(conn->ep));
    return absl::OkStatus();
  }));
  return out;
}

absl::StatusOr<std::string> UcxTransport::LinkLanes(absl::string_view peer_id) {
  MP_ASSIGN_OR_RETURN(std::string info, DescribeLink(peer_id));
  return ucx_internal::LaneSummary(info);
}

absl::Status UcxTransport::CheckMemoryKind(const MemoryRegion& region) {
  if (region.kind == MemoryKind::kHost) return absl::OkStatus();
  if (region.kind == MemoryKind::kCuda &&
      (worker_->memory_types & (uint64_t{1} << UCS_MEMORY_TYPE_CUDA)) != 0) {
    return absl::UnimplementedError(
        "this UCX build has CUDA transports, but the ucx backend moves host memory only; "
        "use the nccl backend for GPU memory");
  }
  return absl::UnimplementedError(absl::StrCat(
      "the ucx backend moves host memory only, not ", MemoryKindName(region.kind),
      " (this UCX build has no CUDA transports; stage through pinned host memory or use nccl)"));
}

absl::StatusOr<void*> UcxTransport::MapMemory(const MemoryRegion& region) {
  Worker& w = *worker_;
  ucp_mem_h memh = nullptr;
  MP_RETURN_IF_ERROR(Run([&]() -> absl::Status {
    ucp_mem_map_params_t params;
    std::memset(&params, 0, sizeof(params));
    params.field_mask = UCP_MEM_MAP_PARAM_FIELD_ADDRESS | UCP_MEM_MAP_PARAM_FIELD_LENGTH;
    params.address = region.addr;
    params.length = region.bytes;
    ucs_status_t s = ucp_mem_map(w.context, &params, &memh);
    if (s != UCS_OK) {
      return absl::InternalError(
          absl::StrCat("UCX could not register ", region.bytes, " bytes: ", ucs_status_string(s)));
    }
    return absl::OkStatus();
  }));
  return memh;
}

void UcxTransport::UnmapMemory(const MemoryRegion& region, void* backend) {
  if (backend == nullptr) return;
  Worker& w = *worker_;
  Run([&]() {
    ucp_mem_unmap(w.context, static_cast<ucp_mem_h>(backend));
    return absl::OkStatus();
  }).IgnoreError();
}

absl::Status UcxTransport::CheckPeer(absl::string_view peer) {
  absl::MutexLock lock(&mu_);
  auto it = peers_.find(peer);
  if (it == peers_.end()) {
    return absl::FailedPreconditionError(
        absl::StrCat("peer '", peer, "' is not connected (call Connect first)"));
  }
  return it->second->gone;
}

void UcxTransport::StartBatch(const std::shared_ptr<Batch>& batch) {
  // Resolve connections now so that a later reconnect under the same name does not redirect
  // operations submitted before it.
  std::vector<std::shared_ptr<Conn>> conns(batch->size());
  {
    absl::MutexLock lock(&mu_);
    for (size_t i = 0; i < batch->size(); ++i) {
      auto it = peers_.find(batch->op(i).peer);
      if (it != peers_.end()) conns[i] = it->second;
    }
  }
  Post([this, batch, conns = std::move(conns)]() {
    for (size_t i = 0; i < batch->size(); ++i) {
      if (conns[i] == nullptr) {
        FinishOp(batch, i,
                 absl::FailedPreconditionError(
                     absl::StrCat("peer '", batch->op(i).peer, "' is not connected")));
        continue;
      }
      worker_->PostOp(batch, i, conns[i]);
    }
  });
}

void UcxTransport::CancelBatch(const std::shared_ptr<Batch>& batch) {
  const uint64_t id = batch->handle().id;
  Post([this, id]() { worker_->CancelBatch(id); });
}

}  // namespace mp::kvtransfer
