// The Transport contract, checked on every CPU backend configuration (local, ucx over TCP on
// loopback, ucx over shared memory) with two transports in one process.
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <random>
#include <thread>

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

constexpr absl::Duration kWait = absl::Seconds(30);

class ConformanceTest : public ::testing::TestWithParam<BackendConfig> {
 protected:
  void SetUp() override {
    MP_ASSERT_OK_AND_ASSIGN(a_, NewTransport(GetParam().kind, GetParam().options));
    MP_ASSERT_OK_AND_ASSIGN(b_, NewTransport(GetParam().kind, GetParam().options));
    MP_ASSERT_OK(testing::ConnectPair(*a_, *b_));
  }

  std::unique_ptr<RegisteredBuffer> Buffer(Transport* t, size_t bytes) {
    auto buf = std::make_unique<RegisteredBuffer>(t, bytes);
    absl::Status s = buf->Register();
    EXPECT_TRUE(s.ok()) << s;
    return buf;
  }

  absl::StatusOr<TransferHandle> SendOne(Transport* t, absl::string_view peer, TransferTag tag,
                                         const void* p, size_t n) {
    return t->Submit({{TransferOp::Send(peer, tag, p, n)}});
  }
  absl::StatusOr<TransferHandle> RecvOne(Transport* t, absl::string_view peer, TransferTag tag,
                                         void* p, size_t n) {
    return t->Submit({{TransferOp::Recv(peer, tag, p, n)}});
  }

  std::unique_ptr<Transport> a_, b_;
};

TEST_P(ConformanceTest, PayloadsOfManySizesArriveIntact) {
  const std::vector<size_t> sizes = {1,       2,       7, 64, 4095, 4096, 65537, (1 << 20) + 3,
                                     8 << 20, 64 << 20};
  size_t total = 0;
  for (size_t n : sizes) total += n;
  auto src = Buffer(a_.get(), total);
  auto dst = Buffer(b_.get(), total);
  FillRandom(src->data(), total, 42);
  std::memset(dst->data(), 0, total);

  TransferBatch sends, recvs;
  size_t offset = 0;
  for (size_t i = 0; i < sizes.size(); ++i) {
    sends.ops.push_back(TransferOp::Send("b", Tag(7, i), src->data() + offset, sizes[i]));
    recvs.ops.push_back(TransferOp::Recv("a", Tag(7, i), dst->data() + offset, sizes[i]));
    offset += sizes[i];
  }
  MP_ASSERT_OK_AND_ASSIGN(TransferHandle r, b_->Submit(recvs));
  MP_ASSERT_OK_AND_ASSIGN(TransferHandle s, a_->Submit(sends));
  MP_ASSERT_OK(b_->Wait(r, absl::Now() + kWait));
  MP_ASSERT_OK(a_->Wait(s, absl::Now() + kWait));
  EXPECT_EQ(b_->Poll(r), TransferState::kDone);
  EXPECT_EQ(a_->Poll(s), TransferState::kDone);
  offset = 0;
  for (size_t n : sizes) {
    EXPECT_EQ(FirstDifference(src->data() + offset, dst->data() + offset, n), -1)
        << "payload of " << n << " bytes";
    offset += n;
  }
  a_->Release(s);
  b_->Release(r);
  EXPECT_EQ(a_->Stats().bytes_sent, total);
  EXPECT_EQ(b_->Stats().bytes_received, total);
  EXPECT_EQ(a_->Stats().sends_done, sizes.size());
  EXPECT_EQ(b_->Stats().batches_done, 1u);
  EXPECT_EQ(b_->Stats().batch_latency.count, 1u);
}

