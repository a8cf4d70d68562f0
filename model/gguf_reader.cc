#include "model/gguf_reader.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstring>
#include <limits>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "common/status.h"

static_assert(std::endian::native == std::endian::little,
              "the GGUF reader assumes a little-endian host");

namespace mp {
namespace {

constexpr uint32_t kMaxDims = 4;            // GGML_MAX_DIMS
constexpr int kMaxArrayDepth = 8;           // arrays of arrays of ...
constexpr uint64_t kDefaultAlignment = 32;  // GGUF_DEFAULT_ALIGNMENT

constexpr GgmlTypeTraits kTypeTable[] = {
    /* 0 */ {"F32", 1, 4},
    /* 1 */ {"F16", 1, 2},
    /* 2 */ {"Q4_0", 32, 18},
    /* 3 */ {"Q4_1", 32, 20},
    /* 4 */ {nullptr, 0, 0},
    /* 5 */ {nullptr, 0, 0},
    /* 6 */ {"Q5_0", 32, 22},
    /* 7 */ {"Q5_1", 32, 24},
    /* 8 */ {"Q8_0", 32, 34},
    /* 9 */ {"Q8_1", 32, 36},
    /* 10 */ {"Q2_K", 256, 84},
    /* 11 */ {"Q3_K", 256, 110},
    /* 12 */ {"Q4_K", 256, 144},
    /* 13 */ {"Q5_K", 256, 176},
    /* 14 */ {"Q6_K", 256, 210},
    /* 15 */ {"Q8_K", 256, 292},
    /* 16 */ {"IQ2_XXS", 256, 66},
    /* 17 */ {"IQ2_XS", 256, 74},
    /* 18 */ {"IQ3_XXS", 256, 98},
    /* 19 */ {"IQ1_S", 256, 50},
    /* 20 */ {"IQ4_NL", 32, 18},
    /* 21 */ {"IQ3_S", 256, 110},
    /* 22 */ {"IQ2_S", 256, 82},
    /* 23 */ {"IQ4_XS", 256, 136},
    /* 24 */ {"I8", 1, 1},
    /* 25 */ {"I16", 1, 2},
    /* 26 */ {"I32", 1, 4},
    /* 27 */ {"I64", 1, 8},
    /* 28 */ {"F64", 1, 8},
    /* 29 */ {"IQ1_M", 256, 56},
    /* 30 */ {"BF16", 1, 2},
    /* 31 */ {nullptr, 0, 0},
    /* 32 */ {nullptr, 0, 0},
    /* 33 */ {nullptr, 0, 0},
    /* 34 */ {"TQ1_0", 256, 54},
    /* 35 */ {"TQ2_0", 256, 66},
    /* 36 */ {nullptr, 0, 0},
    /* 37 */ {nullptr, 0, 0},
    /* 38 */ {nullptr, 0, 0},
    /* 39 */ {"MXFP4", 32, 17},
};

// Bytes of one scalar of `type`; 0 for kString / kArray / unknown numbers.
uint64_t ScalarSize(GgufValueType type) {
  switch (type) {
    case GgufValueType::kUint8:
    case GgufValueType::kInt8:
    case GgufValueType::kBool:
      return 1;
    case GgufValueType::kUint16:
    case GgufValueType::kInt16:
      return 2;
    case GgufValueType::kUint32:
    case GgufValueType::kInt32:
    case GgufValueType::kFloat32:
      return 4;
    case GgufValueType::kUint64:
    case GgufValueType::kInt64:
    case GgufValueType::kFloat64:
      return 8;
    case GgufValueType::kString:
    case GgufValueType::kArray:
      return 0;
  }
  return 0;
}

bool KnownValueType(uint32_t t) { return t <= static_cast<uint32_t>(GgufValueType::kFloat64); }

bool IsIntegerType(GgufValueType t) {
  switch (t) {
    case GgufValueType::kUint8:
    case GgufValueType::kInt8:
    case GgufValueType::kUint16:
    case GgufValueType::kInt16:
    case GgufValueType::kUint32:
    case GgufValueType::kInt32:
    case GgufValueType::kUint64:
    case GgufValueType::kInt64:
      return true;
    default:
      return false;
  }
}

template <typename T>
T Load(const uint8_t* p) {
  T v;
  std::memcpy(&v, p, sizeof(T));
  return v;
}

// Reads one integer scalar of `type` at `p`; false when it does not fit in int64.
bool LoadInt(GgufValueType type, const uint8_t* p, int64_t* out) {
  switch (type) {
    case GgufValueType::kUint8:
      *out = Load<uint8_t>(p);
      return true;
    case GgufValueType::kInt8:
      *out = Load<int8_t>(p);
      return true;
    case GgufValueType::kUint16:
      *out = Load<uint16_t>(p);
      return true;
    case GgufValueType::kInt16:
      *out = Load<int16_t>(p);
      return true;
    case GgufValueType::kUint32:
      *out = Load<uint32_t>(p);
      return true;
    case GgufValueType::kInt32:
      *out = Load<int32_t>(p);
      return true;
    case GgufValueType::kInt64:
      *out = Load<int64_t>(p);
      return true;
    case GgufValueType::kUint64: {
      uint64_t v = Load<uint64_t>(p);
      if (v > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) return false;
      *out = static_cast<int64_t>(v);
      return true;
    }
    default:
      return false;
  }
}

// A printable rendering of a short byte string for error messages.
std::string Printable(std::string_view s, size_t max_len = 64) {
  std::string out;
  for (size_t i = 0; i < s.size() && i < max_len; ++i) {
    unsigned char c = static_cast<unsigned char>(s[i]);
    if (c >= 0x20 && c < 0x7f && c != '\\') {
      out.push_back(static_cast<char>(c));
    } else {
      static const char* kHex = "0123456789abcdef";
      out += "\\x";
      out.push_back(kHex[c >> 4]);
      out.push_back(kHex[c & 15]);
    }
  }
  if (s.size() > max_len) out += "...";
  return out;
}

}  // namespace

const char* GgufValueTypeName(GgufValueType type) {
  switch (type) {
    case GgufValueType::kUint8:
      return "uint8";
    case GgufValueType::kInt8:
      return "int8";
    case GgufValueType::kUint16:
      return "uint16";
    case GgufValueType::kInt16:
      return "int16";
    case GgufValueType::kUint32:
      return "uint32";
    case GgufValueType::kInt32:
      return "int32";
    case GgufValueType::kFloat32:
      return "float32";
    case GgufValueType::kBool:
      return "bool";
    case GgufValueType::kString:
      return "string";
    case GgufValueType::kArray:
      return "array";
    case GgufValueType::kUint64:
      return "uint64";
    case GgufValueType::kInt64:
      return "int64";
    case GgufValueType::kFloat64:
      return "float64";
  }
  return "unknown";
}

const GgmlTypeTraits* GgmlTypeInfo(GgmlType type) {
  auto index = static_cast<uint32_t>(type);
  if (index >= std::size(kTypeTable) || kTypeTable[index].name == nullptr) return nullptr;
  return &kTypeTable[index];
}

std::string GgmlTypeName(GgmlType type) {
  const GgmlTypeTraits* info = GgmlTypeInfo(type);
  if (info != nullptr) return info->name;
  return absl::StrCat("type ", static_cast<uint32_t>(type));
}

// ---- GgufValue ------------------------------------------------------------------------------

bool GgufValue::ToInt(int64_t* out) const {
  if (!IsIntegerType(type_)) return false;
  return LoadInt(type_, raw_, out);
}

bool GgufValue::ToDouble(double* out) const {
  if (type_ == GgufValueType::kFloat32) {
    *out = static_cast<double>(Load<float>(raw_));
    return true;
  }
  if (type_ == GgufValueType::kFloat64) {
    *out = Load<double>(raw_);
    return true;
  }
  int64_t v;
  if (ToInt(&v)) {
    *out = static_cast<double>(v);
    return true;
  }
  return false;
}

bool GgufValue::ToBool(bool* out) const {
  if (type_ != GgufValueType::kBool) return false;
  *out = raw_[0] != 0;
  return true;
}

bool GgufValue::ToString(std::string_view* out) const {
  if (type_ != GgufValueType::kString) return false;
  *out = string_;
  return true;
}

bool GgufValue::ToIntArray(std::vector<int64_t>* out) const {
  if (type_ != GgufValueType::kArray || !IsIntegerType(element_type_)) return false;
  const uint64_t width = ScalarSize(element_type_);
  std::vector<int64_t> values(count_);
  for (uint64_t i = 0; i < count_; ++i) {
    if (!LoadInt(element_type_, raw_ + i * width, &values[i])) return false;
  }
  *out = std::move(values);
  return true;
}

bool GgufValue::ToStringArray(std::vector<std::string_view>* out) const {
  if (type_ != GgufValueType::kArray || element_type_ != GgufValueType::kString) return false;
  *out = strings_;
  return true;
}

std::string GgufValue::TypeString() const {
  if (type_ != GgufValueType::kArray) return GgufValueTypeName(type_);
  return absl::StrCat("array[", GgufValueTypeName(element_type_), "; ", count_, "]");
}

// ---- parsing --------------------------------------------------------------------------------

class GgufParser {
 public:
  explicit GgufParser(GgufFile* file) : f_(file), end_(file->size_) {}

