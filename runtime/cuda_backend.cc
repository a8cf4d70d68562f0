// CudaBackend: shape/dtype/device checks, then the kernels of kernels/cuda and cuBLASLt.
#include "runtime/cuda_backend.h"

#include <cuda_bf16.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/string_view.h"
#include "common/status.h"
#include "kernels/cpu/vertical_slash_index.h"
#include "kernels/cuda/convert.h"
#include "kernels/cuda/decode_attention.h"
#include "kernels/cuda/elementwise.h"
#include "kernels/cuda/generic_attention.h"
#include "kernels/cuda/kv_write.h"
#include "kernels/cuda/paged_prefill_attention.h"
#include "kernels/cuda/paged_prefill_dca_attention.h"
#include "kernels/cuda/rope.h"
#include "kernels/cuda/sampling.h"
#include "kernels/cuda/vertical_slash_prefill.h"
#include "runtime/op_checks.h"

namespace mp {
namespace {

constexpr int64_t kAny = kAnyDim;

absl::Status CudaStatus(cudaError_t e, absl::string_view what) {
  if (e == cudaSuccess) return absl::OkStatus();
  cudaGetLastError();  // clears the error unless it is sticky
  const std::string message =
      absl::StrCat(what, ": ", cudaGetErrorName(e), " (", cudaGetErrorString(e), ")");
  if (e == cudaErrorMemoryAllocation) return absl::ResourceExhaustedError(message);
  return absl::InternalError(message);
}

const __nv_bfloat16* Bf16(const Tensor& t) { return t.data_as<const __nv_bfloat16>(); }
__nv_bfloat16* MutableBf16(const Tensor& t) { return t.data_as<__nv_bfloat16>(); }

constexpr PagedCacheFormat kCacheFormat{DType::kBF16, Placement::kCuda, Placement::kCudaOrCpu};

absl::Status Expect(absl::string_view op, absl::string_view name, const Tensor& t, DType dtype,
                    const std::vector<int64_t>& shape, Placement where = Placement::kCuda) {
  return CheckTensor(op, name, t, dtype, shape, where);
}
absl::Status ExpectKvLayer(absl::string_view op, const KvLayerView& kv, int64_t kv_heads,
                           int64_t head_dim, int64_t positions_end) {
  return CheckKvLayer(op, kv, kv_heads, head_dim, positions_end, kCacheFormat);
}

absl::StatusOr<cuda::ElementType> ElementTypeOf(absl::string_view op, const Tensor& t) {
  switch (t.dtype()) {
    case DType::kF32:
      return cuda::ElementType::kF32;
    case DType::kF16:
      return cuda::ElementType::kF16;
    case DType::kBF16:
      return cuda::ElementType::kBF16;
    default:
      return absl::InvalidArgumentError(
          absl::StrCat(op, ": expected an f32, f16 or bf16 tensor, got ", t.ShapeString()));
  }
}

// Makes `device` current for the calling thread.
absl::Status UseDevice(int device) {
  int current = -1;
  if (cudaGetDevice(&current) == cudaSuccess && current == device) return absl::OkStatus();
  return CudaStatus(cudaSetDevice(device), absl::StrCat("cudaSetDevice(", device, ")"));
}

}  // namespace

bool CudaEvent::Done() const {
  if (event_ == nullptr) return true;
  return cudaEventQuery(event_.get()) == cudaSuccess;
}

absl::Status CudaEvent::Wait() const {
  if (event_ == nullptr) return absl::OkStatus();
  return CudaStatus(cudaEventSynchronize(event_.get()), "cudaEventSynchronize");
}

absl::StatusOr<std::unique_ptr<CudaBackend>> CudaBackend::Create(const CudaBackendOptions& options) {
  int count = 0;
  const cudaError_t count_error = cudaGetDeviceCount(&count);
  if (count_error != cudaSuccess || count == 0) {
    cudaGetLastError();
    return absl::FailedPreconditionError(absl::StrCat(
        "CUDA backend: no CUDA device is available (",
        count_error != cudaSuccess ? cudaGetErrorString(count_error) : "0 devices", ")"));
  }
  if (options.device < 0 || options.device >= count) {
    return absl::FailedPreconditionError(absl::StrCat("CUDA backend: device ", options.device,
                                                      " does not exist (", count, " devices)"));
  }
  cudaDeviceProp prop{};
  MP_RETURN_IF_ERROR(CudaStatus(cudaGetDeviceProperties(&prop, options.device),
                                "cudaGetDeviceProperties"));
  if (prop.major != 9) {
    return absl::FailedPreconditionError(absl::StrCat(
        "CUDA backend: device ", options.device, " (", prop.name, ") is sm_", prop.major,
        prop.minor, "; the kernels are built for sm_90a (H100/H200) only"));
  }
  MP_RETURN_IF_ERROR(UseDevice(options.device));
  auto b = std::unique_ptr<CudaBackend>(new CudaBackend());
  b->device_ = options.device;
  b->options_ = options;
  b->name_ = absl::StrCat("cuda:", options.device, " (", prop.name, ")");
  MP_RETURN_IF_ERROR(CudaStatus(cudaStreamCreateWithFlags(&b->stream_, cudaStreamNonBlocking),
                                "cudaStreamCreate"));
  b->pool_ = CudaMemoryPool::Create(options.device);
  MP_ASSIGN_OR_RETURN(b->gemm_, CublasLtGemm::Create(b->pool_, options.gemm_workspace_bytes));
  b->num_sms_ = prop.multiProcessorCount;
  MP_ASSIGN_OR_RETURN(b->sample_out_, b->Allocate({1}, DType::kI32));
  MP_RETURN_IF_ERROR(CudaStatus(cudaMallocHost(reinterpret_cast<void**>(&b->sample_host_), sizeof(int32_t)),
                                "cudaMallocHost"));
  return b;
}

CudaBackend::~CudaBackend() {
  if (stream_ != nullptr) cudaStreamSynchronize(stream_);
  op_timer_.reset();
  inv_freq_.clear();
  staged_ints_ = Tensor();
  sample_out_ = Tensor();
  sample_workspace_ = Tensor();
  decode_ranges_ = Tensor();
  decode_workspace_ = Tensor();
  gemm_.reset();
  if (stream_ != nullptr) cudaStreamDestroy(stream_);
  if (sample_host_ != nullptr) cudaFreeHost(sample_host_);
}

CudaBackendStats CudaBackend::stats() const {
  CudaBackendStats s = stats_;
  s.gemm_plans = static_cast<int64_t>(gemm_->cached_plans());
  s.sparse_workspace_bytes =
      sparse_workspace_.defined() ? static_cast<int64_t>(sparse_workspace_.nbytes()) : 0;
  return s;
}

void CudaBackend::EnableOpTiming(bool on) {
  if (!on) {
    op_timer_.reset();
  } else if (op_timer_ == nullptr) {
    op_timer_ = std::make_unique<CudaOpTimer>(stream_);
  }
}

absl::StatusOr<std::vector<CudaOpTime>> CudaBackend::TakeOpTimes() {
  if (op_timer_ == nullptr) {
    return absl::FailedPreconditionError("TakeOpTimes: op timing is off (EnableOpTiming)");
  }
  MP_RETURN_IF_ERROR(UseDevice(device_));
  return op_timer_->Take();
}

absl::StatusOr<CudaEvent> CudaBackend::RecordEvent() {
  MP_RETURN_IF_ERROR(UseDevice(device_));
  cudaEvent_t event = nullptr;
  MP_RETURN_IF_ERROR(CudaStatus(cudaEventCreateWithFlags(&event, cudaEventDisableTiming),
                                "cudaEventCreate"));
  CudaEvent owned(std::shared_ptr<CUevent_st>(event, [](cudaEvent_t e) { cudaEventDestroy(e); }));
  MP_RETURN_IF_ERROR(CudaStatus(cudaEventRecord(event, stream_), "cudaEventRecord"));
  return owned;
}

absl::Status CudaBackend::WaitForEvent(const CudaEvent& event) {
  if (!event.defined()) return absl::OkStatus();
  return CudaStatus(cudaStreamWaitEvent(stream_, event.get(), 0), "cudaStreamWaitEvent");
}

// ---- memory ---------------------------------------------------------------------------------

absl::StatusOr<Tensor> CudaBackend::Allocate(std::vector<int64_t> shape, DType dtype) {
  uint64_t bytes = DTypeSize(dtype);
  for (int64_t d : shape) {
    if (d < 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("Allocate: negative dimension in shape [", absl::StrJoin(shape, ", "), "]"));
    }
    if (d != 0 && bytes > (uint64_t{1} << 62) / static_cast<uint64_t>(d)) {
      return absl::ResourceExhaustedError(
          absl::StrCat("Allocate: shape [", absl::StrJoin(shape, ", "), "] is too large"));
    }
    bytes *= static_cast<uint64_t>(d);
  }
  absl::StatusOr<std::shared_ptr<void>> block = pool_->Allocate(bytes);
  if (!block.ok()) {
    return Annotate(block.status(), absl::StrCat("Allocate [", absl::StrJoin(shape, ", "), "] ",
                                                 DTypeName(dtype)));
  }
  void* data = block->get();
  return Tensor::Wrap(data, std::move(shape), dtype, DeviceKind::kCuda, *std::move(block));
}

