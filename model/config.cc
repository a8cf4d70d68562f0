#include "model/config.h"

#include <cmath>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>
#include <sstream>
#include <system_error>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/status.h"

namespace mp {
namespace {

using Json = nlohmann::json;
using OrderedJson = nlohmann::ordered_json;

constexpr const char* kSupportedArchitectures = "Qwen2ForCausalLM, LlamaForCausalLM";

// Short printable form of a JSON value for error messages.
std::string Show(const Json& value) {
  std::string text = value.dump(-1, ' ', false, Json::error_handler_t::replace);
  if (text.size() > 80) text = text.substr(0, 77) + "...";
  return text;
}

absl::Status FieldError(absl::string_view field, absl::string_view problem) {
  return absl::InvalidArgumentError(absl::StrCat("field '", field, "' ", problem));
}

absl::Status Unsupported(absl::string_view field, const Json& value, absl::string_view why) {
  return absl::UnimplementedError(
      absl::StrCat("field '", field, "' = ", Show(value), " is not supported: ", why));
}

// The value of `key` in `obj`, or nullptr when absent or JSON null.
const Json* Find(const Json& obj, absl::string_view key) {
  auto it = obj.find(std::string(key));
  if (it == obj.end() || it->is_null()) return nullptr;
  return &*it;
}

absl::StatusOr<int64_t> AsInt(const Json& value, absl::string_view field) {
  if (value.is_number_unsigned()) {
    uint64_t u = value.get<uint64_t>();
    if (u > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
      return FieldError(field, absl::StrCat("= ", Show(value), " is too large"));
    }
    return static_cast<int64_t>(u);
  }
  if (value.is_number_integer()) return value.get<int64_t>();
  if (value.is_number_float()) {
    double d = value.get<double>();
    if (std::isfinite(d) && d == std::floor(d) && std::fabs(d) < 9.0e15) {
      return static_cast<int64_t>(d);
    }
  }
  return FieldError(field, absl::StrCat("must be an integer, got ", Show(value)));
}

// Optional integer: `fallback` when absent or null.
absl::StatusOr<int64_t> IntField(const Json& obj, absl::string_view key, absl::string_view field,
                                 std::optional<int64_t> fallback) {
  const Json* v = Find(obj, key);
  if (v == nullptr) {
    if (fallback.has_value()) return *fallback;
    return FieldError(field, "is missing");
  }
  return AsInt(*v, field);
}

absl::StatusOr<int64_t> PositiveInt(const Json& obj, absl::string_view key, absl::string_view field,
                                    std::optional<int64_t> fallback = std::nullopt) {
  MP_ASSIGN_OR_RETURN(int64_t v, IntField(obj, key, field, fallback));
  if (v <= 0) return FieldError(field, absl::StrCat("must be positive, got ", v));
  return v;
}

absl::StatusOr<double> PositiveNumber(const Json& obj, absl::string_view key, double fallback) {
  const Json* v = Find(obj, key);
  if (v == nullptr) return fallback;
  if (!v->is_number()) return FieldError(key, absl::StrCat("must be a number, got ", Show(*v)));
  double d = v->get<double>();
  if (!std::isfinite(d) || d <= 0) {
    return FieldError(key, absl::StrCat("must be a positive number, got ", Show(*v)));
  }
  return d;
}

absl::StatusOr<bool> BoolField(const Json& obj, absl::string_view key, absl::string_view field,
                               bool fallback) {
  const Json* v = Find(obj, key);
  if (v == nullptr) return fallback;
  if (!v->is_boolean()) return FieldError(field, absl::StrCat("must be a boolean, got ", Show(*v)));
  return v->get<bool>();
}

absl::StatusOr<std::optional<std::string>> StringField(const Json& obj, absl::string_view key) {
  const Json* v = Find(obj, key);
  if (v == nullptr) return std::optional<std::string>();
  if (!v->is_string()) return FieldError(key, absl::StrCat("must be a string, got ", Show(*v)));
  return std::optional<std::string>(v->get<std::string>());
}

absl::StatusOr<int64_t> TokenId(const Json& value, absl::string_view field, int64_t vocab_size) {
  MP_ASSIGN_OR_RETURN(int64_t id, AsInt(value, field));
  if (id < 0 || id >= vocab_size) {
    return FieldError(field,
                      absl::StrCat("= ", id, " is outside the vocabulary [0, ", vocab_size, ")"));
  }
  return id;
}

absl::Status ParseArchitecture(const Json& root, ModelConfig* config) {
  MP_ASSIGN_OR_RETURN(std::optional<std::string> model_type, StringField(root, "model_type"));
  const Json* archs = Find(root, "architectures");
  std::optional<Architecture> arch;
  if (archs != nullptr) {
    if (!archs->is_array() || archs->empty()) {
      return FieldError("architectures",
                        absl::StrCat("must be a non-empty list of strings, got ", Show(*archs)));
    }
    std::vector<std::string> names;
    for (const Json& a : *archs) {
      if (!a.is_string()) {
        return FieldError("architectures", absl::StrCat("must hold strings, got ", Show(a)));
      }
      names.push_back(a.get<std::string>());
    }
    for (const std::string& name : names) {
      if (name == "Qwen2ForCausalLM") arch = Architecture::kQwen2;
      if (name == "LlamaForCausalLM") arch = Architecture::kLlama;
      if (arch.has_value()) break;
    }
    if (!arch.has_value()) {
      return FieldError(
          "architectures",
          absl::StrCat("names unsupported architecture '", absl::StrJoin(names, "', '"),
                       "' (supported: ", kSupportedArchitectures, ")"));
    }
  } else if (model_type.has_value()) {
    if (*model_type == "qwen2") arch = Architecture::kQwen2;
    if (*model_type == "llama") arch = Architecture::kLlama;
    if (!arch.has_value()) {
      return FieldError("model_type", absl::StrCat("names unsupported model type '", *model_type,
                                                   "' and 'architectures' is missing (supported: ",
                                                   kSupportedArchitectures, ")"));
    }
  } else {
    return FieldError("architectures", absl::StrCat("is missing (and so is 'model_type'); "
                                                    "supported: ",
                                                    kSupportedArchitectures));
  }
  config->architecture = *arch;
  const char* expected_type = *arch == Architecture::kQwen2 ? "qwen2" : "llama";
  if (model_type.has_value() && *model_type != expected_type) {
    return FieldError("model_type",
                      absl::StrCat("= '", *model_type, "' does not match ", ArchitectureName(*arch),
                                   " (expected '", expected_type, "')"));
  }
  config->model_type = expected_type;
  return absl::OkStatus();
}

absl::Status ParseRope(const Json& root, ModelConfig* config) {
  if (const Json* scaling = Find(root, "rope_scaling")) {
    return Unsupported("rope_scaling", *scaling, "only plain RoPE is implemented; it must be null");
  }
  std::optional<double> theta;
  if (Find(root, "rope_theta") != nullptr) {
    MP_ASSIGN_OR_RETURN(theta, PositiveNumber(root, "rope_theta", 0));
  }
  if (const Json* params = Find(root, "rope_parameters")) {
    if (!params->is_object()) {
      return FieldError("rope_parameters", absl::StrCat("must be an object, got ", Show(*params)));
    }
    for (const char* type_key : {"rope_type", "type"}) {
      if (const Json* type = Find(*params, type_key)) {
        if (!type->is_string() || type->get<std::string>() != "default") {
          return Unsupported(absl::StrCat("rope_parameters.", type_key), *type,
                             "only plain RoPE (\"default\") is implemented");
        }
      }
    }
    if (const Json* inner = Find(*params, "rope_theta")) {
      if (!inner->is_number() || !std::isfinite(inner->get<double>()) ||
          inner->get<double>() <= 0) {
        return FieldError("rope_parameters.rope_theta",
                          absl::StrCat("must be a positive number, got ", Show(*inner)));
      }
      double inner_theta = inner->get<double>();
      if (theta.has_value() && *theta != inner_theta) {
        return FieldError(
            "rope_parameters.rope_theta",
            absl::StrCat("= ", Show(*inner), " disagrees with 'rope_theta' = ", *theta));
      }
      theta = inner_theta;
    }
  }
  config->rope_theta = theta.value_or(10000.0);
  return absl::OkStatus();
}

// Sliding-window attention changes the attention pattern; it is rejected unless no layer uses it.
absl::Status CheckNoSlidingWindow(const Json& root, const ModelConfig& config) {
  if (const Json* types = Find(root, "layer_types")) {
    if (!types->is_array()) {
      return FieldError("layer_types", absl::StrCat("must be a list, got ", Show(*types)));
    }
    for (size_t i = 0; i < types->size(); ++i) {
      const Json& t = (*types)[i];
      if (!t.is_string() || t.get<std::string>() != "full_attention") {
        return Unsupported(absl::StrCat("layer_types[", i, "]"), t,
                           "only full attention layers are implemented");
      }
    }
  }
  if (config.architecture != Architecture::kQwen2) return absl::OkStatus();
  MP_ASSIGN_OR_RETURN(bool use_window,
                      BoolField(root, "use_sliding_window", "use_sliding_window", false));
  if (!use_window) return absl::OkStatus();  // sliding_window is ignored, as in transformers
  const Json* window = Find(root, "sliding_window");
  if (window == nullptr) return absl::OkStatus();
  MP_ASSIGN_OR_RETURN(int64_t window_size, AsInt(*window, "sliding_window"));
  MP_ASSIGN_OR_RETURN(int64_t max_window_layers,
                      IntField(root, "max_window_layers", "max_window_layers", 28));
  if (max_window_layers < config.num_hidden_layers) {
    return absl::UnimplementedError(
        absl::StrCat("field 'use_sliding_window' = true with sliding_window = ", window_size,
                     " from layer max_window_layers = ", max_window_layers,
                     " is not supported: sliding-window attention is not implemented"));
  }
  return absl::OkStatus();
}

absl::StatusOr<DualChunkConfig> ParseDualChunk(const Json& dca) {
  constexpr absl::string_view kPrefix = "dual_chunk_attention_config";
  if (!dca.is_object()) {
    return FieldError(kPrefix, absl::StrCat("must be an object, got ", Show(dca)));
  }
  auto name = [&](absl::string_view key) { return absl::StrCat(kPrefix, ".", key); };
  DualChunkConfig out;
  MP_ASSIGN_OR_RETURN(out.chunk_size, PositiveInt(dca, "chunk_size", name("chunk_size")));
  MP_ASSIGN_OR_RETURN(out.local_size,
                      IntField(dca, "local_size", name("local_size"), std::nullopt));
  if (out.local_size < 0) {
    return FieldError(name("local_size"), absl::StrCat("must be >= 0, got ", out.local_size));
  }
  MP_ASSIGN_OR_RETURN(out.original_max_position_embeddings,
                      PositiveInt(dca, "original_max_position_embeddings",
                                  name("original_max_position_embeddings")));
  out.sparse_attention_enabled_given = Find(dca, "sparse_attention_enabled") != nullptr;
  MP_ASSIGN_OR_RETURN(
      out.sparse_attention_enabled,
      BoolField(dca, "sparse_attention_enabled", name("sparse_attention_enabled"), false));
  MP_ASSIGN_OR_RETURN(out.sparse_attention_threshold,
                      PositiveInt(dca, "sparse_attention_threshold",
                                  name("sparse_attention_threshold"), int64_t{32768}));
  MP_ASSIGN_OR_RETURN(
      out.sparse_attention_last_q,
      PositiveInt(dca, "sparse_attention_last_q", name("sparse_attention_last_q"), int64_t{64}));
  const int64_t c = out.chunk_len();
  if (c <= 0) {
    return FieldError(name("local_size"), absl::StrCat("= ", out.local_size,
                                                       " leaves no chunk: chunk_size - local_size",
                                                       " = ", c, " must be positive"));
  }
  if (c % 64 != 0) {
    return FieldError(name("chunk_size"),
                      absl::StrCat("= ", out.chunk_size, " minus local_size = ", out.local_size,
                                   " gives chunk length ", c, ", which must be a multiple of 64"));
  }
  MP_RETURN_IF_ERROR(ValidateDualChunkConfig(out));
  return out;
}

absl::StatusOr<ModelConfig> ParseConfigObject(const Json& root) {
  if (!root.is_object()) {
    return absl::InvalidArgumentError(
        absl::StrCat("expected a JSON object at the top level, got ", Show(root)));
  }
  ModelConfig c;
  MP_RETURN_IF_ERROR(ParseArchitecture(root, &c));
  const bool qwen = c.architecture == Architecture::kQwen2;

  MP_ASSIGN_OR_RETURN(c.vocab_size, PositiveInt(root, "vocab_size", "vocab_size"));
  MP_ASSIGN_OR_RETURN(c.hidden_size, PositiveInt(root, "hidden_size", "hidden_size"));
  MP_ASSIGN_OR_RETURN(c.intermediate_size,
                      PositiveInt(root, "intermediate_size", "intermediate_size"));
  MP_ASSIGN_OR_RETURN(c.num_hidden_layers,
                      PositiveInt(root, "num_hidden_layers", "num_hidden_layers"));
  MP_ASSIGN_OR_RETURN(c.num_attention_heads,
                      PositiveInt(root, "num_attention_heads", "num_attention_heads"));
  MP_ASSIGN_OR_RETURN(
      c.num_key_value_heads,
      PositiveInt(root, "num_key_value_heads", "num_key_value_heads", c.num_attention_heads));
  if (c.num_attention_heads % c.num_key_value_heads != 0) {
    return FieldError("num_key_value_heads",
                      absl::StrCat("= ", c.num_key_value_heads,
                                   " must divide num_attention_heads = ", c.num_attention_heads));
  }
  if (Find(root, "head_dim") != nullptr) {
    MP_ASSIGN_OR_RETURN(c.head_dim, PositiveInt(root, "head_dim", "head_dim"));
  } else {
    if (c.hidden_size % c.num_attention_heads != 0) {
      return FieldError("num_attention_heads",
                        absl::StrCat("= ", c.num_attention_heads, " must divide hidden_size = ",
                                     c.hidden_size, " (or give head_dim explicitly)"));
    }
    c.head_dim = c.hidden_size / c.num_attention_heads;
  }
  if (c.head_dim % 2 != 0) {
    return FieldError("head_dim", absl::StrCat("= ", c.head_dim, " must be even for RoPE"));
  }
  MP_ASSIGN_OR_RETURN(c.max_position_embeddings,
                      PositiveInt(root, "max_position_embeddings", "max_position_embeddings",
                                  qwen ? int64_t{32768} : int64_t{2048}));
  MP_ASSIGN_OR_RETURN(c.rms_norm_eps, PositiveNumber(root, "rms_norm_eps", 1e-6));
  MP_RETURN_IF_ERROR(ParseRope(root, &c));

  MP_ASSIGN_OR_RETURN(std::optional<std::string> act, StringField(root, "hidden_act"));
  if (act.has_value() && *act != "silu") {
    return Unsupported("hidden_act", *act, "only silu (SwiGLU) is implemented");
  }
  if (qwen) {
    c.attention_bias = true;  // Qwen2 q/k/v projections always carry a bias
  } else {
    MP_ASSIGN_OR_RETURN(c.attention_bias,
                        BoolField(root, "attention_bias", "attention_bias", false));
    MP_ASSIGN_OR_RETURN(bool mlp_bias, BoolField(root, "mlp_bias", "mlp_bias", false));
    if (mlp_bias) return Unsupported("mlp_bias", true, "MLP biases are not implemented");
  }
  MP_ASSIGN_OR_RETURN(c.tie_word_embeddings,
                      BoolField(root, "tie_word_embeddings", "tie_word_embeddings", false));
  MP_RETURN_IF_ERROR(CheckNoSlidingWindow(root, c));

  if (const Json* eos = Find(root, "eos_token_id")) {
    if (eos->is_array()) {
      for (size_t i = 0; i < eos->size(); ++i) {
        MP_ASSIGN_OR_RETURN(
            int64_t id, TokenId((*eos)[i], absl::StrCat("eos_token_id[", i, "]"), c.vocab_size));
        c.eos_token_ids.push_back(id);
      }
    } else {
      MP_ASSIGN_OR_RETURN(int64_t id, TokenId(*eos, "eos_token_id", c.vocab_size));
      c.eos_token_ids.push_back(id);
    }
  }
  if (const Json* bos = Find(root, "bos_token_id")) {
    MP_ASSIGN_OR_RETURN(c.bos_token_id, TokenId(*bos, "bos_token_id", c.vocab_size));
  }
  MP_ASSIGN_OR_RETURN(std::optional<std::string> torch_dtype, StringField(root, "torch_dtype"));
  if (!torch_dtype.has_value()) {
    MP_ASSIGN_OR_RETURN(torch_dtype, StringField(root, "dtype"));
  }
  c.torch_dtype = torch_dtype.value_or("");

  if (const Json* dca = Find(root, "dual_chunk_attention_config")) {
    MP_ASSIGN_OR_RETURN(c.dual_chunk, ParseDualChunk(*dca));
  }
  return c;
}

absl::StatusOr<ModelConfig> ParseWithPrefix(absl::string_view json_text, absl::string_view prefix) {
  Json root;
  try {
    root = Json::parse(json_text.begin(), json_text.end());
  } catch (const Json::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat(prefix, ": not valid JSON: ", e.what()));
  }
  try {
    absl::StatusOr<ModelConfig> config = ParseConfigObject(root);
    if (!config.ok()) return Annotate(config.status(), std::string(prefix));
    return config;
  } catch (const Json::exception& e) {  // defensive: every access above is type-checked
    return absl::InvalidArgumentError(absl::StrCat(prefix, ": ", e.what()));
  }
}

}  // namespace