  absl::Status Parse() {
    // Header.
    if (f_->size_ < 4) return Truncated("the magic");
    std::string_view magic(reinterpret_cast<const char*>(f_->base_), 4);
    if (magic != "GGUF") {
      return Invalid(
          absl::StrCat("not a GGUF file: the magic is '", Printable(magic), "', expected 'GGUF'"));
    }
    pos_ = 4;
    uint32_t version = 0;
    MP_RETURN_IF_ERROR(ReadU32(&version, "the version"));
    if (version != 2 && version != 3) {
      if (__builtin_bswap32(version) == 2 || __builtin_bswap32(version) == 3) {
        return Invalid("big-endian GGUF files are not supported");
      }
      return Invalid(absl::StrCat("unsupported GGUF version ", version, " (supported: 2, 3)"));
    }
    f_->version_ = version;
    uint64_t tensor_count = 0, kv_count = 0;
    MP_RETURN_IF_ERROR(ReadU64(&tensor_count, "the tensor count"));
    MP_RETURN_IF_ERROR(ReadU64(&kv_count, "the metadata count"));
    // A key/value takes at least 8 (key length) + 4 (type) + 1 bytes, a tensor info at least
    // 8 (name length) + 4 (n_dims) + 4 (type) + 8 (offset) bytes.
    if (kv_count > Remaining() / 13) {
      return Invalid(absl::StrCat("metadata count ", kv_count, " is impossible for a file of ",
                                  end_, " bytes"));
    }
    if (tensor_count > Remaining() / 24) {
      return Invalid(absl::StrCat("tensor count ", tensor_count, " is impossible for a file of ",
                                  end_, " bytes"));
    }

    // Metadata.
    f_->keys_.reserve(kv_count);
    for (uint64_t i = 0; i < kv_count; ++i) {
      const uint64_t key_at = pos_;
      std::string_view key;
      MP_RETURN_IF_ERROR(ReadString(&key, absl::StrCat("the key of metadata entry ", i)));
      if (key.empty()) {
        return Invalid(
            absl::StrCat("metadata entry ", i, " at byte ", key_at, " has an empty key"));
      }
      std::string key_str(key);
      if (f_->values_.find(key_str) != f_->values_.end()) {
        return Invalid(absl::StrCat("duplicate metadata key '", Printable(key), "'"));
      }
      GgufValue value;
      MP_RETURN_IF_ERROR(ReadTypedValue(&value, key_str));
      f_->keys_.push_back(key_str);
      f_->values_.emplace(std::move(key_str), std::move(value));
    }

    // Alignment.
    f_->alignment_ = kDefaultAlignment;
    if (const GgufValue* a = f_->Find("general.alignment"); a != nullptr) {
      int64_t alignment = 0;
      if (a->type() != GgufValueType::kUint32 || !a->ToInt(&alignment)) {
        return Invalid(absl::StrCat("metadata key 'general.alignment' has type ", a->TypeString(),
                                    ", expected uint32"));
      }
      if (alignment == 0 || !std::has_single_bit(static_cast<uint64_t>(alignment))) {
        return Invalid(
            absl::StrCat("general.alignment is ", alignment, ", expected a power of two"));
      }
      f_->alignment_ = static_cast<uint64_t>(alignment);
    }

    // Tensor infos.
    f_->tensors_.reserve(tensor_count);
    for (uint64_t i = 0; i < tensor_count; ++i) {
      GgufTensorInfo info;
      MP_RETURN_IF_ERROR(ReadTensorInfo(i, &info));
      if (f_->tensor_index_.find(info.name) != f_->tensor_index_.end()) {
        return Invalid(absl::StrCat("duplicate tensor name '", Printable(info.name), "'"));
      }
      f_->tensor_index_.emplace(info.name, f_->tensors_.size());
      f_->tensors_.push_back(std::move(info));
    }

    // Data section.
    const uint64_t align = f_->alignment_;
    if (pos_ > std::numeric_limits<uint64_t>::max() - align) return Invalid("header too large");
    f_->data_offset_ = (pos_ + align - 1) / align * align;
    return PlaceTensors();
  }

