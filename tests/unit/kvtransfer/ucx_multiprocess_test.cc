// The ucx backend between two processes (fork) over TCP on 127.0.0.1 and over shared memory.
// Descriptors travel through pipes, as they would through the coordinator.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

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

const std::vector<size_t> kSizes = {1, 1000, 65536, 1 << 20, 16 << 20};

TransportOptions TcpOptions() {
  TransportOptions o;
  o.ucx_transports = "tcp";
  o.ucx_net_devices = "lo";
  return o;
}

TransportOptions ShmOptions() {
  TransportOptions o;
  o.ucx_transports = "sm";
  o.ucx_keepalive_interval = absl::Milliseconds(200);
  return o;
}

// Child side of the exchange: receives kSizes payloads seeded 100+i from "parent", checks them
// against its own regeneration, then sends payloads seeded 200+i back. Exit code 0 = success.
int EchoChild(int rd, int wr, TransportOptions options) {
  auto t = NewTransport("ucx", options);
  if (!t.ok()) return 10;
  std::string mine = *(*t)->LocalEndpoint(), theirs;
  if (!WriteString(wr, mine) || !ReadString(rd, &theirs)) return 11;
  if (!(*t)->Connect("parent", theirs).ok()) return 12;
  size_t total = 0;
  for (size_t n : kSizes) total += n;
  std::vector<unsigned char> in(total), out(total), expected(total);
  if (!(*t)->RegisterMemory({in.data(), in.size()}).ok()) return 13;
  if (!(*t)->RegisterMemory({out.data(), out.size()}).ok()) return 13;
  TransferBatch recvs, sends;
  size_t off = 0;
  for (size_t i = 0; i < kSizes.size(); ++i) {
    recvs.ops.push_back(TransferOp::Recv("parent", Tag(1, i), in.data() + off, kSizes[i]));
    FillRandom(expected.data() + off, kSizes[i], 100 + i);
    FillRandom(out.data() + off, kSizes[i], 200 + i);
    sends.ops.push_back(TransferOp::Send("parent", Tag(2, i), out.data() + off, kSizes[i]));
    off += kSizes[i];
  }
  auto r = (*t)->Submit(recvs);
  if (!r.ok()) return 14;
  if (!(*t)->Wait(*r, absl::Now() + absl::Seconds(60)).ok()) return 15;
  if (FirstDifference(in.data(), expected.data(), total) != -1) return 16;
  auto s = (*t)->Submit(sends);
  if (!s.ok()) return 17;
  if (!(*t)->Wait(*s, absl::Now() + absl::Seconds(60)).ok()) return 18;
  // Stay up until the parent has its data.
  char done = 0;
  ReadAll(rd, &done, 1);
  return 0;
}

void RunExchange(const TransportOptions& options) {
  Child child = Fork([&](int rd, int wr) { return EchoChild(rd, wr, options); });
  ASSERT_GT(child.pid, 0);
  MP_ASSERT_OK_AND_ASSIGN(auto t, NewTransport("ucx", options));
  std::string theirs;
  ASSERT_TRUE(ReadString(child.from_child, &theirs));
  MP_ASSERT_OK_AND_ASSIGN(std::string mine, t->LocalEndpoint());
  ASSERT_TRUE(WriteString(child.to_child, mine));
  MP_ASSERT_OK(t->Connect("child", theirs));
  size_t total = 0;
  for (size_t n : kSizes) total += n;
  std::vector<unsigned char> out(total), in(total), expected(total);
  MP_ASSERT_OK(t->RegisterMemory({out.data(), out.size()}));
  MP_ASSERT_OK(t->RegisterMemory({in.data(), in.size()}));
  TransferBatch sends, recvs;
  size_t off = 0;
  for (size_t i = 0; i < kSizes.size(); ++i) {
    FillRandom(out.data() + off, kSizes[i], 100 + i);
    FillRandom(expected.data() + off, kSizes[i], 200 + i);
    sends.ops.push_back(TransferOp::Send("child", Tag(1, i), out.data() + off, kSizes[i]));
    recvs.ops.push_back(TransferOp::Recv("child", Tag(2, i), in.data() + off, kSizes[i]));
    off += kSizes[i];
  }
  // Post receives first: the child sends only after it has checked our data.
  MP_ASSERT_OK_AND_ASSIGN(auto r, t->Submit(recvs));
  MP_ASSERT_OK_AND_ASSIGN(auto s, t->Submit(sends));
  MP_ASSERT_OK(t->Wait(s, absl::Now() + absl::Seconds(60)));
  MP_ASSERT_OK(t->Wait(r, absl::Now() + absl::Seconds(60)));
  EXPECT_EQ(FirstDifference(in.data(), expected.data(), total), -1);
  ASSERT_TRUE(WriteAll(child.to_child, "x", 1));
  EXPECT_EQ(WaitExit(child.pid), 0) << "child exit code (see EchoChild)";
  EXPECT_EQ(t->Stats().bytes_sent, total);
  EXPECT_EQ(t->Stats().bytes_received, total);
  close(child.to_child);
  close(child.from_child);
}

