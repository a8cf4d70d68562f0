// mp::Tokenizer on small synthetic byte-level BPE vocabularies, against an independent reference:
// a naive BPE (repeatedly merge the lowest-ranked adjacent pair, leftmost first) over a
// hand-written pre-tokenizer. Merges are learned from random text in the test itself.
// Also: NFC, added tokens, digits, unk handling, invalid UTF-8, the streaming decoder, the error
// cases, and concurrent use.
#include "model/tokenizer.h"

#include <gtest/gtest.h>
#include <utf8proc.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "common/status.h"
#include "common/status_matchers.h"
#include "nlohmann/json.hpp"

namespace mp {
namespace {

using json = nlohmann::json;

// Expects `status` to fail with `code` and a message containing `substr`.
void ExpectError(const absl::Status& status, absl::StatusCode code, const std::string& substr) {
  EXPECT_EQ(status.code(), code) << status;
  EXPECT_NE(std::string(status.message()).find(substr), std::string::npos) << status;
}
template <typename T>
void ExpectError(const absl::StatusOr<T>& result, absl::StatusCode code,
                 const std::string& substr) {
  ExpectError(result.status(), code, substr);
}

// ---- byte-level alphabet (GPT-2 bytes_to_unicode), written independently of the library ----

std::string Utf8(char32_t c) {
  std::string out;
  if (c < 0x80) {
    out += static_cast<char>(c);
  } else if (c < 0x800) {
    out += static_cast<char>(0xC0 | (c >> 6));
    out += static_cast<char>(0x80 | (c & 0x3F));
  } else if (c < 0x10000) {
    out += static_cast<char>(0xE0 | (c >> 12));
    out += static_cast<char>(0x80 | ((c >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (c & 0x3F));
  } else {
    out += static_cast<char>(0xF0 | (c >> 18));
    out += static_cast<char>(0x80 | ((c >> 12) & 0x3F));
    out += static_cast<char>(0x80 | ((c >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (c & 0x3F));
  }
  return out;
}

std::string ByteSymbol(uint8_t b) {
  std::vector<int> printable;
  for (int c = '!'; c <= '~'; ++c) printable.push_back(c);
  for (int c = 0xA1; c <= 0xAC; ++c) printable.push_back(c);
  for (int c = 0xAE; c <= 0xFF; ++c) printable.push_back(c);
  if (std::find(printable.begin(), printable.end(), b) != printable.end()) return Utf8(b);
  int n = 0;
  for (int c = 0; c < b; ++c) {
    if (std::find(printable.begin(), printable.end(), c) == printable.end()) ++n;
  }
  return Utf8(256 + n);
}

std::string ToSymbols(const std::string& bytes) {
  std::string out;
  for (const char c : bytes) out += ByteSymbol(static_cast<uint8_t>(c));
  return out;
}

// ---- reference pre-tokenizer: " ?[A-Za-z]+|\s+|[^\sA-Za-z]+" over ASCII whitespace ----

bool IsAsciiSpace(char c) { return c == ' ' || (c >= '\t' && c <= '\r'); }
bool IsAsciiAlpha(char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'); }
bool IsAsciiDigit(char c) { return c >= '0' && c <= '9'; }

constexpr char kSplitPattern[] = " ?[A-Za-z]+|\\s+|[^\\sA-Za-z]+";

std::vector<std::string> ReferenceSplit(const std::string& s, bool split_digits) {
  std::vector<std::string> pieces;
  size_t i = 0;
  while (i < s.size()) {
    size_t j = i;
    if (IsAsciiAlpha(s[i]) || (s[i] == ' ' && i + 1 < s.size() && IsAsciiAlpha(s[i + 1]))) {
      j = i + 1;
      while (j < s.size() && IsAsciiAlpha(s[j])) ++j;
    } else if (IsAsciiSpace(s[i])) {
      while (j < s.size() && IsAsciiSpace(s[j])) ++j;
    } else {
      while (j < s.size() && !IsAsciiSpace(s[j]) && !IsAsciiAlpha(s[j])) ++j;
    }
    pieces.push_back(s.substr(i, j - i));
    i = j;
  }
  if (!split_digits) return pieces;
  // Digits(individual_digits) runs first in the pipeline; for ASCII digits and this pattern,
  // isolating each digit after the regex gives the same pieces.
  std::vector<std::string> out;
  for (const std::string& p : pieces) {
    std::string run;
    for (const char c : p) {
      if (IsAsciiDigit(c)) {
        if (!run.empty()) out.push_back(run);
        run.clear();
        out.push_back(std::string(1, c));
      } else {
        run += c;
      }
    }
    if (!run.empty()) out.push_back(run);
  }
  return out;
}

// ---- reference BPE ----

struct Vocab {
  std::map<std::string, int32_t> ids;                        // byte strings -> id
  std::map<std::pair<std::string, std::string>, int> ranks;  // byte-string pairs -> rank
  std::vector<std::pair<std::string, std::string>> merges;
};

std::vector<std::string> ReferenceBpeWord(const Vocab& vocab, const std::string& word) {
  std::vector<std::string> symbols;
  for (const char c : word) symbols.push_back(std::string(1, c));
  while (symbols.size() > 1) {
    int best_rank = -1;
    size_t best = 0;
    for (size_t i = 0; i + 1 < symbols.size(); ++i) {
      auto it = vocab.ranks.find({symbols[i], symbols[i + 1]});
      if (it != vocab.ranks.end() && (best_rank < 0 || it->second < best_rank)) {
        best_rank = it->second;
        best = i;
      }
    }
    if (best_rank < 0) break;
    symbols[best] += symbols[best + 1];
    symbols.erase(symbols.begin() + static_cast<long>(best) + 1);
  }
  return symbols;
}

std::vector<int32_t> ReferenceEncode(const Vocab& vocab, const std::string& text,
                                     bool split_digits) {
  std::vector<int32_t> ids;
  for (const std::string& piece : ReferenceSplit(text, split_digits)) {
    for (const std::string& s : ReferenceBpeWord(vocab, piece)) ids.push_back(vocab.ids.at(s));
  }
  return ids;
}

// ---- random text ----

std::string RandomText(std::mt19937& rng, size_t approx_len) {
  static const std::vector<std::string> kPieces = {"the",
                                                   " the",
                                                   "and",
                                                   " of",
                                                   "ing",
                                                   "tion",
                                                   " a",
                                                   "e",
                                                   "s",
                                                   "th",
                                                   "er",
                                                   "in",
                                                   " ",
                                                   "  ",
                                                   "\n",
                                                   "\t",
                                                   "\r\n",
                                                   ".",
                                                   ",",
                                                   "!",
                                                   "?",
                                                   "'s",
                                                   "0",
                                                   "1",
                                                   "42",
                                                   "2024",
                                                   "\xC3\xA9",
                                                   "\xE4\xB8\xAD",
                                                   "\xE6\x96\x87",
                                                   "\xF0\x9F\x98\x80",
                                                   "\xD0\xBF\xD1\x80",
                                                   "x",
                                                   "Q",
                                                   "zz",
                                                   "(",
                                                   ")",
                                                   "{}",
                                                   "==",
                                                   "->",
                                                   "_",
                                                   "\xE2\x80\x94",
                                                   "abc",
                                                   "xyz"};
  std::uniform_int_distribution<size_t> pick(0, kPieces.size() - 1);
  std::string s;
  while (s.size() < approx_len) s += kPieces[pick(rng)];
  return s;
}

// Learns `count` merges from `corpus` (most frequent adjacent pair, ties broken by the pair).
Vocab Train(const std::string& corpus, int count) {
  Vocab vocab;
  for (int b = 0; b < 256; ++b) vocab.ids[std::string(1, static_cast<char>(b))] = b;
  const std::vector<std::string> words = ReferenceSplit(corpus, /*split_digits=*/false);
  for (int m = 0; m < count; ++m) {
    std::map<std::pair<std::string, std::string>, int> counts;
    for (const std::string& w : words) {
      const std::vector<std::string> symbols = ReferenceBpeWord(vocab, w);
      for (size_t i = 0; i + 1 < symbols.size(); ++i) ++counts[{symbols[i], symbols[i + 1]}];
    }
    std::pair<std::string, std::string> best;
    int best_count = 0;
    for (const auto& [pair, c] : counts) {
      if (c > best_count && !vocab.ids.count(pair.first + pair.second)) {
        best = pair;
        best_count = c;
      }
    }
    if (best_count == 0) break;
    vocab.ranks[best] = static_cast<int>(vocab.merges.size());
    vocab.merges.push_back(best);
    vocab.ids[best.first + best.second] = static_cast<int32_t>(vocab.ids.size());
  }
  return vocab;
}

json ByteLevel(bool use_regex) {
  return {{"type", "ByteLevel"},
          {"add_prefix_space", false},
          {"trim_offsets", false},
          {"use_regex", use_regex}};
}

json TokenizerJson(const Vocab& vocab, bool nfc = false, bool digits = false,
                   bool string_merges = false) {
  json j;
  j["version"] = "1.0";
  j["truncation"] = nullptr;
  j["padding"] = nullptr;
  j["added_tokens"] = json::array();
  j["normalizer"] = nfc ? json{{"type", "NFC"}} : json(nullptr);
  json steps = json::array();
  if (digits) steps.push_back({{"type", "Digits"}, {"individual_digits", true}});
  steps.push_back({{"type", "Split"},
                   {"pattern", {{"Regex", kSplitPattern}}},
                   {"behavior", "Isolated"},
                   {"invert", false}});
  steps.push_back(ByteLevel(false));
  j["pre_tokenizer"] = {{"type", "Sequence"}, {"pretokenizers", steps}};
  j["post_processor"] = nullptr;
  j["decoder"] = ByteLevel(true);
  json v = json::object();
  for (const auto& [bytes, id] : vocab.ids) v[ToSymbols(bytes)] = id;
  json merges = json::array();
  for (const auto& [a, b] : vocab.merges) {
    if (string_merges) {
      merges.push_back(ToSymbols(a) + " " + ToSymbols(b));
    } else {
      merges.push_back(json::array({ToSymbols(a), ToSymbols(b)}));
    }
  }
  j["model"] = {{"type", "BPE"},
                {"dropout", nullptr},
                {"unk_token", nullptr},
                {"continuing_subword_prefix", ""},
                {"end_of_word_suffix", ""},
                {"fuse_unk", false},
                {"byte_fallback", false},
                {"ignore_merges", false},
                {"vocab", v},
                {"merges", merges}};
  return j;
}

class SyntheticTokenizerTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    std::mt19937 rng(1234);
    vocab_ = new Vocab(Train(RandomText(rng, 6000), 150));
  }
  static void TearDownTestSuite() { delete vocab_; }
  static std::unique_ptr<Tokenizer> Make(const json& j) {
    auto tokenizer = Tokenizer::FromJson(j.dump());
    EXPECT_TRUE(tokenizer.ok()) << tokenizer.status();
    return tokenizer.ok() ? std::move(tokenizer).value() : nullptr;
  }
  static Vocab* vocab_;
};
Vocab* SyntheticTokenizerTest::vocab_ = nullptr;

TEST_F(SyntheticTokenizerTest, EncodeMatchesReferenceBpe) {
  ASSERT_GT(vocab_->merges.size(), 100u);
  for (const bool string_merges : {false, true}) {
    auto tokenizer = Make(TokenizerJson(*vocab_, false, false, string_merges));
    ASSERT_NE(tokenizer, nullptr);
    EXPECT_EQ(tokenizer->vocab_size(), static_cast<int64_t>(vocab_->ids.size()));
    std::mt19937 rng(99);
    for (int i = 0; i < 300; ++i) {
      const std::string text = RandomText(rng, 1 + rng() % 200);
      EXPECT_EQ(tokenizer->Encode(text), ReferenceEncode(*vocab_, text, false)) << text;
    }
  }
}

TEST_F(SyntheticTokenizerTest, DigitsAreIsolated) {
  auto tokenizer = Make(TokenizerJson(*vocab_, false, /*digits=*/true));
  ASSERT_NE(tokenizer, nullptr);
  std::mt19937 rng(5);
  for (int i = 0; i < 200; ++i) {
    const std::string text = RandomText(rng, 1 + rng() % 100);
    EXPECT_EQ(tokenizer->Encode(text), ReferenceEncode(*vocab_, text, true)) << text;
  }
  // "2024" is one piece without the Digits step and four with it.
  const std::vector<int32_t> four = tokenizer->Encode("2024");
  ASSERT_EQ(four.size(), 4u);
  EXPECT_EQ(four[0], '2');
}

TEST_F(SyntheticTokenizerTest, DecodeInvertsEncode) {
  auto tokenizer = Make(TokenizerJson(*vocab_));
  ASSERT_NE(tokenizer, nullptr);
  std::mt19937 rng(7);
  for (int i = 0; i < 300; ++i) {
    const std::string text = RandomText(rng, rng() % 300);
    MP_ASSERT_OK_AND_ASSIGN(const std::string decoded, tokenizer->Decode(tokenizer->Encode(text)));
    EXPECT_EQ(decoded, text);
  }
}

// Random strings built to need NFC: decomposed accents, marks out of canonical order, Hangul
// jamo, singletons (Angstrom / Ohm / Kelvin signs) and compatibility characters NFC keeps.
std::string RandomNfcText(std::mt19937& rng, size_t pieces) {
  static const std::vector<std::string> kPieces = {
      "e\xCC\x81",                             // e + U+0301
      "a\xCC\xA3\xCC\x81",                     // a + dot below + acute (canonical order)
      "a\xCC\x81\xCC\xA3",                     // a + acute + dot below (needs reordering)
      "\xE1\x84\x80\xE1\x85\xA1\xE1\x86\xA8",  // Hangul L V T jamo
      "\xE1\x84\x92\xE1\x85\xB5",              // Hangul L V jamo
      "\xE2\x84\xAB",                          // U+212B ANGSTROM SIGN -> U+00C5
      "\xE2\x84\xA6",                          // U+2126 OHM SIGN -> U+03A9
      "\xEF\xAC\x81",                          // U+FB01 fi ligature (unchanged by NFC)
      "\xCC\x81",                              // a lone combining acute
      "\xC3\xA9",
      "o",
      " ",
      "x",
      "\n",
      "Z",
      "\xE4\xB8\xAD",
      "\xF0\x9F\x98\x80",
      "1",
      "'s"};
  std::string s;
  for (size_t i = 0; i < pieces; ++i) s += kPieces[rng() % kPieces.size()];
  return s;
}

std::string ReferenceNfc(const std::string& s) {
  utf8proc_uint8_t* out = utf8proc_NFC(reinterpret_cast<const utf8proc_uint8_t*>(s.c_str()));
  std::string result(reinterpret_cast<const char*>(out));
  std::free(out);
  return result;
}

TEST_F(SyntheticTokenizerTest, NfcNormalizerRoundTripsToNfc) {
  auto nfc = Make(TokenizerJson(*vocab_, /*nfc=*/true));
  auto raw = Make(TokenizerJson(*vocab_, /*nfc=*/false));
  ASSERT_NE(nfc, nullptr);
  ASSERT_NE(raw, nullptr);
  std::mt19937 rng(11);
  int changed = 0;
  for (int i = 0; i < 400; ++i) {
    const std::string text = RandomNfcText(rng, 1 + rng() % 30);
    const std::string expected = ReferenceNfc(text);
    changed += expected != text;
    MP_ASSERT_OK_AND_ASSIGN(const std::string decoded, nfc->Decode(nfc->Encode(text)));
    EXPECT_EQ(decoded, expected);
    EXPECT_EQ(nfc->Encode(text), raw->Encode(expected));
  }
  EXPECT_GT(changed, 200);  // the inputs really exercise normalization
}

TEST_F(SyntheticTokenizerTest, AddedTokensAreSplitOutBeforePreTokenization) {
  json j = TokenizerJson(*vocab_);
  const int32_t base = static_cast<int32_t>(vocab_->ids.size());
  j["added_tokens"] = json::array(
      {{{"id", base}, {"content", "<|s|>"}, {"special", true}, {"normalized", false}},
       {{"id", base + 1}, {"content", "<|s|>x"}, {"special", true}, {"normalized", false}},
       {{"id", base + 2}, {"content", "<tool>"}, {"special", false}, {"normalized", false}}});
  auto tokenizer = Make(j);
  ASSERT_NE(tokenizer, nullptr);
  EXPECT_EQ(tokenizer->vocab_size(), base + 3);
  EXPECT_EQ(tokenizer->TokenToId("<|s|>"), base);
  EXPECT_EQ(tokenizer->TokenToId("<tool>"), base + 2);
  const auto& [left, right] = vocab_->merges[0];
  EXPECT_EQ(tokenizer->TokenToId(ToSymbols(left + right)), vocab_->ids.at(left + right));
  EXPECT_EQ(tokenizer->TokenToId("<absent>"), std::nullopt);
  EXPECT_EQ(tokenizer->IdToToken(base + 2), "<tool>");
  EXPECT_TRUE(tokenizer->IsSpecial(base));
  EXPECT_FALSE(tokenizer->IsSpecial(base + 2));
  EXPECT_FALSE(tokenizer->IsSpecial(5));
  EXPECT_FALSE(tokenizer->IsSpecial(-1));

  std::mt19937 rng(3);
  const std::vector<std::pair<std::string, int32_t>> tokens = {
      {"<|s|>", base}, {"<|s|>x", base + 1}, {"<tool>", base + 2}};
  for (int i = 0; i < 200; ++i) {
    std::string text;
    std::vector<int32_t> expected;
    bool after_short_marker = false;
    for (int k = 0; k < 6; ++k) {
      std::string plain = RandomText(rng, rng() % 20);
      if (rng() % 4 == 0) plain += "<|s|";  // a partial marker stays plain text
      // "<|s|>" directly followed by "x" would be the longer token "<|s|>x".
      if (after_short_marker && !plain.empty() && plain[0] == 'x') plain = "." + plain;
      text += plain;
      const std::vector<int32_t> plain_ids = ReferenceEncode(*vocab_, plain, false);
      expected.insert(expected.end(), plain_ids.begin(), plain_ids.end());
      const auto& [content, id] = tokens[rng() % tokens.size()];
      text += content;
      expected.push_back(id);
      after_short_marker = content == "<|s|>";
    }
    EXPECT_EQ(tokenizer->Encode(text), expected) << text;
  }
  // Leftmost-longest: "<|s|>x" wins over "<|s|>" + "x".
  EXPECT_EQ(tokenizer->Encode("<|s|>x<|s|>"), (std::vector<int32_t>{base + 1, base}));

  const std::vector<int32_t> ids = tokenizer->Encode("a<|s|>b<tool>c");
  MP_ASSERT_OK_AND_ASSIGN(const std::string all, tokenizer->Decode(ids));
  EXPECT_EQ(all, "a<|s|>b<tool>c");
  MP_ASSERT_OK_AND_ASSIGN(const std::string skipped, tokenizer->Decode(ids, true));
  EXPECT_EQ(skipped, "ab<tool>c");
}

TEST_F(SyntheticTokenizerTest, IgnoreMergesPrefersWholeWords) {
  json j = TokenizerJson(*vocab_);
  const int32_t id = static_cast<int32_t>(vocab_->ids.size());
  j["model"]["vocab"]["qzx"] = id;  // no merge produces it
  auto plain = Make(j);
  j["model"]["ignore_merges"] = true;
  auto ignoring = Make(j);
  ASSERT_NE(plain, nullptr);
  ASSERT_NE(ignoring, nullptr);
  EXPECT_EQ(plain->Encode("qzx"), ReferenceEncode(*vocab_, "qzx", false));
  EXPECT_EQ(ignoring->Encode("qzx"), std::vector<int32_t>{id});
  // " qzx" is not in the vocabulary, so it still goes through the merges.
  std::vector<int32_t> expected = {id};
  for (const int32_t x : ReferenceEncode(*vocab_, " qzx", false)) expected.push_back(x);
  EXPECT_EQ(ignoring->Encode("qzx qzx"), expected);
}

TEST_F(SyntheticTokenizerTest, BytesMissingFromTheVocabulary) {
  // Byte 0x04 has no symbol; "<unk>" takes its id. Expected ids follow the `tokenizers` BPE:
  // without unk the byte is dropped (and its neighbours may merge), fuse_unk joins runs.
  Vocab vocab;
  for (int b = 0; b < 256; ++b) {
    if (b != 4) vocab.ids[std::string(1, static_cast<char>(b))] = b;
  }
  vocab.ids["ab"] = 256;
  vocab.merges = {{"a", "b"}};
  vocab.ranks[{"a", "b"}] = 0;
  json j = TokenizerJson(vocab);
  j["pre_tokenizer"] = ByteLevel(false);  // the whole text is one word
  j["model"]["vocab"]["<unk>"] = 4;
  const std::string text =
      "a\x04\x04"
      "b\x04"
      "ab";
  {
    auto t = Make(j);
    ASSERT_NE(t, nullptr);
    EXPECT_EQ(t->Encode(text), (std::vector<int32_t>{256, 256}));
  }
  j["model"]["unk_token"] = "<unk>";
  {
    auto t = Make(j);
    ASSERT_NE(t, nullptr);
    EXPECT_EQ(t->Encode(text), (std::vector<int32_t>{'a', 4, 4, 'b', 4, 256}));
  }
  j["model"]["fuse_unk"] = true;
  {
    auto t = Make(j);
    ASSERT_NE(t, nullptr);
    EXPECT_EQ(t->Encode(text), (std::vector<int32_t>{'a', 4, 'b', 4, 256}));
    MP_ASSERT_OK_AND_ASSIGN(const std::string decoded, t->Decode({{'a', 4, 'b'}}));
    EXPECT_EQ(decoded, "a<unk>b");
  }
}

TEST_F(SyntheticTokenizerTest, InvalidUtf8IsReplacedBeforeEncoding) {
  auto tokenizer = Make(TokenizerJson(*vocab_));
  ASSERT_NE(tokenizer, nullptr);
  const std::string fffd = "\xEF\xBF\xBD";
  // Maximal subparts: C0 and AF are one each, E2 82 (truncated) is one, ED A0 80 (a surrogate)
  // is three, F4 90 is two.
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"a\xC0\xAF"
       "b",
       "a" + fffd + fffd + "b"},
      {"x\xE2\x82", "x" + fffd},
      {"\xE2\x82 y", fffd + " y"},
      {"\xED\xA0\x80", fffd + fffd + fffd},
      {"\xF4\x90\x80\x80", fffd + fffd + fffd + fffd},
      {"\xF0\x9F\x98", fffd},
      {"\xFF\xFE", fffd + fffd},
      {"ok \xF0\x9F\x98\x80", "ok \xF0\x9F\x98\x80"}};
  for (const auto& [bad, replaced] : cases) {
    EXPECT_EQ(tokenizer->Encode(bad), tokenizer->Encode(replaced));
    MP_ASSERT_OK_AND_ASSIGN(const std::string decoded, tokenizer->Decode(tokenizer->Encode(bad)));
    EXPECT_EQ(decoded, replaced);
  }
}

TEST_F(SyntheticTokenizerTest, DecodeReplacesInvalidByteSequences) {
  auto tokenizer = Make(TokenizerJson(*vocab_));
  ASSERT_NE(tokenizer, nullptr);
  // Byte tokens have the byte as their id in the synthetic vocabulary.
  const std::string fffd = "\xEF\xBF\xBD";
  const std::vector<std::pair<std::vector<int32_t>, std::string>> cases = {
      {{0xE2, 0x82, 'a'}, fffd + "a"},
      {{0xF0, 0x9F, 0x98, 0x80}, "\xF0\x9F\x98\x80"},
      {{0x80}, fffd},
      {{0xC0, 0xAF}, fffd + fffd},
      {{'a', 0xE4, 0xB8}, "a" + fffd}};
  for (const auto& [ids, expected] : cases) {
    MP_ASSERT_OK_AND_ASSIGN(const std::string decoded, tokenizer->Decode(ids));
    EXPECT_EQ(decoded, expected);
  }
}

bool IsValidUtf8(const std::string& s) {
  utf8proc_int32_t c;
  for (size_t i = 0; i < s.size();) {
    const utf8proc_ssize_t n =
        utf8proc_iterate(reinterpret_cast<const utf8proc_uint8_t*>(s.data()) + i,
                         static_cast<utf8proc_ssize_t>(s.size() - i), &c);
    if (n <= 0) return false;
    i += static_cast<size_t>(n);
  }
  return true;
}

TEST_F(SyntheticTokenizerTest, StreamingDecoderMatchesDecodeAndEmitsWholeCharacters) {
  json j = TokenizerJson(*vocab_);
  const int32_t special = static_cast<int32_t>(vocab_->ids.size());
  j["added_tokens"] = json::array(
      {{{"id", special}, {"content", "<|end|>"}, {"special", true}, {"normalized", false}}});
  auto tokenizer = Make(j);
  ASSERT_NE(tokenizer, nullptr);
  std::mt19937 rng(21);
  for (int i = 0; i < 500; ++i) {
    std::vector<int32_t> ids;
    if (i % 2 == 0) {
      ids = tokenizer->Encode(RandomText(rng, rng() % 100));
    } else {
      for (int k = 0, n = 1 + rng() % 30; k < n; ++k) {
        ids.push_back(static_cast<int32_t>(rng() % tokenizer->vocab_size()));
      }
    }
    for (const bool skip : {false, true}) {
      StreamingDecoder stream(*tokenizer, skip);
      std::string streamed;
      for (const int32_t id : ids) {
        MP_ASSERT_OK_AND_ASSIGN(const std::string piece, stream.Add(id));
        EXPECT_TRUE(IsValidUtf8(piece));
        EXPECT_LE(stream.pending_bytes(), 3u);
        streamed += piece;
      }
      streamed += stream.Flush();
      EXPECT_EQ(stream.pending_bytes(), 0u);
      MP_ASSERT_OK_AND_ASSIGN(const std::string whole, tokenizer->Decode(ids, skip));
      EXPECT_EQ(streamed, whole);
    }
  }
  // An emoji split into its four bytes appears only with the last one.
  StreamingDecoder stream(*tokenizer);
  for (const int32_t b : {0xF0, 0x9F, 0x98}) {
    MP_ASSERT_OK_AND_ASSIGN(const std::string piece, stream.Add(b));
    EXPECT_EQ(piece, "");
  }
  ExpectError(stream.Add(-5), absl::StatusCode::kInvalidArgument, "-5");
  EXPECT_EQ(stream.pending_bytes(), 3u);
  MP_ASSERT_OK_AND_ASSIGN(const std::string last, stream.Add(0x80));
  EXPECT_EQ(last, "\xF0\x9F\x98\x80");
}

TEST_F(SyntheticTokenizerTest, DecodeRejectsOutOfRangeIds) {
  auto tokenizer = Make(TokenizerJson(*vocab_));
  ASSERT_NE(tokenizer, nullptr);
  const int64_t n = tokenizer->vocab_size();
  const std::string size = std::to_string(n);
  ExpectError(tokenizer->Decode(std::vector<int32_t>{1, static_cast<int32_t>(n)}),
              absl::StatusCode::kInvalidArgument, "token id " + size);
  ExpectError(tokenizer->Decode(std::vector<int32_t>{-1}), absl::StatusCode::kInvalidArgument,
              "vocabulary size " + size);
  EXPECT_FALSE(tokenizer->TokenBytes(static_cast<int32_t>(n)).has_value());
  EXPECT_FALSE(tokenizer->IdToToken(-1).has_value());
}

TEST_F(SyntheticTokenizerTest, ConcurrentEncodesAgree) {
  auto tokenizer = Make(TokenizerJson(*vocab_));
  ASSERT_NE(tokenizer, nullptr);
  std::mt19937 rng(8);
  std::vector<std::string> texts;
  std::vector<std::vector<int32_t>> expected;
  for (int i = 0; i < 64; ++i) {
    texts.push_back(RandomText(rng, 2000));
    expected.push_back(ReferenceEncode(*vocab_, texts.back(), false));
  }
  std::vector<int> failures(4, 0);
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      for (int round = 0; round < 4; ++round) {
        for (size_t i = 0; i < texts.size(); ++i) {
          failures[t] += tokenizer->Encode(texts[(i + t * 7) % texts.size()]) !=
                         expected[(i + t * 7) % texts.size()];
        }
      }
    });
  }
  for (std::thread& thread : threads) thread.join();
  for (int t = 0; t < 4; ++t) EXPECT_EQ(failures[t], 0) << "thread " << t;
}

