#include "model/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <nlohmann/json.hpp>
#include <set>
#include <string_view>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/status.h"

namespace mp {
namespace {

using Json = nlohmann::json;

// The reference implementation refuses headers above 100 MB; so do we.
constexpr uint64_t kMaxHeaderBytes = 100ull << 20;

struct DTypeSpelling {
  const char* name;
  DType dtype;
};
constexpr DTypeSpelling kDTypes[] = {
    {"F32", DType::kF32}, {"F16", DType::kF16}, {"BF16", DType::kBF16},
    {"I32", DType::kI32}, {"I64", DType::kI64}, {"U8", DType::kU8},
};

bool ParseDType(absl::string_view name, DType* dtype) {
  for (const DTypeSpelling& d : kDTypes) {
    if (name == d.name) {
      *dtype = d.dtype;
      return true;
    }
  }
  return false;
}

absl::Status ErrnoStatus(int err, absl::string_view what) {
  std::string message = absl::StrCat(what, ": ", std::strerror(err));
  switch (err) {
    case ENOENT:
      return absl::NotFoundError(message);
    case EACCES:
    case EPERM:
      return absl::PermissionDeniedError(message);
    case ENOSPC:
    case EDQUOT:
    case ENOMEM:
      return absl::ResourceExhaustedError(message);
    default:
      return absl::InternalError(message);
  }
}

std::string Show(const Json& value) {
  std::string text = value.dump(-1, ' ', false, Json::error_handler_t::replace);
  if (text.size() > 80) text = text.substr(0, 77) + "...";
  return text;
}

std::string ShapeText(const std::vector<int64_t>& shape) {
  return absl::StrCat("[", absl::StrJoin(shape, ", "), "]");
}

bool AsU64(const Json& v, uint64_t* out) {
  if (v.is_number_unsigned()) {
    *out = v.get<uint64_t>();
    return true;
  }
  if (v.is_number_integer() && v.get<int64_t>() >= 0) {
    *out = static_cast<uint64_t>(v.get<int64_t>());
    return true;
  }
  return false;
}

// Tracks the keys of every open object while parsing, to catch duplicates (nlohmann keeps the
// last one silently).
class DuplicateKeyFinder {
 public:
  bool operator()(int depth, Json::parse_event_t event, Json& parsed) {
    switch (event) {
      case Json::parse_event_t::object_start:
        open_.emplace_back();
        break;
      case Json::parse_event_t::object_end:
        if (!open_.empty()) open_.pop_back();
        break;
      case Json::parse_event_t::key:
        if (!open_.empty() && parsed.is_string()) {
          const std::string& key = parsed.get_ref<const std::string&>();
          if (!open_.back().insert(key).second && !duplicate_.has_value()) {
            duplicate_ = std::make_pair(key, depth);
          }
        }
        break;
      default:
        break;
    }
    return true;
  }
  const std::optional<std::pair<std::string, int>>& duplicate() const { return duplicate_; }

 private:
  std::vector<std::set<std::string>> open_;
  std::optional<std::pair<std::string, int>> duplicate_;
};

}  // namespace

const char* SafetensorsDTypeName(DType dtype) {
  for (const DTypeSpelling& d : kDTypes) {
    if (d.dtype == dtype) return d.name;
  }
  return "?";
}

absl::StatusOr<std::unique_ptr<SafetensorsFile>> SafetensorsFile::Open(const std::string& path) {
  const std::string where = absl::StrCat("safetensors file '", path, "'");
  auto bad = [&](absl::string_view problem) {
    return absl::InvalidArgumentError(absl::StrCat(where, ": ", problem));
  };

  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return ErrnoStatus(errno, absl::StrCat("cannot open ", where));
  struct stat st;
  if (::fstat(fd, &st) != 0) {
    int err = errno;
    ::close(fd);
    return ErrnoStatus(err, absl::StrCat("cannot stat ", where));
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    return bad("not a regular file");
  }
  const uint64_t size = static_cast<uint64_t>(st.st_size);
  if (size < 8) {
    ::close(fd);
    return bad(absl::StrCat("file is ", size, " bytes, too short for the 8-byte header length"));
  }
  void* addr = ::mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0);
  int mmap_err = errno;
  ::close(fd);
  if (addr == MAP_FAILED) return ErrnoStatus(mmap_err, absl::StrCat("cannot mmap ", where));

  std::unique_ptr<SafetensorsFile> file(new SafetensorsFile());
  file->path_ = path;
  file->mapping_ = std::shared_ptr<void>(addr, [size](void* p) { ::munmap(p, size); });
  file->base_ = static_cast<const uint8_t*>(addr);
  file->size_ = size;
  const uint8_t* base = file->base_;

  uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | base[i];
  if (header_len > size - 8) {
    return bad(absl::StrCat("header length ", header_len, " is larger than the file (", size,
                            " bytes; truncated or not a safetensors file?)"));
  }
  if (header_len > kMaxHeaderBytes) {
    return bad(absl::StrCat("header length ", header_len, " exceeds the limit of ", kMaxHeaderBytes,
                            " bytes"));
  }
  const uint64_t data_start = 8 + header_len;
  const uint64_t data_size = size - data_start;
  absl::string_view text(reinterpret_cast<const char*>(base + 8), header_len);
  while (!text.empty() && (text.back() == ' ' || text.back() == '\0')) text.remove_suffix(1);

  DuplicateKeyFinder duplicates;
  Json root;
  try {
    root = Json::parse(text.begin(), text.end(), std::ref(duplicates));
  } catch (const Json::exception& e) {
    return bad(absl::StrCat("header is not valid JSON: ", e.what()));
  }
  if (!root.is_object()) {
    return bad(absl::StrCat("header must be a JSON object, got ", Show(root)));
  }
  if (duplicates.duplicate().has_value()) {
    const auto& [key, depth] = *duplicates.duplicate();
    if (depth <= 1) return bad(absl::StrCat("duplicate tensor name '", key, "' in the header"));
    return bad(absl::StrCat("duplicate key '", key, "' in the header"));
  }

  struct Range {
    uint64_t begin, end;
    const std::string* name;
  };
  std::vector<Range> ranges;
  for (auto it = root.begin(); it != root.end(); ++it) {
    const std::string& name = it.key();
    const Json& info = it.value();
    if (name == "__metadata__") {
      if (!info.is_object()) return bad("__metadata__ must be an object of strings");
      for (auto m = info.begin(); m != info.end(); ++m) {
        if (!m.value().is_string()) {
          return bad(absl::StrCat("__metadata__ entry '", m.key(), "' must be a string, got ",
                                  Show(m.value())));
        }
        file->metadata_[m.key()] = m.value().get<std::string>();
      }
      continue;
    }
    auto bad_tensor = [&](absl::string_view problem) {
      return bad(absl::StrCat("tensor '", name, "': ", problem));
    };
    if (!info.is_object())
      return bad_tensor(absl::StrCat("entry must be an object, got ", Show(info)));
    auto dtype_it = info.find("dtype");
    if (dtype_it == info.end() || !dtype_it->is_string()) {
      return bad_tensor("missing or non-string 'dtype'");
    }
    Entry entry;
    const std::string& dtype_name = dtype_it->get_ref<const std::string&>();
    if (!ParseDType(dtype_name, &entry.dtype)) {
      return bad_tensor(absl::StrCat("unsupported dtype '", dtype_name,
                                     "' (supported: F32, F16, BF16, I32, I64, U8)"));
    }
    auto shape_it = info.find("shape");
    if (shape_it == info.end() || !shape_it->is_array()) {
      return bad_tensor("missing or non-list 'shape'");
    }
    uint64_t numel = 1;
    bool overflow = false;
    for (const Json& d : *shape_it) {
      uint64_t dim;
      if (!AsU64(d, &dim) || dim > static_cast<uint64_t>(INT64_MAX)) {
        return bad_tensor(
            absl::StrCat("shape ", Show(*shape_it), " must hold non-negative integers"));
      }
      entry.shape.push_back(static_cast<int64_t>(dim));
      overflow |= __builtin_mul_overflow(numel, dim, &numel);
    }
    uint64_t nbytes = 0;
    overflow |= __builtin_mul_overflow(numel, uint64_t{DTypeSize(entry.dtype)}, &nbytes);
    auto off_it = info.find("data_offsets");
    uint64_t begin = 0, end = 0;
    if (off_it == info.end() || !off_it->is_array() || off_it->size() != 2 ||
        !AsU64((*off_it)[0], &begin) || !AsU64((*off_it)[1], &end)) {
      return bad_tensor("'data_offsets' must be two non-negative integers [begin, end]");
    }
    if (begin > end) {
      return bad_tensor(absl::StrCat("data_offsets [", begin, ", ", end, "] has begin > end"));
    }
    if (overflow || end - begin != nbytes) {
      return bad_tensor(absl::StrCat("shape ", ShapeText(entry.shape), " of ", dtype_name,
                                     overflow ? " overflows" : absl::StrCat(" needs ", nbytes),
                                     " bytes but data_offsets [", begin, ", ", end, "] hold ",
                                     end - begin));
    }
    if (end > data_size) {
      return bad_tensor(absl::StrCat("data_offsets [", begin, ", ", end,
                                     "] run past the end of the data (", data_size,
                                     " bytes; file truncated?)"));
    }
    entry.begin = data_start + begin;
    entry.end = data_start + end;
    auto inserted = file->entries_.emplace(name, std::move(entry)).first;
    if (begin < end) ranges.push_back({begin, end, &inserted->first});
  }
  std::sort(ranges.begin(), ranges.end(),
            [](const Range& a, const Range& b) { return a.begin < b.begin; });
  for (size_t i = 1; i < ranges.size(); ++i) {
    if (ranges[i].begin < ranges[i - 1].end) {
      return bad(absl::StrCat("tensors '", *ranges[i - 1].name, "' [", ranges[i - 1].begin, ", ",
                              ranges[i - 1].end, ") and '", *ranges[i].name, "' [", ranges[i].begin,
                              ", ", ranges[i].end, ") overlap"));
    }
  }
  return file;
}

