// Tiny random models for the runtime tests and a naive double-precision forward pass that
// serves as their independent oracle (no runtime or kernel code is shared with it).
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "model/config.h"
#include "model/weights.h"
#include "runtime/tensor.h"

namespace mp::testing {

struct TinyModelSpec {
  Architecture architecture = Architecture::kQwen2;  // Qwen2: q/k/v bias; Llama: see below
  bool llama_attention_bias = false;                 // Llama with q/k/v and o_proj biases
  int64_t layers = 2;
  int64_t hidden = 64;
  int64_t heads = 4;
  int64_t kv_heads = 2;
  int64_t head_dim = 16;
  int64_t inter = 128;
  int64_t vocab = 256;
  bool tie_word_embeddings = false;
  double rope_theta = 10000.0;
  int64_t max_position_embeddings = 512;
};

ModelConfig TinyConfig(const TinyModelSpec& spec);

// Seeded random f32 host weights of the whole model: matrices N(0, 0.08), norm weights
// 1 + N(0, 0.2), biases N(0, 0.1). With `bf16_exact` every value is representable in bf16.
ModelWeights TinyWeights(const ModelConfig& config, uint64_t seed, bool bf16_exact = false);

// The stage [layers.begin, layers.end) of `full`, sharing its storage: the embedding when the
// range starts at 0, the final norm and head when it ends at the last layer.
ModelWeights SliceWeights(const ModelWeights& full, const ModelConfig& config, LayerRange layers);

// The same values stored as bf16 (exact for weights made with bf16_exact).
ModelWeights ToBf16(const ModelWeights& full);

// Logits [T, vocab] (row-major) at every position of `ids`, computed in double from the f32
// weights with plain loops.
//
// With config.dual_chunk set, attention is dual chunk attention written directly from
// qwen1m-spec.md §2.2 / §2.7: logits (R(r(t, j)) q_t) . k_j * m_t^2 / sqrt(head_dim) on
// un-rotated q and k, with the per-pair relative distance r(t, j) and the YaRN temperature of
// row t, m_t = max(1, 0.1 ln(L_t / L0) + 1), L_t = max(prompt_len, t + 1) (prompt_len 0: T, the
// length of `ids`). Rows below prompt_len are a prefill of prompt_len tokens (all at
// m(prompt_len)); each later row is the decode step of its token at the then current length
// (cached keys are not scaled, so that is exactly incremental generation).
std::vector<double> ReferenceLogits(const ModelConfig& config, const ModelWeights& weights,
                                    std::span<const int32_t> ids, int64_t prompt_len = 0);

// Greedy continuation of `prompt` by `new_tokens` tokens with ReferenceLogits (with DCA, the
// prompt at m(prompt length) and each generated token at its decode temperature).
std::vector<int32_t> ReferenceGreedy(const ModelConfig& config, const ModelWeights& weights,
                                     std::span<const int32_t> prompt, int64_t new_tokens);

// The relative distance of query position p and key position j <= p under DCA (spec §2.2).
int64_t ReferenceDcaDistance(const DualChunkConfig& dca, int64_t p, int64_t j);

// max_i |a[i] - b[i]| / max_i |b[i]| over one row of n values.
double RowRelativeError(const float* a, const double* b, int64_t n);
double RowRelativeError(const float* a, const float* b, int64_t n);

std::vector<int32_t> RandomIds(int64_t n, int64_t vocab, uint64_t seed);

// A host i32 tensor [ids.size()] holding `ids`.
Tensor HostIds(std::span<const int32_t> ids);

}  // namespace mp::testing