absl::StatusOr<Tensor> CudaBackend::UploadWeight(const Tensor& src) {
  constexpr absl::string_view kOp = "UploadWeight";
  if (!src.defined()) {
    return absl::InvalidArgumentError(
        absl::StrCat("UploadWeight: expected a weight tensor, got ", DescribeTensor(src)));
  }
  MP_ASSIGN_OR_RETURN(const cuda::ElementType type, ElementTypeOf(kOp, src));
  MP_RETURN_IF_ERROR(UseDevice(device_));
  if (src.device() == DeviceKind::kCuda) {
    if (type == cuda::ElementType::kBF16) return src;  // already in the compute dtype
    MP_ASSIGN_OR_RETURN(Tensor out, Allocate(src.shape(), DType::kBF16));
    MP_RETURN_IF_ERROR(CudaStatus(
        cuda::ConvertToBf16(src.data(), type, MutableBf16(out), src.numel(), stream_), kOp));
    return out;
  }
  MP_ASSIGN_OR_RETURN(Tensor out, Allocate(src.shape(), DType::kBF16));
  if (type == cuda::ElementType::kBF16) {
    MP_RETURN_IF_ERROR(CudaStatus(
        cudaMemcpyAsync(out.data(), src.data(), src.nbytes(), cudaMemcpyHostToDevice, stream_),
        "UploadWeight: copy to the device"));
    return out;
  }
  // f32 / f16: raw chunks to a staging buffer, converted on the device.
  const size_t elem = DTypeSize(src.dtype());
  const int64_t total = src.numel();
  const int64_t chunk =
      std::max<int64_t>(1, static_cast<int64_t>(options_.upload_staging_bytes / elem));
  MP_ASSIGN_OR_RETURN(Tensor staging, Allocate({std::min(chunk, total)}, src.dtype()));
  for (int64_t begin = 0; begin < total; begin += chunk) {
    const int64_t count = std::min(chunk, total - begin);
    MP_RETURN_IF_ERROR(CudaStatus(
        cudaMemcpyAsync(staging.data(), static_cast<const char*>(src.data()) + begin * elem,
                        count * elem, cudaMemcpyHostToDevice, stream_),
        "UploadWeight: copy to the device"));
    MP_RETURN_IF_ERROR(CudaStatus(
        cuda::ConvertToBf16(staging.data(), type, MutableBf16(out) + begin, count, stream_),
        "UploadWeight: convert to bf16"));
  }
  return out;
}