const char* ArchitectureName(Architecture architecture) {
  return architecture == Architecture::kQwen2 ? "Qwen2ForCausalLM" : "LlamaForCausalLM";
}

int64_t ModelConfig::NumParameters() const {
  const int64_t h = hidden_size;
  int64_t per_layer = 2 * h;                    // input and post-attention norms
  per_layer += h * q_dim() + 2 * h * kv_dim();  // q, k, v projections
  if (attention_bias) per_layer += q_dim() + 2 * kv_dim();
  per_layer += q_dim() * h;  // o_proj
  if (o_proj_bias()) per_layer += h;
  per_layer += 3 * h * intermediate_size;  // gate, up, down
  int64_t total = num_hidden_layers * per_layer;
  total += vocab_size * h;                            // embedding
  total += h;                                         // final norm
  if (!tie_word_embeddings) total += vocab_size * h;  // lm_head
  return total;
}

absl::StatusOr<ModelConfig> ParseModelConfig(std::string_view json_text) {
  return ParseWithPrefix(absl::string_view(json_text.data(), json_text.size()), "config.json");
}

absl::StatusOr<ModelConfig> LoadModelConfig(const std::string& path) {
  std::error_code ec;
  std::string file = path;
  if (std::filesystem::is_directory(path, ec)) {
    file = (std::filesystem::path(path) / "config.json").string();
  }
  if (!std::filesystem::exists(file, ec)) {
    return absl::NotFoundError(absl::StrCat("model config not found: ", file));
  }
  std::ifstream in(file, std::ios::binary);
  if (!in) return absl::PermissionDeniedError(absl::StrCat("cannot open model config ", file));
  std::ostringstream text;
  text << in.rdbuf();
  if (in.bad()) return absl::DataLossError(absl::StrCat("error reading model config ", file));
  return ParseWithPrefix(text.str(), file);
}

