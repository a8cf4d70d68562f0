// A small GGUF writer for tests, written from the format description independently of
// model/gguf_reader.cc: metadata of any type, tensors with raw data bytes, explicit or automatic
// (aligned, in order) data offsets.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <optional>
#include <string>
#include <vector>

namespace mp::testing {

class GgufBuilder {
 public:
  // Value type numbers of the format.
  enum Type : uint32_t {
    kU8 = 0,
    kI8 = 1,
    kU16 = 2,
    kI16 = 3,
    kU32 = 4,
    kI32 = 5,
    kF32 = 6,
    kBool = 7,
    kString = 8,
    kArray = 9,
    kU64 = 10,
    kI64 = 11,
    kF64 = 12,
  };

  explicit GgufBuilder(uint32_t version = 3) : version_(version) {}

  // Adds a key with an already encoded value (type + payload).
  void AddEncoded(const std::string& key, uint32_t type, const std::vector<uint8_t>& payload) {
    std::vector<uint8_t> kv;
    PutString(&kv, key);
    Put(&kv, type);
    kv.insert(kv.end(), payload.begin(), payload.end());
    kvs_.push_back(std::move(kv));
  }

  template <typename T>
  void AddScalar(const std::string& key, uint32_t type, T value) {
    std::vector<uint8_t> p;
    Put(&p, value);
    AddEncoded(key, type, p);
  }
  void AddU32(const std::string& key, uint32_t v) { AddScalar(key, kU32, v); }
  void AddI32(const std::string& key, int32_t v) { AddScalar(key, kI32, v); }
  void AddU64(const std::string& key, uint64_t v) { AddScalar(key, kU64, v); }
  void AddF32(const std::string& key, float v) { AddScalar(key, kF32, v); }
  void AddF64(const std::string& key, double v) { AddScalar(key, kF64, v); }
  void AddBool(const std::string& key, bool v) { AddScalar(key, kBool, static_cast<uint8_t>(v)); }
  void AddString(const std::string& key, const std::string& v) {
    std::vector<uint8_t> p;
    PutString(&p, v);
    AddEncoded(key, kString, p);
  }
  void AddStringArray(const std::string& key, const std::vector<std::string>& values) {
    std::vector<uint8_t> p;
    Put(&p, static_cast<uint32_t>(kString));
    Put(&p, static_cast<uint64_t>(values.size()));
    for (const std::string& v : values) PutString(&p, v);
    AddEncoded(key, kArray, p);
  }
  void AddI32Array(const std::string& key, const std::vector<int32_t>& values) {
    std::vector<uint8_t> p;
    Put(&p, static_cast<uint32_t>(kI32));
    Put(&p, static_cast<uint64_t>(values.size()));
    for (int32_t v : values) Put(&p, v);
    AddEncoded(key, kArray, p);
  }

  // Tensor with ggml dims (dims[0] fastest) and its raw bytes; `offset` overrides the data
  // offset that Build() would assign.
  void AddTensor(const std::string& name, uint32_t ggml_type, std::vector<uint64_t> dims,
                 std::vector<uint8_t> data, std::optional<uint64_t> offset = std::nullopt) {
    tensors_.push_back({name, ggml_type, std::move(dims), std::move(data), offset});
  }

  // The file image. Tensor data follows the header padded to `alignment`; automatic offsets
  // place the tensors in order, each padded to `alignment`.
  std::vector<uint8_t> Build(uint64_t alignment = 32) const {
    std::vector<uint8_t> out = {'G', 'G', 'U', 'F'};
    Put(&out, version_);
    Put(&out, static_cast<uint64_t>(tensors_.size()));
    Put(&out, static_cast<uint64_t>(kvs_.size()));
    for (const auto& kv : kvs_) out.insert(out.end(), kv.begin(), kv.end());
    std::vector<uint64_t> offsets;
    uint64_t next = 0;
    for (const Tensor& t : tensors_) {
      const uint64_t off = t.offset.value_or(next);
      offsets.push_back(off);
      next = RoundUp(std::max(next, off + t.data.size()), alignment);
    }
    for (size_t i = 0; i < tensors_.size(); ++i) {
      const Tensor& t = tensors_[i];
      PutString(&out, t.name);
      Put(&out, static_cast<uint32_t>(t.dims.size()));
      for (uint64_t d : t.dims) Put(&out, d);
      Put(&out, t.type);
      Put(&out, offsets[i]);
    }
    out.resize(RoundUp(out.size(), alignment), 0);
    const size_t data_start = out.size();
    for (size_t i = 0; i < tensors_.size(); ++i) {
      const Tensor& t = tensors_[i];
      if (out.size() < data_start + offsets[i] + t.data.size()) {
        out.resize(data_start + offsets[i] + t.data.size(), 0);
      }
      std::memcpy(out.data() + data_start + offsets[i], t.data.data(), t.data.size());
    }
    if (!tensors_.empty()) out.resize(RoundUp(out.size(), alignment), 0);
    return out;
  }

  template <typename T>
  static void Put(std::vector<uint8_t>* out, T v) {
    uint8_t b[sizeof(T)];
    std::memcpy(b, &v, sizeof(T));
    out->insert(out->end(), b, b + sizeof(T));
  }
  static void PutString(std::vector<uint8_t>* out, const std::string& s) {
    Put(out, static_cast<uint64_t>(s.size()));
    out->insert(out->end(), s.begin(), s.end());
  }

 private:
  struct Tensor {
    std::string name;
    uint32_t type;
    std::vector<uint64_t> dims;
    std::vector<uint8_t> data;
    std::optional<uint64_t> offset;
  };
  static uint64_t RoundUp(uint64_t v, uint64_t a) { return (v + a - 1) / a * a; }

  uint32_t version_;
  std::vector<std::vector<uint8_t>> kvs_;
  std::vector<Tensor> tensors_;
};

}  // namespace mp::testing
