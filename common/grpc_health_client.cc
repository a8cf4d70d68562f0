#include "common/grpc_health_client.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "common/grpc_channel.h"
#include "common/grpc_status.h"
#include "grpc/health/v1/health.grpc.pb.h"

namespace mp {

absl::StatusOr<bool> CheckHealth(const std::shared_ptr<grpc::Channel>& channel,
                                 const std::string& service, absl::Duration timeout,
                                 bool wait_for_ready) {
  auto stub = grpc::health::v1::Health::NewStub(channel);
  grpc::ClientContext context;
  SetTimeout(context, timeout);
  context.set_wait_for_ready(wait_for_ready);
  grpc::health::v1::HealthCheckRequest request;
  request.set_service(service);
  grpc::health::v1::HealthCheckResponse response;
  grpc::Status status = stub->Check(&context, request, &response);
  if (!status.ok()) return FromGrpcStatus(status);
  return response.status() == grpc::health::v1::HealthCheckResponse::SERVING;
}

absl::Status WaitForServing(const std::shared_ptr<grpc::Channel>& channel,
                            const std::string& service, absl::Duration timeout) {
  const absl::Time end = absl::Now() + timeout;
  absl::Status last = absl::UnavailableError("not checked yet");
  while (true) {
    const absl::Duration left = std::max(end - absl::Now(), absl::Milliseconds(100));
    absl::StatusOr<bool> serving =
        CheckHealth(channel, service, std::min(left, absl::Seconds(2)), /*wait_for_ready=*/true);
    if (serving.ok() && *serving) return absl::OkStatus();
    last = serving.ok() ? absl::UnavailableError("NOT_SERVING") : serving.status();
    if (absl::Now() >= end) break;
    absl::SleepFor(absl::Milliseconds(100));
  }
  return absl::DeadlineExceededError(absl::StrCat("health of '", service, "' not SERVING after ",
                                                  absl::FormatDuration(timeout), ": ",
                                                  last.ToString()));
}

}  // namespace mp