TEST_P(ConformanceTest, OutOfOrderSubmitsMatchByTag) {
  constexpr int kN = 48;
  constexpr size_t kBytes = 3000;
  auto src = Buffer(a_.get(), kN * kBytes);
  auto dst = Buffer(b_.get(), kN * kBytes);
  FillRandom(src->data(), kN * kBytes, 7);
  std::vector<int> send_order(kN), recv_order(kN);
  for (int i = 0; i < kN; ++i) send_order[i] = recv_order[i] = i;
  std::mt19937 rng(123);
  std::shuffle(send_order.begin(), send_order.end(), rng);
  std::shuffle(recv_order.begin(), recv_order.end(), rng);
  // Tag i travels in slot i on both sides; request id, chunk, kind and part all vary so that a
  // backend ignoring any of them would mismatch.
  auto tag = [](int i) {
    return Tag(1000 + i % 3, i % 5, i % 2 ? TransferKind::kKv : TransferKind::kActivations, i / 30);
  };
  std::vector<TransferHandle> handles_a, handles_b;
  // Half the sends go first, then every receive, then the other half of the sends.
  for (int k = 0; k < kN / 2; ++k) {
    const int i = send_order[k];
    MP_ASSERT_OK_AND_ASSIGN(auto h,
                            SendOne(a_.get(), "b", tag(i), src->data() + i * kBytes, kBytes));
    handles_a.push_back(h);
  }
  for (int k = 0; k < kN; ++k) {
    const int i = recv_order[k];
    MP_ASSERT_OK_AND_ASSIGN(auto h,
                            RecvOne(b_.get(), "a", tag(i), dst->data() + i * kBytes, kBytes));
    handles_b.push_back(h);
  }
  for (int k = kN / 2; k < kN; ++k) {
    const int i = send_order[k];
    MP_ASSERT_OK_AND_ASSIGN(auto h,
                            SendOne(a_.get(), "b", tag(i), src->data() + i * kBytes, kBytes));
    handles_a.push_back(h);
  }
  for (auto h : handles_b) MP_ASSERT_OK(b_->Wait(h, absl::Now() + kWait));
  for (auto h : handles_a) MP_ASSERT_OK(a_->Wait(h, absl::Now() + kWait));
  for (int i = 0; i < kN; ++i) {
    EXPECT_EQ(FirstDifference(src->data() + i * kBytes, dst->data() + i * kBytes, kBytes), -1)
        << "slot " << i;
  }
}

TEST_P(ConformanceTest, DuplicateTagsMatchInSubmissionOrder) {
  constexpr int kN = 5;
  constexpr size_t kBytes = 100;
  auto src = Buffer(a_.get(), kN * kBytes);
  auto dst = Buffer(b_.get(), kN * kBytes);
  FillRandom(src->data(), kN * kBytes, 99);
  std::vector<TransferHandle> hs;
  for (int i = 0; i < kN; ++i) {
    MP_ASSERT_OK_AND_ASSIGN(auto h,
                            SendOne(a_.get(), "b", Tag(5, 5), src->data() + i * kBytes, kBytes));
    hs.push_back(h);
  }
  std::vector<TransferHandle> hr;
  for (int i = 0; i < kN; ++i) {
    MP_ASSERT_OK_AND_ASSIGN(auto h,
                            RecvOne(b_.get(), "a", Tag(5, 5), dst->data() + i * kBytes, kBytes));
    hr.push_back(h);
  }
  for (auto h : hr) MP_ASSERT_OK(b_->Wait(h, absl::Now() + kWait));
  for (auto h : hs) MP_ASSERT_OK(a_->Wait(h, absl::Now() + kWait));
  EXPECT_EQ(FirstDifference(src->data(), dst->data(), kN * kBytes), -1);
}