 private:
  uint64_t Remaining() const { return end_ - pos_; }

  absl::Status Invalid(absl::string_view what) const {
    return absl::InvalidArgumentError(absl::StrCat(f_->path_, ": ", what));
  }
  absl::Status Truncated(absl::string_view what) const {
    return absl::DataLossError(absl::StrCat(f_->path_, ": truncated at byte ", pos_,
                                            " while reading ", what, " (the file is ", end_,
                                            " bytes)"));
  }

  absl::Status Need(uint64_t n, absl::string_view what) const {
    if (n > Remaining()) return Truncated(what);
    return absl::OkStatus();
  }

  absl::Status ReadU32(uint32_t* out, absl::string_view what) {
    MP_RETURN_IF_ERROR(Need(4, what));
    *out = Load<uint32_t>(f_->base_ + pos_);
    pos_ += 4;
    return absl::OkStatus();
  }

  absl::Status ReadU64(uint64_t* out, absl::string_view what) {
    MP_RETURN_IF_ERROR(Need(8, what));
    *out = Load<uint64_t>(f_->base_ + pos_);
    pos_ += 8;
    return absl::OkStatus();
  }

  absl::Status ReadString(std::string_view* out, absl::string_view what) {
    uint64_t len;
    MP_RETURN_IF_ERROR(ReadU64(&len, what));
    if (len > Remaining()) {
      return absl::DataLossError(absl::StrCat(f_->path_, ": ", what, " at byte ", pos_ - 8,
                                              " has length ", len, " but only ", Remaining(),
                                              " bytes are left in the file"));
    }
    *out = std::string_view(reinterpret_cast<const char*>(f_->base_ + pos_), len);
    pos_ += len;
    return absl::OkStatus();
  }

