#include "runtime/stage_executor.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/status.h"
#include "kernels/cpu/dca_positions.h"

namespace mp {
namespace {

std::string ShapeText(const std::vector<int64_t>& shape) {
  return absl::StrCat("[", absl::StrJoin(shape, ", "), "]");
}

// Checks that host weight `name` exists with `shape`, then uploads it.
absl::StatusOr<Tensor> Upload(Backend& backend, const Tensor& host, const std::string& name,
                              const std::vector<int64_t>& shape) {
  if (!host.defined()) {
    return absl::InvalidArgumentError(
        absl::StrCat("weight ", name, " is missing (expected ", ShapeText(shape), ")"));
  }
  if (host.shape() != shape) {
    return absl::InvalidArgumentError(absl::StrCat(
        "weight ", name, " has shape ", host.ShapeString(), ", expected ", ShapeText(shape)));
  }
  absl::StatusOr<Tensor> uploaded = backend.UploadWeight(host);
  if (!uploaded.ok()) return Annotate(uploaded.status(), absl::StrCat("weight ", name));
  return uploaded;
}

// gate [inter, hidden] and up [inter, hidden] stacked into one host tensor [2 * inter, hidden].
absl::StatusOr<Tensor> StackGateUp(const Tensor& gate, const Tensor& up, const std::string& prefix,
                                   int64_t inter, int64_t hidden) {
  const std::vector<int64_t> shape = {inter, hidden};
  for (const auto& [t, name] : {std::pair{&gate, "gate_proj"}, std::pair{&up, "up_proj"}}) {
    if (!t->defined()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "weight ", prefix, name, ".weight is missing (expected ", ShapeText(shape), ")"));
    }
    if (t->shape() != shape) {
      return absl::InvalidArgumentError(absl::StrCat("weight ", prefix, name, ".weight has shape ",
                                                     t->ShapeString(), ", expected ",
                                                     ShapeText(shape)));
    }
  }
  if (gate.dtype() != up.dtype()) {
    return absl::InvalidArgumentError(
        absl::StrCat("weights ", prefix, "gate_proj.weight (", DTypeName(gate.dtype()), ") and ",
                     prefix, "up_proj.weight (", DTypeName(up.dtype()), ") differ in dtype"));
  }
  if (gate.device() != DeviceKind::kCpu || up.device() != DeviceKind::kCpu) {
    // Weights already on a device (e.g. generated there) are used in place when gate and up are
    // the two halves of one allocation.
    if (gate.device() == up.device() &&
        static_cast<const char*>(gate.data()) + gate.nbytes() == up.data()) {
      return Tensor::Wrap(gate.data(), {2 * inter, hidden}, gate.dtype(), gate.device(),
                          gate.owner());
    }
    return absl::InvalidArgumentError(
        absl::StrCat("weights ", prefix, "gate_proj/up_proj must be host tensors, or device "
                     "tensors that are adjacent halves of one allocation"));
  }
  Tensor stacked = Tensor::Host({2 * inter, hidden}, gate.dtype());
  std::memcpy(stacked.data(), gate.data(), gate.nbytes());
  std::memcpy(static_cast<char*>(stacked.data()) + gate.nbytes(), up.data(), up.nbytes());
  return stacked;
}

