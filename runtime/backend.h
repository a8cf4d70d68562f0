// Backend: the device seam of the engine. Every op the stage executor runs goes through it.
// CpuBackend (fp32, the reference) and CudaBackend (runtime/cuda_backend.h: bf16 storage, fp32
// accumulation, one Hopper GPU) implement it; runtime/backend_factory.h picks one by name.
//
// Ops validate shapes/dtypes and return INVALID_ARGUMENT naming the tensor and the expected
// shape before doing any work. All tensors passed to an op must live on this backend's device
// (ids and positions may also be host tensors). Ops may run asynchronously on device backends;
// Synchronize() waits for them.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "runtime/tensor.h"

namespace mp {

// One layer of a paged KV cache plus one sequence's block table.
struct KvLayerView {
  Tensor k;            // [num_blocks, kv_heads, block_size, head_dim]
  Tensor v;            // [num_blocks, kv_heads, block_size, head_dim]
  Tensor block_table;  // [max_blocks_per_seq] i32: the sequence's blocks, in order
  int64_t block_size = 0;
};

struct AttentionParams {
  const Tensor* q = nullptr;  // [n, q_heads, head_dim]
  KvLayerView kv;
  int64_t key_begin = 0;  // keys [key_begin, key_end) of the sequence take part
  int64_t key_end = 0;
  bool causal = true;     // bottom-right: query row i sees keys j <= key_end - n + i
  float scale = 1.0f;
  Tensor* out = nullptr;  // [n, q_heads, head_dim]
  Tensor* lse = nullptr;  // [q_heads, n] f32, may be null when not needed
};

// Dual chunk attention (qwen1m-spec.md §2, the Qwen/vLLM semantics) of a run of queries of one
// sequence, prefill or decode. The CPU reference is kernels/cpu/dca_attention.h; device backends
// implement exactly this contract.
//
//   * q [n, q_heads, head_dim] is NOT rotated. Query i is the token at absolute position
//     p_i = query_begin + i (a contiguous run; decode is n = 1).
//   * kv holds the sequence's keys [0, query_begin + n) (the run's own K/V written first). The
//     cached K of token j is rotated by RoPE position j mod C (NeoX rotate-half over head_dim,
//     rope_theta, fp32 angles) and NOT multiplied by the temperature.
//   * Query i attends to every key j <= p_i, in three disjoint regions by DCA chunk
//     c(x) = floor(x / C), each with its own rotation of q_i:
//        intra  c(j) == c(p_i)       (causal)  Q rotated by p_i mod C
//        succ   c(j) == c(p_i) - 1             Q rotated by min(p_i mod C + C, S)
//        inter  c(j) <  c(p_i) - 1             Q rotated by min(2C - 1, S)
//     logit(i, j) = scale * temperature^2 * (R(pos_q) q_i) . k_j; the output is the softmax
//     over all those keys (one online softmax, or per-region parts merged exactly by
//     log-sum-exp in fp32; an empty region counts as (0, -inf)). A run that crosses a multiple
//     of C is split there (each piece has its own regions).
//   * temperature is the YaRN m(L) = max(1, 0.1 ln(L / L0) + 1) (kernels/cpu/dca_positions.h):
//     the softmax-scale form of spec §2.7, with L the request's prompt length in prefill and the
//     current length in decode; 1 inside the training length.
//   * out [n, q_heads, head_dim]; lse [q_heads, n] f32 (optional): natural-log sum of
//     exp(logit) over the keys of each query.
//   * Requirements: 0 < chunk_len <= chunk_size, chunk_len % kv.block_size == 0, chunk_size fits
//     int32, q_heads a multiple of kv_heads, temperature finite and > 0.
struct DcaAttentionParams {
  const Tensor* q = nullptr;  // [n, q_heads, head_dim], not rotated
  KvLayerView kv;             // keys [0, query_begin + n), K rotated by j mod C
  int64_t query_begin = 0;    // absolute position of query 0
  int64_t chunk_size = 0;     // S (dual_chunk_attention_config.chunk_size)
  int64_t chunk_len = 0;      // C = chunk_size - local_size
  double rope_theta = 10000.0;
  float scale = 1.0f;        // usually 1 / sqrt(head_dim)
  float temperature = 1.0f;  // YaRN m(L): logits carry scale * temperature^2
  Tensor* out = nullptr;     // [n, q_heads, head_dim]
  Tensor* lse = nullptr;     // [q_heads, n] f32, may be null when not needed
};

// Vertical-slash sparse prefill attention (qwen1m-spec.md §3.4-3.7, the Qwen/vLLM semantics) of
// a run of queries of one sequence, with DCA (chunk_size > 0, the regions and positions of
// DcaAttentionParams) or without (chunk_size 0: one causal region, absolute positions). The CPU
// reference is kernels/cpu/vertical_slash_prefill.h; device backends implement this contract.
//
//   * q [n, q_heads, head_dim] is NOT rotated; query i sits at position p_i = query_begin + i.
//     kv holds the keys [0, query_begin + n), K rotated by j mod C (by j without DCA), unscaled.
//   * The run is split into pieces at multiples of C. Per piece [b, e): the last
//     min(last_q, e - b) queries, rotated at the continuous positions (p mod C for intra keys,
//     p mod C + C for succ keys, p mod C + S for inter keys), score every key [0, e); the
//     column sums and diagonal sums of their softmax, with the first 30 keys and the last 100
//     diagonals forced, give per q head h the top budgets[h] = (vertical, slash) columns and
//     diagonals; they are split into the piece's DCA regions, turned into 64 x 64 block and
//     column indices, and each region attends only those keys (with its DCA query rotation);
//     the regions are merged exactly.
//   * logits carry scale * temperature^2; out [n, q_heads, head_dim]; lse [q_heads, n] f32
//     (optional): natural-log sum of exp(logit) over the attended keys.
//   * budgets: [q_heads, 2] effective budgets (vertical_size 30 already raised to 130), > 0.
//   * index_keys (optional, host [q_heads]): the op adds, per head, the keys its index gives the
//     n queries: for each query, 64 per listed block plus the listed columns of its 64-row block,
//     over the pieces and regions (whole blocks, so up to 63 keys past a row's causal limit
//     count). Over the sum of (p_i + 1) it is the density of the selection.
//   * Requirements: those of DcaAttentionParams when chunk_size > 0; last_q in [1, 64].
struct VerticalSlashAttentionParams {
  const Tensor* q = nullptr;  // [n, q_heads, head_dim], not rotated
  KvLayerView kv;             // keys [0, query_begin + n)
  int64_t query_begin = 0;
  int64_t chunk_size = 0;  // S; 0: no DCA
  int64_t chunk_len = 0;   // C = chunk_size - local_size
  double rope_theta = 10000.0;
  float scale = 1.0f;
  float temperature = 1.0f;  // YaRN m(L); 1 without DCA
  int64_t last_q = 64;
  std::span<const int64_t> budgets;  // [q_heads * 2]
  Tensor* out = nullptr;             // [n, q_heads, head_dim]
  Tensor* lse = nullptr;             // [q_heads, n] f32, may be null
  std::span<int64_t> index_keys;     // host [q_heads], added to; may be empty
};

// The largest vertical-slash prefill a stage will run, for Backend::ReserveVerticalSlashWorkspace:
// runs of at most max_queries queries ending anywhere in [1, max_keys], with each budget set
// (one per layer of the stage) and the DCA geometry of VerticalSlashAttentionParams.
struct VerticalSlashReservation {
  int64_t max_queries = 0;  // the longest chunk
  int64_t max_keys = 0;     // the longest sequence
  int64_t q_heads = 0;
  int64_t kv_heads = 0;
  int64_t head_dim = 0;
  int64_t chunk_size = 0;  // S; 0: no DCA
  int64_t chunk_len = 0;   // C = chunk_size - local_size
  int64_t last_q = 64;
  std::vector<std::span<const int64_t>> budgets;  // per layer: [q_heads * 2] effective budgets
};

class Backend {
 public:
  virtual ~Backend() = default;