TEST_F(SyntheticTokenizerTest, ManyDistinctWordsOverflowTheCache) {
  auto tokenizer = Make(TokenizerJson(*vocab_));
  ASSERT_NE(tokenizer, nullptr);
  // 140k distinct words is more than the cache holds; results must not depend on eviction.
  std::mt19937 rng(17);
  std::string text;
  for (int i = 0; i < 140000; ++i) {
    text += ' ';
    for (int k = 0, n = 3 + rng() % 6; k < n; ++k) text += static_cast<char>('a' + rng() % 20);
  }
  const std::vector<int32_t> first = tokenizer->Encode(text);
  EXPECT_EQ(first, ReferenceEncode(*vocab_, text, false));
  EXPECT_EQ(tokenizer->Encode(text), first);
}

// ---- loading errors ----

std::string ErrorOf(const json& j) {
  auto tokenizer = Tokenizer::FromJson(j.dump());
  EXPECT_FALSE(tokenizer.ok());
  EXPECT_EQ(tokenizer.status().code(), absl::StatusCode::kInvalidArgument);
  return std::string(tokenizer.status().message());
}

TEST_F(SyntheticTokenizerTest, UnsupportedContentsAreNamed) {
  const json good = TokenizerJson(*vocab_);
  auto expect_error = [&](json j, const std::string& substr) {
    const std::string message = ErrorOf(j);
    EXPECT_NE(message.find(substr), std::string::npos) << message;
    EXPECT_NE(message.find("tokenizer.json"), std::string::npos) << message;
  };
  json j = good;
  j["model"]["type"] = "WordPiece";
  expect_error(j, "WordPiece");
  j = good;
  j["normalizer"] = {{"type", "NFKC"}};
  expect_error(j, "NFKC");
  j = good;
  j["pre_tokenizer"] = {{"type", "Metaspace"}};
  expect_error(j, "Metaspace");
  j = good;
  j["pre_tokenizer"]["pretokenizers"][0]["behavior"] = "Removed";
  expect_error(j, "Removed");
  j = good;
  j["pre_tokenizer"]["pretokenizers"][0]["pattern"] = {{"Regex", "(unclosed"}};
  expect_error(j, "(unclosed");
  j = good;
  j["pre_tokenizer"]["pretokenizers"][1]["add_prefix_space"] = true;
  expect_error(j, "add_prefix_space");
  j = good;
  j["pre_tokenizer"] = {
      {"type", "Sequence"},
      {"pretokenizers", json::array({good["pre_tokenizer"]["pretokenizers"][0]})}};
  expect_error(j, "ByteLevel");
  j = good;
  j["decoder"] = nullptr;
  expect_error(j, "decoder");
  j = good;
  j["decoder"] = {{"type", "WordPiece"}};
  expect_error(j, "WordPiece");
  j = good;
  j["model"]["merges"].push_back(json::array({"a", "\xE2\x82\xAC"}));
  expect_error(j, "model.merges[");
  j = good;
  j["model"]["merges"].push_back("a b c");
  expect_error(j, "model.merges[");
  j = good;
  j["model"]["vocab"]["bad"] = -3;
  expect_error(j, "'bad'");
  j = good;
  j["model"]["dropout"] = 0.1;
  expect_error(j, "dropout");
  j = good;
  j["truncation"] = {{"max_length", 8}};
  expect_error(j, "truncation");
  j = good;
  j["model"]["unk_token"] = "<nope>";
  expect_error(j, "<nope>");
  j = good;
  j["added_tokens"] = json::array({{{"id", 5}, {"content", "<x>"}}});
  expect_error(j, "reuses id 5");
  j = good;
  j.erase("model");
  expect_error(j, "model");
  j = good;
  j["model"]["fuse_unk"] = "yes";
  expect_error(j, "fuse_unk");
}