namespace {

absl::Status ExpectCopyable(absl::string_view op, const Tensor& src, DeviceKind src_device,
                            const Tensor& dst, DeviceKind dst_device) {
  if (src.device() != src_device || dst.device() != dst_device) {
    return absl::InvalidArgumentError(absl::StrCat(
        op, ": expected src on ", DeviceName(src_device), " and dst on ", DeviceName(dst_device),
        ", got src ", DescribeTensor(src), " and dst ", DescribeTensor(dst)));
  }
  if (src.dtype() != dst.dtype() || src.numel() != dst.numel()) {
    return absl::InvalidArgumentError(absl::StrCat(op, ": src ", src.ShapeString(), " and dst ",
                                                   dst.ShapeString(),
                                                   " differ in dtype or element count"));
  }
  if (src.nbytes() > 0 && (!src.defined() || !dst.defined())) {
    return absl::InvalidArgumentError(absl::StrCat(op, ": undefined tensor"));
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status CudaBackend::CopyFromHost(const Tensor& host, Tensor& dst) {
  MP_RETURN_IF_ERROR(ExpectCopyable("CopyFromHost", host, DeviceKind::kCpu, dst, DeviceKind::kCuda));
  if (host.nbytes() == 0) return absl::OkStatus();
  MP_RETURN_IF_ERROR(UseDevice(device_));
  return CudaStatus(
      cudaMemcpyAsync(dst.data(), host.data(), host.nbytes(), cudaMemcpyHostToDevice, stream_),
      "CopyFromHost");
}

absl::Status CudaBackend::CopyToHost(const Tensor& src, Tensor& host) {
  MP_RETURN_IF_ERROR(ExpectCopyable("CopyToHost", src, DeviceKind::kCuda, host, DeviceKind::kCpu));
  if (src.nbytes() == 0) return absl::OkStatus();
  MP_RETURN_IF_ERROR(UseDevice(device_));
  MP_RETURN_IF_ERROR(CudaStatus(
      cudaMemcpyAsync(host.data(), src.data(), src.nbytes(), cudaMemcpyDeviceToHost, stream_),
      "CopyToHost"));
  return CudaStatus(cudaStreamSynchronize(stream_), "CopyToHost: synchronize");
}

absl::Status CudaBackend::Copy(const Tensor& src, Tensor& dst) {
  MP_RETURN_IF_ERROR(ExpectCopyable("Copy", src, DeviceKind::kCuda, dst, DeviceKind::kCuda));
  MP_RETURN_IF_ERROR(CheckNoAlias("Copy", "src", src, "dst", dst));
  if (src.nbytes() == 0 || src.data() == dst.data()) return absl::OkStatus();
  MP_RETURN_IF_ERROR(UseDevice(device_));
  return CudaStatus(
      cudaMemcpyAsync(dst.data(), src.data(), src.nbytes(), cudaMemcpyDeviceToDevice, stream_),
      "Copy");
}

absl::StatusOr<Tensor> CudaBackend::ToHostF32(const Tensor& src) {
  if (src.device() != DeviceKind::kCuda || (!src.defined() && src.numel() > 0)) {
    return absl::InvalidArgumentError(
        absl::StrCat("ToHostF32: expected a cuda tensor, got ", DescribeTensor(src)));
  }
  MP_ASSIGN_OR_RETURN(const cuda::ElementType type, ElementTypeOf("ToHostF32", src));
  MP_RETURN_IF_ERROR(UseDevice(device_));
  Tensor out = Tensor::Host(src.shape(), DType::kF32);
  const int64_t n = src.numel();
  if (n == 0) return out;
  if (type == cuda::ElementType::kF32) {
    MP_RETURN_IF_ERROR(CopyToHost(src, out));
    return out;
  }
  // 16-bit values: copy the raw bits, widen on the host (exact).
  std::vector<uint16_t> raw(static_cast<size_t>(n));
  MP_RETURN_IF_ERROR(CudaStatus(cudaMemcpyAsync(raw.data(), src.data(), src.nbytes(),
                                                cudaMemcpyDeviceToHost, stream_),
                                "ToHostF32"));
  MP_RETURN_IF_ERROR(CudaStatus(cudaStreamSynchronize(stream_), "ToHostF32: synchronize"));
  float* dst = out.data_as<float>();
  if (type == cuda::ElementType::kBF16) {
    for (int64_t i = 0; i < n; ++i) dst[i] = BFloat16ToFloat(raw[i]);
  } else {
    for (int64_t i = 0; i < n; ++i) dst[i] = HalfToFloat(raw[i]);
  }
  return out;
}

absl::Status CudaBackend::Synchronize() {
  MP_RETURN_IF_ERROR(UseDevice(device_));
  return CudaStatus(cudaStreamSynchronize(stream_), "Synchronize");
}

absl::StatusOr<const int32_t*> CudaBackend::DeviceInts(const Tensor& t) {
  if (t.device() == DeviceKind::kCuda) return t.data_as<const int32_t>();
  // The last host array staged is kept: the positions of a chunk go to every layer's RoPE.
  const size_t bytes = t.nbytes();
  if (staged_ints_.defined() && staged_host_.size() * sizeof(int32_t) == bytes &&
      (bytes == 0 || std::memcmp(staged_host_.data(), t.data(), bytes) == 0)) {
    return staged_ints_.data_as<const int32_t>();
  }
  MP_ASSIGN_OR_RETURN(Tensor staged, Allocate({t.numel()}, DType::kI32));
  MP_RETURN_IF_ERROR(CopyFromHost(t.Reshape({t.numel()}), staged));
  staged_ints_ = std::move(staged);
  staged_host_.assign(t.data_as<const int32_t>(), t.data_as<const int32_t>() + t.numel());
  return staged_ints_.data_as<const int32_t>();
}

// ---- ops ------------------------------------------------------------------------------------

absl::Status CudaBackend::Embedding(const Tensor& ids, const Tensor& table, Tensor& out) {
  ScopedCudaOpTime timed(op_timer_.get(), CudaOpKind::kElementwise);
  constexpr absl::string_view kOp = "Embedding";
  MP_RETURN_IF_ERROR(Expect(kOp, "ids", ids, DType::kI32, {kAny}, Placement::kCudaOrCpu));
  MP_RETURN_IF_ERROR(Expect(kOp, "table", table, DType::kBF16, {kAny, kAny}));
  const int64_t n = ids.dim(0), vocab = table.dim(0), hidden = table.dim(1);
  MP_RETURN_IF_ERROR(Expect(kOp, "out", out, DType::kBF16, {n, hidden}));
  if (n == 0) return absl::OkStatus();
  MP_RETURN_IF_ERROR(UseDevice(device_));
  // The ids are checked on the host: device ids are copied back first.
  Tensor host_ids = ids;
  if (ids.device() == DeviceKind::kCuda) {
    host_ids = Tensor::Host({n}, DType::kI32);
    MP_RETURN_IF_ERROR(CopyToHost(ids, host_ids));
  }
  const int32_t* id = host_ids.data_as<const int32_t>();
  for (int64_t i = 0; i < n; ++i) {
    if (id[i] < 0 || id[i] >= vocab) {
      return absl::InvalidArgumentError(absl::StrCat("Embedding: token id ", id[i],
                                                     " at position ", i,
                                                     " is outside the vocabulary [0, ", vocab,
                                                     ")"));
    }
  }
  MP_ASSIGN_OR_RETURN(const int32_t* device_ids, DeviceInts(ids));
  return CudaStatus(
      cuda::Embedding(device_ids, n, Bf16(table), hidden, MutableBf16(out), stream_), kOp);
}

absl::Status CudaBackend::RmsNorm(const Tensor& x, const Tensor& weight, float eps, Tensor& out) {
  ScopedCudaOpTime timed(op_timer_.get(), CudaOpKind::kElementwise);
  constexpr absl::string_view kOp = "RmsNorm";
  MP_RETURN_IF_ERROR(Expect(kOp, "x", x, DType::kBF16, {kAny, kAny}));
  const int64_t n = x.dim(0), d = x.dim(1);
  MP_RETURN_IF_ERROR(Expect(kOp, "weight", weight, DType::kBF16, {d}));
  MP_RETURN_IF_ERROR(Expect(kOp, "out", out, DType::kBF16, {n, d}));
  if (!(eps >= 0.0f) || !std::isfinite(eps)) {
    return absl::InvalidArgumentError(absl::StrCat("RmsNorm: eps must be >= 0, got ", eps));
  }
  if (out.data() != x.data()) MP_RETURN_IF_ERROR(CheckNoAlias(kOp, "x", x, "out", out));
  if (n == 0 || d == 0) return absl::OkStatus();
  MP_RETURN_IF_ERROR(UseDevice(device_));
  return CudaStatus(cuda::RmsNorm(Bf16(x), Bf16(weight), n, d, eps, MutableBf16(out), stream_),
                    kOp);
}

absl::Status CudaBackend::Add(Tensor& x, const Tensor& y) {
  ScopedCudaOpTime timed(op_timer_.get(), CudaOpKind::kElementwise);
  MP_RETURN_IF_ERROR(Expect("Add", "x", x, DType::kBF16, std::vector<int64_t>(x.rank(), kAny)));
  MP_RETURN_IF_ERROR(Expect("Add", "y", y, DType::kBF16, x.shape()));
  if (x.numel() == 0) return absl::OkStatus();
  MP_RETURN_IF_ERROR(UseDevice(device_));
  return CudaStatus(cuda::AddInPlace(MutableBf16(x), Bf16(y), x.numel(), stream_), "Add");
}

absl::Status CudaBackend::Linear(const Tensor& x, const Tensor& w, const Tensor* bias, Tensor& y) {
  ScopedCudaOpTime timed(op_timer_.get(), CudaOpKind::kLinear);
  constexpr absl::string_view kOp = "Linear";
  MP_RETURN_IF_ERROR(Expect(kOp, "x", x, DType::kBF16, {kAny, kAny}));
  const int64_t n = x.dim(0), in = x.dim(1);
  MP_RETURN_IF_ERROR(Expect(kOp, "w", w, DType::kBF16, {kAny, in}));
  const int64_t out = w.dim(0);
  if (bias != nullptr) MP_RETURN_IF_ERROR(Expect(kOp, "bias", *bias, DType::kBF16, {out}));
  MP_RETURN_IF_ERROR(Expect(kOp, "y", y, DType::kBF16, {n, out}));
  MP_RETURN_IF_ERROR(CheckNoAlias(kOp, "x", x, "y", y));
  MP_RETURN_IF_ERROR(CheckNoAlias(kOp, "w", w, "y", y));
  if (bias != nullptr) MP_RETURN_IF_ERROR(CheckNoAlias(kOp, "bias", *bias, "y", y));
  if (n == 0 || out == 0) return absl::OkStatus();
  MP_RETURN_IF_ERROR(UseDevice(device_));
  if (in == 0) {  // an empty sum: y = bias or 0
    MP_RETURN_IF_ERROR(CudaStatus(cudaMemsetAsync(y.data(), 0, y.nbytes(), stream_), kOp));
    if (bias == nullptr) return absl::OkStatus();
    for (int64_t r = 0; r < n; ++r) {
      MP_RETURN_IF_ERROR(CudaStatus(cudaMemcpyAsync(MutableBf16(y) + r * out, bias->data(),
                                                    bias->nbytes(), cudaMemcpyDeviceToDevice,
                                                    stream_),
                                    kOp));
    }
    return absl::OkStatus();
  }
  return Annotate(gemm_->LinearBf16(x.data(), w.data(), bias != nullptr ? bias->data() : nullptr,
                                    y.data(), n, out, in, stream_),
                  "Linear");
}

absl::StatusOr<const float*> CudaBackend::InvFreq(double theta, int64_t head_dim) {
  auto it = inv_freq_.find(InvFreqKey{theta, head_dim});
  if (it != inv_freq_.end()) return it->second.data_as<const float>();
  Tensor host = Tensor::Host({head_dim / 2}, DType::kF32);
  cuda::RopeInvFreq(theta, head_dim, host.data_as<float>());
  MP_ASSIGN_OR_RETURN(Tensor device, Allocate({head_dim / 2}, DType::kF32));
  MP_RETURN_IF_ERROR(CopyFromHost(host, device));
  const float* data = device.data_as<const float>();
  inv_freq_.emplace(InvFreqKey{theta, head_dim}, std::move(device));
  return data;
}

absl::Status CudaBackend::Rope(Tensor& x, const Tensor& positions, double theta) {
  ScopedCudaOpTime timed(op_timer_.get(), CudaOpKind::kElementwise);
  constexpr absl::string_view kOp = "Rope";
  MP_RETURN_IF_ERROR(Expect(kOp, "x", x, DType::kBF16, {kAny, kAny, kAny}));
  const int64_t n = x.dim(0), heads = x.dim(1), head_dim = x.dim(2);
  if (head_dim % 2 != 0 || head_dim > 8192) {
    return absl::InvalidArgumentError(absl::StrCat(
        "Rope: head_dim must be even and at most 8192, x has shape ", x.ShapeString()));
  }
  MP_RETURN_IF_ERROR(Expect(kOp, "positions", positions, DType::kI32, {n}, Placement::kCudaOrCpu));
  if (!(theta > 0.0) || !std::isfinite(theta)) {
    return absl::InvalidArgumentError(absl::StrCat("Rope: theta must be > 0, got ", theta));
  }
  if (x.numel() == 0) return absl::OkStatus();
  MP_RETURN_IF_ERROR(UseDevice(device_));
  MP_ASSIGN_OR_RETURN(const float* inv_freq, InvFreq(theta, head_dim));
  MP_ASSIGN_OR_RETURN(const int32_t* pos, DeviceInts(positions));
  return CudaStatus(
      cuda::RopeNeox(MutableBf16(x), pos, inv_freq, n, heads, head_dim, stream_), kOp);
}

absl::Status CudaBackend::SiluMul(const Tensor& gate_up, Tensor& out) {
  ScopedCudaOpTime timed(op_timer_.get(), CudaOpKind::kElementwise);
  constexpr absl::string_view kOp = "SiluMul";
  MP_RETURN_IF_ERROR(Expect(kOp, "gate_up", gate_up, DType::kBF16, {kAny, kAny}));
  const int64_t n = gate_up.dim(0);
  if (gate_up.dim(1) % 2 != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "SiluMul: gate_up has shape ", gate_up.ShapeString(), ", expected [n, 2 * inter]"));
  }
  const int64_t inter = gate_up.dim(1) / 2;
  MP_RETURN_IF_ERROR(Expect(kOp, "out", out, DType::kBF16, {n, inter}));
  MP_RETURN_IF_ERROR(CheckNoAlias(kOp, "gate_up", gate_up, "out", out));
  if (n == 0 || inter == 0) return absl::OkStatus();
  MP_RETURN_IF_ERROR(UseDevice(device_));
  return CudaStatus(cuda::SiluMul(Bf16(gate_up), n, inter, MutableBf16(out), stream_), kOp);
}

absl::Status CudaBackend::WriteKv(const Tensor& k, const Tensor& v, int64_t start,
                                  const KvLayerView& kv) {
  ScopedCudaOpTime timed(op_timer_.get(), CudaOpKind::kElementwise);
  constexpr absl::string_view kOp = "WriteKv";
  MP_RETURN_IF_ERROR(Expect(kOp, "k", k, DType::kBF16, {kAny, kAny, kAny}));
  const int64_t n = k.dim(0), kv_heads = k.dim(1), head_dim = k.dim(2);
  MP_RETURN_IF_ERROR(Expect(kOp, "v", v, DType::kBF16, {n, kv_heads, head_dim}));
  if (start < 0) {
    return absl::InvalidArgumentError(absl::StrCat("WriteKv: start must be >= 0, got ", start));
  }
  MP_RETURN_IF_ERROR(ExpectKvLayer(kOp, kv, kv_heads, head_dim, start + n));
  if (n == 0) return absl::OkStatus();
  MP_RETURN_IF_ERROR(UseDevice(device_));
  MP_ASSIGN_OR_RETURN(const int32_t* table, DeviceInts(kv.block_table));
  cuda::PagedKvWriteArgs a;
  a.k = Bf16(k);
  a.v = Bf16(v);
  a.k_cache = MutableBf16(kv.k);
  a.v_cache = MutableBf16(kv.v);
  a.block_table = table;
  a.n = n;
  a.start = start;
  a.kv_heads = kv_heads;
  a.head_dim = head_dim;
  a.num_blocks = kv.k.dim(0);
  a.block_size = kv.block_size;
  return CudaStatus(cuda::WritePagedKv(a, stream_), kOp);
}

namespace {

// The tensors of an attention op: q [n, q_heads, head_dim] bf16, out of the same shape, lse
// [q_heads, n] f32 when given, and a paged cache whose kv heads divide q_heads and whose table
// covers positions [0, key_end).
absl::Status ExpectAttentionTensors(absl::string_view op, const Tensor* q, const Tensor* out,
                                    const Tensor* lse, const KvLayerView& kv, int64_t key_end) {
  MP_RETURN_IF_ERROR(CheckAttentionIo(op, q, out, lse, DType::kBF16, Placement::kCuda));
  const int64_t q_heads = q->dim(1), head_dim = q->dim(2);
  return CheckGqaKvLayer(op, kv, q_heads, head_dim, key_end, kCacheFormat);
}

// The kernel arguments every attention launch shares (the key range and mask are the caller's).
cuda::PagedPrefillAttentionArgs PrefillArgs(const Tensor& q, const KvLayerView& kv,
                                            const int32_t* table, Tensor& out, Tensor* lse) {
  cuda::PagedPrefillAttentionArgs a;
  a.q = Bf16(q);
  a.k_cache = Bf16(kv.k);
  a.v_cache = Bf16(kv.v);
  a.block_table = table;
  a.out = MutableBf16(out);
  a.lse = lse != nullptr ? lse->data_as<float>() : nullptr;
  a.num_queries = q.dim(0);
  a.q_heads = q.dim(1);
  a.kv_heads = kv.k.dim(1);
  a.head_dim = q.dim(2);
  a.num_blocks = kv.k.dim(0);
  a.block_size = kv.block_size;
  return a;
}

}  // namespace

absl::Status CudaBackend::Attention(const AttentionParams& p) {
  ScopedCudaOpTime timed(op_timer_.get(), CudaOpKind::kAttention);
  constexpr absl::string_view kOp = "Attention";
  if (p.key_begin < 0 || p.key_end < p.key_begin) {
    return absl::InvalidArgumentError(
        absl::StrCat("Attention: key range [", p.key_begin, ", ", p.key_end, ") is invalid"));
  }
  if (!std::isfinite(p.scale)) {
    return absl::InvalidArgumentError("Attention: scale must be finite");
  }
  MP_RETURN_IF_ERROR(ExpectAttentionTensors(kOp, p.q, p.out, p.lse, p.kv, p.key_end));
  const int64_t n = p.q->dim(0), q_heads = p.q->dim(1), head_dim = p.q->dim(2);
  const int64_t kv_heads = p.kv.k.dim(1);
  if (n == 0) return absl::OkStatus();
  MP_RETURN_IF_ERROR(UseDevice(device_));
  MP_ASSIGN_OR_RETURN(const int32_t* table, DeviceInts(p.kv.block_table));

  cuda::PagedPrefillAttentionArgs a = PrefillArgs(*p.q, p.kv, table, *p.out, p.lse);
  a.key_begin = p.key_begin;
  a.key_end = p.key_end;
  a.causal = p.causal;
  a.scale = p.scale;
  if (cuda::PagedPrefillAttentionUnsupported(a).empty()) {
    if (n == 1) return SingleQueryAttention(p, table);
    ++stats_.prefill_attention_calls;
    return CudaStatus(cuda::PagedPrefillAttention(a, stream_), "Attention (sm_90a prefill)");
  }
  // Geometries the sm_90a kernel does not take (head_dim, block size, scale <= 0, alignment).
  cuda::GenericAttentionArgs g;
  g.q = a.q;
  g.k_cache = a.k_cache;
  g.v_cache = a.v_cache;
  g.block_table = a.block_table;
  g.out = a.out;
  g.lse = a.lse;
  g.num_queries = n;
  g.q_heads = q_heads;
  g.kv_heads = kv_heads;
  g.head_dim = head_dim;
  g.num_blocks = a.num_blocks;
  g.block_size = a.block_size;
  g.key_begin = a.key_begin;
  g.key_end = a.key_end;
  g.causal = a.causal;
  g.scale = a.scale;
  const std::string unsupported = cuda::GenericAttentionUnsupported(g);
  if (!unsupported.empty()) {
    return absl::InvalidArgumentError(absl::StrCat("Attention: ", unsupported));
  }
  ++stats_.generic_attention_calls;
  return CudaStatus(cuda::GenericPagedAttention(g, stream_), "Attention (generic)");
}

absl::StatusOr<cuda::DecodeAttentionArgs> CudaBackend::DecodeArgs(
    const Tensor& q, const KvLayerView& kv, const int32_t* table, Tensor& out, Tensor* lse,
    int64_t key_begin, int64_t key_end, float scale) {
  const int64_t kv_heads = kv.k.dim(1), block_size = kv.block_size;
  cuda::DecodeAttentionArgs d;
  d.q = Bf16(q);
  d.k_cache = Bf16(kv.k);
  d.v_cache = Bf16(kv.v);
  d.block_tables = table;
  d.out = MutableBf16(out);
  d.lse = lse != nullptr ? lse->data_as<float>() : nullptr;
  d.num_seqs = 1;
  d.q_heads = q.dim(1);
  d.kv_heads = kv_heads;
  d.head_dim = q.dim(2);
  d.num_blocks = kv.k.dim(0);
  d.block_size = block_size;
  d.table_stride = std::max<int64_t>(1, (key_end + block_size - 1) / block_size);
  d.num_splits =
      cuda::DecodeAttentionDefaultSplits(1, kv_heads, key_end - key_begin, num_sms_);
  d.scale = scale;
  if (!decode_ranges_.defined()) {
    MP_ASSIGN_OR_RETURN(decode_ranges_, Allocate({2}, DType::kI32));
  }
  // Keys from 0 pass no begin array (the DCA decode kernel requires that).
  d.key_begin = key_begin == 0 ? nullptr : decode_ranges_.data_as<const int32_t>();
  d.key_end = decode_ranges_.data_as<const int32_t>() + 1;
  const int64_t ws_bytes = cuda::DecodeAttentionWorkspaceBytes(d);
  if (ws_bytes > 0 && (!decode_workspace_.defined() ||
                       static_cast<int64_t>(decode_workspace_.nbytes()) < ws_bytes)) {
    MP_ASSIGN_OR_RETURN(decode_workspace_, Allocate({ws_bytes}, DType::kU8));
  }
  d.workspace = ws_bytes > 0 ? decode_workspace_.data() : nullptr;
  d.workspace_bytes = ws_bytes;
  return d;
}

absl::Status CudaBackend::StageDecodeRange(int64_t key_begin, int64_t key_end) {
  // Pageable source: the copy takes the values before returning, so `range` may go out of scope.
  const int32_t range[2] = {static_cast<int32_t>(key_begin), static_cast<int32_t>(key_end)};
  return CudaStatus(cudaMemcpyAsync(decode_ranges_.data(), range, sizeof(range),
                                    cudaMemcpyHostToDevice, stream_),
                    "decode key range");
}

// One query row (decode) against the paged cache: the split-KV decode kernel
// (kernels/cuda/decode_attention.h), whose contract for one query equals the prefill kernel's
// (a single bottom-right causal row sees every key of its range). Shapes the decode kernel does
// not take (more than 16 query heads per KV head) go to the prefill kernel.
absl::Status CudaBackend::SingleQueryAttention(const AttentionParams& p,
                                               const int32_t* block_table) {
  ++stats_.single_query_attention_calls;
  MP_ASSIGN_OR_RETURN(cuda::DecodeAttentionArgs d,
                      DecodeArgs(*p.q, p.kv, block_table, *p.out, p.lse, p.key_begin, p.key_end,
                                 p.scale));
  if (!cuda::DecodeAttentionUnsupported(d, nullptr).empty()) {
    cuda::PagedPrefillAttentionArgs a = PrefillArgs(*p.q, p.kv, block_table, *p.out, p.lse);
    a.key_begin = p.key_begin;
    a.key_end = p.key_end;
    a.causal = p.causal;
    a.scale = p.scale;
    return CudaStatus(cuda::PagedPrefillAttention(a, stream_), "Attention (single query)");
  }
  MP_RETURN_IF_ERROR(StageDecodeRange(p.key_begin, p.key_end));
  ++stats_.decode_attention_calls;
  return CudaStatus(cuda::DecodeAttention(d, stream_), "Attention (split-KV decode)");
}

// Dual chunk attention (backend.h: K cached unscaled and rotated by j mod C, logits carry
// scale * temperature^2): the fused sm_90a kernels, which rotate the query per key region
// themselves. Prefill chunks take kernels/cuda/paged_prefill_dca_attention.h, single queries
// the split-KV DCA decode kernel (kernels/cuda/decode_attention.h).
absl::Status CudaBackend::DcaAttention(const DcaAttentionParams& p) {
  ScopedCudaOpTime timed(op_timer_.get(), CudaOpKind::kDcaAttention);
  constexpr absl::string_view kOp = "DcaAttention";
  if (p.query_begin < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("DcaAttention: query_begin must be >= 0, got ", p.query_begin));
  }
  if (!(p.temperature >= 1.0f) || !std::isfinite(p.temperature) || !std::isfinite(p.scale) ||
      !(p.scale > 0.0f)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "DcaAttention: scale must be positive and temperature >= 1, got scale ", p.scale,
        " and temperature ", p.temperature));
  }
  const int64_t n = p.q != nullptr ? p.q->dim(0) : 0;
  const int64_t key_end = p.query_begin + n;
  MP_RETURN_IF_ERROR(ExpectAttentionTensors(kOp, p.q, p.out, p.lse, p.kv, key_end));
  if (n == 0) return absl::OkStatus();
  MP_RETURN_IF_ERROR(UseDevice(device_));
  MP_ASSIGN_OR_RETURN(const int32_t* table, DeviceInts(p.kv.block_table));
  cuda::DcaParams dca;
  dca.chunk_len = p.chunk_len;
  dca.chunk_size = p.chunk_size;
  dca.rope_theta = p.rope_theta;
  const float scale = p.scale * p.temperature * p.temperature;

  if (n == 1) {
    MP_ASSIGN_OR_RETURN(cuda::DecodeAttentionArgs d,
                        DecodeArgs(*p.q, p.kv, table, *p.out, p.lse, 0, key_end, scale));
    const std::string unsupported = cuda::DecodeAttentionUnsupported(d, &dca);
    if (!unsupported.empty()) {
      return absl::InvalidArgumentError(absl::StrCat("DcaAttention (decode): ", unsupported));
    }
    MP_RETURN_IF_ERROR(StageDecodeRange(0, key_end));
    ++stats_.dca_decode_calls;
    return CudaStatus(cuda::DcaDecodeAttention(d, dca, stream_), "DcaAttention (decode)");
  }
  cuda::PagedPrefillAttentionArgs a = PrefillArgs(*p.q, p.kv, table, *p.out, p.lse);
  a.key_begin = 0;
  a.key_end = key_end;  // query row i sits at query_begin + i (bottom-right aligned)
  a.causal = true;
  a.scale = scale;
  const std::string unsupported = cuda::PagedPrefillDcaAttentionUnsupported(a, dca);
  if (!unsupported.empty()) {
    return absl::InvalidArgumentError(absl::StrCat("DcaAttention: ", unsupported));
  }
  ++stats_.dca_prefill_calls;
  return CudaStatus(cuda::PagedPrefillDcaAttention(a, dca, stream_), "DcaAttention (prefill)");
}