TEST_P(ConformanceTest, ManyConcurrentTransfersBothWays) {
  constexpr int kThreads = 4;
  constexpr int kPerThread = 40;
  constexpr size_t kMaxBytes = 96 * 1024;
  const size_t slot = kMaxBytes;
  const size_t total = size_t{kThreads} * kPerThread * slot;
  auto a_src = Buffer(a_.get(), total), a_dst = Buffer(a_.get(), total);
  auto b_src = Buffer(b_.get(), total), b_dst = Buffer(b_.get(), total);
  FillRandom(a_src->data(), total, 1);
  FillRandom(b_src->data(), total, 2);
  std::vector<size_t> sizes(kThreads * kPerThread);
  std::mt19937_64 rng(5);
  for (auto& n : sizes) n = 1 + rng() % kMaxBytes;

  // Thread t: a sends its slots to b and receives b's slots, with one batch per transfer pair;
  // another thread does the mirror image on b.
  std::atomic<int> failures{0};
  auto run = [&](Transport* self, std::string peer, unsigned char* src, unsigned char* dst, int t,
                 uint64_t salt) {
    std::vector<TransferHandle> handles;
    for (int k = 0; k < kPerThread; ++k) {
      const int i = t * kPerThread + k;
      TransferBatch batch;
      batch.ops.push_back(TransferOp::Send(peer, Tag(salt, i), src + i * slot, sizes[i]));
      batch.ops.push_back(TransferOp::Recv(peer, Tag(salt ^ 1, i), dst + i * slot, sizes[i]));
      absl::StatusOr<TransferHandle> h = self->Submit(std::move(batch));
      if (!h.ok()) {
        ADD_FAILURE() << h.status();
        ++failures;
        return;
      }
      handles.push_back(*h);
    }
    for (auto h : handles) {
      absl::Status s = self->Wait(h, absl::Now() + kWait);
      if (!s.ok()) {
        ADD_FAILURE() << s;
        ++failures;
      }
      self->Release(h);
    }
  };
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back(run, a_.get(), "b", a_src->data(), a_dst->data(), t, 10);
    threads.emplace_back(run, b_.get(), "a", b_src->data(), b_dst->data(), t, 11);
  }
  for (auto& th : threads) th.join();
  ASSERT_EQ(failures.load(), 0);
  for (size_t i = 0; i < sizes.size(); ++i) {
    ASSERT_EQ(FirstDifference(a_src->data() + i * slot, b_dst->data() + i * slot, sizes[i]), -1);
    ASSERT_EQ(FirstDifference(b_src->data() + i * slot, a_dst->data() + i * slot, sizes[i]), -1);
  }
  EXPECT_EQ(a_->Stats().batches_in_flight, 0u);
  EXPECT_EQ(a_->Stats().batches_done, size_t{kThreads} * kPerThread);
}

TEST_P(ConformanceTest, WaitHonoursTheDeadline) {
  auto dst = Buffer(b_.get(), 4096);
  auto src = Buffer(a_.get(), 4096);
  FillRandom(src->data(), 4096, 3);
  MP_ASSERT_OK_AND_ASSIGN(auto r, RecvOne(b_.get(), "a", Tag(1, 1), dst->data(), 4096));
  EXPECT_EQ(b_->Poll(r), TransferState::kInProgress);
  const absl::Time start = absl::Now();
  KV_EXPECT_ERROR(b_->Wait(r, start + absl::Milliseconds(100)), absl::StatusCode::kDeadlineExceeded,
                  "in progress");
  const absl::Duration waited = absl::Now() - start;
  EXPECT_GE(waited, absl::Milliseconds(95));
  EXPECT_LT(waited, absl::Seconds(5));
  // The handle is still good after a deadline; the transfer completes once the peer sends.
  MP_ASSERT_OK_AND_ASSIGN(auto s, SendOne(a_.get(), "b", Tag(1, 1), src->data(), 4096));
  MP_ASSERT_OK(b_->Wait(r, absl::Now() + kWait));
  MP_ASSERT_OK(a_->Wait(s, absl::Now() + kWait));
  EXPECT_EQ(FirstDifference(src->data(), dst->data(), 4096), -1);
  // Non-blocking status query.
  MP_EXPECT_OK(b_->Wait(r, absl::InfinitePast()));
}

TEST_P(ConformanceTest, DestroyedPeerIsUnavailableWithinBoundedTime) {
  auto dst = Buffer(b_.get(), 1 << 20);
  auto src = Buffer(b_.get(), 1 << 20);
  MP_ASSERT_OK_AND_ASSIGN(auto r, RecvOne(b_.get(), "a", Tag(2, 0), dst->data(), 1 << 20));
  // A large send that needs the (soon gone) peer to receive it.
  MP_ASSERT_OK_AND_ASSIGN(auto s, SendOne(b_.get(), "a", Tag(2, 1), src->data(), 1 << 20));
  const absl::Time start = absl::Now();
  a_.reset();
  KV_EXPECT_ERROR(b_->Wait(r, absl::Now() + absl::Seconds(10)), absl::StatusCode::kUnavailable,
                  "'a'");
  absl::Status send_status = b_->Wait(s, absl::Now() + absl::Seconds(10));
  EXPECT_TRUE(absl::IsUnavailable(send_status) || send_status.ok()) << send_status;
  EXPECT_LT(absl::Now() - start, absl::Seconds(10));
  EXPECT_EQ(b_->Poll(r), TransferState::kFailed);
  // New transfers with the gone peer fail fast.
  KV_EXPECT_ERROR(RecvOne(b_.get(), "a", Tag(2, 2), dst->data(), 16),
                  absl::StatusCode::kUnavailable, "gone");
  // The buffers are free again.
  b_->Release(r);
  b_->Release(s);
  MP_EXPECT_OK(b_->DeregisterMemory(dst->id()));
}

