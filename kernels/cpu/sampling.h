// Token sampling from logits (fp32, CPU).
#pragma once

#include <cstdint>

namespace mp::cpu {

// Index of the largest logit (the lowest index on ties).
int32_t SampleGreedy(const float* logits, int64_t vocab);

// Softmax(logits / temperature) (computed in double) restricted to the smallest set of top
// tokens whose probability reaches top_p (at least one token; top_p >= 1 keeps all), then
// inverse-CDF sampling with `uniform` in [0, 1) over the tokens laid out by decreasing
// probability, the lower index first among equals. temperature <= 0 means greedy. Deterministic
// for a given `uniform`.
int32_t SampleTopP(const float* logits, int64_t vocab, float temperature, float top_p,
                   double uniform);

}  // namespace mp::cpu