absl::Status CudaBackend::VerticalSlashAttention(const VerticalSlashAttentionParams& p) {
  ScopedCudaOpTime timed(op_timer_.get(), CudaOpKind::kSparseAttention);
  constexpr absl::string_view kOp = "VerticalSlashAttention";
  if (p.q == nullptr || p.out == nullptr) {
    return absl::InvalidArgumentError("VerticalSlashAttention: q and out must be given");
  }
  MP_RETURN_IF_ERROR(Expect(kOp, "q", *p.q, DType::kBF16, {kAny, kAny, kAny}));
  const int64_t n = p.q->dim(0), q_heads = p.q->dim(1), head_dim = p.q->dim(2);
  // The scalars first: the key range below depends on query_begin.
  MP_RETURN_IF_ERROR(ValidateVerticalSlashScalars(p, n, q_heads));
  MP_RETURN_IF_ERROR(ExpectAttentionTensors(kOp, p.q, p.out, p.lse, p.kv, p.query_begin + n));
  const int64_t kv_heads = p.kv.k.dim(1);
  if (n == 0) return absl::OkStatus();
  MP_RETURN_IF_ERROR(UseDevice(device_));
  MP_ASSIGN_OR_RETURN(const int32_t* table, DeviceInts(p.kv.block_table));
  cuda::VerticalSlashPrefillArgs a;
  a.q = Bf16(*p.q);
  a.kv.k = Bf16(p.kv.k);
  a.kv.v = Bf16(p.kv.v);
  a.kv.block_table = table;
  a.kv.num_blocks = p.kv.k.dim(0);
  a.kv.block_size = p.kv.block_size;
  a.kv.kv_heads = kv_heads;
  a.kv.head_dim = head_dim;
  a.out = MutableBf16(*p.out);
  a.lse = p.lse != nullptr ? p.lse->data_as<float>() : nullptr;
  a.num_queries = n;
  a.q_heads = q_heads;
  a.query_begin = p.query_begin;
  a.chunk_size = p.chunk_size;
  a.chunk_len = p.chunk_size > 0 ? p.chunk_len : 0;
  a.rope_theta = p.rope_theta;
  a.scale = p.scale * p.temperature * p.temperature;
  a.last_q = p.last_q;
  a.budgets = p.budgets.data();
  const std::string unsupported = cuda::VerticalSlashPrefillUnsupported(a);
  if (!unsupported.empty()) {
    return absl::InvalidArgumentError(absl::StrCat("VerticalSlashAttention: ", unsupported));
  }
  MP_RETURN_IF_ERROR(GrowSparseWorkspace(cuda::VerticalSlashPrefillWorkspaceBytes(a)));
  ++stats_.sparse_prefill_calls;
  MP_RETURN_IF_ERROR(CudaStatus(
      cuda::VerticalSlashPrefill(a, sparse_workspace_.data(),
                                 static_cast<int64_t>(sparse_workspace_.nbytes()), stream_),
      "VerticalSlashAttention"));
  if (p.index_keys.empty()) return absl::OkStatus();
  // Every piece's index stays in the workspace until the next run: its counts, to the host.
  std::vector<int32_t> blocks, columns;
  for (int64_t pi = 0; pi < cuda::VerticalSlashPrefillNumPieces(a); ++pi) {
    const cuda::VerticalSlashPieceBuffers piece =
        cuda::VerticalSlashPrefillPiece(a, sparse_workspace_.data(), static_cast<int>(pi));
    const int64_t qn = piece.piece_end - piece.piece_begin;
    const size_t entries = static_cast<size_t>(q_heads * cpu::VerticalSlashRowBlocks(qn));
    for (const cuda::VerticalSlashIndexDev& index : piece.index) {
      if (index.block_count == nullptr) continue;
      blocks.resize(entries);
      columns.resize(entries);
      MP_RETURN_IF_ERROR(CudaStatus(
          cudaMemcpyAsync(blocks.data(), index.block_count, entries * sizeof(int32_t),
                          cudaMemcpyDeviceToHost, stream_),
          "VerticalSlashAttention (index keys)"));
      MP_RETURN_IF_ERROR(CudaStatus(
          cudaMemcpyAsync(columns.data(), index.column_count, entries * sizeof(int32_t),
                          cudaMemcpyDeviceToHost, stream_),
          "VerticalSlashAttention (index keys)"));
      MP_RETURN_IF_ERROR(
          CudaStatus(cudaStreamSynchronize(stream_), "VerticalSlashAttention (index keys)"));
      cpu::AddVerticalSlashIndexKeys(blocks.data(), columns.data(), q_heads, qn,
                                     p.index_keys.data());
    }
  }
  return absl::OkStatus();
}

