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

// The layer report's density (mean over the heads) and highest query recall of `recall`.
void SummarizeCost(const std::vector<HeadRecall>& recall, double* density, double* max_query) {
  double sum = 0.0;
  *max_query = 0.0;
  for (const HeadRecall& r : recall) {
    sum += r.density;
    *max_query = std::max(*max_query, r.max);
  }
  *density = recall.empty() ? 0.0 : sum / static_cast<double>(recall.size());
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
  if (o.steps_per_pass < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("steps per pass must be >= 1, got ", o.steps_per_pass));
  }
  return absl::OkStatus();
}

// One call of a ModelRecallFn, with its result checked against the shape of `sets`.
absl::StatusOr<ModelRecall> MeasureAll(const ModelRecallFn& measure, const BudgetSets& sets) {
  absl::StatusOr<ModelRecall> r = measure(sets);
  if (!r.ok()) return Annotate(r.status(), "measuring recall");
  if (r->size() != sets.size()) {
    return absl::InternalError(absl::StrCat("the recall measurement returned ", r->size(),
                                            " layers, expected ", sets.size()));
  }
  for (size_t l = 0; l < sets.size(); ++l) {
    if ((*r)[l].size() != sets[l].size()) {
      return absl::InternalError(absl::StrCat("recall of layer ", l, " has ", (*r)[l].size(),
                                              " budget sets, expected ", sets[l].size()));
    }
    for (size_t s = 0; s < sets[l].size(); ++s) {
      if ((*r)[l][s].size() != sets[l][s].size()) {
        return absl::InternalError(absl::StrCat("recall of layer ", l, " set ", s, " has ",
                                                (*r)[l][s].size(), " heads, expected ",
                                                sets[l][s].size()));
      }
    }
  }
  return r;
}

// `c` raised by `steps` steps (both budgets, each capped; never lowered).
SparseHeadConfig Raised(const SparseHeadConfig& c, int64_t steps, const RefinementOptions& o) {
  SparseHeadConfig r = c;
  r.vertical_size =
      std::max(c.vertical_size, std::min(c.vertical_size + steps * o.step, o.max_vertical));
  r.slash_size = std::max(c.slash_size, std::min(c.slash_size + steps * o.step, o.max_slash));
  return r;
}

