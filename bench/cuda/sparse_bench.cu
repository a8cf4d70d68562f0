// Benchmark of the vertical-slash sparse DCA prefill attention (kernels/cuda/
// vertical_slash_prefill.h) on the Qwen2.5-7B-Instruct-1M attention shape (28 query heads, 4 KV
// heads, head_dim 128, bf16, DCA C = 253952, S = 262144, theta 1e7, YaRN m(L)): the last
// 32768-token chunk of a prompt of L tokens (L = 128K, 256K, 512K, 1M keys in the cache), next to
// the dense sm_90a prefill kernel and the fused DCA kernel on the same shapes, in the same run.
//
//   sparse_bench [--cases 128k,256k,512k,1m] [--config FILE [--layer N|all]] [--pattern P]
//                [--locality X] [--iters N] [--json FILE] [--seed S]
//
// Budgets. Per q head (vertical, slash) budgets are drawn (seeded) from the statistics of Qwen's
// shipped 7B file (qwen1m-spec.md §3.2): (1000, 6096) for 41% of the heads, (30, 800) -> run as
// (130, 800) for 9%, the other base candidates for 5%, the rest refined (a base plus k * 2048 on
// both sides, k in 1..9 with weight 1/k) -- mean ~4.0K / 7.8K against the file's 3.9K / 7.65K.
// With --config (the real sparse_attention_config.json, e.g. from
// tests/unit/model/fetch_qwen_sparse_config.sh) the budgets are the file's: one layer, or every
// layer in turn (--layer all, the default with a file; times are then means over the layers).
//
// Inputs. What the selection picks depends on the data, and with it the sparse work: random
// keys give diagonals spread over all distances (each one a separate 64 x 64 block per row
// block: the worst case), real attention concentrates near the diagonal. --pattern local (the
// default) gives each KV head a shared direction u in q and k (q, k = a u + noise, |u| = 1), so
// that after RoPE the logit has a term locality * u.R(p - j)u that decays with the distance
// (RoPE-induced locality, on top of N(0, ~1.4) noise); --pattern random is pure noise. The run
// prints the density it got (attended keys / causal keys) and the recall of the sparse result
// against the DCA kernel (mean over rows of exp(lse_sparse - lse_dca)).
//
// Timing: CUDA events, median of --iters rounds after a warm-up, the three paths timed
// round-robin. The sparse time is the whole procedure: per DCA piece the query rotation and
// the two score passes ("estimate"), the top-k selection ("select"), the index builder for each
// part ("index") and the sparse kernel ("attend"), each also reported on its own (events
// between the stages). Goal: >= 10x faster than dense at 1M, estimate + select +
// index <= 10% of the sparse time.
//
// Key sharing within a KV group (group_union_fraction, pair_union_fraction in the JSON): on 4
// sampled row blocks of every piece and layer, the distinct attended keys of the group's q heads
// (or of head pairs) over the sum of their attended keys -- 1: nothing in common, 1/7 (1/2):
// every head of the group (pair) attends the same keys. It bounds what a kernel loading each
// key once for several heads of a group could save in gather traffic. rows_union_fraction: the
// same for neighbouring row blocks m - 1, m of one head (1/2: the same keys), what a CTA of two
// row blocks could save; pair_tile_fraction: the key tiles such a CTA walks (the union of the two
// block lists, two blocks a tile, and both column lists) over the tiles of the two row blocks.
//
// Output: one JSON line per case (also to --json), then a table.
#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <iterator>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "bench/cuda/bench_util.cuh"
#include "bench/cuda/sparse_bench_budgets.h"
#include "kernels/cpu/dca_positions.h"
#include "kernels/cuda/dca_positions.h"
#include "kernels/cuda/paged_prefill_attention.h"
#include "kernels/cuda/paged_prefill_dca_attention.h"
#include "kernels/cuda/rope_sincos.cuh"
#include "kernels/cuda/vertical_slash_parts.h"
#include "kernels/cuda/vertical_slash_prefill.h"

