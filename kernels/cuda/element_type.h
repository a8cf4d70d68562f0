// Element types of the tensors the CUDA kernels convert between.
#pragma once

#include <cstdint>

namespace mp::cuda {

enum class ElementType : uint8_t { kF32, kF16, kBF16 };

}  // namespace mp::cuda
