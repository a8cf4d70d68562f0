// mp::Tokenizer on Qwen's real vocabulary ($MILLIPEDE_QWEN_TOKENIZER, a tokenizer.json printed
// by fetch_qwen_tokenizer.sh; the tests fail when it is not set). Exact ids of known strings,
// decode(encode(x)) == NFC(x) on random multilingual text, chat prompts and streaming decode.
// Exhaustive id parity with the `tokenizers` library is tokenizer_parity.py's job.
#include <gtest/gtest.h>
#include <utf8proc.h>

#include <cstdlib>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "common/status.h"
#include "common/status_matchers.h"
#include "model/chat_template.h"
#include "model/tokenizer.h"

namespace mp {
namespace {

class QwenTokenizerTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    const char* path = std::getenv("MILLIPEDE_QWEN_TOKENIZER");
    if (path == nullptr || *path == '\0') {
      error_ = new std::string(
          "MILLIPEDE_QWEN_TOKENIZER is not set; set it to the output of "
          "tests/unit/tokenizer/fetch_qwen_tokenizer.sh");
      return;
    }
    auto tokenizer = Tokenizer::Load(path);
    if (!tokenizer.ok()) {
      error_ = new std::string(tokenizer.status().ToString());
      return;
    }
    tokenizer_ = std::move(tokenizer).value().release();
  }
  static void TearDownTestSuite() {
    delete tokenizer_;
    delete error_;
    tokenizer_ = nullptr;
    error_ = nullptr;
  }
  void SetUp() override { ASSERT_NE(tokenizer_, nullptr) << *error_; }

  static Tokenizer* tokenizer_;
  static std::string* error_;
};
Tokenizer* QwenTokenizerTest::tokenizer_ = nullptr;
std::string* QwenTokenizerTest::error_ = nullptr;

TEST_F(QwenTokenizerTest, KnownIds) {
  EXPECT_EQ(tokenizer_->vocab_size(), 151669);
  EXPECT_EQ(tokenizer_->Encode("Hello world"), (std::vector<int32_t>{9707, 1879}));
  EXPECT_EQ(tokenizer_->Encode("<|im_start|>system\nYou are Qwen"),
            (std::vector<int32_t>{151644, 8948, 198, 2610, 525, 1207, 16948}));
  EXPECT_EQ(tokenizer_->Encode("\xE4\xBD\xA0\xE5\xA5\xBD\xEF\xBC\x8C\xE4\xB8\x96\xE7\x95\x8C "
                               "\xF0\x9F\x98\x80"),  // "你好，世界 😀"
            (std::vector<int32_t>{108386, 3837, 99489, 90316}));
  EXPECT_EQ(tokenizer_->TokenToId("<|im_end|>"), 151645);
  EXPECT_EQ(tokenizer_->TokenToId("assistant"), 77091);
  EXPECT_TRUE(tokenizer_->IsSpecial(151643));   // <|endoftext|>
  EXPECT_TRUE(tokenizer_->IsSpecial(151645));   // <|im_end|>
  EXPECT_FALSE(tokenizer_->IsSpecial(151657));  // <tool_call> is an added, non-special token
  EXPECT_FALSE(tokenizer_->IsSpecial(9707));
  auto bad = tokenizer_->Decode(std::vector<int32_t>{9707, 151669});
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(std::string(bad.status().message()).find("151669"), std::string::npos);
}

std::string Utf8(char32_t c) {
  std::string out;
  utf8proc_uint8_t buffer[4];
  const utf8proc_ssize_t n = utf8proc_encode_char(static_cast<utf8proc_int32_t>(c), buffer);
  out.append(reinterpret_cast<const char*>(buffer), static_cast<size_t>(n));
  return out;
}

// Random text over many scripts, marks, whitespace, digits, emoji and added-token strings.
// Returns the pieces; odd-numbered ones are added tokens (possibly empty strings).
std::vector<std::string> RandomPieces(std::mt19937& rng) {
  static const std::vector<std::pair<char32_t, char32_t>> kRanges = {
      {0x20, 0x7E},     {0x20, 0x7E},       {0x20, 0x7E},       {0xA0, 0x17F},    {0x300, 0x36F},
      {0x391, 0x3C9},   {0x410, 0x44F},     {0x5D0, 0x5EA},     {0x621, 0x652},   {0x915, 0x94D},
      {0xE01, 0xE3A},   {0x1100, 0x1175},   {0x3041, 0x30F6},   {0x4E00, 0x9FA5}, {0xAC00, 0xD7A3},
      {0xFF01, 0xFF5E}, {0x1F600, 0x1F64F}, {0x1F3FB, 0x1F3FF}, {0x2000, 0x206F}};
  static const std::vector<std::string> kExtras = {
      "\r\n", "\t",        "  ",           "\n\n",  "'S",
      "'ll",  "e\xCC\x81", "\xE2\x80\x8D", "12345", "\xE2\x84\xAB"};
  static const std::vector<std::string> kAdded = {"<|im_start|>", "<|im_end|>", "<|endoftext|>",
                                                  "<tool_call>", "</think>"};
  std::vector<std::string> pieces(1);
  const int n = 1 + static_cast<int>(rng() % 60);
  for (int i = 0; i < n; ++i) {
    const uint32_t r = rng() % 16;
    if (r == 0) {
      pieces.push_back(kAdded[rng() % kAdded.size()]);
      pieces.emplace_back();
    } else if (r == 1) {
      pieces.back() += kExtras[rng() % kExtras.size()];
    } else {
      const auto& [lo, hi] = kRanges[rng() % kRanges.size()];
      const char32_t c = lo + static_cast<char32_t>(rng() % (hi - lo + 1));
      if (utf8proc_category(static_cast<utf8proc_int32_t>(c)) == UTF8PROC_CATEGORY_CN) continue;
      pieces.back() += Utf8(c);
    }
  }
  return pieces;
}