  absl::Status ReadTypedValue(GgufValue* value, const std::string& key) {
    const uint64_t at = pos_;
    uint32_t type = 0;
    MP_RETURN_IF_ERROR(
        ReadU32(&type, absl::StrCat("the type of metadata key '", Printable(key), "'")));
    if (!KnownValueType(type)) {
      return Invalid(absl::StrCat("metadata key '", Printable(key), "' at byte ", at,
                                  " has unknown value type ", type));
    }
    return ReadValue(static_cast<GgufValueType>(type), value, key, 0);
  }

  absl::Status ReadValue(GgufValueType type, GgufValue* value, const std::string& key, int depth) {
    value->type_ = type;
    const std::string what = absl::StrCat("the value of metadata key '", Printable(key), "'");
    if (type == GgufValueType::kString) return ReadString(&value->string_, what);
    if (type != GgufValueType::kArray) {
      const uint64_t width = ScalarSize(type);
      MP_RETURN_IF_ERROR(Need(width, what));
      value->raw_ = f_->base_ + pos_;
      pos_ += width;
      return absl::OkStatus();
    }
    if (depth >= kMaxArrayDepth) {
      return Invalid(absl::StrCat("metadata key '", Printable(key), "' nests arrays deeper than ",
                                  kMaxArrayDepth, " levels"));
    }
    const uint64_t at = pos_;
    uint32_t element_type = 0;
    uint64_t count = 0;
    MP_RETURN_IF_ERROR(ReadU32(&element_type, what));
    MP_RETURN_IF_ERROR(ReadU64(&count, what));
    if (!KnownValueType(element_type)) {
      return Invalid(absl::StrCat("metadata key '", Printable(key), "' at byte ", at,
                                  " is an array of unknown value type ", element_type));
    }
    value->element_type_ = static_cast<GgufValueType>(element_type);
    value->count_ = count;
    // Smallest encoding of one element: its scalar size, 8 for a string (its length), 12 for an
    // array (type + count).
    uint64_t min_size = ScalarSize(value->element_type_);
    if (value->element_type_ == GgufValueType::kString) min_size = 8;
    if (value->element_type_ == GgufValueType::kArray) min_size = 12;
    if (count > Remaining() / min_size) {
      return absl::DataLossError(
          absl::StrCat(f_->path_, ": metadata key '", Printable(key), "' at byte ", at,
                       " is an array of ", count, " ", GgufValueTypeName(value->element_type_),
                       " values, more than the ", Remaining(), " bytes left in the file can hold"));
    }
    switch (value->element_type_) {
      case GgufValueType::kString:
        value->strings_.resize(count);
        for (uint64_t i = 0; i < count; ++i) {
          MP_RETURN_IF_ERROR(
              ReadString(&value->strings_[i], absl::StrCat("element ", i, " of ", what)));
        }
        return absl::OkStatus();
      case GgufValueType::kArray:
        value->nested_.resize(count);
        for (uint64_t i = 0; i < count; ++i) {
          MP_RETURN_IF_ERROR(ReadValue(GgufValueType::kArray, &value->nested_[i], key, depth + 1));
        }
        return absl::OkStatus();
      default:
        value->raw_ = f_->base_ + pos_;
        pos_ += count * min_size;  // checked above
        return absl::OkStatus();
    }
  }

