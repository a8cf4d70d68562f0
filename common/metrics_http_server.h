// MetricsHttpServer: serves a Prometheus registry at GET /metrics (text format 0.0.4) on its
// own port, from one thread with a normal stack.
//
// prometheus-cpp's pull Exposer is not used: Debian's civetweb gives its threads fixed 100 KB
// stacks, and glibc carves a thread's static TLS out of that — in this binary OpenBLAS alone
// takes 60 KB, NCCL and the CUDA runtime another 16 KB — so civetweb's request handling
// overflowed into a neighbouring thread's control block. Requests are served one at a time
// (a scrape is small); a connection that sends nothing for 2 s is dropped.
#pragma once

#include <atomic>
#include <memory>
#include <string>
#include <thread>

#include "absl/status/statusor.h"
#include "prometheus/registry.h"

namespace mp {

class MetricsHttpServer {
 public:
  // Binds `listen` ("host:port"; port 0 picks one). UNAVAILABLE when it cannot.
  static absl::StatusOr<std::unique_ptr<MetricsHttpServer>> Start(
      const std::string& listen, std::shared_ptr<prometheus::Registry> registry);
  ~MetricsHttpServer();

  const std::string& address() const { return address_; }

 private:
  MetricsHttpServer() = default;
  void Loop();
  void Serve(int fd);

  std::shared_ptr<prometheus::Registry> registry_;
  int listen_fd_ = -1;
  int wake_fds_[2] = {-1, -1};  // a pipe that ends the loop
  std::string address_;
  std::thread thread_;
};

}  // namespace mp
