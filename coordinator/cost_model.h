// CostModel: the time of one pipeline step that runs c new tokens of a request after h tokens of
// history (qwen1m-spec.md §5.3),
//
//   t(h, c) = a * W(h, c) + b * c + t0,
//   W(h, c) = c * h + c^2 / 2                         dense causal attention (DCA: the same)
//   W(h, c) = c * min(h + c / 2, budget)              vertical-slash sparse, `budget` keys/query
//
// fitted online from the step times the stages report. The fit is weighted least squares with
// exponential forgetting (older samples count less) and a, b, t0 >= 0, solved exactly by trying
// every set of free terms (three unknowns: seven sets). A small ridge term resolves directions
// the samples do not determine yet; it leans toward the linear term b, so that until the data
// show the attention term, chunk sizes stay at their maximum. Features are scaled by
// `scale_tokens` so that the normal equations stay well conditioned at 1M tokens.
// Not thread-safe.
#pragma once

#include <array>
#include <cstdint>

namespace mp {

struct CostModelOptions {
  // Keys per query of the sparse attention (0: dense).
  int64_t sparse_budget_tokens = 0;
  // Weight kept by the previous samples when a new one arrives (1: never forget).
  double forgetting = 0.99;
  // Feature scale (tokens); any value near the chunk sizes in use.
  int64_t scale_tokens = 4096;
};

class CostModel {
 public:
  explicit CostModel(const CostModelOptions& options = {});

  // W(h, c) of the header, in tokens^2.
  static double AttentionWork(int64_t history, int64_t chunk, int64_t sparse_budget_tokens);

  void Observe(int64_t history, int64_t chunk, double seconds);
  // Predicted seconds (0 before any sample).
  double Predict(int64_t history, int64_t chunk) const;
  int64_t samples() const { return samples_; }
  // The fitted terms in seconds per token^2, per token and per step.
  double a() const;
  double b() const;
  double t0() const;
  const CostModelOptions& options() const { return options_; }

 private:
  using Vec = std::array<double, 3>;
  Vec Features(int64_t history, int64_t chunk) const;
  void Refit();

  CostModelOptions options_;
  double s_[3][3] = {};  // sum of w * x x^T
  Vec r_ = {};           // sum of w * x t
  double tt_ = 0;        // sum of w * t^2
  Vec theta_ = {};       // in scaled units
  int64_t samples_ = 0;
};

}  // namespace mp
