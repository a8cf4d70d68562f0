// Passkey retrieval with and without dual chunk attention and sparse prefill: accuracy per
// prompt length and needle depth, the length-extrapolation check of qwen1m-spec.md §6.3 / §9.18
// on any RoPE model.
//
//   mp_passkey_eval --model DIR [--device cpu|cuda[:N]] [--lengths 4096,8192,16384,32768]
//       [--depths 0,25,50,75,100] [--trials 5] [--seed 1] [--modes rope,dca,dca-sparse]
//       [--dca-chunk-size S] [--dca-local-size W] [--dca-original-max-position-embeddings L0]
//       [--sparse-config FILE] [--sparse-threshold N] [--sparse-last-q N]
//       [--chunk-size 2048] [--max-new-tokens 12] [--jsonl trials.jsonl]
//       [--save-prompts prompts.jsonl]
//
// Every cell (mode, length, depth) runs `trials` prompts whose 5-digit keys come from a seeded
// generator (the same keys and prompts in every mode). Prompts are built by passkey_prompt.h
// (filler, a short marked needle, the question through the chat template, the assistant turn
// primed with "The pass key is"); the answer is the first digit run of the greedy output.
// Mode "rope" is plain RoPE (DCA off even if config.json has it), mode "dca" turns DCA on with
// the --dca-* settings (defaults: chunk_size = the training length max_position_embeddings,
// local_size = chunk_size / 32 aligned, L0 = the training length). Modes "rope-sparse" and
// "dca-sparse" are the same with vertical-slash sparse prefill (qwen1m-spec.md §3) from
// --sparse-config for prompts longer than --sparse-threshold (default: config.json's, else
// 32768); shorter prompts run exactly dense, and the table marks those rows.
//
// Prints a table (accuracy % per depth and overall, per mode and length) and one JSON line per
// cell to stdout; with --jsonl, one JSON line per trial (prompt, key, answer) to that file.
#include <CLI/CLI.hpp>
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "bench/passkey_prompt.h"
#include "common/status.h"
#include "model/chat_template.h"
#include "model/config.h"
#include "model/sparse_attention_config.h"
#include "model/tokenizer.h"
#include "model/weights.h"
#include "runtime/backend.h"
#include "runtime/backend_factory.h"
#include "runtime/engine.h"

