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

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "model/config.h"
#include "runtime/tensor.h"

namespace mp {

struct LayerRange {
  int64_t begin = 0;  // first layer held
  int64_t end = 0;    // one past the last layer held
};

struct LayerWeights {
  Tensor input_norm;              // [hidden]
  Tensor q_proj, k_proj, v_proj;  // [q_dim, hidden], [kv_dim, hidden], [kv_dim, hidden]
  Tensor q_bias, k_bias, v_bias;  // [q_dim], [kv_dim], [kv_dim]; undefined without bias
  Tensor o_proj;                  // [hidden, q_dim]
  Tensor o_bias;                  // [hidden]; only when config.o_proj_bias() (Llama + bias)
  Tensor post_attention_norm;     // [hidden]
  Tensor gate_proj, up_proj;      // [inter, hidden]
  Tensor down_proj;               // [hidden, inter]
};

struct ModelWeights {
  LayerRange layers;
  bool has_embedding = false;
  bool has_head = false;
  Tensor embed_tokens;              // [vocab, hidden] when has_embedding or tied head
  std::vector<LayerWeights> layer;  // layer[i] is model layer layers.begin + i
  Tensor final_norm;                // [hidden] when has_head
  Tensor lm_head;                   // [vocab, hidden] when has_head (aliases embed if tied)
  std::shared_ptr<void> storage;    // keeps mmaps / buffers alive
};

struct WeightLoadOptions {
  LayerRange layers;
  bool embedding = true;  // load model.embed_tokens
  bool head = true;       // load model.norm and lm_head (or the tied embedding)
};

enum class WeightKind { kEmbedding, kMatrix, kBias, kNorm };

// One tensor a stage holds: its Hugging Face name, the shape the config implies, and the slot
// of a ModelWeights it fills.
struct WeightSlot {
  std::string name;            // e.g. "model.layers.3.self_attn.q_proj.weight"
  std::vector<int64_t> shape;  // Torch Linear layout: [out_features, in_features]
  WeightKind kind;
  Tensor* tensor;  // points into the ModelWeights passed to StageWeightSlots
};

// Sets up `weights` for the stage of `options` (layer range, flags, sized `layer` vector) and
// lists every tensor the stage must hold, in file order: embedding, layers, final norm, head.
// A tied LM head is not listed: model.embed_tokens.weight is listed instead and lm_head must
// alias it. INVALID_ARGUMENT unless 0 <= begin < end <= num_hidden_layers.
absl::StatusOr<std::vector<WeightSlot>> StageWeightSlots(const ModelConfig& config,
                                                         const WeightLoadOptions& options,
                                                         ModelWeights* weights);

// Loads from an HF directory: model.safetensors, or model.safetensors.index.json + shards (only
// the shards holding the requested tensors are opened). Validates every tensor's presence,
// dtype (F32, F16 or BF16) and shape against `config`. Errors name the tensor, the file and,
// for shapes, the expected and actual shape: NOT_FOUND for a missing file or tensor (e.g.
// lm_head.weight of an untied model), INVALID_ARGUMENT for a bad range, dtype, shape or index.
absl::StatusOr<ModelWeights> LoadModelWeights(const std::string& model_dir,
                                              const ModelConfig& config,
                                              const WeightLoadOptions& options);

// Seeded random weights for any config, in `dtype` (F32, F16 or BF16; else INVALID_ARGUMENT).
// Matrices and embeddings ~ 0.02 * z, biases ~ 0.01 * z, norm weights ~ 1 + 0.05 * z, where z is
// approximately standard normal (the sum of four uniforms, scaled to unit variance: bounded by
// ±3.47). Every value depends only on (seed, tensor name, element index), so a stage's tensors
// equal the same tensors of the whole model, and f16/bf16 values are the f32 values rounded to
// nearest even. Generation runs on all hardware threads.
absl::StatusOr<ModelWeights> RandomModelWeights(const ModelConfig& config,
                                                const WeightLoadOptions& options, uint64_t seed,
                                                DType dtype = DType::kBF16);

// The generator behind RandomModelWeights, for implementations on other devices (the CUDA
// backend fills weights on the GPU with it): element i of the tensor of `slot` is
//   offset + scale * z,  z = (sum of the four 16-bit fields of SplitMix64(key + (i + 1) *
//   0x9E3779B97F4A7C15) - 131070) * (1.0f / 37837.2261f)
// in fp32 with separate roundings, then rounded to nearest even into the target dtype.
struct RandomWeightStream {
  uint64_t key = 0;
  float scale = 0.0f;
  float offset = 0.0f;
};
RandomWeightStream RandomWeightStreamOf(uint64_t seed, const WeightSlot& slot);

struct RandomModelDirOptions {
  DType dtype = DType::kBF16;
  // 1: model.safetensors. More: model-0000k-of-0000n.safetensors (layers split evenly, the
  // embedding in the first shard, norm and head in the last) + model.safetensors.index.json.
  int num_shards = 1;
};

// Writes a random model directory (config.json + safetensors) loadable by LoadModelConfig /
// LoadModelWeights (and by Hugging Face transformers). Its weights equal
// RandomModelWeights(config, ..., seed, options.dtype). Creates `dir` if needed; one shard is
// generated and written at a time.
absl::Status WriteRandomModelDir(const std::string& dir, const ModelConfig& config, uint64_t seed,
                                 const RandomModelDirOptions& options = {});

}  // namespace mp
