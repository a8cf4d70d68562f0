#include "kernels/cpu/vertical_slash_prefill.h"

#include <algorithm>
#include <cstring>
#include <vector>

#include "kernels/cpu/rope.h"
#include "kernels/cpu/vertical_slash_attention.h"
#include "kernels/cpu/vertical_slash_index.h"
#include "kernels/cpu/vertical_slash_scores.h"
#include "kernels/cpu/vertical_slash_select.h"

namespace mp::cpu {
namespace {

// RoPE position of query p for each use (§2.2, §3.6).
enum class QueryRole { kIntra, kSucc, kInter, kSuccSelect, kInterSelect };

int32_t QueryPosition(const VerticalSlashPrefillShape& s, int64_t p, QueryRole role) {
  if (s.chunk_size <= 0) return static_cast<int32_t>(p);
  const int64_t c = s.chunk_len;
  const int64_t i = p % c;
  switch (role) {
    case QueryRole::kIntra:
      return static_cast<int32_t>(i);
    case QueryRole::kSucc:
      return static_cast<int32_t>(std::min(i + c, s.chunk_size));
    case QueryRole::kInter:
      return static_cast<int32_t>(std::min(2 * c - 1, s.chunk_size));
    case QueryRole::kSuccSelect:
      return static_cast<int32_t>(i + c);
    case QueryRole::kInterSelect:
      return static_cast<int32_t>(i + s.chunk_size);
  }
  return 0;
}

// Copies the queries at absolute positions [p0, p1) (rows p - query_begin of q) and rotates them.
std::vector<float> RotatedQueries(const float* q, const VerticalSlashPrefillShape& s, int64_t d,
                                  int64_t p0, int64_t p1, QueryRole role) {
  const int64_t rows = p1 - p0;
  const int64_t width = s.q_heads * d;
  std::vector<float> out(static_cast<size_t>(rows * width));
  std::memcpy(out.data(), q + (p0 - s.query_begin) * width,
              static_cast<size_t>(rows * width) * sizeof(float));
  std::vector<int32_t> positions(static_cast<size_t>(rows));
  for (int64_t r = 0; r < rows; ++r) positions[r] = QueryPosition(s, p0 + r, role);
  RopeNeox(out.data(), positions.data(), rows, s.q_heads, d, s.rope_theta);
  return out;
}

// Per-part index buffers of one piece.
struct PartSelection {
  std::vector<int32_t> vertical, vertical_count, slash, slash_count;
  VerticalSlashLists lists;
};

}  // namespace

void VerticalSlashPrefillAttention(const float* q, const PagedKvView& kv,
                                   const VerticalSlashPrefillShape& shape, const int64_t* budgets,
                                   float* out, float* lse, int64_t* index_keys) {
  const int64_t n = shape.num_queries;
  const int64_t heads = shape.q_heads;
  const int64_t d = kv.head_dim;
  if (n <= 0 || heads <= 0) return;
  const bool dca = shape.chunk_size > 0;
  const int64_t end = shape.query_begin + n;
  const QueryRole attend_role[kVerticalSlashParts] = {QueryRole::kIntra, QueryRole::kSucc,
                                                      QueryRole::kInter};
  int64_t max_budget = 0;
  if (budgets != nullptr) {
    for (int64_t h = 0; h < 2 * heads; ++h) max_budget = std::max(max_budget, budgets[h]);
  }

  for (int64_t b = shape.query_begin; b < end;) {
    VerticalSlashPiece piece;
    piece.piece_begin = b;
    piece.chunk_len = shape.chunk_len;
    piece.chunk_begin = dca ? (b / shape.chunk_len) * shape.chunk_len : 0;
    piece.piece_end = dca ? std::min(piece.chunk_begin + shape.chunk_len, end) : end;
    const int64_t e = piece.piece_end;
    const int64_t qn = piece.num_queries();
    VerticalSlashPartKeys keys[kVerticalSlashParts];
    for (int part = 0; part < kVerticalSlashParts; ++part) {
      keys[part] = VerticalSlashPartKeyRange(piece, part);
    }

    // Sparse: estimation and selection once per piece, for all parts.
    PartSelection sel[kVerticalSlashParts];
    if (budgets != nullptr) {
      const int64_t nl = std::min(shape.last_q, qn);
      const int64_t p = piece.chunk_begin;
      std::vector<float> q_intra = RotatedQueries(q, shape, d, e - nl, e, QueryRole::kIntra);
      std::vector<float> q_succ, q_inter;
      if (keys[kSuccPart].present) {
        q_succ = RotatedQueries(q, shape, d, e - nl, e, QueryRole::kSuccSelect);
      }
      if (keys[kInterPart].present) {
        q_inter = RotatedQueries(q, shape, d, e - nl, e, QueryRole::kInterSelect);
      }
      VerticalSlashScoreShape score_shape;
      score_shape.num_queries = nl;
      score_shape.q_heads = heads;
      score_shape.key_end = e;
      score_shape.intra_begin = p;
      score_shape.succ_begin = keys[kSuccPart].present ? keys[kSuccPart].key_begin : p;
      score_shape.scale = shape.scale;
      std::vector<float> vertical(static_cast<size_t>(heads * e));
      std::vector<float> slash(static_cast<size_t>(heads * e));
      VerticalSlashScores(q_intra.data(), q_succ.empty() ? nullptr : q_succ.data(),
                          q_inter.empty() ? nullptr : q_inter.data(), kv, score_shape, {},
                          vertical.data(), slash.data());
      // Lists hold at most min(k, e) selected entries or a fallback of <= 9.
      const int64_t capacity =
          std::max<int64_t>(std::min(VerticalSlashListCapacity(max_budget), e), 9);
      VerticalSlashLists lists[kVerticalSlashParts];
      for (int part = 0; part < kVerticalSlashParts; ++part) {
        if (!keys[part].present) continue;
        PartSelection& s = sel[part];
        s.vertical.resize(static_cast<size_t>(heads * capacity));
        s.slash.resize(static_cast<size_t>(heads * capacity));
        s.vertical_count.resize(static_cast<size_t>(heads));
        s.slash_count.resize(static_cast<size_t>(heads));
        s.lists = {s.vertical.data(), s.vertical_count.data(), s.slash.data(),
                   s.slash_count.data(), capacity,          capacity};
        lists[part] = s.lists;
      }
      SelectVerticalSlash(vertical.data(), slash.data(), heads, piece, budgets, lists);
    }

    // Attention per part, merged into (piece_out, piece_lse).
    std::vector<float> piece_out(static_cast<size_t>(qn * heads * d));
    std::vector<float> piece_lse(static_cast<size_t>(heads * qn));
    std::vector<float> part_out(piece_out.size());
    std::vector<float> part_lse(piece_lse.size());
    bool first = true;
    for (int part = 0; part < kVerticalSlashParts; ++part) {
      const VerticalSlashPartKeys& k = keys[part];
      if (!k.present) continue;
      const std::vector<float> qp = RotatedQueries(q, shape, d, b, e, attend_role[part]);
      AttentionShape as;
      as.num_queries = qn;
      as.q_heads = heads;
      as.key_begin = k.key_begin;
      as.key_end = k.key_end;
      as.causal = k.causal;
      as.scale = shape.scale;
      float* o = first ? piece_out.data() : part_out.data();
      float* l = first ? piece_lse.data() : part_lse.data();
      if (budgets == nullptr) {
        PagedAttention(qp.data(), kv, as, o, l);
      } else {
        const PartSelection& s = sel[part];
        const int64_t row_blocks = VerticalSlashRowBlocks(qn);
        const int64_t max_blocks = VerticalSlashBlockCapacity(s.lists.slash_capacity, k.num_keys());
        const int64_t max_columns = s.lists.vertical_capacity;
        std::vector<int32_t> block_count(static_cast<size_t>(heads * row_blocks));
        std::vector<int32_t> column_count(block_count.size());
        std::vector<int32_t> block_offset(static_cast<size_t>(heads * row_blocks * max_blocks));
        std::vector<int32_t> column_index(static_cast<size_t>(heads * row_blocks * max_columns));
        const VerticalSlashListsView view{s.vertical.data(),      s.vertical_count.data(),
                                          s.slash.data(),         s.slash_count.data(),
                                          s.lists.vertical_capacity, s.lists.slash_capacity};
        BuildVerticalSlashIndex(view, {heads, qn, k.num_keys(), k.causal},
                                {block_count.data(), block_offset.data(), column_count.data(),
                                 column_index.data(), max_blocks, max_columns});
        if (index_keys != nullptr) {
          AddVerticalSlashIndexKeys(block_count.data(), column_count.data(), heads, qn,
                                    index_keys);
        }
        VerticalSlashAttention(qp.data(), kv, as,
                               {block_count.data(), block_offset.data(), column_count.data(),
                                column_index.data(), max_blocks, max_columns},
                               o, l);
      }
      if (!first) {
        MergeAttentionStates(piece_out.data(), piece_lse.data(), part_out.data(), part_lse.data(),
                             qn, heads, d);
      }
      first = false;
    }

    const int64_t row0 = b - shape.query_begin;
    std::memcpy(out + row0 * heads * d, piece_out.data(), piece_out.size() * sizeof(float));
    if (lse != nullptr) {
      for (int64_t h = 0; h < heads; ++h) {
        std::memcpy(lse + h * n + row0, piece_lse.data() + h * qn,
                    static_cast<size_t>(qn) * sizeof(float));
      }
    }
    b = e;
  }
}

}  // namespace mp::cpu