bool AtCaps(const SparseHeadConfig& c, const RefinementOptions& o) {
  return c.vertical_size >= o.max_vertical && c.slash_size >= o.max_slash;
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

absl::Status CheckCandidates(int64_t num_layers, int64_t num_heads,
                             const std::vector<std::pair<int64_t, int64_t>>& candidates) {
  if (num_layers <= 0 || num_heads <= 0) {
    return absl::InvalidArgumentError(absl::StrCat("model shape must be positive, got ", num_layers,
                                                   " layers and ", num_heads, " heads"));
  }
  if (candidates.empty()) return absl::InvalidArgumentError("no candidate budgets to search");
  for (const auto& [v, s] : candidates) {
    if (v <= 0 || s <= 0 || v > kMaxSparseBudget || s > kMaxSparseBudget) {
      return absl::InvalidArgumentError(
          absl::StrCat("candidate budgets must be positive, got (", v, ", ", s, ")"));
    }
  }
  return absl::OkStatus();
}

// Cheapest first (by the keys each query row keeps); the stable sort keeps the given order
// among equal costs.
void SortByCost(std::vector<std::pair<int64_t, int64_t>>& candidates) {
  auto cost = [](const std::pair<int64_t, int64_t>& c) {
    return SparseHeadConfig{c.first, c.second, 0.0}.effective_vertical_size() + c.second;
  };
  std::stable_sort(candidates.begin(), candidates.end(),
                   [&](const auto& a, const auto& b) { return cost(a) < cost(b); });
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
    SummarizeCost(recall, &report.density_before, &report.max_query_before);
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
    SummarizeCost(recall, &report.density_after, &report.max_query_after);
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
  MP_RETURN_IF_ERROR(CheckCandidates(num_layers, num_heads, candidates));
  SortByCost(candidates);
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

absl::StatusOr<RefinementResult> RefineSparseAttentionConfigJointly(
    const SparseAttentionConfig& initial, const ModelRecallFn& measure,
    const RefinementOptions& options, const std::vector<std::vector<HeadRecall>>* initial_recall) {
  MP_RETURN_IF_ERROR(CheckOptions(options));
  const int64_t layers = initial.num_layers(), heads = initial.num_heads();
  if (layers == 0 || heads == 0) {
    return absl::InvalidArgumentError("the sparse attention config to refine is empty");
  }
  RefinementResult result;
  result.config = initial;
  std::vector<std::vector<HeadRecall>> recall;  // [layer][head] at the current budgets
  if (initial_recall != nullptr) {
    if (static_cast<int64_t>(initial_recall->size()) != layers) {
      return absl::InvalidArgumentError(absl::StrCat("initial recall has ", initial_recall->size(),
                                                     " layers, expected ", layers));
    }
    for (int64_t l = 0; l < layers; ++l) {
      if (static_cast<int64_t>((*initial_recall)[l].size()) != heads) {
        return absl::InvalidArgumentError(absl::StrCat("initial recall of layer ", l, " has ",
                                                       (*initial_recall)[l].size(),
                                                       " heads, expected ", heads));
      }
    }
    recall = *initial_recall;
  } else {
    BudgetSets sets(static_cast<size_t>(layers));
    for (int64_t l = 0; l < layers; ++l) sets[l] = {initial.layers[l]};
    MP_ASSIGN_OR_RETURN(ModelRecall r, MeasureAll(measure, sets));
    for (int64_t l = 0; l < layers; ++l) recall.push_back(std::move(r[l][0]));
  }
  auto summarize = [&](int64_t l, double* mean, double* worst) {
    double sum = 0.0;
    *worst = std::numeric_limits<double>::infinity();
    for (const HeadRecall& r : recall[l]) {
      const double x = Aggregate(r, options.aggregate);
      sum += x;
      *worst = std::min(*worst, x);
    }
    *mean = sum / static_cast<double>(heads);
  };
  result.layers.resize(static_cast<size_t>(layers));
  for (int64_t l = 0; l < layers; ++l) {
    summarize(l, &result.layers[l].recall_before, &result.layers[l].min_head_before);
    SummarizeCost(recall[l], &result.layers[l].density_before, &result.layers[l].max_query_before);
  }
  std::vector<std::vector<int64_t>> steps(static_cast<size_t>(layers),
                                          std::vector<int64_t>(static_cast<size_t>(heads), 0));
  auto needs_more = [&](int64_t l, int64_t h) {
    const SparseHeadConfig& c = result.config.layers[l][h];
    return Aggregate(recall[l][h], options.aggregate) < options.target_recall &&
           steps[l][h] < options.max_rounds && !AtCaps(c, options);
  };
  while (true) {
    // Levels 1..k above the current budgets for the heads that need more, per layer; the
    // other heads of a measured layer keep their budgets in every set.
    BudgetSets sets(static_cast<size_t>(layers));
    std::vector<int64_t> levels(static_cast<size_t>(layers), 0);
    bool any = false;
    for (int64_t l = 0; l < layers; ++l) {
      int64_t k = 0;
      for (int64_t h = 0; h < heads; ++h) {
        if (needs_more(l, h)) {
          k = std::max(k, std::min(options.steps_per_pass, options.max_rounds - steps[l][h]));
        }
      }
      levels[l] = k;
      for (int64_t j = 1; j <= k; ++j) {
        std::vector<SparseHeadConfig> set = result.config.layers[l];
        for (int64_t h = 0; h < heads; ++h) {
          if (needs_more(l, h)) {
            set[h] = Raised(set[h], std::min(j, options.max_rounds - steps[l][h]), options);
          }
        }
        sets[l].push_back(std::move(set));
      }
      any = any || k > 0;
    }
    if (!any) break;
    MP_ASSIGN_OR_RETURN(ModelRecall r, MeasureAll(measure, sets));
    for (int64_t l = 0; l < layers; ++l) {
      if (levels[l] == 0) continue;
      ++result.layers[l].rounds;
      for (int64_t h = 0; h < heads; ++h) {
        if (!needs_more(l, h)) continue;
        const int64_t k = std::min(levels[l], options.max_rounds - steps[l][h]);
        int64_t take = k;  // the first level that reaches the target, else the last
        for (int64_t j = 1; j <= k; ++j) {
          if (Aggregate(r[l][j - 1][h], options.aggregate) >= options.target_recall) {
            take = j;
            break;
          }
        }
        result.config.layers[l][h] = sets[l][take - 1][h];
        recall[l][h] = r[l][take - 1][h];
        steps[l][h] += take;
      }
    }
  }
  for (int64_t l = 0; l < layers; ++l) {
    LayerRefinement& report = result.layers[l];
    summarize(l, &report.recall_after, &report.min_head_after);
    SummarizeCost(recall[l], &report.density_after, &report.max_query_after);
    for (int64_t h = 0; h < heads; ++h) {
      SparseHeadConfig& c = result.config.layers[l][h];
      c.score = Aggregate(recall[l][h], options.aggregate);
      const SparseHeadConfig& was = initial.layers[l][h];
      report.heads_raised += c.vertical_size != was.vertical_size || c.slash_size != was.slash_size;
      report.heads_below_target += c.score < options.target_recall;
    }
  }
  return result;
}

absl::StatusOr<SearchResult> SearchInitialSparseAttentionConfigJointly(
    int64_t num_layers, int64_t num_heads, const ModelRecallFn& measure,
    const RefinementOptions& options, std::vector<std::pair<int64_t, int64_t>> candidates) {
  MP_RETURN_IF_ERROR(CheckOptions(options));
  MP_RETURN_IF_ERROR(CheckCandidates(num_layers, num_heads, candidates));
  SortByCost(candidates);
  BudgetSets sets(static_cast<size_t>(num_layers));
  for (int64_t l = 0; l < num_layers; ++l) {
    for (const auto& [v, s] : candidates) {
      sets[l].push_back(std::vector<SparseHeadConfig>(static_cast<size_t>(num_heads), {v, s, 0.0}));
    }
  }
  MP_ASSIGN_OR_RETURN(ModelRecall r, MeasureAll(measure, sets));
  SearchResult result;
  result.config.layers.resize(static_cast<size_t>(num_layers));
  result.recall.resize(static_cast<size_t>(num_layers));
  for (int64_t l = 0; l < num_layers; ++l) {
    for (int64_t h = 0; h < num_heads; ++h) {
      // The cheapest candidate that reaches the target, else the best (the first of equals).
      size_t pick = 0;
      for (size_t c = 0; c < candidates.size(); ++c) {
        const double x = Aggregate(r[l][c][h], options.aggregate);
        if (x >= options.target_recall) {
          pick = c;
          break;
        }
        if (x > Aggregate(r[l][pick][h], options.aggregate)) pick = c;
      }
      const double x = Aggregate(r[l][pick][h], options.aggregate);
      result.config.layers[l].push_back({candidates[pick].first, candidates[pick].second, x});
      result.recall[l].push_back(r[l][pick][h]);
    }
  }
  return result;
}

}  // namespace mp