absl::Status CudaBackend::GrowSparseWorkspace(int64_t bytes) {
  if (sparse_workspace_.defined() && static_cast<int64_t>(sparse_workspace_.nbytes()) >= bytes) {
    return absl::OkStatus();
  }
  sparse_workspace_ = Tensor();  // give the old one back to the pool first
  MP_ASSIGN_OR_RETURN(sparse_workspace_, Allocate({bytes}, DType::kU8));
  return absl::OkStatus();
}

absl::StatusOr<int64_t> CudaSparseWorkspaceBytes(const VerticalSlashReservation& r) {
  constexpr absl::string_view kOp = "ReserveVerticalSlashWorkspace";
  if (r.max_queries < 1 || r.max_keys < 1 || r.budgets.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(
        kOp, ": max_queries (", r.max_queries, ") and max_keys (", r.max_keys,
        ") must be positive and at least one budget set given"));
  }
  cuda::VerticalSlashPrefillArgs a;
  a.q_heads = r.q_heads;
  a.kv.kv_heads = r.kv_heads;
  a.kv.head_dim = r.head_dim;
  a.chunk_size = r.chunk_size;
  a.chunk_len = r.chunk_size > 0 ? r.chunk_len : 0;
  a.last_q = r.last_q;
  int64_t need = 0;
  for (size_t layer = 0; layer < r.budgets.size(); ++layer) {
    const std::span<const int64_t> set = r.budgets[layer];
    if (static_cast<int64_t>(set.size()) != 2 * r.q_heads) {
      return absl::InvalidArgumentError(absl::StrCat(kOp, ": budget set ", layer, " has ",
                                                     set.size(), " values, expected 2 * q_heads = ",
                                                     2 * r.q_heads));
    }
    a.budgets = set.data();
    const std::string unsupported = cuda::VerticalSlashPrefillGeometryUnsupported(a);
    if (!unsupported.empty()) return absl::InvalidArgumentError(absl::StrCat(kOp, ": ", unsupported));
    need = std::max(need, cuda::VerticalSlashPrefillMaxWorkspaceBytes(a, r.max_queries, r.max_keys));
  }
  return need;
}

