// GPU test of every candidate configuration of the sm_90a prefill attention kernel
// (bench/cuda/prefill_variants.h) against the double-precision references of
// attention_reference.h, on random inputs: dense entries on plain attention cases (GQA, tiles
// cut by key_begin / key_end, rows without keys, head_dim 64, non-causal; for 2-CTA clusters
// also odd work-item counts and pairs whose key ranges differ, one of them empty), dca entries
// on DCA cases (1 to 5 DCA chunks, chunk boundaries inside key tiles, the Qwen constants); both
// also with keys scaled up in earlier tiles, so that logits jump far above the running max late
// in the key walk (the rare paths of the lazy running max). Each entry must also give the same
// output as its library baseline on the first cases. A candidate becomes a default only with
// this test passing. Needs an sm_90 GPU (label gpu); fails without one.
#include <cuda_bf16.h>
#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "bench/cuda/prefill_variants.h"
#include "kernels/cuda/paged_prefill_attention.h"
#include "kernels/cuda/paged_prefill_dca_attention.h"
#include "tests/gpu/attention_reference.h"
#include "tests/gpu/kernel_test_util.h"
#include "tests/gpu/prefill_test_util.h"

namespace mp::cuda {
namespace {

using bench::PrefillVariant;
using testing::Bf;
using Case = testing::PrefillCase;

const PrefillVariant* Find(const char* name) {
  int count = 0;
  const PrefillVariant* list = bench::PrefillVariants(&count);
  for (int i = 0; i < count; ++i) {
    if (std::string(list[i].name) == name) return &list[i];
  }
  return nullptr;
}

// A candidate as testing::RunPrefill's `kernel`.
struct VariantKernel {
  const PrefillVariant& v;
  DcaParams dca;
  std::string Unsupported(const PagedPrefillAttentionArgs& a) const {
    return v.dca ? PagedPrefillDcaAttentionUnsupported(a, dca)
                 : PagedPrefillAttentionUnsupported(a);
  }
  cudaError_t Launch(const PagedPrefillAttentionArgs& a) const { return v.launch(a, dca, nullptr); }
};

class PrefillVariantTest : public ::testing::TestWithParam<int> {
 protected:
  const PrefillVariant& variant() const {
    int count = 0;
    return bench::PrefillVariants(&count)[GetParam()];
  }

