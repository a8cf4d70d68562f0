// Membership: the workers that registered with the coordinator and whether they are alive.
//
// Workers register (and repeat it as a heartbeat). A health thread checks every live worker's
// grpc.health.v1 "" status each `interval`; `failures` consecutive failed checks mark it DOWN.
// A DOWN worker that answers again (a network blip) is alive again; one that stays DOWN for five
// minutes is forgotten. A worker that re-registers with another id at the same address (a
// restart) replaces the old entry. `on_change` runs (outside the lock) whenever the set of live
// workers changes. Thread-safe.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "millipede/v1/worker.grpc.pb.h"

namespace mp {

struct WorkerRecord {
  millipede::v1::RegisterWorkerRequest registration;
  millipede::v1::WorkerState state = millipede::v1::WORKER_STATE_REGISTERED;
  uint64_t order = 0;  // registration order
  int failures = 0;
  absl::Time down_since;
  std::string last_error;
  std::shared_ptr<grpc::Channel> channel;
  bool alive() const {
    return state != millipede::v1::WORKER_STATE_DOWN &&
           state != millipede::v1::WORKER_STATE_DRAINING;
  }
};

class Membership {
 public:
  Membership(absl::Duration interval, int failures, std::function<void()> on_change);
  ~Membership();

  void Start();
  void Stop();

  void Register(const millipede::v1::RegisterWorkerRequest& request);
  // Live prefill workers, by preferred stage (-1 last) then registration order.
  std::vector<WorkerRecord> LiveWorkers() const;
  std::vector<WorkerRecord> All() const;
  // Checks these workers now (in parallel, `timeout` each) and marks the ones that do not
  // answer DOWN. Returns the ids that answered.
  std::vector<std::string> Probe(const std::vector<std::string>& ids, absl::Duration timeout);
  void MarkDown(const std::string& id, const std::string& why);
  // When the set of workers last changed.
  absl::Time last_change() const;

 private:
  void Loop();
  void Changed() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const absl::Duration interval_;
  const int failures_;
  const std::function<void()> on_change_;
  std::thread thread_;

  mutable absl::Mutex mu_;
  std::map<std::string, WorkerRecord> workers_ ABSL_GUARDED_BY(mu_);
  uint64_t next_order_ ABSL_GUARDED_BY(mu_) = 1;
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  bool changed_ ABSL_GUARDED_BY(mu_) = false;
  absl::Time last_change_ ABSL_GUARDED_BY(mu_) = absl::InfinitePast();
};

}  // namespace mp