namespace {

constexpr int64_t kHeads = 28, kKvHeads = 4, kDim = 128, kChunk = 32768, kBlock = 64;
constexpr int64_t kChunkSize = 262144, kLocal = 8192, kC = kChunkSize - kLocal;
constexpr int64_t kL0 = 262144;
constexpr double kTheta = 1e7;

__device__ __forceinline__ float HashNormal(uint64_t key) {
  auto mix = [](uint64_t v) {
    v = (v ^ (v >> 30)) * 0xBF58476D1CE4E5B9ull;
    v = (v ^ (v >> 27)) * 0x94D049BB133111EBull;
    return v ^ (v >> 31);
  };
  const uint64_t a = mix(key), b = mix(key + 0x632BE59BD9B4E019ull);
  const float u1 = (float(a >> 40) + 1.0f) / 16777217.0f;
  const float u2 = float(b >> 40) / 16777216.0f;
  return sqrtf(-2.0f * logf(u1)) * cospif(2.0f * u2);
}

// Cache rows of tokens [0, len): k = RoPE(j mod C)(a u[h] + noise), v = noise.
__global__ void FillCache(__nv_bfloat16* k, __nv_bfloat16* v, const int32_t* table, int64_t len,
                          const float* u, const float* inv_freq, float a, uint64_t seed) {
  constexpr int kHalf = kDim / 2;
  const int64_t total = len * kKvHeads * kHalf;
  for (int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; idx < total;
       idx += int64_t(gridDim.x) * blockDim.x) {
    const int x = int(idx % kHalf);
    const int h = int(idx / kHalf % kKvHeads);
    const int64_t j = idx / (kHalf * kKvHeads);
    const int64_t off = ((int64_t(table[j / kBlock]) * kKvHeads + h) * kBlock + j % kBlock) * kDim;
    const uint64_t key = seed + uint64_t((j * kKvHeads + h) * kDim) * 2;
    const float x1 = a * u[h * kDim + x] + HashNormal(key + 2 * x);
    const float x2 = a * u[h * kDim + x + kHalf] + HashNormal(key + 2 * (x + kHalf));
    float s, c;
    mp::cuda::RopeSinCos(float(int32_t(j % kC)) * inv_freq[x], &s, &c);
    k[off + x] = __float2bfloat16(x1 * c - x2 * s);
    k[off + x + kHalf] = __float2bfloat16(x2 * c + x1 * s);
    v[off + x] = __float2bfloat16(HashNormal(key + 1 + 2 * x + 0x5555));
    v[off + x + kHalf] = __float2bfloat16(HashNormal(key + 1 + 2 * (x + kHalf) + 0x5555));
  }
}

// Queries (not rotated): a u[h / group] + noise.
__global__ void FillQueries(__nv_bfloat16* q, int64_t n, const float* u, float a, uint64_t seed) {
  const int64_t total = n * kHeads * kDim;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int x = int(i % kDim);
    const int h = int(i / kDim % kHeads);
    q[i] = __float2bfloat16(a * u[(h / (kHeads / kKvHeads)) * kDim + x] + HashNormal(seed + i));
  }
}

// sum over (h, i) of exp(a - b) where b is finite, and the count.
__global__ void RecallSum(const float* a, const float* b, int64_t n, double* out) {
  double local = 0;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    if (isfinite(b[i])) local += isfinite(a[i]) ? exp(double(a[i]) - double(b[i])) : 0.0;
  }
  atomicAdd(out, local);
}

// (v, s) as run (vertical_size 30 -> 130) from the statistics of Qwen's 7B file.
std::vector<int64_t> SampleBudgets(std::mt19937_64& rng) {
  std::uniform_real_distribution<double> uni(0.0, 1.0);
  std::discrete_distribution<int> raise(
      {1.0, 1 / 2.0, 1 / 3.0, 1 / 4.0, 1 / 5.0, 1 / 6.0, 1 / 7.0, 1 / 8.0, 1 / 9.0});
  std::vector<int64_t> b;
  for (int64_t h = 0; h < kHeads; ++h) {
    int64_t v, s;
    double u = uni(rng);
    if (u < 321.0 / 784) {
      v = 1000, s = 6096;
    } else if ((u -= 321.0 / 784) < 72.0 / 784) {
      v = 30, s = 800;
    } else if ((u -= 72.0 / 784) < 36.0 / 784) {
      const int64_t base[4][2] = {{100, 800}, {500, 700}, {3500, 100}, {100, 750}};
      const int i = int(rng() % 4);
      v = base[i][0], s = base[i][1];
    } else {
      const double r = uni(rng);
      if (r < 0.5) {
        v = 1100, s = 6096;
      } else if (r < 0.8) {
        v = 1000, s = 6096;
      } else if (r < 0.95) {
        v = 3500, s = 100;
      } else {
        v = 30, s = 800;
      }
      const int64_t k = raise(rng) + 1;
      v += 2048 * k;
      s += 2048 * k;
    }
    b.push_back(v == 30 ? 130 : v);
    b.push_back(s);
  }
  return b;
}

