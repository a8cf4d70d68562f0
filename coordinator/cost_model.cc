#include "coordinator/cost_model.h"

#include <algorithm>
#include <cmath>
#include <limits>

namespace mp {
namespace {

// Solves the n x n system m * x = v (n <= 3) by Gaussian elimination with partial pivoting.
// Returns false when it is singular.
bool Solve(double m[3][3], double v[3], int n, double x[3]) {
  for (int col = 0; col < n; ++col) {
    int pivot = col;
    for (int row = col + 1; row < n; ++row) {
      if (std::abs(m[row][col]) > std::abs(m[pivot][col])) pivot = row;
    }
    if (std::abs(m[pivot][col]) < 1e-300) return false;
    if (pivot != col) {
      for (int k = 0; k < n; ++k) std::swap(m[pivot][k], m[col][k]);
      std::swap(v[pivot], v[col]);
    }
    for (int row = col + 1; row < n; ++row) {
      const double f = m[row][col] / m[col][col];
      for (int k = col; k < n; ++k) m[row][k] -= f * m[col][k];
      v[row] -= f * v[col];
    }
  }
  for (int row = n - 1; row >= 0; --row) {
    double acc = v[row];
    for (int k = row + 1; k < n; ++k) acc -= m[row][k] * x[k];
    x[row] = acc / m[row][row];
  }
  return true;
}

// Relative ridge weights of a, b and t0: the fit leans toward the linear term.
constexpr double kRidge[3] = {10.0, 1.0, 10.0};
constexpr double kRidgeScale = 1e-6;

}  // namespace

CostModel::CostModel(const CostModelOptions& options) : options_(options) {
  if (options_.scale_tokens <= 0) options_.scale_tokens = 4096;
  if (!(options_.forgetting > 0 && options_.forgetting <= 1)) options_.forgetting = 0.99;
}

double CostModel::AttentionWork(int64_t history, int64_t chunk, int64_t sparse_budget_tokens) {
  const double h = static_cast<double>(history), c = static_cast<double>(chunk);
  double keys = h + c / 2;  // average keys per query of the chunk
  if (sparse_budget_tokens > 0) keys = std::min(keys, static_cast<double>(sparse_budget_tokens));
  return c * keys;
}

CostModel::Vec CostModel::Features(int64_t history, int64_t chunk) const {
  const double s = static_cast<double>(options_.scale_tokens);
  return {AttentionWork(history, chunk, options_.sparse_budget_tokens) / (s * s),
          static_cast<double>(chunk) / s, 1.0};
}

void CostModel::Observe(int64_t history, int64_t chunk, double seconds) {
  if (chunk <= 0 || history < 0 || !std::isfinite(seconds) || seconds < 0) return;
  const Vec x = Features(history, chunk);
  const double f = options_.forgetting;
  for (int i = 0; i < 3; ++i) {
    for (int j = 0; j < 3; ++j) s_[i][j] = f * s_[i][j] + x[i] * x[j];
    r_[i] = f * r_[i] + x[i] * seconds;
  }
  tt_ = f * tt_ + seconds * seconds;
  ++samples_;
  Refit();
}

void CostModel::Refit() {
  const double trace = s_[0][0] + s_[1][1] + s_[2][2];
  const double lambda = kRidgeScale * trace / 3;
  double best_objective = std::numeric_limits<double>::infinity();
  Vec best = {0, 0, 0};
  for (int mask = 1; mask < 8; ++mask) {
    int idx[3], n = 0;
    for (int i = 0; i < 3; ++i) {
      if (mask & (1 << i)) idx[n++] = i;
    }
    double m[3][3], v[3], x[3] = {0, 0, 0};
    for (int i = 0; i < n; ++i) {
      for (int j = 0; j < n; ++j) m[i][j] = s_[idx[i]][idx[j]];
      m[i][i] += lambda * kRidge[idx[i]];
      v[i] = r_[idx[i]];
    }
    if (!Solve(m, v, n, x)) continue;
    Vec theta = {0, 0, 0};
    bool feasible = true;
    for (int i = 0; i < n; ++i) {
      if (x[i] < 0) feasible = false;
      theta[idx[i]] = x[i];
    }
    if (!feasible) continue;
    // Objective: sum w (t - x.theta)^2 + lambda * sum ridge_i theta_i^2.
    double objective = tt_;
    for (int i = 0; i < 3; ++i) {
      objective -= 2 * theta[i] * r_[i];
      for (int j = 0; j < 3; ++j) objective += theta[i] * s_[i][j] * theta[j];
      objective += lambda * kRidge[i] * theta[i] * theta[i];
    }
    if (objective < best_objective) {
      best_objective = objective;
      best = theta;
    }
  }
  theta_ = best;
}

double CostModel::Predict(int64_t history, int64_t chunk) const {
  const Vec x = Features(history, chunk);
  return theta_[0] * x[0] + theta_[1] * x[1] + theta_[2] * x[2];
}

double CostModel::a() const {
  const double s = static_cast<double>(options_.scale_tokens);
  return theta_[0] / (s * s);
}
double CostModel::b() const { return theta_[1] / static_cast<double>(options_.scale_tokens); }
double CostModel::t0() const { return theta_[2]; }

}  // namespace mp
