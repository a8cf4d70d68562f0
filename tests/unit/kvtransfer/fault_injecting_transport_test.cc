#include "kvtransfer/fault_injecting_transport.h"

#include <gtest/gtest.h>

#include "common/status.h"
#include "common/status_matchers.h"
#include "kvtransfer/transport_factory.h"
#include "tests/unit/kvtransfer/transfer_test_util.h"

namespace mp::kvtransfer {
namespace {

using testing::AllCpuBackends;
using testing::BackendConfig;
using testing::FillRandom;
using testing::FirstDifference;
using testing::RegisteredBuffer;
using testing::Tag;

constexpr size_t kBytes = 64 * 1024;
constexpr absl::Duration kWait = absl::Seconds(20);

// a (plain) sends to b (wrapped) and the other way round.
class FaultInjectionTest : public ::testing::TestWithParam<BackendConfig> {
 protected:
  void SetUp() override {
    MP_ASSERT_OK_AND_ASSIGN(a_, NewTransport(GetParam().kind, GetParam().options));
    MP_ASSERT_OK_AND_ASSIGN(auto inner, NewTransport(GetParam().kind, GetParam().options));
    b_ = std::make_unique<FaultInjectingTransport>(std::move(inner));
    MP_ASSERT_OK(testing::ConnectPair(*a_, *b_));
    a_buf_ = std::make_unique<RegisteredBuffer>(a_.get(), 4 * kBytes);
    b_buf_ = std::make_unique<RegisteredBuffer>(b_.get(), 4 * kBytes);
    MP_ASSERT_OK(a_buf_->Register());
    MP_ASSERT_OK(b_buf_->Register());
    FillRandom(a_buf_->data(), 4 * kBytes, 1);
    FillRandom(b_buf_->data(), 4 * kBytes, 2);
  }
  void TearDown() override {
    a_buf_.reset();
    b_buf_.reset();
  }

  // a -> b of slot `i` (kBytes at offset i * kBytes on both sides).
  TransferHandle SendFromA(TransferTag tag, int i) {
    auto h = a_->Submit({{TransferOp::Send("b", tag, a_buf_->data() + i * kBytes, kBytes)}});
    EXPECT_TRUE(h.ok()) << h.status();
    return h.value_or(TransferHandle{});
  }
  TransferHandle RecvAtB(TransferTag tag, int i) {
    auto h = b_->Submit({{TransferOp::Recv("a", tag, b_buf_->data() + i * kBytes, kBytes)}});
    EXPECT_TRUE(h.ok()) << h.status();
    return h.value_or(TransferHandle{});
  }
  int64_t Diff(int i) {
    return FirstDifference(a_buf_->data() + i * kBytes, b_buf_->data() + i * kBytes, kBytes);
  }

