// The per-piece sparse DCA prefill driver; see vertical_slash_prefill.h.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "kernels/cpu/vertical_slash_index.h"   // VerticalSlashRowBlocks, ...BlockCapacity
#include "kernels/cpu/vertical_slash_select.h"  // VerticalSlashListCapacity
#include "kernels/cuda/vertical_slash_attention.h"
#include "kernels/cuda/vertical_slash_parts.h"
#include "kernels/cuda/vertical_slash_prefill.h"

namespace mp::cuda {
namespace {

constexpr int64_t kAlign = 256;
int64_t Up(int64_t x) { return (x + kAlign - 1) / kAlign * kAlign; }
std::string Num(int64_t v) { return std::to_string(v); }

struct Piece {
  int64_t b, e, p;
};

std::vector<Piece> Pieces(const VerticalSlashPrefillArgs& a) {
  std::vector<Piece> pieces;
  const bool dca = a.chunk_size > 0;
  const int64_t end = a.query_begin + a.num_queries;
  for (int64_t b = a.query_begin; b < end;) {
    Piece x;
    x.b = b;
    x.p = dca ? b / a.chunk_len * a.chunk_len : 0;
    x.e = dca ? std::min(x.p + a.chunk_len, end) : end;
    pieces.push_back(x);
    b = x.e;
  }
  return pieces;
}

int64_t MaxBudget(const VerticalSlashPrefillArgs& a) {
  int64_t m = 0;
  for (int64_t i = 0; i < 2 * a.q_heads; ++i) m = std::max(m, a.budgets[i]);
  return m;
}

// The heads' top-k sizes for a piece ending at e ([q_heads, 2]: vertical, slash).
std::vector<int64_t> TopKSizes(const VerticalSlashPrefillArgs& a, int64_t e) {
  std::vector<int64_t> k(size_t(2 * a.q_heads));
  for (int64_t h = 0; h < a.q_heads; ++h) {
    k[2 * h] = cpu::VerticalSlashVerticalK(a.budgets[2 * h], e);
    k[2 * h + 1] = cpu::VerticalSlashSlashK(a.budgets[2 * h + 1], e);
  }
  return k;
}

// Offsets of one piece's buffers; `total` is the size. [0, common_end) holds what the pieces
// use one after the other (rotated queries, score workspace); [common_end, total) what each
// piece keeps until its selection or attention ran (scores, lists, span tables, index).
struct Layout {
  int64_t q_rot, vertical, slash, score_ws, common_end, total;
  std::vector<int64_t> k;  // the heads' top-k sizes (TopKSizes)
  int64_t list_capacity;
  int64_t list[3];   // per part: vertical, vertical_count, slash, slash_count
  int64_t index[3];  // per part: block_count, column_count, block_offset, column_index
  int64_t spans[3];  // per part: the per-head layout of its index, [q_heads]
  int64_t max_blocks[3];
  int64_t index_blocks[3];  // block_offset entries of the part (per-head layout)
  bool present[3];
  int64_t row_blocks, nl;
};

Layout MakeLayout(const VerticalSlashPrefillArgs& a, const Piece& x) {
  Layout l{};
  const int64_t h = a.q_heads, d = a.kv.head_dim, e = x.e, qn = x.e - x.b;
  l.nl = std::min(a.last_q, qn);
  l.row_blocks = cpu::VerticalSlashRowBlocks(qn);
  // As the CPU reference: lists hold min(k, e) entries or a fallback of <= 9.
  l.list_capacity = std::max<int64_t>(std::min(cpu::VerticalSlashListCapacity(MaxBudget(a)), e), 9);
  int64_t off = 0;
  l.q_rot = off;
  off += Up(kVerticalSlashVariants * l.nl * h * d * 2);
  VerticalSlashScoreArgs s;
  s.num_queries = l.nl;
  s.q_heads = h;
  s.key_end = e;
  const VerticalSlashPartRange succ =
      VerticalSlashPartKeys(e, x.p, a.chunk_len, kVerticalSlashSucc);
  s.intra_begin = x.p;
  s.succ_begin = succ.present ? succ.key_begin : x.p;
  l.score_ws = off;
  off += Up(VerticalSlashScoresWorkspaceBytes(s));
  l.common_end = off;
  l.vertical = off;
  off += Up(h * e * 4);
  l.slash = off;
  off += Up(h * e * 4);
  l.k = TopKSizes(a, e);
  for (int part = 0; part < 3; ++part) {
    const VerticalSlashPartRange r = VerticalSlashPartKeys(e, x.p, a.chunk_len, part);
    l.present[part] = r.present;
    if (!r.present) continue;
    l.list[part] = off;
    off += Up((2 * h * l.list_capacity + 2 * h) * 4);
    l.max_blocks[part] = cpu::VerticalSlashBlockCapacity(l.list_capacity, r.num_keys());
    l.spans[part] = off;
    off += Up(h * int64_t(sizeof(VerticalSlashHeadSpan)));
    // Per-head layout: each head's row blocks sized by its own top-k sizes.
    const VerticalSlashSpanEntries n =
        VerticalSlashHeadSpanEntries(l.k.data(), h, l.row_blocks, r.num_keys());
    l.index_blocks[part] = n.blocks;
    l.index[part] = off;
    off += Up((2 * h * l.row_blocks + n.blocks + n.columns) * 4);
  }
  l.total = off;
  return l;
}

// The run's workspace: the common part of the largest piece, then every piece's own part.
struct RunLayout {
  std::vector<Piece> pieces;
  std::vector<Layout> layouts;     // one per piece
  std::vector<int64_t> own_shift;  // piece i's own offsets are at workspace + offset + shift
  int64_t total = 0;
};

RunLayout MakeRunLayout(const VerticalSlashPrefillArgs& a) {
  RunLayout r;
  r.pieces = Pieces(a);
  int64_t off = 0;
  for (const Piece& x : r.pieces) {
    r.layouts.push_back(MakeLayout(a, x));
    off = std::max(off, r.layouts.back().common_end);
  }
  for (const Layout& l : r.layouts) {
    r.own_shift.push_back(off - l.common_end);
    off += l.total - l.common_end;
  }
  r.total = off;
  return r;
}

VerticalSlashPieceBuffers Buffers(const VerticalSlashPrefillArgs& a, const RunLayout& run, int i,
                                  void* ws) {
  const Piece& x = run.pieces[size_t(i)];
  const Layout& l = run.layouts[size_t(i)];
  char* common = static_cast<char*>(ws);
  char* base = common + run.own_shift[size_t(i)];  // at l.common_end: this piece's own part
  VerticalSlashPieceBuffers p;
  p.piece_begin = x.b;
  p.piece_end = x.e;
  p.chunk_begin = x.p;
  p.estimate_rows = l.nl;
  p.q_rot = reinterpret_cast<__nv_bfloat16*>(common + l.q_rot);
  p.vertical = reinterpret_cast<float*>(base + l.vertical);
  p.slash = reinterpret_cast<float*>(base + l.slash);
  p.score_workspace = common + l.score_ws;
  p.list_capacity = l.list_capacity;
  const int64_t h = a.q_heads, cap = l.list_capacity, rbs = l.row_blocks;
  for (int part = 0; part < 3; ++part) {
    if (!l.present[part]) continue;
    auto* li = reinterpret_cast<int32_t*>(base + l.list[part]);
    VerticalSlashListsDev& lists = p.lists[part];
    lists.vertical = li;
    lists.slash = li + h * cap;
    lists.vertical_count = li + 2 * h * cap;
    lists.slash_count = li + 2 * h * cap + h;
    lists.vertical_capacity = cap;
    lists.slash_capacity = cap;
    auto* ix = reinterpret_cast<int32_t*>(base + l.index[part]);
    VerticalSlashIndexDev& index = p.index[part];
    index.block_count = ix;
    index.column_count = ix + h * rbs;
    index.block_offset = ix + 2 * h * rbs;
    index.column_index = index.block_offset + l.index_blocks[part];
    index.max_blocks = l.max_blocks[part];
    index.max_columns = cap;
    p.head_spans[part] = reinterpret_cast<VerticalSlashHeadSpan*>(base + l.spans[part]);
    index.heads = p.head_spans[part];
  }
  return p;
}

}  // namespace

std::string VerticalSlashPrefillUnsupported(const VerticalSlashPrefillArgs& a) {
  constexpr int64_t kMaxPosition = int64_t(1) << 30;
  if (a.kv.head_dim != 64 && a.kv.head_dim != 128) {
    return "head_dim " + Num(a.kv.head_dim) + " is not supported (64 or 128)";
  }
  if (a.kv.kv_heads <= 0 || a.q_heads <= 0 || a.q_heads % a.kv.kv_heads != 0 ||
      a.q_heads > kVerticalSlashMaxHeads) {
    return "q_heads (" + Num(a.q_heads) + ") must be a positive multiple of kv_heads (" +
           Num(a.kv.kv_heads) + ") up to " + Num(kVerticalSlashMaxHeads);
  }
  if (a.num_queries < 0 || a.query_begin < 0 || a.query_begin + a.num_queries > kMaxPosition) {
    return "queries [" + Num(a.query_begin) + ", " + Num(a.query_begin + a.num_queries) +
           ") must lie in [0, 2^30]";
  }
  if (a.last_q < 1 || a.last_q > kVerticalSlashMaxLastQ) {
    return "last_q " + Num(a.last_q) + " must be in [1, 64]";
  }
  if (a.chunk_size < 0 ||
      (a.chunk_size > 0 && (a.chunk_len <= 0 || a.chunk_len % 64 != 0 ||
                            a.chunk_len > a.chunk_size || a.chunk_size > kMaxPosition))) {
    return "chunk_len " + Num(a.chunk_len) +
           " must be a positive multiple of 64 up to chunk_size " + Num(a.chunk_size) +
           " <= 2^30 (chunk_size 0: no DCA)";
  }
  if (!(a.scale > 0.0f) || !std::isfinite(a.scale)) return "scale must be positive and finite";
  if (!(a.rope_theta > 1.0) || !std::isfinite(a.rope_theta)) return "rope_theta must be > 1";
  if (a.kv.block_size <= 0 || a.kv.num_blocks <= 0) {
    return "block_size and num_blocks must be positive";
  }
  if (a.budgets == nullptr) return "budgets must be given";
  for (int64_t i = 0; i < 2 * a.q_heads; ++i) {
    if (a.budgets[i] <= 0 || a.budgets[i] > 2147483647) {
      return "budget " + Num(a.budgets[i]) + " of head " + Num(i / 2) + " must be in [1, 2^31 - 1]";
    }
  }
  if (a.num_queries == 0) return "";
  if (a.q == nullptr || a.out == nullptr || a.kv.k == nullptr || a.kv.v == nullptr ||
      a.kv.block_table == nullptr) {
    return "q, out, kv.k, kv.v and kv.block_table must be non-null";
  }
  return "";
}

int64_t VerticalSlashPrefillWorkspaceBytes(const VerticalSlashPrefillArgs& a) {
  if (!VerticalSlashPrefillUnsupported(a).empty()) return 0;
  return MakeRunLayout(a).total;
}

namespace {

// `shape` with placeholders for what a geometry check does not look at.
VerticalSlashPrefillArgs GeometryOf(const VerticalSlashPrefillArgs& shape) {
  VerticalSlashPrefillArgs a = shape;
  a.num_queries = 0;
  a.query_begin = 0;
  a.scale = 1.0f;
  a.rope_theta = 10000.0;
  a.kv.block_size = 64;
  a.kv.num_blocks = 1;
  return a;
}

}  // namespace

std::string VerticalSlashPrefillGeometryUnsupported(const VerticalSlashPrefillArgs& shape) {
  return VerticalSlashPrefillUnsupported(GeometryOf(shape));
}

int64_t VerticalSlashPrefillMaxWorkspaceBytes(const VerticalSlashPrefillArgs& shape,
                                              int64_t max_queries, int64_t max_keys) {
  VerticalSlashPrefillArgs a = GeometryOf(shape);
  if (max_queries < 1 || max_keys < 1 || !VerticalSlashPrefillUnsupported(a).empty()) return 0;
  const int64_t n = std::min(max_queries, max_keys);
  // Candidate ends. A run inside one DCA chunk needs more the later it ends: the chunk's end and
  // max_keys. A run of n <= C queries that crosses the boundary B puts r queries after it and
  // n - r before it. Where both pieces have 64 rows or more, their estimation rows are last_q,
  // their row blocks ceil(r / 64) and ceil((n - r) / 64) are constant between the candidates
  // r = 64 j and r = n - 1 - 64 i, and the rest grows with the end; the pieces with fewer than 64
  // rows (r or n - r below 64) are taken one by one. Runs longer than a DCA chunk (three pieces
  // or more: small DCA chunks) are taken at every end past the first chunk.
  std::vector<int64_t> ends = {max_keys};
  if (a.chunk_size > 0 && n > a.chunk_len) {
    for (int64_t e = a.chunk_len; e < max_keys; ++e) ends.push_back(e);
  } else if (a.chunk_size > 0) {
    for (int64_t boundary = a.chunk_len; boundary < max_keys; boundary += a.chunk_len) {
      ends.push_back(boundary);
      for (int64_t r = 1; r < n; ++r) {
        const bool edge = r <= 64 || r >= n - 64 || r % 64 == 0 || (n - 1 - r) % 64 == 0;
        if (edge) ends.push_back(boundary + r);
      }
    }
  }
  std::sort(ends.begin(), ends.end());
  ends.erase(std::unique(ends.begin(), ends.end()), ends.end());
  int64_t need = 0;
  for (const int64_t e : ends) {
    if (e < 1 || e > max_keys) continue;
    a.num_queries = std::min(n, e);
    a.query_begin = e - a.num_queries;
    need = std::max(need, MakeRunLayout(a).total);
  }
  return need;
}

int64_t VerticalSlashPrefillNumPieces(const VerticalSlashPrefillArgs& a) {
  return static_cast<int64_t>(Pieces(a).size());
}

VerticalSlashPieceBuffers VerticalSlashPrefillPiece(const VerticalSlashPrefillArgs& a,
                                                    void* workspace, int piece_index) {
  if (!VerticalSlashPrefillUnsupported(a).empty()) return {};
  const RunLayout run = MakeRunLayout(a);
  if (run.pieces.empty()) return {};
  const int i = piece_index < 0 ? int(run.pieces.size()) - 1 : piece_index;
  if (i >= int(run.pieces.size())) return {};
  return Buffers(a, run, i, workspace);
}

namespace {

// A stage run once for all pieces: the (start, end) pair `event` of every piece but the last
// recorded back to back (zero time), then the last piece's start.
template <class Mark>
cudaError_t MarkEmpty(const Mark& mark, int num_pieces, int event) {
  for (int pi = 0; pi + 1 < num_pieces; ++pi) {
    cudaError_t err = mark(pi, event);
    if (err != cudaSuccess || (err = mark(pi, event + 1)) != cudaSuccess) return err;
  }
  return mark(num_pieces - 1, event);
}

}  // namespace

cudaError_t VerticalSlashPrefill(const VerticalSlashPrefillArgs& a, void* workspace,
                                 int64_t workspace_bytes, cudaStream_t stream) {
  if (!VerticalSlashPrefillUnsupported(a).empty()) return cudaErrorInvalidValue;
  if (a.num_queries == 0) return cudaSuccess;
  const RunLayout run = MakeRunLayout(a);
  if (workspace == nullptr || workspace_bytes < run.total) return cudaErrorInvalidValue;
  const int64_t h = a.q_heads, d = a.kv.head_dim;
  const bool dca = a.chunk_size > 0;
  const int num_pieces = int(run.pieces.size());
  auto mark = [&](int piece, int event) -> cudaError_t {
    if (a.stage_events == nullptr) return cudaSuccess;
    return cudaEventRecord(a.stage_events[piece * kVerticalSlashStageEvents + event], stream);
  };
  std::vector<VerticalSlashPieceBuffers> bufs;
  for (int pi = 0; pi < num_pieces; ++pi) bufs.push_back(Buffers(a, run, pi, workspace));

  // 1-2. Per piece: rotation and scores (they share the rotated queries and the score
  // workspace, so one piece after the other); each piece's scores stay in its own part.
  for (int pi = 0; pi < num_pieces; ++pi) {
    const Piece& x = run.pieces[size_t(pi)];
    const VerticalSlashPieceBuffers& buf = bufs[size_t(pi)];
    cudaError_t err = mark(pi, 0);
    if (err != cudaSuccess) return err;
    const int64_t nl = buf.estimate_rows;
    const VerticalSlashPartRange succ =
        VerticalSlashPartKeys(x.e, x.p, a.chunk_len, kVerticalSlashSucc);
    const VerticalSlashPartRange inter =
        VerticalSlashPartKeys(x.e, x.p, a.chunk_len, kVerticalSlashInter);

    VerticalSlashRotateArgs rot;
    rot.q = a.q + (x.e - nl - a.query_begin) * h * d;
    rot.out = buf.q_rot;
    rot.num_queries = nl;
    rot.q_heads = h;
    rot.head_dim = d;
    rot.first_position = x.e - nl;
    rot.chunk_len = dca ? a.chunk_len : 0;
    rot.chunk_size = a.chunk_size;
    rot.rope_theta = a.rope_theta;
    rot.succ = succ.present;
    rot.inter = inter.present;
    err = VerticalSlashRotateQueries(rot, stream);
    if (err != cudaSuccess) return err;

    VerticalSlashScoreArgs sc;
    sc.q = buf.q_rot;
    sc.kv = a.kv;
    sc.num_queries = nl;
    sc.q_heads = h;
    sc.key_end = x.e;
    sc.intra_begin = x.p;
    sc.succ_begin = succ.present ? succ.key_begin : x.p;
    sc.scale = a.scale;
    sc.vertical = buf.vertical;
    sc.slash = buf.slash;
    err = VerticalSlashScores(sc, buf.score_workspace, stream);
    if (err != cudaSuccess) return err;
    if ((err = mark(pi, 1)) != cudaSuccess) return err;
  }

  // 3. The selection of every piece, up to kVerticalSlashSelectMaxPieces per launch (its time
  // reported on the last piece).
  std::vector<VerticalSlashSelectArgs> sel(static_cast<size_t>(num_pieces));
  for (int pi = 0; pi < num_pieces; ++pi) {
    const Piece& x = run.pieces[size_t(pi)];
    const VerticalSlashPieceBuffers& buf = bufs[size_t(pi)];
    VerticalSlashSelectArgs& s = sel[size_t(pi)];
    s.vertical = buf.vertical;
    s.slash = buf.slash;
    s.q_heads = h;
    s.piece_begin = x.b;
    s.piece_end = x.e;
    s.chunk_begin = x.p;
    s.chunk_len = a.chunk_len;
    s.budgets = a.budgets;
    for (int part = 0; part < 3; ++part) s.parts[part] = buf.lists[part];
  }
  if (cudaError_t err = MarkEmpty(mark, num_pieces, 2); err != cudaSuccess) return err;
  for (int i = 0; i < num_pieces; i += kVerticalSlashSelectMaxPieces) {
    const int n = std::min(kVerticalSlashSelectMaxPieces, num_pieces - i);
    if (cudaError_t err = VerticalSlashSelect(sel.data() + i, n, stream); err != cudaSuccess) {
      return err;
    }
  }
  if (cudaError_t err = mark(num_pieces - 1, 3); err != cudaSuccess) return err;

  // 4. The index of every part of every piece: span tables per piece, then the parts in as few
  // launches as the builder takes (a chunk that crosses a DCA chunk boundary is two pieces, up to
  // 4 parts: one launch). Its time is reported on the last piece.
  cudaError_t err = MarkEmpty(mark, num_pieces, 4);
  if (err != cudaSuccess) return err;
  std::vector<VerticalSlashIndexArgs> parts;
  for (int pi = 0; pi < num_pieces; ++pi) {
    const Piece& x = run.pieces[size_t(pi)];
    const VerticalSlashPieceBuffers& buf = bufs[size_t(pi)];
    const int64_t qn = x.e - x.b;
    VerticalSlashHeadSpanArgs spans;
    spans.k = run.layouts[size_t(pi)].k.data();
    spans.q_heads = h;
    spans.row_blocks = cpu::VerticalSlashRowBlocks(qn);
    for (int part = 0; part < 3; ++part) {
      const VerticalSlashPartRange r = VerticalSlashPartKeys(x.e, x.p, a.chunk_len, part);
      if (!r.present) continue;
      spans.kv_len[spans.num_parts] = r.num_keys();
      spans.spans[spans.num_parts++] = buf.head_spans[part];
      VerticalSlashIndexArgs i;
      i.lists = buf.lists[part];
      i.q_heads = h;
      i.q_len = qn;
      i.kv_len = r.num_keys();
      i.causal = r.causal;
      i.index = buf.index[part];
      parts.push_back(i);
    }
    if ((err = WriteVerticalSlashHeadSpans(spans, stream)) != cudaSuccess) return err;
  }
  for (size_t i = 0; i < parts.size(); i += kVerticalSlashIndexMaxParts) {
    const int n = int(std::min<size_t>(kVerticalSlashIndexMaxParts, parts.size() - i));
    if ((err = BuildVerticalSlashIndex(parts.data() + i, n, stream)) != cudaSuccess) return err;
  }
  if ((err = mark(num_pieces - 1, 5)) != cudaSuccess) return err;

  // 5. Attention, piece by piece (all parts of a piece in one kernel).
  for (int pi = 0; pi < num_pieces; ++pi) {
    const Piece& x = run.pieces[size_t(pi)];
    const VerticalSlashPieceBuffers& buf = bufs[size_t(pi)];
    if ((err = mark(pi, 6)) != cudaSuccess) return err;
    VerticalSlashAttentionArgs at;
    for (int part = 0; part < 3; ++part) at.index[part] = buf.index[part];  // null when absent
    const int64_t row0 = x.b - a.query_begin;
    at.q = a.q + row0 * h * d;
    at.kv = a.kv;
    at.out = a.out + row0 * h * d;
    at.lse = a.lse != nullptr ? a.lse + row0 : nullptr;
    at.lse_stride = a.num_queries;
    at.q_heads = h;
    at.piece_begin = x.b;
    at.piece_end = x.e;
    at.chunk_begin = x.p;
    at.chunk_len = dca ? a.chunk_len : 0;
    at.chunk_size = a.chunk_size;
    at.rope_theta = a.rope_theta;
    at.scale = a.scale;
    err = VerticalSlashAttention(at, stream);
    if (err != cudaSuccess) return err;
    if ((err = mark(pi, 7)) != cudaSuccess) return err;
  }
  return cudaSuccess;
}

}  // namespace mp::cuda