absl::Status ValidateConfig(const ModelConfig& c) {
  if (c.vocab_size <= 0 || c.hidden_size <= 0 || c.intermediate_size <= 0 ||
      c.num_hidden_layers <= 0 || c.num_attention_heads <= 0 || c.num_key_value_heads <= 0 ||
      c.head_dim <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("model config: vocab_size (", c.vocab_size, "), hidden_size (", c.hidden_size,
                     "), intermediate_size (", c.intermediate_size, "), num_hidden_layers (",
                     c.num_hidden_layers, "), num_attention_heads (", c.num_attention_heads,
                     "), num_key_value_heads (", c.num_key_value_heads, ") and head_dim (",
                     c.head_dim, ") must all be positive"));
  }
  if (c.num_attention_heads % c.num_key_value_heads != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("model config: num_attention_heads (", c.num_attention_heads,
                     ") must be a multiple of num_key_value_heads (", c.num_key_value_heads, ")"));
  }
  if (c.head_dim % 2 != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("model config: head_dim must be even for RoPE, got ", c.head_dim));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::unique_ptr<StageExecutor>> StageExecutor::Create(
    const ModelConfig& config, const ModelWeights& weights, std::shared_ptr<Backend> backend,
    const StageExecutorOptions& options) {
  if (backend == nullptr) return absl::InvalidArgumentError("stage executor: no backend given");
  MP_RETURN_IF_ERROR(ValidateConfig(config));
  if (config.dual_chunk.has_value()) {
    MP_RETURN_IF_ERROR(Annotate(ValidateDualChunkConfig(*config.dual_chunk),
                                "stage executor: dual chunk attention"));
  }
  const LayerRange layers = weights.layers;
  if (layers.begin < 0 || layers.end <= layers.begin || layers.end > config.num_hidden_layers) {
    return absl::InvalidArgumentError(absl::StrCat(
        "stage executor: layer range [", layers.begin, ", ", layers.end,
        ") is not a non-empty part of the model's ", config.num_hidden_layers, " layers"));
  }
  if (static_cast<int64_t>(weights.layer.size()) != layers.end - layers.begin) {
    return absl::InvalidArgumentError(absl::StrCat("stage executor: weights hold ",
                                                   weights.layer.size(), " layers for the range [",
                                                   layers.begin, ", ", layers.end, ")"));
  }

  if (options.mlp_block_rows < 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "stage executor: mlp_block_rows must be >= 0, got ", options.mlp_block_rows));
  }
  if (options.sparse != nullptr && options.sparse->heads.has_value()) {
    const SparseAttentionConfig& heads = *options.sparse->heads;
    if (heads.num_layers() != config.num_hidden_layers ||
        heads.num_heads() != config.num_attention_heads) {
      return absl::InvalidArgumentError(
          absl::StrCat("stage executor: the sparse attention config has ", heads.num_layers(),
                       " layers x ", heads.num_heads(), " heads, the model ",
                       config.num_hidden_layers, " x ", config.num_attention_heads));
    }
    if (options.sparse->last_q < 1 || options.sparse->last_q > kMaxSparseLastQ) {
      return absl::InvalidArgumentError(
          absl::StrCat("stage executor: sparse last_q must be in [1, ", kMaxSparseLastQ, "], got ",
                       options.sparse->last_q));
    }
  }
  if (options.recall_probe != nullptr) {
    const SparseRecallProbe& probe = *options.recall_probe;
    if (options.sparse != nullptr) {
      return absl::InvalidArgumentError(
          "stage executor: the recall probe measures against the dense prefill; sparse prefill "
          "settings must not be given with it");
    }
    if (probe.num_layers() != config.num_hidden_layers ||
        probe.q_heads() != config.num_attention_heads) {
      return absl::InvalidArgumentError(
          absl::StrCat("stage executor: the recall probe has ", probe.num_layers(), " layers x ",
                       probe.q_heads(), " heads, the model ", config.num_hidden_layers, " x ",
                       config.num_attention_heads));
    }
  }
  auto ex = std::unique_ptr<StageExecutor>(new StageExecutor());
  ex->config_ = config;
  ex->options_ = options;
  ex->layers_ = layers;
  ex->backend_ = backend;
  ex->host_storage_ = weights.storage;
  Backend& b = *backend;
  const int64_t hidden = config.hidden_size, inter = config.intermediate_size;
  const int64_t q_dim = config.q_dim(), kv_dim = config.kv_dim(), vocab = config.vocab_size;

  if (ex->is_first()) {
    MP_ASSIGN_OR_RETURN(ex->embed_tokens_, Upload(b, weights.embed_tokens,
                                                  "model.embed_tokens.weight", {vocab, hidden}));
  }
  for (int64_t i = layers.begin; i < layers.end; ++i) {
    const LayerWeights& w = weights.layer[i - layers.begin];
    const std::string p = absl::StrCat("model.layers.", i, ".");
    Layer l;
    MP_ASSIGN_OR_RETURN(l.input_norm,
                        Upload(b, w.input_norm, p + "input_layernorm.weight", {hidden}));
    MP_ASSIGN_OR_RETURN(l.q_proj,
                        Upload(b, w.q_proj, p + "self_attn.q_proj.weight", {q_dim, hidden}));
    MP_ASSIGN_OR_RETURN(l.k_proj,
                        Upload(b, w.k_proj, p + "self_attn.k_proj.weight", {kv_dim, hidden}));
    MP_ASSIGN_OR_RETURN(l.v_proj,
                        Upload(b, w.v_proj, p + "self_attn.v_proj.weight", {kv_dim, hidden}));
    if (config.attention_bias || w.q_bias.defined() || w.k_bias.defined() || w.v_bias.defined()) {
      MP_ASSIGN_OR_RETURN(l.q_bias, Upload(b, w.q_bias, p + "self_attn.q_proj.bias", {q_dim}));
      MP_ASSIGN_OR_RETURN(l.k_bias, Upload(b, w.k_bias, p + "self_attn.k_proj.bias", {kv_dim}));
      MP_ASSIGN_OR_RETURN(l.v_bias, Upload(b, w.v_bias, p + "self_attn.v_proj.bias", {kv_dim}));
    }
    MP_ASSIGN_OR_RETURN(l.o_proj,
                        Upload(b, w.o_proj, p + "self_attn.o_proj.weight", {hidden, q_dim}));
    if (config.o_proj_bias() || w.o_bias.defined()) {
      MP_ASSIGN_OR_RETURN(l.o_bias, Upload(b, w.o_bias, p + "self_attn.o_proj.bias", {hidden}));
    }
    MP_ASSIGN_OR_RETURN(l.post_norm, Upload(b, w.post_attention_norm,
                                            p + "post_attention_layernorm.weight", {hidden}));
    MP_ASSIGN_OR_RETURN(Tensor gate_up,
                        StackGateUp(w.gate_proj, w.up_proj, p + "mlp.", inter, hidden));
    MP_ASSIGN_OR_RETURN(l.gate_up,
                        Upload(b, gate_up, p + "mlp.gate_proj+up_proj", {2 * inter, hidden}));
    MP_ASSIGN_OR_RETURN(l.down_proj,
                        Upload(b, w.down_proj, p + "mlp.down_proj.weight", {hidden, inter}));
    ex->layer_weights_.push_back(std::move(l));
    if (options.sparse != nullptr && options.sparse->heads.has_value()) {
      ex->sparse_budgets_.push_back(EffectiveBudgets(options.sparse->heads->layers[i]));
    }
  }
  if (ex->is_last()) {
    MP_ASSIGN_OR_RETURN(ex->final_norm_,
                        Upload(b, weights.final_norm, "model.norm.weight", {hidden}));
    const Tensor& head = weights.lm_head.defined() || !config.tie_word_embeddings
                             ? weights.lm_head
                             : weights.embed_tokens;
    if (ex->embed_tokens_.defined() && head.data() == weights.embed_tokens.data()) {
      ex->lm_head_ = ex->embed_tokens_;  // tied: upload once
    } else {
      MP_ASSIGN_OR_RETURN(ex->lm_head_, Upload(b, head, "lm_head.weight", {vocab, hidden}));
    }
  }
  MP_ASSIGN_OR_RETURN(ex->kv_cache_, KvCache::Create(backend, config, layers, options.kv_cache));
  return ex;
}

