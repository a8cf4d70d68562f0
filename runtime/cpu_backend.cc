// CpuBackend: the fp32 reference backend. Every op checks shapes, dtypes and devices, then calls
// the kernels in kernels/cpu.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/string_view.h"
#include "common/status.h"
#include "kernels/cpu/attention.h"
#include "kernels/cpu/dca_attention.h"
#include "kernels/cpu/elementwise.h"
#include "kernels/cpu/gemm.h"
#include "kernels/cpu/rope.h"
#include "kernels/cpu/vertical_slash_prefill.h"
#include "runtime/backend.h"
#include "runtime/op_checks.h"

namespace mp {
namespace {

constexpr int64_t kAny = kAnyDim;
constexpr PagedCacheFormat kCacheFormat{DType::kF32, Placement::kCpu, Placement::kCpu};

absl::Status Expect(absl::string_view op, absl::string_view name, const Tensor& t, DType dtype,
                    const std::vector<int64_t>& shape) {
  return CheckTensor(op, name, t, dtype, shape, Placement::kCpu);
}
absl::Status ExpectKvLayer(absl::string_view op, const KvLayerView& kv, int64_t kv_heads,
                           int64_t head_dim, int64_t positions_end) {
  return CheckKvLayer(op, kv, kv_heads, head_dim, positions_end, kCacheFormat);
}
absl::Status ExpectGqaKvLayer(absl::string_view op, const KvLayerView& kv, int64_t q_heads,
                              int64_t head_dim, int64_t positions_end) {
  return CheckGqaKvLayer(op, kv, q_heads, head_dim, positions_end, kCacheFormat);
}

cpu::PagedKvView ToKernelView(const KvLayerView& kv) {
  cpu::PagedKvView view;
  view.k = kv.k.data_as<const float>();
  view.v = kv.v.data_as<const float>();
  view.block_table = kv.block_table.data_as<const int32_t>();
  view.block_size = kv.block_size;
  view.kv_heads = kv.k.dim(1);
  view.head_dim = kv.k.dim(3);
  return view;
}

absl::StatusOr<Tensor> AllocateHost(const std::vector<int64_t>& shape, DType dtype) {
  uint64_t bytes = DTypeSize(dtype);
  for (int64_t d : shape) {
    if (d < 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("Allocate: negative dimension in shape [", absl::StrJoin(shape, ", "), "]"));
    }
    if (d != 0 && bytes > std::numeric_limits<uint64_t>::max() / 2 / static_cast<uint64_t>(d)) {
      return absl::ResourceExhaustedError(
          absl::StrCat("Allocate: shape [", absl::StrJoin(shape, ", "), "] is too large"));
    }
    bytes *= static_cast<uint64_t>(d);
  }
  const uint64_t padded = std::max<uint64_t>((bytes + 63) / 64 * 64, 64);
  void* p = std::aligned_alloc(64, padded);
  if (p == nullptr) {
    return absl::ResourceExhaustedError(
        absl::StrCat("Allocate: cannot allocate ", bytes, " bytes of host memory for [",
                     absl::StrJoin(shape, ", "), "] ", DTypeName(dtype)));
  }
  std::memset(p, 0, padded);
  std::shared_ptr<void> owner(p, [](void* q) { std::free(q); });
  return Tensor::Wrap(p, shape, dtype, DeviceKind::kCpu, std::move(owner));
}

class CpuBackend final : public Backend {
 public:
  DeviceKind device() const override { return DeviceKind::kCpu; }
  std::string name() const override { return "cpu"; }
  DType compute_dtype() const override { return DType::kF32; }

  absl::StatusOr<Tensor> Allocate(std::vector<int64_t> shape, DType dtype) override {
    return AllocateHost(shape, dtype);
  }