  absl::Status ReadTensorInfo(uint64_t index, GgufTensorInfo* info) {
    const uint64_t at = pos_;
    std::string_view name;
    MP_RETURN_IF_ERROR(ReadString(&name, absl::StrCat("the name of tensor ", index)));
    if (name.empty()) {
      return Invalid(absl::StrCat("tensor ", index, " at byte ", at, " has an empty name"));
    }
    info->name = std::string(name);
    const std::string label = absl::StrCat("tensor '", Printable(name), "'");
    uint32_t n_dims = 0;
    MP_RETURN_IF_ERROR(ReadU32(&n_dims, absl::StrCat("the rank of ", label)));
    if (n_dims == 0 || n_dims > kMaxDims) {
      return Invalid(
          absl::StrCat(label, " has ", n_dims, " dimensions (supported: 1 to ", kMaxDims, ")"));
    }
    info->dims.resize(n_dims);
    int64_t numel = 1;
    for (uint32_t d = 0; d < n_dims; ++d) {
      uint64_t dim;
      MP_RETURN_IF_ERROR(ReadU64(&dim, absl::StrCat("the dimensions of ", label)));
      if (dim > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
        return Invalid(absl::StrCat(label, " has dimension ", d, " = ", dim, ", too large"));
      }
      info->dims[d] = static_cast<int64_t>(dim);
      if (info->dims[d] != 0 && numel > std::numeric_limits<int64_t>::max() / info->dims[d]) {
        return Invalid(absl::StrCat(label, " has too many elements (the dimensions overflow)"));
      }
      numel *= info->dims[d];
    }
    info->numel = numel;
    uint32_t type = 0;
    MP_RETURN_IF_ERROR(ReadU32(&type, absl::StrCat("the type of ", label)));
    info->type = static_cast<GgmlType>(type);
    const GgmlTypeTraits* traits = GgmlTypeInfo(info->type);
    if (traits == nullptr) {
      return Invalid(absl::StrCat(label, " has unknown ggml type ", type));
    }
    if (info->dims[0] % traits->block_size != 0) {
      return Invalid(absl::StrCat(label, " of type ", traits->name, " has a first dimension of ",
                                  info->dims[0], ", not a multiple of the block size ",
                                  traits->block_size));
    }
    const uint64_t blocks = static_cast<uint64_t>(numel / traits->block_size);
    if (blocks > std::numeric_limits<uint64_t>::max() / traits->type_size) {
      return Invalid(absl::StrCat(label, " is too large"));
    }
    info->nbytes = blocks * static_cast<uint64_t>(traits->type_size);
    MP_RETURN_IF_ERROR(ReadU64(&info->offset, absl::StrCat("the data offset of ", label)));
    return absl::OkStatus();
  }