namespace mp::bench {
namespace {

struct Flags {
  std::string model_dir;
  std::string device = "cpu";
  std::vector<int64_t> lengths = {4096, 8192, 16384, 32768};
  std::vector<int64_t> depths = {0, 25, 50, 75, 100};
  std::vector<std::string> modes = {"rope", "dca"};
  int64_t trials = 5;
  uint64_t seed = 1;
  int64_t chunk_size = 2048;
  int64_t max_new_tokens = 12;
  std::string jsonl;
  std::string save_prompts;
  bool quiet = false;
  bool prompts_only = false;
  int64_t dca_chunk_size = 0, dca_local_size = 0, dca_l0 = 0;
  CLI::Option* dca_chunk_option = nullptr;
  CLI::Option* dca_local_option = nullptr;
  CLI::Option* dca_l0_option = nullptr;
  std::string sparse_config;
  int64_t sparse_threshold = 0, sparse_last_q = 0;
  CLI::Option* sparse_threshold_option = nullptr;
  CLI::Option* sparse_last_q_option = nullptr;
};

absl::StatusOr<std::shared_ptr<Backend>> MakeBackend(const std::string& device) {
  MP_ASSIGN_OR_RETURN(std::unique_ptr<Backend> backend, NewBackend(device));
  return std::shared_ptr<Backend>(std::move(backend));
}

bool IsSparseMode(const std::string& mode) { return mode == "rope-sparse" || mode == "dca-sparse"; }
bool IsDcaMode(const std::string& mode) { return mode == "dca" || mode == "dca-sparse"; }

// The sparse prefill settings of the sparse modes for `config` (the mode's DCA applied).
absl::StatusOr<std::shared_ptr<const SparsePrefillSettings>> SparseSettings(
    const Flags& f, const ModelConfig& config) {
  SparsePrefillRequest request;
  request.file = f.sparse_config;
  if (f.sparse_threshold_option->count() > 0) request.overrides.threshold = f.sparse_threshold;
  if (f.sparse_last_q_option->count() > 0) request.overrides.last_q = f.sparse_last_q;
  absl::StatusOr<std::shared_ptr<const SparsePrefillSettings>> s =
      ResolveSparsePrefillRequest(request, /*model_dir=*/"", config);
  if (!s.ok()) {
    return Annotate(s.status(), "--sparse-config / --sparse-threshold / --sparse-last-q");
  }
  return s;
}

// The key of trial `trial` of cell (length, depth): a 5-digit number from a seeded generator.
std::string TrialKey(uint64_t seed, int64_t length, int64_t depth, int64_t trial) {
  std::seed_seq seq{static_cast<uint64_t>(seed), static_cast<uint64_t>(length),
                    static_cast<uint64_t>(depth), static_cast<uint64_t>(trial)};
  std::mt19937_64 rng(seq);
  return std::to_string(std::uniform_int_distribution<int>(10000, 99999)(rng));
}

struct Cell {
  int64_t trials = 0, correct = 0, prompt_tokens = 0;
  double prefill_seconds = 0;
};

absl::Status Run(const Flags& f) {
  if (f.trials <= 0 || f.chunk_size <= 0 || f.max_new_tokens <= 0) {
    return absl::InvalidArgumentError("--trials, --chunk-size and --max-new-tokens must be > 0");
  }
  for (int64_t d : f.depths) {
    if (d < 0 || d > 100) {
      return absl::InvalidArgumentError(absl::StrCat("--depths: ", d, " is not in [0, 100]"));
    }
  }
  bool any_sparse = false;
  for (const std::string& m : f.modes) {
    if (m != "rope" && m != "dca" && !IsSparseMode(m)) {
      return absl::InvalidArgumentError(
          absl::StrCat("--modes: '", m, "' is none of rope, dca, rope-sparse and dca-sparse"));
    }
    any_sparse = any_sparse || IsSparseMode(m);
  }
  if (any_sparse && f.sparse_config.empty()) {
    return absl::InvalidArgumentError("--modes rope-sparse / dca-sparse need --sparse-config FILE");
  }
  if (f.lengths.empty() || f.depths.empty() || f.modes.empty()) {
    return absl::InvalidArgumentError("--lengths, --depths and --modes must not be empty");
  }
  MP_ASSIGN_OR_RETURN(std::shared_ptr<Backend> backend, MakeBackend(f.device));
  MP_ASSIGN_OR_RETURN(ModelConfig base, LoadModelConfig(f.model_dir + "/config.json"));
  MP_ASSIGN_OR_RETURN(std::unique_ptr<Tokenizer> tokenizer,
                      Tokenizer::Load(f.model_dir + "/tokenizer.json"));
  MP_ASSIGN_OR_RETURN(ChatTemplate chat, ChatTemplate::FromModelDir(f.model_dir));
  std::vector<int32_t> stop_ids(base.eos_token_ids.begin(), base.eos_token_ids.end());
  if (auto end = tokenizer->TokenToId(ChatTemplate::kEndOfTurn)) stop_ids.push_back(*end);

  // The DCA settings of mode "dca", validated before any work.
  DualChunkOverride dca_on;
  dca_on.enable = true;
  if (f.dca_chunk_option->count() > 0) dca_on.chunk_size = f.dca_chunk_size;
  if (f.dca_local_option->count() > 0) dca_on.local_size = f.dca_local_size;
  if (f.dca_l0_option->count() > 0) dca_on.original_max_position_embeddings = f.dca_l0;
  ModelConfig dca_config = base;
  MP_RETURN_IF_ERROR(ApplyDualChunkOverride(dca_on, &dca_config));
  ModelConfig rope_config = base;
  DualChunkOverride dca_off;
  dca_off.disable = true;
  MP_RETURN_IF_ERROR(ApplyDualChunkOverride(dca_off, &rope_config));
  // The sparse settings of the sparse modes, validated before any work.
  std::map<std::string, std::shared_ptr<const SparsePrefillSettings>> sparse;
  for (const std::string& m : f.modes) {
    if (!IsSparseMode(m)) continue;
    MP_ASSIGN_OR_RETURN(sparse[m], SparseSettings(f, IsDcaMode(m) ? dca_config : rope_config));
  }

  // Prompts first (shared by the modes): [length][depth][trial].
  std::map<std::tuple<int64_t, int64_t, int64_t>, PasskeyPrompt> prompts;
  std::map<std::tuple<int64_t, int64_t, int64_t>, std::string> keys;
  int64_t longest = 0;
  for (int64_t length : f.lengths) {
    for (int64_t depth : f.depths) {
      for (int64_t t = 0; t < f.trials; ++t) {
        const std::string key = TrialKey(f.seed, length, depth, t);
        MP_ASSIGN_OR_RETURN(PasskeyPrompt p,
                            BuildPasskeyPrompt(*tokenizer, chat, {length, depth / 100.0, key}));
        longest = std::max<int64_t>(longest, static_cast<int64_t>(p.ids.size()));
        prompts[{length, depth, t}] = std::move(p);
        keys[{length, depth, t}] = key;
      }
    }
  }

  if (!f.save_prompts.empty()) {
    std::ofstream out(f.save_prompts);
    if (!out) return absl::NotFoundError(absl::StrCat("cannot write ", f.save_prompts));
    for (const auto& [cell, p] : prompts) {
      const auto& [length, depth, t] = cell;
      nlohmann::json j = {{"length", length},  {"depth", depth},         {"trial", t},
                          {"key", keys[cell]}, {"tokens", p.ids.size()}, {"text", p.text}};
      out << j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) << "\n";
    }
  }
  if (f.prompts_only) {
    if (f.save_prompts.empty()) {
      return absl::InvalidArgumentError("--prompts-only needs --save-prompts FILE");
    }
    return absl::OkStatus();
  }