struct Case {
  const char* name;
  int64_t keys;  // L: cached keys including the chunk's
};

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0.0 : v[v.size() / 2];
}

}  // namespace

// How much of the attended keys the q heads of a KV group have in common (what a kernel that
// loads a key once for several heads of the group could save), on 4 sampled row blocks of a
// piece: sum over heads of |keys| against |union| for the whole group and for head pairs
// (2i, 2i + 1) of a group; and how much two neighbouring row blocks m - 1, m of one head have in
// common (what a CTA of 128 rows of one head could save). Keys of a row block: its blocks'
// 64-key spans and its columns.
// pair_tile_fraction: the key tiles the sparse kernel walks for two neighbouring row blocks
// (the union of their block lists, two blocks a tile, and both column lists, 128 columns a tile)
// over the tiles of the two walked apart.
struct KeySharing {
  double sum = 0, group_union = 0, pair_sum = 0, pair_union = 0, rows_sum = 0, rows_union = 0;
  double rows_tiles_sum = 0, rows_tiles_union = 0;
};

void CountKeySharing(const mp::cuda::VerticalSlashPieceBuffers& pb, int64_t rbs, KeySharing* out) {
  const int64_t group = kHeads / kKvHeads, e = pb.piece_end;
  std::vector<std::vector<int32_t>> nb(3), nc(3);
  std::vector<std::vector<mp::cuda::VerticalSlashHeadSpan>> spans(3);
  int64_t key_begin[3] = {};
  for (int part = 0; part < 3; ++part) {
    const mp::cuda::VerticalSlashIndexDev& x = pb.index[part];
    if (x.block_count == nullptr) continue;
    const mp::cuda::VerticalSlashPartRange r =
        mp::cuda::VerticalSlashPartKeys(pb.piece_end, pb.chunk_begin, kC, part);
    key_begin[part] = r.key_begin;
    nb[part].resize(kHeads * rbs);
    nc[part].resize(kHeads * rbs);
    spans[part].resize(kHeads);
    BENCH_CHECK(
        cudaMemcpy(nb[part].data(), x.block_count, nb[part].size() * 4, cudaMemcpyDeviceToHost));
    BENCH_CHECK(
        cudaMemcpy(nc[part].data(), x.column_count, nc[part].size() * 4, cudaMemcpyDeviceToHost));
    BENCH_CHECK(cudaMemcpy(spans[part].data(), x.heads, kHeads * sizeof(spans[part][0]),
                           cudaMemcpyDeviceToHost));
  }
  // The block list (blocks) or column list of row block m of q head h in one part.
  auto list_of = [&](int part, bool blocks, int64_t h, int64_t m) {
    const int64_t rb = h * rbs + m;
    const mp::cuda::VerticalSlashHeadSpan& sp = spans[part][h];
    std::vector<int32_t> list(size_t(std::max(blocks ? nb[part][rb] : nc[part][rb], 0)));
    if (!list.empty()) {
      const int32_t* src = blocks ? pb.index[part].block_offset + sp.block_base + m * sp.max_blocks
                                  : pb.index[part].column_index + sp.column_base +
                                        m * sp.max_columns;
      BENCH_CHECK(cudaMemcpy(list.data(), src, list.size() * 4, cudaMemcpyDeviceToHost));
    }
    return list;
  };
  // The attended keys (sequence positions) of row block m of q head h, over all parts.
  auto keys_of = [&](int64_t h, int64_t m) {
    std::vector<int32_t> keys;
    for (int part = 0; part < 3; ++part) {
      if (nb[part].empty()) continue;
      for (int32_t off : list_of(part, true, h, m)) {
        for (int64_t k = off; k < off + 64; ++k) keys.push_back(int32_t(key_begin[part] + k));
      }
      for (int32_t k : list_of(part, false, h, m)) keys.push_back(int32_t(key_begin[part] + k));
    }
    return keys;
  };
  // Key tiles of row blocks m - 1 and m of head h walked apart, and walked together.
  auto count_tiles = [&](int64_t h, int64_t m) {
    auto tiles = [](size_t n, size_t per) { return double((n + per - 1) / per); };
    for (int part = 0; part < 3; ++part) {
      if (nb[part].empty()) continue;
      const std::vector<int32_t> b0 = list_of(part, true, h, m - 1), b1 = list_of(part, true, h, m);
      const size_t c0 = list_of(part, false, h, m - 1).size(), c1 = list_of(part, false, h, m).size();
      std::vector<int32_t> u;
      std::set_union(b0.begin(), b0.end(), b1.begin(), b1.end(), std::back_inserter(u));
      out->rows_tiles_sum += tiles(b0.size(), 2) + tiles(b1.size(), 2) + tiles(c0, 128) +
                             tiles(c1, 128);
      out->rows_tiles_union += tiles(u.size(), 2) + tiles(c0 + c1, 128);
    }
  };
  // Sum and union size of several key lists (keys outside [0, e) are not counted).
  std::vector<uint8_t> seen(static_cast<size_t>(e));
  auto add = [&](const std::vector<const std::vector<int32_t>*>& lists, double* sum,
                 double* uni) {
    std::fill(seen.begin(), seen.end(), 0);
    for (const std::vector<int32_t>* l : lists) {
      for (int32_t k : *l) {
        if (k < 0 || k >= e) continue;
        *sum += 1;
        *uni += seen[size_t(k)] == 0;
        seen[size_t(k)] = 1;
      }
    }
  };
  for (int64_t m : {rbs - 1, rbs * 3 / 4, rbs / 2, rbs / 4}) {
    for (int64_t g = 0; g < kKvHeads; ++g) {
      std::vector<std::vector<int32_t>> keys(group);
      std::vector<const std::vector<int32_t>*> all;
      for (int64_t j = 0; j < group; ++j) {
        keys[j] = keys_of(g * group + j, m);
        all.push_back(&keys[j]);
      }
      add(all, &out->sum, &out->group_union);
      for (int64_t j = 0; j + 1 < group; j += 2) {
        add({&keys[j], &keys[j + 1]}, &out->pair_sum, &out->pair_union);
      }
      if (m < 1) continue;
      for (int64_t j = 0; j < group; ++j) {
        const std::vector<int32_t> before = keys_of(g * group + j, m - 1);
        add({&before, &keys[j]}, &out->rows_sum, &out->rows_union);
        count_tiles(g * group + j, m);
      }
    }
  }
}

