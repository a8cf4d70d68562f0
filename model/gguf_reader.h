// GGUF v3 (and v2) file reader: metadata key/values and tensor descriptions over a read-only mmap.
//
// Layout (little-endian): magic "GGUF", u32 version, u64 tensor_count, u64 kv_count, the kv pairs
// (string key, u32 value type, value), the tensor infos (string name, u32 n_dims, u64 dims[n_dims]
// with dims[0] the fastest-varying, u32 ggml type, u64 offset), padding to `general.alignment`
// (default 32), then the tensor data; each tensor offset is relative to the data section.
//
// GgufFile::Open bounds-checks everything before anything is used: a malformed, truncated or
// hostile file gives INVALID_ARGUMENT (a field that is not acceptable) or DATA_LOSS (the file
// ends too early, or a tensor's bytes lie outside it) naming the file and the problem; it never
// crashes or allocates more than a small multiple of the file size. A GgufFile is immutable after
// Open and safe to read from several threads; values and tensor data point into the mapping and
// live as long as the GgufFile.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

namespace mp {

// Metadata value types (gguf_type).
enum class GgufValueType : uint32_t {
  kUint8 = 0,
  kInt8 = 1,
  kUint16 = 2,
  kInt16 = 3,
  kUint32 = 4,
  kInt32 = 5,
  kFloat32 = 6,
  kBool = 7,
  kString = 8,
  kArray = 9,
  kUint64 = 10,
  kInt64 = 11,
  kFloat64 = 12,
};
const char* GgufValueTypeName(GgufValueType type);

// Tensor element types (ggml_type). Only the types with a layout known here can be read; see
// GgmlTypeInfo. Dequantization (gguf_dequant.h) supports a subset.
enum class GgmlType : uint32_t {
  kF32 = 0,
  kF16 = 1,
  kQ4_0 = 2,
  kQ4_1 = 3,
  kQ5_0 = 6,
  kQ5_1 = 7,
  kQ8_0 = 8,
  kQ8_1 = 9,
  kQ2_K = 10,
  kQ3_K = 11,
  kQ4_K = 12,
  kQ5_K = 13,
  kQ6_K = 14,
  kQ8_K = 15,
  kIQ2_XXS = 16,
  kIQ2_XS = 17,
  kIQ3_XXS = 18,
  kIQ1_S = 19,
  kIQ4_NL = 20,
  kIQ3_S = 21,
  kIQ2_S = 22,
  kIQ4_XS = 23,
  kI8 = 24,
  kI16 = 25,
  kI32 = 26,
  kI64 = 27,
  kF64 = 28,
  kIQ1_M = 29,
  kBF16 = 30,
  kTQ1_0 = 34,
  kTQ2_0 = 35,
  kMXFP4 = 39,
};

// Storage layout of a ggml type: `block_size` elements are stored in `type_size` bytes.
struct GgmlTypeTraits {
  const char* name = "";  // "F32", "Q4_1", ...
  int64_t block_size = 0;
  int64_t type_size = 0;
};
// The layout of `type`, or nullptr for a type number not known here.
const GgmlTypeTraits* GgmlTypeInfo(GgmlType type);
// "Q4_1", or "type 123" for an unknown number.
std::string GgmlTypeName(GgmlType type);

// One metadata value. Scalars and scalar arrays are read on demand from the mapping.
class GgufValue {
 public:
  GgufValueType type() const { return type_; }
  bool is_array() const { return type_ == GgufValueType::kArray; }
  // kArray only: the type of the elements and their number.
  GgufValueType element_type() const { return element_type_; }
  uint64_t size() const { return count_; }

  // Scalar accessors: false when the value is not of that kind. Any integer type converts to
  // int64 when it fits (a UINT64 above INT64_MAX does not).
  bool ToInt(int64_t* out) const;
  bool ToDouble(double* out) const;  // FLOAT32 (widened exactly), FLOAT64 or an integer
  bool ToBool(bool* out) const;      // BOOL only
  bool ToString(std::string_view* out) const;