std::string ModelConfigToJson(const ModelConfig& config) {
  const bool qwen = config.architecture == Architecture::kQwen2;
  OrderedJson j;
  j["architectures"] = {ArchitectureName(config.architecture)};
  j["model_type"] = qwen ? "qwen2" : "llama";
  j["vocab_size"] = config.vocab_size;
  j["hidden_size"] = config.hidden_size;
  j["intermediate_size"] = config.intermediate_size;
  j["num_hidden_layers"] = config.num_hidden_layers;
  j["num_attention_heads"] = config.num_attention_heads;
  j["num_key_value_heads"] = config.num_key_value_heads;
  j["head_dim"] = config.head_dim;
  j["hidden_act"] = "silu";
  j["max_position_embeddings"] = config.max_position_embeddings;
  j["rms_norm_eps"] = config.rms_norm_eps;
  j["rope_theta"] = config.rope_theta;
  j["rope_scaling"] = nullptr;
  if (qwen) {
    j["use_sliding_window"] = false;
  } else {
    j["attention_bias"] = config.attention_bias;
    j["mlp_bias"] = false;
  }
  j["tie_word_embeddings"] = config.tie_word_embeddings;
  if (config.bos_token_id.has_value()) j["bos_token_id"] = *config.bos_token_id;
  if (config.eos_token_ids.size() == 1) {
    j["eos_token_id"] = config.eos_token_ids[0];
  } else if (!config.eos_token_ids.empty()) {
    j["eos_token_id"] = config.eos_token_ids;
  }
  if (!config.torch_dtype.empty()) j["torch_dtype"] = config.torch_dtype;
  if (config.dual_chunk.has_value()) {
    const DualChunkConfig& d = *config.dual_chunk;
    OrderedJson dca;
    dca["chunk_size"] = d.chunk_size;
    dca["local_size"] = d.local_size;
    dca["original_max_position_embeddings"] = d.original_max_position_embeddings;
    if (d.sparse_attention_enabled_given || d.sparse_attention_enabled) {
      dca["sparse_attention_enabled"] = d.sparse_attention_enabled;
    }
    dca["sparse_attention_threshold"] = d.sparse_attention_threshold;
    dca["sparse_attention_last_q"] = d.sparse_attention_last_q;
    j["dual_chunk_attention_config"] = std::move(dca);
  }
  return j.dump(2) + "\n";
}