  std::unique_ptr<Transport> a_;
  std::unique_ptr<FaultInjectingTransport> b_;
  std::unique_ptr<RegisteredBuffer> a_buf_, b_buf_;
};

TEST_P(FaultInjectionTest, DroppedSendReportsSuccessButNothingArrives) {
  // Wrap the sender side this time: b drops its next send to a.
  FaultRule rule;
  rule.action = FaultAction::kDrop;
  rule.direction = TransferDirection::kSend;
  MP_ASSERT_OK(b_->AddRule(rule));
  auto r = a_->Submit({{TransferOp::Recv("b", Tag(1, 0), a_buf_->data(), kBytes)}});
  MP_ASSERT_OK(r);
  auto s1 = b_->Submit({{TransferOp::Send("a", Tag(1, 0), b_buf_->data(), kBytes)}});
  MP_ASSERT_OK(s1);
  MP_EXPECT_OK(b_->Wait(*s1, absl::Now() + kWait));
  KV_EXPECT_ERROR(a_->Wait(*r, absl::Now() + absl::Milliseconds(150)),
                  absl::StatusCode::kDeadlineExceeded, "in progress");
  EXPECT_EQ(b_->Counts().dropped, 1u);
  EXPECT_EQ(b_->inner().Stats().sends_done, 0u);  // never reached the inner transport
  // The rule is used up: the retry arrives.
  auto s2 = b_->Submit({{TransferOp::Send("a", Tag(1, 0), b_buf_->data(), kBytes)}});
  MP_ASSERT_OK(s2);
  MP_ASSERT_OK(a_->Wait(*r, absl::Now() + kWait));
  MP_ASSERT_OK(b_->Wait(*s2, absl::Now() + kWait));
  EXPECT_EQ(FirstDifference(a_buf_->data(), b_buf_->data(), kBytes), -1);
}

TEST_P(FaultInjectionTest, DroppedReceiveNeverReportsCompletionUntilCancelled) {
  FaultRule rule;
  rule.action = FaultAction::kDrop;
  rule.direction = TransferDirection::kRecv;
  MP_ASSERT_OK(b_->AddRule(rule));
  TransferHandle r = RecvAtB(Tag(2, 0), 0);
  TransferHandle s = SendFromA(Tag(2, 0), 0);
  MP_ASSERT_OK(a_->Wait(s, absl::Now() + kWait));  // the bytes did move
  KV_EXPECT_ERROR(b_->Wait(r, absl::Now() + absl::Milliseconds(150)),
                  absl::StatusCode::kDeadlineExceeded, "in progress");
  EXPECT_EQ(b_->Poll(r), TransferState::kInProgress);
  b_->Cancel(r);
  KV_EXPECT_ERROR(b_->Wait(r, absl::Now() + kWait), absl::StatusCode::kCancelled, "dropped");
  b_->Release(r);
}

TEST_P(FaultInjectionTest, DelayHoldsCompletionBack) {
  FaultRule rule;
  rule.action = FaultAction::kDelay;
  rule.delay = absl::Milliseconds(200);
  MP_ASSERT_OK(b_->AddRule(rule));
  const absl::Time start = absl::Now();
  TransferHandle r = RecvAtB(Tag(3, 0), 1);
  TransferHandle s = SendFromA(Tag(3, 0), 1);
  MP_ASSERT_OK(a_->Wait(s, absl::Now() + kWait));
  EXPECT_EQ(b_->Poll(r), TransferState::kInProgress);
  MP_ASSERT_OK(b_->Wait(r, absl::Now() + kWait));
  EXPECT_GE(absl::Now() - start, absl::Milliseconds(200));
  EXPECT_EQ(Diff(1), -1);
  EXPECT_EQ(b_->Counts().delayed, 1u);
  // A deadline shorter than the delay is honoured.
  MP_ASSERT_OK(b_->AddRule(rule));
  TransferHandle r2 = RecvAtB(Tag(3, 1), 2);
  TransferHandle s2 = SendFromA(Tag(3, 1), 2);
  KV_EXPECT_ERROR(b_->Wait(r2, absl::Now() + absl::Milliseconds(50)),
                  absl::StatusCode::kDeadlineExceeded, "in progress");
  MP_ASSERT_OK(b_->Wait(r2, absl::Now() + kWait));
  MP_ASSERT_OK(a_->Wait(s2, absl::Now() + kWait));
}

TEST_P(FaultInjectionTest, CorruptionFlipsExactlyOneByteOfTheTargetedReceive) {
  FaultRule rule;
  rule.action = FaultAction::kCorrupt;
  rule.kind = TransferKind::kKv;
  rule.seed = 1234;
  MP_ASSERT_OK(b_->AddRule(rule));
  TransferBatch batch;  // one activations receive (untouched) and one kv receive (corrupted)
  batch.ops.push_back(
      TransferOp::Recv("a", Tag(4, 0, TransferKind::kActivations), b_buf_->data(), kBytes));
  batch.ops.push_back(
      TransferOp::Recv("a", Tag(4, 0, TransferKind::kKv), b_buf_->data() + kBytes, kBytes));
  MP_ASSERT_OK_AND_ASSIGN(auto r, b_->Submit(batch));
  TransferHandle s0 = SendFromA(Tag(4, 0, TransferKind::kActivations), 0);
  TransferHandle s1 = SendFromA(Tag(4, 0, TransferKind::kKv), 1);
  MP_ASSERT_OK(b_->Wait(r, absl::Now() + kWait));
  MP_ASSERT_OK(a_->Wait(s0, absl::Now() + kWait));
  MP_ASSERT_OK(a_->Wait(s1, absl::Now() + kWait));
  EXPECT_EQ(Diff(0), -1);
  int differing = 0;
  for (size_t i = 0; i < kBytes; ++i) {
    differing += a_buf_->data()[kBytes + i] != b_buf_->data()[kBytes + i];
  }
  EXPECT_EQ(differing, 1);
  EXPECT_EQ(b_->Counts().corrupted, 1u);
  // Corruption happens once, not on every poll.
  EXPECT_EQ(b_->Poll(r), TransferState::kDone);
  EXPECT_EQ(b_->Counts().corrupted, 1u);
}

TEST_P(FaultInjectionTest, FailIsUnavailableAndNeverReachesTheInnerTransport) {
  FaultRule rule;
  rule.action = FaultAction::kFail;
  rule.request_id = 5;
  rule.count = 0;  // every matching operation
  MP_ASSERT_OK(b_->AddRule(rule));
  for (int i = 0; i < 3; ++i) {
    TransferHandle r = RecvAtB(Tag(5, i), 0);
    KV_EXPECT_ERROR(b_->Wait(r, absl::Now() + kWait), absl::StatusCode::kUnavailable,
                    "'a' is gone (injected fault)");
    EXPECT_EQ(b_->Poll(r), TransferState::kFailed);
  }
  EXPECT_EQ(b_->Counts().failed, 3u);
  EXPECT_EQ(b_->inner().Stats().batches_done + b_->inner().Stats().batches_failed, 0u);
  // Other requests are not affected.
  TransferHandle r = RecvAtB(Tag(6, 0), 3);
  TransferHandle s = SendFromA(Tag(6, 0), 3);
  MP_ASSERT_OK(b_->Wait(r, absl::Now() + kWait));
  MP_ASSERT_OK(a_->Wait(s, absl::Now() + kWait));
  EXPECT_EQ(Diff(3), -1);
}

TEST_P(FaultInjectionTest, KillPeerFailsInFlightAndLaterOperationsUntilRevived) {
  TransferHandle r = RecvAtB(Tag(7, 0), 0);
  EXPECT_EQ(b_->Poll(r), TransferState::kInProgress);
  const absl::Time start = absl::Now();
  b_->KillPeer("a");
  KV_EXPECT_ERROR(b_->Wait(r, absl::Now() + kWait), absl::StatusCode::kUnavailable, "'a' is gone");
  EXPECT_LT(absl::Now() - start, absl::Seconds(5));
  TransferHandle r2 = RecvAtB(Tag(7, 1), 1);
  KV_EXPECT_ERROR(b_->Wait(r2, absl::Now() + kWait), absl::StatusCode::kUnavailable, "gone");
  // The region is free again: the inner receive was cancelled.
  b_->Release(r);
  b_->Release(r2);
  b_->RevivePeer("a");
  TransferHandle r3 = RecvAtB(Tag(7, 2), 2);
  TransferHandle s3 = SendFromA(Tag(7, 2), 2);
  MP_ASSERT_OK(b_->Wait(r3, absl::Now() + kWait));
  MP_ASSERT_OK(a_->Wait(s3, absl::Now() + kWait));
  EXPECT_EQ(Diff(2), -1);
}

TEST_P(FaultInjectionTest, RulesMatchOnlyTheirFiltersAndCounts) {
  FaultRule rule;
  rule.action = FaultAction::kFail;
  rule.kind = TransferKind::kLogits;
  rule.count = 2;
  MP_ASSERT_OK(b_->AddRule(rule));
  // Not logits: passes.
  TransferHandle r = RecvAtB(Tag(8, 0, TransferKind::kKv), 0);
  TransferHandle s = SendFromA(Tag(8, 0, TransferKind::kKv), 0);
  MP_ASSERT_OK(b_->Wait(r, absl::Now() + kWait));
  MP_ASSERT_OK(a_->Wait(s, absl::Now() + kWait));
  // Logits: the first two fail, the third passes.
  for (int i = 0; i < 2; ++i) {
    TransferHandle f = RecvAtB(Tag(8, 1 + i, TransferKind::kLogits), 1);
    KV_EXPECT_ERROR(b_->Wait(f, absl::Now() + kWait), absl::StatusCode::kUnavailable, "gone");
  }
  TransferHandle r3 = RecvAtB(Tag(8, 3, TransferKind::kLogits), 2);
  TransferHandle s3 = SendFromA(Tag(8, 3, TransferKind::kLogits), 2);
  MP_ASSERT_OK(b_->Wait(r3, absl::Now() + kWait));
  MP_ASSERT_OK(a_->Wait(s3, absl::Now() + kWait));
  EXPECT_EQ(b_->Counts().failed, 2u);
  // ClearRules removes everything.
  MP_ASSERT_OK(b_->AddRule(rule));
  b_->ClearRules();
  TransferHandle r4 = RecvAtB(Tag(8, 4, TransferKind::kLogits), 3);
  TransferHandle s4 = SendFromA(Tag(8, 4, TransferKind::kLogits), 3);
  MP_ASSERT_OK(b_->Wait(r4, absl::Now() + kWait));
  MP_ASSERT_OK(a_->Wait(s4, absl::Now() + kWait));
}

TEST_P(FaultInjectionTest, BadRulesAreRejected) {
  FaultRule corrupt_send;
  corrupt_send.action = FaultAction::kCorrupt;
  corrupt_send.direction = TransferDirection::kSend;
  KV_EXPECT_ERROR(b_->AddRule(corrupt_send), absl::StatusCode::kInvalidArgument, "receives only");
  FaultRule negative;
  negative.action = FaultAction::kDelay;
  negative.delay = absl::Milliseconds(-1);
  KV_EXPECT_ERROR(b_->AddRule(negative), absl::StatusCode::kInvalidArgument, "negative");
  EXPECT_EQ(b_->kind(), absl::StrCat("fault(", GetParam().kind, ")"));
  KV_EXPECT_ERROR(b_->Wait(TransferHandle{999}, absl::InfinitePast()),
                  absl::StatusCode::kInvalidArgument, "unknown transfer handle");
  EXPECT_EQ(b_->Poll(TransferHandle{999}), TransferState::kFailed);
}

std::string Name(const ::testing::TestParamInfo<BackendConfig>& info) { return info.param.name; }

INSTANTIATE_TEST_SUITE_P(Backends, FaultInjectionTest, ::testing::ValuesIn(AllCpuBackends()), Name);

}  // namespace
}  // namespace mp::kvtransfer
