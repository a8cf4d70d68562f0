#include "model/sparse_refinement.h"

#include <algorithm>
#include <limits>
#include <string>

#include "absl/strings/str_cat.h"
#include "common/status.h"

namespace mp {
namespace {

double Aggregate(const HeadRecall& r, RecallAggregate how) {
  return how == RecallAggregate::kMean ? r.mean : r.p05;
}

absl::Status CheckOptions(const RefinementOptions& o) {
  if (!(o.target_recall > 0.0 && o.target_recall <= 1.0)) {
    return absl::InvalidArgumentError(
        absl::StrCat("target recall must be in (0, 1], got ", o.target_recall));
  }
  if (o.step <= 0) {
    return absl::InvalidArgumentError(absl::StrCat("budget step must be positive, got ", o.step));
  }
  if (o.max_vertical <= 0 || o.max_slash <= 0 || o.max_vertical > kMaxSparseBudget ||
      o.max_slash > kMaxSparseBudget) {
    return absl::InvalidArgumentError(absl::StrCat("budget caps must be in [1, ", kMaxSparseBudget,
                                                   "], got vertical ", o.max_vertical,
                                                   " and slash ", o.max_slash));
  }
  if (o.max_rounds < 0) {
    return absl::InvalidArgumentError(absl::StrCat("max rounds must be >= 0, got ", o.max_rounds));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<HeadRecall>> Measure(const LayerRecallFn& measure, int64_t layer,
                                                const std::vector<SparseHeadConfig>& heads) {
  absl::StatusOr<std::vector<HeadRecall>> r = measure(layer, heads);
  if (!r.ok()) return Annotate(r.status(), absl::StrCat("measuring recall of layer ", layer));
  if (r->size() != heads.size()) {
    return absl::InternalError(absl::StrCat("recall of layer ", layer, " has ", r->size(),
                                            " heads, expected ", heads.size()));
  }
  return r;
}

}  // namespace

std::vector<std::pair<int64_t, int64_t>> BaseSparseCandidates() {
  return {{1000, 6096}, {3500, 100}, {30, 800}, {500, 700}, {100, 800}, {100, 750}};
}

absl::StatusOr<RefinementResult> RefineSparseAttentionConfig(const SparseAttentionConfig& initial,
                                                             const LayerRecallFn& measure,
                                                             const RefinementOptions& options) {
  MP_RETURN_IF_ERROR(CheckOptions(options));
  if (initial.num_layers() == 0 || initial.num_heads() == 0) {
    return absl::InvalidArgumentError("the sparse attention config to refine is empty");
  }
  RefinementResult result;
  result.config = initial;
  for (int64_t l = 0; l < initial.num_layers(); ++l) {
    std::vector<SparseHeadConfig>& heads = result.config.layers[l];
    LayerRefinement report;
    MP_ASSIGN_OR_RETURN(std::vector<HeadRecall> recall, Measure(measure, l, heads));
    auto summarize = [&](double* mean, double* worst) {
      double sum = 0.0;
      *worst = std::numeric_limits<double>::infinity();
      for (const HeadRecall& r : recall) {
        const double x = Aggregate(r, options.aggregate);
        sum += x;
        *worst = std::min(*worst, x);
      }
      *mean = sum / static_cast<double>(recall.size());
    };
    summarize(&report.recall_before, &report.min_head_before);
    std::vector<bool> raised(heads.size(), false);
    for (int64_t round = 0; round < options.max_rounds; ++round) {
      bool changed = false;
      for (size_t h = 0; h < heads.size(); ++h) {
        if (Aggregate(recall[h], options.aggregate) >= options.target_recall) continue;
        SparseHeadConfig& c = heads[h];
        const int64_t v = std::min(c.vertical_size + options.step, options.max_vertical);
        const int64_t s = std::min(c.slash_size + options.step, options.max_slash);
        if (v <= c.vertical_size && s <= c.slash_size) continue;  // at the caps
        c.vertical_size = std::max(v, c.vertical_size);
        c.slash_size = std::max(s, c.slash_size);
        raised[h] = true;
        changed = true;
      }
      if (!changed) break;
      MP_ASSIGN_OR_RETURN(recall, Measure(measure, l, heads));
      ++report.rounds;
    }
    summarize(&report.recall_after, &report.min_head_after);
    for (size_t h = 0; h < heads.size(); ++h) {
      heads[h].score = Aggregate(recall[h], options.aggregate);
      report.heads_raised += raised[h];
      report.heads_below_target += heads[h].score < options.target_recall;
    }
    result.layers.push_back(report);
  }
  return result;
}

absl::StatusOr<SparseAttentionConfig> SearchInitialSparseAttentionConfig(
    int64_t num_layers, int64_t num_heads, const LayerRecallFn& measure,
    const RefinementOptions& options, std::vector<std::pair<int64_t, int64_t>> candidates) {
  MP_RETURN_IF_ERROR(CheckOptions(options));
  if (num_layers <= 0 || num_heads <= 0) {
    return absl::InvalidArgumentError(absl::StrCat("model shape must be positive, got ",
                                                   num_layers, " layers and ", num_heads,
                                                   " heads"));
  }
  if (candidates.empty()) return absl::InvalidArgumentError("no candidate budgets to search");
  for (const auto& [v, s] : candidates) {
    if (v <= 0 || s <= 0 || v > kMaxSparseBudget || s > kMaxSparseBudget) {
      return absl::InvalidArgumentError(
          absl::StrCat("candidate budgets must be positive, got (", v, ", ", s, ")"));
    }
  }
  // Cheapest first (by the keys each query row keeps); the stable sort keeps the given order
  // among equal costs.
  auto cost = [](const std::pair<int64_t, int64_t>& c) {
    return SparseHeadConfig{c.first, c.second, 0.0}.effective_vertical_size() + c.second;
  };
  std::stable_sort(candidates.begin(), candidates.end(),
                   [&](const auto& a, const auto& b) { return cost(a) < cost(b); });
  SparseAttentionConfig config;
  config.layers.resize(static_cast<size_t>(num_layers));
  for (int64_t l = 0; l < num_layers; ++l) {
    std::vector<SparseHeadConfig> chosen(static_cast<size_t>(num_heads));
    std::vector<bool> done(static_cast<size_t>(num_heads), false);
    std::vector<double> best(static_cast<size_t>(num_heads), -1.0);
    for (const auto& [v, s] : candidates) {
      std::vector<SparseHeadConfig> trial(static_cast<size_t>(num_heads), {v, s, 0.0});
      MP_ASSIGN_OR_RETURN(std::vector<HeadRecall> recall, Measure(measure, l, trial));
      for (int64_t h = 0; h < num_heads; ++h) {
        if (done[h]) continue;
        const double x = Aggregate(recall[h], options.aggregate);
        if (x > best[h]) {
          best[h] = x;
          chosen[h] = {v, s, x};
        }
        if (x >= options.target_recall) {
          chosen[h] = {v, s, x};
          done[h] = true;
        }
      }
      if (std::all_of(done.begin(), done.end(), [](bool b) { return b; })) break;
    }
    config.layers[l] = std::move(chosen);
  }
  return config;
}

}  // namespace mp