TEST_P(ConformanceTest, DisconnectCancelsHereAndIsUnavailableThere) {
  auto a_buf = Buffer(a_.get(), 8192);
  auto b_buf = Buffer(b_.get(), 8192);
  MP_ASSERT_OK_AND_ASSIGN(auto ra, RecvOne(a_.get(), "b", Tag(3, 0), a_buf->data(), 4096));
  MP_ASSERT_OK_AND_ASSIGN(auto rb, RecvOne(b_.get(), "a", Tag(3, 1), b_buf->data(), 4096));
  MP_ASSERT_OK(a_->Disconnect("b"));
  KV_EXPECT_ERROR(a_->Wait(ra, absl::Now() + absl::Seconds(10)), absl::StatusCode::kCancelled,
                  "disconnected");
  KV_EXPECT_ERROR(b_->Wait(rb, absl::Now() + absl::Seconds(10)), absl::StatusCode::kUnavailable,
                  "'a'");
  KV_EXPECT_ERROR(a_->Disconnect("b"), absl::StatusCode::kNotFound, "'b'");
  KV_EXPECT_ERROR(SendOne(a_.get(), "b", Tag(3, 2), a_buf->data(), 8),
                  absl::StatusCode::kFailedPrecondition, "not connected");
  KV_EXPECT_ERROR(SendOne(b_.get(), "a", Tag(3, 2), b_buf->data(), 8),
                  absl::StatusCode::kUnavailable, "'a'");

  // Reconnecting both sides restores the link.
  MP_ASSERT_OK_AND_ASSIGN(std::string da, a_->LocalEndpoint());
  MP_ASSERT_OK_AND_ASSIGN(std::string db, b_->LocalEndpoint());
  MP_ASSERT_OK(a_->Connect("b", db));
  MP_ASSERT_OK(b_->Connect("a", da));
  FillRandom(a_buf->data(), 8192, 77);
  MP_ASSERT_OK_AND_ASSIGN(auto r2, RecvOne(b_.get(), "a", Tag(3, 3), b_buf->data(), 8192));
  MP_ASSERT_OK_AND_ASSIGN(auto s2, SendOne(a_.get(), "b", Tag(3, 3), a_buf->data(), 8192));
  MP_ASSERT_OK(b_->Wait(r2, absl::Now() + kWait));
  MP_ASSERT_OK(a_->Wait(s2, absl::Now() + kWait));
  EXPECT_EQ(FirstDifference(a_buf->data(), b_buf->data(), 8192), -1);
}

