// Tokenizer: byte-level BPE loaded from a Hugging Face tokenizer.json, with the same token ids
// as the `tokenizers` library for the supported configurations.
//
// Supported tokenizer.json contents (anything else is INVALID_ARGUMENT naming the component):
//   normalizer     null, NFC, or a Sequence of those
//   pre_tokenizer  ByteLevel (add_prefix_space false; use_regex selects GPT-2's split regex),
//                  Split (Regex or String pattern, behavior Isolated, invert false),
//                  Digits (individual_digits true or false), or a Sequence of those; a ByteLevel
//                  step is required
//   model          BPE: merges as "a b" strings or ["a", "b"] pairs, ignore_merges,
//                  unk_token / fuse_unk / byte_fallback for bytes missing from the vocabulary;
//                  no dropout, no continuing_subword_prefix / end_of_word_suffix
//   decoder        ByteLevel (or a Sequence that reduces to it for this vocabulary)
//   added_tokens   special or not, with single_word, lstrip, rstrip and normalized honoured
// The post_processor is ignored: Encode() never adds BOS/EOS tokens (the same ids as
// `tokenizers` encode(text, add_special_tokens=False)).
//
// Encode() accepts any bytes: invalid UTF-8 is first replaced by U+FFFD (one per maximal invalid
// subpart, as Python's and Rust's lossy decoders do).
//
// Thread safety: a loaded Tokenizer is immutable apart from an internal, mutex-protected cache
// of BPE results; all const methods may be called concurrently.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

namespace mp {

class Tokenizer {
 public:
  // Reads a tokenizer.json, or `<path>/tokenizer.json` when `path` is a directory. Missing file:
  // NOT_FOUND naming the path; malformed or unsupported contents: INVALID_ARGUMENT naming the
  // file and the field or component.
  static absl::StatusOr<std::unique_ptr<Tokenizer>> Load(const std::string& path);
  // Parses tokenizer.json text. Errors as for Load().
  static absl::StatusOr<std::unique_ptr<Tokenizer>> FromJson(std::string_view json);

  ~Tokenizer();
  Tokenizer(const Tokenizer&) = delete;
  Tokenizer& operator=(const Tokenizer&) = delete;

  // Text -> token ids. Added tokens (special or not) occurring in the text are recognized and
  // emitted as their ids. No BOS/EOS is added.
  std::vector<int32_t> Encode(std::string_view text) const;

  // Token ids -> UTF-8 text. Byte sequences that are not valid UTF-8 become U+FFFD. With
  // `skip_special`, special added tokens are left out. An id outside [0, vocab_size()) is
  // INVALID_ARGUMENT naming the id and the vocabulary size; so is an id that has no token.
  absl::StatusOr<std::string> Decode(std::span<const int32_t> ids, bool skip_special = false) const;

  // Number of ids: one more than the largest id of the vocabulary and the added tokens.
  int64_t vocab_size() const;
  // The id of a vocabulary entry (in its byte-level spelling, e.g. "Ġthe") or of an added token.
  std::optional<int32_t> TokenToId(std::string_view token) const;
  // The tokenizer.json spelling of `id`; nullopt when out of range.
  std::optional<std::string> IdToToken(int32_t id) const;
  // True for added tokens marked "special" (e.g. <|im_end|>).
  bool IsSpecial(int32_t id) const;
  // The raw bytes `id` decodes to (may be part of a UTF-8 sequence); nullopt when out of range.
  std::optional<std::string_view> TokenBytes(int32_t id) const;

 private:
  struct Impl;
  explicit Tokenizer(std::unique_ptr<Impl> impl);
  // FromJson() with errors prefixed by `source` (the file name).
  static absl::StatusOr<std::unique_ptr<Tokenizer>> FromJsonNamed(std::string_view json,
                                                                  const std::string& source);
  std::unique_ptr<Impl> impl_;
};

// Incremental detokenization for streaming generation: Add() returns only text whose UTF-8
// sequences are complete; bytes of a partial sequence are held until the next token completes
// them. The concatenation of every Add() result and Flush() equals
// Tokenizer::Decode(all ids, skip_special). Not thread-safe; `tokenizer` must outlive it.
class StreamingDecoder {
 public:
  explicit StreamingDecoder(const Tokenizer& tokenizer, bool skip_special = false);

  // Appends one token; returns the newly completed text (possibly empty). An out-of-range id is
  // INVALID_ARGUMENT and leaves the decoder unchanged.
  absl::StatusOr<std::string> Add(int32_t id);
  // Ends the stream: a pending incomplete sequence becomes U+FFFD. The decoder is then empty.
  std::string Flush();
  // Bytes held back waiting for the rest of a UTF-8 sequence (0 to 3).
  size_t pending_bytes() const { return pending_.size(); }

 private:
  const Tokenizer& tokenizer_;
  bool skip_special_;
  std::string pending_;
};

}  // namespace mp
