// Every op of the CUDA backend against the fp32 CPU backend on random bf16-representable inputs,
// with sizes that are not multiples of the vector widths and tiles; transfers and conversions
// bit for bit; device sampling against the CPU sampler; the error paths. Needs an sm_90 GPU.
#include "runtime/cuda_backend.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "common/status_matchers.h"
#include "kernels/cpu/sampling.h"
#include "tests/gpu/gpu_test_util.h"

namespace mp {
namespace {

using ::absl::StatusCode;
using testing::Bf16Bits;
using testing::Bf16Input;
using testing::ExpectBf16Close;
using testing::ExpectBitwiseEqual;
using testing::MakePagedCache;
using testing::PagedCache;
using testing::RandomBf16Input;
using testing::ToDevice;

class CudaBackendTest : public ::testing::Test {
 protected:
  void SetUp() override {
    gpu_ = testing::SharedCudaBackend();
    ASSERT_NE(gpu_, nullptr);
  }

  // The result of a device op, as host f32.
  Tensor Host(const Tensor& device) {
    absl::StatusOr<Tensor> t = gpu_->ToHostF32(device);
    EXPECT_TRUE(t.ok()) << t.status();
    return t.ok() ? *t : Tensor();
  }
  Tensor Device(const Tensor& host) {
    absl::StatusOr<Tensor> t = ToDevice(*gpu_, host);
    EXPECT_TRUE(t.ok()) << t.status();
    return t.ok() ? *t : Tensor();
  }
  Tensor Cpu(const Tensor& host_f32) {  // a CPU backend tensor (a copy)
    Tensor t = Tensor::Host(host_f32.shape(), host_f32.dtype());
    std::memcpy(t.data(), host_f32.data(), host_f32.nbytes());
    return t;
  }