TEST_P(ConformanceTest, SizeMismatchFailsTheReceive) {
  auto src = Buffer(a_.get(), 8192);
  auto dst = Buffer(b_.get(), 8192);
  // Sender smaller than the receive.
  MP_ASSERT_OK_AND_ASSIGN(auto r, RecvOne(b_.get(), "a", Tag(4, 0), dst->data(), 4096));
  MP_ASSERT_OK_AND_ASSIGN(auto s, SendOne(a_.get(), "b", Tag(4, 0), src->data(), 1000));
  KV_EXPECT_ERROR(b_->Wait(r, absl::Now() + kWait), absl::StatusCode::kInvalidArgument,
                  "size mismatch");
  a_->Wait(s, absl::Now() + kWait).IgnoreError();
  // Sender larger than the receive.
  MP_ASSERT_OK_AND_ASSIGN(auto r2, RecvOne(b_.get(), "a", Tag(4, 1), dst->data(), 100));
  MP_ASSERT_OK_AND_ASSIGN(auto s2, SendOne(a_.get(), "b", Tag(4, 1), src->data(), 5000));
  KV_EXPECT_ERROR(b_->Wait(r2, absl::Now() + kWait), absl::StatusCode::kInvalidArgument,
                  "size mismatch");
  a_->Wait(s2, absl::Now() + kWait).IgnoreError();
  // The link still works afterwards.
  FillRandom(src->data(), 8192, 8);
  MP_ASSERT_OK_AND_ASSIGN(auto r3, RecvOne(b_.get(), "a", Tag(4, 2), dst->data(), 8192));
  MP_ASSERT_OK_AND_ASSIGN(auto s3, SendOne(a_.get(), "b", Tag(4, 2), src->data(), 8192));
  MP_ASSERT_OK(b_->Wait(r3, absl::Now() + kWait));
  MP_ASSERT_OK(a_->Wait(s3, absl::Now() + kWait));
  EXPECT_EQ(FirstDifference(src->data(), dst->data(), 8192), -1);
}

TEST_P(ConformanceTest, BadDescriptorsAreInvalidArgument) {
  MP_ASSERT_OK_AND_ASSIGN(std::string good, b_->LocalEndpoint());
  KV_EXPECT_ERROR(a_->Connect("x", ""), absl::StatusCode::kInvalidArgument, "shorter");
  KV_EXPECT_ERROR(a_->Connect("x", good.substr(0, good.size() / 2)),
                  absl::StatusCode::kInvalidArgument, "descriptor");
  KV_EXPECT_ERROR(a_->Connect("x", std::string(200, 'z')), absl::StatusCode::kInvalidArgument,
                  "MPKV");
  std::mt19937 rng(11);
  for (int trial = 0; trial < 64; ++trial) {
    std::string bad = good;
    bad[rng() % bad.size()] ^= static_cast<char>(1 + rng() % 255);
    EXPECT_EQ(a_->Connect("x", bad).code(), absl::StatusCode::kInvalidArgument);
  }
  std::string other_kind =
      GetParam().kind == "local" ? "ucx" : "local";  // a descriptor of another backend
  auto other = NewTransport(other_kind);
  if (other.ok()) {
    MP_ASSERT_OK_AND_ASSIGN(std::string od, (*other)->LocalEndpoint());
    KV_EXPECT_ERROR(a_->Connect("x", od), absl::StatusCode::kInvalidArgument,
                    absl::StrCat("'", other_kind, "' transport"));
  }
  KV_EXPECT_ERROR(a_->Connect("", good), absl::StatusCode::kInvalidArgument, "empty");
  KV_EXPECT_ERROR(a_->Connect("b", good), absl::StatusCode::kAlreadyExists, "'b'");
}

TEST_P(ConformanceTest, SubmitValidatesEveryOperation) {
  auto buf = Buffer(a_.get(), 1024);
  std::vector<unsigned char> unregistered(64);
  KV_EXPECT_ERROR(a_->Submit({}), absl::StatusCode::kInvalidArgument, "no operations");
  KV_EXPECT_ERROR(SendOne(a_.get(), "b", Tag(1, 0), unregistered.data(), 64),
                  absl::StatusCode::kInvalidArgument, "registered");
  KV_EXPECT_ERROR(SendOne(a_.get(), "b", Tag(1, 0), buf->data() + 1000, 25),
                  absl::StatusCode::kInvalidArgument, "registered");
  KV_EXPECT_ERROR(SendOne(a_.get(), "nobody", Tag(1, 0), buf->data(), 8),
                  absl::StatusCode::kFailedPrecondition, "'nobody' is not connected");
  KV_EXPECT_ERROR(SendOne(a_.get(), "b", Tag(1, 0), buf->data(), 0),
                  absl::StatusCode::kInvalidArgument, "0 bytes");
  KV_EXPECT_ERROR(SendOne(a_.get(), "b", Tag(1, 0), nullptr, 8), absl::StatusCode::kInvalidArgument,
                  "null");
  KV_EXPECT_ERROR(SendOne(a_.get(), "", Tag(1, 0), buf->data(), 8),
                  absl::StatusCode::kInvalidArgument, "empty peer");
  TransferBatch overlap;
  overlap.ops.push_back(TransferOp::Recv("b", Tag(1, 1), buf->data(), 100));
  overlap.ops.push_back(TransferOp::Recv("b", Tag(1, 2), buf->data() + 99, 100));
  KV_EXPECT_ERROR(a_->Submit(overlap), absl::StatusCode::kInvalidArgument, "overlapping");
  // Nothing was started by the failed submits.
  EXPECT_EQ(a_->Stats().batches_in_flight, 0u);
  MP_EXPECT_OK(a_->DeregisterMemory(buf->id()));
  KV_EXPECT_ERROR(a_->DeregisterMemory(buf->id()), absl::StatusCode::kInvalidArgument, "unknown");
  MP_ASSERT_OK(buf->Register());
}

