#include "kernels/cpu/dca_positions.h"

#include <algorithm>
#include <cmath>

namespace mp::cpu {

int64_t DcaRelativeDistance(int64_t p, int64_t j, int64_t chunk_len, int64_t chunk_size) {
  const int64_t cp = p / chunk_len;
  const int64_t cj = j / chunk_len;
  const int64_t key = DcaKeyPosition(j, chunk_len);
  if (cj == cp) return DcaIntraQueryPosition(p, chunk_len) - key;
  if (cj == cp - 1) return DcaSuccQueryPosition(p, chunk_len, chunk_size) - key;
  return DcaInterQueryPosition(chunk_len, chunk_size) - key;
}

DcaRegions DcaPieceRegions(int64_t b, int64_t e, int64_t chunk_len) {
  const int64_t P = b / chunk_len * chunk_len;
  DcaRegions r;
  r.intra = {P, std::min(e, P + chunk_len)};
  if (P >= chunk_len) r.succ = {P - chunk_len, P};
  if (P >= 2 * chunk_len) r.inter = {0, P - chunk_len};
  return r;
}

DcaRegions DcaDecodeRegions(int64_t n, int64_t chunk_len) {
  return DcaPieceRegions(n - 1, n, chunk_len);
}

int64_t DcaPieceEnd(int64_t b, int64_t q_end, int64_t chunk_len) {
  return std::min(b / chunk_len * chunk_len + chunk_len, q_end);
}

double YarnTemperature(int64_t length, int64_t original_max_position_embeddings) {
  if (length <= 0 || original_max_position_embeddings <= 0) return 1.0;
  const double m = 0.1 * std::log(static_cast<double>(length) /
                                  static_cast<double>(original_max_position_embeddings)) +
                   1.0;
  return std::max(1.0, m);
}

}  // namespace mp::cpu
