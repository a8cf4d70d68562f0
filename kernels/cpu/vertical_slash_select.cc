#include "kernels/cpu/vertical_slash_select.h"

#include <algorithm>
#include <functional>
#include <limits>
#include <numeric>
#include <vector>

namespace mp::cpu {
namespace {

constexpr float kInf = std::numeric_limits<float>::infinity();
constexpr int32_t kVerticalPad = std::numeric_limits<int32_t>::max();
constexpr int32_t kSlashPad = std::numeric_limits<int32_t>::min();

// arange(0, klen, max(1, klen / 5)).
void Fallback(int64_t klen, std::vector<int32_t>* out) {
  const int64_t step = std::max<int64_t>(1, klen / 5);
  for (int64_t x = 0; x < klen; x += step) out->push_back(static_cast<int32_t>(x));
}

// Sorts `values` (ascending or descending), pads to `capacity`, stores the count.
void Store(std::vector<int32_t>& values, bool descending, int32_t pad, int32_t* dst,
           int32_t* count, int64_t capacity) {
  if (descending) {
    std::sort(values.begin(), values.end(), std::greater<int32_t>());
  } else {
    std::sort(values.begin(), values.end());
  }
  const int64_t n = std::min<int64_t>(static_cast<int64_t>(values.size()), capacity);
  std::copy(values.begin(), values.begin() + n, dst);
  std::fill(dst + n, dst + capacity, pad);
  *count = static_cast<int32_t>(n);
}

}  // namespace

VerticalSlashPartKeys VerticalSlashPartKeyRange(const VerticalSlashPiece& piece, int part) {
  const int64_t p = piece.chunk_begin;
  const int64_t c = piece.chunk_len;
  VerticalSlashPartKeys keys;
  switch (part) {
    case kIntraPart:
      keys = {true, true, p, piece.piece_end};
      break;
    case kSuccPart:
      if (p > 0 && p >= c) keys = {true, false, p - c, p};
      break;
    case kInterPart:
      if (p > 0 && p >= 2 * c) keys = {true, false, 0, p - c};
      break;
    default:
      break;
  }
  return keys;
}

void TopKIndices(const float* scores, int64_t count, int64_t k, int32_t* out) {
  k = std::clamp<int64_t>(k, 0, count);
  if (k == 0) return;
  std::vector<int32_t> idx(static_cast<size_t>(count));
  std::iota(idx.begin(), idx.end(), 0);
  auto before = [scores](int32_t a, int32_t b) {
    return scores[a] > scores[b] || (scores[a] == scores[b] && a < b);
  };
  if (k < count) {
    std::nth_element(idx.begin(), idx.begin() + (k - 1), idx.end(), before);
  }
  std::sort(idx.begin(), idx.begin() + k, before);
  std::copy(idx.begin(), idx.begin() + k, out);
}

void SelectVerticalSlash(const float* vertical, const float* slash, int64_t q_heads,
                         const VerticalSlashPiece& piece, const int64_t* budgets,
                         const VerticalSlashLists* parts) {
  const int64_t e = piece.piece_end;
  const int64_t qn = piece.num_queries();
  if (e <= 0) return;
  VerticalSlashPartKeys keys[kVerticalSlashParts];
  for (int part = 0; part < kVerticalSlashParts; ++part) {
    keys[part] = VerticalSlashPartKeyRange(piece, part);
  }
  std::vector<float> v_scores(static_cast<size_t>(e));
  std::vector<float> s_scores(static_cast<size_t>(e));
  std::vector<int32_t> top_v(static_cast<size_t>(e));
  std::vector<int32_t> top_s(static_cast<size_t>(e));
  std::vector<int32_t> list;

  for (int64_t h = 0; h < q_heads; ++h) {
    // Steps 2-4: forcing and top-k.
    std::copy(vertical + h * e, vertical + (h + 1) * e, v_scores.begin());
    std::copy(slash + h * e, slash + (h + 1) * e, s_scores.begin());
    std::fill(v_scores.begin(), v_scores.begin() + std::min(e, kVerticalSlashSinks), kInf);
    std::fill(s_scores.begin() + std::max<int64_t>(0, e - kVerticalSlashLocalBand),
              s_scores.end(), kInf);
    const int64_t kv = VerticalSlashVerticalK(budgets[2 * h], e);
    const int64_t ks = VerticalSlashSlashK(budgets[2 * h + 1], e);
    TopKIndices(v_scores.data(), e, kv, top_v.data());
    TopKIndices(s_scores.data(), e, ks, top_s.data());

    // Step 5-6: split into the parts, fallback for empty lists, sort and pad.
    for (int part = 0; part < kVerticalSlashParts; ++part) {
      const VerticalSlashPartKeys& k = keys[part];
      const VerticalSlashLists& out = parts[part];
      if (!k.present) continue;
      const int64_t klen = k.num_keys();

      list.clear();
      for (int64_t i = 0; i < kv; ++i) {
        const int64_t j = top_v[i];
        if (j >= k.key_begin && j < k.key_end) list.push_back(static_cast<int32_t>(j - k.key_begin));
      }
      if (list.empty()) Fallback(klen, &list);
      Store(list, /*descending=*/false, kVerticalPad, out.vertical + h * out.vertical_capacity,
            out.vertical_count + h, out.vertical_capacity);

      list.clear();
      if (k.causal) {  // intra: distance from the last query
        for (int64_t i = 0; i < ks; ++i) {
          const int64_t t = top_s[i];
          if (t >= k.key_begin) list.push_back(static_cast<int32_t>((e - 1) - t));
        }
      } else {  // succ / inter: distance in the virtual frame, queries right after the keys
        const int64_t last = k.key_end + qn - 1;
        for (int64_t i = 0; i < ks; ++i) {
          const int64_t t = top_s[i];
          if (t >= k.key_begin && t <= last) list.push_back(static_cast<int32_t>(last - t));
        }
        if (list.empty()) Fallback(klen, &list);
      }
      Store(list, /*descending=*/true, kSlashPad, out.slash + h * out.slash_capacity,
            out.slash_count + h, out.slash_capacity);
    }
  }
}

}  // namespace mp::cpu