  virtual DeviceKind device() const = 0;
  virtual std::string name() const = 0;
  // Storage/compute dtype of activations, KV and weights on this backend.
  virtual DType compute_dtype() const = 0;

  // ---- memory ----
  // Contents are unspecified on device backends (the CPU backend zero-fills). Failure to get
  // the memory is RESOURCE_EXHAUSTED naming the size.
  virtual absl::StatusOr<Tensor> Allocate(std::vector<int64_t> shape, DType dtype) = 0;
  // Converts a host weight (f32, f16 or bf16) to compute_dtype() on this device.
  virtual absl::StatusOr<Tensor> UploadWeight(const Tensor& host) = 0;
  // Byte copies between a host tensor and a tensor of this backend (same dtype and numel).
  virtual absl::Status CopyFromHost(const Tensor& host, Tensor& dst) = 0;
  virtual absl::Status CopyToHost(const Tensor& src, Tensor& host) = 0;
  // Byte copy between two tensors of this backend (same dtype and numel; must not overlap).
  virtual absl::Status Copy(const Tensor& src, Tensor& dst) = 0;
  // Copies and converts `src` (this backend) to a host f32 tensor of the same shape.
  virtual absl::StatusOr<Tensor> ToHostF32(const Tensor& src) = 0;
  virtual absl::Status Synchronize() = 0;