absl::StatusOr<int64_t> CudaBackend::ReserveVerticalSlashWorkspace(
    const VerticalSlashReservation& r) {
  MP_ASSIGN_OR_RETURN(const int64_t need, CudaSparseWorkspaceBytes(r));
  MP_RETURN_IF_ERROR(UseDevice(device_));
  const absl::Status grown = GrowSparseWorkspace(need);
  if (!grown.ok()) {
    return absl::Status(
        grown.code(),
        absl::StrCat("the sparse prefill workspace (", need, " bytes, ",
                     absl::StrFormat("%.2f", need / 1073741824.0), " GiB, for chunks of up to ",
                     r.max_queries, " tokens over up to ", r.max_keys,
                     " keys) does not fit next to the weights and the KV cache: ",
                     grown.message()));
  }
  return static_cast<int64_t>(sparse_workspace_.nbytes());
}

absl::StatusOr<int32_t> CudaBackend::SampleToken(const Tensor& logits, float temperature,
                                                 float top_p, double uniform) {
  constexpr absl::string_view kOp = "SampleToken";
  MP_RETURN_IF_ERROR(Expect(kOp, "logits", logits, DType::kBF16, {kAny, kAny}));
  const int64_t rows = logits.dim(0), vocab = logits.dim(1);
  if (rows < 1 || vocab < 1 || vocab > std::numeric_limits<int32_t>::max()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "SampleToken: logits have shape ", logits.ShapeString(),
        ", expected at least one row of 1 to 2^31 - 1 logits"));
  }
  MP_RETURN_IF_ERROR(ValidateSampling(temperature, top_p));
  MP_RETURN_IF_ERROR(UseDevice(device_));
  const __nv_bfloat16* row = Bf16(logits) + (rows - 1) * vocab;
  auto* out = sample_out_.data_as<int32_t>();
  if (temperature <= 0.0f || vocab == 1) {
    MP_RETURN_IF_ERROR(CudaStatus(cuda::ArgmaxBf16(row, vocab, out, stream_), "SampleToken"));
  } else {
    const size_t bytes = cuda::TopPSampleWorkspaceBytes(vocab);
    if (!sample_workspace_.defined() || sample_workspace_.nbytes() < bytes) {
      MP_ASSIGN_OR_RETURN(sample_workspace_, Allocate({static_cast<int64_t>(bytes)}, DType::kU8));
    }
    MP_RETURN_IF_ERROR(CudaStatus(
        cuda::TopPSampleBf16(row, vocab, temperature, top_p, uniform, sample_workspace_.data(),
                             sample_workspace_.nbytes(), out, stream_),
        "SampleToken (top-p)"));
  }
  MP_RETURN_IF_ERROR(CudaStatus(
      cudaMemcpyAsync(sample_host_, out, sizeof(int32_t), cudaMemcpyDeviceToHost, stream_),
      "SampleToken: copy"));
  MP_RETURN_IF_ERROR(CudaStatus(cudaStreamSynchronize(stream_), "SampleToken: synchronize"));
  return *sample_host_;
}

}  // namespace mp
