// Client side of the Millipede gRPC conventions: message limits sized for 1M-token requests,
// keepalive on long streams, quick reconnects after a peer restarts.
#pragma once

#include <grpcpp/grpcpp.h>

#include <memory>
#include <string>

#include "absl/time/time.h"

namespace mp {

// Default receive limit of servers and clients: a 1M-token prompt is ~4 MB of ids or ~5 MB of
// text, and logits of a 152K vocabulary are 0.6 MB per token.
inline constexpr int kDefaultMaxMessageBytes = 64 << 20;

// An insecure channel with the message limit and keepalive pings every 30 s.
std::shared_ptr<grpc::Channel> MakeChannel(const std::string& address,
                                           int max_message_bytes = kDefaultMaxMessageBytes);

// grpc::ClientContext deadline from an absl duration.
void SetTimeout(grpc::ClientContext& context, absl::Duration timeout);

}  // namespace mp