// The child connects and then idles until it is killed.
int IdleChild(int rd, int wr, TransportOptions options) {
  auto t = NewTransport("ucx", options);
  if (!t.ok()) return 10;
  std::string mine = *(*t)->LocalEndpoint(), theirs;
  if (!WriteString(wr, mine) || !ReadString(rd, &theirs)) return 11;
  if (!(*t)->Connect("parent", theirs).ok()) return 12;
  char c;
  ReadAll(rd, &c, 1);  // blocks until killed
  return 0;
}

void RunKill(const TransportOptions& options) {
  Child child = Fork([&](int rd, int wr) { return IdleChild(rd, wr, options); });
  ASSERT_GT(child.pid, 0);
  MP_ASSERT_OK_AND_ASSIGN(auto t, NewTransport("ucx", options));
  std::string theirs;
  ASSERT_TRUE(ReadString(child.from_child, &theirs));
  MP_ASSERT_OK_AND_ASSIGN(std::string mine, t->LocalEndpoint());
  ASSERT_TRUE(WriteString(child.to_child, mine));
  MP_ASSERT_OK(t->Connect("child", theirs));
  std::vector<unsigned char> buf(1 << 20);
  MP_ASSERT_OK(t->RegisterMemory({buf.data(), buf.size()}));
  MP_ASSERT_OK_AND_ASSIGN(auto r,
                          t->Submit({{TransferOp::Recv("child", Tag(3, 0), buf.data(), 4096)}}));
  // Let the connection settle, then make sure the receive is really waiting.
  KV_EXPECT_ERROR(t->Wait(r, absl::Now() + absl::Milliseconds(300)),
                  absl::StatusCode::kDeadlineExceeded, "in progress");
  const absl::Time start = absl::Now();
  ASSERT_EQ(kill(child.pid, SIGKILL), 0);
  // The child stays a zombie (not reaped) while we wait: detection must not depend on reaping.
  KV_EXPECT_ERROR(t->Wait(r, absl::Now() + absl::Seconds(15)), absl::StatusCode::kUnavailable,
                  "'child' is gone");
  const absl::Duration took = absl::Now() - start;
  EXPECT_LT(took, absl::Seconds(15));
  std::cerr << "peer loss noticed after " << absl::FormatDuration(took) << "\n";
  KV_EXPECT_ERROR(t->Submit({{TransferOp::Send("child", Tag(3, 1), buf.data(), 16)}}),
                  absl::StatusCode::kUnavailable, "gone");
  EXPECT_EQ(WaitExit(child.pid), 128 + SIGKILL);
  close(child.to_child);
  close(child.from_child);
}

TEST(UcxMultiProcessTest, TransfersBetweenProcessesOverTcpLoopback) { RunExchange(TcpOptions()); }

TEST(UcxMultiProcessTest, TransfersBetweenProcessesOverSharedMemory) { RunExchange(ShmOptions()); }

TEST(UcxMultiProcessTest, KilledPeerIsUnavailableOverTcp) { RunKill(TcpOptions()); }

TEST(UcxMultiProcessTest, KilledPeerIsUnavailableOverSharedMemory) { RunKill(ShmOptions()); }

}  // namespace
}  // namespace mp::kvtransfer
