#include "common/signals.h"

#include <signal.h>

#include <cerrno>
#include <ctime>

namespace mp {
namespace {

sigset_t ShutdownSet(bool with_sigchld) {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  if (with_sigchld) sigaddset(&set, SIGCHLD);
  return set;
}

bool g_with_sigchld = false;

}  // namespace

void BlockShutdownSignals(bool with_sigchld) {
  g_with_sigchld = with_sigchld;
  sigset_t set = ShutdownSet(with_sigchld);
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
}

int WaitForSignal(absl::Duration timeout) {
  sigset_t set = ShutdownSet(g_with_sigchld);
  const timespec ts = absl::ToTimespec(timeout);
  while (true) {
    const int sig = sigtimedwait(&set, nullptr, &ts);
    if (sig > 0) return sig;
    if (errno == EINTR) continue;
    return 0;
  }
}

}  // namespace mp
