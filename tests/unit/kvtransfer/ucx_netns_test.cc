// The ucx backend between two processes in two network namespaces joined by a veth pair, so
// that the bytes really cross a network interface other than loopback.
//
// Needs root (or CAP_SYS_ADMIN + CAP_NET_ADMIN) and iproute2. Where namespaces cannot be
// created the test FAILS and says why; it is registered under the ctest label "netns".
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sched.h>
#include <signal.h>
#include <sys/mount.h>
#include <unistd.h>

#include <cstdio>

#include "absl/strings/str_cat.h"
#include "common/status.h"
#include "common/status_matchers.h"
#include "kvtransfer/transport_factory.h"
#include "tests/unit/kvtransfer/process_test_util.h"
#include "tests/unit/kvtransfer/transfer_test_util.h"

namespace mp::kvtransfer {
namespace {

using testing::Child;
using testing::FillRandom;
using testing::FirstDifference;
using testing::Fork;
using testing::ReadAll;
using testing::ReadString;
using testing::Tag;
using testing::WaitExit;
using testing::WriteAll;
using testing::WriteString;

// Runs a shell command; returns its exit status and appends its output to `log`.
int Shell(const std::string& cmd, std::string* log) {
  FILE* p = popen((cmd + " 2>&1").c_str(), "r");
  if (p == nullptr) return -1;
  char buf[256];
  while (fgets(buf, sizeof(buf), p) != nullptr) log->append(buf);
  const int status = pclose(p);
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

// Two namespaces "<prefix>a" / "<prefix>b" with veth ends 10.231.0.1 / 10.231.0.2.
class NetnsPair {
 public:
  NetnsPair() {
    const std::string id = std::to_string(getpid() % 100000);
    ns_[0] = "mpkv" + id + "a";
    ns_[1] = "mpkv" + id + "b";
    dev_[0] = "mpkva" + id;  // interface names: at most 15 characters
    dev_[1] = "mpkvb" + id;
  }
  ~NetnsPair() {
    std::string ignored;
    for (const std::string& ns : ns_) Shell("ip netns del " + ns, &ignored);
  }

  // Creates everything; on failure returns false with the reason in `error`.
  bool Create(std::string* error) {
    std::string log;
    if (Shell("ip netns add " + ns_[0], &log) != 0) {
      *error = "`ip netns add` failed (this test needs root or CAP_SYS_ADMIN and iproute2): " + log;
      return false;
    }
    const std::vector<std::string> cmds = {
        "ip netns add " + ns_[1],
        "ip link add " + dev_[0] + " type veth peer name " + dev_[1],
        "ip link set " + dev_[0] + " netns " + ns_[0],
        "ip link set " + dev_[1] + " netns " + ns_[1],
        "ip -n " + ns_[0] + " addr add 10.231.0.1/24 dev " + dev_[0],
        "ip -n " + ns_[1] + " addr add 10.231.0.2/24 dev " + dev_[1],
        "ip -n " + ns_[0] + " link set " + dev_[0] + " up",
        "ip -n " + ns_[1] + " link set " + dev_[1] + " up",
        "ip -n " + ns_[0] + " link set lo up",
        "ip -n " + ns_[1] + " link set lo up",
    };
    for (const std::string& cmd : cmds) {
      if (Shell(cmd, &log) != 0) {
        *error = "`" + cmd + "` failed: " + log;
        return false;
      }
    }
    return true;
  }

  const std::string& ns(int i) const { return ns_[i]; }
  const std::string& dev(int i) const { return dev_[i]; }

 private:
  std::string ns_[2];
  std::string dev_[2];
};

// Joins network namespace `ns` the way `ip netns exec` does: UCX lists interfaces through
// /sys/class/net, so /sys is remounted in a private mount namespace to show the new ones.
bool EnterNetns(const std::string& ns) {
  const int fd = open(("/var/run/netns/" + ns).c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return false;
  const bool joined = setns(fd, CLONE_NEWNET) == 0;
  close(fd);
  if (!joined || unshare(CLONE_NEWNS) != 0) return false;
  if (mount("", "/", nullptr, MS_SLAVE | MS_REC, nullptr) != 0) return false;
  umount2("/sys", MNT_DETACH);
  return mount(ns.c_str(), "/sys", "sysfs", 0, nullptr) == 0;
}

const std::vector<size_t> kSizes = {1, 4096, 1 << 20, 8 << 20};

// One side: enters its namespace, swaps descriptors through the parent, sends its payloads
// (seeded by `self`) and checks the peer's (seeded by 1 - self). Exit code 0 = success.
int Side(int rd, int wr, const NetnsPair& net, int self) {
  if (!EnterNetns(net.ns(self))) return 20;
  TransportOptions o;
  o.ucx_transports = "tcp";
  o.ucx_net_devices = net.dev(self);
  auto t = NewTransport("ucx", o);
  if (!t.ok()) return 21;
  std::string theirs;
  if (!WriteString(wr, *(*t)->LocalEndpoint()) || !ReadString(rd, &theirs)) return 22;
  if (!(*t)->Connect("peer", theirs).ok()) return 23;
  size_t total = 0;
  for (size_t n : kSizes) total += n;
  std::vector<unsigned char> out(total), in(total), expected(total);
  if (!(*t)->RegisterMemory({out.data(), total}).ok()) return 24;
  if (!(*t)->RegisterMemory({in.data(), total}).ok()) return 24;
  TransferBatch batch;
  size_t off = 0;
  for (size_t i = 0; i < kSizes.size(); ++i) {
    FillRandom(out.data() + off, kSizes[i], 1000 * self + i);
    FillRandom(expected.data() + off, kSizes[i], 1000 * (1 - self) + i);
    batch.ops.push_back(TransferOp::Send("peer", Tag(self, i), out.data() + off, kSizes[i]));
    batch.ops.push_back(TransferOp::Recv("peer", Tag(1 - self, i), in.data() + off, kSizes[i]));
    off += kSizes[i];
  }
  auto h = (*t)->Submit(batch);
  if (!h.ok()) return 25;
  if (!(*t)->Wait(*h, absl::Now() + absl::Seconds(60)).ok()) return 26;
  if (FirstDifference(in.data(), expected.data(), total) != -1) return 27;
  // Side 1 then waits for a receive that never comes: it must see side 0 die.
  if (self == 1) {
    if (!WriteAll(wr, "r", 1)) return 28;
    auto r = (*t)->Submit({{TransferOp::Recv("peer", Tag(9, 9), in.data(), 16)}});
    if (!r.ok()) return 29;
    absl::Status s = (*t)->Wait(*r, absl::Now() + absl::Seconds(30));
    return absl::IsUnavailable(s) ? 0 : 30;
  }
  char c;
  ReadAll(rd, &c, 1);  // side 0 idles until it is killed
  return 0;
}

TEST(UcxNetnsTest, TransfersAcrossAVethPairAndNoticesAKilledPeer) {
  NetnsPair net;
  std::string error;
  ASSERT_TRUE(net.Create(&error)) << error;

  Child side[2];
  for (int i = 0; i < 2; ++i) {
    side[i] = Fork([&, i](int rd, int wr) { return Side(rd, wr, net, i); });
    ASSERT_GT(side[i].pid, 0);
  }
  std::string d0, d1;
  ASSERT_TRUE(ReadString(side[0].from_child, &d0));
  ASSERT_TRUE(ReadString(side[1].from_child, &d1));
  ASSERT_TRUE(WriteString(side[0].to_child, d1));
  ASSERT_TRUE(WriteString(side[1].to_child, d0));
  // Side 1 reports when its transfers are done and it waits on side 0.
  char ready = 0;
  ASSERT_TRUE(ReadAll(side[1].from_child, &ready, 1)) << "side 1 failed early";
  absl::SleepFor(absl::Milliseconds(200));
  ASSERT_EQ(kill(side[0].pid, SIGKILL), 0);
  EXPECT_EQ(WaitExit(side[1].pid), 0) << "side 1 exit code (see Side())";
  EXPECT_EQ(WaitExit(side[0].pid), 128 + SIGKILL);
  for (const Child& c : side) {
    close(c.to_child);
    close(c.from_child);
  }
}

}  // namespace
}  // namespace mp::kvtransfer
