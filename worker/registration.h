// Registrar: registers a worker with the coordinator and repeats the registration as a
// heartbeat (so that a restarted coordinator learns of the worker again), on its own thread.
#pragma once

#include <memory>
#include <string>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "millipede/v1/worker.grpc.pb.h"

namespace mp {

class Registrar {
 public:
  Registrar(const std::string& coordinator, millipede::v1::RegisterWorkerRequest request);
  ~Registrar();

  void Start();
  // Marks the worker draining and sends a heartbeat at once.
  void SetDraining();
  void Stop();

 private:
  void Loop();
  // `wait_for_ready`: wait (bounded) for the channel to connect instead of failing at once.
  bool SendOnce(bool* first_failure_logged, bool wait_for_ready);

  const std::string coordinator_;
  std::unique_ptr<millipede::v1::WorkerRegistry::Stub> stub_;
  std::thread thread_;
  absl::Mutex mu_;
  millipede::v1::RegisterWorkerRequest request_ ABSL_GUARDED_BY(mu_);
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  bool kick_ ABSL_GUARDED_BY(mu_) = false;
  int interval_ms_ ABSL_GUARDED_BY(mu_) = 2000;
};

}  // namespace mp
