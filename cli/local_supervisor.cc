#include "cli/local_supervisor.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <random>

#include "absl/strings/str_cat.h"

namespace mp::cli {

Supervisor::Supervisor(std::string binary, int max_restarts)
    : binary_(std::move(binary)), max_restarts_(max_restarts) {}

int Supervisor::Add(ChildSpec spec) {
  children_.push_back(Child{std::move(spec)});
  return static_cast<int>(children_.size()) - 1;
}

absl::Status Supervisor::Start(int index) {
  Child& c = children_[index];
  std::vector<std::string> argv = {binary_};
  argv.insert(argv.end(), c.spec.args.begin(), c.spec.args.end());
  std::vector<char*> cargv;
  for (std::string& a : argv) cargv.push_back(a.data());
  cargv.push_back(nullptr);
  const pid_t parent = getpid();
  const pid_t pid = fork();
  if (pid < 0) return absl::InternalError(absl::StrCat("fork: ", strerror(errno)));
  if (pid == 0) {
    setpgid(0, 0);
    prctl(PR_SET_PDEATHSIG, SIGTERM);
    if (getppid() != parent) _exit(1);  // the supervisor died before prctl
    sigset_t all;
    sigfillset(&all);
    sigprocmask(SIG_UNBLOCK, &all, nullptr);
    execv(binary_.c_str(), cargv.data());
    std::fprintf(stderr, "millipede local: exec %s: %s\n", binary_.c_str(), strerror(errno));
    _exit(127);
  }
  setpgid(pid, pid);
  c.pid = pid;
  return absl::OkStatus();
}

absl::Status Supervisor::Reap() {
  while (true) {
    int status = 0;
    const pid_t pid = waitpid(-1, &status, WNOHANG);
    if (pid <= 0) return absl::OkStatus();
    for (size_t i = 0; i < children_.size(); ++i) {
      Child& c = children_[i];
      if (c.pid != pid) continue;
      c.pid = -1;
      const std::string how = WIFEXITED(status)
                                  ? absl::StrCat("exited with code ", WEXITSTATUS(status))
                                  : absl::StrCat("was killed by signal ", WTERMSIG(status));
      if (stopping_) break;
      const absl::Time now = absl::Now();
      while (!c.restarts.empty() && now - c.restarts.front() > absl::Minutes(1)) {
        c.restarts.pop_front();
      }
      if (static_cast<int>(c.restarts.size()) >= max_restarts_) {
        return absl::FailedPreconditionError(absl::StrCat(c.spec.name, " ", how,
                                                          " and was restarted ", c.restarts.size(),
                                                          " times within a minute; giving up"));
      }
      c.restarts.push_back(now);
      std::fprintf(stderr, "millipede local: %s (pid %d) %s; restarting it\n", c.spec.name.c_str(),
                   pid, how.c_str());
      absl::SleepFor(absl::Milliseconds(200 * static_cast<int64_t>(c.restarts.size())));
      absl::Status started = Start(static_cast<int>(i));
      if (!started.ok()) return started;
      break;
    }
  }
}

void Supervisor::StopAll(absl::Duration grace) {
  stopping_ = true;
  for (auto it = children_.rbegin(); it != children_.rend(); ++it) {
    if (it->pid > 0) kill(it->pid, SIGTERM);
  }
  const absl::Time end = absl::Now() + grace;
  while (true) {
    bool any = false;
    for (Child& c : children_) {
      if (c.pid <= 0) continue;
      int status = 0;
      const pid_t r = waitpid(c.pid, &status, WNOHANG);
      if (r == c.pid || (r < 0 && errno == ECHILD)) {
        c.pid = -1;
      } else {
        any = true;
      }
    }
    if (!any) return;
    if (absl::Now() >= end) break;
    absl::SleepFor(absl::Milliseconds(50));
  }
  for (Child& c : children_) {
    if (c.pid <= 0) continue;
    std::fprintf(stderr, "millipede local: %s (pid %d) did not stop in time; killing it\n",
                 c.spec.name.c_str(), c.pid);
    kill(c.pid, SIGKILL);
    waitpid(c.pid, nullptr, 0);
    c.pid = -1;
  }
}

namespace {

// Binds 127.0.0.1:`port` (0: any) and returns the port bound, or 0.
int BindLoopback(int port) {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return 0;
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = htons(static_cast<uint16_t>(port));
  int bound = 0;
  if (bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0) {
    socklen_t len = sizeof(addr);
    if (getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) == 0) {
      bound = ntohs(addr.sin_port);
    }
  }
  close(fd);
  return bound;
}

// The low end of the kernel's ephemeral port range (32768 when it cannot be read).
int EphemeralLow() {
  int low = 32768, high = 60999;
  if (std::FILE* f = std::fopen("/proc/sys/net/ipv4/ip_local_port_range", "r")) {
    if (std::fscanf(f, "%d %d", &low, &high) != 2) low = 32768;
    std::fclose(f);
  }
  return low;
}

}  // namespace

int PickFreePort() {
  // Below the ephemeral range: a port handed out for port 0 (another process's listener or the
  // source port of an outgoing connection) can never take it between this check and the
  // coordinator's bind, which a port from the ephemeral range could.
  const int low = EphemeralLow();
  if (low > 11024) {
    std::random_device seed;
    std::mt19937 rng(seed());
    std::uniform_int_distribution<int> dist(10000, low - 1);
    for (int attempt = 0; attempt < 64; ++attempt) {
      const int port = BindLoopback(dist(rng));
      if (port != 0) return port;
    }
  }
  return BindLoopback(0);
}

}  // namespace mp::cli