absl::Status StageExecutor::EnsureScratch(int64_t rows) {
  if (rows <= scratch_.rows) return absl::OkStatus();
  Backend& b = *backend_;
  const DType dt = b.compute_dtype();
  const int64_t hidden = config_.hidden_size;
  Scratch s;
  s.rows = rows;
  MP_ASSIGN_OR_RETURN(s.x, b.Allocate({rows, hidden}, dt));
  MP_ASSIGN_OR_RETURN(s.h, b.Allocate({rows, hidden}, dt));
  MP_ASSIGN_OR_RETURN(s.q, b.Allocate({rows, config_.q_dim()}, dt));
  MP_ASSIGN_OR_RETURN(s.k, b.Allocate({rows, config_.kv_dim()}, dt));
  MP_ASSIGN_OR_RETURN(s.v, b.Allocate({rows, config_.kv_dim()}, dt));
  MP_ASSIGN_OR_RETURN(s.attn, b.Allocate({rows, config_.q_dim()}, dt));
  MP_ASSIGN_OR_RETURN(s.proj, b.Allocate({rows, hidden}, dt));
  const int64_t mlp_rows =
      options_.mlp_block_rows > 0 ? std::min(rows, options_.mlp_block_rows) : rows;
  MP_ASSIGN_OR_RETURN(s.gate_up, b.Allocate({mlp_rows, 2 * config_.intermediate_size}, dt));
  MP_ASSIGN_OR_RETURN(s.act, b.Allocate({mlp_rows, config_.intermediate_size}, dt));
  s.positions = Tensor::Host({rows}, DType::kI32);
  if (options_.recall_probe != nullptr) {
    MP_ASSIGN_OR_RETURN(s.lse_dense, b.Allocate({config_.num_attention_heads * rows}, DType::kF32));
    MP_ASSIGN_OR_RETURN(s.lse_sparse,
                        b.Allocate({config_.num_attention_heads * rows}, DType::kF32));
  }
  s.logits = std::move(scratch_.logits);  // sized on its own: see RunChunk
  scratch_ = std::move(s);
  return absl::OkStatus();
}

