#include "runtime/op_checks.h"

#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/status.h"

namespace mp {
namespace {

const char* PlacementName(Placement where) {
  switch (where) {
    case Placement::kCpu:
      return "cpu";
    case Placement::kCuda:
      return "cuda";
    case Placement::kCudaOrCpu:
      return "cuda or cpu";
  }
  return "?";
}

bool Allowed(Placement where, DeviceKind device) {
  switch (where) {
    case Placement::kCpu:
      return device == DeviceKind::kCpu;
    case Placement::kCuda:
      return device == DeviceKind::kCuda;
    case Placement::kCudaOrCpu:
      return true;
  }
  return false;
}

std::string ExpectedString(const std::vector<int64_t>& shape, DType dtype, Placement where) {
  std::vector<std::string> dims;
  dims.reserve(shape.size());
  for (int64_t d : shape) dims.push_back(d == kAnyDim ? "*" : absl::StrCat(d));
  return absl::StrCat("[", absl::StrJoin(dims, ", "), "] ", DTypeName(dtype), " on ",
                      PlacementName(where));
}

}  // namespace

std::string DescribeTensor(const Tensor& t) {
  if (!t.defined() && t.rank() == 0) return "an undefined tensor";
  return absl::StrCat("shape ", t.ShapeString(), " on ", DeviceName(t.device()));
}

absl::Status CheckTensor(absl::string_view op, absl::string_view name, const Tensor& t, DType dtype,
                         const std::vector<int64_t>& shape, Placement where) {
  bool ok = t.dtype() == dtype && Allowed(where, t.device()) &&
            t.rank() == static_cast<int>(shape.size());
  for (size_t i = 0; ok && i < shape.size(); ++i) {
    ok = t.shape()[i] >= 0 && (shape[i] == kAnyDim || t.shape()[i] == shape[i]);
  }
  if (ok && t.numel() > 0 && !t.defined()) ok = false;
  if (ok) return absl::OkStatus();
  const std::string actual = !t.defined() && t.rank() == 0
                                 ? std::string(" is undefined")
                                 : absl::StrCat(" has ", DescribeTensor(t));
  return absl::InvalidArgumentError(
      absl::StrCat(op, ": ", name, actual, ", expected ", ExpectedString(shape, dtype, where)));
}

absl::Status CheckNoAlias(absl::string_view op, absl::string_view a_name, const Tensor& a,
                          absl::string_view b_name, const Tensor& b) {
  const auto* a0 = static_cast<const char*>(a.data());
  const auto* b0 = static_cast<const char*>(b.data());
  if (a0 == nullptr || b0 == nullptr || a.nbytes() == 0 || b.nbytes() == 0) {
    return absl::OkStatus();
  }
  if (a0 < b0 + b.nbytes() && b0 < a0 + a.nbytes()) {
    return absl::InvalidArgumentError(
        absl::StrCat(op, ": ", a_name, " and ", b_name, " must not overlap in memory"));
  }
  return absl::OkStatus();
}

absl::Status CheckAttentionIo(absl::string_view op, const Tensor* q, const Tensor* out,
                              const Tensor* lse, DType dtype, Placement where) {
  if (q == nullptr || out == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat(op, ": q and out must be given"));
  }
  MP_RETURN_IF_ERROR(CheckTensor(op, "q", *q, dtype, {kAnyDim, kAnyDim, kAnyDim}, where));
  const int64_t n = q->dim(0), q_heads = q->dim(1), head_dim = q->dim(2);
  MP_RETURN_IF_ERROR(CheckTensor(op, "out", *out, dtype, {n, q_heads, head_dim}, where));
  MP_RETURN_IF_ERROR(CheckNoAlias(op, "q", *q, "out", *out));
  if (lse != nullptr) {
    MP_RETURN_IF_ERROR(CheckTensor(op, "lse", *lse, DType::kF32, {q_heads, n}, where));
  }
  return absl::OkStatus();
}

namespace {

absl::Status CheckCacheRank(absl::string_view op, const KvLayerView& kv,
                            const PagedCacheFormat& format) {
  if (kv.k.rank() == 4) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat(
      op, ": K cache has ", DescribeTensor(kv.k), ", expected [num_blocks, kv_heads, block_size, ",
      "head_dim] ", DTypeName(format.dtype), " on ", PlacementName(format.cache)));
}

}  // namespace

absl::Status CheckKvLayer(absl::string_view op, const KvLayerView& kv, int64_t kv_heads,
                          int64_t head_dim, int64_t positions_end, const PagedCacheFormat& format) {
  if (kv.block_size <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(op, ": block_size must be positive, got ", kv.block_size));
  }
  MP_RETURN_IF_ERROR(CheckCacheRank(op, kv, format));
  const int64_t num_blocks = kv.k.dim(0);
  const std::vector<int64_t> pool = {num_blocks, kv_heads, kv.block_size, head_dim};
  MP_RETURN_IF_ERROR(CheckTensor(op, "K cache", kv.k, format.dtype, pool, format.cache));
  MP_RETURN_IF_ERROR(CheckTensor(op, "V cache", kv.v, format.dtype, pool, format.cache));
  MP_RETURN_IF_ERROR(
      CheckTensor(op, "block table", kv.block_table, DType::kI32, {kAnyDim}, format.block_table));
  const int64_t blocks_needed = (positions_end + kv.block_size - 1) / kv.block_size;
  if (kv.block_table.dim(0) < blocks_needed) {
    return absl::InvalidArgumentError(absl::StrCat(
        op, ": block table has ", kv.block_table.dim(0), " blocks but positions up to ",
        positions_end, " need ", blocks_needed, " blocks of ", kv.block_size));
  }
  if (kv.block_table.device() == DeviceKind::kCpu) {
    const int32_t* table = kv.block_table.data_as<const int32_t>();
    for (int64_t i = 0; i < blocks_needed; ++i) {
      if (table[i] < 0 || table[i] >= num_blocks) {
        return absl::InvalidArgumentError(absl::StrCat(op, ": block table entry ", i, " is block ",
                                                       table[i], ", outside [0, ", num_blocks,
                                                       ") of the cache"));
      }
    }
  }
  return absl::OkStatus();
}

absl::Status CheckGqaKvLayer(absl::string_view op, const KvLayerView& kv, int64_t q_heads,
                             int64_t head_dim, int64_t positions_end,
                             const PagedCacheFormat& format) {
  MP_RETURN_IF_ERROR(CheckCacheRank(op, kv, format));
  const int64_t kv_heads = kv.k.dim(1);
  if (kv_heads <= 0 || q_heads % kv_heads != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        op, ": q has ", q_heads, " heads, not a multiple of the cache's ", kv_heads, " kv heads"));
  }
  return CheckKvLayer(op, kv, kv_heads, head_dim, positions_end, format);
}

}  // namespace mp
