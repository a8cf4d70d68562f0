// ActivationLinks::Connect() proves every link before a stage reports itself connected: over
// kvtransfer's local backend and over UCX (TCP on loopback, as local clusters run), a chain of
// three stages connects only once each link has carried the link probe, and the activations sent
// afterwards arrive unchanged and in order (the probe is not taken for data). A middle stage
// sends its probe before it waits for its own, so a stage never waits for the whole chain before
// it. A previous stage that never sends, a probe that is lost on the way, and one whose bytes
// change on the way fail Connect() within connect_timeout (UNAVAILABLE, UNAVAILABLE, DATA_LOSS).
#include "worker/activation_links.h"

#include <gtest/gtest.h>

#include <cstring>
#include <future>
#include <random>

#include "absl/strings/match.h"
#include "common/status_matchers.h"
#include "runtime/backend.h"

namespace mp {
namespace {

constexpr int64_t kHidden = 24;
constexpr int64_t kMaxRows = 16;

class ActivationLinksTest : public ::testing::TestWithParam<std::string> {
 protected:
  // Links of stage `stage` of `stages`.
  std::unique_ptr<ActivationLinks> Make(int stage, int stages, absl::Duration connect_timeout,
                                        std::vector<kvtransfer::FaultRule> faults = {}) {
    ActivationLinkOptions o;
    o.kind = GetParam();
    if (o.kind == "ucx") {
      o.transport.ucx_transports = "tcp";
      o.transport.ucx_net_devices = "lo";
    }
    o.upstream = stage > 0;
    o.downstream = stage + 1 < stages;
    o.max_rows = kMaxRows;
    o.hidden = kHidden;
    o.send_buffers = 2;
    o.timeout = absl::Seconds(20);
    o.connect_timeout = connect_timeout;
    o.inject_receive_faults = std::move(faults);
    absl::StatusOr<std::unique_ptr<ActivationLinks>> links = ActivationLinks::Create(o, backend_);
    EXPECT_TRUE(links.ok()) << links.status();
    return links.ok() ? *std::move(links) : nullptr;
  }

  // Random activations [rows, hidden].
  Tensor Random(int64_t rows, uint32_t seed) {
    Tensor t = Tensor::Host({rows, kHidden}, backend_->compute_dtype());
    std::mt19937 rng(seed);
    std::uniform_real_distribution<float> u(-1, 1);
    float* p = t.data_as<float>();
    for (int64_t i = 0; i < t.numel(); ++i) p[i] = u(rng);
    return t;
  }

  std::shared_ptr<Backend> backend_ = NewCpuBackend();
};

TEST_P(ActivationLinksTest, ConnectProvesEachLinkAndDataFollowsUnchanged) {
  std::unique_ptr<ActivationLinks> s[3];
  for (int i = 0; i < 3; ++i) s[i] = Make(i, 3, absl::Seconds(20));
  ASSERT_TRUE(s[0] && s[1] && s[2]);
  // The last two stages connect first; stage 2's probe comes from stage 1, which sends it before
  // it waits for stage 0's.
  auto last = std::async(std::launch::async,
                         [&] { return s[2]->Connect(s[1]->downstream_endpoint(), ""); });
  auto middle = std::async(std::launch::async, [&] {
    return s[1]->Connect(s[0]->downstream_endpoint(), s[2]->upstream_endpoint());
  });
  ASSERT_EQ(last.wait_for(std::chrono::seconds(20)), std::future_status::ready)
      << "stage 2 waited for stage 0";
  MP_EXPECT_OK(last.get());
  EXPECT_EQ(middle.wait_for(std::chrono::milliseconds(300)), std::future_status::timeout)
      << "stage 1 connected without stage 0's probe";
  MP_ASSERT_OK(s[0]->Connect("", s[1]->upstream_endpoint()));
  MP_ASSERT_OK(middle.get());

  // Activations of two chunks go 0 -> 1 -> 2 unchanged, in order.
  for (uint32_t chunk = 0; chunk < 2; ++chunk) {
    const int64_t rows = chunk == 0 ? kMaxRows : 5;
    const Tensor sent = Random(rows, 10 + chunk);
    MP_ASSERT_OK(s[0]->Send(7, chunk, sent, rows, nullptr, nullptr));
    MP_ASSERT_OK_AND_ASSIGN(Tensor at1, s[1]->Receive(7, chunk, rows, nullptr, nullptr));
    ASSERT_EQ(std::memcmp(at1.data(), sent.data(), sent.nbytes()), 0) << "chunk " << chunk;
    MP_ASSERT_OK(s[1]->Send(7, chunk, at1, rows, nullptr, nullptr));
    MP_ASSERT_OK_AND_ASSIGN(Tensor at2, s[2]->Receive(7, chunk, rows, nullptr, nullptr));
    ASSERT_EQ(std::memcmp(at2.data(), sent.data(), sent.nbytes()), 0) << "chunk " << chunk;
  }
  MP_EXPECT_OK(s[0]->CheckSends());
  MP_EXPECT_OK(s[1]->CheckSends());
}

TEST_P(ActivationLinksTest, APreviousStageThatSendsNothingFailsConnectWithinTheTimeout) {
  std::unique_ptr<ActivationLinks> first = Make(0, 2, absl::Seconds(20));
  std::unique_ptr<ActivationLinks> second = Make(1, 2, absl::Milliseconds(500));
  ASSERT_TRUE(first && second);
  // `first` never connects, so it sends no probe.
  const absl::Time start = absl::Now();
  const absl::Status s = second->Connect(first->downstream_endpoint(), "");
  const absl::Duration took = absl::Now() - start;
  EXPECT_TRUE(absl::IsUnavailable(s)) << s;
  EXPECT_TRUE(absl::StrContains(s.message(),
                                "link probe from the previous stage did not arrive "
                                "within 500ms"))
      << s;
  EXPECT_GE(took, absl::Milliseconds(500));
  EXPECT_LT(took, absl::Seconds(10));
}

TEST_P(ActivationLinksTest, ALostOrChangedProbeFailsConnect) {
  struct Case {
    kvtransfer::FaultAction action;
    absl::StatusCode code;
    const char* says;
  };
  for (const Case& c :
       {Case{kvtransfer::FaultAction::kDrop, absl::StatusCode::kUnavailable, "did not arrive"},
        Case{kvtransfer::FaultAction::kCorrupt, absl::StatusCode::kDataLoss,
             "with other bytes than were sent"}}) {
    kvtransfer::FaultRule rule;
    rule.action = c.action;
    rule.kind = kvtransfer::TransferKind::kOther;  // the probe, not activations
    std::unique_ptr<ActivationLinks> first = Make(0, 2, absl::Seconds(20));
    std::unique_ptr<ActivationLinks> second = Make(1, 2, absl::Milliseconds(500), {rule});
    ASSERT_TRUE(first && second);
    MP_ASSERT_OK(first->Connect("", second->upstream_endpoint()));
    const absl::Status s = second->Connect(first->downstream_endpoint(), "");
    EXPECT_EQ(s.code(), c.code) << s;
    EXPECT_TRUE(absl::StrContains(s.message(), c.says)) << s;
  }
}

INSTANTIATE_TEST_SUITE_P(Transports, ActivationLinksTest, ::testing::Values("local", "ucx"),
                         [](const auto& info) { return info.param; });

}  // namespace
}  // namespace mp
