// Vertical-slash sparse prefill through the Backend and the stage executor (CPU):
//   * Backend::VerticalSlashAttention on the CPU backend: the argument checks, the call of the
//     reference procedure (kernels/cpu/vertical_slash_prefill.h) with scale * temperature^2,
//     full budgets equal to DcaAttention / Attention (qwen1m-spec.md §9.6), small budgets that
//     differ from dense, and the UNIMPLEMENTED default of backends without it;
//   * the executor's gate (§3.3, §9.7): prompts at or below the threshold are bit-identical to
//     the dense executor, longer prompts run the sparse op in every prompt chunk of every layer
//     (counted through a forwarding backend) with the layer's budgets, decode stays dense, full
//     budgets reproduce the dense logits, and a head config of the wrong shape is rejected.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "common/status_matchers.h"
#include "kernels/cpu/attention.h"
#include "kernels/cpu/vertical_slash_prefill.h"
#include "model/sparse_attention_config.h"
#include "runtime/backend.h"
#include "runtime/stage_executor.h"
#include "tests/unit/runtime/forwarding_backend.h"
#include "tests/unit/runtime/sparse_test_util.h"
#include "tests/unit/runtime/tiny_model.h"

namespace mp {
namespace {

using ::absl::StatusCode;
using testing::EffectiveBudgets;
using testing::HeadConfig;
using testing::HostIds;
using testing::RandomIds;
using testing::RowRelativeError;
using testing::Settings;
using testing::TinyConfig;
using testing::TinyWeights;

Tensor RandomF32(std::vector<int64_t> shape, std::mt19937_64& rng) {
  Tensor t = Tensor::Host(std::move(shape), DType::kF32);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  for (int64_t i = 0; i < t.numel(); ++i) t.data_as<float>()[i] = normal(rng);
  return t;
}

Tensor I32(const std::vector<int32_t>& values) {
  Tensor t = Tensor::Host({static_cast<int64_t>(values.size())}, DType::kI32);
  std::memcpy(t.data(), values.data(), values.size() * sizeof(int32_t));
  return t;
}

double MaxAbs(const Tensor& a) {
  double m = 0;
  for (int64_t i = 0; i < a.numel(); ++i) m = std::max(m, double(std::fabs(a.data_as<float>()[i])));
  return m;
}
double MaxAbsDiff(const Tensor& a, const Tensor& b) {
  double m = 0;
  for (int64_t i = 0; i < a.numel(); ++i) {
    m = std::max(m, double(std::fabs(a.data_as<float>()[i] - b.data_as<float>()[i])));
  }
  return m;
}

// A paged cache of `len` tokens: K rotated by j mod C (j without DCA) through the backend.
struct Cache {
  Tensor k, v, table;
  int64_t block_size;
  KvLayerView View() const { return KvLayerView{k, v, table, block_size}; }
};

Cache MakeCache(Backend& backend, int64_t len, int64_t kv_heads, int64_t hd, int64_t bs,
                int64_t chunk_len, double theta, std::mt19937_64& rng) {
  const int64_t blocks = (len + bs - 1) / bs;
  Cache c;
  c.block_size = bs;
  c.k = *backend.Allocate({blocks + 2, kv_heads, bs, hd}, DType::kF32);
  c.v = *backend.Allocate({blocks + 2, kv_heads, bs, hd}, DType::kF32);
  std::vector<int32_t> table(blocks);
  for (int64_t i = 0; i < blocks; ++i) table[i] = static_cast<int32_t>((i * 5 + 1) % (blocks + 2));
  std::vector<int32_t> seen(blocks + 2, 0);
  for (int32_t b : table) EXPECT_EQ(seen[b]++, 0) << "table must be a permutation";
  c.table = I32(table);
  Tensor k = RandomF32({len, kv_heads, hd}, rng);
  Tensor v = RandomF32({len, kv_heads, hd}, rng);
  std::vector<int32_t> pos(len);
  for (int64_t j = 0; j < len; ++j)
    pos[j] = static_cast<int32_t>(chunk_len > 0 ? j % chunk_len : j);
  EXPECT_TRUE(backend.Rope(k, I32(pos), theta).ok());
  EXPECT_TRUE(backend.WriteKv(k, v, 0, c.View()).ok());
  return c;
}

class CpuSparseOpTest : public ::testing::Test {
 protected:
  std::unique_ptr<Backend> backend_ = NewCpuBackend();
  std::mt19937_64 rng_{77};
};

// §9.6 on the backend: budgets >= the sequence length select every key, so the sparse op equals
// DcaAttention (several DCA chunks, YaRN temperature, a run that starts mid-chunk), and small
// budgets give a different result.
TEST_F(CpuSparseOpTest, FullBudgetEqualsDcaAttentionAndSmallBudgetsDiffer) {
  const int64_t kv_heads = 2, q_heads = 6, hd = 16, bs = 16, S = 160, W = 32, C = S - W;
  const double theta = 10000.0;
  const int64_t len = 3 * C + 40;
  const Cache cache = MakeCache(*backend_, len, kv_heads, hd, bs, C, theta, rng_);
  for (const auto& [query_begin, n] :
       std::vector<std::pair<int64_t, int64_t>>{{0, len}, {C - 20, 2 * C + 60}, {len - 1, 1}}) {
    SCOPED_TRACE(::testing::Message() << "query_begin " << query_begin << " n " << n);
    Tensor q = RandomF32({n, q_heads, hd}, rng_);
    Tensor dense = *backend_->Allocate({n, q_heads, hd}, DType::kF32);
    Tensor dense_lse = *backend_->Allocate({q_heads, n}, DType::kF32);
    DcaAttentionParams d;
    d.q = &q;
    d.kv = cache.View();
    d.query_begin = query_begin;
    d.chunk_size = S;
    d.chunk_len = C;
    d.rope_theta = theta;
    d.scale = 0.25f;
    d.temperature = 1.2f;
    d.out = &dense;
    d.lse = &dense_lse;
    MP_ASSERT_OK(backend_->DcaAttention(d));

    Tensor out = *backend_->Allocate({n, q_heads, hd}, DType::kF32);
    Tensor lse = *backend_->Allocate({q_heads, n}, DType::kF32);
    VerticalSlashAttentionParams p;
    p.q = &q;
    p.kv = cache.View();
    p.query_begin = query_begin;
    p.chunk_size = S;
    p.chunk_len = C;
    p.rope_theta = theta;
    p.scale = 0.25f;
    p.temperature = 1.2f;
    p.last_q = 64;
    const std::vector<int64_t> full(2 * q_heads, len);
    p.budgets = full;
    p.out = &out;
    p.lse = &lse;
    MP_ASSERT_OK(backend_->VerticalSlashAttention(p));
    EXPECT_LE(MaxAbsDiff(out, dense), 2e-5 * MaxAbs(dense));
    EXPECT_LE(MaxAbsDiff(lse, dense_lse), 2e-5 * MaxAbs(dense_lse));

    // The op is the reference procedure with the logit scale scale * m^2.
    cpu::VerticalSlashPrefillShape shape;
    shape.num_queries = n;
    shape.q_heads = q_heads;
    shape.query_begin = query_begin;
    shape.chunk_size = S;
    shape.chunk_len = C;
    shape.rope_theta = theta;
    shape.scale = 0.25f * 1.2f * 1.2f;
    shape.last_q = 64;
    std::vector<int64_t> small;
    for (int64_t h = 0; h < q_heads; ++h) {
      small.push_back(h % 2 == 0 ? 30 : 31);  // 30 runs as 130 upstream: here already effective
      small.push_back(100 + 8 * h);
    }
    p.budgets = small;
    MP_ASSERT_OK(backend_->VerticalSlashAttention(p));
    std::vector<float> want(n * q_heads * hd), want_lse(q_heads * n);
    const Tensor& kc = cache.k;
    cpu::PagedKvView view{kc.data_as<const float>(),
                          cache.v.data_as<const float>(),
                          cache.table.data_as<const int32_t>(),
                          bs,
                          kv_heads,
                          hd};
    cpu::VerticalSlashPrefillAttention(q.data_as<const float>(), view, shape, small.data(),
                                       want.data(), want_lse.data());
    EXPECT_EQ(0, std::memcmp(out.data(), want.data(), want.size() * sizeof(float)));
    EXPECT_EQ(0, std::memcmp(lse.data(), want_lse.data(), want_lse.size() * sizeof(float)));
    if (n > 300) {
      EXPECT_GT(MaxAbsDiff(out, dense), 1e-3 * MaxAbs(dense)) << "small budgets drop keys";
    }
  }
}

// Without DCA (chunk_size 0) the full-budget op equals causal attention with Q rotated at the
// absolute positions.
TEST_F(CpuSparseOpTest, FullBudgetWithoutDcaEqualsAttention) {
  const int64_t kv_heads = 1, q_heads = 3, hd = 8, bs = 8, len = 150, query_begin = 37;
  const int64_t n = len - query_begin;
  const Cache cache = MakeCache(*backend_, len, kv_heads, hd, bs, 0, 500.0, rng_);
  Tensor q = RandomF32({n, q_heads, hd}, rng_);
  Tensor q_rot = Tensor::Host({n, q_heads, hd}, DType::kF32);
  std::memcpy(q_rot.data(), q.data(), q.nbytes());
  std::vector<int32_t> pos(n);
  for (int64_t i = 0; i < n; ++i) pos[i] = static_cast<int32_t>(query_begin + i);
  MP_ASSERT_OK(backend_->Rope(q_rot, I32(pos), 500.0));
  Tensor dense = *backend_->Allocate({n, q_heads, hd}, DType::kF32);
  AttentionParams a;
  a.q = &q_rot;
  a.kv = cache.View();
  a.key_begin = 0;
  a.key_end = len;
  a.causal = true;
  a.scale = 0.3f;
  a.out = &dense;
  MP_ASSERT_OK(backend_->Attention(a));
  Tensor out = *backend_->Allocate({n, q_heads, hd}, DType::kF32);
  VerticalSlashAttentionParams p;
  p.q = &q;
  p.kv = cache.View();
  p.query_begin = query_begin;
  p.rope_theta = 500.0;
  p.scale = 0.3f;
  const std::vector<int64_t> full(2 * q_heads, 1000);
  p.budgets = full;
  p.out = &out;
  MP_ASSERT_OK(backend_->VerticalSlashAttention(p));
  EXPECT_LE(MaxAbsDiff(out, dense), 2e-5 * MaxAbs(dense));
}

TEST_F(CpuSparseOpTest, RejectsBadArguments) {
  const int64_t kv_heads = 2, q_heads = 4, hd = 8, bs = 8, len = 40;
  const Cache cache = MakeCache(*backend_, len, kv_heads, hd, bs, 32, 100.0, rng_);
  Tensor q = RandomF32({len, q_heads, hd}, rng_);
  Tensor out = *backend_->Allocate({len, q_heads, hd}, DType::kF32);
  const std::vector<int64_t> budgets(2 * q_heads, 200);
  VerticalSlashAttentionParams good;
  good.q = &q;
  good.kv = cache.View();
  good.chunk_size = 40;
  good.chunk_len = 32;
  good.rope_theta = 100.0;
  good.scale = 0.5f;
  good.budgets = budgets;
  good.out = &out;
  MP_EXPECT_OK(backend_->VerticalSlashAttention(good));

  VerticalSlashAttentionParams p = good;
  p.q = nullptr;
  MP_EXPECT_ERROR(backend_->VerticalSlashAttention(p), StatusCode::kInvalidArgument, "q and out");
  p = good;
  const std::vector<int64_t> short_budgets(2 * q_heads - 1, 200);
  p.budgets = short_budgets;
  MP_EXPECT_ERROR(backend_->VerticalSlashAttention(p), StatusCode::kInvalidArgument,
                  "budgets hold 7 values, expected 2 x 4");
  p = good;
  std::vector<int64_t> zero = budgets;
  zero[3] = 0;
  p.budgets = zero;
  MP_EXPECT_ERROR(backend_->VerticalSlashAttention(p), StatusCode::kInvalidArgument,
                  "slash budget of head 1");
  p = good;
  p.last_q = 65;
  MP_EXPECT_ERROR(backend_->VerticalSlashAttention(p), StatusCode::kInvalidArgument,
                  "last_q must be in [1, 64]");
  p = good;
  p.chunk_len = 48;
  MP_EXPECT_ERROR(backend_->VerticalSlashAttention(p), StatusCode::kInvalidArgument,
                  "chunk_len (48) and chunk_size (40)");
  p = good;
  p.chunk_len = 36;  // not a multiple of the block size 8
  MP_EXPECT_ERROR(backend_->VerticalSlashAttention(p), StatusCode::kInvalidArgument,
                  "block size 8 must divide");
  p = good;
  p.temperature = 0.0f;
  MP_EXPECT_ERROR(backend_->VerticalSlashAttention(p), StatusCode::kInvalidArgument,
                  "temperature must be positive");
  p = good;
  Tensor lse = Tensor::Host({q_heads, len + 1}, DType::kF32);
  p.lse = &lse;
  MP_EXPECT_ERROR(backend_->VerticalSlashAttention(p), StatusCode::kInvalidArgument, "lse");
  p = good;
  p.query_begin = 1;  // keys [0, 41) are not all in the 40-token table
  MP_EXPECT_ERROR(backend_->VerticalSlashAttention(p), StatusCode::kInvalidArgument, "");
  p = good;
  Tensor q3 = RandomF32({len, 3, hd}, rng_);
  Tensor out3 = *backend_->Allocate({len, 3, hd}, DType::kF32);
  const std::vector<int64_t> budgets3(6, 200);
  p.q = &q3;
  p.out = &out3;
  p.budgets = budgets3;
  MP_EXPECT_ERROR(backend_->VerticalSlashAttention(p), StatusCode::kInvalidArgument,
                  "not a multiple of the cache's 2 kv heads");
}

// Forwards every op to the CPU backend and counts the attention calls. With `sparse` false it
// keeps the default VerticalSlashAttention (UNIMPLEMENTED).
class CountingBackend final : public ForwardingBackend {
 public:
  explicit CountingBackend(bool sparse = true) : ForwardingBackend("counting"), sparse_(sparse) {}
  int attention = 0, dca = 0, sparse = 0;
  std::vector<std::vector<int64_t>> budgets_seen;

