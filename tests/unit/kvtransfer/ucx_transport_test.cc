// ucx-specific behaviour: which UCX transports a link uses, idle cost of the progress thread,
// connecting to a peer that no longer exists.
#include "kvtransfer/ucx_transport.h"

#include <gtest/gtest.h>
#include <time.h>

#include "common/status.h"
#include "common/status_matchers.h"
#include "kvtransfer/descriptor.h"
#include "tests/unit/kvtransfer/transfer_test_util.h"

namespace mp::kvtransfer {
namespace {

using testing::FillRandom;
using testing::FirstDifference;
using testing::Tag;

TransportOptions Options(const std::string& tls) {
  TransportOptions o;
  o.ucx_transports = tls;
  if (tls == "tcp") o.ucx_net_devices = "lo";
  return o;
}

// Moves one payload a -> b so that wireup has picked its lanes.
void Exchange(UcxTransport& a, UcxTransport& b, size_t bytes) {
  std::vector<unsigned char> src(bytes), dst(bytes);
  FillRandom(src.data(), bytes, bytes);
  MP_ASSERT_OK_AND_ASSIGN(RegionId rs, a.RegisterMemory({src.data(), bytes}));
  MP_ASSERT_OK_AND_ASSIGN(RegionId rd, b.RegisterMemory({dst.data(), bytes}));
  MP_ASSERT_OK_AND_ASSIGN(auto r,
                          b.Submit({{TransferOp::Recv("a", Tag(1, 0), dst.data(), bytes)}}));
  MP_ASSERT_OK_AND_ASSIGN(auto s,
                          a.Submit({{TransferOp::Send("b", Tag(1, 0), src.data(), bytes)}}));
  MP_ASSERT_OK(b.Wait(r, absl::Now() + absl::Seconds(30)));
  MP_ASSERT_OK(a.Wait(s, absl::Now() + absl::Seconds(30)));
  EXPECT_EQ(FirstDifference(src.data(), dst.data(), bytes), -1);
  a.Release(s);
  b.Release(r);
  MP_ASSERT_OK(a.DeregisterMemory(rs));
  MP_ASSERT_OK(b.DeregisterMemory(rd));
}

TEST(UcxTransportTest, TcpLinksUseTcpAndSharedMemoryLinksUseSharedMemory) {
  for (const std::string tls : {"tcp", "sm"}) {
    MP_ASSERT_OK_AND_ASSIGN(auto a, UcxTransport::Create(Options(tls)));
    MP_ASSERT_OK_AND_ASSIGN(auto b, UcxTransport::Create(Options(tls)));
    MP_ASSERT_OK(testing::ConnectPair(*a, *b));
    Exchange(*a, *b, 4 << 20);
    MP_ASSERT_OK_AND_ASSIGN(std::string link, a->DescribeLink("b"));
    MP_ASSERT_OK_AND_ASSIGN(std::string lanes, a->LinkLanes("b"));
    if (tls == "tcp") {
      EXPECT_NE(link.find("tcp/lo"), std::string::npos) << link;
      EXPECT_EQ(link.find("posix/"), std::string::npos) << link;
      EXPECT_EQ(lanes, "tcp/lo") << link;
    } else {
      EXPECT_EQ(lanes.find("tcp/"), std::string::npos) << lanes;
      EXPECT_TRUE(lanes.find("posix/") != std::string::npos ||
                  lanes.find("sysv/") != std::string::npos)
          << lanes;
      EXPECT_EQ(link.find("tcp/"), std::string::npos) << link;
      EXPECT_TRUE(link.find("posix/") != std::string::npos ||
                  link.find("sysv/") != std::string::npos)
          << link;
    }
    KV_EXPECT_ERROR(a->DescribeLink("nobody"), absl::StatusCode::kNotFound, "'nobody'");
  }
}

TEST(UcxTransportTest, IdleTransportsSleep) {
  MP_ASSERT_OK_AND_ASSIGN(auto a, UcxTransport::Create(Options("tcp")));
  MP_ASSERT_OK_AND_ASSIGN(auto b, UcxTransport::Create(Options("tcp")));
  MP_ASSERT_OK(testing::ConnectPair(*a, *b));
  Exchange(*a, *b, 1 << 20);
  absl::SleepFor(absl::Milliseconds(100));
  timespec t0, t1;
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t0);
  absl::SleepFor(absl::Seconds(1));
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t1);
  const double cpu = (t1.tv_sec - t0.tv_sec) + 1e-9 * (t1.tv_nsec - t0.tv_nsec);
  // Two spinning progress threads would burn ~2 s of CPU in this second.
  EXPECT_LT(cpu, 0.1) << "CPU seconds used by two idle transports in 1 s of wall time";
}

TEST(UcxTransportTest, ConnectingToADestroyedPeerEndsUnavailable) {
  MP_ASSERT_OK_AND_ASSIGN(auto a, UcxTransport::Create(Options("tcp")));
  std::string ghost;
  {
    MP_ASSERT_OK_AND_ASSIGN(auto b, UcxTransport::Create(Options("tcp")));
    MP_ASSERT_OK_AND_ASSIGN(ghost, b->LocalEndpoint());
  }
  std::vector<unsigned char> buf(4096);
  MP_ASSERT_OK(a->RegisterMemory({buf.data(), buf.size()}));
  absl::Status connect = a->Connect("ghost", ghost);
  if (connect.ok()) {
    // Wireup runs in the background: the failure shows on the first transfer.
    const absl::Time start = absl::Now();
    MP_ASSERT_OK_AND_ASSIGN(auto s,
                            a->Submit({{TransferOp::Send("ghost", Tag(1, 0), buf.data(), 4096)}}));
    KV_EXPECT_ERROR(a->Wait(s, absl::Now() + absl::Seconds(20)), absl::StatusCode::kUnavailable,
                    "'ghost' is gone");
    EXPECT_LT(absl::Now() - start, absl::Seconds(20));
  } else {
    EXPECT_EQ(connect.code(), absl::StatusCode::kUnavailable) << connect;
  }
}

TEST(UcxTransportTest, DescriptorCarriesTheProcessScope) {
  MP_ASSERT_OK_AND_ASSIGN(auto a, UcxTransport::Create(Options("tcp")));
  MP_ASSERT_OK_AND_ASSIGN(std::string d, a->LocalEndpoint());
  MP_ASSERT_OK_AND_ASSIGN(EndpointDescriptor parsed, DecodeDescriptor(d, "ucx"));
  EXPECT_EQ(parsed.pid, static_cast<uint32_t>(getpid()));
  EXPECT_EQ(parsed.scope, ProcessScope());
  EXPECT_FALSE(parsed.scope.empty());
  EXPECT_FALSE(parsed.payload.empty());
  EXPECT_TRUE(ProcessAlive(static_cast<uint32_t>(getpid())));
}

}  // namespace
}  // namespace mp::kvtransfer
