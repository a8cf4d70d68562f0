// Transfer bandwidth of the kvtransfer backends between two transports of one process, next to
// memcpy bandwidth measured in the same run. Prints one JSON line per (transport, size).
//
//   mp_transfer_bench [--transports memcpy,local,ucx-tcp,ucx-shm] [--min-bytes 65536]
//                     [--max-bytes 67108864] [--seconds 0.3] [--window 4]
//
// For each size: `window` transfers are kept in flight (receive posted, then send), each into
// its own slot, for about `seconds`; bandwidth = bytes moved / wall time. p50_us is the median
// latency of single transfers (window 1). The last slot is checked against the source.
#include <algorithm>
#include <cstdio>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "CLI/CLI.hpp"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "kvtransfer/transport_factory.h"

namespace mp::kvtransfer {
namespace {

struct Config {
  std::string name;       // as printed: memcpy, local, ucx
  std::string transport;  // NewTransport kind, "" for memcpy
  std::string ucx_tls;    // for ucx
};

absl::StatusOr<Config> ParseConfig(absl::string_view s) {
  if (s == "memcpy") return Config{"memcpy", "", ""};
  if (s == "local") return Config{"local", "local", ""};
  if (s == "ucx-tcp") return Config{"ucx", "ucx", "tcp"};
  if (s == "ucx-shm") return Config{"ucx", "ucx", "sm"};
  return absl::InvalidArgumentError(
      absl::StrCat("unknown transport '", s, "'; expected memcpy, local, ucx-tcp or ucx-shm"));
}

void Fill(std::vector<unsigned char>& v, uint64_t seed) {
  for (size_t i = 0; i < v.size(); i += 8) {
    seed = seed * 6364136223846793005ull + 1442695040888963407ull;
    std::memcpy(v.data() + i, &seed, std::min<size_t>(8, v.size() - i));
  }
}

struct Pair {
  std::unique_ptr<Transport> a, b;
};

absl::StatusOr<Pair> MakePair(const Config& c) {
  TransportOptions o;
  if (c.transport == "ucx") {
    o.ucx_transports = c.ucx_tls;
    if (c.ucx_tls == "tcp") o.ucx_net_devices = "lo";
  }
  Pair p;
  auto a = NewTransport(c.transport, o);
  if (!a.ok()) return a.status();
  auto b = NewTransport(c.transport, o);
  if (!b.ok()) return b.status();
  p.a = std::move(*a);
  p.b = std::move(*b);
  auto da = p.a->LocalEndpoint();
  auto db = p.b->LocalEndpoint();
  if (!da.ok()) return da.status();
  if (!db.ok()) return db.status();
  if (absl::Status s = p.a->Connect("b", *db); !s.ok()) return s;
  if (absl::Status s = p.b->Connect("a", *da); !s.ok()) return s;
  return p;
}

// One transfer a -> b of `bytes` from slot `slot`; returns the two handles.
absl::Status Post(Pair& p, size_t bytes, size_t slot, uint64_t seq, unsigned char* src,
                  unsigned char* dst, TransferHandle* hr, TransferHandle* hs) {
  TransferTag tag;
  tag.request_id = seq;
  tag.kind = TransferKind::kKv;
  auto r = p.b->Submit({{TransferOp::Recv("a", tag, dst + slot * bytes, bytes)}});
  if (!r.ok()) return r.status();
  auto s = p.a->Submit({{TransferOp::Send("b", tag, src + slot * bytes, bytes)}});
  if (!s.ok()) return s.status();
  *hr = *r;
  *hs = *s;
  return absl::OkStatus();
}

absl::Status Finish(Pair& p, TransferHandle hr, TransferHandle hs) {
  const absl::Time deadline = absl::Now() + absl::Seconds(60);
  if (absl::Status s = p.b->Wait(hr, deadline); !s.ok()) return s;
  if (absl::Status s = p.a->Wait(hs, deadline); !s.ok()) return s;
  p.a->Release(hs);
  p.b->Release(hr);
  return absl::OkStatus();
}

struct Result {
  uint64_t iters = 0;
  double seconds = 0;
  double p50_us = 0;
  bool verified = false;
};

absl::StatusOr<Result> Measure(const Config& c, Pair* pair, size_t bytes, int window,
                               double seconds, std::vector<unsigned char>& src,
                               std::vector<unsigned char>& dst) {
  Result res;
  const absl::Duration budget = absl::Seconds(seconds);
  if (c.transport.empty()) {
    const absl::Time start = absl::Now();
    std::vector<double> lat;
    while (absl::Now() - start < budget || res.iters < 3) {
      const size_t slot = res.iters % window;
      const absl::Time t0 = absl::Now();
      std::memcpy(dst.data() + slot * bytes, src.data() + slot * bytes, bytes);
      lat.push_back(absl::ToDoubleMicroseconds(absl::Now() - t0));
      ++res.iters;
    }
    res.seconds = absl::ToDoubleSeconds(absl::Now() - start);
    std::nth_element(lat.begin(), lat.begin() + lat.size() / 2, lat.end());
    res.p50_us = lat[lat.size() / 2];
  } else {
    Pair& p = *pair;
    uint64_t seq = bytes << 8;
    // Single transfers for latency.
    std::vector<double> lat;
    const absl::Time lat_start = absl::Now();
    while (lat.size() < 3 || (absl::Now() - lat_start < budget / 3 && lat.size() < 2000)) {
      TransferHandle hr, hs;
      const absl::Time t0 = absl::Now();
      if (absl::Status s = Post(p, bytes, 0, ++seq, src.data(), dst.data(), &hr, &hs); !s.ok()) {
        return s;
      }
      if (absl::Status s = Finish(p, hr, hs); !s.ok()) return s;
      lat.push_back(absl::ToDoubleMicroseconds(absl::Now() - t0));
    }
    std::nth_element(lat.begin(), lat.begin() + lat.size() / 2, lat.end());
    res.p50_us = lat[lat.size() / 2];
    // Pipelined transfers for bandwidth.
    std::vector<std::pair<TransferHandle, TransferHandle>> inflight;
    const absl::Time start = absl::Now();
    uint64_t posted = 0;
    while (absl::Now() - start < budget || posted < 3) {
      if (inflight.size() == static_cast<size_t>(window)) {
        if (absl::Status s = Finish(p, inflight.front().first, inflight.front().second); !s.ok()) {
          return s;
        }
        inflight.erase(inflight.begin());
        ++res.iters;
      }
      TransferHandle hr, hs;
      if (absl::Status s = Post(p, bytes, posted % window, ++seq, src.data(), dst.data(), &hr, &hs);
          !s.ok()) {
        return s;
      }
      inflight.emplace_back(hr, hs);
      ++posted;
    }
    for (auto& [hr, hs] : inflight) {
      if (absl::Status s = Finish(p, hr, hs); !s.ok()) return s;
      ++res.iters;
    }
    res.seconds = absl::ToDoubleSeconds(absl::Now() - start);
  }
  const size_t last = static_cast<size_t>(window - 1) * bytes;
  res.verified = std::memcmp(src.data() + last, dst.data() + last, bytes) == 0;
  return res;
}

int Main(int argc, char** argv) {
  CLI::App app{"kvtransfer bandwidth bench"};
  std::string transports = "memcpy,local,ucx-tcp,ucx-shm";
  size_t min_bytes = 64 << 10, max_bytes = 64 << 20;
  double seconds = 0.3;
  int window = 4;
  app.add_option("--transports", transports, "comma-separated: memcpy,local,ucx-tcp,ucx-shm");
  app.add_option("--min-bytes", min_bytes, "smallest message")->check(CLI::PositiveNumber);
  app.add_option("--max-bytes", max_bytes, "largest message (x4 steps)")
      ->check(CLI::PositiveNumber);
  app.add_option("--seconds", seconds, "time per point")->check(CLI::PositiveNumber);
  app.add_option("--window", window, "transfers in flight")->check(CLI::Range(1, 64));
  CLI11_PARSE(app, argc, argv);

  std::vector<Config> configs;
  for (absl::string_view name : absl::StrSplit(transports, ',', absl::SkipEmpty())) {
    absl::StatusOr<Config> c = ParseConfig(name);
    if (!c.ok()) {
      std::fprintf(stderr, "%s\n", std::string(c.status().message()).c_str());
      return 2;
    }
    configs.push_back(*c);
  }
  std::vector<unsigned char> src(max_bytes * window), dst(max_bytes * window);
  Fill(src, 1);
  std::fill(dst.begin(), dst.end(), 0);
  for (const Config& c : configs) {
    Pair pair;
    RegionId ra = 0, rb = 0;
    if (!c.transport.empty()) {
      absl::StatusOr<Pair> p = MakePair(c);
      if (!p.ok()) {
        std::fprintf(stderr, "%s (%s): %s\n", c.name.c_str(), c.ucx_tls.c_str(),
                     p.status().ToString().c_str());
        return 1;
      }
      pair = std::move(*p);
      ra = pair.a->RegisterMemory({src.data(), src.size()}).value_or(0);
      rb = pair.b->RegisterMemory({dst.data(), dst.size()}).value_or(0);
      if (ra == 0 || rb == 0) {
        std::fprintf(stderr, "memory registration failed\n");
        return 1;
      }
    }
    for (size_t bytes = min_bytes; bytes <= max_bytes; bytes *= 4) {
      std::fill(dst.begin(), dst.begin() + window * bytes, 0);
      absl::StatusOr<Result> r = Measure(c, &pair, bytes, window, seconds, src, dst);
      if (!r.ok()) {
        std::fprintf(stderr, "%s %zu bytes: %s\n", c.name.c_str(), bytes,
                     r.status().ToString().c_str());
        return 1;
      }
      const double gib = static_cast<double>(bytes) * r->iters / r->seconds / (1 << 30);
      std::printf(
          "{\"bench\":\"transfer\",\"transport\":\"%s\",\"ucx_tls\":\"%s\",\"bytes\":%zu,"
          "\"window\":%d,\"iters\":%llu,\"seconds\":%.4f,\"gib_per_s\":%.3f,\"p50_us\":%.1f,"
          "\"verified\":%s}\n",
          c.name.c_str(), c.ucx_tls.c_str(), bytes, window,
          static_cast<unsigned long long>(r->iters), r->seconds, gib, r->p50_us,
          r->verified ? "true" : "false");
      std::fflush(stdout);
      if (!r->verified) return 1;
    }
  }
  return 0;
}

}  // namespace
}  // namespace mp::kvtransfer

int main(int argc, char** argv) { return mp::kvtransfer::Main(argc, argv); }