absl::Status ValidateDualChunkConfig(const DualChunkConfig& d) {
  constexpr absl::string_view kPrefix = "dual_chunk_attention_config.";
  if (d.chunk_size <= 0 || d.chunk_size > std::numeric_limits<int32_t>::max()) {
    return FieldError(absl::StrCat(kPrefix, "chunk_size"),
                      absl::StrCat("= ", d.chunk_size, " must be in [1, 2147483647]"));
  }
  if (d.local_size < 0) {
    return FieldError(absl::StrCat(kPrefix, "local_size"),
                      absl::StrCat("must be >= 0, got ", d.local_size));
  }
  const int64_t c = d.chunk_len();
  if (c <= 0) {
    return FieldError(absl::StrCat(kPrefix, "local_size"),
                      absl::StrCat("= ", d.local_size, " leaves no chunk: chunk_size (",
                                   d.chunk_size, ") - local_size = ", c, " must be positive"));
  }
  if (c % 64 != 0) {
    return FieldError(absl::StrCat(kPrefix, "chunk_size"),
                      absl::StrCat("= ", d.chunk_size, " minus local_size = ", d.local_size,
                                   " gives chunk length ", c, ", which must be a multiple of 64"));
  }
  if (d.original_max_position_embeddings <= 0) {
    return FieldError(absl::StrCat(kPrefix, "original_max_position_embeddings"),
                      absl::StrCat("must be positive, got ", d.original_max_position_embeddings));
  }
  return absl::OkStatus();
}