  // ---- ops ----
  // out[i] = table[ids[i]]; ids out of [0, vocab) is INVALID_ARGUMENT.
  virtual absl::Status Embedding(const Tensor& ids,    // [n] i32
                                 const Tensor& table,  // [vocab, hidden]
                                 Tensor& out) = 0;     // [n, hidden]
  virtual absl::Status RmsNorm(const Tensor& x,       // [n, d]
                               const Tensor& weight,  // [d]
                               float eps,
                               Tensor& out) = 0;  // [n, d]; may be x
  virtual absl::Status Add(Tensor& x, const Tensor& y) = 0;  // x += y, same shape
  virtual absl::Status Linear(const Tensor& x,     // [n, in]
                              const Tensor& w,     // [out, in]
                              const Tensor* bias,  // [out] or null
                              Tensor& y) = 0;      // [n, out]
  virtual absl::Status Rope(Tensor& x,               // [n, heads, head_dim], in place
                            const Tensor& positions,  // [n] i32
                            double theta) = 0;
  virtual absl::Status SiluMul(const Tensor& gate_up,  // [n, 2 * inter]
                               Tensor& out) = 0;       // [n, inter]
  // Writes n tokens of K/V at sequence positions [start, start + n).
  virtual absl::Status WriteKv(const Tensor& k,  // [n, kv_heads, head_dim]
                               const Tensor& v,  // [n, kv_heads, head_dim]
                               int64_t start, const KvLayerView& kv) = 0;
  virtual absl::Status Attention(const AttentionParams& params) = 0;
  // Dual chunk attention; see DcaAttentionParams. Backends without it return UNIMPLEMENTED.
  virtual absl::Status DcaAttention(const DcaAttentionParams& params) {
    return absl::UnimplementedError("DcaAttention: dual chunk attention is not implemented on the " +
                                    name() + " backend");
  }

  // Vertical-slash sparse prefill attention; see VerticalSlashAttentionParams. Backends without
  // it return UNIMPLEMENTED.
  virtual absl::Status VerticalSlashAttention(const VerticalSlashAttentionParams& params) {
    return absl::UnimplementedError(
        "VerticalSlashAttention: sparse prefill attention is not implemented on the " + name() +
        " backend");
  }

  // Sets aside now the workspace the largest sparse prefill of `r` needs, so that a stage that
  // cannot hold it fails when it is set up rather than at its first long prompt. Returns the
  // bytes held for it (kept until the backend is destroyed; later calls grow it as needed).
  // Backends that need no such workspace return 0 (the default); RESOURCE_EXHAUSTED when it does
  // not fit, INVALID_ARGUMENT for a bad request.
  virtual absl::StatusOr<int64_t> ReserveVerticalSlashWorkspace(
      const VerticalSlashReservation& r) {
    (void)r;
    return 0;
  }

  // ---- sampling ----
  // One token from the last row of `logits` [rows, vocab] (this backend, compute dtype):
  // cpu::SampleGreedy when temperature == 0, else cpu::SampleTopP with `uniform` in [0, 1)
  // (kernels/cpu/sampling.h). Synchronizes. INVALID_ARGUMENT for a bad shape, a temperature
  // that is negative or not finite, or top_p outside (0, 1]. The default copies the row to the
  // host and runs the CPU sampler; device backends may sample in place.
  virtual absl::StatusOr<int32_t> SampleToken(const Tensor& logits, float temperature,
                                              float top_p, double uniform);
};

// OK when temperature is finite and >= 0 and top_p is in (0, 1]; else INVALID_ARGUMENT naming
// the parameter.
absl::Status ValidateSampling(float temperature, float top_p);

// The device-independent checks of VerticalSlashAttentionParams for n queries of q_heads heads:
// the DCA, position, scale and last_q ranges and the budgets; INVALID_ARGUMENT naming the field.
absl::Status ValidateVerticalSlashScalars(const VerticalSlashAttentionParams& params, int64_t n,
                                          int64_t q_heads);

// The fp32 reference backend on the host (kernels/cpu).
std::unique_ptr<Backend> NewCpuBackend();

}  // namespace mp
