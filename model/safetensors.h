// safetensors files: a bounds-checked mmap reader and a writer.
//
// Format: u64 little-endian header length N, N bytes of JSON
// {"__metadata__": {..}, "<name>": {"dtype": "BF16", "shape": [..], "data_offsets": [b, e]}},
// then the data; offsets are relative to the first byte after the header.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "runtime/tensor.h"

namespace mp {

class SafetensorsFile {
 public:
  // mmaps `path` read-only and validates the header: JSON syntax, known dtypes
  // (F32, F16, BF16, I32, I64, U8), shape × dtype size == end - begin, offsets inside the file
  // and not overlapping, no duplicate names, a header of at most 100 MB. Errors name the file
  // (and the tensor): NOT_FOUND for a missing file, INVALID_ARGUMENT for a malformed one.
  static absl::StatusOr<std::unique_ptr<SafetensorsFile>> Open(const std::string& path);
  ~SafetensorsFile();

  const std::string& path() const { return path_; }
  std::vector<std::string> TensorNames() const;
  bool Has(const std::string& name) const;
  // A host view into the mapping (keeps the mapping alive through the tensor's owner). The
  // memory is read-only: never write through the view. A tensor whose data is not aligned to
  // its dtype size is returned as an aligned host copy instead. NOT_FOUND names the tensor and
  // the file.
  absl::StatusOr<Tensor> Get(const std::string& name) const;
  const std::map<std::string, std::string>& metadata() const { return metadata_; }

 private:
  struct Entry {
    DType dtype;
    std::vector<int64_t> shape;
    uint64_t begin, end;  // absolute file offsets
  };
  SafetensorsFile() = default;
  std::string path_;
  std::shared_ptr<void> mapping_;  // munmaps on release
  const uint8_t* base_ = nullptr;
  uint64_t size_ = 0;
  std::map<std::string, Entry> entries_;
  std::map<std::string, std::string> metadata_;
};

struct SafetensorsEntry {
  std::string name;
  Tensor tensor;  // host tensor; its dtype and shape are written as is
};

// The safetensors spelling of a dtype ("F32", "F16", "BF16", "I32", "I64", "U8").
const char* SafetensorsDTypeName(DType dtype);

// Writes a single safetensors file (tensors in the given order without gaps, header padded with
// spaces to a multiple of 8 bytes). The file is written under a temporary name and renamed.
// Errors: INVALID_ARGUMENT for an empty, duplicate or reserved name or a non-host tensor.
absl::Status WriteSafetensors(const std::string& path, std::span<const SafetensorsEntry> tensors,
                              const std::map<std::string, std::string>& metadata = {});

}  // namespace mp