  absl::StatusOr<Tensor> UploadWeight(const Tensor& host) override {
    if (!host.defined() || host.device() != DeviceKind::kCpu) {
      return absl::InvalidArgumentError(
          absl::StrCat("UploadWeight: expected a host tensor, got ", DescribeTensor(host)));
    }
    switch (host.dtype()) {
      case DType::kF32:
        return host;  // Already in the compute dtype: alias it.
      case DType::kF16:
      case DType::kBF16: {
        MP_ASSIGN_OR_RETURN(Tensor out, AllocateHost(host.shape(), DType::kF32));
        const auto* src = host.data_as<const uint16_t>();
        float* dst = out.data_as<float>();
        const int64_t n = host.numel();
        if (host.dtype() == DType::kBF16) {
          for (int64_t i = 0; i < n; ++i) dst[i] = BFloat16ToFloat(src[i]);
        } else {
          for (int64_t i = 0; i < n; ++i) dst[i] = HalfToFloat(src[i]);
        }
        return out;
      }
      default:
        return absl::InvalidArgumentError(absl::StrCat(
            "UploadWeight: weights must be f32, f16 or bf16, got ", host.ShapeString()));
    }
  }

  absl::Status CopyFromHost(const Tensor& host, Tensor& dst) override {
    return CopyBytes("CopyFromHost", host, dst);
  }
  absl::Status CopyToHost(const Tensor& src, Tensor& host) override {
    return CopyBytes("CopyToHost", src, host);
  }
  absl::Status Copy(const Tensor& src, Tensor& dst) override {
    MP_RETURN_IF_ERROR(CheckNoAlias("Copy", "src", src, "dst", dst));
    return CopyBytes("Copy", src, dst);
  }

  absl::StatusOr<Tensor> ToHostF32(const Tensor& src) override {
    if (src.device() != DeviceKind::kCpu || (!src.defined() && src.numel() > 0)) {
      return absl::InvalidArgumentError(
          absl::StrCat("ToHostF32: expected a cpu tensor, got ", DescribeTensor(src)));
    }
    if (src.dtype() != DType::kF32 && src.dtype() != DType::kF16 && src.dtype() != DType::kBF16) {
      return absl::InvalidArgumentError(
          absl::StrCat("ToHostF32: expected a floating-point tensor, got ", src.ShapeString()));
    }
    if (src.dtype() != DType::kF32) return UploadWeight(src);
    MP_ASSIGN_OR_RETURN(Tensor out, AllocateHost(src.shape(), DType::kF32));
    if (src.nbytes() > 0) std::memcpy(out.data(), src.data(), src.nbytes());
    return out;
  }

  absl::Status Synchronize() override { return absl::OkStatus(); }

  absl::Status Embedding(const Tensor& ids, const Tensor& table, Tensor& out) override {
    constexpr absl::string_view kOp = "Embedding";
    MP_RETURN_IF_ERROR(Expect(kOp, "ids", ids, DType::kI32, {kAny}));
    MP_RETURN_IF_ERROR(Expect(kOp, "table", table, DType::kF32, {kAny, kAny}));
    const int64_t n = ids.dim(0), vocab = table.dim(0), hidden = table.dim(1);
    MP_RETURN_IF_ERROR(Expect(kOp, "out", out, DType::kF32, {n, hidden}));
    const int32_t* id = ids.data_as<const int32_t>();
    for (int64_t i = 0; i < n; ++i) {
      if (id[i] < 0 || id[i] >= vocab) {
        return absl::InvalidArgumentError(
            absl::StrCat("Embedding: token id ", id[i], " at position ", i,
                         " is outside the vocabulary [0, ", vocab, ")"));
      }
    }
    if (n == 0) return absl::OkStatus();
    cpu::Embedding(id, n, table.data_as<const float>(), hidden, out.data_as<float>());
    return absl::OkStatus();
  }

  absl::Status RmsNorm(const Tensor& x, const Tensor& weight, float eps, Tensor& out) override {
    constexpr absl::string_view kOp = "RmsNorm";
    MP_RETURN_IF_ERROR(Expect(kOp, "x", x, DType::kF32, {kAny, kAny}));
    const int64_t n = x.dim(0), d = x.dim(1);
    MP_RETURN_IF_ERROR(Expect(kOp, "weight", weight, DType::kF32, {d}));
    MP_RETURN_IF_ERROR(Expect(kOp, "out", out, DType::kF32, {n, d}));
    if (!(eps >= 0.0f) || !std::isfinite(eps)) {
      return absl::InvalidArgumentError(absl::StrCat("RmsNorm: eps must be >= 0, got ", eps));
    }
    if (out.data() != x.data()) MP_RETURN_IF_ERROR(CheckNoAlias(kOp, "x", x, "out", out));
    if (n == 0 || d == 0) return absl::OkStatus();
    cpu::RmsNorm(x.data_as<const float>(), weight.data_as<const float>(), n, d, eps,
                 out.data_as<float>());
    return absl::OkStatus();
  }

