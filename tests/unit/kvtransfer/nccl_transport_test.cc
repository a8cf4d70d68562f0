// The nccl backend between two GPUs of one machine (label gpu). Needs at least two CUDA
// devices; with fewer the tests fail and say so.
#include "kvtransfer/nccl_transport.h"

#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <thread>

#include "common/status.h"
#include "common/status_matchers.h"
#include "kvtransfer/transport_factory.h"
#include "tests/unit/kvtransfer/transfer_test_util.h"

namespace mp::kvtransfer {
namespace {

using testing::FillRandom;
using testing::FirstDifference;
using testing::Tag;

constexpr absl::Duration kWait = absl::Seconds(60);

class DeviceBuffer {
 public:
  DeviceBuffer(int device, size_t bytes) : device_(device), bytes_(bytes) {
    cudaSetDevice(device);
    if (cudaMalloc(&ptr_, bytes) != cudaSuccess) ptr_ = nullptr;
  }
  ~DeviceBuffer() {
    if (ptr_ != nullptr) {
      cudaSetDevice(device_);
      cudaFree(ptr_);
    }
  }
  unsigned char* data() { return static_cast<unsigned char*>(ptr_); }
  MemoryRegion region() { return {ptr_, bytes_, MemoryKind::kCuda, device_}; }
  void Upload(const std::vector<unsigned char>& host, size_t offset = 0) {
    cudaSetDevice(device_);
    ASSERT_EQ(cudaMemcpy(data() + offset, host.data(), host.size(), cudaMemcpyHostToDevice),
              cudaSuccess);
  }
  std::vector<unsigned char> Download(size_t offset, size_t n) {
    std::vector<unsigned char> host(n);
    cudaSetDevice(device_);
    EXPECT_EQ(cudaMemcpy(host.data(), data() + offset, n, cudaMemcpyDeviceToHost), cudaSuccess);
    return host;
  }

 private:
  int device_;
  size_t bytes_;
  void* ptr_ = nullptr;
};

class NcclTransportTest : public ::testing::Test {
 protected:
  void SetUp() override {
    int count = 0;
    ASSERT_EQ(cudaGetDeviceCount(&count), cudaSuccess) << "no CUDA device";
    ASSERT_GE(count, 2) << "the nccl transport tests need two GPUs, this machine has " << count;
    TransportOptions o0, o1;
    o0.cuda_device = 0;
    o1.cuda_device = 1;
    o0.nccl_connect_timeout = o1.nccl_connect_timeout = absl::Seconds(60);
    MP_ASSERT_OK_AND_ASSIGN(a_, NcclTransport::Create(o0));
    MP_ASSERT_OK_AND_ASSIGN(b_, NcclTransport::Create(o1));
    MP_ASSERT_OK_AND_ASSIGN(std::string da, a_->LocalEndpoint());
    MP_ASSERT_OK_AND_ASSIGN(std::string db, b_->LocalEndpoint());
    // Each side's Connect waits for the other's.
    absl::Status sa, sb;
    std::thread ta([&] { sa = a_->Connect("b", db); });
    std::thread tb([&] { sb = b_->Connect("a", da); });
    ta.join();
    tb.join();
    MP_ASSERT_OK(sa);
    MP_ASSERT_OK(sb);
  }