int64_t DefaultDcaLocalSize(int64_t chunk_size) {
  const int64_t chunk_len = (chunk_size - chunk_size / 32) / 64 * 64;
  return chunk_size - chunk_len;
}

absl::Status ApplyDualChunkOverride(const DualChunkOverride& o, ModelConfig* config) {
  if (!o.any()) return absl::OkStatus();
  const bool values = o.chunk_size.has_value() || o.local_size.has_value() ||
                      o.original_max_position_embeddings.has_value();
  if (o.disable) {
    if (o.enable || values) {
      return absl::InvalidArgumentError(
          "dual chunk attention cannot be both disabled and configured");
    }
    config->dual_chunk.reset();
    return absl::OkStatus();
  }
  DualChunkConfig d;
  if (config->dual_chunk.has_value()) {
    d = *config->dual_chunk;
    if (o.chunk_size.has_value()) d.chunk_size = *o.chunk_size;
    if (o.local_size.has_value()) {
      d.local_size = *o.local_size;
    } else if (o.chunk_size.has_value()) {
      d.local_size = DefaultDcaLocalSize(d.chunk_size);
    }
  } else {
    d.chunk_size = o.chunk_size.value_or(config->max_position_embeddings);
    d.local_size = o.local_size.value_or(DefaultDcaLocalSize(d.chunk_size));
    d.original_max_position_embeddings = config->max_position_embeddings;
  }
  if (o.original_max_position_embeddings.has_value()) {
    d.original_max_position_embeddings = *o.original_max_position_embeddings;
  }
  MP_RETURN_IF_ERROR(ValidateDualChunkConfig(d));
  config->dual_chunk = d;
  return absl::OkStatus();
}

