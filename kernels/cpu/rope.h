// Rotary position embedding, NeoX rotate-half layout over the full head_dim (fp32, CPU).
#pragma once

#include <cstdint>

namespace mp::cpu {

// In place: for each token t and head h, with i in [0, d/2):
//   inv_freq[i] = 1 / theta^(2i/d)          (computed in fp32, as transformers does)
//   a = positions[t] * inv_freq[i]          (fp32)
//   x1' = x1 cos a - x2 sin a ; x2' = x2 cos a + x1 sin a   with x1 = x[i], x2 = x[i + d/2]
// Positions are arbitrary per token (DCA passes remapped positions).
void RopeNeox(float* x,                  // [n, heads, head_dim]
              const int32_t* positions,  // [n]
              int64_t n, int64_t heads, int64_t head_dim, double theta);

}  // namespace mp::cpu