int64_t StageExecutor::scratch_bytes() const {
  int64_t total = 0;
  for (const Tensor* t :
       {&scratch_.x, &scratch_.h, &scratch_.q, &scratch_.k, &scratch_.v, &scratch_.attn,
        &scratch_.proj, &scratch_.gate_up, &scratch_.act, &scratch_.logits, &scratch_.positions,
        &scratch_.lse_dense, &scratch_.lse_sparse}) {
    if (t->defined()) total += static_cast<int64_t>(t->nbytes());
  }
  return total;
}

absl::StatusOr<Tensor> StageExecutor::RunChunk(uint64_t seq, int64_t start, const Tensor& input,
                                               LogitsMode logits, int64_t prompt_len) {
  const bool new_sequence = !kv_cache_->Contains(seq);
  absl::StatusOr<Tensor> out = Forward(seq, start, input, logits, prompt_len);
  // A sequence that a failed chunk created holds nothing worth keeping.
  if (!out.ok() && new_sequence && kv_cache_->Contains(seq)) {
    kv_cache_->Release(seq).IgnoreError();
  }
  return out;
}

absl::StatusOr<Tensor> StageExecutor::Forward(uint64_t seq, int64_t start, const Tensor& input,
                                              LogitsMode logits, int64_t prompt_len) {
  Backend& b = *backend_;
  const int64_t hidden = config_.hidden_size;
  if (input.rank() < 1) {
    return absl::InvalidArgumentError("RunChunk: input is undefined");
  }
  const int64_t n = input.dim(0);
  if (is_first()) {
    if (input.rank() != 1 || input.dtype() != DType::kI32) {
      return absl::InvalidArgumentError(absl::StrCat(
          "RunChunk: the first stage takes token ids [n] i32, got ", input.ShapeString()));
    }
  } else if (input.rank() != 2 || input.dim(1) != hidden || input.dtype() != b.compute_dtype() ||
             input.device() != b.device()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "RunChunk: stage [", layers_.begin, ", ", layers_.end, ") takes hidden states [n, ", hidden,
        "] ", DTypeName(b.compute_dtype()), " on ", DeviceName(b.device()), ", got ",
        input.ShapeString(), " on ", DeviceName(input.device())));
  }
  if (n < 1) return absl::InvalidArgumentError("RunChunk: the chunk is empty");
  if (start < 0) {
    return absl::InvalidArgumentError(absl::StrCat("RunChunk: start must be >= 0, got ", start));
  }
  const int64_t end = start + n;
  if (end > std::numeric_limits<int32_t>::max()) {
    return absl::InvalidArgumentError(
        absl::StrCat("RunChunk: positions up to ", end, " exceed the int32 range"));
  }
  if (prompt_len < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("RunChunk: prompt_len must be >= 0, got ", prompt_len));
  }
  const int64_t cached = kv_cache_->Length(seq);
  if (start != cached) {
    return absl::FailedPreconditionError(absl::StrCat("RunChunk: sequence ", seq, " has ", cached,
                                                      " tokens cached, but the chunk "
                                                      "starts at position ",
                                                      start));
  }
  MP_RETURN_IF_ERROR(kv_cache_->Reserve(seq, end));
  MP_RETURN_IF_ERROR(EnsureScratch(n));

  Tensor x = scratch_.x.Slice(0, n);
  if (is_first()) {
    MP_RETURN_IF_ERROR(b.Embedding(input, embed_tokens_, x));
  } else {
    MP_RETURN_IF_ERROR(b.Copy(input, x));
  }
  // RoPE positions of K (and of Q on the dense path): p, or p mod C with DCA.
  Tensor positions = scratch_.positions.Slice(0, n);
  int32_t* pos = positions.data_as<int32_t>();
  float dca_temperature = 0.0f;  // 0: dense attention
  if (config_.dual_chunk.has_value()) {
    const DualChunkConfig& dca = *config_.dual_chunk;
    const int64_t chunk_len = dca.chunk_len();
    for (int64_t i = 0; i < n; ++i) {
      pos[i] = static_cast<int32_t>(cpu::DcaKeyPosition(start + i, chunk_len));
    }
    const double m = cpu::YarnTemperature(std::max(prompt_len, end),
                                          dca.original_max_position_embeddings);
    // Below the chunk length with m = 1, DCA is exactly the dense attention (spec §2.8).
    if (end > chunk_len || m != 1.0) dca_temperature = static_cast<float>(m);
  } else {
    for (int64_t i = 0; i < n; ++i) pos[i] = static_cast<int32_t>(start + i);
  }

  // The YaRN m of the sparse op: the DCA temperature (also where DCA itself is a no-op), 1
  // without DCA.
  auto sparse_m = [&] {
    if (!config_.dual_chunk.has_value()) return 1.0f;
    return static_cast<float>(cpu::YarnTemperature(
        std::max(prompt_len, end), config_.dual_chunk->original_max_position_embeddings));
  };
  const bool prompt_chunk = prompt_len > 0 && start < prompt_len;
  // Sparse prefill (§3.3): prompt chunks of a prompt longer than the threshold; never decode.
  float sparse_temperature = 0.0f;
  if (options_.sparse != nullptr && !sparse_budgets_.empty() && prompt_chunk &&
      options_.sparse->UseSparsePrefill(prompt_len)) {
    sparse_temperature = sparse_m();
  }
  // Recall instrumentation: every prompt chunk from the probe's first measured position on (the
  // caller chooses the prompts).
  const float probe_temperature = options_.recall_probe != nullptr && prompt_chunk &&
                                          start >= options_.recall_probe->measure_from()
                                      ? sparse_m()
                                      : 0.0f;

  for (int64_t i = 0; i < static_cast<int64_t>(layer_weights_.size()); ++i) {
    const int64_t layer = layers_.begin + i;
    absl::Status status = RunLayer(layer_weights_[i], layer, seq, start, n, positions,
                                   dca_temperature, sparse_temperature, probe_temperature);
    if (!status.ok()) return Annotate(status, absl::StrCat("layer ", layer));
  }
  MP_RETURN_IF_ERROR(kv_cache_->SetLength(seq, end));

  if (!is_last()) return x;
  if (logits == LogitsMode::kNone) return Tensor();
  const int64_t rows = logits == LogitsMode::kAllRows ? n : 1;
  if (!scratch_.logits.defined() || scratch_.logits.dim(0) < rows) {
    MP_ASSIGN_OR_RETURN(scratch_.logits, b.Allocate({rows, config_.vocab_size}, b.compute_dtype()));
  }
  Tensor src = x.Slice(n - rows, n);
  Tensor normed = scratch_.h.Slice(0, rows);
  Tensor out = scratch_.logits.Slice(0, rows);
  const float eps = static_cast<float>(config_.rms_norm_eps);
  MP_RETURN_IF_ERROR(Annotate(b.RmsNorm(src, final_norm_, eps, normed), "final norm"));
  MP_RETURN_IF_ERROR(Annotate(b.Linear(normed, lm_head_, nullptr, out), "LM head"));
  return out;
}

