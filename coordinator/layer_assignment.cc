#include "coordinator/layer_assignment.h"

#include <algorithm>
#include <limits>

#include "absl/strings/str_cat.h"

namespace mp {
namespace {

struct StageCosts {
  double layer = 0;  // one decoder layer
  double head = 0;   // LM head, one row
  int64_t layer_params = 0;
  int64_t embed_params = 0;
  int64_t head_params = 0;  // final norm + untied head (a tied head reuses the embedding)
  int64_t kv_per_token_per_layer = 0;
  int64_t reserve = 0;
};

StageCosts Costs(const ModelConfig& c, const AssignmentOptions& o) {
  StageCosts s;
  const int64_t h = c.hidden_size, q = c.q_dim(), kv = c.kv_dim(), inter = c.intermediate_size;
  const double tokens = static_cast<double>(o.chunk_tokens);
  const double proj = static_cast<double>(h * q + 2 * h * kv + q * h + 3 * h * inter);
  // Attention of a chunk over an average history of one chunk: QK^T and PV, c * (h + c/2) keys.
  const double attn = 2.0 * static_cast<double>(q) * (tokens + tokens / 2);
  s.layer = tokens * (proj + attn);
  s.head = static_cast<double>(c.vocab_size * h);
  s.layer_params = h * q + 2 * h * kv + q * h + 3 * h * inter + 2 * h;
  if (c.attention_bias) s.layer_params += q + 2 * kv;
  s.embed_params = c.vocab_size * h;
  s.head_params = h + (c.tie_word_embeddings ? 0 : c.vocab_size * h);
  s.kv_per_token_per_layer = 2 * kv * o.kv_bytes_per_element;
  // Executor scratch (x, h, q, k, v, attn, proj, gate_up, act) and the transfer buffers.
  s.reserve = o.chunk_tokens * o.weight_bytes_per_element *
              (4 * h + 2 * q + 2 * kv + 3 * inter + 2 * o.transfer_buffers * h);
  return s;
}

StageAssignment Stage(const ModelConfig& c, const AssignmentOptions& o, const StageCosts& k,
                      int64_t begin, int64_t end, uint64_t memory) {
  StageAssignment s;
  s.layers = {begin, end};
  const int64_t n = end - begin;
  const bool first = begin == 0, last = end == c.num_hidden_layers;
  s.cost = k.layer * static_cast<double>(n) + (last ? k.head : 0);
  int64_t params = k.layer_params * n;
  if (first) params += k.embed_params;
  if (last) params += k.head_params + (c.tie_word_embeddings && !first ? k.embed_params : 0);
  s.weight_bytes = params * o.weight_bytes_per_element;
  s.reserve_bytes = k.reserve + (last ? c.vocab_size * o.weight_bytes_per_element : 0);
  int64_t sparse = 0;
  for (int64_t l = begin; l < end && l < static_cast<int64_t>(o.sparse_workspace_per_layer.size());
       ++l) {
    sparse = std::max(sparse, o.sparse_workspace_per_layer[l]);
  }
  s.reserve_bytes += sparse;
  s.kv_bytes_per_token = k.kv_per_token_per_layer * n;
  if (memory == 0) {
    s.kv_tokens_fit = std::numeric_limits<int64_t>::max();
  } else {
    const int64_t left = static_cast<int64_t>(memory) - s.weight_bytes - s.reserve_bytes;
    s.kv_tokens_fit = left > 0 ? left / std::max<int64_t>(s.kv_bytes_per_token, 1) : 0;
  }
  return s;
}

}  // namespace

absl::StatusOr<Assignment> AssignLayers(const ModelConfig& config,
                                        const std::vector<uint64_t>& memory_bytes,
                                        const AssignmentOptions& options) {
  const int64_t layers = config.num_hidden_layers;
  const int64_t stages = static_cast<int64_t>(memory_bytes.size());
  if (stages == 0) return absl::FailedPreconditionError("layer assignment: no stages");
  if (stages > layers) {
    return absl::FailedPreconditionError(absl::StrCat("layer assignment: ", stages,
                                                      " stages for a model of ", layers,
                                                      " layers (each stage needs one)"));
  }
  const bool any_unknown =
      std::any_of(memory_bytes.begin(), memory_bytes.end(), [](uint64_t m) { return m == 0; });
  if (any_unknown && options.kv_tokens <= 0) {
    return absl::InvalidArgumentError(
        "layer assignment: a worker reports no memory size, so kv-tokens must be set");
  }
  const StageCosts k = Costs(config, options);
  const int64_t min_kv = std::max<int64_t>(options.min_kv_tokens, 1);

  // Two bottleneck dynamic programmes over (stages so far, layers so far): the smallest
  // achievable largest cost, then the largest KV budget among splits within that cost.
  // Each cell keeps its value and the cut that achieved it.
  struct Cell {
    bool ok = false;
    double value = 0;
    int64_t cut = 0;
  };
  using Table = std::vector<std::vector<Cell>>;
  auto stage_at = [&](int64_t s, int64_t begin, int64_t end) {
    return Stage(config, options, k, begin, end, memory_bytes[s]);
  };
  auto run = [&](bool minimise_cost, double cost_cap) {
    Table best(stages + 1, std::vector<Cell>(layers + 1));
    best[0][0] = {true, minimise_cost ? 0.0 : std::numeric_limits<double>::infinity(), 0};
    for (int64_t s = 1; s <= stages; ++s) {
      for (int64_t l = s; l <= layers - (stages - s); ++l) {
        Cell& cell = best[s][l];
        for (int64_t cut = s - 1; cut < l; ++cut) {
          const Cell& prev = best[s - 1][cut];
          if (!prev.ok) continue;
          const StageAssignment st = stage_at(s - 1, cut, l);
          if (st.kv_tokens_fit < min_kv) continue;
          if (!minimise_cost && st.cost > cost_cap) continue;
          const double value = minimise_cost
                                   ? std::max(prev.value, st.cost)
                                   : std::min(prev.value, static_cast<double>(st.kv_tokens_fit));
          const bool better = !cell.ok || (minimise_cost ? value < cell.value : value > cell.value);
          if (better) cell = {true, value, cut};
        }
      }
    }
    return best;
  };
  const Table by_cost = run(true, 0);
  Table best = by_cost;
  if (by_cost[stages][layers].ok) {
    const double cap = by_cost[stages][layers].value * (1 + 1e-12);
    best = run(false, cap);
  }
  if (!best[stages][layers].ok) {
    int64_t need = 0;
    for (int64_t s = 0; s < stages; ++s) {
      const StageAssignment even = Stage(config, options, k, s * layers / stages,
                                         (s + 1) * layers / stages, memory_bytes[s]);
      need =
          std::max(need, even.weight_bytes + even.reserve_bytes + even.kv_bytes_per_token * min_kv);
    }
    return absl::FailedPreconditionError(
        absl::StrCat("layer assignment: no split of ", layers, " layers over ", stages,
                     " stages leaves room for ", min_kv,
                     " tokens of KV on every stage (an even split needs "
                     "about ",
                     need, " bytes on a stage)"));
  }
  Assignment out;
  out.stages.resize(stages);
  int64_t l = layers;
  for (int64_t s = stages; s >= 1; --s) {
    const int64_t cut = best[s][l].cut;
    out.stages[s - 1] = stage_at(s - 1, cut, l);
    l = cut;
  }
  out.kv_tokens = std::numeric_limits<int64_t>::max();
  for (const StageAssignment& st : out.stages)
    out.kv_tokens = std::min(out.kv_tokens, st.kv_tokens_fit);
  if (options.kv_tokens > 0) out.kv_tokens = std::min(out.kv_tokens, options.kv_tokens);
  return out;
}

}  // namespace mp