  absl::Status PlaceTensors() {
    const uint64_t data_offset = f_->data_offset_;
    const uint64_t data_size = data_offset <= end_ ? end_ - data_offset : 0;
    std::vector<size_t> order(f_->tensors_.size());
    for (size_t i = 0; i < order.size(); ++i) {
      GgufTensorInfo& t = f_->tensors_[i];
      order[i] = i;
      if (t.offset % f_->alignment_ != 0) {
        return Invalid(absl::StrCat("tensor '", Printable(t.name), "' has data offset ", t.offset,
                                    ", not a multiple of the alignment ", f_->alignment_));
      }
      if (t.offset > data_size || t.nbytes > data_size - t.offset) {
        return absl::DataLossError(absl::StrCat(f_->path_, ": tensor '", Printable(t.name), "' (",
                                                GgmlTypeName(t.type), ", ", t.nbytes,
                                                " bytes at data offset ", t.offset,
                                                ") ends past the end of the file: the "
                                                "data section starts at byte ",
                                                data_offset, " and the file is ", end_, " bytes"));
      }
      t.data = f_->base_ + data_offset + t.offset;
    }
    std::sort(order.begin(), order.end(),
              [&](size_t a, size_t b) { return f_->tensors_[a].offset < f_->tensors_[b].offset; });
    for (size_t k = 1; k < order.size(); ++k) {
      const GgufTensorInfo& prev = f_->tensors_[order[k - 1]];
      const GgufTensorInfo& cur = f_->tensors_[order[k]];
      if (prev.nbytes > 0 && cur.nbytes > 0 && prev.offset + prev.nbytes > cur.offset) {
        return Invalid(absl::StrCat("the data of tensors '", Printable(prev.name), "' and '",
                                    Printable(cur.name), "' overlap"));
      }
    }
    return absl::OkStatus();
  }

  GgufFile* f_;
  uint64_t pos_ = 0;
  const uint64_t end_;
};

// ---- GgufFile -------------------------------------------------------------------------------

GgufFile::~GgufFile() = default;

absl::StatusOr<std::unique_ptr<GgufFile>> GgufFile::Open(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    const int err = errno;
    std::string msg = absl::StrCat(path, ": cannot open: ", std::strerror(err));
    return err == ENOENT ? absl::NotFoundError(msg) : absl::InvalidArgumentError(msg);
  }
  struct stat st;
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    return absl::InvalidArgumentError(absl::StrCat(path, ": not a regular file"));
  }
  const uint64_t size = static_cast<uint64_t>(st.st_size);
  std::unique_ptr<GgufFile> file(new GgufFile());
  file->path_ = path;
  file->size_ = size;
  if (size > 0) {
    void* p = ::mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0);
    if (p == MAP_FAILED) {
      const int err = errno;
      ::close(fd);
      return absl::InvalidArgumentError(absl::StrCat(path, ": mmap failed: ", std::strerror(err)));
    }
    file->storage_ = std::shared_ptr<const void>(
        p, [size](const void* q) { ::munmap(const_cast<void*>(q), size); });
    file->base_ = static_cast<const uint8_t*>(p);
  }
  ::close(fd);
  static const uint8_t kEmpty = 0;
  if (file->base_ == nullptr) file->base_ = &kEmpty;
  GgufParser parser(file.get());
  MP_RETURN_IF_ERROR(parser.Parse());
  return file;
}