VerticalSlashReservation SparseReservationGeometry(const ModelConfig& config, int64_t last_q,
                                                   int64_t max_queries, int64_t max_keys) {
  VerticalSlashReservation r;
  r.max_queries = max_queries;
  r.max_keys = max_keys;
  r.q_heads = config.num_attention_heads;
  r.kv_heads = config.num_key_value_heads;
  r.head_dim = config.head_dim;
  if (config.dual_chunk.has_value()) {
    r.chunk_size = config.dual_chunk->chunk_size;
    r.chunk_len = config.dual_chunk->chunk_len();
  }
  r.last_q = last_q;
  return r;
}

absl::StatusOr<int64_t> StageExecutor::ReserveSparseWorkspace(int64_t max_chunk,
                                                              int64_t max_context) {
  if (max_chunk < 1 || max_context < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("ReserveSparseWorkspace: max_chunk must be positive and max_context >= 0, "
                     "got ",
                     max_chunk, " and ", max_context));
  }
  const int64_t capacity = kv_cache_->stats().tokens_total();
  const int64_t longest = max_context > 0 ? std::min(max_context, capacity) : capacity;
  if (options_.sparse == nullptr || sparse_budgets_.empty() ||
      !options_.sparse->UseSparsePrefill(longest)) {
    return 0;
  }
  VerticalSlashReservation r =
      SparseReservationGeometry(config_, options_.sparse->last_q, max_chunk, longest);
  for (const std::vector<int64_t>& set : sparse_budgets_) r.budgets.emplace_back(set);
  absl::StatusOr<int64_t> held = backend_->ReserveVerticalSlashWorkspace(r);
  if (!held.ok()) {
    return Annotate(held.status(), absl::StrCat("layers [", layers_.begin, ", ", layers_.end, ")"));
  }
  return held;
}

