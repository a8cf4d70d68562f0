// Model weights of one pipeline stage: the layers [layer_begin, layer_end), plus the embedding
// (first stage) and the final norm and LM head (last stage) when asked for.
//
// Host weights keep the dtype they have in the file (f32, f16 or bf16) and are usually views
// into the mmapped safetensors files; Backend::UploadWeight converts them.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "model/config.h"
#include "runtime/tensor.h"

namespace mp {

struct LayerRange {
  int64_t begin = 0;  // first layer held
  int64_t end = 0;    // one past the last layer held
};

struct LayerWeights {
  Tensor input_norm;                 // [hidden]
  Tensor q_proj, k_proj, v_proj;     // [q_dim, hidden], [kv_dim, hidden], [kv_dim, hidden]
  Tensor q_bias, k_bias, v_bias;     // [q_dim], [kv_dim], [kv_dim]; undefined without bias
  Tensor o_proj;                     // [hidden, q_dim]
  Tensor post_attention_norm;        // [hidden]
  Tensor gate_proj, up_proj;         // [inter, hidden]
  Tensor down_proj;                  // [hidden, inter]
};

struct ModelWeights {
  LayerRange layers;
  bool has_embedding = false;
  bool has_head = false;
  Tensor embed_tokens;             // [vocab, hidden] when has_embedding or tied head
  std::vector<LayerWeights> layer;  // layer[i] is model layer layers.begin + i
  Tensor final_norm;               // [hidden] when has_head
  Tensor lm_head;                  // [vocab, hidden] when has_head (aliases embed if tied)
  std::shared_ptr<void> storage;   // keeps mmaps / buffers alive
};

struct WeightLoadOptions {
  LayerRange layers;
  bool embedding = true;  // load model.embed_tokens
  bool head = true;       // load model.norm and lm_head (or the tied embedding)
};

// Loads from an HF directory: model.safetensors or model.safetensors.index.json + shards.
// Validates every tensor's presence, dtype and shape against `config`; errors name the tensor,
// the file and the expected shape.
absl::StatusOr<ModelWeights> LoadModelWeights(const std::string& model_dir,
                                              const ModelConfig& config,
                                              const WeightLoadOptions& options);

// Seeded random weights (normal, std 0.02; norms around 1) for any config, in `dtype`.
absl::StatusOr<ModelWeights> RandomModelWeights(const ModelConfig& config,
                                                const WeightLoadOptions& options, uint64_t seed,
                                                DType dtype = DType::kBF16);

}  // namespace mp
