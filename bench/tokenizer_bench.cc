// Encode throughput of mp::Tokenizer on one core, for the Qwen2.5 and SmolLM2 vocabularies, on
// the varied parity text (prose, code, many scripts, emoji, numbers, whitespace, special-token
// strings). Prints one JSON line:
//   {"bench":"tokenizer_encode","text_bytes":N,"results":[{"vocab":"qwen","load_s":..,
//    "tokens":..,"cold_mb_per_s":..,"warm_mb_per_s":..,"decode_mb_per_s":..},...]}
// cold = first encode with an empty BPE cache; warm = best of the repetitions that follow.
//
// Usage:
//   python3 tests/unit/tokenizer/make_parity_text.py --out /tmp/parity.txt
//   tokenizer_bench --text /tmp/parity.txt [--qwen TOKENIZER_JSON] [--smollm2 MODEL_DIR]
//                   [--repeat N]
// --qwen defaults to $MILLIPEDE_QWEN_TOKENIZER, --smollm2 to $MILLIPEDE_SMOLLM2_DIR.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

#include "model/tokenizer.h"

namespace {

using Clock = std::chrono::steady_clock;

double Seconds(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

struct Args {
  std::string text;
  std::string qwen;
  std::string smollm2;
  int repeat = 5;
};

bool ParseArgs(int argc, char** argv, Args* args) {
  if (const char* v = std::getenv("MILLIPEDE_QWEN_TOKENIZER")) args->qwen = v;
  if (const char* v = std::getenv("MILLIPEDE_SMOLLM2_DIR")) args->smollm2 = v;
  for (int i = 1; i < argc; ++i) {
    const std::string flag = argv[i];
    if (i + 1 >= argc) return false;
    const std::string value = argv[++i];
    if (flag == "--text") {
      args->text = value;
    } else if (flag == "--qwen") {
      args->qwen = value;
    } else if (flag == "--smollm2") {
      args->smollm2 = value;
    } else if (flag == "--repeat") {
      args->repeat = std::max(1, std::atoi(value.c_str()));
    } else {
      return false;
    }
  }
  return !args->text.empty() && !args->qwen.empty() && !args->smollm2.empty();
}

// Returns the JSON object of one vocabulary, or an empty string after printing an error.
std::string Run(const std::string& name, const std::string& path, const std::string& text,
                int repeat) {
  const Clock::time_point load_start = Clock::now();
  auto tokenizer = mp::Tokenizer::Load(path);
  if (!tokenizer.ok()) {
    std::cerr << name << ": " << tokenizer.status() << "\n";
    return "";
  }
  const double load_s = Seconds(load_start);
  const double mb = static_cast<double>(text.size()) / 1e6;

  Clock::time_point start = Clock::now();
  const std::vector<int32_t> ids = (*tokenizer)->Encode(text);
  const double cold_s = Seconds(start);
  double warm_s = 1e30;
  for (int r = 0; r < repeat; ++r) {
    start = Clock::now();
    const std::vector<int32_t> again = (*tokenizer)->Encode(text);
    warm_s = std::min(warm_s, Seconds(start));
    if (again != ids) {
      std::cerr << name << ": a repeated encode gave different ids\n";
      return "";
    }
  }
  start = Clock::now();
  auto decoded = (*tokenizer)->Decode(ids);
  const double decode_s = Seconds(start);
  if (!decoded.ok()) {
    std::cerr << name << ": " << decoded.status() << "\n";
    return "";
  }
  char buffer[512];
  std::snprintf(buffer, sizeof(buffer),
                "{\"vocab\":\"%s\",\"load_s\":%.3f,\"tokens\":%zu,\"cold_mb_per_s\":%.2f,"
                "\"warm_mb_per_s\":%.2f,\"decode_mb_per_s\":%.1f}",
                name.c_str(), load_s, ids.size(), mb / cold_s, mb / warm_s, mb / decode_s);
  return buffer;
}

}  // namespace

int main(int argc, char** argv) {
  Args args;
  if (!ParseArgs(argc, argv, &args)) {
    std::cerr << "usage: " << argv[0]
              << " --text FILE [--qwen TOKENIZER_JSON] [--smollm2 MODEL_DIR] [--repeat N]\n"
                 "  FILE: python3 tests/unit/tokenizer/make_parity_text.py --out FILE\n"
                 "  --qwen / --smollm2 default to $MILLIPEDE_QWEN_TOKENIZER / "
                 "$MILLIPEDE_SMOLLM2_DIR; both are required\n";
    return 2;
  }
  std::ifstream in(args.text, std::ios::binary);
  if (!in) {
    std::cerr << "cannot open " << args.text << "\n";
    return 1;
  }
  std::stringstream buffer;
  buffer << in.rdbuf();
  const std::string text = buffer.str();

  std::string results;
  for (const auto& [name, path] : {std::pair{std::string("qwen"), args.qwen},
                                   std::pair{std::string("smollm2"), args.smollm2}}) {
    const std::string result = Run(name, path, text, args.repeat);
    if (result.empty()) return 1;
    results += (results.empty() ? "" : ",") + result;
  }
  std::printf("{\"bench\":\"tokenizer_encode\",\"text_bytes\":%zu,\"results\":[%s]}\n", text.size(),
              results.c_str());
  return 0;
}
