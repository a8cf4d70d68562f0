// Dual chunk attention (DCA) position tables, key regions and the YaRN attention temperature,
// with the Qwen/vLLM semantics of qwen1m-spec.md §2.2, §2.5, §2.6 and §2.7.
//
// Notation: S = chunk_size (the largest relative distance DCA produces, the training length),
// W = local_size, C = S - W = chunk_len (positions are folded modulo C), p = absolute query
// position, j = absolute key position, c(x) = floor(x / C) the DCA chunk of x.
//
//   tensor              RoPE position
//   K (cached)          p mod C
//   Q, intra region     p mod C                 keys of chunk c(p), causal
//   Q, succ region      min(p mod C + C, S)     keys of chunk c(p) - 1
//   Q, inter region     min(2C - 1, S)          keys of chunks < c(p) - 1
//
// Plain integer arithmetic, no validation: callers guarantee 0 < C <= S and positions >= 0.
#pragma once

#include <cstdint>

namespace mp::cpu {

// [begin, end) of the key positions of one sequence.
struct KeyRange {
  int64_t begin = 0;
  int64_t end = 0;
  int64_t size() const { return end > begin ? end - begin : 0; }
  bool empty() const { return end <= begin; }
};

// The three disjoint key regions seen by a run of queries [b, e) that lies inside one DCA
// chunk (e <= floor(b / C) * C + C): with P = floor(b / C) * C,
//   intra = [P, e) (causal, bottom-right), succ = [P - C, P) if P >= C,
//   inter = [0, P - C) if P >= 2C; missing regions are empty ranges.
struct DcaRegions {
  KeyRange intra;
  KeyRange succ;
  KeyRange inter;
};

inline int64_t DcaKeyPosition(int64_t p, int64_t chunk_len) { return p % chunk_len; }
inline int64_t DcaIntraQueryPosition(int64_t p, int64_t chunk_len) { return p % chunk_len; }
inline int64_t DcaSuccQueryPosition(int64_t p, int64_t chunk_len, int64_t chunk_size) {
  const int64_t pos = p % chunk_len + chunk_len;
  return pos < chunk_size ? pos : chunk_size;
}
inline int64_t DcaInterQueryPosition(int64_t chunk_len, int64_t chunk_size) {
  const int64_t pos = 2 * chunk_len - 1;
  return pos < chunk_size ? pos : chunk_size;
}

// The relative distance posQ - posK the model sees for query p and key j <= p (§2.2):
//   same chunk:      p - j
//   previous chunk:  min(p mod C + C, S) - j mod C
//   older chunks:    min(2C - 1, S) - j mod C
int64_t DcaRelativeDistance(int64_t p, int64_t j, int64_t chunk_len, int64_t chunk_size);

// Regions of the queries [b, e) (see DcaRegions; e is clipped to the end of b's chunk).
DcaRegions DcaPieceRegions(int64_t b, int64_t e, int64_t chunk_len);

// Regions of a decode step with n >= 1 keys cached, the query being the token at n - 1 (§2.6):
// intra [cnum C, n), succ [(cnum - 1) C, cnum C), inter [0, (cnum - 1) C), cnum = (n - 1) / C.
DcaRegions DcaDecodeRegions(int64_t n, int64_t chunk_len);

// End of the run of queries starting at b that stays in b's DCA chunk, capped at q_end:
// min(floor(b / C) * C + C, q_end). Prefill splits its queries at these boundaries.
int64_t DcaPieceEnd(int64_t b, int64_t q_end, int64_t chunk_len);

// YaRN attention temperature m(L) = max(1, 0.1 ln(L / L0) + 1) (§2.7); logits scale by m^2.
// L is the request's prompt length in prefill and the current length in decode; L0 is
// original_max_position_embeddings. m = 1 for L <= L0 (and for L <= 0).
double YarnTemperature(int64_t length, int64_t original_max_position_embeddings);

}  // namespace mp::cpu