int main(int argc, char** argv) {
  std::string cases_arg = "128k,256k,512k,1m", config_path, layer_arg, pattern = "local";
  std::string json_path;
  double locality = 12.0;
  int iters = 3;
  uint64_t seed = 1;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "%s needs a value\n", arg.c_str());
        std::exit(2);
      }
      return argv[++i];
    };
    if (arg == "--cases") {
      cases_arg = value();
    } else if (arg == "--config") {
      config_path = value();
    } else if (arg == "--layer") {
      layer_arg = value();
    } else if (arg == "--pattern") {
      pattern = value();
    } else if (arg == "--locality") {
      locality = std::atof(value().c_str());
    } else if (arg == "--iters") {
      iters = std::max(1, std::atoi(value().c_str()));
    } else if (arg == "--json") {
      json_path = value();
    } else if (arg == "--seed") {
      seed = std::strtoull(value().c_str(), nullptr, 10);
    } else {
      std::fprintf(stderr, "unknown argument %s\n", arg.c_str());
      return 2;
    }
  }
  if (pattern != "local" && pattern != "random") {
    std::fprintf(stderr, "--pattern must be local or random, got %s\n", pattern.c_str());
    return 2;
  }
  const std::vector<Case> all_cases = {
      {"128k", 131072}, {"256k", 262144}, {"512k", 524288}, {"1m", 1048576}};
  std::vector<Case> cases;
  for (const Case& c : all_cases) {
    if (("," + cases_arg + ",").find(std::string(",") + c.name + ",") != std::string::npos) {
      cases.push_back(c);
    }
  }
  if (cases.empty()) {
    std::fprintf(stderr, "--cases selects none of 128k,256k,512k,1m\n");
    return 2;
  }

  // Budgets: sampled, or the file's layers.
  std::vector<std::vector<int64_t>> layer_budgets;
  std::string budget_source = "sampled from the 7B file statistics";
  if (!config_path.empty()) {
    std::string error;
    if (!mp::bench::LoadQwen7bBudgets(config_path, layer_arg, &layer_budgets, &error)) {
      std::fprintf(stderr, "%s\n", error.c_str());
      return 2;
    }
    budget_source =
        config_path + (layer_budgets.size() > 1 ? " (all layers)" : " layer " + layer_arg);
  } else {
    std::mt19937_64 rng(seed);
    layer_budgets.push_back(SampleBudgets(rng));
  }
  double mean_v = 0, mean_s = 0;
  for (const auto& b : layer_budgets) {
    for (int64_t h = 0; h < kHeads; ++h) {
      mean_v += double(b[2 * h]) / (kHeads * layer_budgets.size());
      mean_s += double(b[2 * h + 1]) / (kHeads * layer_budgets.size());
    }
  }

  cudaDeviceProp prop{};
  BENCH_CHECK(cudaGetDeviceProperties(&prop, 0));
  std::printf("device: %s, %d SMs\n", prop.name, prop.multiProcessorCount);
  std::printf("budgets: %s, %zu layer(s), mean vertical %.0f / slash %.0f (as run)\n",
              budget_source.c_str(), layer_budgets.size(), mean_v, mean_s);
  std::printf("inputs: pattern %s, locality %.1f\n", pattern.c_str(), locality);

  int64_t max_keys = 0;
  for (const Case& c : cases) max_keys = std::max(max_keys, c.keys);
  const int64_t blocks = (max_keys + kBlock - 1) / kBlock;
  const int64_t cache_elems = blocks * kKvHeads * kBlock * kDim;
  const int64_t q_elems = kChunk * kHeads * kDim;
  __nv_bfloat16 *q, *k, *v, *out;
  float *lse_dca, *lse_sparse, *u_dev, *inv_freq_dev;
  int32_t* table;
  double* recall_dev;
  unsigned long long* bad;
  BENCH_CHECK(cudaMalloc(&q, q_elems * 2));
  BENCH_CHECK(cudaMalloc(&k, cache_elems * 2));
  BENCH_CHECK(cudaMalloc(&v, cache_elems * 2));
  BENCH_CHECK(cudaMalloc(&out, q_elems * 2));
  BENCH_CHECK(cudaMalloc(&lse_dca, kHeads * kChunk * 4));
  BENCH_CHECK(cudaMalloc(&lse_sparse, kHeads * kChunk * 4));
  BENCH_CHECK(cudaMalloc(&u_dev, kKvHeads * kDim * 4));
  BENCH_CHECK(cudaMalloc(&inv_freq_dev, kDim / 2 * 4));
  BENCH_CHECK(cudaMalloc(&table, blocks * 4));
  BENCH_CHECK(cudaMalloc(&recall_dev, sizeof(double)));
  BENCH_CHECK(cudaMalloc(&bad, sizeof(unsigned long long)));
  std::vector<int32_t> host_table(blocks);
  std::iota(host_table.begin(), host_table.end(), 0);
  std::shuffle(host_table.begin(), host_table.end(), std::mt19937_64(seed + 4));
  BENCH_CHECK(cudaMemcpy(table, host_table.data(), blocks * 4, cudaMemcpyHostToDevice));
  {
    std::mt19937_64 rng(seed + 5);
    std::normal_distribution<float> normal(0.0f, 1.0f);
    std::vector<float> u(kKvHeads * kDim);
    for (int64_t h = 0; h < kKvHeads; ++h) {
      double norm = 0;
      for (int64_t x = 0; x < kDim; ++x) norm += std::pow(u[h * kDim + x] = normal(rng), 2);
      for (int64_t x = 0; x < kDim; ++x) u[h * kDim + x] /= float(std::sqrt(norm));
    }
    BENCH_CHECK(cudaMemcpy(u_dev, u.data(), u.size() * 4, cudaMemcpyHostToDevice));
    float inv_freq[kDim / 2];
    mp::cuda::RopeInvFreq(int(kDim), kTheta, inv_freq);
    BENCH_CHECK(cudaMemcpy(inv_freq_dev, inv_freq, sizeof(inv_freq), cudaMemcpyHostToDevice));
  }

  cudaEvent_t start, stop;
  BENCH_CHECK(cudaEventCreate(&start));
  BENCH_CHECK(cudaEventCreate(&stop));
  std::vector<std::string> lines;
  struct Row {
    std::string name;
    double dense, dca, sparse, estimate, select, index, attend, density, recall, computed_tflops;
  };
  std::vector<Row> rows;
  bool failed = false;

  for (const Case& c : cases) {
    const int64_t L = c.keys, query_begin = L - kChunk;
    const double m = mp::cpu::YarnTemperature(L, kL0);
    const float scale = float(m * m / std::sqrt(double(kDim)));
    const float a = pattern == "local" ? float(std::sqrt(locality / scale)) : 0.0f;
    FillCache<<<4096, 256>>>(k, v, table, L, u_dev, inv_freq_dev, a, seed * 1000003 + 11);
    FillQueries<<<2048, 256>>>(q, kChunk, u_dev, a, seed * 1000003 + L);
    BENCH_CHECK(cudaGetLastError());

    const mp::cuda::PagedPrefillAttentionArgs d = mp::bench::CausalPrefillArgs(
        q, k, v, table, out, kChunk, kHeads, kKvHeads, kDim, blocks, kBlock, L, scale);
    mp::cuda::DcaParams dca{kC, kChunkSize, kTheta};
    mp::cuda::PagedPrefillAttentionArgs dd = d;
    dd.lse = lse_dca;

    mp::cuda::VerticalSlashPrefillArgs s;
    s.q = q;
    s.kv = {k, v, table, blocks, kBlock, kKvHeads, kDim};
    s.out = out;
    s.lse = lse_sparse;
    s.num_queries = kChunk;
    s.q_heads = kHeads;
    s.query_begin = query_begin;
    s.chunk_size = kChunkSize;
    s.chunk_len = kC;
    s.rope_theta = kTheta;
    s.scale = scale;
    s.last_q = 64;
    int64_t ws_bytes = 0;
    for (const auto& b : layer_budgets) {
      s.budgets = b.data();
      const std::string why = mp::cuda::VerticalSlashPrefillUnsupported(s);
      if (!why.empty()) {
        std::fprintf(stderr, "sparse prefill: %s\n", why.c_str());
        return 1;
      }
      ws_bytes = std::max(ws_bytes, mp::cuda::VerticalSlashPrefillWorkspaceBytes(s));
    }
    void* ws = nullptr;
    BENCH_CHECK(cudaMalloc(&ws, ws_bytes));
    const int64_t pieces = mp::cuda::VerticalSlashPrefillNumPieces(s);
    std::vector<cudaEvent_t> events(pieces * mp::cuda::kVerticalSlashStageEvents);
    for (auto& e : events) BENCH_CHECK(cudaEventCreate(&e));

    // Warm-up, output checks, recall of the sparse result against the DCA kernel, density.
    BENCH_CHECK(mp::cuda::PagedPrefillAttention(d, nullptr));
    BENCH_CHECK(mp::cuda::PagedPrefillDcaAttention(dd, dca, nullptr));
    double recall = 0, attended = 0, causal = 0, computed_flops = 0;
    KeySharing sharing;
    for (const auto& b : layer_budgets) {
      s.budgets = b.data();
      BENCH_CHECK(cudaMemset(out, 0xFF, q_elems * 2));
      BENCH_CHECK(mp::cuda::VerticalSlashPrefill(s, ws, ws_bytes, nullptr));
      BENCH_CHECK(cudaMemset(bad, 0, sizeof(*bad)));
      mp::bench::CountNonFinite<<<1024, 256>>>(out, q_elems, bad);
      BENCH_CHECK(cudaMemset(recall_dev, 0, sizeof(double)));
      RecallSum<<<1024, 256>>>(lse_sparse, lse_dca, kHeads * kChunk, recall_dev);
      unsigned long long nonfinite = 0;
      double rsum = 0;
      BENCH_CHECK(cudaMemcpy(&nonfinite, bad, sizeof(nonfinite), cudaMemcpyDeviceToHost));
      BENCH_CHECK(cudaMemcpy(&rsum, recall_dev, sizeof(rsum), cudaMemcpyDeviceToHost));
      if (nonfinite != 0) {
        std::fprintf(stderr, "%s: %llu non-finite sparse outputs\n", c.name, nonfinite);
        failed = true;
      }
      recall += rsum / double(kHeads * kChunk) / layer_budgets.size();
      // Density and computed work, piece by piece (a one-piece run per piece).
      for (int64_t pi = 0; pi < pieces; ++pi) {
        mp::cuda::VerticalSlashPrefillArgs one = s;
        const mp::cuda::VerticalSlashPieceBuffers layout =
            mp::cuda::VerticalSlashPrefillPiece(s, ws, int(pi));
        one.query_begin = layout.piece_begin;
        one.num_queries = layout.piece_end - layout.piece_begin;
        one.q = q + (layout.piece_begin - query_begin) * kHeads * kDim;
        one.out = out + (layout.piece_begin - query_begin) * kHeads * kDim;
        one.lse = nullptr;
        BENCH_CHECK(mp::cuda::VerticalSlashPrefill(one, ws, ws_bytes, nullptr));
        const mp::cuda::VerticalSlashPieceBuffers pb = mp::cuda::VerticalSlashPrefillPiece(one, ws);
        const int64_t qn = pb.piece_end - pb.piece_begin, rbs = (qn + 63) / 64;
        std::vector<int64_t> keys_per_cta(kHeads * rbs, 0), attended_per_cta(kHeads * rbs, 0);
        for (int part = 0; part < 3; ++part) {
          if (pb.index[part].block_count == nullptr) continue;
          std::vector<int32_t> nb(kHeads * rbs), nc(kHeads * rbs);
          BENCH_CHECK(cudaMemcpy(nb.data(), pb.index[part].block_count, nb.size() * 4,
                                 cudaMemcpyDeviceToHost));
          BENCH_CHECK(cudaMemcpy(nc.data(), pb.index[part].column_count, nc.size() * 4,
                                 cudaMemcpyDeviceToHost));
          for (int64_t i = 0; i < kHeads * rbs; ++i) {
            keys_per_cta[i] += (nb[i] + 1) / 2 * 128 + (nc[i] + 127) / 128 * 128;
            attended_per_cta[i] += 64 * int64_t(nb[i]) + nc[i];
          }
        }
        CountKeySharing(pb, rbs, &sharing);
        for (int64_t i = 0; i < kHeads * rbs; ++i) {
          const int64_t rows_in = std::min<int64_t>(64, qn - (i % rbs) * 64);
          attended += double(attended_per_cta[i]) * rows_in / layer_budgets.size();
          computed_flops += 4.0 * kDim * 64 * double(keys_per_cta[i]) / layer_budgets.size();
        }
      }
    }
    for (int64_t i = 0; i < kChunk; ++i) causal += double(query_begin + i + 1) * kHeads;
    BENCH_CHECK(cudaDeviceSynchronize());

    // Timed rounds.
    std::vector<double> t_dense, t_dca, t_sparse, t_est, t_sel, t_idx, t_att;
    for (int r = 0; r < iters; ++r) {
      float ms = 0;
      BENCH_CHECK(cudaEventRecord(start));
      BENCH_CHECK(mp::cuda::PagedPrefillAttention(d, nullptr));
      BENCH_CHECK(cudaEventRecord(stop));
      BENCH_CHECK(cudaEventSynchronize(stop));
      BENCH_CHECK(cudaEventElapsedTime(&ms, start, stop));
      t_dense.push_back(ms);
      BENCH_CHECK(cudaEventRecord(start));
      BENCH_CHECK(mp::cuda::PagedPrefillDcaAttention(dd, dca, nullptr));
      BENCH_CHECK(cudaEventRecord(stop));
      BENCH_CHECK(cudaEventSynchronize(stop));
      BENCH_CHECK(cudaEventElapsedTime(&ms, start, stop));
      t_dca.push_back(ms);
      double total = 0, est = 0, sel = 0, idx = 0, att = 0;
      for (const auto& b : layer_budgets) {
        s.budgets = b.data();
        s.stage_events = events.data();
        BENCH_CHECK(cudaEventRecord(start));
        BENCH_CHECK(mp::cuda::VerticalSlashPrefill(s, ws, ws_bytes, nullptr));
        BENCH_CHECK(cudaEventRecord(stop));
        BENCH_CHECK(cudaEventSynchronize(stop));
        BENCH_CHECK(cudaEventElapsedTime(&ms, start, stop));
        s.stage_events = nullptr;
        total += ms;
        for (int64_t pi = 0; pi < pieces; ++pi) {
          cudaEvent_t* e = events.data() + pi * mp::cuda::kVerticalSlashStageEvents;
          float x;
          BENCH_CHECK(cudaEventElapsedTime(&x, e[0], e[1]));
          est += x;
          BENCH_CHECK(cudaEventElapsedTime(&x, e[2], e[3]));
          sel += x;
          BENCH_CHECK(cudaEventElapsedTime(&x, e[4], e[5]));
          idx += x;
          BENCH_CHECK(cudaEventElapsedTime(&x, e[6], e[7]));
          att += x;
        }
      }
      const double nl = double(layer_budgets.size());
      t_sparse.push_back(total / nl);
      t_est.push_back(est / nl);
      t_sel.push_back(sel / nl);
      t_idx.push_back(idx / nl);
      t_att.push_back(att / nl);
    }
    for (auto& e : events) BENCH_CHECK(cudaEventDestroy(e));
    BENCH_CHECK(cudaFree(ws));

    Row row{c.name,
            Median(t_dense),
            Median(t_dca),
            Median(t_sparse),
            Median(t_est),
            Median(t_sel),
            Median(t_idx),
            Median(t_att),
            attended / causal,
            recall,
            computed_flops / (Median(t_att) * 1e-3) / 1e12};
    rows.push_back(row);
    const double dense_flops =
        4.0 * kHeads * kDim * double(kChunk) * (double(query_begin) + kChunk / 2.0);
    char buf[4096];
    std::snprintf(
        buf, sizeof(buf),
        "{\"case\":\"%s\",\"keys\":%lld,\"chunk\":%lld,\"pieces\":%lld,\"pattern\":\"%s\","
        "\"budgets\":\"%s\",\"mean_vertical\":%.0f,\"mean_slash\":%.0f,\"dense_ms\":%.3f,"
        "\"dense_tflops\":%.1f,\"dca_ms\":%.3f,\"sparse_ms\":%.3f,\"estimate_ms\":%.3f,"
        "\"select_ms\":%.3f,\"index_ms\":%.3f,\"attend_ms\":%.3f,\"speedup_vs_dense\":%.2f,"
        "\"speedup_vs_dca\":%.2f,\"overhead_fraction\":%.4f,\"density\":%.5f,"
        "\"recall_vs_dca\":%.4f,\"attend_computed_tflops\":%.1f,\"workspace_gib\":%.3f,\"group_"
        "union_fraction\":%.4f,"
        "\"pair_union_fraction\":%.4f,\"rows_union_fraction\":%.4f,\"pair_tile_fraction\":%.4f,"
        "\"runs\":%d}",
        c.name, (long long)L, (long long)kChunk, (long long)pieces, pattern.c_str(),
        budget_source.c_str(), mean_v, mean_s, row.dense, dense_flops / (row.dense * 1e-3) / 1e12,
        row.dca, row.sparse, row.estimate, row.select, row.index, row.attend,
        row.dense / row.sparse, row.dca / row.sparse,
        (row.estimate + row.select + row.index) / row.sparse, row.density, row.recall,
        row.computed_tflops, double(ws_bytes) / (1024.0 * 1024.0 * 1024.0),
        sharing.group_union / std::max(sharing.sum, 1.0),
        sharing.pair_union / std::max(sharing.pair_sum, 1.0),
        sharing.rows_union / std::max(sharing.rows_sum, 1.0),
        sharing.rows_tiles_union / std::max(sharing.rows_tiles_sum, 1.0), iters);
    std::printf("%s\n", buf);
    std::fflush(stdout);
    lines.push_back(buf);
  }

  std::printf(
      "\n| keys | dense ms | DCA ms | sparse ms | estimate | select | index | attend |"
      " vs dense | vs DCA | overhead | density | recall | attend TFLOP/s |\n");
  std::printf(
      "|------|---------:|-------:|----------:|---------:|-------:|------:|-------:|"
      "---------:|-------:|---------:|--------:|-------:|---------------:|\n");
  for (const Row& r : rows) {
    std::printf(
        "| %s | %.1f | %.1f | %.2f | %.2f | %.2f | %.2f | %.2f | %.1fx | %.1fx | %.1f%% |"
        " %.2f%% | %.3f | %.0f |\n",
        r.name.c_str(), r.dense, r.dca, r.sparse, r.estimate, r.select, r.index, r.attend,
        r.dense / r.sparse, r.dca / r.sparse, 100.0 * (r.estimate + r.select + r.index) / r.sparse,
        100.0 * r.density, r.recall, r.computed_tflops);
  }
  for (const Row& r : rows) {
    if (r.name == "1m") {
      std::printf(
          "\ngoal at 1M: >= 10x vs dense: %s (%.1fx); estimate + select + index <= 10%%: "
          "%s (%.1f%%)\n",
          r.dense / r.sparse >= 10 ? "met" : "NOT met", r.dense / r.sparse,
          (r.estimate + r.select + r.index) <= 0.1 * r.sparse ? "met" : "NOT met",
          100.0 * (r.estimate + r.select + r.index) / r.sparse);
    }
  }
  if (!json_path.empty()) {
    FILE* f = std::fopen(json_path.c_str(), "w");
    if (f == nullptr) {
      std::fprintf(stderr, "cannot write %s\n", json_path.c_str());
      return 1;
    }
    for (const std::string& l : lines) std::fprintf(f, "%s\n", l.c_str());
    std::fclose(f);
  }
  return failed ? 1 : 0;
}
