// Byte-level BPE tokenizer (see tokenizer.h for the supported tokenizer.json subset).
//
// Encode pipeline, in the order the `tokenizers` library applies it:
//   1. invalid UTF-8 -> U+FFFD
//   2. split out added tokens whose "normalized" is false (leftmost-longest, then single_word /
//      lstrip / rstrip)
//   3. per remaining segment: normalizer (NFC), then added tokens whose "normalized" is true
//   4. pre-tokenizer steps (regex splits, digit splits), each applied to the pieces of the last
//   5. BPE per piece over its bytes (byte-level symbols), cached per piece
#include "model/tokenizer.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#include <utf8proc.h>

#include <algorithm>
#include <array>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <sstream>
#include <system_error>
#include <utility>

#include "absl/container/flat_hash_map.h"
#include "absl/hash/hash.h"
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "common/logging.h"
#include "common/status.h"
#include "nlohmann/json.hpp"

namespace mp {
namespace {

using json = nlohmann::json;

// Debian's abseil has its own string_view type: convert for StrCat and map lookups.
absl::string_view AsAbsl(std::string_view s) { return absl::string_view(s.data(), s.size()); }

// ---------------------------------------------------------------------------------------------
// UTF-8
// ---------------------------------------------------------------------------------------------

constexpr std::string_view kReplacementChar = "\xEF\xBF\xBD";  // U+FFFD

enum class Utf8Kind { kValid, kInvalid, kTruncated };
struct Utf8Step {
  Utf8Kind kind;
  size_t len;  // bytes of the sequence, or of the maximal invalid subpart
};

// Classifies the UTF-8 sequence starting at s[i] following the Unicode "maximal subpart"
// practice (the one Python's and Rust's lossy decoders implement).
Utf8Step NextUtf8(std::string_view s, size_t i) {
  const uint8_t b = static_cast<uint8_t>(s[i]);
  if (b < 0x80) return {Utf8Kind::kValid, 1};
  size_t need;
  uint8_t lo = 0x80, hi = 0xBF;
  if (b >= 0xC2 && b <= 0xDF) {
    need = 1;
  } else if (b == 0xE0) {
    need = 2;
    lo = 0xA0;
  } else if ((b >= 0xE1 && b <= 0xEC) || b == 0xEE || b == 0xEF) {
    need = 2;
  } else if (b == 0xED) {
    need = 2;
    hi = 0x9F;
  } else if (b == 0xF0) {
    need = 3;
    lo = 0x90;
  } else if (b >= 0xF1 && b <= 0xF3) {
    need = 3;
  } else if (b == 0xF4) {
    need = 3;
    hi = 0x8F;
  } else {
    return {Utf8Kind::kInvalid, 1};
  }
  for (size_t k = 1; k <= need; ++k) {
    if (i + k >= s.size()) return {Utf8Kind::kTruncated, k};
    const uint8_t c = static_cast<uint8_t>(s[i + k]);
    const uint8_t l = k == 1 ? lo : 0x80;
    const uint8_t h = k == 1 ? hi : 0xBF;
    if (c < l || c > h) return {Utf8Kind::kInvalid, k};
  }
  return {Utf8Kind::kValid, need + 1};
}

bool IsValidUtf8(std::string_view s) {
  size_t i = 0;
  const size_t n = s.size();
  while (i < n) {
    // Skip ASCII eight bytes at a time.
    while (i + 8 <= n) {
      uint64_t w;
      std::memcpy(&w, s.data() + i, 8);
      if (w & 0x8080808080808080ull) break;
      i += 8;
    }
    if (i >= n) break;
    const Utf8Step step = NextUtf8(s, i);
    if (step.kind != Utf8Kind::kValid) return false;
    i += step.len;
  }
  return true;
}

// Appends `s` with each maximal invalid subpart replaced by U+FFFD.
void AppendUtf8Lossy(std::string_view s, std::string* out) {
  size_t i = 0;
  while (i < s.size()) {
    const Utf8Step step = NextUtf8(s, i);
    if (step.kind == Utf8Kind::kValid) {
      out->append(s.substr(i, step.len));
    } else {
      out->append(kReplacementChar);
    }
    i += step.len;
  }
}

// Decodes the (valid) UTF-8 character at s[i]; *len receives its length.
char32_t DecodeUtf8(std::string_view s, size_t i, size_t* len) {
  const uint8_t b = static_cast<uint8_t>(s[i]);
  if (b < 0x80) {
    *len = 1;
    return b;
  }
  if (b < 0xE0) {
    *len = 2;
    return ((b & 0x1F) << 6) | (s[i + 1] & 0x3F);
  }
  if (b < 0xF0) {
    *len = 3;
    return ((b & 0x0F) << 12) | ((s[i + 1] & 0x3F) << 6) | (s[i + 2] & 0x3F);
  }
  *len = 4;
  return ((b & 0x07) << 18) | ((s[i + 1] & 0x3F) << 12) | ((s[i + 2] & 0x3F) << 6) |
         (s[i + 3] & 0x3F);
}

// Start of the last character of the (valid) UTF-8 string `s` (non-empty).
size_t LastCharStart(std::string_view s) {
  size_t i = s.size() - 1;
  while (i > 0 && (static_cast<uint8_t>(s[i]) & 0xC0) == 0x80) --i;
  return i;
}

void AppendUtf8(char32_t c, std::string* out) {
  if (c < 0x80) {
    out->push_back(static_cast<char>(c));
  } else if (c < 0x800) {
    out->push_back(static_cast<char>(0xC0 | (c >> 6)));
    out->push_back(static_cast<char>(0x80 | (c & 0x3F)));
  } else if (c < 0x10000) {
    out->push_back(static_cast<char>(0xE0 | (c >> 12)));
    out->push_back(static_cast<char>(0x80 | ((c >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (c & 0x3F)));
  } else {
    out->push_back(static_cast<char>(0xF0 | (c >> 18)));
    out->push_back(static_cast<char>(0x80 | ((c >> 12) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | ((c >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (c & 0x3F)));
  }
}

// ---------------------------------------------------------------------------------------------
// Unicode character classes
// ---------------------------------------------------------------------------------------------

// Unicode White_Space (what Oniguruma's and Rust's \s match).
bool IsWhiteSpace(char32_t c) {
  if (c < 0x80) return (c >= 0x09 && c <= 0x0D) || c == 0x20;
  return c == 0x85 || c == 0xA0 || c == 0x1680 || (c >= 0x2000 && c <= 0x200A) || c == 0x2028 ||
         c == 0x2029 || c == 0x202F || c == 0x205F || c == 0x3000;
}

// The regular-expression pattern text of IsWhiteSpace, for use inside a character class.
constexpr std::string_view kWhiteSpaceClassBody =
    "\\x{9}-\\x{D}\\x{20}\\x{85}\\x{A0}\\x{1680}\\x{2000}-\\x{200A}\\x{2028}\\x{2029}\\x{202F}"
    "\\x{205F}\\x{3000}";

// Rust's char::is_numeric: general categories Nd, Nl, No.
bool IsNumeric(char32_t c) {
  if (c < 0x80) return c >= '0' && c <= '9';
  const utf8proc_category_t cat = utf8proc_category(static_cast<utf8proc_int32_t>(c));
  return cat == UTF8PROC_CATEGORY_ND || cat == UTF8PROC_CATEGORY_NL || cat == UTF8PROC_CATEGORY_NO;
}

// Rust regex's Unicode \w: letters, marks, decimal digits, connector punctuation, joiners.
bool IsWordChar(char32_t c) {
  if (c < 0x80) {
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_';
  }
  if (c == 0x200C || c == 0x200D) return true;
  switch (utf8proc_category(static_cast<utf8proc_int32_t>(c))) {
    case UTF8PROC_CATEGORY_LU:
    case UTF8PROC_CATEGORY_LL:
    case UTF8PROC_CATEGORY_LT:
    case UTF8PROC_CATEGORY_LM:
    case UTF8PROC_CATEGORY_LO:
    case UTF8PROC_CATEGORY_MN:
    case UTF8PROC_CATEGORY_MC:
    case UTF8PROC_CATEGORY_ME:
    case UTF8PROC_CATEGORY_ND:
    case UTF8PROC_CATEGORY_NL:
    case UTF8PROC_CATEGORY_PC:
      return true;
    default:
      return false;
  }
}

// ---------------------------------------------------------------------------------------------
// NFC
// ---------------------------------------------------------------------------------------------

void AppendNfcChunk(std::string_view chunk, std::string* out) {
  utf8proc_uint8_t* result = nullptr;
  const utf8proc_ssize_t n =
      utf8proc_map(reinterpret_cast<const utf8proc_uint8_t*>(chunk.data()),
                   static_cast<utf8proc_ssize_t>(chunk.size()), &result,
                   static_cast<utf8proc_option_t>(UTF8PROC_STABLE | UTF8PROC_COMPOSE));
  if (n < 0) {
    // Only possible for invalid UTF-8 or out of memory; the input was validated before.
    out->append(chunk);
  } else {
    out->append(reinterpret_cast<const char*>(result), static_cast<size_t>(n));
  }
  std::free(result);
}

// Appends NFC(s). Every ASCII character is a normalization-stable boundary (canonical class 0,
// never decomposed, never the second character of a composition), so only the stretches of
// non-ASCII characters, together with the ASCII character just before them (which may compose
// with a following mark), go through utf8proc.
void AppendNfc(std::string_view s, std::string* out) {
  size_t i = 0;
  const size_t n = s.size();
  while (i < n) {
    size_t j = i;
    while (j < n && static_cast<uint8_t>(s[j]) < 0x80) ++j;
    if (j == n) {
      out->append(s.substr(i));
      return;
    }
    const size_t start = j > i ? j - 1 : j;
    out->append(s.substr(i, start - i));
    size_t k = j;
    while (k < n && static_cast<uint8_t>(s[k]) >= 0x80) ++k;
    AppendNfcChunk(s.substr(start, k - start), out);
    i = k;
  }
}

// ---------------------------------------------------------------------------------------------
// Byte-level alphabet (GPT-2's bytes_to_unicode)
// ---------------------------------------------------------------------------------------------

struct ByteAlphabet {
  std::array<char32_t, 256> byte_to_char;
  std::array<int16_t, 0x144> char_to_byte;  // -1 for characters outside the alphabet

  ByteAlphabet() {
    char_to_byte.fill(-1);
    int extra = 0;
    for (int b = 0; b < 256; ++b) {
      const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE;
      const char32_t c =
          printable ? static_cast<char32_t>(b) : static_cast<char32_t>(256 + extra++);
      byte_to_char[b] = c;
      char_to_byte[c] = static_cast<int16_t>(b);
    }
  }
  int ByteOf(char32_t c) const { return c < char_to_byte.size() ? char_to_byte[c] : -1; }
};

const ByteAlphabet& Alphabet() {
  static const ByteAlphabet* const alphabet = new ByteAlphabet();
  return *alphabet;
}

// Maps a token spelled in the byte-level alphabet to its bytes. A token with a character
// outside the alphabet decodes to its own UTF-8 bytes (as the `tokenizers` ByteLevel decoder
// does). *in_alphabet tells which case applied.
std::string ByteLevelToBytes(std::string_view token, bool* in_alphabet) {
  const ByteAlphabet& alphabet = Alphabet();
  std::string bytes;
  bytes.reserve(token.size());
  size_t i = 0;
  while (i < token.size()) {
    const Utf8Step step = NextUtf8(token, i);
    if (step.kind != Utf8Kind::kValid) break;
    size_t len;
    const int b = alphabet.ByteOf(DecodeUtf8(token, i, &len));
    if (b < 0) break;
    bytes.push_back(static_cast<char>(b));
    i += len;
  }
  *in_alphabet = i == token.size();
  if (!*in_alphabet) return std::string(token);
  return bytes;
}

std::string BytesToByteLevel(std::string_view bytes) {
  std::string out;
  for (const char b : bytes) AppendUtf8(Alphabet().byte_to_char[static_cast<uint8_t>(b)], &out);
  return out;
}

// ---------------------------------------------------------------------------------------------
// Regular expressions (PCRE2, UTF + Unicode properties, JIT when available)
// ---------------------------------------------------------------------------------------------

// Rewrites \s (outside and inside character classes) to Unicode White_Space, the set Oniguruma
// uses; PCRE2's own \s differs in a few code points.
std::string TranslateWhiteSpaceEscapes(std::string_view pattern) {
  std::string out;
  bool in_class = false;
  for (size_t i = 0; i < pattern.size(); ++i) {
    const char c = pattern[i];
    if (c == '\\' && i + 1 < pattern.size()) {
      const char next = pattern[i + 1];
      if (next == 's') {
        if (in_class) {
          out.append(kWhiteSpaceClassBody);
        } else {
          absl::StrAppend(&out, "[", AsAbsl(kWhiteSpaceClassBody), "]");
        }
      } else if (next == 'S' && !in_class) {
        absl::StrAppend(&out, "[^", AsAbsl(kWhiteSpaceClassBody), "]");
      } else {
        out.push_back(c);
        out.push_back(next);
      }
      ++i;
      continue;
    }
    if (!in_class && c == '[') {
      in_class = true;
      out.push_back(c);
      if (i + 1 < pattern.size() && pattern[i + 1] == '^') out.push_back(pattern[++i]);
      if (i + 1 < pattern.size() && pattern[i + 1] == ']') out.push_back(pattern[++i]);
      continue;
    }
    if (in_class && c == '[' && i + 1 < pattern.size() && pattern[i + 1] == ':') {
      const size_t end = pattern.find(":]", i + 2);
      if (end != std::string_view::npos) {
        out.append(pattern.substr(i, end + 2 - i));
        i = end + 1;
        continue;
      }
    }
    if (in_class && c == ']') in_class = false;
    out.push_back(c);
  }
  return out;
}

class Regex {
 public:
  static absl::StatusOr<std::unique_ptr<Regex>> Compile(std::string_view pattern, bool literal) {
    std::string translated = literal ? std::string(pattern) : TranslateWhiteSpaceEscapes(pattern);
    uint32_t options = PCRE2_UTF | PCRE2_UCP | PCRE2_NO_UTF_CHECK;
    options |= literal ? PCRE2_LITERAL : PCRE2_MULTILINE;
    int error = 0;
    PCRE2_SIZE offset = 0;
    pcre2_code* code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(translated.data()),
                                     translated.size(), options, &error, &offset, nullptr);
    if (code == nullptr) {
      PCRE2_UCHAR message[256];
      pcre2_get_error_message(error, message, sizeof(message));
      return absl::InvalidArgumentError(absl::StrCat("cannot compile regex '", AsAbsl(pattern),
                                                     "' at offset ", offset, ": ",
                                                     reinterpret_cast<const char*>(message)));
    }
    auto regex = std::unique_ptr<Regex>(new Regex(code));
    regex->jit_ = pcre2_jit_compile(code, PCRE2_JIT_COMPLETE) == 0;
    return regex;
  }

  ~Regex() { pcre2_code_free(code_); }

  // Calls sink(piece) for every match and every non-empty gap between matches, in order
  // (the "Isolated" split behaviour). `s` must be valid UTF-8.
  template <typename Sink>
  void SplitIsolated(std::string_view s, pcre2_match_data* match, pcre2_match_context* context,
                     Sink&& sink) const {
    size_t prev = 0;
    size_t pos = 0;
    while (pos < s.size()) {
      int rc = jit_ ? pcre2_jit_match(code_, reinterpret_cast<PCRE2_SPTR>(s.data()), s.size(), pos,
                                      0, match, context)
                    : PCRE2_ERROR_JIT_BADOPTION;
      if (rc < 0 && rc != PCRE2_ERROR_NOMATCH) {
        // JIT unavailable or out of stack: the interpreter needs no machine stack.
        rc = pcre2_match(code_, reinterpret_cast<PCRE2_SPTR>(s.data()), s.size(), pos,
                         PCRE2_NO_UTF_CHECK, match, context);
      }
      if (rc == PCRE2_ERROR_NOMATCH) break;
      if (rc < 0) {
        MP_LOG(Warning) << "tokenizer regex failed with PCRE2 error " << rc
                        << "; keeping the rest of the piece whole";
        break;
      }
      const PCRE2_SIZE* ovector = pcre2_get_ovector_pointer(match);
      const size_t start = ovector[0];
      const size_t end = ovector[1];
      if (end == start) {
        // Empty match: contributes no piece; move on by one character.
        size_t len;
        DecodeUtf8(s, start, &len);
        pos = start + len;
        continue;
      }
      if (start > prev) sink(s.substr(prev, start - prev));
      sink(s.substr(start, end - start));
      prev = pos = end;
    }
    if (prev < s.size()) sink(s.substr(prev));
  }

  const pcre2_code* code() const { return code_; }

 private:
  explicit Regex(pcre2_code* code) : code_(code) {}
  pcre2_code* code_;
  bool jit_ = false;
};

// GPT-2's split regex, used by the ByteLevel pre-tokenizer when use_regex is true.
constexpr std::string_view kGpt2Pattern =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";

// ---------------------------------------------------------------------------------------------
// Added tokens
// ---------------------------------------------------------------------------------------------

struct AddedToken {
  int32_t id = 0;
  std::string content;
  bool special = false;
  bool single_word = false;
  bool lstrip = false;
  bool rstrip = false;
  bool normalized = false;
};

// Leftmost-longest, non-overlapping matching of a set of strings (what an Aho-Corasick automaton
// with MatchKind::LeftmostLongest reports).
class LiteralMatcher {
 public:
  void Add(std::string pattern, int token_index) {
    if (pattern.empty()) return;
    const auto first = static_cast<uint8_t>(pattern[0]);
    patterns_.push_back({std::move(pattern), token_index});
    first_byte_[first] = true;
  }
  void Finalize() {
    std::stable_sort(patterns_.begin(), patterns_.end(), [](const Pattern& a, const Pattern& b) {
      return a.text.size() > b.text.size();
    });
    for (size_t i = 0; i < patterns_.size(); ++i) {
      by_first_byte_[static_cast<uint8_t>(patterns_[i].text[0])].push_back(static_cast<int>(i));
    }
  }
  bool empty() const { return patterns_.empty(); }

  // Calls f(start, end, token_index) for each match.
  template <typename F>
  void FindAll(std::string_view s, F&& f) const {
    size_t i = 0;
    while (i < s.size()) {
      const auto b = static_cast<uint8_t>(s[i]);
      if (!first_byte_[b]) {
        ++i;
        continue;
      }
      bool found = false;
      for (const int p : by_first_byte_[b]) {
        const std::string& text = patterns_[p].text;
        if (s.size() - i >= text.size() &&
            std::memcmp(s.data() + i, text.data(), text.size()) == 0) {
          f(i, i + text.size(), patterns_[p].token_index);
          i += text.size();
          found = true;
          break;
        }
      }
      if (!found) ++i;
    }
  }

 private:
  struct Pattern {
    std::string text;
    int token_index;
  };
  std::vector<Pattern> patterns_;
  std::array<bool, 256> first_byte_{};
  std::array<std::vector<int>, 256> by_first_byte_;
};

// ---------------------------------------------------------------------------------------------
// BPE merge bookkeeping
// ---------------------------------------------------------------------------------------------

struct MergeInfo {
  int32_t rank;
  int32_t new_id;
};

inline uint64_t PairKey(int32_t a, int32_t b) {
  return (static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) | static_cast<uint32_t>(b);
}

// A bounded cache of BPE results per pre-token, sharded to keep lock contention low. When a
// shard is full it is emptied (pre-token frequencies are heavy-tailed, so the hot entries come
// back at once).
class BpeCache {
 public:
  static constexpr size_t kShards = 16;
  static constexpr size_t kEntriesPerShard = 8192;
  static constexpr size_t kMaxWordBytes = 256;

  bool Get(std::string_view word, size_t hash, std::vector<int32_t>* out) const {
    const Shard& shard = shards_[hash % kShards];
    std::lock_guard<std::mutex> lock(shard.mu);
    auto it = shard.map.find(AsAbsl(word));
    if (it == shard.map.end()) return false;
    out->insert(out->end(), it->second.begin(), it->second.end());
    return true;
  }
  void Put(std::string_view word, size_t hash, std::span<const int32_t> ids) const {
    Shard& shard = shards_[hash % kShards];
    std::lock_guard<std::mutex> lock(shard.mu);
    if (shard.map.size() >= kEntriesPerShard) shard.map.clear();
    shard.map.try_emplace(AsAbsl(word), ids.begin(), ids.end());
  }

 private:
  struct Shard {
    mutable std::mutex mu;
    absl::flat_hash_map<std::string, std::vector<int32_t>> map;
  };
  mutable std::array<Shard, kShards> shards_;
};

// ---------------------------------------------------------------------------------------------
// JSON helpers
// ---------------------------------------------------------------------------------------------

const json* Field(const json& object, const char* key) {
  if (!object.is_object()) return nullptr;
  auto it = object.find(key);
  return it == object.end() ? nullptr : &*it;
}

absl::StatusOr<bool> BoolField(const json& object, const char* key, bool default_value,
                               std::string_view where) {
  const json* v = Field(object, key);
  if (v == nullptr || v->is_null()) return default_value;
  if (!v->is_boolean()) {
    return absl::InvalidArgumentError(absl::StrCat(AsAbsl(where), ".", key, " must be a boolean"));
  }
  return v->get<bool>();
}

std::string TypeOf(const json& node) {
  const json* type = Field(node, "type");
  return type != nullptr && type->is_string() ? type->get<std::string>() : std::string("?");
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Tokenizer::Impl
// ---------------------------------------------------------------------------------------------

struct Tokenizer::Impl {
  struct PreStep {
    enum class Kind { kRegex, kDigits };
    Kind kind;
    std::unique_ptr<Regex> regex;    // kRegex
    bool individual_digits = false;  // kDigits
  };

  // Per-Encode() scratch state (PCRE2 match data and JIT stack).
  struct Scratch {
    explicit Scratch(const Impl& impl) {
      context = pcre2_match_context_create(nullptr);
      jit_stack = pcre2_jit_stack_create(32 * 1024, 8 * 1024 * 1024, nullptr);
      if (context != nullptr && jit_stack != nullptr) {
        pcre2_jit_stack_assign(context, nullptr, jit_stack);
      }
      for (const PreStep& step : impl.pre_steps) {
        match.push_back(step.regex != nullptr
                            ? pcre2_match_data_create_from_pattern(step.regex->code(), nullptr)
                            : nullptr);
      }
    }
    ~Scratch() {
      for (pcre2_match_data* m : match) pcre2_match_data_free(m);
      pcre2_jit_stack_free(jit_stack);
      pcre2_match_context_free(context);
    }
    pcre2_match_context* context = nullptr;
    pcre2_jit_stack* jit_stack = nullptr;
    std::vector<pcre2_match_data*> match;  // per pre-tokenizer step
    std::vector<int32_t> word_ids;
  };

  // Normalizer / pre-tokenizer / added tokens.
  bool nfc = false;
  std::vector<PreStep> pre_steps;
  std::vector<AddedToken> added;
  LiteralMatcher raw_matcher;         // added tokens with normalized = false
  LiteralMatcher normalized_matcher;  // added tokens with normalized = true (content normalized)

  // Vocabulary.
  absl::flat_hash_map<std::string, int32_t> token_to_id;  // tokenizer.json spellings
  std::vector<std::string> id_to_token;
  std::vector<uint8_t> has_token;
  std::vector<uint8_t> is_special;
  std::string decoded_bytes;             // concatenated byte strings, indexed by decoded_offset
  std::vector<uint32_t> decoded_offset;  // size vocab_size + 1

  // BPE model.
  absl::flat_hash_map<uint64_t, MergeInfo> merges;
  std::array<int32_t, 256> byte_id{};      // the symbol of each byte, -1 when missing
  std::array<int32_t, 256> fallback_id{};  // <0xXX> tokens when byte_fallback, else -1
  int32_t unk_id = -1;
  bool fuse_unk = false;
  bool ignore_merges = false;
  absl::flat_hash_map<std::string, int32_t> bytes_to_id;  // only filled for ignore_merges
  BpeCache cache;

  int64_t vocab_size() const { return static_cast<int64_t>(id_to_token.size()); }

  std::string_view Bytes(int32_t id) const {
    return std::string_view(decoded_bytes)
        .substr(decoded_offset[id], decoded_offset[id + 1] - decoded_offset[id]);
  }

  void Encode(std::string_view text, std::vector<int32_t>* out) const;
  template <typename Emit>
  void SplitAddedTokens(const LiteralMatcher& matcher, std::string_view s, Emit&& emit) const;
  void EncodeSegment(std::string_view segment, Scratch& scratch, std::vector<int32_t>* out) const;
  void PreTokenize(size_t step, std::string_view piece, Scratch& scratch,
                   std::vector<int32_t>* out) const;
  void EncodeWord(std::string_view word, Scratch& scratch, std::vector<int32_t>* out) const;
  void RunBpe(std::string_view word, std::vector<int32_t>* out) const;

  // Loading (tokenizer.json -> Impl).
  static absl::StatusOr<std::unique_ptr<Impl>> Build(const json& root);
  static absl::Status ParsePreTokenizer(const json& node, std::vector<PreStep>* steps,
                                        bool* has_byte_level);
  absl::Status CheckDecoder(const json* node, const std::vector<uint8_t>& in_alphabet) const;
};

void Tokenizer::Impl::Encode(std::string_view text, std::vector<int32_t>* out) const {
  std::string sanitized;
  if (!IsValidUtf8(text)) {
    AppendUtf8Lossy(text, &sanitized);
    text = sanitized;
  }
  Scratch scratch(*this);
  out->reserve(out->size() + text.size() / 3 + 8);
  SplitAddedTokens(raw_matcher, text, [&](std::string_view segment, int token_index) {
    if (token_index >= 0) {
      out->push_back(added[token_index].id);
    } else {
      EncodeSegment(segment, scratch, out);
    }
  });
}

// The `tokenizers` AddedVocabulary::find_matches: leftmost-longest matches, a single_word token
// only where it is not glued to word characters, lstrip / rstrip absorbing whitespace around it.
// Calls emit(segment, token_index) with token_index -1 for text between tokens.
template <typename Emit>
void Tokenizer::Impl::SplitAddedTokens(const LiteralMatcher& matcher, std::string_view s,
                                       Emit&& emit) const {
  if (matcher.empty()) {
    if (!s.empty()) emit(s, -1);
    return;
  }
  size_t start_offset = 0;
  matcher.FindAll(s, [&](size_t start, size_t stop, int token_index) {
    const AddedToken& token = added[token_index];
    if (start < start_offset) return;  // inside the whitespace an rstrip already took
    if (token.single_word) {
      size_t len;
      const bool word_before =
          start > 0 && IsWordChar(DecodeUtf8(s, LastCharStart(s.substr(0, start)), &len));
      const bool word_after = stop < s.size() && IsWordChar(DecodeUtf8(s, stop, &len));
      if (word_before || word_after) return;
    }
    if (token.lstrip) {
      size_t new_start = start;
      while (new_start > 0) {
        size_t len;
        const size_t prev = LastCharStart(s.substr(0, new_start));
        if (!IsWhiteSpace(DecodeUtf8(s, prev, &len))) break;
        new_start = prev;
      }
      start = std::max(new_start, start_offset);
    }
    if (token.rstrip) {
      while (stop < s.size()) {
        size_t len;
        if (!IsWhiteSpace(DecodeUtf8(s, stop, &len))) break;
        stop += len;
      }
    }
    if (start_offset < start) emit(s.substr(start_offset, start - start_offset), -1);
    emit(s.substr(start, stop - start), token_index);
    start_offset = stop;
  });
  if (start_offset < s.size()) emit(s.substr(start_offset), -1);
}

void Tokenizer::Impl::EncodeSegment(std::string_view segment, Scratch& scratch,
                                    std::vector<int32_t>* out) const {
  std::string_view normalized = segment;
  std::string local;
  if (nfc) {
    AppendNfc(segment, &local);
    normalized = local;
  }
  SplitAddedTokens(normalized_matcher, normalized, [&](std::string_view piece, int token_index) {
    if (token_index >= 0) {
      out->push_back(added[token_index].id);
    } else {
      PreTokenize(0, piece, scratch, out);
    }
  });
}

void Tokenizer::Impl::PreTokenize(size_t step, std::string_view piece, Scratch& scratch,
                                  std::vector<int32_t>* out) const {
  if (piece.empty()) return;
  if (step == pre_steps.size()) {
    EncodeWord(piece, scratch, out);
    return;
  }
  const PreStep& pre = pre_steps[step];
  auto next = [&](std::string_view sub) { PreTokenize(step + 1, sub, scratch, out); };
  if (pre.kind == PreStep::Kind::kRegex) {
    pre.regex->SplitIsolated(piece, scratch.match[step], scratch.context, next);
    return;
  }
  // Digits: numeric characters isolated one by one, or in contiguous runs.
  size_t run_start = 0;
  bool run_numeric = false;
  size_t i = 0;
  while (i < piece.size()) {
    size_t len;
    const bool numeric = IsNumeric(DecodeUtf8(piece, i, &len));
    if (i > run_start && (numeric != run_numeric || (numeric && pre.individual_digits))) {
      next(piece.substr(run_start, i - run_start));
      run_start = i;
    }
    run_numeric = numeric;
    i += len;
  }
  if (run_start < piece.size()) next(piece.substr(run_start));
}

void Tokenizer::Impl::EncodeWord(std::string_view word, Scratch& scratch,
                                 std::vector<int32_t>* out) const {
  if (word.size() == 1) {
    const int32_t id = byte_id[static_cast<uint8_t>(word[0])];
    if (id >= 0) {
      out->push_back(id);
      return;
    }
  }
  if (ignore_merges) {
    auto it = bytes_to_id.find(AsAbsl(word));
    if (it != bytes_to_id.end()) {
      out->push_back(it->second);
      return;
    }
  }
  if (word.size() > BpeCache::kMaxWordBytes) {
    RunBpe(word, out);
    return;
  }
  const size_t hash = absl::Hash<absl::string_view>()(AsAbsl(word));
  if (cache.Get(word, hash, out)) return;
  scratch.word_ids.clear();
  RunBpe(word, &scratch.word_ids);
  cache.Put(word, hash, scratch.word_ids);
  out->insert(out->end(), scratch.word_ids.begin(), scratch.word_ids.end());
}

// The `tokenizers` BPE merge loop (models/bpe/word.rs merge_all): a min-heap of candidate merges
// ordered by (rank, position); an entry is applied only if the pair at its position still
// merges into the same token.
void Tokenizer::Impl::RunBpe(std::string_view word, std::vector<int32_t>* out) const {
  struct Symbol {
    int32_t id;
    int32_t prev;
    int32_t next;
    uint32_t len;  // bytes covered; 0 once merged into its left neighbour
  };
  struct Candidate {
    int32_t rank;
    int32_t pos;
    int32_t new_id;
    bool operator<(const Candidate& o) const {  // the heap top is the lowest (rank, pos)
      return rank != o.rank ? rank > o.rank : pos > o.pos;
    }
  };
  thread_local std::vector<Symbol> symbols;
  thread_local std::vector<Candidate> heap_storage;
  symbols.clear();

  auto push_symbol = [&](int32_t id, uint32_t len) {
    const auto index = static_cast<int32_t>(symbols.size());
    if (index > 0) symbols.back().next = index;
    symbols.push_back({id, index - 1, -1, len});
  };
  int32_t pending_unk_len = 0;
  for (const char c : word) {
    const auto b = static_cast<uint8_t>(c);
    int32_t id = byte_id[b];
    if (id < 0) id = fallback_id[b];
    if (id >= 0) {
      if (pending_unk_len > 0) {
        push_symbol(unk_id, static_cast<uint32_t>(pending_unk_len));
        pending_unk_len = 0;
      }
      push_symbol(id, 1);
      continue;
    }
    if (unk_id < 0) continue;  // no unk token: the byte is dropped
    if (pending_unk_len > 0 && !fuse_unk) {
      push_symbol(unk_id, static_cast<uint32_t>(pending_unk_len));
      pending_unk_len = 0;
    }
    pending_unk_len += 1;
  }
  if (pending_unk_len > 0) push_symbol(unk_id, static_cast<uint32_t>(pending_unk_len));

  if (symbols.size() > 1) {
    std::vector<Candidate>& heap = heap_storage;
    heap.clear();
    auto push = [&](int32_t rank, int32_t pos, int32_t new_id) {
      heap.push_back({rank, pos, new_id});
      std::push_heap(heap.begin(), heap.end());
    };
    for (size_t i = 0; i + 1 < symbols.size(); ++i) {
      auto it = merges.find(PairKey(symbols[i].id, symbols[i + 1].id));
      if (it != merges.end()) push(it->second.rank, static_cast<int32_t>(i), it->second.new_id);
    }
    while (!heap.empty()) {
      std::pop_heap(heap.begin(), heap.end());
      const Candidate top = heap.back();
      heap.pop_back();
      Symbol& left = symbols[top.pos];
      if (left.len == 0 || left.next < 0) continue;
      const int32_t next_pos = left.next;
      const Symbol right = symbols[next_pos];
      auto it = merges.find(PairKey(left.id, right.id));
      if (it == merges.end() || it->second.new_id != top.new_id) continue;
      left.id = top.new_id;
      left.len += right.len;
      left.next = right.next;
      symbols[next_pos].len = 0;
      if (right.next >= 0) symbols[right.next].prev = top.pos;
      if (left.prev >= 0) {
        auto p = merges.find(PairKey(symbols[left.prev].id, left.id));
        if (p != merges.end()) push(p->second.rank, left.prev, p->second.new_id);
      }
      if (left.next >= 0) {
        auto n = merges.find(PairKey(left.id, symbols[left.next].id));
        if (n != merges.end()) push(n->second.rank, top.pos, n->second.new_id);
      }
    }
  }
  for (const Symbol& s : symbols) {
    if (s.len != 0) out->push_back(s.id);
  }
}

// ---------------------------------------------------------------------------------------------
// Loading
// ---------------------------------------------------------------------------------------------

namespace {

absl::Status ParseNormalizer(const json& node, bool* nfc) {
  if (node.is_null()) return absl::OkStatus();
  const std::string type = TypeOf(node);
  if (type == "NFC") {
    *nfc = true;
    return absl::OkStatus();
  }
  if (type == "Sequence") {
    const json* list = Field(node, "normalizers");
    if (list == nullptr || !list->is_array()) {
      return absl::InvalidArgumentError("normalizer Sequence needs a 'normalizers' array");
    }
    for (const json& child : *list) MP_RETURN_IF_ERROR(ParseNormalizer(child, nfc));
    return absl::OkStatus();
  }
  return absl::InvalidArgumentError(
      absl::StrCat("unsupported normalizer '", type, "' (supported: NFC, Sequence)"));
}

bool IsByteFallbackSpelling(std::string_view token);
absl::StatusOr<std::pair<std::string, std::string>> ParseMerge(const json& merge);

}  // namespace

absl::Status Tokenizer::Impl::ParsePreTokenizer(const json& node, std::vector<PreStep>* steps,
                                                bool* has_byte_level) {
  const std::string type = TypeOf(node);
  if (type == "Sequence") {
    const json* list = Field(node, "pretokenizers");
    if (list == nullptr || !list->is_array()) {
      return absl::InvalidArgumentError("pre_tokenizer Sequence needs a 'pretokenizers' array");
    }
    for (const json& child : *list) {
      MP_RETURN_IF_ERROR(ParsePreTokenizer(child, steps, has_byte_level));
    }
    return absl::OkStatus();
  }
  if (type == "ByteLevel") {
    MP_ASSIGN_OR_RETURN(const bool add_prefix_space,
                        BoolField(node, "add_prefix_space", false, "pre_tokenizer.ByteLevel"));
    if (add_prefix_space) {
      return absl::InvalidArgumentError(
          "unsupported pre_tokenizer ByteLevel with add_prefix_space=true");
    }
    MP_ASSIGN_OR_RETURN(const bool use_regex,
                        BoolField(node, "use_regex", true, "pre_tokenizer.ByteLevel"));
    if (*has_byte_level) {
      return absl::InvalidArgumentError("unsupported pre_tokenizer: more than one ByteLevel step");
    }
    *has_byte_level = true;
    if (use_regex) {
      PreStep step{PreStep::Kind::kRegex, nullptr, false};
      MP_ASSIGN_OR_RETURN(step.regex, Regex::Compile(kGpt2Pattern, /*literal=*/false));
      steps->push_back(std::move(step));
    }
    return absl::OkStatus();
  }
  if (type == "Split") {
    const json* pattern = Field(node, "pattern");
    const json* regex = pattern != nullptr ? Field(*pattern, "Regex") : nullptr;
    const json* literal = pattern != nullptr ? Field(*pattern, "String") : nullptr;
    if ((regex == nullptr || !regex->is_string()) &&
        (literal == nullptr || !literal->is_string())) {
      return absl::InvalidArgumentError(
          "pre_tokenizer Split needs pattern {\"Regex\": ...} or {\"String\": ...}");
    }
    const json* behavior = Field(node, "behavior");
    const std::string behavior_name =
        behavior != nullptr && behavior->is_string() ? behavior->get<std::string>() : "";
    if (behavior_name != "Isolated") {
      return absl::InvalidArgumentError(absl::StrCat("unsupported pre_tokenizer Split behavior '",
                                                     behavior_name, "' (supported: Isolated)"));
    }
    MP_ASSIGN_OR_RETURN(const bool invert, BoolField(node, "invert", false, "pre_tokenizer.Split"));
    if (invert) {
      return absl::InvalidArgumentError("unsupported pre_tokenizer Split with invert=true");
    }
    const bool is_literal = regex == nullptr || !regex->is_string();
    PreStep step{PreStep::Kind::kRegex, nullptr, false};
    MP_ASSIGN_OR_RETURN(step.regex, Regex::Compile(is_literal ? literal->get<std::string>()
                                                              : regex->get<std::string>(),
                                                   is_literal));
    steps->push_back(std::move(step));
    return absl::OkStatus();
  }
  if (type == "Digits") {
    MP_ASSIGN_OR_RETURN(const bool individual,
                        BoolField(node, "individual_digits", false, "pre_tokenizer.Digits"));
    steps->push_back(PreStep{PreStep::Kind::kDigits, nullptr, individual});
    return absl::OkStatus();
  }
  return absl::InvalidArgumentError(absl::StrCat(
      "unsupported pre_tokenizer '", type, "' (supported: ByteLevel, Split, Digits, Sequence)"));
}

namespace {

// True when `token` is spelled like a byte-fallback token, "<0x0A>".
bool IsByteFallbackSpelling(std::string_view token) {
  auto hex = [](char c) { return (c >= '0' && c <= '9') || (c >= 'A' && c <= 'F'); };
  return token.size() == 6 && token.substr(0, 3) == "<0x" && hex(token[3]) && hex(token[4]) &&
         token[5] == '>';
}

// Accepts a ByteLevel decoder, or a Sequence of ByteFallback / Fuse / Replace("\u2581" -> " ")
// / ByteLevel that decodes every token of this vocabulary exactly as ByteLevel alone would.
}  // namespace

absl::Status Tokenizer::Impl::CheckDecoder(const json* node,
                                           const std::vector<uint8_t>& in_alphabet) const {
  if (node == nullptr || node->is_null()) {
    return absl::InvalidArgumentError("decoder is missing (a ByteLevel decoder is required)");
  }
  const std::string type = TypeOf(*node);
  if (type == "ByteLevel") return absl::OkStatus();
  if (type != "Sequence") {
    return absl::InvalidArgumentError(
        absl::StrCat("unsupported decoder '", type, "' (supported: ByteLevel)"));
  }
  const json* list = Field(*node, "decoders");
  if (list == nullptr || !list->is_array() || list->empty() ||
      TypeOf(list->back()) != "ByteLevel") {
    return absl::InvalidArgumentError("unsupported decoder Sequence: it must end with ByteLevel");
  }
  for (size_t i = 0; i + 1 < list->size(); ++i) {
    const json& child = (*list)[i];
    const std::string child_type = TypeOf(child);
    if (child_type == "ByteFallback" || child_type == "Fuse") continue;
    if (child_type == "Replace") {
      const json* pattern = Field(child, "pattern");
      const json* from = pattern != nullptr ? Field(*pattern, "String") : nullptr;
      const json* to = Field(child, "content");
      if (from != nullptr && from->is_string() && from->get<std::string>() == "\u2581" &&
          to != nullptr && to->is_string() && to->get<std::string>() == " ") {
        continue;
      }
    }
    return absl::InvalidArgumentError(
        absl::StrCat("unsupported decoder '", child_type, "' inside the decoder Sequence"));
  }
  // With every token spelled in the byte-level alphabet, no "\u2581" (outside the alphabet) and
  // no <0xXX> token, the extra steps change nothing.
  for (int64_t id = 0; id < vocab_size(); ++id) {
    if (!has_token[id]) continue;
    const std::string& token = id_to_token[id];
    if (!in_alphabet[id] || IsByteFallbackSpelling(token)) {
      return absl::InvalidArgumentError(absl::StrCat("unsupported decoder Sequence: token ", id,
                                                     " '", token,
                                                     "' would not decode as with ByteLevel alone"));
    }
  }
  return absl::OkStatus();
}

namespace {

absl::StatusOr<std::pair<std::string, std::string>> ParseMerge(const json& merge) {
  if (merge.is_string()) {
    const std::string& text = merge.get_ref<const std::string&>();
    const size_t space = text.find(' ');
    if (space == std::string::npos || text.find(' ', space + 1) != std::string::npos) {
      return absl::InvalidArgumentError(
          absl::StrCat("'", text, "' is not two tokens separated by one space"));
    }
    return std::make_pair(text.substr(0, space), text.substr(space + 1));
  }
  if (merge.is_array() && merge.size() == 2 && merge[0].is_string() && merge[1].is_string()) {
    return std::make_pair(merge[0].get<std::string>(), merge[1].get<std::string>());
  }
  return absl::InvalidArgumentError("a merge must be \"a b\" or [\"a\", \"b\"]");
}

}  // namespace

absl::StatusOr<std::unique_ptr<Tokenizer::Impl>> Tokenizer::Impl::Build(const json& root) {
  auto impl = std::make_unique<Impl>();
  if (!root.is_object()) return absl::InvalidArgumentError("the top level is not a JSON object");

  for (const char* key : {"truncation", "padding"}) {
    const json* v = Field(root, key);
    if (v != nullptr && !v->is_null()) {
      return absl::InvalidArgumentError(absl::StrCat("unsupported ", key, " (must be null)"));
    }
  }

  // ---- model ----
  const json* model = Field(root, "model");
  if (model == nullptr || !model->is_object()) {
    return absl::InvalidArgumentError("missing 'model' object");
  }
  const std::string model_type = TypeOf(*model);
  if (model_type != "BPE") {
    return absl::InvalidArgumentError(
        absl::StrCat("unsupported model type '", model_type, "' (supported: BPE)"));
  }
  if (const json* dropout = Field(*model, "dropout");
      dropout != nullptr && !dropout->is_null() &&
      !(dropout->is_number() && dropout->get<double>() == 0.0)) {
    return absl::InvalidArgumentError("unsupported model.dropout (must be null)");
  }
  for (const char* key : {"continuing_subword_prefix", "end_of_word_suffix"}) {
    const json* v = Field(*model, key);
    if (v != nullptr && !v->is_null() && !(v->is_string() && v->get<std::string>().empty())) {
      return absl::InvalidArgumentError(
          absl::StrCat("unsupported model.", key, " (must be null or empty)"));
    }
  }
  MP_ASSIGN_OR_RETURN(impl->fuse_unk, BoolField(*model, "fuse_unk", false, "model"));
  MP_ASSIGN_OR_RETURN(const bool byte_fallback, BoolField(*model, "byte_fallback", false, "model"));
  MP_ASSIGN_OR_RETURN(impl->ignore_merges, BoolField(*model, "ignore_merges", false, "model"));

  const json* vocab = Field(*model, "vocab");
  if (vocab == nullptr || !vocab->is_object()) {
    return absl::InvalidArgumentError("missing 'model.vocab' object");
  }
  constexpr int64_t kMaxId = (int64_t{1} << 31) - 2;
  int64_t max_id = -1;
  impl->token_to_id.reserve(vocab->size());
  for (auto it = vocab->begin(); it != vocab->end(); ++it) {
    if (!it.value().is_number_integer() || it.value().get<int64_t>() < 0 ||
        it.value().get<int64_t>() > kMaxId) {
      return absl::InvalidArgumentError(
          absl::StrCat("model.vocab['", it.key(), "'] is not an id in [0, ", kMaxId, "]"));
    }
    const int64_t id = it.value().get<int64_t>();
    impl->token_to_id.emplace(it.key(), static_cast<int32_t>(id));
    max_id = std::max(max_id, id);
  }

  // ---- normalizer (needed first: it rewrites the content of normalized added tokens) ----
  if (const json* normalizer = Field(root, "normalizer"); normalizer != nullptr) {
    MP_RETURN_IF_ERROR(ParseNormalizer(*normalizer, &impl->nfc));
  }

  // ---- added tokens ----
  const json* added = Field(root, "added_tokens");
  if (added != nullptr && !added->is_null()) {
    if (!added->is_array()) return absl::InvalidArgumentError("'added_tokens' is not an array");
    for (size_t i = 0; i < added->size(); ++i) {
      const json& entry = (*added)[i];
      const std::string where = absl::StrCat("added_tokens[", i, "]");
      const json* id = Field(entry, "id");
      const json* content = Field(entry, "content");
      if (id == nullptr || !id->is_number_integer() || id->get<int64_t>() < 0 ||
          id->get<int64_t>() > kMaxId) {
        return absl::InvalidArgumentError(absl::StrCat(where, ".id is not a valid id"));
      }
      if (content == nullptr || !content->is_string() || content->get<std::string>().empty()) {
        return absl::InvalidArgumentError(
            absl::StrCat(where, ".content is not a non-empty string"));
      }
      AddedToken token;
      token.id = static_cast<int32_t>(id->get<int64_t>());
      token.content = content->get<std::string>();
      if (!IsValidUtf8(token.content)) {
        return absl::InvalidArgumentError(absl::StrCat(where, ".content is not valid UTF-8"));
      }
      MP_ASSIGN_OR_RETURN(token.special, BoolField(entry, "special", false, where));
      MP_ASSIGN_OR_RETURN(token.single_word, BoolField(entry, "single_word", false, where));
      MP_ASSIGN_OR_RETURN(token.lstrip, BoolField(entry, "lstrip", false, where));
      MP_ASSIGN_OR_RETURN(token.rstrip, BoolField(entry, "rstrip", false, where));
      MP_ASSIGN_OR_RETURN(token.normalized, BoolField(entry, "normalized", true, where));
      if (token.normalized && impl->nfc) {
        // `tokenizers` keeps a normalized added token in its normalized form: matching, the
        // id -> token table and decoding all see the NFC text.
        std::string nfc;
        AppendNfc(token.content, &nfc);
        token.content = std::move(nfc);
      }
      auto in_vocab = impl->token_to_id.find(token.content);
      if (in_vocab != impl->token_to_id.end() && in_vocab->second != token.id) {
        return absl::InvalidArgumentError(absl::StrCat(where, " '", token.content, "' has id ",
                                                       token.id, " but the vocabulary gives it id ",
                                                       in_vocab->second));
      }
      max_id = std::max<int64_t>(max_id, token.id);
      impl->added.push_back(std::move(token));
    }
  }

  // ---- id tables ----
  const int64_t vocab_size = max_id + 1;
  impl->id_to_token.assign(vocab_size, std::string());
  impl->has_token.assign(vocab_size, 0);
  impl->is_special.assign(vocab_size, 0);
  for (const auto& [token, id] : impl->token_to_id) {
    if (impl->has_token[id]) {
      return absl::InvalidArgumentError(absl::StrCat("model.vocab gives id ", id, " to both '",
                                                     impl->id_to_token[id], "' and '", token, "'"));
    }
    impl->id_to_token[id] = token;
    impl->has_token[id] = 1;
  }
  {
    absl::flat_hash_map<std::string, int32_t> added_ids;
    for (const AddedToken& token : impl->added) {
      auto [it, inserted] = added_ids.emplace(token.content, token.id);
      if (!inserted) {
        return absl::InvalidArgumentError(
            absl::StrCat("added token '", token.content, "' appears twice"));
      }
      if (impl->has_token[token.id] && impl->id_to_token[token.id] != token.content) {
        return absl::InvalidArgumentError(absl::StrCat("added token '", token.content,
                                                       "' reuses id ", token.id, " of '",
                                                       impl->id_to_token[token.id], "'"));
      }
      impl->id_to_token[token.id] = token.content;
      impl->has_token[token.id] = 1;
      impl->is_special[token.id] = token.special ? 1 : 0;
      impl->token_to_id.try_emplace(token.content, token.id);
    }
  }
  std::vector<uint8_t> in_alphabet(vocab_size, 1);
  impl->decoded_offset.assign(vocab_size + 1, 0);
  for (int64_t id = 0; id < vocab_size; ++id) {
    impl->decoded_offset[id] = static_cast<uint32_t>(impl->decoded_bytes.size());
    if (!impl->has_token[id]) continue;
    bool alphabet_only = false;
    impl->decoded_bytes += ByteLevelToBytes(impl->id_to_token[id], &alphabet_only);
    in_alphabet[id] = alphabet_only ? 1 : 0;
  }
  impl->decoded_offset[vocab_size] = static_cast<uint32_t>(impl->decoded_bytes.size());

  // ---- byte symbols, unk, byte fallback ----
  for (int b = 0; b < 256; ++b) {
    auto it = impl->token_to_id.find(BytesToByteLevel(std::string(1, static_cast<char>(b))));
    impl->byte_id[b] = it != impl->token_to_id.end() ? it->second : -1;
    impl->fallback_id[b] = -1;
    if (byte_fallback) {
      char name[8];
      std::snprintf(name, sizeof(name), "<0x%02X>", b);
      auto fb = impl->token_to_id.find(name);
      if (fb != impl->token_to_id.end()) impl->fallback_id[b] = fb->second;
    }
  }
  if (const json* unk = Field(*model, "unk_token"); unk != nullptr && !unk->is_null()) {
    if (!unk->is_string()) return absl::InvalidArgumentError("model.unk_token is not a string");
    auto it = impl->token_to_id.find(unk->get<std::string>());
    if (it == impl->token_to_id.end()) {
      return absl::InvalidArgumentError(
          absl::StrCat("model.unk_token '", unk->get<std::string>(), "' is not in the vocabulary"));
    }
    impl->unk_id = it->second;
  }

  // ---- merges ----
  const json* merges = Field(*model, "merges");
  if (merges == nullptr || !merges->is_array()) {
    return absl::InvalidArgumentError("missing 'model.merges' array");
  }
  impl->merges.reserve(merges->size());
  for (size_t rank = 0; rank < merges->size(); ++rank) {
    auto pair = ParseMerge((*merges)[rank]);
    if (!pair.ok()) return Annotate(pair.status(), absl::StrCat("model.merges[", rank, "]"));
    const auto& [a, b] = *pair;
    int32_t ids[3];
    const std::string parts[3] = {a, b, a + b};
    for (int k = 0; k < 3; ++k) {
      auto it = impl->token_to_id.find(parts[k]);
      if (it == impl->token_to_id.end()) {
        return absl::InvalidArgumentError(absl::StrCat("model.merges[", rank, "] '", a, " ", b,
                                                       "': '", parts[k],
                                                       "' is not in the vocabulary"));
      }
      ids[k] = it->second;
    }
    impl->merges.insert_or_assign(PairKey(ids[0], ids[1]),
                                  MergeInfo{static_cast<int32_t>(rank), ids[2]});
  }
  if (impl->ignore_merges) {
    for (const auto& [token, id] : *vocab->get_ptr<const json::object_t*>()) {
      bool alphabet_only = false;
      std::string bytes = ByteLevelToBytes(token, &alphabet_only);
      if (alphabet_only) impl->bytes_to_id.try_emplace(std::move(bytes), id.get<int32_t>());
    }
  }

  // ---- pre-tokenizer, decoder ----
  const json* pre = Field(root, "pre_tokenizer");
  if (pre == nullptr || pre->is_null()) {
    return absl::InvalidArgumentError(
        "pre_tokenizer is missing (a ByteLevel pre-tokenizer is required)");
  }
  bool has_byte_level = false;
  MP_RETURN_IF_ERROR(ParsePreTokenizer(*pre, &impl->pre_steps, &has_byte_level));
  if (!has_byte_level) {
    return absl::InvalidArgumentError(
        "unsupported pre_tokenizer without a ByteLevel step (only byte-level BPE is supported)");
  }
  MP_RETURN_IF_ERROR(impl->CheckDecoder(Field(root, "decoder"), in_alphabet));

  // ---- added-token matchers ----
  for (size_t i = 0; i < impl->added.size(); ++i) {
    const AddedToken& token = impl->added[i];
    if (token.normalized) {
      impl->normalized_matcher.Add(token.content, static_cast<int>(i));
    } else {
      impl->raw_matcher.Add(token.content, static_cast<int>(i));
    }
  }
  impl->raw_matcher.Finalize();
  impl->normalized_matcher.Finalize();
  return impl;
}

// ---------------------------------------------------------------------------------------------
// Tokenizer
// ---------------------------------------------------------------------------------------------

Tokenizer::Tokenizer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Tokenizer::~Tokenizer() = default;

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::FromJson(std::string_view text) {
  return FromJsonNamed(text, "tokenizer.json");
}

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::FromJsonNamed(std::string_view text,
                                                                    const std::string& source) {
  absl::StatusOr<std::unique_ptr<Impl>> impl;
  try {
    const json root = json::parse(text.begin(), text.end());
    impl = Impl::Build(root);
  } catch (const json::parse_error& e) {
    impl = absl::InvalidArgumentError(absl::StrCat("not valid JSON: ", e.what()));
  } catch (const json::exception& e) {
    impl = absl::InvalidArgumentError(absl::StrCat("unexpected JSON content: ", e.what()));
  }
  if (!impl.ok()) return Annotate(impl.status(), source);
  return std::unique_ptr<Tokenizer>(new Tokenizer(std::move(impl).value()));
}

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::Load(const std::string& path) {
  std::string file = path;
  std::error_code ec;
  if (std::filesystem::is_directory(path, ec)) {
    file = (std::filesystem::path(path) / "tokenizer.json").string();
  }
  std::ifstream in(file, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot open tokenizer file ", file));
  std::ostringstream buffer;
  buffer << in.rdbuf();
  if (in.bad()) return absl::DataLossError(absl::StrCat("error reading ", file));
  return FromJsonNamed(buffer.str(), file);
}

std::vector<int32_t> Tokenizer::Encode(std::string_view text) const {
  std::vector<int32_t> ids;
  impl_->Encode(text, &ids);
  return ids;
}

absl::StatusOr<std::string> Tokenizer::Decode(std::span<const int32_t> ids,
                                              bool skip_special) const {
  std::string bytes;
  for (const int32_t id : ids) {
    if (id < 0 || id >= impl_->vocab_size()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "token id ", id, " is out of range for vocabulary size ", impl_->vocab_size()));
    }
    if (!impl_->has_token[id]) {
      return absl::InvalidArgumentError(absl::StrCat("token id ", id, " has no token"));
    }
    if (skip_special && impl_->is_special[id]) continue;
    bytes.append(impl_->Bytes(id));
  }
  if (IsValidUtf8(bytes)) return bytes;
  std::string text;
  AppendUtf8Lossy(bytes, &text);
  return text;
}

int64_t Tokenizer::vocab_size() const { return impl_->vocab_size(); }

std::optional<int32_t> Tokenizer::TokenToId(std::string_view token) const {
  auto it = impl_->token_to_id.find(AsAbsl(token));
  if (it == impl_->token_to_id.end()) return std::nullopt;
  return it->second;
}

std::optional<std::string> Tokenizer::IdToToken(int32_t id) const {
  if (id < 0 || id >= impl_->vocab_size() || !impl_->has_token[id]) return std::nullopt;
  return impl_->id_to_token[id];
}

bool Tokenizer::IsSpecial(int32_t id) const {
  return id >= 0 && id < impl_->vocab_size() && impl_->is_special[id];
}

std::optional<std::string_view> Tokenizer::TokenBytes(int32_t id) const {
  if (id < 0 || id >= impl_->vocab_size() || !impl_->has_token[id]) return std::nullopt;
  return impl_->Bytes(id);
}

// ---------------------------------------------------------------------------------------------
// StreamingDecoder
// ---------------------------------------------------------------------------------------------

StreamingDecoder::StreamingDecoder(const Tokenizer& tokenizer, bool skip_special)
    : tokenizer_(tokenizer), skip_special_(skip_special) {}

absl::StatusOr<std::string> StreamingDecoder::Add(int32_t id) {
  const std::optional<std::string_view> bytes = tokenizer_.TokenBytes(id);
  if (!bytes.has_value()) {
    return absl::InvalidArgumentError(absl::StrCat("token id ", id,
                                                   " is out of range for vocabulary size ",
                                                   tokenizer_.vocab_size(), " or has no token"));
  }
  if (skip_special_ && tokenizer_.IsSpecial(id)) return std::string();
  pending_.append(*bytes);
  std::string out;
  size_t i = 0;
  while (i < pending_.size()) {
    const Utf8Step step = NextUtf8(pending_, i);
    if (step.kind == Utf8Kind::kTruncated) break;  // wait for the rest of the sequence
    if (step.kind == Utf8Kind::kValid) {
      out.append(pending_, i, step.len);
    } else {
      out.append(kReplacementChar);
    }
    i += step.len;
  }
  pending_.erase(0, i);
  return out;
}

std::string StreamingDecoder::Flush() {
  std::string out;
  AppendUtf8Lossy(pending_, &out);
  pending_.clear();
  return out;
}

}  // namespace mp
