// Work items of the sm_90a prefill kernel with 2-CTA clusters (PrefillConfig::kCluster == 2):
// which query tile and query head each CTA computes. Header-only, plain C++ usable from host and
// device code (shared by the kernel, its launcher and the host-side tests).
//
// Work items of one KV head come in the usual order (query tiles descending, so the longest
// causal rows start first; query heads of the KV head fastest) and are taken two per cluster:
// CTAs 2c and 2c + 1 get items 2k and 2k + 1 of one KV head, so they read the same K/V tiles.
// When a KV head has an odd number of items, its last cluster pairs the last item with a copy
// of itself that computes but writes nothing.
#pragma once

#include "kernels/cuda/dca_positions.h"  // MP_CUDA_HD

namespace mp::cuda {

struct PairedWorkItem {
  int m_tile = 0;
  int q_head = 0;
  bool writes = true;
  int partner_m_tile = 0;  // the query tile of the other CTA of the cluster
};

// CTAs of the grid: 2 per pair of items, for every KV head.
MP_CUDA_HD inline long long PairedGridSize(int num_m_tiles, int group, int kv_heads) {
  const long long per_kv_head = static_cast<long long>(num_m_tiles) * group;
  return 2 * kv_heads * ((per_kv_head + 1) / 2);
}

// The item of CTA `cta` (blockIdx.x; its rank in the cluster is cta % 2).
MP_CUDA_HD inline PairedWorkItem PairedWorkItemOf(int cta, int num_m_tiles, int group) {
  const int per_kv_head = num_m_tiles * group;
  const int pairs_per_kv_head = (per_kv_head + 1) / 2;
  const int pair = cta / 2;
  const int rank = cta % 2;
  const int first = pair % pairs_per_kv_head * 2;
  int item = first + rank;
  int other = first + (1 - rank);
  PairedWorkItem w;
  if (item >= per_kv_head) {
    item = first;
    w.writes = false;
  }
  if (other >= per_kv_head) other = first;
  w.m_tile = num_m_tiles - 1 - item / group;
  w.q_head = pair / pairs_per_kv_head * group + item % group;
  w.partner_m_tile = num_m_tiles - 1 - other / group;
  return w;
}

}  // namespace mp::cuda