  WeightLoadOptions load;
  load.layers = {0, base.num_hidden_layers};
  MP_ASSIGN_OR_RETURN(ModelWeights weights, LoadModelWeights(f.model_dir, base, load));
  std::ofstream trials_out;
  if (!f.jsonl.empty()) {
    trials_out.open(f.jsonl);
    if (!trials_out) return absl::NotFoundError(absl::StrCat("cannot write ", f.jsonl));
  }

  std::map<std::tuple<std::string, int64_t, int64_t>, Cell> cells;
  for (const std::string& mode : f.modes) {
    const ModelConfig& config = IsDcaMode(mode) ? dca_config : rope_config;
    EngineOptions options;
    options.chunk_size = f.chunk_size;
    options.max_context = longest + f.max_new_tokens;
    KvCacheOptions kv;
    kv.max_tokens = options.max_context;
    MP_ASSIGN_OR_RETURN(std::unique_ptr<Engine> engine,
                        Engine::Create(config, weights, backend, options, kv,
                                       IsSparseMode(mode) ? sparse[mode] : nullptr));
    for (int64_t length : f.lengths) {
      for (int64_t depth : f.depths) {
        Cell& cell = cells[{mode, length, depth}];
        for (int64_t t = 0; t < f.trials; ++t) {
          const PasskeyPrompt& p = prompts[{length, depth, t}];
          const std::string& key = keys[{length, depth, t}];
          GenerationOptions gen;
          gen.max_new_tokens = f.max_new_tokens;
          gen.stop_token_ids = stop_ids;
          MP_ASSIGN_OR_RETURN(GenerationResult r, engine->Generate(p.ids, gen));
          MP_ASSIGN_OR_RETURN(std::string answer,
                              tokenizer->Decode(r.token_ids, /*skip_special=*/true));
          const std::optional<std::string> parsed = ParsePasskeyAnswer(answer);
          const bool ok = parsed.has_value() && *parsed == key;
          cell.trials += 1;
          cell.correct += ok ? 1 : 0;
          cell.prompt_tokens = std::max<int64_t>(cell.prompt_tokens, p.ids.size());
          cell.prefill_seconds += r.timings.prefill_seconds;
          if (!f.quiet) {
            std::fprintf(stderr,
                         "%s len %lld depth %lld%% trial %lld: key %s answer \"%s\" %s (%.1f s)\n",
                         mode.c_str(), static_cast<long long>(length),
                         static_cast<long long>(depth), static_cast<long long>(t), key.c_str(),
                         answer.c_str(), ok ? "ok" : "WRONG", r.timings.prefill_seconds);
          }
          if (trials_out) {
            nlohmann::json j = {{"bench", "passkey_trial"},
                                {"mode", mode},
                                {"length", length},
                                {"depth", depth},
                                {"trial", t},
                                {"prompt_tokens", p.ids.size()},
                                {"needle_token", p.needle_token},
                                {"key", key},
                                {"answer", answer},
                                {"correct", ok},
                                {"prefill_seconds", r.timings.prefill_seconds}};
            trials_out << j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) << "\n";
            trials_out.flush();
          }
        }
      }
    }
  }

