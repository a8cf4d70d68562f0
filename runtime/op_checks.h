// Argument checks shared by the backends' ops. Every failure is INVALID_ARGUMENT and names the
// op, the argument, what it is and what was expected, e.g.
//   "Linear: w has shape [64, 32] on cpu, expected [*, 64] f32 on cpu".
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "runtime/backend.h"
#include "runtime/tensor.h"

namespace mp {

// A dimension of an expected shape that may take any size.
inline constexpr int64_t kAnyDim = -1;

// Where an argument may live.
enum class Placement : uint8_t { kCpu, kCuda, kCudaOrCpu };

// "shape [2, 3] on cpu", or "an undefined tensor".
std::string DescribeTensor(const Tensor& t);

// Checks dtype, rank, every dimension of `shape` that is not kAnyDim, the device and that a
// non-empty tensor has storage.
absl::Status CheckTensor(absl::string_view op, absl::string_view name, const Tensor& t, DType dtype,
                         const std::vector<int64_t>& shape, Placement where);

// Fails when the storage of `a` and `b` overlaps (empty or storage-less tensors never do).
absl::Status CheckNoAlias(absl::string_view op, absl::string_view a_name, const Tensor& a,
                          absl::string_view b_name, const Tensor& b);

// The tensors of an attention op: q [n, q_heads, head_dim] and out of the same shape, not
// overlapping, both `dtype` on `where`, and lse [q_heads, n] f32 on `where` when given. q and out
// must be given.
absl::Status CheckAttentionIo(absl::string_view op, const Tensor* q, const Tensor* out,
                              const Tensor* lse, DType dtype, Placement where);

// The element type and placement of a backend's paged KV cache and of its block table.
struct PagedCacheFormat {
  DType dtype = DType::kF32;
  Placement cache = Placement::kCpu;
  Placement block_table = Placement::kCpu;
};

// The paged-cache geometry of `kv` against K/V rows [*, kv_heads, head_dim] and the highest
// sequence position the op touches (exclusive): block size, K/V pool shapes, a block table long
// enough and, when it lives on the host, entries inside the cache (a device table cannot be read
// without a copy; the kernels skip or read as absent blocks outside the cache).
absl::Status CheckKvLayer(absl::string_view op, const KvLayerView& kv, int64_t kv_heads,
                          int64_t head_dim, int64_t positions_end, const PagedCacheFormat& format);

// CheckKvLayer for an attention op over q_heads query heads: the cache's kv_heads (dim 1) must
// divide q_heads (GQA).
absl::Status CheckGqaKvLayer(absl::string_view op, const KvLayerView& kv, int64_t q_heads,
                             int64_t head_dim, int64_t positions_end,
                             const PagedCacheFormat& format);

}  // namespace mp