SafetensorsFile::~SafetensorsFile() = default;

std::vector<std::string> SafetensorsFile::TensorNames() const {
  std::vector<std::string> names;
  names.reserve(entries_.size());
  for (const auto& [name, entry] : entries_) names.push_back(name);
  return names;
}

bool SafetensorsFile::Has(const std::string& name) const { return entries_.count(name) > 0; }

absl::StatusOr<Tensor> SafetensorsFile::Get(const std::string& name) const {
  auto it = entries_.find(name);
  if (it == entries_.end()) {
    return absl::NotFoundError(
        absl::StrCat("tensor '", name, "' not found in safetensors file '", path_, "'"));
  }
  const Entry& e = it->second;
  const uint8_t* data = base_ + e.begin;
  if (reinterpret_cast<uintptr_t>(data) % DTypeSize(e.dtype) != 0) {
    Tensor copy = Tensor::Host(e.shape, e.dtype);
    std::memcpy(copy.data(), data, e.end - e.begin);
    return copy;
  }
  return Tensor::Wrap(const_cast<uint8_t*>(data), e.shape, e.dtype, DeviceKind::kCpu, mapping_);
}

absl::Status WriteSafetensors(const std::string& path, std::span<const SafetensorsEntry> tensors,
                              const std::map<std::string, std::string>& metadata) {
  const std::string where = absl::StrCat("writing safetensors file '", path, "'");
  Json header = Json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  uint64_t offset = 0;
  for (const SafetensorsEntry& t : tensors) {
    if (t.name.empty() || t.name == "__metadata__") {
      return absl::InvalidArgumentError(
          absl::StrCat(where, ": invalid tensor name '", t.name, "'"));
    }
    if (header.contains(t.name)) {
      return absl::InvalidArgumentError(
          absl::StrCat(where, ": duplicate tensor name '", t.name, "'"));
    }
    if (t.tensor.device() != DeviceKind::kCpu) {
      return absl::InvalidArgumentError(absl::StrCat(where, ": tensor '", t.name, "' is on ",
                                                     DeviceName(t.tensor.device()),
                                                     ", not the host"));
    }
    if (!t.tensor.defined() && t.tensor.numel() != 0) {
      return absl::InvalidArgumentError(absl::StrCat(where, ": tensor '", t.name, "' has no data"));
    }
    const uint64_t nbytes = t.tensor.nbytes();
    header[t.name] = {{"dtype", SafetensorsDTypeName(t.tensor.dtype())},
                      {"shape", t.tensor.shape()},
                      {"data_offsets", {offset, offset + nbytes}}};
    offset += nbytes;
  }
  std::string text;
  try {
    text = header.dump();
  } catch (const Json::exception& e) {
    return absl::InvalidArgumentError(
        absl::StrCat(where, ": a tensor name or metadata string is not valid UTF-8: ", e.what()));
  }
  text.append((8 - text.size() % 8) % 8, ' ');
  uint8_t len_bytes[8];
  for (int i = 0; i < 8; ++i) len_bytes[i] = static_cast<uint8_t>(uint64_t{text.size()} >> (8 * i));

  const std::string tmp = absl::StrCat(path, ".tmp.", ::getpid());
  std::FILE* f = std::fopen(tmp.c_str(), "wb");
  if (f == nullptr) return ErrnoStatus(errno, where);
  bool ok = std::fwrite(len_bytes, 1, 8, f) == 8 &&
            std::fwrite(text.data(), 1, text.size(), f) == text.size();
  for (const SafetensorsEntry& t : tensors) {
    if (!ok) break;
    const size_t n = t.tensor.nbytes();
    if (n > 0) ok = std::fwrite(t.tensor.data(), 1, n, f) == n;
  }
  int err = ok ? 0 : errno;
  if (std::fclose(f) != 0 && ok) {
    ok = false;
    err = errno;
  }
  if (!ok) {
    std::remove(tmp.c_str());
    return ErrnoStatus(err, where);
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    err = errno;
    std::remove(tmp.c_str());
    return ErrnoStatus(err, where);
  }
  return absl::OkStatus();
}

}  // namespace mp