  // Table: one row per (mode, length), one column per depth.
  const DualChunkConfig& d = *dca_config.dual_chunk;
  std::printf("\npasskey retrieval accuracy (%%), %lld trials per cell, device %s\n",
              static_cast<long long>(f.trials), f.device.c_str());
  std::printf("dca: chunk_size %lld, local_size %lld (chunk length %lld), L0 %lld\n",
              static_cast<long long>(d.chunk_size), static_cast<long long>(d.local_size),
              static_cast<long long>(d.chunk_len()),
              static_cast<long long>(d.original_max_position_embeddings));
  int64_t sparse_threshold = -1;
  if (!sparse.empty()) {
    const SparsePrefillSettings& s = *sparse.begin()->second;
    sparse_threshold = s.threshold;
    std::printf("sparse: %s, prompts longer than %lld tokens, last_q %lld\n",
                f.sparse_config.c_str(), static_cast<long long>(s.threshold),
                static_cast<long long>(s.last_q));
  }
  std::printf("\n");
  // Sparse modes run dense at or below the threshold (§3.3).
  auto sparse_active = [&](const std::string& mode, int64_t tokens) {
    return IsSparseMode(mode) && tokens > sparse_threshold;
  };
  std::printf("| mode | length | tokens |");
  for (int64_t depth : f.depths) std::printf(" %lld%% |", static_cast<long long>(depth));
  std::printf(" all |\n|---|---|---|");
  for (size_t i = 0; i <= f.depths.size(); ++i) std::printf("---|");
  std::printf("\n");
  for (const std::string& mode : f.modes) {
    for (int64_t length : f.lengths) {
      int64_t correct = 0, total = 0, tokens = 0;
      std::printf("| %s | %lld |", mode.c_str(), static_cast<long long>(length));
      std::string row;
      for (int64_t depth : f.depths) {
        const Cell& c = cells[{mode, length, depth}];
        correct += c.correct;
        total += c.trials;
        tokens = std::max(tokens, c.prompt_tokens);
        row += absl::StrCat(" ", 100 * c.correct / std::max<int64_t>(c.trials, 1), " |");
      }
      std::printf(
          " %lld%s |%s %lld |\n", static_cast<long long>(tokens),
          IsSparseMode(mode) && !sparse_active(mode, tokens) ? " (dense: <= threshold)" : "",
          row.c_str(), static_cast<long long>(100 * correct / std::max<int64_t>(total, 1)));
    }
  }
  std::printf("\n");
  for (const std::string& mode : f.modes) {
    for (int64_t length : f.lengths) {
      for (int64_t depth : f.depths) {
        const Cell& c = cells[{mode, length, depth}];
        nlohmann::json j = {{"bench", "passkey"},
                            {"model", f.model_dir},
                            {"device", f.device},
                            {"mode", mode},
                            {"length", length},
                            {"prompt_tokens", c.prompt_tokens},
                            {"depth", depth},
                            {"trials", c.trials},
                            {"correct", c.correct},
                            {"accuracy", static_cast<double>(c.correct) / c.trials},
                            {"mean_prefill_seconds", c.prefill_seconds / c.trials}};
        if (IsDcaMode(mode)) {
          j["dca"] = {{"chunk_size", d.chunk_size},
                      {"local_size", d.local_size},
                      {"original_max_position_embeddings", d.original_max_position_embeddings}};
        }
        if (IsSparseMode(mode)) {
          const SparsePrefillSettings& s = *sparse[mode];
          j["sparse"] = {{"config", f.sparse_config},
                         {"threshold", s.threshold},
                         {"last_q", s.last_q},
                         {"active", sparse_active(mode, c.prompt_tokens)}};
        }
        std::printf("%s\n", j.dump().c_str());
      }
    }
  }
  std::fflush(stdout);
  return absl::OkStatus();
}

}  // namespace
}  // namespace mp::bench