  // Checks the variant against the reference and, with `vs_baseline`, against its baseline's
  // output (equal up to the summation order of the softmax: |d| <= 1e-2).
  void Check(const Case& c, bool vs_baseline) {
    ASSERT_TRUE(testing::HaveSm90Gpu()) << "needs an sm_90 GPU (H100/H200)";
    const PrefillVariant& v = variant();
    const testing::PagedCache cache = testing::MakeCaseCache(c);
    testing::DevicePagedCache dcache(cache);
    MP_CUDA_ASSERT(dcache.Upload());
    const std::vector<__nv_bfloat16> q = testing::MakeCaseQueries(c);
    const testing::ReferenceProblem pr = testing::MakeReferenceProblem(c, cache, q);
    std::vector<double> ref_out, ref_lse;
    if (v.dca) {
      testing::DcaReference(pr, c.dca, &ref_out, &ref_lse);
    } else {
      testing::PlainReference(pr, c.causal, &ref_out, &ref_lse);
    }
    testing::PrefillOutputs got;
    testing::RunPrefill(VariantKernel{v, c.dca}, dcache, q, c, &got);
    if (HasFatalFailure()) return;
    const std::string what = std::string(v.name) + " " + testing::Describe(c, v.dca);
    // DCA kernels round the rotated Q to bf16 for the tensor cores (the reference rotates in
    // double), so their logit error grows with the logits: keys scaled x60 give logits of
    // ~100-200 and LSE errors ~1e-2. Dense kernels keep the usual bound.
    double spike = 1.0;
    for (const testing::KeySpike& k : c.spikes) spike = std::max(spike, double(k.scale));
    const double lse_tolerance = v.dca ? 1e-2 * std::max(1.0, spike / 30.0) : 1e-2;
    testing::ExpectPrefillNear(ref_out, ref_lse, got, c, what, lse_tolerance);
    if (!vs_baseline || std::string(v.name) == v.baseline) return;
    const PrefillVariant* base = Find(v.baseline);
    ASSERT_NE(base, nullptr) << v.baseline;
    testing::PrefillOutputs want;
    testing::RunPrefill(VariantKernel{*base, c.dca}, dcache, q, c, &want);
    if (HasFatalFailure()) return;
    double worst = 0, worst_lse = 0;
    for (size_t i = 0; i < got.out.size(); ++i) {
      worst = std::max(worst, double(std::fabs(Bf(got.out[i]) - Bf(want.out[i]))));
    }
    for (size_t i = 0; i < got.lse.size(); ++i) {
      if (std::isinf(got.lse[i]) && got.lse[i] == want.lse[i]) continue;
      worst_lse = std::max(worst_lse, double(std::fabs(got.lse[i] - want.lse[i])));
    }
    EXPECT_LE(worst, 1e-2) << what << ": output differs from " << v.baseline;
    EXPECT_LE(worst_lse, 1e-4) << what << ": lse differs from " << v.baseline;
    std::printf("[ stats    ] %s vs %s: max |dout| %.2e, max |dlse| %.2e\n", what.c_str(),
                v.baseline, worst, worst_lse);
  }
};

TEST_P(PrefillVariantTest, Cases) {
  if (variant().dca) {
    // 1 to 4 DCA chunks in one shot (C = 192: key tiles [128, 256) and [512, 640) hold a
    // boundary and are visited twice).
    Check({.num_queries = 600, .key_end = 600, .seed = 12}, true);
    // Query tiles crossing p = 576 after 400 cached keys.
    Check({.num_queries = 300, .key_end = 700, .block_size = 128, .seed = 14}, false);
    // key_begin inside a tile; a GQA group of 3 (2-CTA pairs of different query tiles).
    Check({.q_heads = 9, .kv_heads = 3, .num_queries = 200, .key_begin = 130, .key_end = 650,
           .seed = 16},
          false);
    Check({.q_heads = 9, .kv_heads = 3, .num_queries = 500, .key_end = 900, .key_std = 3.0f,
           .seed = 17},
          true);
    // C a multiple of 128 (no tile visited twice), head_dim 64.
    Check({.head_dim = 64, .q_heads = 9, .kv_heads = 3, .num_queries = 1100, .key_end = 1100,
           .block_size = 128,
           .dca = {.chunk_len = 256, .chunk_size = 320, .rope_theta = 500000.0}, .seed = 18},
          true);
    // C = 64: every key tile holds a boundary, a query tile spans 2-3 DCA chunks.
    Check({.q_heads = 4, .kv_heads = 2, .num_queries = 333, .key_end = 500,
           .dca = {.chunk_len = 64, .chunk_size = 96, .rope_theta = 10000.0}, .seed = 19},
          false);
    // Rows before key 0 (no keys), 5 DCA chunks.
    Check({.q_heads = 4, .kv_heads = 2, .num_queries = 400, .key_end = 300, .seed = 21}, false);
    Check({.head_dim = 64, .num_queries = 450, .key_end = 777, .block_size = 192, .seed = 20},
          false);
    // Logit jumps when the walk reaches earlier keys: x6 (the running max moves by ~10 nats,
    // from the p themselves in the lazy-max kernels) and x60 (exp2 overflows against the old max:
    // S is recomputed there); tiles [0, 128) and [256, 384) are whole visits (C = 192).
    Check({.q_heads = 4, .kv_heads = 2, .num_queries = 600, .key_end = 600,
           .spikes = {{0, 64, 60.0f}, {256, 320, 6.0f}}, .seed = 23},
          false);
    Check({.head_dim = 64, .q_heads = 4, .kv_heads = 2, .num_queries = 300, .key_end = 900,
           .block_size = 128, .dca = {.chunk_len = 256, .chunk_size = 320, .rope_theta = 10000.0},
           .spikes = {{64, 128, 60.0f}, {384, 448, 6.0f}}, .seed = 24},
          false);
    // Qwen2.5-1M constants: succ region at the saturated position S, intra beyond.
    Check({.q_heads = 8, .kv_heads = 1, .num_queries = 128, .key_begin = 500000,
           .key_end = 520000,
           .dca = {.chunk_len = 253952, .chunk_size = 262144, .rope_theta = 1e7}, .seed = 22},
          false);
    return;
  }
  // GQA 28/4: 3 query tiles x 7 heads = 21 work items per KV head (odd; pairs across query
  // tiles).
  Check({.num_queries = 300, .key_end = 300, .seed = 11}, true);
  Check({.num_queries = 200, .key_end = 1000, .block_size = 128, .seed = 12}, true);
  Check({.q_heads = 4, .kv_heads = 2, .num_queries = 257, .key_begin = 130, .key_end = 700,
         .causal = false, .seed = 13},
        true);
  Check({.q_heads = 4, .kv_heads = 2, .num_queries = 190, .key_begin = 333, .key_end = 1111,
         .block_size = 192, .seed = 14},
        false);
  Check({.num_queries = 1, .key_end = 999, .seed = 15}, false);
  Check({.num_queries = 260, .key_end = 2000, .key_std = 4.0f, .seed = 17}, false);
  // Rows without keys: 9/3 heads, 4 query tiles; the pair (tile 1 head 2, tile 0 head 0) has
  // one CTA whose rows all see no key and one that sees some.
  Check({.q_heads = 9, .kv_heads = 3, .num_queries = 512, .key_end = 300, .seed = 19}, true);
  // 3 query tiles x 3 heads = 9 items per KV head: the last pair is one item and its copy.
  Check({.q_heads = 9, .kv_heads = 3, .num_queries = 333, .key_begin = 70, .key_end = 900,
         .seed = 20},
        false);
  Check({.head_dim = 64, .q_heads = 4, .kv_heads = 2, .num_queries = 333, .key_begin = 70,
         .key_end = 900, .seed = 22},
        false);
  Check({.head_dim = 64, .num_queries = 129, .key_end = 129, .block_size = 192, .causal = false,
         .seed = 23},
        false);
  Check({.head_dim = 64, .num_queries = 250, .key_end = 1300, .block_size = 128,
         .key_std = 3.0f, .seed = 24},
        false);
  // 127 cached keys: row 0 of query tile 0 sees no key of the first (masked) tile, then all of
  // the unmasked tile 0 (a row without a running max on an unmasked tile).
  Check({.num_queries = 300, .key_end = 427, .seed = 25}, true);
  // Logit jumps when the walk reaches earlier keys: x6 (the running max moves by ~10 nats, from
  // the p themselves in the lazy-max kernels) and x60 (exp2 overflows against the old max: S is
  // recomputed there); causal and not, head_dim 128 and 64, key_begin inside a tile.
  Check({.num_queries = 256, .key_end = 1280, .spikes = {{0, 64, 60.0f}, {384, 448, 6.0f}},
         .seed = 26},
        false);
  Check({.q_heads = 4, .kv_heads = 2, .num_queries = 200, .key_begin = 70, .key_end = 900,
         .causal = false, .spikes = {{128, 192, 60.0f}, {512, 640, 6.0f}}, .seed = 27},
        false);
  Check({.head_dim = 64, .q_heads = 4, .kv_heads = 2, .num_queries = 333, .key_end = 1100,
         .spikes = {{0, 128, 6.0f}, {256, 300, 60.0f}}, .seed = 28},
        false);
  Check({.head_dim = 64, .q_heads = 4, .kv_heads = 2, .num_queries = 129, .key_end = 700,
         .block_size = 128, .causal = false, .spikes = {{600, 640, 60.0f}}, .seed = 29},
        false);
}

int NumVariants() {
  int count = 0;
  bench::PrefillVariants(&count);
  return count;
}

std::string VariantName(const ::testing::TestParamInfo<int>& info) {
  int count = 0;
  std::string name = bench::PrefillVariants(&count)[info.param].name;
  std::replace(name.begin(), name.end(), '-', '_');
  return name;
}

INSTANTIATE_TEST_SUITE_P(Variants, PrefillVariantTest, ::testing::Range(0, NumVariants()),
                         VariantName);

}  // namespace
}  // namespace mp::cuda
