// Helpers shared by the kvtransfer tests: deterministic random payloads, registered buffers
// and connected transport pairs for every backend configuration a test runs on.
#pragma once

#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "common/status.h"
#include "common/status_matchers.h"
#include "kvtransfer/transport.h"
#include "kvtransfer/transport_factory.h"

// Expects `expr` (a Status or StatusOr) to fail with `expected_code` and a message containing
// `substr`.
#define KV_EXPECT_ERROR(expr, expected_code, substr)                                            \
  do {                                                                                          \
    const ::absl::Status kv_status_ = ::mp::testing::GetStatus(expr);                           \
    EXPECT_EQ(kv_status_.code(), expected_code) << kv_status_;                                  \
    EXPECT_NE(std::string(kv_status_.message()).find(substr), std::string::npos) << kv_status_; \
  } while (false)

namespace mp::kvtransfer::testing {

// Fills `n` bytes with a splitmix64 stream seeded by `seed`.
inline void FillRandom(void* dst, size_t n, uint64_t seed) {
  auto next = [&seed]() {
    uint64_t z = (seed += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  };
  auto* p = static_cast<unsigned char*>(dst);
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const uint64_t v = next();
    std::memcpy(p + i, &v, 8);
  }
  if (i < n) {
    const uint64_t v = next();
    std::memcpy(p + i, &v, n - i);
  }
}

// Index of the first differing byte, or -1 when equal.
inline int64_t FirstDifference(const void* a, const void* b, size_t n) {
  if (std::memcmp(a, b, n) == 0) return -1;
  const auto* x = static_cast<const unsigned char*>(a);
  const auto* y = static_cast<const unsigned char*>(b);
  for (size_t i = 0; i < n; ++i) {
    if (x[i] != y[i]) return static_cast<int64_t>(i);
  }
  return -1;
}

// A backend configuration under test.
struct BackendConfig {
  std::string name;  // test-name suffix
  std::string kind;  // NewTransport kind
  TransportOptions options;
};

inline std::vector<BackendConfig> AllCpuBackends() {
  std::vector<BackendConfig> configs;
  configs.push_back({"local", "local", {}});
#ifdef MP_KVTRANSFER_HAVE_UCX
  TransportOptions tcp;
  tcp.ucx_transports = "tcp";
  tcp.ucx_net_devices = "lo";
  configs.push_back({"ucx_tcp", "ucx", tcp});
  TransportOptions shm;
  shm.ucx_transports = "sm";
  configs.push_back({"ucx_shm", "ucx", shm});
#endif
  return configs;
}

// A heap buffer registered with a transport for the lifetime of the object.
class RegisteredBuffer {
 public:
  RegisteredBuffer(Transport* t, size_t bytes) : transport_(t), data_(bytes) {}
  absl::Status Register() {
    MP_ASSIGN_OR_RETURN(id_, transport_->RegisterMemory({data_.data(), data_.size()}));
    return absl::OkStatus();
  }
  ~RegisteredBuffer() {
    if (id_ != 0) transport_->DeregisterMemory(id_).IgnoreError();
  }
  unsigned char* data() { return data_.data(); }
  size_t size() const { return data_.size(); }
  RegionId id() const { return id_; }

 private:
  Transport* transport_;
  std::vector<unsigned char> data_;
  RegionId id_ = 0;
};

// Connects a and b to each other as peers "b" and "a".
inline absl::Status ConnectPair(Transport& a, Transport& b) {
  MP_ASSIGN_OR_RETURN(std::string da, a.LocalEndpoint());
  MP_ASSIGN_OR_RETURN(std::string db, b.LocalEndpoint());
  MP_RETURN_IF_ERROR(a.Connect("b", db));
  return b.Connect("a", da);
}

inline TransferTag Tag(uint64_t request, uint32_t chunk, TransferKind kind = TransferKind::kKv,
                       uint32_t part = 0) {
  TransferTag t;
  t.request_id = request;
  t.chunk_index = chunk;
  t.kind = kind;
  t.part = part;
  return t;
}

}  // namespace mp::kvtransfer::testing
