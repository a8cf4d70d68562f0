// GGUF (llama architecture) -> Hugging Face model directory.
//
// ConvertGgufToHf writes into out_dir (created if needed):
//   config.json             LlamaForCausalLM (model/config.h's ModelConfigToJson)
//   model.safetensors       every tensor dequantized to F32 under its HF name. F32, because
//                           BF16 is not exact: a Q8_0 value (int8 times an f16 scale) needs up
//                           to 19 significant bits, a Q4_1 value (d * q + m) up to 24, and
//                           bfloat16 has 8 (SmolLM2: 97% of the Q8_0 and 75% of the Q4_1
//                           values would be rounded).
//   tokenizer.json          byte-level BPE rebuilt from the tokenizer.ggml.* metadata
//   tokenizer_config.json   chat template and special tokens
//   generation_config.json  bos / eos / pad ids
// Each file is written to a temporary name and renamed, so a file that exists is complete.
//
// llama.cpp stores the rows of every Q and K projection of a llama model permuted for its RoPE,
// which rotates adjacent pairs (x[2i], x[2i+1]); Hugging Face rotates halves (x[i], x[i + d/2]).
// Within each head of d rows, GGUF row 2i + s holds HF row s * d/2 + i (s in {0, 1}); the
// converter applies the inverse (UnpermuteQkRows).
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"
#include "model/config.h"
#include "model/gguf_reader.h"

namespace mp {

absl::Status ConvertGgufToHf(const std::string& gguf_path, const std::string& out_dir);

// The pieces of the conversion, exposed for tests. Errors name the file and the key / tensor.

// config.json fields from the llama.* metadata and the tensors (vocab size from token_embd,
// tie_word_embeddings when there is no output.weight). Non-llama architectures, partial RoPE,
// RoPE scaling and mixtures of experts are INVALID_ARGUMENT / UNIMPLEMENTED naming the key.
absl::StatusOr<ModelConfig> LlamaConfigFromGguf(const GgufFile& file);

// "blk.3.attn_q.weight" -> "model.layers.3.self_attn.q_proj.weight", ...; INVALID_ARGUMENT for a
// name with no HF Llama equivalent.
absl::StatusOr<std::string> HfTensorName(std::string_view gguf_name);

// Undoes llama.cpp's Q/K row permutation: src and dst are [n_heads * head_dim, cols] row-major,
// head_dim = rows / n_heads must be even; dst row h*d + s*d/2 + i = src row h*d + 2i + s.
void UnpermuteQkRows(const float* src, float* dst, int64_t rows, int64_t cols, int64_t n_heads);

// tokenizer.json / tokenizer_config.json / generation_config.json text.
absl::StatusOr<std::string> TokenizerJsonFromGguf(const GgufFile& file);
absl::StatusOr<std::string> TokenizerConfigJsonFromGguf(const GgufFile& file);
absl::StatusOr<std::string> GenerationConfigJsonFromGguf(const GgufFile& file);

}  // namespace mp