TEST_P(ConformanceTest, MemoryRegistrationRules) {
  std::vector<unsigned char> mem(4096);
  MP_ASSERT_OK_AND_ASSIGN(RegionId id, a_->RegisterMemory({mem.data(), 1024}));
  MP_ASSERT_OK_AND_ASSIGN(MemoryRegion described, a_->DescribeMemory(id));
  EXPECT_EQ(described.addr, mem.data());
  EXPECT_EQ(described.bytes, 1024u);
  KV_EXPECT_ERROR(a_->RegisterMemory({mem.data() + 1000, 100}), absl::StatusCode::kInvalidArgument,
                  "overlaps");
  KV_EXPECT_ERROR(a_->RegisterMemory({mem.data() + 2000, 0}), absl::StatusCode::kInvalidArgument,
                  "empty");
  KV_EXPECT_ERROR(a_->RegisterMemory({nullptr, 10}), absl::StatusCode::kInvalidArgument, "null");
  KV_EXPECT_ERROR(a_->RegisterMemory({mem.data() + 2048, 64, MemoryKind::kCuda}),
                  absl::StatusCode::kUnimplemented, "host memory only");
  MP_ASSERT_OK_AND_ASSIGN(RegionId id2, a_->RegisterMemory({mem.data() + 1024, 1024}));
  // A range spanning two adjacent regions is in no single region.
  KV_EXPECT_ERROR(SendOne(a_.get(), "b", Tag(1, 0), mem.data() + 1000, 100),
                  absl::StatusCode::kInvalidArgument, "registered");
  MP_EXPECT_OK(a_->DeregisterMemory(id));
  MP_EXPECT_OK(a_->DeregisterMemory(id2));
}

TEST_P(ConformanceTest, MemoryInUseCannotBeDeregisteredUntilTheBatchEnds) {
  auto dst = Buffer(b_.get(), 4096);
  auto src = Buffer(a_.get(), 4096);
  FillRandom(src->data(), 4096, 4);
  MP_ASSERT_OK_AND_ASSIGN(auto r, RecvOne(b_.get(), "a", Tag(6, 0), dst->data(), 4096));
  KV_EXPECT_ERROR(b_->DeregisterMemory(dst->id()), absl::StatusCode::kFailedPrecondition,
                  "in flight");
  MP_ASSERT_OK_AND_ASSIGN(auto s, SendOne(a_.get(), "b", Tag(6, 0), src->data(), 4096));
  MP_ASSERT_OK(b_->Wait(r, absl::Now() + kWait));
  MP_ASSERT_OK(a_->Wait(s, absl::Now() + kWait));
  MP_EXPECT_OK(b_->DeregisterMemory(dst->id()));
  MP_ASSERT_OK(dst->Register());
}