VerticalSlashAttentionParams StageExecutor::SparseParams(const Tensor& q3, const KvLayerView& kv,
                                                         int64_t start, float temperature,
                                                         Tensor& out) const {
  VerticalSlashAttentionParams params;
  params.q = &q3;
  params.kv = kv;
  params.query_begin = start;
  if (config_.dual_chunk.has_value()) {
    params.chunk_size = config_.dual_chunk->chunk_size;
    params.chunk_len = config_.dual_chunk->chunk_len();
  }
  params.rope_theta = config_.rope_theta;
  params.scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(config_.head_dim)));
  params.temperature = temperature;
  params.last_q =
      options_.sparse != nullptr ? options_.sparse->last_q : options_.recall_probe->last_q();
  params.out = &out;
  return params;
}

absl::Status StageExecutor::RunLayer(const Layer& w, int64_t layer_index, uint64_t seq,
                                     int64_t start, int64_t n, const Tensor& positions,
                                     float dca_temperature, float sparse_temperature,
                                     float probe_temperature) {
  Backend& b = *backend_;
  const int64_t heads = config_.num_attention_heads;
  const int64_t kv_heads = config_.num_key_value_heads;
  const int64_t head_dim = config_.head_dim;
  const float eps = static_cast<float>(config_.rms_norm_eps);
  auto bias = [](const Tensor& t) { return t.defined() ? &t : nullptr; };

  Tensor x = scratch_.x.Slice(0, n);              // [n, hidden]
  Tensor h = scratch_.h.Slice(0, n);              // [n, hidden]
  Tensor q = scratch_.q.Slice(0, n);              // [n, q_dim]
  Tensor k = scratch_.k.Slice(0, n);              // [n, kv_dim]
  Tensor v = scratch_.v.Slice(0, n);              // [n, kv_dim]
  Tensor attn = scratch_.attn.Slice(0, n);        // [n, q_dim]
  Tensor proj = scratch_.proj.Slice(0, n);        // [n, hidden]

  // Attention block.
  MP_RETURN_IF_ERROR(b.RmsNorm(x, w.input_norm, eps, h));
  MP_RETURN_IF_ERROR(b.Linear(h, w.q_proj, bias(w.q_bias), q));
  MP_RETURN_IF_ERROR(b.Linear(h, w.k_proj, bias(w.k_bias), k));
  MP_RETURN_IF_ERROR(b.Linear(h, w.v_proj, bias(w.v_bias), v));
  Tensor q3 = q.Reshape({n, heads, head_dim});
  Tensor k3 = k.Reshape({n, kv_heads, head_dim});
  Tensor v3 = v.Reshape({n, kv_heads, head_dim});
  Tensor attn3 = attn.Reshape({n, heads, head_dim});
  const float scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(head_dim)));
  MP_RETURN_IF_ERROR(b.Rope(k3, positions, config_.rope_theta));
  MP_ASSIGN_OR_RETURN(KvLayerView kv, kv_cache_->LayerView(seq, layer_index));
  MP_RETURN_IF_ERROR(b.WriteKv(k3, v3, start, kv));
  // Recall probe: the sparse op once per budget set, before the dense attention (which rotates
  // Q in place on the plain path); attn3 is scratch until the dense result overwrites it.
  const std::vector<std::vector<int64_t>>* probe_sets = nullptr;
  std::vector<Tensor> probe_lse;  // per set: host [heads, n]
  std::vector<std::vector<int64_t>> probe_keys;  // per set: [heads] index keys
  Tensor dense_lse;               // [heads, n] on the backend
  if (probe_temperature > 0.0f && !options_.recall_probe->budget_sets(layer_index).empty()) {
    probe_sets = &options_.recall_probe->budget_sets(layer_index);
    Tensor sparse_lse = scratch_.lse_sparse.Slice(0, heads * n).Reshape({heads, n});
    for (const std::vector<int64_t>& budgets : *probe_sets) {
      VerticalSlashAttentionParams params = SparseParams(q3, kv, start, probe_temperature, attn3);
      params.budgets = budgets;
      params.lse = &sparse_lse;
      probe_keys.emplace_back(static_cast<size_t>(heads), 0);
      params.index_keys = probe_keys.back();
      MP_RETURN_IF_ERROR(Annotate(b.VerticalSlashAttention(params), "recall probe"));
      MP_ASSIGN_OR_RETURN(Tensor host, b.ToHostF32(sparse_lse));
      probe_lse.push_back(std::move(host));
    }
    dense_lse = scratch_.lse_dense.Slice(0, heads * n).Reshape({heads, n});
  }
  Tensor* lse = probe_sets != nullptr ? &dense_lse : nullptr;
  if (sparse_temperature > 0.0f) {
    // Q stays un-rotated: the sparse op rotates it per region and for the selection.
    VerticalSlashAttentionParams params = SparseParams(q3, kv, start, sparse_temperature, attn3);
    params.budgets = sparse_budgets_[layer_index - layers_.begin];
    MP_RETURN_IF_ERROR(b.VerticalSlashAttention(params));
  } else if (dca_temperature > 0.0f) {
    // Q stays un-rotated: the DCA op rotates it per key region.
    DcaAttentionParams params;
    params.q = &q3;
    params.kv = kv;
    params.query_begin = start;
    params.chunk_size = config_.dual_chunk->chunk_size;
    params.chunk_len = config_.dual_chunk->chunk_len();
    params.rope_theta = config_.rope_theta;
    params.scale = scale;
    params.temperature = dca_temperature;
    params.out = &attn3;
    params.lse = lse;
    MP_RETURN_IF_ERROR(b.DcaAttention(params));
  } else {
    MP_RETURN_IF_ERROR(b.Rope(q3, positions, config_.rope_theta));
    AttentionParams params;
    params.q = &q3;
    params.kv = kv;
    params.key_begin = 0;
    params.key_end = start + n;
    params.causal = true;
    params.scale = scale;
    params.out = &attn3;
    params.lse = lse;
    MP_RETURN_IF_ERROR(b.Attention(params));
  }
  if (probe_sets != nullptr) {
    MP_ASSIGN_OR_RETURN(Tensor dense_host, b.ToHostF32(dense_lse));
    for (size_t set = 0; set < probe_sets->size(); ++set) {
      MP_RETURN_IF_ERROR(options_.recall_probe->Record(layer_index, static_cast<int64_t>(set),
                                                       start, n, dense_host.data_as<float>(),
                                                       probe_lse[set].data_as<float>(),
                                                       probe_keys[set].data()));
    }
  }
  MP_RETURN_IF_ERROR(b.Linear(attn, w.o_proj, bias(w.o_bias), proj));
  MP_RETURN_IF_ERROR(b.Add(x, proj));

  // MLP block, in blocks of rows when options_.mlp_block_rows is set.
  MP_RETURN_IF_ERROR(b.RmsNorm(x, w.post_norm, eps, h));
  const int64_t block = scratch_.gate_up.dim(0);
  for (int64_t r = 0; r < n; r += block) {
    const int64_t m = std::min(block, n - r);
    Tensor gate_up = scratch_.gate_up.Slice(0, m);  // [m, 2 * inter]
    Tensor act = scratch_.act.Slice(0, m);          // [m, inter]
    Tensor proj_rows = proj.Slice(r, r + m);        // [m, hidden]
    MP_RETURN_IF_ERROR(b.Linear(h.Slice(r, r + m), w.gate_up, nullptr, gate_up));
    MP_RETURN_IF_ERROR(b.SiluMul(gate_up, act));
    MP_RETURN_IF_ERROR(b.Linear(act, w.down_proj, nullptr, proj_rows));
  }
  MP_RETURN_IF_ERROR(b.Add(x, proj));
  return absl::OkStatus();
}

}  // namespace mp
