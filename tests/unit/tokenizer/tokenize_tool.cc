// Command-line access to mp::Tokenizer for the parity tests against the `tokenizers` library.
//
//   tokenize_tool encode TOKENIZER DOCS.json OUT.json
//       DOCS.json: a JSON array of strings; OUT.json: an array of id arrays, one per string.
//   tokenize_tool decode TOKENIZER IDS.json OUT.json
//       IDS.json: an array of id arrays; OUT.json: {"text": [...], "text_skip_special": [...],
//       "stream": [...], "stream_skip_special": [...]} where "stream*" come from
//       StreamingDecoder fed one id at a time.
// TOKENIZER is a tokenizer.json or a directory holding one. Exit status 1 on any error.
#include <chrono>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

#include "model/tokenizer.h"
#include "nlohmann/json.hpp"

namespace {

using json = nlohmann::json;

bool ReadJson(const std::string& path, json* out) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    std::cerr << "cannot open " << path << "\n";
    return false;
  }
  std::stringstream buffer;
  buffer << in.rdbuf();
  *out = json::parse(buffer.str(), nullptr, /*allow_exceptions=*/false);
  if (out->is_discarded() || !out->is_array()) {
    std::cerr << path << " is not a JSON array\n";
    return false;
  }
  return true;
}

bool WriteJson(const std::string& path, const json& value) {
  std::ofstream out(path, std::ios::binary);
  out << value.dump();
  return static_cast<bool>(out);
}

int Encode(const mp::Tokenizer& tokenizer, const json& docs, const std::string& out_path) {
  json result = json::array();
  size_t bytes = 0, tokens = 0;
  const auto start = std::chrono::steady_clock::now();
  for (const json& doc : docs) {
    if (!doc.is_string()) {
      std::cerr << "documents must be strings\n";
      return 1;
    }
    const std::string& text = doc.get_ref<const std::string&>();
    std::vector<int32_t> ids = tokenizer.Encode(text);
    bytes += text.size();
    tokens += ids.size();
    result.push_back(std::move(ids));
  }
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::cerr << "encoded " << docs.size() << " documents, " << bytes << " bytes -> " << tokens
            << " tokens in " << seconds << " s\n";
  return WriteJson(out_path, result) ? 0 : 1;
}

int Decode(const mp::Tokenizer& tokenizer, const json& sequences, const std::string& out_path) {
  json result = {{"text", json::array()},
                 {"text_skip_special", json::array()},
                 {"stream", json::array()},
                 {"stream_skip_special", json::array()}};
  for (const json& sequence : sequences) {
    std::vector<int32_t> ids;
    try {
      ids = sequence.get<std::vector<int32_t>>();
    } catch (const json::exception& e) {
      std::cerr << "id lists must be arrays of integers: " << e.what() << "\n";
      return 1;
    }
    for (const bool skip : {false, true}) {
      auto text = tokenizer.Decode(ids, skip);
      if (!text.ok()) {
        std::cerr << text.status() << "\n";
        return 1;
      }
      result[skip ? "text_skip_special" : "text"].push_back(*text);
      mp::StreamingDecoder stream(tokenizer, skip);
      std::string streamed;
      for (const int32_t id : ids) {
        auto piece = stream.Add(id);
        if (!piece.ok()) {
          std::cerr << piece.status() << "\n";
          return 1;
        }
        streamed += *piece;
      }
      streamed += stream.Flush();
      result[skip ? "stream_skip_special" : "stream"].push_back(streamed);
    }
  }
  return WriteJson(out_path, result) ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 5 || (std::string(argv[1]) != "encode" && std::string(argv[1]) != "decode")) {
    std::cerr << "usage: " << argv[0] << " encode|decode TOKENIZER IN.json OUT.json\n";
    return 2;
  }
  const auto start = std::chrono::steady_clock::now();
  auto tokenizer = mp::Tokenizer::Load(argv[2]);
  if (!tokenizer.ok()) {
    std::cerr << tokenizer.status() << "\n";
    return 1;
  }
  std::cerr << "loaded " << argv[2] << " (" << (*tokenizer)->vocab_size() << " ids) in "
            << std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count()
            << " s\n";
  json input;
  if (!ReadJson(argv[3], &input)) return 1;
  if (std::string(argv[1]) == "encode") return Encode(**tokenizer, input, argv[4]);
  return Decode(**tokenizer, input, argv[4]);
}
