// Supervisor: starts child processes of this binary, restarts the ones that exit while it is
// running, and stops them all (SIGTERM, then SIGKILL after a grace period).
//
// Children run in their own process group (a terminal's Ctrl-C reaches only the supervisor,
// which then stops them in order) and get SIGTERM when the supervisor dies. Call from one
// thread; SIGCHLD must be blocked (BlockShutdownSignals(true)) so that Reap() runs on demand.
#pragma once

#include <sys/types.h>

#include <deque>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/time/time.h"

namespace mp::cli {

struct ChildSpec {
  std::string name;               // "coordinator", "worker 0", ...
  std::vector<std::string> args;  // arguments after the binary
};

class Supervisor {
 public:
  // A child restarted more than `max_restarts` times within a minute makes Reap() fail.
  Supervisor(std::string binary, int max_restarts);

  int Add(ChildSpec spec);
  absl::Status Start(int child);
  // Reaps children that exited; restarts them (after a short pause) unless stopping. Returns
  // FAILED_PRECONDITION when one keeps failing.
  absl::Status Reap();
  // SIGTERM to every child (in reverse order of Add), SIGKILL to those still running after
  // `grace`; waits for all.
  void StopAll(absl::Duration grace);
  pid_t pid(int child) const { return children_[child].pid; }
  int size() const { return static_cast<int>(children_.size()); }

 private:
  struct Child {
    ChildSpec spec;
    pid_t pid = -1;
    std::deque<absl::Time> restarts;
  };

  const std::string binary_;
  const int max_restarts_;
  std::vector<Child> children_;
  bool stopping_ = false;
};

// A free TCP port on 127.0.0.1 (bound and released; the caller should use it at once).
int PickFreePort();

}  // namespace mp::cli