absl::StatusOr<std::unique_ptr<GgufFile>> GgufFile::FromBytes(std::span<const uint8_t> bytes,
                                                              const std::string& name) {
  auto copy = std::make_shared<std::vector<uint8_t>>(bytes.begin(), bytes.end());
  std::unique_ptr<GgufFile> file(new GgufFile());
  file->path_ = name;
  file->size_ = copy->size();
  static const uint8_t kEmpty = 0;
  file->base_ = copy->empty() ? &kEmpty : copy->data();
  file->storage_ = std::shared_ptr<const void>(copy, copy.get());
  GgufParser parser(file.get());
  MP_RETURN_IF_ERROR(parser.Parse());
  return file;
}

const GgufValue* GgufFile::Find(std::string_view key) const {
  auto it = values_.find(key);
  return it == values_.end() ? nullptr : &it->second;
}

const GgufTensorInfo* GgufFile::FindTensor(std::string_view name) const {
  auto it = tensor_index_.find(name);
  return it == tensor_index_.end() ? nullptr : &tensors_[it->second];
}

namespace {

absl::Status Missing(const std::string& path, std::string_view key) {
  return absl::NotFoundError(
      absl::StrCat(path, ": metadata key '", std::string(key), "' is missing"));
}

absl::Status WrongType(const std::string& path, std::string_view key, const GgufValue& v,
                       const char* expected) {
  return absl::InvalidArgumentError(absl::StrCat(path, ": metadata key '", std::string(key),
                                                 "' has type ", v.TypeString(), ", expected ",
                                                 expected));
}

}  // namespace

absl::StatusOr<int64_t> GgufFile::GetInt(std::string_view key) const {
  const GgufValue* v = Find(key);
  if (v == nullptr) return Missing(path_, key);
  int64_t out;
  if (!v->ToInt(&out)) return WrongType(path_, key, *v, "an integer that fits in int64");
  return out;
}

absl::StatusOr<double> GgufFile::GetFloat(std::string_view key) const {
  const GgufValue* v = Find(key);
  if (v == nullptr) return Missing(path_, key);
  double out;
  if (!v->ToDouble(&out)) return WrongType(path_, key, *v, "a number");
  return out;
}

absl::StatusOr<bool> GgufFile::GetBool(std::string_view key) const {
  const GgufValue* v = Find(key);
  if (v == nullptr) return Missing(path_, key);
  bool out;
  if (!v->ToBool(&out)) return WrongType(path_, key, *v, "bool");
  return out;
}

absl::StatusOr<std::string> GgufFile::GetString(std::string_view key) const {
  const GgufValue* v = Find(key);
  if (v == nullptr) return Missing(path_, key);
  std::string_view out;
  if (!v->ToString(&out)) return WrongType(path_, key, *v, "string");
  return std::string(out);
}

absl::StatusOr<std::vector<int64_t>> GgufFile::GetIntArray(std::string_view key) const {
  const GgufValue* v = Find(key);
  if (v == nullptr) return Missing(path_, key);
  std::vector<int64_t> out;
  if (!v->ToIntArray(&out)) return WrongType(path_, key, *v, "an array of integers");
  return out;
}

absl::StatusOr<std::vector<std::string_view>> GgufFile::GetStringArray(std::string_view key) const {
  const GgufValue* v = Find(key);
  if (v == nullptr) return Missing(path_, key);
  std::vector<std::string_view> out;
  if (!v->ToStringArray(&out)) return WrongType(path_, key, *v, "an array of strings");
  return out;
}

}  // namespace mp
