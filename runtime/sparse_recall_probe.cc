#include "runtime/sparse_recall_probe.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <utility>

#include "absl/strings/str_cat.h"

namespace mp {

absl::StatusOr<SparseRecallProbe> SparseRecallProbe::Create(int64_t num_layers, int64_t q_heads,
                                                            int64_t last_q) {
  if (num_layers <= 0 || q_heads <= 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "recall probe: layers (", num_layers, ") and q heads (", q_heads, ") must be positive"));
  }
  if (last_q < 1 || last_q > 64) {
    return absl::InvalidArgumentError(
        absl::StrCat("recall probe: last_q must be in [1, 64], got ", last_q));
  }
  SparseRecallProbe probe;
  probe.layers_.resize(static_cast<size_t>(num_layers));
  probe.q_heads_ = q_heads;
  probe.last_q_ = last_q;
  return probe;
}

absl::Status SparseRecallProbe::SetBudgetSets(int64_t layer,
                                              std::vector<std::vector<int64_t>> sets) {
  if (layer < 0 || layer >= num_layers()) {
    return absl::InvalidArgumentError(
        absl::StrCat("recall probe: layer ", layer, " is outside [0, ", num_layers(), ")"));
  }
  for (size_t s = 0; s < sets.size(); ++s) {
    if (static_cast<int64_t>(sets[s].size()) != 2 * q_heads_) {
      return absl::InvalidArgumentError(absl::StrCat(
          "recall probe: budget set ", s, " of layer ", layer, " holds ", sets[s].size(),
          " values, expected 2 x ", q_heads_, " (vertical, slash per q head)"));
    }
    for (size_t i = 0; i < sets[s].size(); ++i) {
      const int64_t b = sets[s][i];
      if (b < 1 || b > std::numeric_limits<int32_t>::max()) {
        return absl::InvalidArgumentError(absl::StrCat(
            "recall probe: ", i % 2 == 0 ? "vertical" : "slash", " budget of head ", i / 2,
            " in set ", s, " of layer ", layer, " must be in [1, 2^31 - 1], got ", b));
      }
    }
  }
  Layer& l = layers_[layer];
  l.sets = std::move(sets);
  l.acc.assign(l.sets.size() * static_cast<size_t>(q_heads_), Accumulator());
  return absl::OkStatus();
}

bool SparseRecallProbe::active() const {
  return std::any_of(layers_.begin(), layers_.end(),
                     [](const Layer& l) { return !l.sets.empty(); });
}

absl::Status SparseRecallProbe::SetMeasureFrom(int64_t position) {
  if (position < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("recall probe: the first measured position must be >= 0, got ", position));
  }
  measure_from_ = position;
  return absl::OkStatus();
}

void SparseRecallProbe::Reset() {
  for (Layer& l : layers_) l.acc.assign(l.acc.size(), Accumulator());
}

absl::Status SparseRecallProbe::Record(int64_t layer, int64_t set, int64_t query_begin, int64_t n,
                                       const float* dense_lse, const float* sparse_lse,
                                       const int64_t* index_keys) {
  if (layer < 0 || layer >= num_layers() || set < 0 ||
      set >= static_cast<int64_t>(layers_[layer].sets.size()) || n < 0) {
    return absl::InvalidArgumentError(absl::StrCat("recall probe: no budget set ", set,
                                                   " in layer ", layer, " (or n = ", n, " < 0)"));
  }
  Layer& l = layers_[layer];
  // Query i sees the keys [0, query_begin + i]: sum of (query_begin + i + 1) over the chunk.
  const double causal = static_cast<double>(n) * static_cast<double>(query_begin) +
                        static_cast<double>(n) * static_cast<double>(n + 1) / 2.0;
  for (int64_t h = 0; h < q_heads_; ++h) {
    Accumulator& a = l.acc[static_cast<size_t>(set * q_heads_ + h)];
    if (a.histogram.empty()) a.histogram.assign(kBins, 0);
    if (index_keys != nullptr) {
      if (index_keys[h] < 0) {
        return absl::InternalError(absl::StrCat("recall probe: layer ", layer, " set ", set,
                                                " head ", h, ": negative index key count ",
                                                index_keys[h]));
      }
      a.index_keys += static_cast<double>(index_keys[h]);
      a.causal_keys += causal;
    }
    for (int64_t i = 0; i < n; ++i) {
      const double sparse = sparse_lse[h * n + i], dense = dense_lse[h * n + i];
      const double r = std::exp(sparse - dense);
      if (!std::isfinite(r) || r > kMaxRecall) {
        return absl::InternalError(absl::StrCat(
            "recall probe: layer ", layer, " set ", set, " head ", h, " query ", query_begin + i,
            ": recall ", r, " (lse sparse ", sparse, ", dense ", dense, ") is not in (0, ",
            kMaxRecall, "]"));
      }
      a.count += 1;
      a.sum += r;
      a.min = std::min(a.min, r);
      a.max = std::max(a.max, r);
      const int bin = std::clamp(static_cast<int>(r * kBins), 0, kBins - 1);
      a.histogram[bin] += 1;
    }
  }
  return absl::OkStatus();
}

RecallSummary SparseRecallProbe::Summary(int64_t layer, int64_t set, int64_t head) const {
  RecallSummary s;
  if (layer < 0 || layer >= num_layers() || set < 0 ||
      set >= static_cast<int64_t>(layers_[layer].sets.size()) || head < 0 || head >= q_heads_) {
    return s;
  }
  const Accumulator& a = layers_[layer].acc[static_cast<size_t>(set * q_heads_ + head)];
  s.count = a.count;
  if (a.count == 0) {
    s.mean = s.min = s.max = s.p05 = 1.0;
    return s;
  }
  s.mean = a.sum / static_cast<double>(a.count);
  s.density = a.causal_keys > 0.0 ? a.index_keys / a.causal_keys : 0.0;
  s.min = a.min;
  s.max = a.max;
  // Nearest rank: the ceil(0.05 count)-th smallest value lies in the first bin whose cumulative
  // count reaches it; its midpoint, kept within the observed range.
  const int64_t rank = std::max<int64_t>(1, (5 * a.count + 99) / 100);
  int64_t seen = 0;
  for (int b = 0; b < kBins; ++b) {
    seen += a.histogram[b];
    if (seen >= rank) {
      s.p05 = std::clamp((b + 0.5) / kBins, a.min, a.max);
      break;
    }
  }
  return s;
}

}  // namespace mp