  // Array accessors (false when not an array of that kind). Integer arrays accept any integer
  // element type; values that do not fit in int64 make them fail.
  bool ToIntArray(std::vector<int64_t>* out) const;
  bool ToStringArray(std::vector<std::string_view>* out) const;
  // kArray of kArray only.
  const std::vector<GgufValue>& nested() const { return nested_; }

  // Short description for error messages: "uint32", "array[string; 49152]".
  std::string TypeString() const;

 private:
  friend class GgufParser;
  GgufValueType type_ = GgufValueType::kUint8;
  GgufValueType element_type_ = GgufValueType::kUint8;
  const uint8_t* raw_ = nullptr;           // scalar bytes, or the packed elements of a scalar array
  uint64_t count_ = 0;                     // array length
  std::string_view string_;                // kString
  std::vector<std::string_view> strings_;  // array of kString
  std::vector<GgufValue> nested_;          // array of kArray
};

struct GgufTensorInfo {
  std::string name;
  GgmlType type = GgmlType::kF32;
  std::vector<int64_t> dims;  // GGUF order: dims[0] is the fastest-varying (ggml ne[0])
  uint64_t offset = 0;        // relative to the data section
  uint64_t nbytes = 0;
  int64_t numel = 0;
  const uint8_t* data = nullptr;  // inside the mapping, nbytes long

  // Row-major shape, outermost first (numpy / Hugging Face order): dims reversed.
  std::vector<int64_t> shape() const { return {dims.rbegin(), dims.rend()}; }
  std::span<const uint8_t> bytes() const { return {data, static_cast<size_t>(nbytes)}; }
};

class GgufFile {
 public:
  // Maps `path` and parses and validates the header. Errors: NOT_FOUND when the file does not
  // exist, INVALID_ARGUMENT / DATA_LOSS (see above) naming the file.
  static absl::StatusOr<std::unique_ptr<GgufFile>> Open(const std::string& path);
  // Parses an in-memory image (copied); `name` stands for the file in error messages.
  static absl::StatusOr<std::unique_ptr<GgufFile>> FromBytes(std::span<const uint8_t> bytes,
                                                             const std::string& name);
  ~GgufFile();
  GgufFile(const GgufFile&) = delete;
  GgufFile& operator=(const GgufFile&) = delete;

  const std::string& path() const { return path_; }
  uint32_t version() const { return version_; }
  uint64_t alignment() const { return alignment_; }
  uint64_t data_offset() const { return data_offset_; }  // absolute offset of the data section
  uint64_t file_size() const { return size_; }

  // Metadata keys in file order.
  const std::vector<std::string>& keys() const { return keys_; }
  bool Has(std::string_view key) const { return values_.find(key) != values_.end(); }
  const GgufValue* Find(std::string_view key) const;

  // Typed look-ups. NOT_FOUND when the key is absent, INVALID_ARGUMENT naming the key, its type
  // and the expected type otherwise.
  absl::StatusOr<int64_t> GetInt(std::string_view key) const;
  absl::StatusOr<double> GetFloat(std::string_view key) const;
  absl::StatusOr<bool> GetBool(std::string_view key) const;
  absl::StatusOr<std::string> GetString(std::string_view key) const;
  absl::StatusOr<std::vector<int64_t>> GetIntArray(std::string_view key) const;
  absl::StatusOr<std::vector<std::string_view>> GetStringArray(std::string_view key) const;

  // Tensors in file order.
  const std::vector<GgufTensorInfo>& tensors() const { return tensors_; }
  // nullptr when absent.
  const GgufTensorInfo* FindTensor(std::string_view name) const;

 private:
  friend class GgufParser;
  GgufFile() = default;
  std::string path_;
  std::shared_ptr<const void> storage_;  // the mapping (or an owned copy)
  const uint8_t* base_ = nullptr;
  uint64_t size_ = 0;
  uint32_t version_ = 0;
  uint64_t alignment_ = 32;
  uint64_t data_offset_ = 0;
  std::vector<std::string> keys_;
  std::map<std::string, GgufValue, std::less<>> values_;
  std::vector<GgufTensorInfo> tensors_;
  std::map<std::string, size_t, std::less<>> tensor_index_;
};

}  // namespace mp