int main(int argc, char** argv) {
  CLI::App app{
      "Passkey retrieval accuracy with and without dual chunk attention and sparse "
      "prefill"};
  mp::bench::Flags f;
  app.add_option("--model", f.model_dir, "Hugging Face model directory")->required();
  app.add_option("--device", f.device, "cpu, cuda or cuda:N");
  app.add_option("--lengths", f.lengths, "prompt lengths in tokens")->delimiter(',');
  app.add_option("--depths", f.depths, "needle depths in percent")->delimiter(',');
  app.add_option("--modes", f.modes,
                 "rope (plain RoPE), dca, rope-sparse and/or dca-sparse (sparse prefill)")
      ->delimiter(',');
  app.add_option("--trials", f.trials, "trials per (mode, length, depth) cell");
  app.add_option("--seed", f.seed, "seed of the pass keys");
  app.add_option("--chunk-size", f.chunk_size, "prefill chunk size in tokens");
  app.add_option("--max-new-tokens", f.max_new_tokens, "tokens generated per answer");
  app.add_option("--jsonl", f.jsonl, "write one JSON line per trial to this file");
  app.add_option("--save-prompts", f.save_prompts,
                 "write every prompt (text and key) as one JSON line to this file");
  app.add_flag("--quiet", f.quiet, "no per-trial lines on stderr");
  app.add_flag("--prompts-only", f.prompts_only,
               "write --save-prompts and stop (e.g. calibration documents for "
               "millipede refine-sparsity)");
  f.dca_chunk_option = app.add_option("--dca-chunk-size", f.dca_chunk_size,
                                      "DCA chunk_size of mode dca (default: config.json's, else "
                                      "max_position_embeddings)");
  f.dca_local_option = app.add_option("--dca-local-size", f.dca_local_size,
                                      "DCA local_size of mode dca (default: config.json's, else "
                                      "chunk_size / 32, aligned)");
  f.dca_l0_option = app.add_option("--dca-original-max-position-embeddings", f.dca_l0,
                                   "YaRN L0 of mode dca (default: config.json's, else "
                                   "max_position_embeddings)");
  app.add_option("--sparse-config", f.sparse_config,
                 "sparse_attention_config.json of modes rope-sparse and dca-sparse");
  f.sparse_threshold_option =
      app.add_option("--sparse-threshold", f.sparse_threshold,
                     "sparse modes: sparse prefill only for prompts longer than this (default: "
                     "config.json's sparse_attention_threshold, else 32768)");
  f.sparse_last_q_option = app.add_option("--sparse-last-q", f.sparse_last_q,
                                          "sparse modes: estimation queries per piece (1-64)");
  CLI11_PARSE(app, argc, argv);
  const absl::Status status = mp::bench::Run(f);
  if (!status.ok()) {
    std::fprintf(stderr, "mp_passkey_eval: %s\n", status.ToString().c_str());
    return 1;
  }
  return 0;
}
