#include "model/gguf_convert.h"

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <optional>
#include <set>
#include <unordered_map>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/status.h"
#include "model/gguf_dequant.h"
#include "model/safetensors.h"
#include "nlohmann/json.hpp"

namespace mp {
namespace {

using OrderedJson = nlohmann::ordered_json;

constexpr int64_t kTokenNormal = 1;
constexpr int64_t kTokenControl = 3;
constexpr int64_t kTokenUserDefined = 4;

absl::Status Invalid(const GgufFile& f, absl::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat(f.path(), ": ", what));
}
absl::Status Unsupported(const GgufFile& f, absl::string_view what) {
  return absl::UnimplementedError(absl::StrCat(f.path(), ": ", what));
}

// ---- metadata helpers -----------------------------------------------------------------------

absl::StatusOr<int64_t> PositiveInt(const GgufFile& f, std::string_view key) {
  MP_ASSIGN_OR_RETURN(int64_t v, f.GetInt(key));
  if (v <= 0) {
    return Invalid(f,
                   absl::StrCat("metadata key '", std::string(key), "' is ", v, ", expected > 0"));
  }
  return v;
}

// A FLOAT32 value as the shortest decimal that reads back as the same float (1e-05 rather than
// 9.999999747378752e-06): the value a Hugging Face config.json would have held.
double ShortestFloat(float value) {
  char buf[32];
  for (int precision = 1; precision <= 9; ++precision) {
    std::snprintf(buf, sizeof(buf), "%.*g", precision, static_cast<double>(value));
    if (std::strtof(buf, nullptr) == value) return std::strtod(buf, nullptr);
  }
  return static_cast<double>(value);
}

absl::StatusOr<double> ConfigFloat(const GgufFile& f, std::string_view key) {
  const GgufValue* v = f.Find(key);
  if (v != nullptr && v->type() == GgufValueType::kFloat32) {
    double d = 0;
    v->ToDouble(&d);
    return ShortestFloat(static_cast<float>(d));
  }
  return f.GetFloat(key);
}

absl::StatusOr<std::optional<int64_t>> OptionalTokenId(const GgufFile& f, std::string_view key,
                                                       int64_t vocab_size) {
  if (!f.Has(key)) return std::optional<int64_t>();
  MP_ASSIGN_OR_RETURN(int64_t id, f.GetInt(key));
  if (id < 0 || id >= vocab_size) {
    return Invalid(f, absl::StrCat("metadata key '", std::string(key), "' is ", id,
                                   ", outside the vocabulary of ", vocab_size, " tokens"));
  }
  return std::optional<int64_t>(id);
}

std::string ShapeString(const std::vector<int64_t>& shape) {
  return absl::StrCat("[", absl::StrJoin(shape, ", "), "]");
}

// ---- UTF-8 and the byte-level alphabet ------------------------------------------------------

// Decodes `s` into code points; false on malformed UTF-8 (overlong forms, surrogates, > U+10FFFF).
bool DecodeUtf8(std::string_view s, std::vector<uint32_t>* out) {
  out->clear();
  size_t i = 0;
  while (i < s.size()) {
    const auto c = static_cast<unsigned char>(s[i]);
    uint32_t cp;
    int extra;
    if (c < 0x80) {
      cp = c;
      extra = 0;
    } else if ((c & 0xE0) == 0xC0) {
      cp = c & 0x1F;
      extra = 1;
    } else if ((c & 0xF0) == 0xE0) {
      cp = c & 0x0F;
      extra = 2;
    } else if ((c & 0xF8) == 0xF0) {
      cp = c & 0x07;
      extra = 3;
    } else {
      return false;
    }
    if (i + extra >= s.size() && extra > 0) return false;
    for (int k = 1; k <= extra; ++k) {
      const auto cc = static_cast<unsigned char>(s[i + k]);
      if ((cc & 0xC0) != 0x80) return false;
      cp = (cp << 6) | (cc & 0x3F);
    }
    static constexpr uint32_t kMin[] = {0, 0x80, 0x800, 0x10000};
    if (cp < kMin[extra] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return false;
    out->push_back(cp);
    i += extra + 1;
  }
  return true;
}

void AppendUtf8(uint32_t cp, std::string* out) {
  if (cp < 0x80) {
    out->push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out->push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    out->push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

// GPT-2's byte -> code point table: printable Latin-1 bytes map to themselves, the other 68
// bytes to U+0100 onwards in byte order.
struct ByteAlphabet {
  uint32_t byte_to_cp[256];
  std::set<uint32_t> code_points;
  ByteAlphabet() {
    uint32_t next = 256;
    for (uint32_t b = 0; b < 256; ++b) {
      const bool printable = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE;
      byte_to_cp[b] = printable ? b : next++;
      code_points.insert(byte_to_cp[b]);
    }
  }
};

const ByteAlphabet& Alphabet() {
  static const ByteAlphabet* alphabet = new ByteAlphabet();
  return *alphabet;
}

bool InAlphabet(const std::vector<uint32_t>& cps) {
  for (uint32_t cp : cps) {
    if (Alphabet().code_points.count(cp) == 0) return false;
  }
  return true;
}

// The token's UTF-8 bytes written in the byte-level alphabet.
std::string Respell(std::string_view token) {
  std::string out;
  for (char c : token) AppendUtf8(Alphabet().byte_to_cp[static_cast<unsigned char>(c)], &out);
  return out;
}

// ---- tokenizer metadata ---------------------------------------------------------------------

struct GgufTokenizer {
  std::vector<std::string_view> tokens;
  std::vector<int64_t> token_types;     // one per token (NORMAL when the file has none)
  std::vector<std::string> vocab_keys;  // tokens as written in the BPE vocabulary
  std::vector<std::string_view> merges;
  std::string pre;
  bool add_bos = false;
  bool add_eos = false;
  bool add_prefix_space = false;
  std::optional<int64_t> bos, eos, unk, pad;
  // Ids of the tokens that become HF added tokens, with their `special` flag.
  std::vector<std::pair<int64_t, bool>> added;
};

// Pre-tokenizers named by tokenizer.ggml.pre: llama.cpp splits single digits off before the GPT-2
// regex for these (SmolLM's own tokenizer.json: Digits(individual) + ByteLevel) ...
const std::set<std::string>& DigitSplitPres() {
  static const auto* s = new std::set<std::string>{"smollm",    "starcoder", "refact", "command-r",
                                                   "codeshell", "exaone",    "minerva"};
  return *s;
}
// ... and applies the GPT-2 regex alone for these.
const std::set<std::string>& Gpt2Pres() {
  static const auto* s = new std::set<std::string>{"gpt2", "gpt-2", "mpt", "olmo", "jais"};
  return *s;
}

absl::StatusOr<GgufTokenizer> ReadTokenizer(const GgufFile& f) {
  GgufTokenizer t;
  MP_ASSIGN_OR_RETURN(std::string model, f.GetString("tokenizer.ggml.model"));
  if (model != "gpt2") {
    return Unsupported(f, absl::StrCat("tokenizer.ggml.model is '", model,
                                       "'; only 'gpt2' (byte-level BPE) can be converted"));
  }
  if (!f.Has("tokenizer.ggml.pre")) {
    return Unsupported(f, "tokenizer.ggml.pre is missing: the pre-tokenizer is unknown");
  }
  MP_ASSIGN_OR_RETURN(t.pre, f.GetString("tokenizer.ggml.pre"));
  if (DigitSplitPres().count(t.pre) == 0 && Gpt2Pres().count(t.pre) == 0) {
    std::vector<std::string> names(DigitSplitPres().begin(), DigitSplitPres().end());
    names.insert(names.end(), Gpt2Pres().begin(), Gpt2Pres().end());
    return Unsupported(f, absl::StrCat("tokenizer.ggml.pre '", t.pre, "' is not supported (",
                                       "supported: ", absl::StrJoin(names, ", "), ")"));
  }
  MP_ASSIGN_OR_RETURN(t.tokens, f.GetStringArray("tokenizer.ggml.tokens"));
  const auto n = static_cast<int64_t>(t.tokens.size());
  if (n == 0) return Invalid(f, "tokenizer.ggml.tokens is empty");
  if (f.Has("tokenizer.ggml.token_type")) {
    MP_ASSIGN_OR_RETURN(t.token_types, f.GetIntArray("tokenizer.ggml.token_type"));
    if (static_cast<int64_t>(t.token_types.size()) != n) {
      return Invalid(f, absl::StrCat("tokenizer.ggml.token_type has ", t.token_types.size(),
                                     " entries but tokenizer.ggml.tokens has ", n));
    }
  } else {
    t.token_types.assign(n, kTokenNormal);
  }
  MP_ASSIGN_OR_RETURN(t.merges, f.GetStringArray("tokenizer.ggml.merges"));
  if (f.Has("tokenizer.ggml.add_bos_token")) {
    MP_ASSIGN_OR_RETURN(t.add_bos, f.GetBool("tokenizer.ggml.add_bos_token"));
  }
  if (f.Has("tokenizer.ggml.add_eos_token")) {
    MP_ASSIGN_OR_RETURN(t.add_eos, f.GetBool("tokenizer.ggml.add_eos_token"));
  }
  if (f.Has("tokenizer.ggml.add_space_prefix")) {
    MP_ASSIGN_OR_RETURN(t.add_prefix_space, f.GetBool("tokenizer.ggml.add_space_prefix"));
  }
  MP_ASSIGN_OR_RETURN(t.bos, OptionalTokenId(f, "tokenizer.ggml.bos_token_id", n));
  MP_ASSIGN_OR_RETURN(t.eos, OptionalTokenId(f, "tokenizer.ggml.eos_token_id", n));
  MP_ASSIGN_OR_RETURN(t.unk, OptionalTokenId(f, "tokenizer.ggml.unknown_token_id", n));
  MP_ASSIGN_OR_RETURN(t.pad, OptionalTokenId(f, "tokenizer.ggml.padding_token_id", n));
  if (t.add_bos && !t.bos) return Invalid(f, "add_bos_token is set but bos_token_id is missing");
  if (t.add_eos && !t.eos) return Invalid(f, "add_eos_token is set but eos_token_id is missing");

  // Vocabulary keys: a token outside the byte-level alphabet stands for its raw UTF-8 text.
  std::unordered_map<std::string, int64_t> ids;
  ids.reserve(t.tokens.size());
  t.vocab_keys.resize(n);
  std::vector<uint32_t> cps;
  for (int64_t i = 0; i < n; ++i) {
    const std::string_view token = t.tokens[i];
    if (token.empty()) return Invalid(f, absl::StrCat("token ", i, " is empty"));
    if (!DecodeUtf8(token, &cps)) {
      return Invalid(f, absl::StrCat("token ", i, " is not valid UTF-8"));
    }
    const bool spelled = InAlphabet(cps);
    t.vocab_keys[i] = spelled ? std::string(token) : Respell(token);
    auto [it, inserted] = ids.emplace(t.vocab_keys[i], i);
    if (!inserted) {
      return Invalid(f, absl::StrCat("token ", i, " (", nlohmann::json(t.vocab_keys[i]).dump(),
                                     ") repeats token ", it->second));
    }
    // Control tokens become special added tokens, user-defined ones plain added tokens; a token
    // marked so but written outside the byte alphabet is a mislabelled ordinary token.
    if (spelled && t.token_types[i] == kTokenControl) t.added.emplace_back(i, true);
    if (spelled && t.token_types[i] == kTokenUserDefined) t.added.emplace_back(i, false);
  }
  for (size_t m = 0; m < t.merges.size(); ++m) {
    const std::string_view merge = t.merges[m];
    if (!DecodeUtf8(merge, &cps)) {
      return Invalid(f, absl::StrCat("merge ", m, " is not valid UTF-8"));
    }
    const size_t space = merge.find(' ');
    if (space == std::string_view::npos || space == 0 || space + 1 == merge.size() ||
        merge.find(' ', space + 1) != std::string_view::npos) {
      return Invalid(f, absl::StrCat("merge ", m, " is not two tokens separated by one space"));
    }
    const std::string a(merge.substr(0, space));
    const std::string b(merge.substr(space + 1));
    for (const std::string& part : {a, b, a + b}) {
      if (ids.count(part) == 0) {
        return Invalid(
            f, absl::StrCat("merge ", m, " (", nlohmann::json(std::string(merge)).dump(), ") uses ",
                            nlohmann::json(part).dump(), ", which is not in the vocabulary"));
      }
    }
  }
  return t;
}

OrderedJson ByteLevelJson(bool add_prefix_space) {
  OrderedJson j;
  j["type"] = "ByteLevel";
  j["add_prefix_space"] = add_prefix_space;
  j["trim_offsets"] = true;
  j["use_regex"] = true;
  return j;
}

OrderedJson PreTokenizerJson(const GgufTokenizer& t) {
  if (Gpt2Pres().count(t.pre) > 0) return ByteLevelJson(t.add_prefix_space);
  OrderedJson digits;
  digits["type"] = "Digits";
  digits["individual_digits"] = true;
  OrderedJson seq;
  seq["type"] = "Sequence";
  seq["pretokenizers"] = OrderedJson::array({digits, ByteLevelJson(t.add_prefix_space)});
  return seq;
}

OrderedJson PostProcessorJson(const GgufTokenizer& t) {
  if (!t.add_bos && !t.add_eos) return nullptr;
  auto special = [](const std::string& id) {
    OrderedJson j;
    j["SpecialToken"] = {{"id", id}, {"type_id", 0}};
    return j;
  };
  auto sequence = [](const char* id, int type_id) {
    OrderedJson j;
    j["Sequence"] = {{"id", id}, {"type_id", type_id}};
    return j;
  };
  const std::string bos = t.bos ? std::string(t.tokens[*t.bos]) : "";
  const std::string eos = t.eos ? std::string(t.tokens[*t.eos]) : "";
  OrderedJson single = OrderedJson::array();
  OrderedJson pair = OrderedJson::array();
  if (t.add_bos) single.push_back(special(bos));
  single.push_back(sequence("A", 0));
  if (t.add_eos) single.push_back(special(eos));
  pair = single;
  if (t.add_bos) pair.push_back(special(bos));
  pair.push_back(sequence("B", 1));
  if (t.add_eos) pair.push_back(special(eos));
  OrderedJson specials = OrderedJson::object();
  auto add_special = [&](const std::string& token, int64_t id) {
    OrderedJson s;
    s["id"] = token;
    s["ids"] = {id};
    s["tokens"] = {token};
    specials[token] = s;
  };
  if (t.add_bos) add_special(bos, *t.bos);
  if (t.add_eos) add_special(eos, *t.eos);
  OrderedJson j;
  j["type"] = "TemplateProcessing";
  j["single"] = single;
  j["pair"] = pair;
  j["special_tokens"] = specials;
  return j;
}

// Indents every line after the first of a dump() by `indent` spaces.
std::string DumpIndented(const OrderedJson& j, int indent) {
  std::string s = j.dump(2);
  std::string out;
  out.reserve(s.size());
  for (char c : s) {
    out.push_back(c);
    if (c == '\n') out.append(indent, ' ');
  }
  return out;
}

absl::StatusOr<std::string> BuildTokenizerJson(const GgufFile& f, const GgufTokenizer& t) {
  try {
    OrderedJson added = OrderedJson::array();
    for (const auto& [id, special] : t.added) {
      OrderedJson a;
      a["id"] = id;
      a["content"] = std::string(t.tokens[id]);
      a["single_word"] = false;
      a["lstrip"] = false;
      a["rstrip"] = false;
      a["normalized"] = false;
      a["special"] = special;
      added.push_back(std::move(a));
    }
    // The vocabulary (up to ~10^5 entries) and merges are streamed: ordered_json inserts in
    // linear time per key.
    std::string out = "{\n";
    out += "  \"version\": \"1.0\",\n";
    out += "  \"truncation\": null,\n";
    out += "  \"padding\": null,\n";
    out += absl::StrCat("  \"added_tokens\": ", DumpIndented(added, 2), ",\n");
    out += "  \"normalizer\": null,\n";
    out += absl::StrCat("  \"pre_tokenizer\": ", DumpIndented(PreTokenizerJson(t), 2), ",\n");
    out += absl::StrCat("  \"post_processor\": ", DumpIndented(PostProcessorJson(t), 2), ",\n");
    OrderedJson decoder = ByteLevelJson(true);
    out += absl::StrCat("  \"decoder\": ", DumpIndented(decoder, 2), ",\n");
    out += "  \"model\": {\n";
    out += "    \"type\": \"BPE\",\n";
    out += "    \"dropout\": null,\n";
    out += "    \"unk_token\": null,\n";
    out += "    \"continuing_subword_prefix\": null,\n";
    out += "    \"end_of_word_suffix\": null,\n";
    out += "    \"fuse_unk\": false,\n";
    out += "    \"byte_fallback\": false,\n";
    out += "    \"ignore_merges\": false,\n";
    out += "    \"vocab\": {";
    for (size_t i = 0; i < t.vocab_keys.size(); ++i) {
      absl::StrAppend(&out, i == 0 ? "\n" : ",\n", "      ", nlohmann::json(t.vocab_keys[i]).dump(),
                      ": ", i);
    }
    out += "\n    },\n";
    out += "    \"merges\": [";
    for (size_t m = 0; m < t.merges.size(); ++m) {
      absl::StrAppend(&out, m == 0 ? "\n" : ",\n", "      ",
                      nlohmann::json(std::string(t.merges[m])).dump());
    }
    out += "\n    ]\n  }\n}\n";
    return out;
  } catch (const nlohmann::json::exception& e) {
    return Invalid(f, absl::StrCat("cannot write tokenizer.json: ", e.what()));
  }
}

// ---- tensors --------------------------------------------------------------------------------

struct TensorPlan {
  const GgufTensorInfo* info;
  std::string hf_name;
  std::vector<int64_t> hf_shape;
  int64_t unpermute_heads = 0;  // > 0: Q or K, rows to unpermute with this many heads
};

absl::StatusOr<std::vector<TensorPlan>> PlanTensors(const GgufFile& f, const ModelConfig& c) {
  const int64_t h = c.hidden_size;
  std::map<std::string, std::vector<int64_t>> expected;
  std::map<std::string, int64_t> permuted;
  expected["model.embed_tokens.weight"] = {c.vocab_size, h};
  expected["model.norm.weight"] = {h};
  if (!c.tie_word_embeddings) expected["lm_head.weight"] = {c.vocab_size, h};
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    const std::string p = absl::StrCat("model.layers.", l, ".");
    expected[p + "input_layernorm.weight"] = {h};
    expected[p + "post_attention_layernorm.weight"] = {h};
    expected[p + "self_attn.q_proj.weight"] = {c.q_dim(), h};
    expected[p + "self_attn.k_proj.weight"] = {c.kv_dim(), h};
    expected[p + "self_attn.v_proj.weight"] = {c.kv_dim(), h};
    expected[p + "self_attn.o_proj.weight"] = {h, c.q_dim()};
    expected[p + "mlp.gate_proj.weight"] = {c.intermediate_size, h};
    expected[p + "mlp.up_proj.weight"] = {c.intermediate_size, h};
    expected[p + "mlp.down_proj.weight"] = {h, c.intermediate_size};
    permuted[p + "self_attn.q_proj.weight"] = c.num_attention_heads;
    permuted[p + "self_attn.k_proj.weight"] = c.num_key_value_heads;
  }
  std::vector<TensorPlan> plan;
  for (const GgufTensorInfo& info : f.tensors()) {
    absl::StatusOr<std::string> hf_name = HfTensorName(info.name);
    if (!hf_name.ok()) return Invalid(f, hf_name.status().message());
    const std::string& hf = *hf_name;
    auto it = expected.find(hf);
    if (it == expected.end()) {
      return Invalid(f, absl::StrCat("tensor '", info.name, "' (", hf,
                                     ") does not belong to a "
                                     "model of ",
                                     c.num_hidden_layers, " layers"));
    }
    if (info.shape() != it->second) {
      return Invalid(f,
                     absl::StrCat("tensor '", info.name, "' has shape ", ShapeString(info.shape()),
                                  ", expected ", ShapeString(it->second), " for ", hf));
    }
    if (!CanDequantize(info.type)) {
      return Unsupported(
          f, absl::StrCat("tensor '", info.name, "' has ggml type ", GgmlTypeName(info.type),
                          ", which cannot be dequantized (supported: F32, F16, "
                          "BF16, Q8_0, Q4_0, Q4_1)"));
    }
    TensorPlan p{&info, hf, it->second, 0};
    if (auto perm = permuted.find(hf); perm != permuted.end()) p.unpermute_heads = perm->second;
    plan.push_back(std::move(p));
    expected.erase(it);
  }
  if (!expected.empty()) {
    return Invalid(
        f, absl::StrCat(
               "the file has no tensor for ", expected.begin()->first,
               expected.size() > 1 ? absl::StrCat(" (and ", expected.size() - 1, " more)") : ""));
  }
  return plan;
}

// ---- output files ---------------------------------------------------------------------------

absl::Status WriteTextFile(const std::filesystem::path& path, const std::string& text) {
  const std::filesystem::path tmp = path.string() + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    out.write(text.data(), static_cast<std::streamsize>(text.size()));
    out.close();
    if (!out) {
      return absl::InternalError(
          absl::StrCat("cannot write ", tmp.string(), ": ", std::strerror(errno)));
    }
  }
  std::error_code ec;
  std::filesystem::rename(tmp, path, ec);
  if (ec)
    return absl::InternalError(
        absl::StrCat("cannot rename ", tmp.string(), " to ", path.string(), ": ", ec.message()));
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<ModelConfig> LlamaConfigFromGguf(const GgufFile& f) {
  MP_ASSIGN_OR_RETURN(std::string arch, f.GetString("general.architecture"));
  if (arch != "llama") {
    return Invalid(f, absl::StrCat("general.architecture is '", arch,
                                   "'; only 'llama' models can be converted"));
  }
  ModelConfig c;
  c.architecture = Architecture::kLlama;
  c.model_type = "llama";
  c.torch_dtype = "float32";
  MP_ASSIGN_OR_RETURN(c.hidden_size, PositiveInt(f, "llama.embedding_length"));
  MP_ASSIGN_OR_RETURN(c.intermediate_size, PositiveInt(f, "llama.feed_forward_length"));
  MP_ASSIGN_OR_RETURN(c.num_hidden_layers, PositiveInt(f, "llama.block_count"));
  MP_ASSIGN_OR_RETURN(c.num_attention_heads, PositiveInt(f, "llama.attention.head_count"));
  c.num_key_value_heads = c.num_attention_heads;
  if (f.Has("llama.attention.head_count_kv")) {
    MP_ASSIGN_OR_RETURN(c.num_key_value_heads, PositiveInt(f, "llama.attention.head_count_kv"));
  }
  if (c.num_attention_heads % c.num_key_value_heads != 0) {
    return Invalid(f, absl::StrCat("llama.attention.head_count (", c.num_attention_heads,
                                   ") is not a multiple of llama.attention.head_count_kv (",
                                   c.num_key_value_heads, ")"));
  }
  if (f.Has("llama.attention.key_length")) {
    MP_ASSIGN_OR_RETURN(c.head_dim, PositiveInt(f, "llama.attention.key_length"));
    if (f.Has("llama.attention.value_length")) {
      MP_ASSIGN_OR_RETURN(int64_t v, PositiveInt(f, "llama.attention.value_length"));
      if (v != c.head_dim) {
        return Unsupported(
            f, absl::StrCat("llama.attention.value_length (", v,
                            ") differs from llama.attention.key_length (", c.head_dim, ")"));
      }
    }
  } else {
    if (c.hidden_size % c.num_attention_heads != 0) {
      return Invalid(f, absl::StrCat("llama.embedding_length (", c.hidden_size,
                                     ") is not a multiple of llama.attention.head_count (",
                                     c.num_attention_heads, ")"));
    }
    c.head_dim = c.hidden_size / c.num_attention_heads;
  }
  if (c.head_dim % 2 != 0) {
    return Invalid(f, absl::StrCat("the head dimension ", c.head_dim, " is odd"));
  }
  if (f.Has("llama.rope.dimension_count")) {
    MP_ASSIGN_OR_RETURN(int64_t rope_dims, PositiveInt(f, "llama.rope.dimension_count"));
    if (rope_dims != c.head_dim) {
      return Unsupported(f, absl::StrCat("llama.rope.dimension_count is ", rope_dims,
                                         " but the head dimension is ", c.head_dim,
                                         ": partial RoPE is not supported"));
    }
  }
  if (f.Has("llama.rope.scaling.type")) {
    MP_ASSIGN_OR_RETURN(std::string scaling, f.GetString("llama.rope.scaling.type"));
    if (scaling != "none") {
      return Unsupported(f,
                         absl::StrCat("llama.rope.scaling.type '", scaling, "' is not supported"));
    }
  }
  if (f.FindTensor("rope_freqs.weight") != nullptr) {
    return Unsupported(f,
                       "tensor 'rope_freqs.weight' (Llama 3 RoPE frequency factors) is not "
                       "supported");
  }
  if (f.Has("llama.expert_count")) {
    MP_ASSIGN_OR_RETURN(int64_t experts, f.GetInt("llama.expert_count"));
    if (experts > 0) {
      return Unsupported(f, absl::StrCat("llama.expert_count is ", experts,
                                         ": mixtures of experts are not supported"));
    }
  }
  MP_ASSIGN_OR_RETURN(c.max_position_embeddings, PositiveInt(f, "llama.context_length"));
  c.rope_theta = 10000.0;
  if (f.Has("llama.rope.freq_base")) {
    MP_ASSIGN_OR_RETURN(c.rope_theta, ConfigFloat(f, "llama.rope.freq_base"));
  }
  if (!(c.rope_theta > 0)) {
    return Invalid(f, absl::StrCat("llama.rope.freq_base is ", c.rope_theta, ", expected > 0"));
  }
  MP_ASSIGN_OR_RETURN(c.rms_norm_eps, ConfigFloat(f, "llama.attention.layer_norm_rms_epsilon"));
  if (!(c.rms_norm_eps > 0)) {
    return Invalid(f, absl::StrCat("llama.attention.layer_norm_rms_epsilon is ", c.rms_norm_eps,
                                   ", expected > 0"));
  }

  const GgufTensorInfo* embed = f.FindTensor("token_embd.weight");
  if (embed == nullptr) return Invalid(f, "the file has no tensor 'token_embd.weight'");
  if (embed->dims.size() != 2 || embed->dims[0] != c.hidden_size) {
    return Invalid(
        f, absl::StrCat("tensor 'token_embd.weight' has shape ", ShapeString(embed->shape()),
                        ", expected [vocab, ", c.hidden_size, "]"));
  }
  c.vocab_size = embed->dims[1];
  if (f.Has("llama.vocab_size")) {
    MP_ASSIGN_OR_RETURN(int64_t v, f.GetInt("llama.vocab_size"));
    if (v != c.vocab_size) {
      return Invalid(f, absl::StrCat("llama.vocab_size is ", v, " but token_embd.weight has ",
                                     c.vocab_size, " rows"));
    }
  }
  if (f.Has("tokenizer.ggml.tokens")) {
    const GgufValue* tokens = f.Find("tokenizer.ggml.tokens");
    if (tokens->size() > static_cast<uint64_t>(c.vocab_size)) {
      return Invalid(f, absl::StrCat("tokenizer.ggml.tokens has ", tokens->size(),
                                     " tokens but token_embd.weight only ", c.vocab_size, " rows"));
    }
  }
  MP_ASSIGN_OR_RETURN(auto bos, OptionalTokenId(f, "tokenizer.ggml.bos_token_id", c.vocab_size));
  MP_ASSIGN_OR_RETURN(auto eos, OptionalTokenId(f, "tokenizer.ggml.eos_token_id", c.vocab_size));
  c.bos_token_id = bos;
  if (eos) c.eos_token_ids = {*eos};
  c.tie_word_embeddings = f.FindTensor("output.weight") == nullptr;
  c.attention_bias = false;
  return c;
}

absl::StatusOr<std::string> HfTensorName(std::string_view name) {
  static const auto* kTop = new std::map<std::string, std::string, std::less<>>{
      {"token_embd.weight", "model.embed_tokens.weight"},
      {"output_norm.weight", "model.norm.weight"},
      {"output.weight", "lm_head.weight"},
  };
  static const auto* kLayer = new std::map<std::string, std::string, std::less<>>{
      {"attn_norm.weight", "input_layernorm.weight"},
      {"ffn_norm.weight", "post_attention_layernorm.weight"},
      {"attn_q.weight", "self_attn.q_proj.weight"},
      {"attn_k.weight", "self_attn.k_proj.weight"},
      {"attn_v.weight", "self_attn.v_proj.weight"},
      {"attn_output.weight", "self_attn.o_proj.weight"},
      {"ffn_gate.weight", "mlp.gate_proj.weight"},
      {"ffn_up.weight", "mlp.up_proj.weight"},
      {"ffn_down.weight", "mlp.down_proj.weight"},
  };
  if (auto it = kTop->find(name); it != kTop->end()) return it->second;
  auto unknown = [&] {
    return absl::InvalidArgumentError(
        absl::StrCat("tensor '", std::string(name), "' has no Hugging Face Llama equivalent"));
  };
  constexpr std::string_view kBlk = "blk.";
  if (name.substr(0, kBlk.size()) != kBlk) return unknown();
  std::string_view rest = name.substr(kBlk.size());
  const size_t dot = rest.find('.');
  if (dot == std::string_view::npos || dot == 0 || dot > 9) return unknown();
  const std::string_view index = rest.substr(0, dot);
  if (index.size() > 1 && index[0] == '0') return unknown();
  int64_t layer = 0;
  for (char ch : index) {
    if (ch < '0' || ch > '9') return unknown();
    layer = layer * 10 + (ch - '0');
  }
  auto it = kLayer->find(rest.substr(dot + 1));
  if (it == kLayer->end()) return unknown();
  return absl::StrCat("model.layers.", layer, ".", it->second);
}

void UnpermuteQkRows(const float* src, float* dst, int64_t rows, int64_t cols, int64_t n_heads) {
  const int64_t head_dim = rows / n_heads;
  const int64_t half = head_dim / 2;
  for (int64_t h = 0; h < n_heads; ++h) {
    for (int64_t i = 0; i < half; ++i) {
      for (int64_t s = 0; s < 2; ++s) {
        const float* from = src + (h * head_dim + 2 * i + s) * cols;
        float* to = dst + (h * head_dim + s * half + i) * cols;
        std::memcpy(to, from, static_cast<size_t>(cols) * sizeof(float));
      }
    }
  }
}

absl::StatusOr<std::string> TokenizerJsonFromGguf(const GgufFile& f) {
  MP_ASSIGN_OR_RETURN(GgufTokenizer t, ReadTokenizer(f));
  return BuildTokenizerJson(f, t);
}

absl::StatusOr<std::string> TokenizerConfigJsonFromGguf(const GgufFile& f) {
  MP_ASSIGN_OR_RETURN(GgufTokenizer t, ReadTokenizer(f));
  try {
    OrderedJson j;
    j["add_bos_token"] = t.add_bos;
    j["add_eos_token"] = t.add_eos;
    j["add_prefix_space"] = t.add_prefix_space;
    OrderedJson decoder = OrderedJson::object();
    for (const auto& [id, special] : t.added) {
      OrderedJson a;
      a["content"] = std::string(t.tokens[id]);
      a["lstrip"] = false;
      a["normalized"] = false;
      a["rstrip"] = false;
      a["single_word"] = false;
      a["special"] = special;
      decoder[std::to_string(id)] = std::move(a);
    }
    j["added_tokens_decoder"] = std::move(decoder);
    auto token = [&](const std::optional<int64_t>& id) -> OrderedJson {
      if (!id) return nullptr;
      return std::string(t.tokens[*id]);
    };
    j["bos_token"] = token(t.bos);
    j["eos_token"] = token(t.eos);
    j["pad_token"] = token(t.pad);
    j["unk_token"] = token(t.unk);
    if (f.Has("tokenizer.chat_template")) {
      MP_ASSIGN_OR_RETURN(std::string tmpl, f.GetString("tokenizer.chat_template"));
      std::vector<uint32_t> cps;
      if (!DecodeUtf8(tmpl, &cps)) {
        return Invalid(f, "tokenizer.chat_template is not valid UTF-8");
      }
      j["chat_template"] = tmpl;
    }
    j["clean_up_tokenization_spaces"] = false;
    if (f.Has("llama.context_length")) {
      MP_ASSIGN_OR_RETURN(int64_t ctx, f.GetInt("llama.context_length"));
      j["model_max_length"] = ctx;
    }
    j["tokenizer_class"] = "GPT2Tokenizer";
    return j.dump(2) + "\n";
  } catch (const nlohmann::json::exception& e) {
    return Invalid(f, absl::StrCat("cannot write tokenizer_config.json: ", e.what()));
  }
}

absl::StatusOr<std::string> GenerationConfigJsonFromGguf(const GgufFile& f) {
  MP_ASSIGN_OR_RETURN(GgufTokenizer t, ReadTokenizer(f));
  OrderedJson j = OrderedJson::object();
  if (t.bos) j["bos_token_id"] = *t.bos;
  if (t.eos) j["eos_token_id"] = *t.eos;
  if (t.pad) j["pad_token_id"] = *t.pad;
  return j.dump(2) + "\n";
}

absl::Status ConvertGgufToHf(const std::string& gguf_path, const std::string& out_dir) {
  MP_ASSIGN_OR_RETURN(std::unique_ptr<GgufFile> file, GgufFile::Open(gguf_path));
  const GgufFile& f = *file;
  MP_ASSIGN_OR_RETURN(ModelConfig config, LlamaConfigFromGguf(f));
  MP_ASSIGN_OR_RETURN(std::string tokenizer_json, TokenizerJsonFromGguf(f));
  MP_ASSIGN_OR_RETURN(std::string tokenizer_config, TokenizerConfigJsonFromGguf(f));
  MP_ASSIGN_OR_RETURN(std::string generation_config, GenerationConfigJsonFromGguf(f));
  MP_ASSIGN_OR_RETURN(std::vector<TensorPlan> plan, PlanTensors(f, config));

  std::vector<SafetensorsEntry> entries;
  entries.reserve(plan.size());
  for (const TensorPlan& p : plan) {
    MP_ASSIGN_OR_RETURN(Tensor t, DequantizeTensor(f, *p.info));
    if (p.unpermute_heads > 0) {
      Tensor hf = Tensor::Host(p.hf_shape, DType::kF32);
      UnpermuteQkRows(t.data_as<float>(), hf.data_as<float>(), p.hf_shape[0], p.hf_shape[1],
                      p.unpermute_heads);
      t = hf;
    }
    entries.push_back({p.hf_name, t});
  }

  const std::filesystem::path dir(out_dir);
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) {
    return absl::InternalError(absl::StrCat("cannot create ", out_dir, ": ", ec.message()));
  }
  const std::filesystem::path weights = dir / "model.safetensors";
  const std::filesystem::path weights_tmp = dir / "model.safetensors.tmp";
  MP_RETURN_IF_ERROR(Annotate(WriteSafetensors(weights_tmp.string(), entries, {{"format", "pt"}}),
                              absl::StrCat("converting ", gguf_path)));
  std::filesystem::rename(weights_tmp, weights, ec);
  if (ec) {
    return absl::InternalError(
        absl::StrCat("cannot rename ", weights_tmp.string(), ": ", ec.message()));
  }
  MP_RETURN_IF_ERROR(WriteTextFile(dir / "config.json", ModelConfigToJson(config)));
  MP_RETURN_IF_ERROR(WriteTextFile(dir / "tokenizer.json", tokenizer_json));
  MP_RETURN_IF_ERROR(WriteTextFile(dir / "tokenizer_config.json", tokenizer_config));
  MP_RETURN_IF_ERROR(WriteTextFile(dir / "generation_config.json", generation_config));
  return absl::OkStatus();
}

}  // namespace mp
