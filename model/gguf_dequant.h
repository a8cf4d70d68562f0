// Dequantization of GGUF tensor data to f32, for the ggml block layouts of F32, F16, BF16, Q8_0,
// Q4_0 and Q4_1 (scales are IEEE half floats). The results are exactly those of ggml's reference
// dequantize_row_* functions: every product of a quant and a scale is exact in f32, so each value
// is rounded at most once (by the `+ m` of Q4_1).
#pragma once

#include <cstdint>
#include <span>
#include <string>

#include "absl/status/statusor.h"
#include "model/gguf_reader.h"
#include "runtime/tensor.h"

namespace mp {

// Whether DequantizeToF32 handles `type`.
bool CanDequantize(GgmlType type);

// Converts dst.size() elements of `type`, stored in `src`, to f32. dst.size() must be a multiple
// of the type's block size and src.size() the matching number of bytes; otherwise
// INVALID_ARGUMENT. A type without a dequantizer is UNIMPLEMENTED naming it.
absl::Status DequantizeToF32(GgmlType type, std::span<const uint8_t> src, std::span<float> dst);

// Dequantizes a whole tensor of `file` into a new host F32 tensor of shape info.shape()
// (outermost first). Errors name the file and the tensor.
absl::StatusOr<Tensor> DequantizeTensor(const GgufFile& file, const GgufTensorInfo& info);

}  // namespace mp