  absl::Status Add(Tensor& x, const Tensor& y) override {
    MP_RETURN_IF_ERROR(Expect("Add", "x", x, DType::kF32, std::vector<int64_t>(x.rank(), kAny)));
    MP_RETURN_IF_ERROR(Expect("Add", "y", y, DType::kF32, x.shape()));
    if (x.numel() == 0) return absl::OkStatus();
    cpu::AddInPlace(x.data_as<float>(), y.data_as<const float>(), x.numel());
    return absl::OkStatus();
  }

  absl::Status Linear(const Tensor& x, const Tensor& w, const Tensor* bias, Tensor& y) override {
    constexpr absl::string_view kOp = "Linear";
    MP_RETURN_IF_ERROR(Expect(kOp, "x", x, DType::kF32, {kAny, kAny}));
    const int64_t n = x.dim(0), in = x.dim(1);
    MP_RETURN_IF_ERROR(Expect(kOp, "w", w, DType::kF32, {kAny, in}));
    const int64_t out = w.dim(0);
    if (bias != nullptr) MP_RETURN_IF_ERROR(Expect(kOp, "bias", *bias, DType::kF32, {out}));
    MP_RETURN_IF_ERROR(Expect(kOp, "y", y, DType::kF32, {n, out}));
    MP_RETURN_IF_ERROR(CheckNoAlias(kOp, "x", x, "y", y));
    if (n == 0 || out == 0) return absl::OkStatus();
    cpu::Linear(x.data_as<const float>(), w.data_as<const float>(),
                bias != nullptr ? bias->data_as<const float>() : nullptr, n, in, out,
                y.data_as<float>());
    return absl::OkStatus();
  }

  absl::Status Rope(Tensor& x, const Tensor& positions, double theta) override {
    constexpr absl::string_view kOp = "Rope";
    MP_RETURN_IF_ERROR(Expect(kOp, "x", x, DType::kF32, {kAny, kAny, kAny}));
    const int64_t n = x.dim(0), heads = x.dim(1), head_dim = x.dim(2);
    if (head_dim % 2 != 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("Rope: head_dim must be even, x has shape ", x.ShapeString()));
    }
    MP_RETURN_IF_ERROR(Expect(kOp, "positions", positions, DType::kI32, {n}));
    if (!(theta > 0.0) || !std::isfinite(theta)) {
      return absl::InvalidArgumentError(absl::StrCat("Rope: theta must be > 0, got ", theta));
    }
    if (x.numel() == 0) return absl::OkStatus();
    cpu::RopeNeox(x.data_as<float>(), positions.data_as<const int32_t>(), n, heads, head_dim,
                  theta);
    return absl::OkStatus();
  }