TEST_P(ConformanceTest, CancelAndReleaseWithdrawUnmatchedOperations) {
  auto dst = Buffer(b_.get(), 4096);
  auto src = Buffer(a_.get(), 4096);
  MP_ASSERT_OK_AND_ASSIGN(auto r, RecvOne(b_.get(), "a", Tag(8, 0), dst->data(), 4096));
  b_->Cancel(r);
  KV_EXPECT_ERROR(b_->Wait(r, absl::Now() + absl::Seconds(10)), absl::StatusCode::kCancelled,
                  "cancel");
  EXPECT_EQ(b_->Poll(r), TransferState::kFailed);
  b_->Release(r);
  EXPECT_EQ(b_->Poll(r), TransferState::kFailed);  // released handles read as failed
  KV_EXPECT_ERROR(b_->Wait(r, absl::InfinitePast()), absl::StatusCode::kInvalidArgument,
                  "unknown transfer handle");

  // Release of an unfinished receive: the region becomes free once the cancel lands.
  MP_ASSERT_OK_AND_ASSIGN(auto r2, RecvOne(b_.get(), "a", Tag(8, 1), dst->data(), 4096));
  b_->Release(r2);
  absl::Status dereg;
  for (int i = 0; i < 500; ++i) {
    dereg = b_->DeregisterMemory(dst->id());
    if (dereg.ok()) break;
    absl::SleepFor(absl::Milliseconds(10));
  }
  MP_EXPECT_OK(dereg);
  MP_ASSERT_OK(dst->Register());

  // A cancelled receive does not swallow a later send with the same tag.
  FillRandom(src->data(), 4096, 12);
  MP_ASSERT_OK_AND_ASSIGN(auto r3, RecvOne(b_.get(), "a", Tag(8, 0), dst->data(), 4096));
  MP_ASSERT_OK_AND_ASSIGN(auto s3, SendOne(a_.get(), "b", Tag(8, 0), src->data(), 4096));
  MP_ASSERT_OK(b_->Wait(r3, absl::Now() + kWait));
  MP_ASSERT_OK(a_->Wait(s3, absl::Now() + kWait));
  EXPECT_EQ(FirstDifference(src->data(), dst->data(), 4096), -1);
  EXPECT_GE(b_->Stats().ops_failed, 2u);
}

TEST_P(ConformanceTest, AFailedOperationCancelsTheRestOfItsBatch) {
  auto dst = Buffer(b_.get(), 8192);
  auto src = Buffer(a_.get(), 8192);
  TransferBatch batch;
  batch.ops.push_back(TransferOp::Recv("a", Tag(9, 0), dst->data(), 4096));  // never sent
  batch.ops.push_back(TransferOp::Recv("a", Tag(9, 1), dst->data() + 4096, 100));
  MP_ASSERT_OK_AND_ASSIGN(auto r, b_->Submit(batch));
  // Op 1 fails (size mismatch); op 0 must then be withdrawn rather than wait forever.
  MP_ASSERT_OK_AND_ASSIGN(auto s, SendOne(a_.get(), "b", Tag(9, 1), src->data(), 200));
  KV_EXPECT_ERROR(b_->Wait(r, absl::Now() + absl::Seconds(10)), absl::StatusCode::kInvalidArgument,
                  "size mismatch");
  a_->Wait(s, absl::Now() + kWait).IgnoreError();
}

TEST_P(ConformanceTest, InFlightLimitIsResourceExhausted) {
  TransportOptions options = GetParam().options;
  options.limits.max_batches_in_flight = 3;
  MP_ASSERT_OK_AND_ASSIGN(auto t, NewTransport(GetParam().kind, options));
  MP_ASSERT_OK_AND_ASSIGN(std::string dt, t->LocalEndpoint());
  MP_ASSERT_OK_AND_ASSIGN(std::string db, b_->LocalEndpoint());
  MP_ASSERT_OK(t->Connect("b", db));
  MP_ASSERT_OK(b_->Connect("t", dt));
  auto buf = Buffer(t.get(), 4096);
  std::vector<TransferHandle> hs;
  for (int i = 0; i < 3; ++i) {
    MP_ASSERT_OK_AND_ASSIGN(auto h, RecvOne(t.get(), "b", Tag(10, i), buf->data() + i * 8, 8));
    hs.push_back(h);
  }
  KV_EXPECT_ERROR(RecvOne(t.get(), "b", Tag(10, 4), buf->data() + 64, 8),
                  absl::StatusCode::kResourceExhausted, "limit is 3");
  for (auto h : hs) t->Release(h);
}

std::string Name(const ::testing::TestParamInfo<BackendConfig>& info) { return info.param.name; }

INSTANTIATE_TEST_SUITE_P(Backends, ConformanceTest, ::testing::ValuesIn(AllCpuBackends()), Name);

}  // namespace
}  // namespace mp::kvtransfer