  absl::Status Attention(const AttentionParams& params) override {
    ++attention;
    return inner().Attention(params);
  }
  absl::Status DcaAttention(const DcaAttentionParams& params) override {
    ++dca;
    return inner().DcaAttention(params);
  }
  absl::Status VerticalSlashAttention(const VerticalSlashAttentionParams& params) override {
    if (!sparse_) return Backend::VerticalSlashAttention(params);
    ++sparse;
    budgets_seen.emplace_back(params.budgets.begin(), params.budgets.end());
    return inner().VerticalSlashAttention(params);
  }

 private:
  bool sparse_;
};

TEST(BackendDefaultsTest, VerticalSlashAttentionIsUnimplementedUnlessOverridden) {
  CountingBackend backend(/*sparse=*/false);
  MP_EXPECT_ERROR(backend.VerticalSlashAttention(VerticalSlashAttentionParams{}),
                  StatusCode::kUnimplemented, "not implemented on the counting backend");
}

// ---- the stage executor --------------------------------------------------------------------

StageExecutorOptions Options(std::shared_ptr<const SparsePrefillSettings> sparse = nullptr) {
  StageExecutorOptions o;
  o.kv_cache.block_size = 16;
  o.kv_cache.max_tokens = 2048;
  o.sparse = std::move(sparse);
  return o;
}

// All-row logits of `ids` prefilled in chunks of `chunk` (prompt_len = ids.size()), then
// one-token decode steps for the ids after the prompt.
std::vector<float> RunIds(StageExecutor& ex, const std::vector<int32_t>& ids, int64_t prompt_len,
                          int64_t chunk) {
  std::vector<float> logits;
  for (int64_t s = 0; s < static_cast<int64_t>(ids.size());) {
    const int64_t n = s < prompt_len ? std::min(chunk, prompt_len - s) : 1;
    Tensor x = HostIds(std::span<const int32_t>(ids).subspan(s, n));
    absl::StatusOr<Tensor> out = ex.RunChunk(1, s, x, LogitsMode::kAllRows, prompt_len);
    EXPECT_TRUE(out.ok()) << out.status();
    if (!out.ok()) return {};
    absl::StatusOr<Tensor> host = ex.backend().ToHostF32(*out);
    logits.insert(logits.end(), host->data_as<float>(), host->data_as<float>() + host->numel());
    s += n;
  }
  return logits;
}

struct ExecutorCase {
  std::string name;
  bool dca;
};

class SparseExecutorTest : public ::testing::TestWithParam<ExecutorCase> {
 protected:
  // DCA: chunk_size 320, local 64 -> C = 256; L0 = 200 so that the temperature is active.
  ModelConfig Config() const {
    ModelConfig c = testing::TinyDcaConfig(2);
    if (!GetParam().dca) c.dual_chunk.reset();
    return c;
  }
  std::unique_ptr<StageExecutor> Make(const ModelConfig& config, const ModelWeights& weights,
                                      std::shared_ptr<Backend> backend,
                                      std::shared_ptr<const SparsePrefillSettings> sparse) {
    absl::StatusOr<std::unique_ptr<StageExecutor>> ex =
        StageExecutor::Create(config, weights, std::move(backend), Options(std::move(sparse)));
    EXPECT_TRUE(ex.ok()) << ex.status();
    return ex.ok() ? *std::move(ex) : nullptr;
  }
};

TEST_P(SparseExecutorTest, AtOrBelowTheThresholdPrefillIsBitIdenticalToDense) {
  const ModelConfig config = Config();
  const ModelWeights weights = TinyWeights(config, 5);
  const int64_t L = 300;
  const std::vector<int32_t> ids = RandomIds(L + 3, config.vocab_size, 6);
  auto dense = Make(config, weights, NewCpuBackend(), nullptr);
  const std::vector<float> want = RunIds(*dense, ids, L, 128);
  for (int64_t threshold : {L, L + 1, int64_t{100000}}) {
    auto counting = std::make_shared<CountingBackend>();
    auto ex = Make(config, weights, counting, Settings(HeadConfig(2, 4, 40, 100), threshold));
    const std::vector<float> got = RunIds(*ex, ids, L, 128);
    ASSERT_EQ(got.size(), want.size());
    EXPECT_EQ(0, std::memcmp(got.data(), want.data(), got.size() * sizeof(float)))
        << "threshold " << threshold;
    EXPECT_EQ(counting->sparse, 0);
  }
}

TEST_P(SparseExecutorTest, AboveTheThresholdPromptChunksRunSparseAndDecodeStaysDense) {
  const ModelConfig config = Config();
  const ModelWeights weights = TinyWeights(config, 7);
  const int64_t L = 600, chunk = 200, decode = 3, vocab = config.vocab_size;
  const std::vector<int32_t> ids = RandomIds(L + decode, vocab, 8);
  auto dense_backend = std::make_shared<CountingBackend>();
  auto dense = Make(config, weights, dense_backend, nullptr);
  const std::vector<float> want = RunIds(*dense, ids, L, chunk);

  // Small budgets: the sparse op runs in each of the 3 prompt chunks of both layers with the
  // layer's budgets; the decode steps use the dense / DCA op.
  const SparseAttentionConfig heads = HeadConfig(2, 4, 40, 100);
  auto counting = std::make_shared<CountingBackend>();
  auto ex = Make(config, weights, counting, Settings(heads, L - 1));
  const std::vector<float> got = RunIds(*ex, ids, L, chunk);
  EXPECT_EQ(counting->sparse, 3 * 2);
  const int dense_ops = counting->attention + counting->dca;
  EXPECT_EQ(dense_ops, decode * 2);
  ASSERT_EQ(counting->budgets_seen.size(), 6u);
  for (int64_t layer = 0; layer < 2; ++layer) {
    EXPECT_EQ(counting->budgets_seen[layer], EffectiveBudgets(heads, layer)) << "layer " << layer;
  }
  EXPECT_EQ(counting->budgets_seen[0][0], 130) << "vertical_size 30 runs as 130";
  ASSERT_EQ(got.size(), want.size());
  double worst = 0.0;
  for (int64_t r = 0; r < L; ++r) {
    worst = std::max(worst, RowRelativeError(&got[r * vocab], &want[r * vocab], vocab));
  }
  EXPECT_GT(worst, 1e-4) << "small budgets must change some prompt rows";

  // Full budgets: the same logits as dense, prefill and decode.
  auto full = Make(config, weights, NewCpuBackend(), Settings(HeadConfig(2, 4, 4096, 4096), L - 1));
  const std::vector<float> got_full = RunIds(*full, ids, L, chunk);
  ASSERT_EQ(got_full.size(), want.size());
  for (size_t r = 0; r < want.size() / vocab; ++r) {
    ASSERT_LE(RowRelativeError(&got_full[r * vocab], &want[r * vocab], vocab), 1e-4) << "row " << r;
  }
}

INSTANTIATE_TEST_SUITE_P(Models, SparseExecutorTest,
                         ::testing::Values(ExecutorCase{"dca", true}, ExecutorCase{"plain", false}),
                         [](const ::testing::TestParamInfo<ExecutorCase>& info) {
                           return info.param.name;
                         });

TEST(SparseExecutorConfigTest, RejectsAHeadConfigOfTheWrongShape) {
  const ModelConfig config = TinyConfig({.layers = 2, .heads = 4, .kv_heads = 2});
  const ModelWeights weights = TinyWeights(config, 9);
  for (const auto& [layers, heads] : std::vector<std::pair<int64_t, int64_t>>{{3, 4}, {2, 8}}) {
    MP_EXPECT_ERROR(StageExecutor::Create(config, weights, NewCpuBackend(),
                                          Options(Settings(HeadConfig(layers, heads, 40, 100), 10)))
                        .status(),
                    StatusCode::kInvalidArgument, "sparse attention config has");
  }
}

}  // namespace
}  // namespace mp
