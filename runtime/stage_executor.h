// StageExecutor: runs the layers [a, b) of a model over one chunk of one sequence.
//
// It holds the stage's weights uploaded to a Backend (the embedding when a == 0, the final norm
// and LM head when b == num_layers) and a KvCache for its layers. The same executor serves the
// single-process engine (one executor over all layers, or a chain of them), a pipeline worker
// (one slice per process) and decode (chunks of one token).
//
// RunChunk(seq, start, input) processes the tokens [start, start + n) of sequence `seq`, whose
// tokens [0, start) must already be in this executor's cache. The input is token ids [n] i32
// (first stage; a host tensor or one of the backend) or hidden states [n, hidden] in the
// backend's compute dtype (later stages). Per layer (pre-norm Qwen2 / Llama):
//
//   h = RMSNorm(x); q, k, v = Linear(h) (+bias); RoPE(q, k) at positions start..start+n-1;
//   K/V -> cache; a = causal attention of q over keys [0, start + n), scale 1/sqrt(head_dim);
//   x += o_proj(a) (+bias); x += down(silu(gate(RMSNorm(x))) * up(RMSNorm(x)))
//
// The output is the hidden states [n, hidden] (not the last stage) or, on the last stage, the
// logits of the last row [1, vocab], of all rows [n, vocab], or nothing (LogitsMode). Outputs
// live in the executor's scratch buffers: they stay valid until the next RunChunk. Scratch
// grows to the largest chunk seen and is reused; only the KV cache grows with the sequence.
//
// Dual chunk attention (config.dual_chunk; qwen1m-spec.md §2, Qwen/vLLM semantics): K is
// rotated by p mod C before it is cached, Q stays un-rotated and Backend::DcaAttention rotates it
// per key region (intra / succ / inter) and merges the parts. The YaRN temperature
// m(L) = max(1, 0.1 ln(L / L0) + 1) uses the softmax-scale form of spec §2.7: cached K is never
// scaled, the logits carry m(L)^2 with L = max(prompt_len, start + n) — the request's prompt
// length for every prefill chunk, the current length in decode. (vLLM instead pre-scales K by
// m(L) at write time; the two agree exactly in prefill and differ in decode only by
// m(L_now) / m(L_write) on older keys. The cache thus stays independent of the request length.)
// Where DCA is a no-op (start + n <= C and m = 1) the dense Backend::Attention runs instead: K
// is then rotated by p = p mod C and the result is the same.
//
// Vertical-slash sparse prefill (options.sparse; qwen1m-spec.md §3.3): when the settings say so
// for the request's prompt length (enabled, a head config, prompt_len > threshold), every chunk
// of the prompt (start < prompt_len) runs Backend::VerticalSlashAttention instead of the dense
// or DCA attention, with the layer's per-head budgets (30 -> 130 applied), the DCA constants and
// temperature when the model has DCA, and Q left un-rotated; decode chunks (start >= prompt_len)
// and prompts at or below the threshold are exactly the dense path.
//
// Recall instrumentation (options.recall_probe, runtime/sparse_recall_probe.h; the measurement of
// the sparsity refinement): every prompt chunk of a layer that has budget sets in the probe also
// runs Backend::VerticalSlashAttention once per set, as the sparse gate would with those budgets
// (same queries, cache, DCA constants and temperature), and hands the per-query
// exp(lse_sparse - lse_dense) to the probe; the layer's output stays the dense one. Without a
// probe this costs one pointer test per chunk.
//
// Not thread-safe: one thread runs an executor.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "model/config.h"
#include "model/sparse_attention_config.h"
#include "model/weights.h"
#include "runtime/backend.h"
#include "runtime/kv_cache.h"
#include "runtime/sparse_recall_probe.h"
#include "runtime/tensor.h"

namespace mp {

enum class LogitsMode {
  kLastRow,  // logits [1, vocab] of the chunk's last token
  kAllRows,  // logits [n, vocab] of every token of the chunk
  kNone,     // no LM head (e.g. a prefill chunk that is not the prompt's last); undefined output
};

struct StageExecutorOptions {
  KvCacheOptions kv_cache;
  // > 0: the MLP runs over the chunk in blocks of at most this many rows, so its [rows, 2 *
  // inter] intermediate (the largest activation: 2.5 GB for a 32K-token chunk of Qwen2.5-7B)
  // is sized by this instead of the chunk. 0: the whole chunk at once. The result is the same
  // up to the rounding of other GEMM shapes.
  int64_t mlp_block_rows = 0;
  // Sparse prefill settings (model/sparse_attention_config.h), or null for dense prefill. The
  // head config must match the model's layers and attention heads.
  std::shared_ptr<const SparsePrefillSettings> sparse;
  // Recall instrumentation (see the file comment), or null. Only with dense prefill: `sparse`
  // must then be null. The probe's layer and head counts must be the model's.
  std::shared_ptr<SparseRecallProbe> recall_probe;
};

// The geometry of a sparse prefill workspace reservation (Backend::ReserveVerticalSlashWorkspace)
// for `config`'s attention and DCA: chunks of up to max_queries queries over up to max_keys keys,
// no budget sets yet.
VerticalSlashReservation SparseReservationGeometry(const ModelConfig& config, int64_t last_q,
                                                   int64_t max_queries, int64_t max_keys);

class StageExecutor {
 public:
  // Uploads `weights` (layers weights.layers, with the embedding/head that range needs) to
  // `backend` and creates the stage's KV cache. INVALID_ARGUMENT names any missing tensor or
  // tensor of the wrong shape. `weights` may be dropped afterwards.
  static absl::StatusOr<std::unique_ptr<StageExecutor>> Create(const ModelConfig& config,
                                                               const ModelWeights& weights,
                                                               std::shared_ptr<Backend> backend,
                                                               const StageExecutorOptions& options);

