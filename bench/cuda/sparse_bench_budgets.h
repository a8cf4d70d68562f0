// Per-head budgets of sparse_bench: Qwen's sparse_attention_config.json read through
// model/sparse_attention_config.h (host C++20, kept out of the CUDA translation unit).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace mp::bench {

// The effective (vertical, slash) budgets [28 * 2] of each selected layer of the Qwen2.5-7B-1M
// config file at `path` ("all" or empty: every layer; else one layer index). False with a
// message in *error when the file is missing, malformed or selects nothing.
bool LoadQwen7bBudgets(const std::string& path, const std::string& layer,
                       std::vector<std::vector<int64_t>>* budgets, std::string* error);

}  // namespace mp::bench
