#include "model/gguf_dequant.h"

#include <cstring>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace mp {
namespace {

uint16_t LoadU16(const uint8_t* p) {
  uint16_t v;
  std::memcpy(&v, p, 2);
  return v;
}

// Q8_0 block: f16 d, int8 q[32]; x[j] = q[j] * d.
void DequantQ8_0(const uint8_t* src, int64_t blocks, float* dst) {
  for (int64_t b = 0; b < blocks; ++b, src += 34, dst += 32) {
    const float d = HalfToFloat(LoadU16(src));
    const int8_t* q = reinterpret_cast<const int8_t*>(src + 2);
    for (int j = 0; j < 32; ++j) dst[j] = static_cast<float>(q[j]) * d;
  }
}

// Q4_0 block: f16 d, u8 qs[16]; x[j] = ((qs[j] & 15) - 8) * d, x[j + 16] = ((qs[j] >> 4) - 8) * d.
void DequantQ4_0(const uint8_t* src, int64_t blocks, float* dst) {
  for (int64_t b = 0; b < blocks; ++b, src += 18, dst += 32) {
    const float d = HalfToFloat(LoadU16(src));
    const uint8_t* qs = src + 2;
    for (int j = 0; j < 16; ++j) {
      dst[j] = static_cast<float>((qs[j] & 0x0F) - 8) * d;
      dst[j + 16] = static_cast<float>((qs[j] >> 4) - 8) * d;
    }
  }
}

// Q4_1 block: f16 d, f16 m, u8 qs[16]; x[j] = (qs[j] & 15) * d + m, x[j + 16] = (qs[j] >> 4) * d +
// m.
void DequantQ4_1(const uint8_t* src, int64_t blocks, float* dst) {
  for (int64_t b = 0; b < blocks; ++b, src += 20, dst += 32) {
    const float d = HalfToFloat(LoadU16(src));
    const float m = HalfToFloat(LoadU16(src + 2));
    const uint8_t* qs = src + 4;
    for (int j = 0; j < 16; ++j) {
      dst[j] = static_cast<float>(qs[j] & 0x0F) * d + m;
      dst[j + 16] = static_cast<float>(qs[j] >> 4) * d + m;
    }
  }
}

}  // namespace

bool CanDequantize(GgmlType type) {
  switch (type) {
    case GgmlType::kF32:
    case GgmlType::kF16:
    case GgmlType::kBF16:
    case GgmlType::kQ8_0:
    case GgmlType::kQ4_0:
    case GgmlType::kQ4_1:
      return true;
    default:
      return false;
  }
}

absl::Status DequantizeToF32(GgmlType type, std::span<const uint8_t> src, std::span<float> dst) {
  const GgmlTypeTraits* traits = GgmlTypeInfo(type);
  if (traits == nullptr || !CanDequantize(type)) {
    return absl::UnimplementedError(absl::StrCat("cannot dequantize ggml type ", GgmlTypeName(type),
                                                 " (supported: F32, F16, BF16, Q8_0, Q4_0, Q4_1)"));
  }
  const int64_t n = static_cast<int64_t>(dst.size());
  if (n % traits->block_size != 0) {
    return absl::InvalidArgumentError(absl::StrCat("dequantizing ", n, " elements of ",
                                                   traits->name,
                                                   ": not a multiple of the block "
                                                   "size ",
                                                   traits->block_size));
  }
  const int64_t blocks = n / traits->block_size;
  if (static_cast<uint64_t>(src.size()) != static_cast<uint64_t>(blocks * traits->type_size)) {
    return absl::InvalidArgumentError(
        absl::StrCat("dequantizing ", n, " elements of ", traits->name, ": expected ",
                     blocks * traits->type_size, " bytes of input, got ", src.size()));
  }
  const uint8_t* s = src.data();
  float* d = dst.data();
  switch (type) {
    case GgmlType::kF32:
      if (n > 0) std::memcpy(d, s, static_cast<size_t>(n) * 4);
      break;
    case GgmlType::kF16:
      for (int64_t i = 0; i < n; ++i) d[i] = HalfToFloat(LoadU16(s + 2 * i));
      break;
    case GgmlType::kBF16:
      for (int64_t i = 0; i < n; ++i) d[i] = BFloat16ToFloat(LoadU16(s + 2 * i));
      break;
    case GgmlType::kQ8_0:
      DequantQ8_0(s, blocks, d);
      break;
    case GgmlType::kQ4_0:
      DequantQ4_0(s, blocks, d);
      break;
    case GgmlType::kQ4_1:
      DequantQ4_1(s, blocks, d);
      break;
    default:
      break;  // excluded above
  }
  return absl::OkStatus();
}

absl::StatusOr<Tensor> DequantizeTensor(const GgufFile& file, const GgufTensorInfo& info) {
  Tensor out = Tensor::Host(info.shape(), DType::kF32);
  absl::Status status =
      DequantizeToF32(info.type, info.bytes(),
                      std::span<float>(out.data_as<float>(), static_cast<size_t>(info.numel)));
  if (!status.ok()) {
    return absl::Status(
        status.code(), absl::StrCat(file.path(), ": tensor '", info.name, "': ", status.message()));
  }
  return out;
}

}  // namespace mp
