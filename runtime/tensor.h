// Tensor: a typed, shaped view of memory on one device, optionally owning it.
//
// Tensors are cheap to copy (the storage is shared). Shapes are row-major, outermost first,
// contiguous; a Tensor never describes strided memory. Device memory is allocated by a Backend;
// host tensors can be made directly with Tensor::Host().
#pragma once

#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <memory>
#include <span>
#include <string>
#include <vector>

namespace mp {

enum class DType : uint8_t { kF32, kF16, kBF16, kI32, kI64, kU8 };
enum class DeviceKind : uint8_t { kCpu, kCuda };

size_t DTypeSize(DType dtype);
const char* DTypeName(DType dtype);
const char* DeviceName(DeviceKind device);
// IEEE binary16 / bfloat16 bit patterns to f32 (exact; NaNs stay NaN, infinities stay infinite).
float HalfToFloat(uint16_t bits);
float BFloat16ToFloat(uint16_t bits);

class Tensor {
 public:
  Tensor() = default;

  // A view of memory owned elsewhere; `owner` (may be null) keeps it alive.
  static Tensor Wrap(void* data, std::vector<int64_t> shape, DType dtype,
                     DeviceKind device = DeviceKind::kCpu, std::shared_ptr<void> owner = nullptr);
  // Zero-filled host memory (64-byte aligned).
  static Tensor Host(std::vector<int64_t> shape, DType dtype);

  bool defined() const { return data_ != nullptr; }
  void* data() const { return data_; }
  template <typename T>
  T* data_as() const {
    return static_cast<T*>(data_);
  }
  DType dtype() const { return dtype_; }
  DeviceKind device() const { return device_; }
  const std::vector<int64_t>& shape() const { return shape_; }
  int rank() const { return static_cast<int>(shape_.size()); }
  int64_t dim(int i) const { return shape_[i < 0 ? i + rank() : i]; }
  int64_t numel() const;
  size_t nbytes() const { return static_cast<size_t>(numel()) * DTypeSize(dtype_); }
  const std::shared_ptr<void>& owner() const { return owner_; }

  // Same storage, new shape with the same number of elements.
  Tensor Reshape(std::vector<int64_t> shape) const;
  // Rows [begin, end) of the outermost dimension (a view).
  Tensor Slice(int64_t begin, int64_t end) const;

  std::string ShapeString() const;  // e.g. "[4, 9, 64] f32"

 private:
  void* data_ = nullptr;
  std::vector<int64_t> shape_;
  DType dtype_ = DType::kF32;
  DeviceKind device_ = DeviceKind::kCpu;
  std::shared_ptr<void> owner_;
};

}  // namespace mp
