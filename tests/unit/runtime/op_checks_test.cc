// runtime/op_checks: the argument checks both backends use, for the CPU backend's format (f32,
// host cache) and the CUDA backend's (bf16 cache on the device, block table on the device or the
// host). Device tensors here are metadata only (a dummy address that is never read), so the CUDA
// format's messages are checked without a GPU.
#include "runtime/op_checks.h"

#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>
#include <vector>

#include "common/status_matchers.h"
#include "runtime/backend.h"
#include "runtime/tensor.h"

namespace mp {
namespace {

using ::absl::StatusCode;

constexpr PagedCacheFormat kCpuFormat{DType::kF32, Placement::kCpu, Placement::kCpu};
constexpr PagedCacheFormat kCudaFormat{DType::kBF16, Placement::kCuda, Placement::kCudaOrCpu};

// A tensor that claims to live on the GPU; its storage is a host buffer no check reads.
Tensor OnCuda(std::vector<int64_t> shape, DType dtype) {
  static std::vector<char> dummy(64);
  return Tensor::Wrap(dummy.data(), std::move(shape), dtype, DeviceKind::kCuda);
}

Tensor HostTable(std::vector<int32_t> blocks) {
  Tensor t = Tensor::Host({static_cast<int64_t>(blocks.size())}, DType::kI32);
  std::memcpy(t.data(), blocks.data(), blocks.size() * sizeof(int32_t));
  return t;
}

TEST(OpChecksTest, CheckTensorAcceptsTheExpectedTensorAndNamesEveryMismatch) {
  const Tensor t = Tensor::Host({2, 3}, DType::kF32);
  MP_EXPECT_OK(CheckTensor("Op", "x", t, DType::kF32, {2, kAnyDim}, Placement::kCpu));
  MP_EXPECT_OK(CheckTensor("Op", "x", t, DType::kF32, {2, 3}, Placement::kCudaOrCpu));
  MP_EXPECT_ERROR(CheckTensor("Op", "x", t, DType::kF32, {2, 4}, Placement::kCpu),
                  StatusCode::kInvalidArgument,
                  "Op: x has shape [2, 3] f32 on cpu, expected [2, 4] f32 on cpu");
  MP_EXPECT_ERROR(CheckTensor("Op", "x", t, DType::kBF16, {2, 3}, Placement::kCpu),
                  StatusCode::kInvalidArgument, "expected [2, 3] bf16 on cpu");
  MP_EXPECT_ERROR(CheckTensor("Op", "x", t, DType::kF32, {kAnyDim}, Placement::kCpu),
                  StatusCode::kInvalidArgument, "expected [*] f32 on cpu");
  MP_EXPECT_ERROR(CheckTensor("Op", "x", t, DType::kF32, {2, 3}, Placement::kCuda),
                  StatusCode::kInvalidArgument,
                  "x has shape [2, 3] f32 on cpu, expected [2, 3] f32 on cuda");
  const Tensor d = OnCuda({4}, DType::kBF16);
  MP_EXPECT_OK(CheckTensor("Op", "y", d, DType::kBF16, {4}, Placement::kCuda));
  MP_EXPECT_ERROR(CheckTensor("Op", "y", d, DType::kBF16, {4}, Placement::kCpu),
                  StatusCode::kInvalidArgument,
                  "y has shape [4] bf16 on cuda, expected [4] bf16 on cpu");
  MP_EXPECT_ERROR(CheckTensor("Op", "z", Tensor(), DType::kF32, {1}, Placement::kCpu),
                  StatusCode::kInvalidArgument, "Op: z is undefined, expected [1] f32 on cpu");
  EXPECT_EQ(DescribeTensor(Tensor()), "an undefined tensor");
  EXPECT_EQ(DescribeTensor(t), "shape [2, 3] f32 on cpu");
}

TEST(OpChecksTest, CheckNoAliasRejectsOverlappingStorageOnly) {
  Tensor a = Tensor::Host({8}, DType::kF32);
  const Tensor b = Tensor::Host({8}, DType::kF32);
  MP_EXPECT_OK(CheckNoAlias("Op", "a", a, "b", b));
  const Tensor tail = Tensor::Wrap(a.data_as<float>() + 4, {4}, DType::kF32);
  MP_EXPECT_ERROR(CheckNoAlias("Op", "a", a, "tail", tail), StatusCode::kInvalidArgument,
                  "Op: a and tail must not overlap in memory");
  const Tensor empty = Tensor::Wrap(a.data(), {0}, DType::kF32);
  MP_EXPECT_OK(CheckNoAlias("Op", "a", a, "empty", empty));
}

TEST(OpChecksTest, CheckAttentionIoChecksQOutAndLse) {
  const Tensor q = Tensor::Host({5, 4, 8}, DType::kF32);
  Tensor out = Tensor::Host({5, 4, 8}, DType::kF32);
  Tensor lse = Tensor::Host({4, 5}, DType::kF32);
  MP_EXPECT_OK(CheckAttentionIo("Attn", &q, &out, &lse, DType::kF32, Placement::kCpu));
  MP_EXPECT_OK(CheckAttentionIo("Attn", &q, &out, nullptr, DType::kF32, Placement::kCpu));
  MP_EXPECT_ERROR(CheckAttentionIo("Attn", &q, nullptr, nullptr, DType::kF32, Placement::kCpu),
                  StatusCode::kInvalidArgument, "Attn: q and out must be given");
  Tensor bad_out = Tensor::Host({5, 4, 4}, DType::kF32);
  MP_EXPECT_ERROR(CheckAttentionIo("Attn", &q, &bad_out, nullptr, DType::kF32, Placement::kCpu),
                  StatusCode::kInvalidArgument, "Attn: out has shape [5, 4, 4]");
  Tensor bad_lse = Tensor::Host({5, 4}, DType::kF32);
  MP_EXPECT_ERROR(CheckAttentionIo("Attn", &q, &out, &bad_lse, DType::kF32, Placement::kCpu),
                  StatusCode::kInvalidArgument,
                  "Attn: lse has shape [5, 4] f32 on cpu, expected [4, 5] f32 on cpu");
  MP_EXPECT_ERROR(
      CheckAttentionIo("Attn", &q, const_cast<Tensor*>(&q), nullptr, DType::kF32, Placement::kCpu),
      StatusCode::kInvalidArgument, "q and out must not overlap");
}

TEST(OpChecksTest, CheckKvLayerOnTheCpuFormat) {
  KvLayerView kv;
  kv.k = Tensor::Host({3, 2, 4, 8}, DType::kF32);
  kv.v = Tensor::Host({3, 2, 4, 8}, DType::kF32);
  kv.block_table = HostTable({2, 0, 1});
  kv.block_size = 4;
  MP_EXPECT_OK(CheckKvLayer("Op", kv, 2, 8, 12, kCpuFormat));
  MP_EXPECT_ERROR(CheckKvLayer("Op", kv, 2, 8, 13, kCpuFormat), StatusCode::kInvalidArgument,
                  "Op: block table has 3 blocks but positions up to 13 need 4 blocks of 4");
  MP_EXPECT_ERROR(
      CheckKvLayer("Op", kv, 4, 8, 4, kCpuFormat), StatusCode::kInvalidArgument,
      "Op: K cache has shape [3, 2, 4, 8] f32 on cpu, expected [3, 4, 4, 8] f32 on cpu");
  kv.block_table = HostTable({2, 3, 1});
  MP_EXPECT_ERROR(CheckKvLayer("Op", kv, 2, 8, 8, kCpuFormat), StatusCode::kInvalidArgument,
                  "Op: block table entry 1 is block 3, outside [0, 3) of the cache");
  // Entries past the positions the op touches are not its business.
  MP_EXPECT_OK(CheckKvLayer("Op", kv, 2, 8, 4, kCpuFormat));
  kv.block_size = 0;
  MP_EXPECT_ERROR(CheckKvLayer("Op", kv, 2, 8, 4, kCpuFormat), StatusCode::kInvalidArgument,
                  "Op: block_size must be positive, got 0");
}

TEST(OpChecksTest, CheckKvLayerOnTheCudaFormat) {
  KvLayerView kv;
  kv.k = OnCuda({3, 2, 4, 8}, DType::kBF16);
  kv.v = OnCuda({3, 2, 4, 8}, DType::kBF16);
  kv.block_size = 4;
  // A device block table: only its length can be checked.
  kv.block_table = OnCuda({3}, DType::kI32);
  MP_EXPECT_OK(CheckKvLayer("Op", kv, 2, 8, 12, kCudaFormat));
  // A host one: its entries too.
  kv.block_table = HostTable({0, 7, 1});
  MP_EXPECT_ERROR(CheckKvLayer("Op", kv, 2, 8, 12, kCudaFormat), StatusCode::kInvalidArgument,
                  "block table entry 1 is block 7, outside [0, 3)");
  kv.block_table = HostTable({0, 2, 1});
  MP_EXPECT_OK(CheckKvLayer("Op", kv, 2, 8, 12, kCudaFormat));
  kv.v = Tensor::Host({3, 2, 4, 8}, DType::kBF16);
  MP_EXPECT_ERROR(
      CheckKvLayer("Op", kv, 2, 8, 12, kCudaFormat), StatusCode::kInvalidArgument,
      "Op: V cache has shape [3, 2, 4, 8] bf16 on cpu, expected [3, 2, 4, 8] bf16 on cuda");
  kv.k = OnCuda({3, 2, 4}, DType::kBF16);
  MP_EXPECT_ERROR(CheckKvLayer("Op", kv, 2, 8, 12, kCudaFormat), StatusCode::kInvalidArgument,
                  "expected [num_blocks, kv_heads, block_size, head_dim] bf16 on cuda");
  kv.k = OnCuda({3, 2, 4, 8}, DType::kBF16);
  kv.v = OnCuda({3, 2, 4, 8}, DType::kBF16);
  kv.block_table = OnCuda({3}, DType::kF32);
  MP_EXPECT_ERROR(CheckKvLayer("Op", kv, 2, 8, 12, kCudaFormat), StatusCode::kInvalidArgument,
                  "block table has shape [3] f32 on cuda, expected [*] i32 on cuda or cpu");
}

TEST(OpChecksTest, CheckGqaKvLayerNeedsKvHeadsThatDivideQHeads) {
  KvLayerView kv;
  kv.k = Tensor::Host({2, 3, 4, 8}, DType::kF32);
  kv.v = Tensor::Host({2, 3, 4, 8}, DType::kF32);
  kv.block_table = HostTable({1, 0});
  kv.block_size = 4;
  MP_EXPECT_OK(CheckGqaKvLayer("Attn", kv, 9, 8, 8, kCpuFormat));
  MP_EXPECT_ERROR(CheckGqaKvLayer("Attn", kv, 8, 8, 8, kCpuFormat), StatusCode::kInvalidArgument,
                  "Attn: q has 8 heads, not a multiple of the cache's 3 kv heads");
  MP_EXPECT_ERROR(CheckGqaKvLayer("Attn", kv, 9, 16, 8, kCpuFormat), StatusCode::kInvalidArgument,
                  "K cache has shape [2, 3, 4, 8] f32 on cpu, expected [2, 3, 4, 16] f32 on cpu");
}

}  // namespace
}  // namespace mp