std::string Join(const std::vector<std::string>& pieces) {
  std::string s;
  for (const std::string& p : pieces) s += p;
  return s;
}

std::string RandomText(std::mt19937& rng) { return Join(RandomPieces(rng)); }

std::string Nfc(const std::string& s) {
  utf8proc_uint8_t* out = nullptr;
  const utf8proc_ssize_t n = utf8proc_map(
      reinterpret_cast<const utf8proc_uint8_t*>(s.data()), static_cast<utf8proc_ssize_t>(s.size()),
      &out, static_cast<utf8proc_option_t>(UTF8PROC_STABLE | UTF8PROC_COMPOSE));
  std::string result = n >= 0 ? std::string(reinterpret_cast<const char*>(out), n) : "";
  std::free(out);
  return result;
}

// Added tokens are split out before normalization, so NFC applies to the text between them
// (a combining mark right after "<tool_call>" does not compose with its ">").
TEST_F(QwenTokenizerTest, DecodeOfEncodeIsNfcBetweenAddedTokens) {
  std::mt19937 rng(2024);
  int normalized = 0;
  for (int i = 0; i < 2000; ++i) {
    const std::vector<std::string> pieces = RandomPieces(rng);
    std::string expected;
    for (size_t k = 0; k < pieces.size(); ++k) expected += k % 2 ? pieces[k] : Nfc(pieces[k]);
    const std::string text = Join(pieces);
    normalized += expected != text;
    MP_ASSERT_OK_AND_ASSIGN(const std::string decoded,
                            tokenizer_->Decode(tokenizer_->Encode(text)));
    ASSERT_EQ(decoded, expected) << "input: " << text;
  }
  EXPECT_GT(normalized, 100);
  // The example from the comment: U+0338 after ">" composes to U+226F only outside the token.
  MP_ASSERT_OK_AND_ASSIGN(const std::string kept,
                          tokenizer_->Decode(tokenizer_->Encode("<tool_call>\xCC\xB8")));
  EXPECT_EQ(kept, "<tool_call>\xCC\xB8");
  MP_ASSERT_OK_AND_ASSIGN(const std::string composed,
                          tokenizer_->Decode(tokenizer_->Encode("<tool_cal>\xCC\xB8")));
  EXPECT_EQ(composed, "<tool_cal\xE2\x89\xAF");
}

TEST_F(QwenTokenizerTest, ChatPromptEncodesMarkersAsSpecialTokens) {
  const ChatTemplate chat(ChatTemplateKind::kQwen25);
  MP_ASSERT_OK_AND_ASSIGN(const std::string prompt,
                          chat.Render(std::vector<ChatMessage>{{"user", "Hi there"}}, true));
  const std::vector<int32_t> ids = tokenizer_->Encode(prompt);
  ASSERT_GT(ids.size(), 6u);
  EXPECT_EQ(std::vector<int32_t>(ids.begin(), ids.begin() + 3),
            (std::vector<int32_t>{151644, 8948, 198}));  // <|im_start|> system \n
  EXPECT_EQ(std::vector<int32_t>(ids.end() - 3, ids.end()),
            (std::vector<int32_t>{151644, 77091, 198}));  // <|im_start|> assistant \n
  int markers = 0;
  for (const int32_t id : ids) markers += id == 151644 || id == 151645;
  EXPECT_EQ(markers, 5);
  MP_ASSERT_OK_AND_ASSIGN(const std::string text, tokenizer_->Decode(ids));
  EXPECT_EQ(text, prompt);
  MP_ASSERT_OK_AND_ASSIGN(const std::string plain, tokenizer_->Decode(ids, true));
  EXPECT_EQ(plain,
            "system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.\n"
            "user\nHi there\nassistant\n");
}

TEST_F(QwenTokenizerTest, StreamingDecodeOfMultilingualText) {
  std::mt19937 rng(9);
  for (int i = 0; i < 300; ++i) {
    const std::vector<int32_t> ids = tokenizer_->Encode(RandomText(rng));
    StreamingDecoder stream(*tokenizer_);
    std::string streamed;
    for (const int32_t id : ids) {
      MP_ASSERT_OK_AND_ASSIGN(const std::string piece, stream.Add(id));
      // Every chunk is whole characters: it survives NFC-free re-encoding as valid UTF-8.
      utf8proc_int32_t c;
      for (size_t k = 0; k < piece.size();) {
        const utf8proc_ssize_t n =
            utf8proc_iterate(reinterpret_cast<const utf8proc_uint8_t*>(piece.data()) + k,
                             static_cast<utf8proc_ssize_t>(piece.size() - k), &c);
        ASSERT_GT(n, 0) << "chunk ends inside a character";
        k += static_cast<size_t>(n);
      }
      streamed += piece;
    }
    streamed += stream.Flush();
    MP_ASSERT_OK_AND_ASSIGN(const std::string whole, tokenizer_->Decode(ids));
    EXPECT_EQ(streamed, whole);
  }
}

}  // namespace
}  // namespace mp
