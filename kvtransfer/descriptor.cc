#include "kvtransfer/descriptor.h"

#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <random>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"

namespace mp::kvtransfer {
namespace {

constexpr char kMagic[4] = {'M', 'P', 'K', 'V'};
// magic + version + kind len + id + pid + host len + scope len + payload len + checksum.
constexpr size_t kMinSize = 4 + 1 + 1 + 8 + 4 + 1 + 1 + 4 + 4;

uint32_t Fnv1a(absl::string_view bytes) {
  uint32_t h = 2166136261u;
  for (unsigned char c : bytes) {
    h ^= c;
    h *= 16777619u;
  }
  return h;
}

void PutU32(std::string* out, uint32_t v) {
  for (int i = 0; i < 4; ++i) out->push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}
void PutU64(std::string* out, uint64_t v) {
  for (int i = 0; i < 8; ++i) out->push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}

// Bounds-checked little-endian reader over the descriptor body.
class Reader {
 public:
  explicit Reader(absl::string_view data) : data_(data) {}
  size_t remaining() const { return data_.size() - pos_; }

  absl::Status Bytes(size_t n, absl::string_view field, absl::string_view* out) {
    if (n > remaining()) {
      return absl::InvalidArgumentError(absl::StrCat("endpoint descriptor truncated: field '",
                                                     field, "' needs ", n, " bytes at offset ",
                                                     pos_, ", only ", remaining(), " remain"));
    }
    *out = data_.substr(pos_, n);
    pos_ += n;
    return absl::OkStatus();
  }
  absl::Status U8(absl::string_view field, uint8_t* out) {
    absl::string_view b;
    absl::Status s = Bytes(1, field, &b);
    if (s.ok()) *out = static_cast<uint8_t>(b[0]);
    return s;
  }
  absl::Status U32(absl::string_view field, uint32_t* out) {
    absl::string_view b;
    absl::Status s = Bytes(4, field, &b);
    if (!s.ok()) return s;
    *out = 0;
    for (int i = 0; i < 4; ++i) *out |= uint32_t{static_cast<uint8_t>(b[i])} << (8 * i);
    return s;
  }
  absl::Status U64(absl::string_view field, uint64_t* out) {
    absl::string_view b;
    absl::Status s = Bytes(8, field, &b);
    if (!s.ok()) return s;
    *out = 0;
    for (int i = 0; i < 8; ++i) *out |= uint64_t{static_cast<uint8_t>(b[i])} << (8 * i);
    return s;
  }

 private:
  absl::string_view data_;
  size_t pos_ = 0;
};

}  // namespace

std::string EncodeDescriptor(const EndpointDescriptor& d) {
  std::string out(kMagic, sizeof(kMagic));
  out.push_back(static_cast<char>(kDescriptorVersion));
  absl::string_view kind = absl::string_view(d.kind).substr(0, 255);
  out.push_back(static_cast<char>(kind.size()));
  out.append(kind.data(), kind.size());
  PutU64(&out, d.instance_id);
  PutU32(&out, d.pid);
  absl::string_view host = absl::string_view(d.host).substr(0, 255);
  out.push_back(static_cast<char>(host.size()));
  out.append(host.data(), host.size());
  absl::string_view scope = absl::string_view(d.scope).substr(0, 255);
  out.push_back(static_cast<char>(scope.size()));
  out.append(scope.data(), scope.size());
  PutU32(&out, static_cast<uint32_t>(d.payload.size()));
  out.append(d.payload);
  PutU32(&out, Fnv1a(out));
  return out;
}

absl::StatusOr<EndpointDescriptor> DecodeDescriptor(absl::string_view blob,
                                                    absl::string_view expected_kind) {
  if (blob.size() < kMinSize) {
    return absl::InvalidArgumentError(absl::StrCat(
        "endpoint descriptor is ", blob.size(), " bytes, shorter than the minimum of ", kMinSize));
  }
  if (std::memcmp(blob.data(), kMagic, sizeof(kMagic)) != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("endpoint descriptor does not start with \"MPKV\" (starts with \"",
                     absl::CHexEscape(blob.substr(0, 4)),
                     "\"): not a descriptor from Transport::LocalEndpoint()"));
  }
  const uint8_t version = static_cast<uint8_t>(blob[4]);
  if (version != kDescriptorVersion) {
    return absl::InvalidArgumentError(absl::StrCat("endpoint descriptor version ", version,
                                                   " is not supported (this build reads ",
                                                   kDescriptorVersion, ")"));
  }
  absl::string_view body = blob.substr(0, blob.size() - 4);
  Reader trailer(blob.substr(blob.size() - 4));
  uint32_t checksum = 0;
  if (absl::Status s = trailer.U32("checksum", &checksum); !s.ok()) return s;
  if (checksum != Fnv1a(body)) {
    return absl::InvalidArgumentError(
        "endpoint descriptor checksum mismatch: the blob was altered or truncated in transit");
  }