TEST_F(SyntheticTokenizerTest, DecoderSequenceEquivalentToByteLevelIsAccepted) {
  // The decoder transformers writes for GGUF vocabularies: it decodes like ByteLevel alone as
  // long as no token holds U+2581 or is spelled <0xXX>.
  json j = TokenizerJson(*vocab_);
  j["decoder"] = {
      {"type", "Sequence"},
      {"decoders",
       json::array({{{"type", "ByteFallback"}},
                    {{"type", "Fuse"}},
                    {{"type", "Replace"}, {"pattern", {{"String", "\u2581"}}}, {"content", " "}},
                    ByteLevel(true)})}};
  auto tokenizer = Make(j);
  ASSERT_NE(tokenizer, nullptr);
  MP_ASSERT_OK_AND_ASSIGN(const std::string text, tokenizer->Decode(tokenizer->Encode("a b")));
  EXPECT_EQ(text, "a b");
  j["model"]["vocab"]["\u2581x"] = static_cast<int>(vocab_->ids.size());
  const std::string message = ErrorOf(j);
  EXPECT_NE(message.find("decoder"), std::string::npos) << message;
}

TEST(TokenizerLoadTest, MissingFileIsNotFound) {
  const std::string path = "/nonexistent/dir/tokenizer.json";
  ExpectError(Tokenizer::Load(path), absl::StatusCode::kNotFound, path);
  const std::string dir = ::testing::TempDir() + "/mp_empty_model_dir";
  std::filesystem::create_directories(dir);
  ExpectError(Tokenizer::Load(dir), absl::StatusCode::kNotFound, dir + "/tokenizer.json");
  std::filesystem::remove_all(dir);
}