  absl::Status SiluMul(const Tensor& gate_up, Tensor& out) override {
    constexpr absl::string_view kOp = "SiluMul";
    MP_RETURN_IF_ERROR(Expect(kOp, "gate_up", gate_up, DType::kF32, {kAny, kAny}));
    const int64_t n = gate_up.dim(0);
    if (gate_up.dim(1) % 2 != 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          "SiluMul: gate_up has shape ", gate_up.ShapeString(), ", expected [n, 2 * inter]"));
    }
    const int64_t inter = gate_up.dim(1) / 2;
    MP_RETURN_IF_ERROR(Expect(kOp, "out", out, DType::kF32, {n, inter}));
    MP_RETURN_IF_ERROR(CheckNoAlias(kOp, "gate_up", gate_up, "out", out));
    if (n == 0 || inter == 0) return absl::OkStatus();
    cpu::SiluMul(gate_up.data_as<const float>(), n, inter, out.data_as<float>());
    return absl::OkStatus();
  }

  absl::Status WriteKv(const Tensor& k, const Tensor& v, int64_t start,
                       const KvLayerView& kv) override {
    constexpr absl::string_view kOp = "WriteKv";
    MP_RETURN_IF_ERROR(Expect(kOp, "k", k, DType::kF32, {kAny, kAny, kAny}));
    const int64_t n = k.dim(0), kv_heads = k.dim(1), head_dim = k.dim(2);
    MP_RETURN_IF_ERROR(Expect(kOp, "v", v, DType::kF32, {n, kv_heads, head_dim}));
    if (start < 0) {
      return absl::InvalidArgumentError(absl::StrCat("WriteKv: start must be >= 0, got ", start));
    }
    MP_RETURN_IF_ERROR(ExpectKvLayer(kOp, kv, kv_heads, head_dim, start + n));
    if (n == 0) return absl::OkStatus();
    cpu::WriteKv(k.data_as<const float>(), v.data_as<const float>(), n, start,
                 kv.k.data_as<float>(), kv.v.data_as<float>(),
                 kv.block_table.data_as<const int32_t>(), kv.block_size, kv_heads, head_dim);
    return absl::OkStatus();
  }

  absl::Status Attention(const AttentionParams& p) override {
    constexpr absl::string_view kOp = "Attention";
    MP_RETURN_IF_ERROR(CheckAttentionIo(kOp, p.q, p.out, p.lse, DType::kF32, Placement::kCpu));
    const int64_t n = p.q->dim(0), q_heads = p.q->dim(1), head_dim = p.q->dim(2);
    if (p.key_begin < 0 || p.key_end < p.key_begin) {
      return absl::InvalidArgumentError(
          absl::StrCat("Attention: key range [", p.key_begin, ", ", p.key_end, ") is invalid"));
    }
    if (!std::isfinite(p.scale)) {
      return absl::InvalidArgumentError("Attention: scale must be finite");
    }
    MP_RETURN_IF_ERROR(ExpectGqaKvLayer(kOp, p.kv, q_heads, head_dim, p.key_end));
    if (n == 0) return absl::OkStatus();
    cpu::AttentionShape shape;
    shape.num_queries = n;
    shape.q_heads = q_heads;
    shape.key_begin = p.key_begin;
    shape.key_end = p.key_end;
    shape.causal = p.causal;
    shape.scale = p.scale;
    cpu::PagedAttention(p.q->data_as<const float>(), ToKernelView(p.kv), shape,
                        p.out->data_as<float>(),
                        p.lse != nullptr ? p.lse->data_as<float>() : nullptr);
    return absl::OkStatus();
  }

  absl::Status DcaAttention(const DcaAttentionParams& p) override {
    constexpr absl::string_view kOp = "DcaAttention";
    MP_RETURN_IF_ERROR(CheckAttentionIo(kOp, p.q, p.out, p.lse, DType::kF32, Placement::kCpu));
    const int64_t n = p.q->dim(0), q_heads = p.q->dim(1), head_dim = p.q->dim(2);
    if (head_dim % 2 != 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          "DcaAttention: head_dim must be even for RoPE, q has shape ", p.q->ShapeString()));
    }
    if (p.chunk_len <= 0 || p.chunk_size < p.chunk_len ||
        p.chunk_size > std::numeric_limits<int32_t>::max()) {
      return absl::InvalidArgumentError(
          absl::StrCat("DcaAttention: chunk_len (", p.chunk_len, ") and chunk_size (",
                       p.chunk_size, ") must satisfy 0 < chunk_len <= chunk_size <= 2^31 - 1"));
    }
    if (p.kv.block_size > 0 && p.chunk_len % p.kv.block_size != 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("DcaAttention: the KV block size ", p.kv.block_size,
                       " must divide the DCA chunk length ", p.chunk_len));
    }
    if (p.query_begin < 0 ||
        p.query_begin > std::numeric_limits<int32_t>::max() - std::max<int64_t>(n, 0)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "DcaAttention: query_begin must be in [0, 2^31 - 1 - n], got ", p.query_begin));
    }
    if (!(p.rope_theta > 0.0) || !std::isfinite(p.rope_theta)) {
      return absl::InvalidArgumentError(
          absl::StrCat("DcaAttention: rope_theta must be > 0, got ", p.rope_theta));
    }
    if (!std::isfinite(p.scale)) {
      return absl::InvalidArgumentError("DcaAttention: scale must be finite");
    }
    if (!(p.temperature > 0.0f) || !std::isfinite(p.temperature)) {
      return absl::InvalidArgumentError(
          absl::StrCat("DcaAttention: temperature must be finite and > 0, got ", p.temperature));
    }
    MP_RETURN_IF_ERROR(ExpectGqaKvLayer(kOp, p.kv, q_heads, head_dim, p.query_begin + n));
    if (n == 0) return absl::OkStatus();
    cpu::DcaAttentionShape shape;
    shape.num_queries = n;
    shape.q_heads = q_heads;
    shape.query_begin = p.query_begin;
    shape.chunk_size = p.chunk_size;
    shape.chunk_len = p.chunk_len;
    shape.rope_theta = p.rope_theta;
    shape.scale = p.scale;
    shape.temperature = p.temperature;
    cpu::DcaPagedAttention(p.q->data_as<const float>(), ToKernelView(p.kv), shape,
                           p.out->data_as<float>(),
                           p.lse != nullptr ? p.lse->data_as<float>() : nullptr);
    return absl::OkStatus();
  }

  absl::Status VerticalSlashAttention(const VerticalSlashAttentionParams& p) override {
    constexpr absl::string_view kOp = "VerticalSlashAttention";
    MP_RETURN_IF_ERROR(CheckAttentionIo(kOp, p.q, p.out, p.lse, DType::kF32, Placement::kCpu));
    const int64_t n = p.q->dim(0), q_heads = p.q->dim(1), head_dim = p.q->dim(2);
    if (head_dim % 2 != 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("VerticalSlashAttention: head_dim must be even for RoPE, q has shape ",
                       p.q->ShapeString()));
    }
    MP_RETURN_IF_ERROR(ValidateVerticalSlashScalars(p, n, q_heads));
    MP_RETURN_IF_ERROR(ExpectGqaKvLayer(kOp, p.kv, q_heads, head_dim, p.query_begin + n));
    if (n == 0) return absl::OkStatus();
    cpu::VerticalSlashPrefillShape shape;
    shape.num_queries = n;
    shape.q_heads = q_heads;
    shape.query_begin = p.query_begin;
    shape.chunk_size = p.chunk_size;
    shape.chunk_len = p.chunk_size > 0 ? p.chunk_len : 0;
    shape.rope_theta = p.rope_theta;
    shape.scale = p.scale * p.temperature * p.temperature;
    shape.last_q = p.last_q;
    cpu::VerticalSlashPrefillAttention(p.q->data_as<const float>(), ToKernelView(p.kv), shape,
                                       p.budgets.data(), p.out->data_as<float>(),
                                       p.lse != nullptr ? p.lse->data_as<float>() : nullptr,
                                       p.index_keys.empty() ? nullptr : p.index_keys.data());
    return absl::OkStatus();
  }

 private:
  static absl::Status CopyBytes(absl::string_view op, const Tensor& src, Tensor& dst) {
    if (src.device() != DeviceKind::kCpu || dst.device() != DeviceKind::kCpu) {
      return absl::InvalidArgumentError(absl::StrCat(op, ": expected cpu tensors, got src ",
                                                     DescribeTensor(src), " and dst ",
                                                     DescribeTensor(dst)));
    }
    if (src.dtype() != dst.dtype() || src.numel() != dst.numel()) {
      return absl::InvalidArgumentError(absl::StrCat(op, ": src ", src.ShapeString(), " and dst ",
                                                     dst.ShapeString(),
                                                     " differ in dtype or element count"));
    }
    if (src.nbytes() == 0) return absl::OkStatus();
    if (!src.defined() || !dst.defined()) {
      return absl::InvalidArgumentError(absl::StrCat(op, ": undefined tensor"));
    }
    if (src.data() != dst.data()) std::memmove(dst.data(), src.data(), src.nbytes());
    return absl::OkStatus();
  }
};

}  // namespace

std::unique_ptr<Backend> NewCpuBackend() { return std::make_unique<CpuBackend>(); }

}  // namespace mp