  Reader r(body.substr(5));
  EndpointDescriptor d;
  uint8_t kind_len = 0, host_len = 0, scope_len = 0;
  uint32_t payload_len = 0;
  absl::string_view kind, host, scope, payload;
  if (absl::Status s = r.U8("kind length", &kind_len); !s.ok()) return s;
  if (absl::Status s = r.Bytes(kind_len, "kind", &kind); !s.ok()) return s;
  if (absl::Status s = r.U64("instance id", &d.instance_id); !s.ok()) return s;
  if (absl::Status s = r.U32("pid", &d.pid); !s.ok()) return s;
  if (absl::Status s = r.U8("host length", &host_len); !s.ok()) return s;
  if (absl::Status s = r.Bytes(host_len, "host", &host); !s.ok()) return s;
  if (absl::Status s = r.U8("scope length", &scope_len); !s.ok()) return s;
  if (absl::Status s = r.Bytes(scope_len, "scope", &scope); !s.ok()) return s;
  if (absl::Status s = r.U32("payload length", &payload_len); !s.ok()) return s;
  if (payload_len > kMaxDescriptorPayload) {
    return absl::InvalidArgumentError(absl::StrCat("endpoint descriptor payload length ",
                                                   payload_len, " exceeds the limit of ",
                                                   kMaxDescriptorPayload, " bytes"));
  }
  if (absl::Status s = r.Bytes(payload_len, "payload", &payload); !s.ok()) return s;
  if (r.remaining() != 0) {
    return absl::InvalidArgumentError(absl::StrCat("endpoint descriptor has ", r.remaining(),
                                                   " unexpected bytes after the payload"));
  }
  d.kind = std::string(kind);
  d.host = std::string(host);
  d.scope = std::string(scope);
  d.payload = std::string(payload);
  if (d.instance_id == 0) {
    return absl::InvalidArgumentError("endpoint descriptor has instance id 0 (never valid)");
  }
  if (d.kind != expected_kind) {
    return absl::InvalidArgumentError(
        absl::StrCat("endpoint descriptor is for a '", absl::CHexEscape(d.kind),
                     "' transport, this transport is '", expected_kind, "'"));
  }
  return d;
}

uint64_t NewInstanceId() {
  static std::atomic<uint64_t> counter{0};
  std::random_device rd;
  uint64_t x = (uint64_t{rd()} << 32) ^ rd();
  x ^= static_cast<uint64_t>(std::chrono::steady_clock::now().time_since_epoch().count());
  x ^= (counter.fetch_add(1) + 1) * 0x9E3779B97F4A7C15ull;
  // splitmix64 finaliser.
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  x ^= x >> 31;
  return x == 0 ? 1 : x;
}

namespace {

std::string ComputeProcessScope() {
  std::string boot_id;
  if (FILE* f = std::fopen("/proc/sys/kernel/random/boot_id", "r")) {
    char buf[64] = {0};
    if (std::fgets(buf, sizeof(buf), f) != nullptr) boot_id = buf;
    std::fclose(f);
  }
  while (!boot_id.empty() && (boot_id.back() == '\n' || boot_id.back() == ' ')) {
    boot_id.pop_back();
  }
  char ns[128] = {0};
  const ssize_t n = readlink("/proc/self/ns/pid", ns, sizeof(ns) - 1);
  if (boot_id.empty() || n <= 0) return "";
  return absl::StrCat(boot_id, "/", absl::string_view(ns, static_cast<size_t>(n)));
}

}  // namespace

std::string ProcessScope() {
  static const std::string* scope = new std::string(ComputeProcessScope());
  return *scope;
}

bool ProcessAlive(uint32_t pid) {
  if (pid == 0) return false;
  if (kill(static_cast<pid_t>(pid), 0) != 0 && errno == ESRCH) return false;
  // A killed child stays a zombie until its parent reaps it; it is gone all the same.
  std::string path = absl::StrCat("/proc/", pid, "/stat");
  FILE* f = std::fopen(path.c_str(), "r");
  if (f == nullptr) return true;  // no /proc: trust kill()
  char buf[512] = {0};
  const size_t len = std::fread(buf, 1, sizeof(buf) - 1, f);
  std::fclose(f);
  // Format: "pid (comm) S ...", where comm may hold spaces and parentheses.
  absl::string_view stat(buf, len);
  const size_t close = stat.rfind(')');
  if (close == absl::string_view::npos || close + 2 >= stat.size()) return true;
  const char state = stat[close + 2];
  return state != 'Z' && state != 'X';
}

std::string LocalHostName() {
  char buf[256] = {0};
  if (gethostname(buf, sizeof(buf) - 1) != 0) return "unknown";
  return buf;
}

}  // namespace mp::kvtransfer