  StageExecutor(const StageExecutor&) = delete;
  StageExecutor& operator=(const StageExecutor&) = delete;

  // Runs one chunk; see the file comment. `start` must equal the number of tokens of `seq`
  // already cached (FAILED_PRECONDITION otherwise); the sequence's KV reservation grows as
  // needed (RESOURCE_EXHAUSTED when the cache is full). On error the cached length is unchanged,
  // and a sequence the failed chunk would have started is not kept.
  // `prompt_len` is the request's total prompt length (>= 0; 0 = unknown): with DCA it sets the
  // YaRN temperature length L = max(prompt_len, start + n), so that every chunk of a chunked
  // prefill uses the same m. Without DCA it is ignored.
  absl::StatusOr<Tensor> RunChunk(uint64_t seq, int64_t start, const Tensor& input,
                                  LogitsMode logits = LogitsMode::kLastRow,
                                  int64_t prompt_len = 0);

  // Frees the KV of `seq` (NOT_FOUND when it holds none).
  absl::Status Release(uint64_t seq) { return kv_cache_->Release(seq); }

  bool is_first() const { return layers_.begin == 0; }
  bool is_last() const { return layers_.end == config_.num_hidden_layers; }
  LayerRange layers() const { return layers_; }
  const ModelConfig& config() const { return config_; }
  Backend& backend() const { return *backend_; }
  KvCache& kv_cache() const { return *kv_cache_; }
  // Bytes of activation scratch held now (a function of the largest chunk seen, not of the
  // sequence length).
  int64_t scratch_bytes() const;
  // With sparse prefill on, has the backend set aside the workspace of its largest sparse run
  // (Backend::ReserveVerticalSlashWorkspace over this stage's layers): chunks of up to
  // `max_chunk` tokens of prompts of up to `max_context` tokens (0: the KV cache's capacity).
  // Returns the bytes the backend holds for it; 0 when no prompt that long runs sparse, or the
  // backend needs no workspace. RESOURCE_EXHAUSTED when it does not fit.
  absl::StatusOr<int64_t> ReserveSparseWorkspace(int64_t max_chunk, int64_t max_context = 0);

 private:
  struct Layer {
    Tensor input_norm;              // [hidden]
    Tensor q_proj, k_proj, v_proj;  // [q_dim, hidden], [kv_dim, hidden], [kv_dim, hidden]
    Tensor q_bias, k_bias, v_bias;  // [q_dim], [kv_dim], [kv_dim]; undefined without bias
    Tensor o_proj;                  // [hidden, q_dim]
    Tensor o_bias;                  // [hidden]; undefined without bias
    Tensor post_norm;               // [hidden]
    Tensor gate_up;                 // [2 * inter, hidden]: gate rows, then up rows
    Tensor down_proj;               // [hidden, inter]
  };
  // Activation buffers with room for `rows` tokens.
  struct Scratch {
    int64_t rows = 0;
    Tensor x;          // [rows, hidden] the residual stream
    Tensor h;          // [rows, hidden] normed input of attention / MLP
    Tensor q;          // [rows, q_dim]
    Tensor k;          // [rows, kv_dim]
    Tensor v;          // [rows, kv_dim]
    Tensor attn;       // [rows, q_dim]
    Tensor proj;       // [rows, hidden] o_proj / down_proj output
    Tensor gate_up;    // [rows, 2 * inter]
    Tensor act;        // [rows, inter]
    Tensor logits;     // [rows, vocab] (last stage only)
    Tensor positions;  // [rows] i32, host
    Tensor lse_dense;  // [heads * rows] f32 (recall probe only)
    Tensor lse_sparse;  // [heads * rows] f32 (recall probe only)
  };

  StageExecutor() = default;
  absl::StatusOr<Tensor> Forward(uint64_t seq, int64_t start, const Tensor& input,
                                 LogitsMode logits, int64_t prompt_len);
  absl::Status EnsureScratch(int64_t rows);
  // `positions` are the RoPE positions of K (p mod C with DCA) and, on the dense path, of Q.
  // `dca_temperature` > 0 selects Backend::DcaAttention with that YaRN m; 0 the dense path.
  // `sparse_temperature` > 0 selects Backend::VerticalSlashAttention (with that YaRN m) instead.
  // `probe_temperature` > 0 runs the recall probe's budget sets (with that YaRN m).
  absl::Status RunLayer(const Layer& layer, int64_t layer_index, uint64_t seq, int64_t start,
                        int64_t n, const Tensor& positions, float dca_temperature,
                        float sparse_temperature, float probe_temperature);
  // The parameters of Backend::VerticalSlashAttention for this chunk (budgets and lse unset).
  VerticalSlashAttentionParams SparseParams(const Tensor& q3, const KvLayerView& kv, int64_t start,
                                            float temperature, Tensor& out) const;

  ModelConfig config_;
  StageExecutorOptions options_;
  LayerRange layers_;
  std::shared_ptr<Backend> backend_;
  std::shared_ptr<void> host_storage_;  // keeps aliased host weights alive
  std::unique_ptr<KvCache> kv_cache_;
  Tensor embed_tokens_;  // [vocab, hidden] (first stage)
  std::vector<Layer> layer_weights_;
  std::vector<std::vector<int64_t>> sparse_budgets_;  // per layer held: [heads * 2], or empty
  Tensor final_norm_;  // [hidden] (last stage)
  Tensor lm_head_;     // [vocab, hidden] (last stage)
  Scratch scratch_;
};

}  // namespace mp