namespace {

ModelConfig Qwen25Instruct1MBase() {
  ModelConfig c;
  c.architecture = Architecture::kQwen2;
  c.model_type = "qwen2";
  c.vocab_size = 152064;
  c.head_dim = 128;
  c.max_position_embeddings = 1010000;
  c.rms_norm_eps = 1e-5;
  c.rope_theta = 1e7;
  c.attention_bias = true;
  c.tie_word_embeddings = false;
  c.eos_token_ids = {151645};
  c.bos_token_id = 151643;
  c.torch_dtype = "bfloat16";
  DualChunkConfig dca;
  dca.chunk_size = 262144;
  dca.local_size = 8192;
  dca.original_max_position_embeddings = 262144;
  c.dual_chunk = dca;
  return c;
}

}  // namespace

ModelConfig Qwen25_7BInstruct1MConfig() {
  ModelConfig c = Qwen25Instruct1MBase();
  c.hidden_size = 3584;
  c.intermediate_size = 18944;
  c.num_hidden_layers = 28;
  c.num_attention_heads = 28;
  c.num_key_value_heads = 4;
  return c;
}

ModelConfig Qwen25_14BInstruct1MConfig() {
  ModelConfig c = Qwen25Instruct1MBase();
  c.hidden_size = 5120;
  c.intermediate_size = 13824;
  c.num_hidden_layers = 48;
  c.num_attention_heads = 40;
  c.num_key_value_heads = 8;
  return c;
}

}  // namespace mp
