#include "worker/registration.h"

#include <utility>

#include "common/grpc_channel.h"
#include "common/logging.h"

namespace mp {

namespace v1 = millipede::v1;

Registrar::Registrar(const std::string& coordinator, v1::RegisterWorkerRequest request)
    : coordinator_(coordinator),
      stub_(v1::WorkerRegistry::NewStub(MakeChannel(coordinator))),
      request_(std::move(request)) {}

Registrar::~Registrar() { Stop(); }

void Registrar::Start() {
  thread_ = std::thread([this] { Loop(); });
}

void Registrar::SetDraining() {
  {
    absl::MutexLock lock(&mu_);
    request_.set_draining(true);
    kick_ = true;
  }
  // One synchronous heartbeat so the coordinator knows before the worker stops serving.
  bool failure_logged = false;
  SendOnce(&failure_logged, /*wait_for_ready=*/false);
}

void Registrar::Stop() {
  {
    absl::MutexLock lock(&mu_);
    stop_ = true;
  }
  if (thread_.joinable()) thread_.join();
}

bool Registrar::SendOnce(bool* first_failure_logged, bool wait_for_ready) {
  v1::RegisterWorkerRequest request;
  {
    absl::MutexLock lock(&mu_);
    request = request_;
  }
  grpc::ClientContext context;
  SetTimeout(context, absl::Seconds(2));
  context.set_wait_for_ready(wait_for_ready);
  v1::RegisterWorkerResponse response;
  grpc::Status status = stub_->RegisterWorker(&context, request, &response);
  if (!status.ok()) {
    if (!*first_failure_logged) {
      MP_LOG(Warning) << "cannot register with the coordinator at " << coordinator_ << ": "
                      << status.error_message() << " (retrying)";
      *first_failure_logged = true;
    }
    return false;
  }
  if (*first_failure_logged) {
    MP_LOG(Info) << "registered with the coordinator at " << coordinator_ << " as "
                 << request.worker_id();
    *first_failure_logged = false;
  }
  absl::MutexLock lock(&mu_);
  if (response.heartbeat_interval_ms() > 0) {
    interval_ms_ = static_cast<int>(response.heartbeat_interval_ms());
  }
  return true;
}

void Registrar::Loop() {
  bool failing = true;  // log the first success
  bool registered = false;
  while (true) {
    // Until the first registration the coordinator may not listen yet (`millipede local` starts
    // it together with its workers): wait for the channel to connect instead of failing at once,
    // since a channel whose connection attempt failed retries only every few seconds on its own.
    const bool ok = SendOnce(&failing, /*wait_for_ready=*/!registered);
    registered = registered || ok;
    absl::MutexLock lock(&mu_);
    const absl::Duration wait = ok ? absl::Milliseconds(interval_ms_) : absl::Milliseconds(300);
    auto wake = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return stop_ || kick_; };
    mu_.AwaitWithTimeout(absl::Condition(&wake), wait);
    if (stop_) return;
    kick_ = false;
  }
}

}  // namespace mp
