// Helpers for tests that fork peer processes: pipes that carry descriptors, fork/wait.
#pragma once

#include <sys/wait.h>
#include <unistd.h>

#include <cstdint>
#include <string>

namespace mp::kvtransfer::testing {

inline bool WriteAll(int fd, const void* p, size_t n) {
  const char* c = static_cast<const char*>(p);
  while (n > 0) {
    ssize_t k = write(fd, c, n);
    if (k <= 0) return false;
    c += k;
    n -= static_cast<size_t>(k);
  }
  return true;
}

inline bool ReadAll(int fd, void* p, size_t n) {
  char* c = static_cast<char*>(p);
  while (n > 0) {
    ssize_t k = read(fd, c, n);
    if (k <= 0) return false;
    c += k;
    n -= static_cast<size_t>(k);
  }
  return true;
}

inline bool WriteString(int fd, const std::string& s) {
  const uint64_t n = s.size();
  return WriteAll(fd, &n, sizeof(n)) && WriteAll(fd, s.data(), s.size());
}

inline bool ReadString(int fd, std::string* s) {
  uint64_t n = 0;
  if (!ReadAll(fd, &n, sizeof(n)) || n > (1 << 20)) return false;
  s->resize(n);
  return ReadAll(fd, s->data(), n);
}

struct Child {
  pid_t pid = -1;
  int to_child = -1;
  int from_child = -1;
};

// Forks; the child runs `body(read_fd, write_fd)` and exits with its return value.
template <typename Body>
Child Fork(Body body) {
  int down[2], up[2];
  if (pipe(down) != 0 || pipe(up) != 0) return {};
  pid_t pid = fork();
  if (pid == 0) {
    close(down[1]);
    close(up[0]);
    const int code = body(down[0], up[1]);
    _exit(code);
  }
  close(down[0]);
  close(up[1]);
  return Child{pid, down[1], up[0]};
}

inline int WaitExit(pid_t pid) {
  int status = 0;
  if (waitpid(pid, &status, 0) != pid) return -1;
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

}  // namespace mp::kvtransfer::testing