  std::shared_ptr<CudaBackend> gpu_;
  std::unique_ptr<Backend> cpu_ = NewCpuBackend();
};

TEST_F(CudaBackendTest, DescribesItself) {
  EXPECT_EQ(gpu_->device(), DeviceKind::kCuda);
  EXPECT_EQ(gpu_->compute_dtype(), DType::kBF16);
  EXPECT_NE(gpu_->name().find("cuda:0"), std::string::npos);
  EXPECT_NE(gpu_->stream(), nullptr);
}

TEST_F(CudaBackendTest, TransfersAreBitExact) {
  for (DType dtype : {DType::kF32, DType::kBF16, DType::kI32, DType::kU8}) {
    SCOPED_TRACE(DTypeName(dtype));
    Tensor host = Tensor::Host({3, 1001}, dtype);
    auto* bytes = static_cast<unsigned char*>(host.data());
    std::mt19937 rng(static_cast<uint32_t>(dtype));
    for (size_t i = 0; i < host.nbytes(); ++i) bytes[i] = static_cast<unsigned char>(rng());
    MP_ASSERT_OK_AND_ASSIGN(Tensor a, gpu_->Allocate(host.shape(), dtype));
    MP_ASSERT_OK(gpu_->CopyFromHost(host, a));
    MP_ASSERT_OK_AND_ASSIGN(Tensor b, gpu_->Allocate({3 * 1001}, dtype));
    MP_ASSERT_OK(gpu_->Copy(a, b));
    Tensor back = Tensor::Host(host.shape(), dtype);
    MP_ASSERT_OK(gpu_->CopyToHost(b, back));
    ExpectBitwiseEqual(back, host, "round trip");
  }
  MP_ASSERT_OK_AND_ASSIGN(Tensor empty, gpu_->Allocate({0, 5}, DType::kBF16));
  EXPECT_NE(empty.data(), nullptr);
  MP_EXPECT_OK(gpu_->Synchronize());
}

TEST_F(CudaBackendTest, TransfersRejectBadArguments) {
  MP_ASSERT_OK_AND_ASSIGN(Tensor a, gpu_->Allocate({16}, DType::kBF16));
  Tensor host = Tensor::Host({16}, DType::kF32);
  MP_EXPECT_ERROR(gpu_->CopyFromHost(host, a), StatusCode::kInvalidArgument, "differ in dtype");
  MP_EXPECT_ERROR(gpu_->CopyFromHost(a, a), StatusCode::kInvalidArgument, "src on cpu");
  Tensor overlap = a.Slice(4, 12);
  Tensor view = a.Slice(0, 8);
  MP_EXPECT_ERROR(gpu_->Copy(overlap, view), StatusCode::kInvalidArgument, "overlap");
  MP_EXPECT_ERROR(gpu_->Allocate({-1, 4}, DType::kF32), StatusCode::kInvalidArgument,
                  "negative");
  MP_EXPECT_ERROR(gpu_->ToHostF32(host), StatusCode::kInvalidArgument, "cuda tensor");
}

TEST_F(CudaBackendTest, HugeAllocationIsResourceExhaustedNamingTheSize) {
  // 2^50 bytes (1 PiB): more than any GPU has.
  const absl::StatusOr<Tensor> t = gpu_->Allocate({int64_t{1} << 49}, DType::kBF16);
  MP_EXPECT_ERROR(t, StatusCode::kResourceExhausted, "1125899906842624 bytes");
  // The backend still works afterwards.
  MP_ASSERT_OK_AND_ASSIGN(Tensor ok, gpu_->Allocate({1024}, DType::kBF16));
  MP_EXPECT_OK(gpu_->Synchronize());
}

TEST_F(CudaBackendTest, UploadWeightRoundsF32ToNearestEven) {
  // Random values plus exact ties between two bf16 values, both parities, and specials.
  std::vector<float> values;
  std::mt19937_64 rng(3);
  std::normal_distribution<float> normal(0.0f, 3.0f);
  for (int i = 0; i < 100000; ++i) values.push_back(normal(rng));
  for (uint32_t base : {0x3f800000u, 0x3f810000u, 0xc0490000u, 0x00010000u}) {
    uint32_t tie = base | 0x8000u;  // halfway to the next bf16
    float f;
    std::memcpy(&f, &tie, 4);
    values.push_back(f);
  }
  values.push_back(0.0f);
  values.push_back(-0.0f);
  values.push_back(std::numeric_limits<float>::infinity());
  values.push_back(3.0e38f);   // near the largest finite bf16 (3.39e38)
  values.push_back(3.4e38f);   // rounds up to infinity
  values.push_back(1.0e-40f);  // subnormal
  Tensor host = Tensor::Host({static_cast<int64_t>(values.size())}, DType::kF32);
  std::memcpy(host.data(), values.data(), values.size() * sizeof(float));
  MP_ASSERT_OK_AND_ASSIGN(Tensor w, gpu_->UploadWeight(host));
  EXPECT_EQ(w.dtype(), DType::kBF16);
  EXPECT_EQ(w.device(), DeviceKind::kCuda);
  Tensor back = Tensor::Host(w.shape(), DType::kBF16);
  MP_ASSERT_OK(gpu_->CopyToHost(w, back));
  Tensor want = testing::HostBf16(host);
  ExpectBitwiseEqual(back, want, "f32 -> bf16");
}

TEST_F(CudaBackendTest, UploadWeightConvertsEveryF16Value) {
  Tensor host = Tensor::Host({65536}, DType::kF16);
  auto* h = host.data_as<uint16_t>();
  for (uint32_t i = 0; i < 65536; ++i) h[i] = static_cast<uint16_t>(i);
  // The exact f16 values through the CPU backend's conversion (f16 -> f32 is exact).
  MP_ASSERT_OK_AND_ASSIGN(Tensor exact, cpu_->UploadWeight(host));
  MP_ASSERT_OK_AND_ASSIGN(Tensor w, gpu_->UploadWeight(host));
  Tensor back = Tensor::Host({65536}, DType::kBF16);
  MP_ASSERT_OK(gpu_->CopyToHost(w, back));
  const auto* got = back.data_as<const uint16_t>();
  const float* want = exact.data_as<const float>();
  for (int64_t i = 0; i < 65536; ++i) {
    if (std::isnan(want[i])) {
      EXPECT_TRUE(std::isnan(testing::Bf16Value(got[i]))) << "f16 bits " << i;
    } else {
      ASSERT_EQ(got[i], Bf16Bits(want[i])) << "f16 bits " << i;
    }
  }
}

TEST_F(CudaBackendTest, UploadWeightSmallStagingChunksAndDeviceAliasing) {
  CudaBackendOptions options;
  options.upload_staging_bytes = 1000;  // not a multiple of the element size or vector width
  MP_ASSERT_OK_AND_ASSIGN(std::unique_ptr<CudaBackend> small, CudaBackend::Create(options));
  Bf16Input in = RandomBf16Input({777, 13}, 5);
  MP_ASSERT_OK_AND_ASSIGN(Tensor w, small->UploadWeight(in.f32));
  Tensor back = Tensor::Host(w.shape(), DType::kBF16);
  MP_ASSERT_OK(small->CopyToHost(w, back));
  ExpectBitwiseEqual(back, in.bf16, "chunked upload");
  // bf16 host: a plain copy; a device bf16 tensor: aliased.
  MP_ASSERT_OK_AND_ASSIGN(Tensor w2, gpu_->UploadWeight(in.bf16));
  MP_ASSERT_OK_AND_ASSIGN(Tensor w3, gpu_->UploadWeight(w2));
  EXPECT_EQ(w3.data(), w2.data());
  // Device f32 -> bf16 on the device.
  Tensor df32 = Device(in.f32);
  MP_ASSERT_OK_AND_ASSIGN(Tensor w4, gpu_->UploadWeight(df32));
  Tensor back4 = Tensor::Host(w4.shape(), DType::kBF16);
  MP_ASSERT_OK(gpu_->CopyToHost(w4, back4));
  ExpectBitwiseEqual(back4, in.bf16, "device f32 upload");
  Tensor ints = Tensor::Host({4}, DType::kI32);
  MP_EXPECT_ERROR(gpu_->UploadWeight(ints), StatusCode::kInvalidArgument, "f32, f16 or bf16");
}

TEST_F(CudaBackendTest, EmbeddingCopiesTableRowsFromHostOrDeviceIds) {
  for (int64_t hidden : {3584, 67}) {
    SCOPED_TRACE(::testing::Message() << "hidden " << hidden);
    const int64_t vocab = 1000, n = 301;
    Bf16Input table = RandomBf16Input({vocab, hidden}, 7);
    Tensor ids = Tensor::Host({n}, DType::kI32);
    std::mt19937 rng(8);
    for (int64_t i = 0; i < n; ++i) ids.data_as<int32_t>()[i] = static_cast<int32_t>(rng() % vocab);
    ids.data_as<int32_t>()[0] = 0;
    ids.data_as<int32_t>()[1] = vocab - 1;
    Tensor want = Tensor::Host({n, hidden}, DType::kF32);
    MP_ASSERT_OK(cpu_->Embedding(ids, table.f32, want));
    Tensor d_table = Device(table.bf16);
    MP_ASSERT_OK_AND_ASSIGN(Tensor out, gpu_->Allocate({n, hidden}, DType::kBF16));
    MP_ASSERT_OK(gpu_->Embedding(ids, d_table, out));
    ExpectBitwiseEqual(Host(out), want, "embedding (host ids)");
    Tensor d_ids = Device(ids);
    MP_ASSERT_OK_AND_ASSIGN(Tensor out2, gpu_->Allocate({n, hidden}, DType::kBF16));
    MP_ASSERT_OK(gpu_->Embedding(d_ids, d_table, out2));
    ExpectBitwiseEqual(Host(out2), want, "embedding (device ids)");
  }
}

TEST_F(CudaBackendTest, EmbeddingRejectsIdsOutsideTheVocabulary) {
  Bf16Input table = RandomBf16Input({10, 8}, 1);
  Tensor d_table = Device(table.bf16);
  MP_ASSERT_OK_AND_ASSIGN(Tensor out, gpu_->Allocate({3, 8}, DType::kBF16));
  Tensor ids = Tensor::Host({3}, DType::kI32);
  ids.data_as<int32_t>()[0] = 1;
  ids.data_as<int32_t>()[1] = 10;
  MP_EXPECT_ERROR(gpu_->Embedding(ids, d_table, out), StatusCode::kInvalidArgument,
                  "token id 10 at position 1");
  ids.data_as<int32_t>()[1] = -4;
  Tensor d_ids = Device(ids);
  MP_EXPECT_ERROR(gpu_->Embedding(d_ids, d_table, out), StatusCode::kInvalidArgument,
                  "token id -4 at position 1");
  MP_EXPECT_ERROR(gpu_->Embedding(ids, table.f32, out), StatusCode::kInvalidArgument,
                  "table has shape [10, 8] f32 on cpu, expected [*, *] bf16 on cuda");
}

TEST_F(CudaBackendTest, RmsNormMatchesCpu) {
  struct Case {
    int64_t n, d;
  };
  for (Case c : {Case{1, 3584}, Case{37, 67}, Case{300, 5120}, Case{5, 8}, Case{2, 1}}) {
    SCOPED_TRACE(::testing::Message() << "n " << c.n << " d " << c.d);
    Bf16Input x = RandomBf16Input({c.n, c.d}, 11 + c.d, 2.0f, 0.5f);
    Bf16Input w = RandomBf16Input({c.d}, 12, 0.2f, 1.0f);
    Tensor want = Tensor::Host({c.n, c.d}, DType::kF32);
    MP_ASSERT_OK(cpu_->RmsNorm(x.f32, w.f32, 1e-5f, want));
    Tensor dx = Device(x.bf16), dw = Device(w.bf16);
    MP_ASSERT_OK_AND_ASSIGN(Tensor out, gpu_->Allocate({c.n, c.d}, DType::kBF16));
    MP_ASSERT_OK(gpu_->RmsNorm(dx, dw, 1e-5f, out));
    ExpectBf16Close(Host(out), want, 1e-2, 1e-2, "rmsnorm");
    MP_ASSERT_OK(gpu_->RmsNorm(dx, dw, 1e-5f, dx));  // in place
    ExpectBf16Close(Host(dx), want, 1e-2, 1e-2, "rmsnorm in place");
  }
}

TEST_F(CudaBackendTest, AddMatchesCpuIncludingUnalignedViews) {
  for (int64_t count : {1, 7, 8, 8003, 1 << 20}) {
    SCOPED_TRACE(::testing::Message() << "count " << count);
    Bf16Input x = RandomBf16Input({count + 1}, 21), y = RandomBf16Input({count + 1}, 22);
    Tensor want = Cpu(x.f32);
    MP_ASSERT_OK(cpu_->Add(want, y.f32));
    Tensor dx = Device(x.bf16), dy = Device(y.bf16);
    MP_ASSERT_OK(gpu_->Add(dx, dy));
    ExpectBf16Close(Host(dx), want, 1e-2, 1e-2, "add");
    // Views that start one element in (2-byte aligned): the scalar path.
    Tensor vx = Device(x.bf16).Slice(1, count + 1), vy = dy.Slice(0, count);
    MP_ASSERT_OK(gpu_->Add(vx, vy));
    Tensor want_view = Tensor::Host({count}, DType::kF32);
    for (int64_t i = 0; i < count; ++i) {
      want_view.data_as<float>()[i] = x.f32.data_as<float>()[i + 1] + y.f32.data_as<float>()[i];
    }
    ExpectBf16Close(Host(vx), want_view, 1e-2, 1e-2, "add (unaligned views)");
  }
}

TEST_F(CudaBackendTest, LinearMatchesCpuWithAndWithoutBias) {
  struct Case {
    int64_t n, in, out;
    bool bias;
  };
  for (Case c : {Case{1, 3584, 4608, true}, Case{37, 67, 129, true}, Case{300, 256, 1000, false},
                 Case{5, 3, 1, true}, Case{129, 512, 37888 / 16, false},
                 Case{1, 5120, 13824, false}}) {
    SCOPED_TRACE(::testing::Message() << "n " << c.n << " in " << c.in << " out " << c.out
                                      << (c.bias ? " bias" : ""));
    Bf16Input x = RandomBf16Input({c.n, c.in}, 31 + c.in);
    Bf16Input w = RandomBf16Input({c.out, c.in}, 32 + c.out, 0.05f);
    Bf16Input b = RandomBf16Input({c.out}, 33, 0.5f);
    Tensor want = Tensor::Host({c.n, c.out}, DType::kF32);
    MP_ASSERT_OK(cpu_->Linear(x.f32, w.f32, c.bias ? &b.f32 : nullptr, want));
    Tensor dx = Device(x.bf16), dw = Device(w.bf16), db = Device(b.bf16);
    MP_ASSERT_OK_AND_ASSIGN(Tensor y, gpu_->Allocate({c.n, c.out}, DType::kBF16));
    MP_ASSERT_OK(gpu_->Linear(dx, dw, c.bias ? &db : nullptr, y));
    ExpectBf16Close(Host(y), want, 1e-2, 1e-2, "linear");
  }
}

TEST_F(CudaBackendTest, LinearOnUnalignedRowViews) {
  // Rows of 67 bf16 elements: a view starting at row 1 is only 2-byte aligned.
  const int64_t n = 20, in = 67, out = 45;
  Bf16Input x = RandomBf16Input({n + 1, in}, 41);
  Bf16Input w = RandomBf16Input({out, in}, 42, 0.1f);
  Tensor want = Tensor::Host({n, out}, DType::kF32);
  MP_ASSERT_OK(cpu_->Linear(x.f32.Slice(1, n + 1), w.f32, nullptr, want));
  Tensor dx = Device(x.bf16).Slice(1, n + 1), dw = Device(w.bf16);
  MP_ASSERT_OK_AND_ASSIGN(Tensor y_storage, gpu_->Allocate({n * out + 1}, DType::kBF16));
  Tensor y = y_storage.Slice(1, n * out + 1).Reshape({n, out});
  MP_ASSERT_OK(gpu_->Linear(dx, dw, nullptr, y));
  ExpectBf16Close(Host(y), want, 1e-2, 1e-2, "linear (unaligned)");
}

TEST_F(CudaBackendTest, LinearCachesOneGemmPlanPerShape) {
  Bf16Input x = RandomBf16Input({7, 96}, 1), w = RandomBf16Input({40, 96}, 2);
  Tensor dx = Device(x.bf16), dw = Device(w.bf16);
  MP_ASSERT_OK_AND_ASSIGN(Tensor y, gpu_->Allocate({7, 40}, DType::kBF16));
  MP_ASSERT_OK(gpu_->Linear(dx, dw, nullptr, y));
  const int64_t plans = gpu_->stats().gemm_plans;
  for (int i = 0; i < 3; ++i) MP_ASSERT_OK(gpu_->Linear(dx, dw, nullptr, y));
  EXPECT_EQ(gpu_->stats().gemm_plans, plans);
  Tensor y6 = y.Slice(0, 6);
  MP_ASSERT_OK(gpu_->Linear(dx.Slice(0, 6), dw, nullptr, y6));  // another m
  EXPECT_EQ(gpu_->stats().gemm_plans, plans + 1);
}

TEST_F(CudaBackendTest, OpTimingSumsTheGpuTimeOfEachKind) {
  MP_EXPECT_ERROR(gpu_->TakeOpTimes().status(), StatusCode::kFailedPrecondition, "off");
  const int64_t n = 2048;
  Bf16Input x = RandomBf16Input({n, n}, 3), w = RandomBf16Input({n, n}, 4);
  Bf16Input g = RandomBf16Input({n}, 5);
  Tensor dx = Device(x.bf16), dw = Device(w.bf16), dg = Device(g.bf16);
  MP_ASSERT_OK_AND_ASSIGN(Tensor y, gpu_->Allocate({n, n}, DType::kBF16));
  MP_ASSERT_OK(gpu_->Linear(dx, dw, nullptr, y));  // the GEMM plan, outside the timing
  MP_ASSERT_OK(gpu_->Synchronize());
  gpu_->EnableOpTiming(true);
  cudaEvent_t start = nullptr, stop = nullptr;
  ASSERT_EQ(cudaEventCreate(&start), cudaSuccess);
  ASSERT_EQ(cudaEventCreate(&stop), cudaSuccess);
  ASSERT_EQ(cudaEventRecord(start, gpu_->stream()), cudaSuccess);
  constexpr int kGemms = 6;
  for (int i = 0; i < kGemms; ++i) MP_ASSERT_OK(gpu_->Linear(dx, dw, nullptr, y));
  MP_ASSERT_OK(gpu_->RmsNorm(y, dg, 1e-6f, y));
  ASSERT_EQ(cudaEventRecord(stop, gpu_->stream()), cudaSuccess);
  MP_ASSERT_OK_AND_ASSIGN(std::vector<CudaOpTime> times, gpu_->TakeOpTimes());
  float outer_ms = 0;
  ASSERT_EQ(cudaEventElapsedTime(&outer_ms, start, stop), cudaSuccess);
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  ASSERT_EQ(times.size(), static_cast<size_t>(CudaOpKind::kCount));
  double sum = 0;
  for (const CudaOpTime& t : times) {
    const int64_t want = t.kind == CudaOpKind::kLinear ? kGemms
                         : t.kind == CudaOpKind::kElementwise ? 1
                                                               : 0;
    EXPECT_EQ(t.calls, want) << CudaOpKindName(t.kind);
    if (want == 0) EXPECT_EQ(t.seconds, 0.0) << CudaOpKindName(t.kind);
    if (want > 0) EXPECT_GT(t.seconds, 0.0) << CudaOpKindName(t.kind);
    sum += t.seconds;
  }
  // The ops run back to back inside the outer interval: their sum fills most of it, never more.
  EXPECT_LE(sum * 1e3, outer_ms * 1.001 + 0.01);
  EXPECT_GE(sum * 1e3, outer_ms * 0.5);
  // Take() starts over; switching off stops the timing.
  MP_ASSERT_OK_AND_ASSIGN(std::vector<CudaOpTime> again, gpu_->TakeOpTimes());
  for (const CudaOpTime& t : again) EXPECT_EQ(t.calls, 0) << CudaOpKindName(t.kind);
  gpu_->EnableOpTiming(false);
  MP_EXPECT_ERROR(gpu_->TakeOpTimes().status(), StatusCode::kFailedPrecondition, "off");
}

TEST_F(CudaBackendTest, LinearRejectsBadShapesAndAliasing) {
  MP_ASSERT_OK_AND_ASSIGN(Tensor x, gpu_->Allocate({4, 8}, DType::kBF16));
  MP_ASSERT_OK_AND_ASSIGN(Tensor w, gpu_->Allocate({6, 9}, DType::kBF16));
  MP_ASSERT_OK_AND_ASSIGN(Tensor y, gpu_->Allocate({4, 6}, DType::kBF16));
  MP_EXPECT_ERROR(gpu_->Linear(x, w, nullptr, y), StatusCode::kInvalidArgument,
                  "w has shape [6, 9] bf16 on cuda, expected [*, 8] bf16 on cuda");
  MP_ASSERT_OK_AND_ASSIGN(Tensor sq, gpu_->Allocate({8, 8}, DType::kBF16));
  Tensor x8 = sq.Slice(0, 4);
  Tensor y8 = sq.Slice(4, 8);
  MP_ASSERT_OK_AND_ASSIGN(Tensor w8, gpu_->Allocate({8, 8}, DType::kBF16));
  MP_EXPECT_OK(gpu_->Linear(x8, w8, nullptr, y8));  // disjoint halves are fine
  MP_EXPECT_ERROR(gpu_->Linear(sq, w8, nullptr, sq), StatusCode::kInvalidArgument, "overlap");
}

TEST_F(CudaBackendTest, RopeMatchesCpuAtArbitraryPositions) {
  struct Case {
    int64_t n, heads, head_dim;
    double theta;
  };
  for (Case c : {Case{257, 28, 128, 1e7}, Case{33, 4, 64, 1e4}, Case{9, 3, 16, 1e6},
                 Case{1, 40, 128, 1e7}}) {
    SCOPED_TRACE(::testing::Message() << "n " << c.n << " heads " << c.heads << " head_dim "
                                      << c.head_dim);
    Bf16Input x = RandomBf16Input({c.n, c.heads, c.head_dim}, 51 + c.n);
    // Arbitrary positions (DCA remaps them), up to the 1M context, repeats and zero included.
    Tensor pos = Tensor::Host({c.n}, DType::kI32);
    std::mt19937 rng(52);
    for (int64_t i = 0; i < c.n; ++i) pos.data_as<int32_t>()[i] = static_cast<int32_t>(rng() % 1010000);
    pos.data_as<int32_t>()[0] = 0;
    Tensor want = Cpu(x.f32);
    MP_ASSERT_OK(cpu_->Rope(want, pos, c.theta));
    Tensor dx = Device(x.bf16);
    MP_ASSERT_OK(gpu_->Rope(dx, pos, c.theta));  // host positions
    ExpectBf16Close(Host(dx), want, 1e-2, 1e-2, "rope (host positions)");
    Tensor dx2 = Device(x.bf16), dpos = Device(pos);
    MP_ASSERT_OK(gpu_->Rope(dx2, dpos, c.theta));  // device positions
    ExpectBf16Close(Host(dx2), want, 1e-2, 1e-2, "rope (device positions)");
  }
  MP_ASSERT_OK_AND_ASSIGN(Tensor odd, gpu_->Allocate({2, 1, 7}, DType::kBF16));
  Tensor pos = Tensor::Host({2}, DType::kI32);
  MP_EXPECT_ERROR(gpu_->Rope(odd, pos, 1e4), StatusCode::kInvalidArgument, "even");
}

TEST_F(CudaBackendTest, SiluMulMatchesCpu) {
  for (auto [n, inter] : {std::pair<int64_t, int64_t>{33, 18944}, {5, 13}, {1, 8}, {64, 4736}}) {
    SCOPED_TRACE(::testing::Message() << "n " << n << " inter " << inter);
    Bf16Input gu = RandomBf16Input({n, 2 * inter}, 61 + inter, 4.0f);
    gu.f32.data_as<float>()[0] = -100.0f;  // exp(-g) overflows: silu = -0
    gu.bf16 = testing::HostBf16(gu.f32);
    Tensor want = Tensor::Host({n, inter}, DType::kF32);
    MP_ASSERT_OK(cpu_->SiluMul(gu.f32, want));
    Tensor dgu = Device(gu.bf16);
    MP_ASSERT_OK_AND_ASSIGN(Tensor out, gpu_->Allocate({n, inter}, DType::kBF16));
    MP_ASSERT_OK(gpu_->SiluMul(dgu, out));
    ExpectBf16Close(Host(out), want, 1e-2, 1e-2, "silu_mul");
  }
}

TEST_F(CudaBackendTest, WriteKvMatchesCpuBitForBit) {
  struct Case {
    int64_t kv_heads, head_dim, block_size, start, n;
  };
  for (Case c : {Case{4, 128, 64, 0, 300}, Case{4, 128, 64, 130, 1}, Case{2, 16, 16, 5, 77},
                 Case{3, 12, 7, 3, 40}}) {
    SCOPED_TRACE(::testing::Message() << "kv_heads " << c.kv_heads << " head_dim " << c.head_dim
                                      << " block " << c.block_size << " start " << c.start);
    const int64_t blocks = (c.start + c.n + c.block_size - 1) / c.block_size;
    PagedCache cache =
        MakePagedCache(*gpu_, blocks + 3, c.kv_heads, c.block_size, c.head_dim, blocks, 71 + c.n);
    Bf16Input k = RandomBf16Input({c.n, c.kv_heads, c.head_dim}, 72);
    Bf16Input v = RandomBf16Input({c.n, c.kv_heads, c.head_dim}, 73);
    MP_ASSERT_OK(cpu_->WriteKv(k.f32, v.f32, c.start, cache.Cpu()));
    MP_ASSERT_OK(gpu_->WriteKv(Device(k.bf16), Device(v.bf16), c.start, cache.Gpu()));
    ExpectBitwiseEqual(Host(cache.gpu_k), cache.cpu_k, "K cache");
    ExpectBitwiseEqual(Host(cache.gpu_v), cache.cpu_v, "V cache");
    // A host block table works too (and its entries are checked).
    KvLayerView host_table = cache.Gpu();
    host_table.block_table = cache.cpu_table;
    MP_ASSERT_OK(gpu_->WriteKv(Device(k.bf16), Device(v.bf16), c.start, host_table));
    ExpectBitwiseEqual(Host(cache.gpu_k), cache.cpu_k, "K cache (host table)");
  }
}

TEST_F(CudaBackendTest, KvOpsRejectBadGeometry) {
  PagedCache cache = MakePagedCache(*gpu_, 4, 2, 64, 128, 2, 81);
  MP_ASSERT_OK_AND_ASSIGN(Tensor k, gpu_->Allocate({10, 2, 128}, DType::kBF16));
  MP_EXPECT_ERROR(gpu_->WriteKv(k, k, 120, cache.Gpu()), StatusCode::kInvalidArgument,
                  "block table has 2 blocks but positions up to 130 need 3");
  KvLayerView bad = cache.Gpu();
  bad.block_table = Tensor::Host({2}, DType::kI32);
  bad.block_table.data_as<int32_t>()[1] = 9;
  MP_EXPECT_ERROR(gpu_->WriteKv(k, k, 60, bad), StatusCode::kInvalidArgument,
                  "block table entry 1 is block 9");
  MP_ASSERT_OK_AND_ASSIGN(Tensor k64, gpu_->Allocate({10, 2, 64}, DType::kBF16));
  MP_EXPECT_ERROR(gpu_->WriteKv(k64, k64, 0, cache.Gpu()), StatusCode::kInvalidArgument, "K cache");
}

// An attention op of both backends on the same inputs: the fp32 CPU result and the GPU's, with the
// GPU backend's counters around its call.
struct AttentionRun {
  Tensor want, want_lse;  // CPU: out [n, q_heads, head_dim], lse [q_heads, n]
  Tensor q, out, lse;     // GPU: the device q and the bf16 out, f32 lse
  CudaBackendStats before, after;
};

class AttentionOpTest : public CudaBackendTest {
 protected:
  // Runs `op(backend, params)` (the backend's Attention or DcaAttention) with `params` on the CPU
  // backend over q.f32 and the cache's CPU copy, then on the GPU over q.bf16 and its device copy.
  template <class Params, class Op>
  void RunOnBothBackends(Params params, const Bf16Input& q, const PagedCache& cache, Op op,
                         AttentionRun* run) {
    const int64_t n = q.f32.dim(0), heads = q.f32.dim(1), d = q.f32.dim(2);
    run->want = Tensor::Host({n, heads, d}, DType::kF32);
    run->want_lse = Tensor::Host({heads, n}, DType::kF32);
    params.q = &q.f32;
    params.kv = cache.Cpu();
    params.out = &run->want;
    params.lse = &run->want_lse;
    MP_ASSERT_OK(op(*cpu_, params));

    run->q = Device(q.bf16);
    MP_ASSERT_OK_AND_ASSIGN(run->out, gpu_->Allocate({n, heads, d}, DType::kBF16));
    MP_ASSERT_OK_AND_ASSIGN(run->lse, gpu_->Allocate({heads, n}, DType::kF32));
    params.q = &run->q;
    params.kv = cache.Gpu();
    params.out = &run->out;
    params.lse = &run->lse;
    run->before = gpu_->stats();
    MP_ASSERT_OK(op(*gpu_, params));
    run->after = gpu_->stats();
  }
};

struct AttentionCase {
  int64_t n, q_heads, kv_heads, head_dim, block_size, key_begin, key_end;
  bool causal;
  const char* path;  // which kernel must run: "prefill", "single", "generic"
};

class CudaAttentionTest : public AttentionOpTest,
                          public ::testing::WithParamInterface<AttentionCase> {};

TEST_P(CudaAttentionTest, MatchesCpu) {
  const AttentionCase c = GetParam();
  const int64_t blocks = std::max<int64_t>(1, (c.key_end + c.block_size - 1) / c.block_size);
  PagedCache cache =
      MakePagedCache(*gpu_, blocks + 2, c.kv_heads, c.block_size, c.head_dim, blocks, 91 + c.n);
  Bf16Input q = RandomBf16Input({c.n, c.q_heads, c.head_dim}, 92 + c.key_end);
  AttentionParams p;
  p.key_begin = c.key_begin;
  p.key_end = c.key_end;
  p.causal = c.causal;
  p.scale = 1.0f / std::sqrt(static_cast<float>(c.head_dim));
  AttentionRun run;
  RunOnBothBackends(
      p, q, cache, [](Backend& b, const AttentionParams& bp) { return b.Attention(bp); }, &run);
  if (HasFatalFailure()) return;
  const CudaBackendStats &before = run.before, &after = run.after;
  const std::string path = c.path;
  EXPECT_EQ(after.prefill_attention_calls - before.prefill_attention_calls,
            path == "prefill" ? 1 : 0);
  EXPECT_EQ(after.single_query_attention_calls - before.single_query_attention_calls,
            path == "single" ? 1 : 0);
  // Single queries with at most 16 query heads per KV head take the split-KV decode kernel.
  EXPECT_EQ(after.decode_attention_calls - before.decode_attention_calls,
            path == "single" && c.q_heads / c.kv_heads <= 16 ? 1 : 0);
  EXPECT_EQ(after.generic_attention_calls - before.generic_attention_calls,
            path == "generic" ? 1 : 0);

  ExpectBf16Close(Host(run.out), run.want, 1e-2, 2e-2, "attention out");
  Tensor got_lse = Host(run.lse);
  for (int64_t i = 0; i < run.want_lse.numel(); ++i) {
    const float w = run.want_lse.data_as<float>()[i], g = got_lse.data_as<float>()[i];
    if (std::isinf(w)) {
      EXPECT_TRUE(std::isinf(g) && g < 0) << "lse " << i << " is " << g << ", want -inf";
    } else {
      ASSERT_NEAR(g, w, 1e-2) << "lse " << i;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, CudaAttentionTest,
    ::testing::Values(
        // The Qwen2.5-7B head layout through the sm_90a kernel: a first chunk, then a chunk after
        // cached keys, with lengths that are not multiples of the 128-row tiles.
        AttentionCase{300, 28, 4, 128, 64, 0, 300, true, "prefill"},
        AttentionCase{200, 28, 4, 128, 128, 0, 1000, true, "prefill"},
        AttentionCase{257, 4, 2, 128, 64, 130, 700, false, "prefill"},
        AttentionCase{190, 8, 8, 64, 192, 333, 1111, true, "prefill"},
        // Decode: one query row through the single-query path.
        AttentionCase{1, 28, 4, 128, 64, 0, 999, true, "single"},
        AttentionCase{1, 40, 8, 128, 64, 0, 4097, true, "single"},
        // Geometries for the generic kernel: small head dims, block sizes below 64.
        AttentionCase{45, 4, 2, 16, 16, 0, 45, true, "generic"},
        AttentionCase{30, 8, 1, 8, 16, 0, 100, true, "generic"},
        AttentionCase{17, 6, 3, 96, 64, 5, 300, false, "generic"},
        AttentionCase{1, 4, 2, 200, 7, 0, 50, true, "generic"},
        // Rows that see no key: out 0, lse -inf.
        AttentionCase{300, 4, 2, 128, 64, 200, 400, true, "prefill"},
        AttentionCase{40, 4, 2, 16, 16, 30, 50, true, "generic"}),
    [](const ::testing::TestParamInfo<AttentionCase>& info) {
      const AttentionCase& c = info.param;
      return std::string(c.path) + "_n" + std::to_string(c.n) + "_h" +
             std::to_string(c.q_heads) + "x" + std::to_string(c.kv_heads) + "_d" +
             std::to_string(c.head_dim) + "_b" + std::to_string(c.block_size) + "_k" +
             std::to_string(c.key_begin) + "to" + std::to_string(c.key_end) +
             (c.causal ? "_causal" : "_full");
    });

TEST_F(CudaBackendTest, AttentionRejectsBadArguments) {
  PagedCache cache = MakePagedCache(*gpu_, 4, 2, 64, 128, 4, 95);
  MP_ASSERT_OK_AND_ASSIGN(Tensor q, gpu_->Allocate({8, 6, 128}, DType::kBF16));
  MP_ASSERT_OK_AND_ASSIGN(Tensor out, gpu_->Allocate({8, 6, 128}, DType::kBF16));
  AttentionParams p;
  p.q = &q;
  p.kv = cache.Gpu();
  p.key_end = 100;
  p.scale = 0.1f;
  p.out = &out;
  MP_EXPECT_OK(gpu_->Attention(p));
  p.key_end = 300;
  MP_EXPECT_ERROR(gpu_->Attention(p), StatusCode::kInvalidArgument, "need 5 blocks");
  p.key_end = 100;
  p.key_begin = 101;
  MP_EXPECT_ERROR(gpu_->Attention(p), StatusCode::kInvalidArgument, "key range");
  p.key_begin = 0;
  MP_ASSERT_OK_AND_ASSIGN(Tensor q5, gpu_->Allocate({8, 5, 128}, DType::kBF16));
  MP_ASSERT_OK_AND_ASSIGN(Tensor out5, gpu_->Allocate({8, 5, 128}, DType::kBF16));
  p.q = &q5;
  p.out = &out5;
  MP_EXPECT_ERROR(gpu_->Attention(p), StatusCode::kInvalidArgument, "not a multiple");
  MP_ASSERT_OK_AND_ASSIGN(Tensor q512, gpu_->Allocate({8, 2, 512}, DType::kBF16));
  MP_ASSERT_OK_AND_ASSIGN(Tensor out512, gpu_->Allocate({8, 2, 512}, DType::kBF16));
  PagedCache big = MakePagedCache(*gpu_, 2, 2, 64, 512, 2, 96);
  p.q = &q512;
  p.out = &out512;
  p.kv = big.Gpu();
  MP_EXPECT_ERROR(gpu_->Attention(p), StatusCode::kInvalidArgument, "head_dim 512");
}

// Logits with many exact ties (quantized to steps of 1/8) so the index order matters.
Bf16Input TiedLogits(int64_t rows, int64_t vocab, uint64_t seed) {
  Bf16Input in;
  in.f32 = Tensor::Host({rows, vocab}, DType::kF32);
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal(0.0f, 2.5f);
  for (int64_t i = 0; i < rows * vocab; ++i) {
    in.f32.data_as<float>()[i] = std::round(normal(rng) * 8.0f) / 8.0f;
  }
  in.bf16 = testing::HostBf16(in.f32);
  return in;
}

TEST_F(CudaBackendTest, GreedySamplingMatchesTheCpuSampler) {
  for (int64_t vocab : {152064, 1000, 1, 33}) {
    SCOPED_TRACE(::testing::Message() << "vocab " << vocab);
    for (uint64_t seed = 0; seed < 5; ++seed) {
      Bf16Input logits = TiedLogits(2, vocab, seed);
      Tensor d = Device(logits.bf16);
      const float* last = logits.f32.data_as<float>() + vocab;
      MP_ASSERT_OK_AND_ASSIGN(int32_t got, gpu_->SampleToken(d, 0.0f, 1.0f, 0.5));
      EXPECT_EQ(got, cpu::SampleGreedy(last, vocab)) << "seed " << seed;
    }
  }
  // Every logit equal: the lowest index.
  Tensor flat = Tensor::Host({1, 5000}, DType::kF32);
  Tensor d = Device(testing::HostBf16(flat));
  MP_ASSERT_OK_AND_ASSIGN(int32_t first, gpu_->SampleToken(d, 0.0f, 1.0f, 0.0));
  EXPECT_EQ(first, 0);
}

TEST_F(CudaBackendTest, TopPSamplingMatchesTheCpuSampler) {
  const int64_t vocab = 152064;
  int checked = 0;
  for (uint64_t seed = 0; seed < 4; ++seed) {
    Bf16Input logits = TiedLogits(1, vocab, 100 + seed);
    Tensor d = Device(logits.bf16);
    const float* row = logits.f32.data_as<float>();
    for (float temperature : {0.3f, 0.7f, 1.0f, 2.5f}) {
      for (float top_p : {1.0f, 0.95f, 0.5f, 1e-6f}) {
        for (double u : {0.0, 0.123456789, 0.5, 0.987654321, 0.999999}) {
          MP_ASSERT_OK_AND_ASSIGN(int32_t got, gpu_->SampleToken(d, temperature, top_p, u));
          EXPECT_EQ(got, cpu::SampleTopP(row, vocab, temperature, top_p, u))
              << "seed " << seed << " T " << temperature << " top_p " << top_p << " u " << u;
          ++checked;
        }
      }
    }
  }
  EXPECT_EQ(checked, 4 * 4 * 4 * 5);
  Tensor d = Device(TiedLogits(1, 10, 1).bf16);
  MP_EXPECT_ERROR(gpu_->SampleToken(d, -1.0f, 1.0f, 0.5), StatusCode::kInvalidArgument,
                  "temperature");
  MP_EXPECT_ERROR(gpu_->SampleToken(d, 1.0f, 0.0f, 0.5), StatusCode::kInvalidArgument, "top_p");
}

TEST_F(CudaBackendTest, EventsOrderWorkAcrossStreams) {
  // Another stream fills a buffer; the backend's stream waits for its event, then reads it.
  cudaStream_t other = nullptr;
  ASSERT_EQ(cudaStreamCreateWithFlags(&other, cudaStreamNonBlocking), cudaSuccess);
  const int64_t n = 1 << 22;
  Bf16Input x = RandomBf16Input({n}, 7);
  MP_ASSERT_OK_AND_ASSIGN(Tensor src, gpu_->Allocate({n}, DType::kBF16));
  MP_ASSERT_OK_AND_ASSIGN(Tensor dst, gpu_->Allocate({n}, DType::kBF16));
  MP_ASSERT_OK(gpu_->CopyFromHost(x.bf16, src));
  MP_ASSERT_OK(gpu_->Synchronize());
  ASSERT_EQ(cudaMemcpyAsync(dst.data(), src.data(), src.nbytes(), cudaMemcpyDeviceToDevice, other),
            cudaSuccess);
  cudaEvent_t raw = nullptr;
  ASSERT_EQ(cudaEventCreateWithFlags(&raw, cudaEventDisableTiming), cudaSuccess);
  ASSERT_EQ(cudaEventRecord(raw, other), cudaSuccess);
  CudaEvent filled(std::shared_ptr<CUevent_st>(raw, [](cudaEvent_t e) { cudaEventDestroy(e); }));
  MP_ASSERT_OK(gpu_->WaitForEvent(filled));
  MP_ASSERT_OK(gpu_->Add(dst, dst));  // dst = 2 x
  MP_ASSERT_OK_AND_ASSIGN(CudaEvent done, gpu_->RecordEvent());
  MP_ASSERT_OK(done.Wait());
  EXPECT_TRUE(done.Done());
  Tensor got = Host(dst);
  for (int64_t i = 0; i < n; i += 4099) {
    ASSERT_EQ(got.data_as<float>()[i], 2.0f * x.f32.data_as<float>()[i]) << i;
  }
  cudaStreamDestroy(other);
}

TEST_F(CudaBackendTest, OpsRejectF32AndHostTensors) {
  Tensor host = Tensor::Host({4, 8}, DType::kF32);
  MP_ASSERT_OK_AND_ASSIGN(Tensor f32, gpu_->Allocate({4, 8}, DType::kF32));
  MP_ASSERT_OK_AND_ASSIGN(Tensor w, gpu_->Allocate({8}, DType::kBF16));
  MP_ASSERT_OK_AND_ASSIGN(Tensor out, gpu_->Allocate({4, 8}, DType::kBF16));
  MP_EXPECT_ERROR(gpu_->RmsNorm(f32, w, 1e-6f, out), StatusCode::kInvalidArgument,
                  "x has shape [4, 8] f32 on cuda, expected [*, *] bf16 on cuda");
  MP_EXPECT_ERROR(gpu_->RmsNorm(host, w, 1e-6f, out), StatusCode::kInvalidArgument, "on cpu");
  MP_EXPECT_ERROR(gpu_->Add(out, f32), StatusCode::kInvalidArgument, "y has shape");
  MP_EXPECT_ERROR(gpu_->SiluMul(f32, out), StatusCode::kInvalidArgument, "gate_up");
}

TEST_F(CudaBackendTest, MemoryPoolReusesFreedBlocks) {
  const CudaMemoryStats start = gpu_->memory_pool().stats();
  {
    MP_ASSERT_OK_AND_ASSIGN(Tensor a, gpu_->Allocate({3, 1000, 1000}, DType::kBF16));
    const CudaMemoryStats mid = gpu_->memory_pool().stats();
    EXPECT_GE(mid.bytes_in_use - start.bytes_in_use, 6000000);
  }
  const CudaMemoryStats freed = gpu_->memory_pool().stats();
  EXPECT_EQ(freed.bytes_in_use, start.bytes_in_use);
  EXPECT_GE(freed.bytes_cached, 6000000);
  MP_ASSERT_OK_AND_ASSIGN(Tensor b, gpu_->Allocate({6000000}, DType::kU8));
  const CudaMemoryStats again = gpu_->memory_pool().stats();
  EXPECT_EQ(again.cache_hits, freed.cache_hits + 1);
  EXPECT_EQ(again.device_allocations, freed.device_allocations);
}


// DcaAttention through the fused sm_90a kernels against the CPU backend's three-region
// reference (kernels/cpu): prefill chunks that start inside the first, second and later DCA
// chunks, and single queries (decode), with the YaRN temperature above 1.
struct DcaCase {
  int64_t n, q_heads, kv_heads, head_dim, query_begin, chunk_size, local_size;
  float temperature;
  const char* path;  // "prefill" or "decode"
};

class CudaDcaAttentionTest : public AttentionOpTest,
                             public ::testing::WithParamInterface<DcaCase> {};

TEST_P(CudaDcaAttentionTest, MatchesCpu) {
  const DcaCase c = GetParam();
  constexpr int64_t kBlock = 64;
  const int64_t key_end = c.query_begin + c.n;
  const int64_t blocks = (key_end + kBlock - 1) / kBlock;
  PagedCache cache = MakePagedCache(*gpu_, blocks + 2, c.kv_heads, kBlock, c.head_dim, blocks,
                               301 + c.query_begin);
  Bf16Input q = RandomBf16Input({c.n, c.q_heads, c.head_dim}, 302 + c.n);
  DcaAttentionParams p;
  p.query_begin = c.query_begin;
  p.chunk_size = c.chunk_size;
  p.chunk_len = c.chunk_size - c.local_size;
  p.rope_theta = 10000.0;
  p.scale = 1.0f / std::sqrt(static_cast<float>(c.head_dim));
  p.temperature = c.temperature;
  AttentionRun run;
  RunOnBothBackends(
      p, q, cache, [](Backend& b, const DcaAttentionParams& bp) { return b.DcaAttention(bp); },
      &run);
  if (HasFatalFailure()) return;
  const CudaBackendStats &before = run.before, &after = run.after;
  const std::string path = c.path;
  EXPECT_EQ(after.dca_prefill_calls - before.dca_prefill_calls, path == "prefill" ? 1 : 0);
  EXPECT_EQ(after.dca_decode_calls - before.dca_decode_calls, path == "decode" ? 1 : 0);
  ExpectBf16Close(Host(run.out), run.want, 1e-2, 3e-2, "DCA attention out");
  Tensor got_lse = Host(run.lse);
  for (int64_t i = 0; i < run.want_lse.numel(); ++i) {
    ASSERT_NEAR(got_lse.data_as<float>()[i], run.want_lse.data_as<float>()[i], 2e-2) << "lse " << i;
  }
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, CudaDcaAttentionTest,
    ::testing::Values(
        // C = 192, S = 256 (spec §9's tiny configuration scaled to 64-key blocks).
        DcaCase{150, 4, 2, 128, 0, 256, 64, 1.0f, "prefill"},     // inside chunk 0
        DcaCase{300, 28, 4, 128, 100, 256, 64, 1.0f, "prefill"},  // chunks 0-2
        DcaCase{257, 9, 3, 64, 500, 256, 64, 1.2f, "prefill"},    // chunks 2-3, YaRN
        DcaCase{64, 8, 8, 64, 960, 512, 128, 1.1f, "prefill"},    // C = 384, chunk 2
        DcaCase{1, 28, 4, 128, 777, 256, 64, 1.15f, "decode"},    // chunk 4
        DcaCase{1, 9, 3, 64, 191, 256, 64, 1.0f, "decode"},       // last key of chunk 0
        DcaCase{1, 4, 2, 128, 192, 256, 64, 1.0f, "decode"}),     // first key of chunk 1
    [](const ::testing::TestParamInfo<DcaCase>& info) {
      const DcaCase& c = info.param;
      return std::string(c.path) + "_n" + std::to_string(c.n) + "_h" +
             std::to_string(c.q_heads) + "x" + std::to_string(c.kv_heads) + "_d" +
             std::to_string(c.head_dim) + "_q" + std::to_string(c.query_begin) + "_S" +
             std::to_string(c.chunk_size) + "_W" + std::to_string(c.local_size);
    });

}  // namespace
}  // namespace mp