  std::unique_ptr<NcclTransport> a_, b_;
};

TEST_F(NcclTransportTest, PayloadsArriveIntactInSubmissionOrder) {
  const std::vector<size_t> sizes = {1, 7, 4096, 65537, (1 << 20) + 3, 16 << 20, 64 << 20};
  size_t total = 0;
  for (size_t n : sizes) total += n;
  DeviceBuffer src(0, total), dst(1, total);
  ASSERT_NE(src.data(), nullptr);
  ASSERT_NE(dst.data(), nullptr);
  std::vector<unsigned char> host(total);
  FillRandom(host.data(), total, 5);
  src.Upload(host);
  MP_ASSERT_OK(a_->RegisterMemory(src.region()));
  MP_ASSERT_OK(b_->RegisterMemory(dst.region()));
  // One batch per payload on the sender; all receives in one batch on the receiver.
  std::vector<TransferHandle> sends;
  TransferBatch recvs;
  size_t off = 0;
  for (size_t i = 0; i < sizes.size(); ++i) {
    MP_ASSERT_OK_AND_ASSIGN(
        auto h, a_->Submit({{TransferOp::Send("b", Tag(1, i), src.data() + off, sizes[i])}}));
    sends.push_back(h);
    recvs.ops.push_back(TransferOp::Recv("a", Tag(1, i), dst.data() + off, sizes[i]));
    off += sizes[i];
  }
  MP_ASSERT_OK_AND_ASSIGN(auto r, b_->Submit(recvs));
  MP_ASSERT_OK(b_->Wait(r, absl::Now() + kWait));
  for (auto h : sends) MP_ASSERT_OK(a_->Wait(h, absl::Now() + kWait));
  EXPECT_EQ(FirstDifference(dst.Download(0, total).data(), host.data(), total), -1);
  EXPECT_EQ(a_->Stats().bytes_sent, total);
  EXPECT_EQ(b_->Stats().bytes_received, total);
}

TEST_F(NcclTransportTest, BothDirectionsInOneBatch) {
  constexpr size_t kBytes = 8 << 20;
  DeviceBuffer a_buf(0, 2 * kBytes), b_buf(1, 2 * kBytes);
  std::vector<unsigned char> ha(kBytes), hb(kBytes);
  FillRandom(ha.data(), kBytes, 1);
  FillRandom(hb.data(), kBytes, 2);
  a_buf.Upload(ha);
  b_buf.Upload(hb);
  MP_ASSERT_OK(a_->RegisterMemory(a_buf.region()));
  MP_ASSERT_OK(b_->RegisterMemory(b_buf.region()));
  TransferBatch ba, bb;
  ba.ops.push_back(TransferOp::Send("b", Tag(2, 0), a_buf.data(), kBytes));
  ba.ops.push_back(TransferOp::Recv("b", Tag(2, 1), a_buf.data() + kBytes, kBytes));
  bb.ops.push_back(TransferOp::Recv("a", Tag(2, 0), b_buf.data() + kBytes, kBytes));
  bb.ops.push_back(TransferOp::Send("a", Tag(2, 1), b_buf.data(), kBytes));
  MP_ASSERT_OK_AND_ASSIGN(auto h1, a_->Submit(ba));
  MP_ASSERT_OK_AND_ASSIGN(auto h2, b_->Submit(bb));
  MP_ASSERT_OK(a_->Wait(h1, absl::Now() + kWait));
  MP_ASSERT_OK(b_->Wait(h2, absl::Now() + kWait));
  EXPECT_EQ(FirstDifference(b_buf.Download(kBytes, kBytes).data(), ha.data(), kBytes), -1);
  EXPECT_EQ(FirstDifference(a_buf.Download(kBytes, kBytes).data(), hb.data(), kBytes), -1);
}

TEST_F(NcclTransportTest, WaitDeadlineThenDisconnectEndsTheBatch) {
  DeviceBuffer dst(1, 4096);
  MP_ASSERT_OK(b_->RegisterMemory(dst.region()));
  MP_ASSERT_OK_AND_ASSIGN(auto r,
                          b_->Submit({{TransferOp::Recv("a", Tag(3, 0), dst.data(), 4096)}}));
  EXPECT_EQ(b_->Poll(r), TransferState::kInProgress);
  KV_EXPECT_ERROR(b_->Wait(r, absl::Now() + absl::Milliseconds(200)),
                  absl::StatusCode::kDeadlineExceeded, "in progress");
  MP_ASSERT_OK(b_->Disconnect("a"));
  KV_EXPECT_ERROR(b_->Wait(r, absl::Now() + kWait), absl::StatusCode::kCancelled, "disconnected");
  KV_EXPECT_ERROR(b_->Submit({{TransferOp::Recv("a", Tag(3, 1), dst.data(), 16)}}),
                  absl::StatusCode::kFailedPrecondition, "not connected");
}

TEST_F(NcclTransportTest, RejectsForeignGpusAndSecondPeers) {
  DeviceBuffer on1(1, 4096);
  KV_EXPECT_ERROR(a_->RegisterMemory(on1.region()), absl::StatusCode::kInvalidArgument, "GPU 1");
  MemoryRegion lying = on1.region();
  lying.device = 0;  // claims GPU 0, lives on GPU 1
  KV_EXPECT_ERROR(a_->RegisterMemory(lying), absl::StatusCode::kInvalidArgument,
                  "not device memory of GPU 0");
  MP_ASSERT_OK_AND_ASSIGN(std::string db, b_->LocalEndpoint());
  KV_EXPECT_ERROR(a_->Connect("c", db), absl::StatusCode::kFailedPrecondition, "exactly one peer");
  KV_EXPECT_ERROR(a_->Connect("b", db), absl::StatusCode::kAlreadyExists, "'b'");
}

// What one GPU can check: memory rules, descriptors, the connect timeout.
TEST(NcclSingleGpuTest, MemoryAndDescriptorRules) {
  int count = 0;
  ASSERT_EQ(cudaGetDeviceCount(&count), cudaSuccess) << "no CUDA device";
  ASSERT_GE(count, 1);
  MP_ASSERT_OK_AND_ASSIGN(auto a, NcclTransport::Create({}));
  std::vector<unsigned char> host(4096);
  KV_EXPECT_ERROR(a->RegisterMemory({host.data(), host.size()}), absl::StatusCode::kUnimplemented,
                  "device memory only");
  KV_EXPECT_ERROR(a->RegisterMemory({host.data(), host.size(), MemoryKind::kCuda, 0}),
                  absl::StatusCode::kInvalidArgument, "not device memory of GPU 0");
  DeviceBuffer on0(0, 1 << 20);
  MP_ASSERT_OK_AND_ASSIGN(RegionId id, a->RegisterMemory(on0.region()));
  KV_EXPECT_ERROR(a->Submit({{TransferOp::Send("b", Tag(1, 0), on0.data(), 16)}}),
                  absl::StatusCode::kFailedPrecondition, "not connected");
  MP_ASSERT_OK(a->DeregisterMemory(id));
  MP_ASSERT_OK_AND_ASSIGN(std::string da, a->LocalEndpoint());
  KV_EXPECT_ERROR(a->Connect("self", da), absl::StatusCode::kInvalidArgument, "itself");
  KV_EXPECT_ERROR(a->Connect("x", da.substr(0, 20)), absl::StatusCode::kInvalidArgument,
                  "descriptor");
  MP_ASSERT_OK_AND_ASSIGN(auto local, NewTransport("local"));
  MP_ASSERT_OK_AND_ASSIGN(std::string dl, local->LocalEndpoint());
  KV_EXPECT_ERROR(a->Connect("x", dl), absl::StatusCode::kInvalidArgument, "'local' transport");
}

TEST(NcclSingleGpuTest, ConnectToAPeerThatNeverConnectsTimesOut) {
  int count = 0;
  ASSERT_EQ(cudaGetDeviceCount(&count), cudaSuccess) << "no CUDA device";
  TransportOptions o;
  o.nccl_connect_timeout = absl::Seconds(3);
  MP_ASSERT_OK_AND_ASSIGN(auto a, NcclTransport::Create(o));
  MP_ASSERT_OK_AND_ASSIGN(auto silent, NcclTransport::Create(o));
  MP_ASSERT_OK_AND_ASSIGN(std::string ds, silent->LocalEndpoint());
  const absl::Time start = absl::Now();
  KV_EXPECT_ERROR(a->Connect("silent", ds), absl::StatusCode::kDeadlineExceeded,
                  "did not connect within 3s");
  EXPECT_LT(absl::Now() - start, absl::Seconds(20));
}

TEST(NcclFactoryTest, NewTransportMakesNccl) {
  int count = 0;
  ASSERT_EQ(cudaGetDeviceCount(&count), cudaSuccess) << "no CUDA device";
  ASSERT_GE(count, 1);
  MP_ASSERT_OK_AND_ASSIGN(auto t, NewTransport("nccl"));
  EXPECT_EQ(t->kind(), "nccl");
  TransportOptions bad;
  bad.cuda_device = count;
  KV_EXPECT_ERROR(NewTransport("nccl", bad), absl::StatusCode::kInvalidArgument, "does not exist");
}

}  // namespace
}  // namespace mp::kvtransfer