TEST(TokenizerLoadTest, BadJsonIsInvalidArgumentNamingTheFile) {
  const std::string path = ::testing::TempDir() + "/bad_tokenizer.json";
  {
    std::ofstream out(path);
    out << "{\"model\": {\"type\": \"BPE\", ";
  }
  ExpectError(Tokenizer::Load(path), absl::StatusCode::kInvalidArgument, path);
  ExpectError(Tokenizer::Load(path), absl::StatusCode::kInvalidArgument, "not valid JSON");
  ExpectError(Tokenizer::FromJson("[1, 2]"), absl::StatusCode::kInvalidArgument,
              "not a JSON object");
  std::filesystem::remove(path);
}

TEST_F(SyntheticTokenizerTest, LoadsFromAFileOrItsDirectory) {
  const std::string dir = ::testing::TempDir() + "/mp_tokenizer_dir";
  std::filesystem::create_directories(dir);
  {
    std::ofstream out(dir + "/tokenizer.json");
    out << TokenizerJson(*vocab_).dump();
  }
  MP_ASSERT_OK_AND_ASSIGN(auto from_dir, Tokenizer::Load(dir));
  MP_ASSERT_OK_AND_ASSIGN(auto from_file, Tokenizer::Load(dir + "/tokenizer.json"));
  EXPECT_EQ(from_dir->Encode("the theme"), from_file->Encode("the theme"));
  EXPECT_EQ(from_dir->Encode("the theme"), ReferenceEncode(*vocab_, "the theme", false));
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace mp
