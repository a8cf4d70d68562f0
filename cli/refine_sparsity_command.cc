// millipede refine-sparsity: per-head vertical-slash budgets from calibration documents
// (qwen1m-spec.md §4, docs/sparse-refinement.md).
//
// The documents are prefilled through the engine exactly as deployed (engine chunks of
// --chunk-size, DCA with the model's or the --dca* settings, per-piece last-q selection); every
// layer measures, per head, the recall exp(lse_sparse - lse_dense) of sparse prefill with the
// candidate budgets against the dense prefill of the same queries. Heads below --target-recall
// get both budgets raised by --step (2048) until they reach it (or the caps / --max-rounds).
// The start is --config, the model directory's sparse_attention_config.json, or with
// --initial-search the cheapest of MInference's base candidates that reaches the target. Prints
// a per-layer table (recall and density before -> after; density = the keys the sparse index
// gives the calibration queries over their causal keys, what the budgets cost) and writes --out
// in Qwen's format.
#include <sys/stat.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "cli/commands.h"
#include "cli/dca_flags.h"
#include "common/status.h"
#include "model/config.h"
#include "model/sparse_attention_config.h"
#include "model/sparse_refinement.h"
#include "model/tokenizer.h"
#include "model/weights.h"
#include "runtime/backend.h"
#include "runtime/backend_factory.h"
#include "runtime/sparse_recall_meter.h"

namespace mp::cli {
namespace {

struct RefineFlags {
  std::string model_dir;
  std::vector<std::string> calibration;
  std::string config_in;
  bool initial_search = false;
  std::string out;
  double target_recall = 0.95;
  std::string aggregate = "mean";
  int64_t chunk_size = 32768;
  int64_t threshold = 0;
  CLI::Option* threshold_option = nullptr;
  int64_t last_q = 0;
  CLI::Option* last_q_option = nullptr;
  std::string device = "cpu";
  int64_t max_tokens = 0;
  bool repeat = false;
  int64_t step = 2048;
  int64_t max_budget = 0;
  int64_t max_rounds = 16;
  int64_t steps_per_pass = 2;
  int64_t measure_from = 0;
  bool quiet = false;
  DcaFlags dca;
};

absl::StatusOr<std::string> ReadText(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("--calibration: cannot open ", path));
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// One calibration document: text (tokenized as it is, no chat template) or token ids.
struct Document {
  std::string text;
  std::vector<int32_t> ids;
  bool tokenized = false;
};

// The documents of one calibration file: a .jsonl file holds one JSON object per line with a
// document as "text" (e.g. mp_passkey_eval --save-prompts) or as token "ids"; any other file
// is one text document.
absl::StatusOr<std::vector<Document>> ReadCalibrationFile(const std::string& path) {
  MP_ASSIGN_OR_RETURN(std::string text, ReadText(path));
  std::vector<Document> docs;
  if (path.size() >= 6 && path.compare(path.size() - 6, 6, ".jsonl") == 0) {
    std::istringstream lines(text);
    std::string line;
    int64_t number = 0;
    while (std::getline(lines, line)) {
      ++number;
      if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
      nlohmann::json j = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
      Document doc;
      if (!j.is_discarded() && j.is_object() && j.contains("text") && j["text"].is_string()) {
        doc.text = j["text"].get<std::string>();
      } else if (!j.is_discarded() && j.is_object() && j.contains("ids") && j["ids"].is_array()) {
        doc.tokenized = true;
        for (const nlohmann::json& id : j["ids"]) {
          if (!id.is_number_integer() || id.get<int64_t>() < 0 ||
              id.get<int64_t>() > std::numeric_limits<int32_t>::max()) {
            return absl::InvalidArgumentError(absl::StrCat("--calibration: line ", number, " of ",
                                                           path,
                                                           " has an id that is not a "
                                                           "non-negative 32-bit integer: ",
                                                           id.dump()));
          }
          doc.ids.push_back(static_cast<int32_t>(id.get<int64_t>()));
        }
      } else {
        return absl::InvalidArgumentError(
            absl::StrCat("--calibration: line ", number, " of ", path,
                         " is not a JSON object with a string \"text\" or an array \"ids\""));
      }
      docs.push_back(std::move(doc));
    }
  } else {
    Document doc;
    doc.text = std::move(text);
    docs.push_back(std::move(doc));
  }
  if (docs.empty()) {
    return absl::InvalidArgumentError(absl::StrCat("--calibration: ", path, " holds no document"));
  }
  return docs;
}

absl::Status CheckFlags(const RefineFlags& f) {
  struct stat st;
  if (f.model_dir.empty()) return absl::InvalidArgumentError("--model is required");
  if (stat(f.model_dir.c_str(), &st) != 0 || !S_ISDIR(st.st_mode)) {
    return absl::NotFoundError(absl::StrCat("--model: directory ", f.model_dir, " does not exist"));
  }
  if (f.calibration.empty()) {
    return absl::InvalidArgumentError("--calibration: give at least one file");
  }
  for (const std::string& c : f.calibration) {
    if (stat(c.c_str(), &st) != 0 || !S_ISREG(st.st_mode)) {
      return absl::NotFoundError(absl::StrCat("--calibration: file ", c, " does not exist"));
    }
  }
  if (f.out.empty()) return absl::InvalidArgumentError("--out is required");
  const std::filesystem::path parent =
      std::filesystem::absolute(std::filesystem::path(f.out)).parent_path();
  if (stat(parent.c_str(), &st) != 0 || !S_ISDIR(st.st_mode)) {
    return absl::NotFoundError(
        absl::StrCat("--out: directory ", parent.string(), " does not exist"));
  }
  if (!f.config_in.empty() && f.initial_search) {
    return absl::InvalidArgumentError("give at most one of --config and --initial-search");
  }
  if (!(f.target_recall > 0.0 && f.target_recall <= 1.0)) {
    return absl::InvalidArgumentError(
        absl::StrCat("--target-recall must be in (0, 1], got ", f.target_recall));
  }
  if (f.aggregate != "mean" && f.aggregate != "p05") {
    return absl::InvalidArgumentError(
        absl::StrCat("--aggregate must be mean or p05, got '", f.aggregate, "'"));
  }
  if (f.chunk_size <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("--chunk-size must be positive, got ", f.chunk_size));
  }
  if (f.max_tokens < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("--max-tokens must be positive, got ", f.max_tokens));
  }
  if (f.repeat && f.max_tokens == 0) {
    return absl::InvalidArgumentError("--repeat needs --max-tokens (the length to repeat to)");
  }
  if (f.step <= 0) {
    return absl::InvalidArgumentError(absl::StrCat("--step must be positive, got ", f.step));
  }
  if (f.max_budget < 0 || f.max_budget > kMaxSparseBudget) {
    return absl::InvalidArgumentError(
        absl::StrCat("--max-budget must be in [1, ", kMaxSparseBudget, "], got ", f.max_budget));
  }
  if (f.max_rounds < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("--max-rounds must be >= 0, got ", f.max_rounds));
  }
  if (f.measure_from < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("--measure-from must be >= 0, got ", f.measure_from));
  }
  if (f.steps_per_pass < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("--steps-per-pass must be >= 1, got ", f.steps_per_pass));
  }
  return absl::OkStatus();
}

void PrintReport(const RefinementResult& r, const SparseAttentionConfig& initial,
                 const RefinementOptions& o) {
  std::printf(
      "\n| layer | recall before | recall after | worst head before | worst head after |"
      " density before | density after | raised | below target | passes |"
      " mean budget (v, s) after |\n");
  std::printf("|---|---|---|---|---|---|---|---|---|---|---|\n");
  double before = 0.0, after = 0.0, worst_before = 1.0, worst_after = 1.0;
  double density_before = 0.0, density_after = 0.0, max_before = 0.0, max_after = 0.0;
  int64_t raised = 0, below = 0, heads = 0;
  double v_before = 0.0, s_before = 0.0, v_after = 0.0, s_after = 0.0;
  for (size_t l = 0; l < r.layers.size(); ++l) {
    const LayerRefinement& x = r.layers[l];
    double v = 0.0, s = 0.0;
    for (size_t h = 0; h < r.config.layers[l].size(); ++h) {
      v += r.config.layers[l][h].vertical_size;
      s += r.config.layers[l][h].slash_size;
      v_before += initial.layers[l][h].vertical_size;
      s_before += initial.layers[l][h].slash_size;
    }
    const double n = static_cast<double>(r.config.layers[l].size());
    v_after += v;
    s_after += s;
    heads += static_cast<int64_t>(n);
    std::printf(
        "| %zu | %.4f | %.4f | %.4f | %.4f | %.2f%% | %.2f%% | %lld/%lld | %lld | %lld "
        "| %.0f, %.0f |\n",
        l, x.recall_before, x.recall_after, x.min_head_before, x.min_head_after,
        100.0 * x.density_before, 100.0 * x.density_after,
        static_cast<long long>(x.heads_raised), static_cast<long long>(n),
                static_cast<long long>(x.heads_below_target), static_cast<long long>(x.rounds),
                v / n, s / n);
    before += x.recall_before * n;
    after += x.recall_after * n;
    density_before += x.density_before * n;
    density_after += x.density_after * n;
    max_before = std::max(max_before, x.max_query_before);
    max_after = std::max(max_after, x.max_query_after);
    worst_before = std::min(worst_before, x.min_head_before);
    worst_after = std::min(worst_after, x.min_head_after);
    raised += x.heads_raised;
    below += x.heads_below_target;
  }
  std::printf(
      "\nall %lld heads (%s recall, target %.3f): %.4f -> %.4f, worst head %.4f -> %.4f, "
      "%lld raised, %lld below target; density %.2f%% -> %.2f%%; highest query recall %.4f -> "
      "%.4f; mean budget (v, s) (%.0f, %.0f) -> (%.0f, %.0f)\n",
      static_cast<long long>(heads), o.aggregate == RecallAggregate::kMean ? "mean" : "p05",
      o.target_recall, before / heads, after / heads, worst_before, worst_after,
      static_cast<long long>(raised), static_cast<long long>(below),
      100.0 * density_before / heads, 100.0 * density_after / heads, max_before, max_after,
      v_before / heads,
      s_before / heads, v_after / heads, s_after / heads);
}

absl::Status Run(const RefineFlags& f) {
  MP_RETURN_IF_ERROR(CheckFlags(f));
  MP_ASSIGN_OR_RETURN(ModelConfig config, LoadModelConfig(f.model_dir + "/config.json"));
  MP_RETURN_IF_ERROR(ApplyDcaFlags(f.dca, &config));
  SparsePrefillOverrides overrides;
  if (f.threshold_option->count() > 0) overrides.threshold = f.threshold;
  if (f.last_q_option->count() > 0) overrides.last_q = f.last_q;
  overrides.enabled = false;  // only the threshold and last_q are taken from the settings
  absl::StatusOr<SparsePrefillSettings> settings =
      ResolveSparsePrefillSettings(config, std::nullopt, overrides);
  if (!settings.ok()) return Annotate(settings.status(), "--threshold / --last-q");

  // The starting config: --config, the model's file, or the search.
  std::optional<SparseAttentionConfig> initial;
  if (!f.config_in.empty()) {
    absl::StatusOr<SparseAttentionConfig> c = LoadSparseAttentionConfig(f.config_in, config);
    if (!c.ok()) return Annotate(c.status(), "--config");
    initial = *std::move(c);
  } else if (!f.initial_search) {
    const std::string file =
        (std::filesystem::path(f.model_dir) / kSparseAttentionConfigFileName).string();
    if (!std::filesystem::exists(file)) {
      return absl::FailedPreconditionError(
          absl::StrCat("the model ships no ", kSparseAttentionConfigFileName,
                       ": give --config IN.json or --initial-search"));
    }
    MP_ASSIGN_OR_RETURN(initial, LoadSparseAttentionConfig(file, config));
  }

  // Calibration documents: tokenized as they are (no chat template), truncated to --max-tokens
  // (repeated up to it with --repeat); each must be longer than the threshold, since shorter
  // prompts run dense in deployment.
  std::unique_ptr<Tokenizer> tokenizer;  // loaded for the first text document
  std::vector<std::vector<int32_t>> documents;
  std::vector<std::string> names;
  for (const std::string& path : f.calibration) {
    MP_ASSIGN_OR_RETURN(std::vector<Document> docs, ReadCalibrationFile(path));
    for (size_t i = 0; i < docs.size(); ++i) {
      if (!docs[i].tokenized && tokenizer == nullptr) {
        MP_ASSIGN_OR_RETURN(tokenizer, Tokenizer::Load(f.model_dir + "/tokenizer.json"));
      }
      std::vector<int32_t> ids =
          docs[i].tokenized ? std::move(docs[i].ids) : tokenizer->Encode(docs[i].text);
      const std::string name = docs.size() == 1 ? path : absl::StrCat(path, ":", i + 1);
      if (ids.empty()) {
        return absl::InvalidArgumentError(absl::StrCat("--calibration: ", name, " is empty"));
      }
      if (f.repeat) {
        const size_t unit = ids.size();
        while (static_cast<int64_t>(ids.size()) < f.max_tokens) {
          ids.insert(ids.end(), ids.begin(), ids.begin() + static_cast<int64_t>(unit));
        }
      }
      if (f.max_tokens > 0 && static_cast<int64_t>(ids.size()) > f.max_tokens) {
        ids.resize(static_cast<size_t>(f.max_tokens));
      }
      if (static_cast<int64_t>(ids.size()) <= settings->threshold) {
        return absl::InvalidArgumentError(absl::StrCat(
            "--calibration: ", name, " has ", ids.size(),
            " tokens, not above the sparse threshold ", settings->threshold,
            " (such prompts run dense): give longer documents, --repeat with --max-tokens, or a "
            "lower --threshold"));
      }
      documents.push_back(std::move(ids));
      names.push_back(name);
    }
  }
  int64_t longest = 0, total = 0;
  for (const auto& d : documents) {
    longest = std::max<int64_t>(longest, static_cast<int64_t>(d.size()));
    total += static_cast<int64_t>(d.size());
  }

  RefinementOptions o;
  o.target_recall = f.target_recall;
  o.aggregate = f.aggregate == "p05" ? RecallAggregate::kP05 : RecallAggregate::kMean;
  o.step = f.step;
  o.max_vertical = o.max_slash = f.max_budget > 0 ? f.max_budget : longest;
  o.max_rounds = f.max_rounds;
  o.steps_per_pass = f.steps_per_pass;

  MP_ASSIGN_OR_RETURN(std::shared_ptr<Backend> backend, NewBackend(f.device));
  WeightLoadOptions load;
  load.layers = {0, config.num_hidden_layers};
  MP_ASSIGN_OR_RETURN(ModelWeights weights, LoadModelWeights(f.model_dir, config, load));
  SparseRecallMeterOptions mo;
  mo.chunk_size = f.chunk_size;
  mo.last_q = settings->last_q;
  mo.measure_from = f.measure_from;
  if (backend->device() != DeviceKind::kCpu) mo.mlp_block_rows = 8192;
  if (!f.quiet) {
    mo.on_document = [&](int64_t pass, int64_t doc, double seconds) {
      std::fprintf(stderr, "pass %lld: %s (%zu tokens) %.1f s\n", static_cast<long long>(pass + 1),
                   names[doc].c_str(), documents[doc].size(), seconds);
    };
  }
  absl::StatusOr<std::unique_ptr<SparseRecallMeter>> created =
      SparseRecallMeter::Create(config, weights, backend, documents, mo);
  if (!created.ok() && f.measure_from > 0) return Annotate(created.status(), "--measure-from");
  MP_ASSIGN_OR_RETURN(std::unique_ptr<SparseRecallMeter> meter, std::move(created));
  weights = ModelWeights();
  const ModelRecallFn measure = [&](const BudgetSets& sets) { return meter->Measure(sets); };

  const auto t0 = std::chrono::steady_clock::now();
  std::printf(
      "refine-sparsity: %s, %zu documents (%lld tokens, longest %lld), engine chunk %lld, "
      "threshold %lld, last_q %lld, measured from token %lld, device %s\n",
      f.model_dir.c_str(), documents.size(), static_cast<long long>(total),
      static_cast<long long>(longest), static_cast<long long>(f.chunk_size),
      static_cast<long long>(settings->threshold), static_cast<long long>(settings->last_q),
      static_cast<long long>(f.measure_from), f.device.c_str());
  if (config.dual_chunk.has_value()) {
    const DualChunkConfig& d = *config.dual_chunk;
    std::printf("dca: chunk_size %lld, local_size %lld (chunk length %lld), L0 %lld\n",
                static_cast<long long>(d.chunk_size), static_cast<long long>(d.local_size),
                static_cast<long long>(d.chunk_len()),
                static_cast<long long>(d.original_max_position_embeddings));
  } else {
    std::printf("dca: off\n");
  }
  std::fflush(stdout);

  std::vector<std::vector<HeadRecall>> initial_recall;
  if (!initial.has_value()) {
    MP_ASSIGN_OR_RETURN(SearchResult search,
                        SearchInitialSparseAttentionConfigJointly(
                            config.num_hidden_layers, config.num_attention_heads, measure, o));
    std::map<std::pair<int64_t, int64_t>, int64_t> picks;
    for (const auto& layer : search.config.layers) {
      for (const SparseHeadConfig& h : layer) ++picks[{h.vertical_size, h.slash_size}];
    }
    std::printf("initial search (one pass over the base candidates):");
    for (const auto& [c, n] : picks) {
      std::printf(" (%lld, %lld) x %lld", static_cast<long long>(c.first),
                  static_cast<long long>(c.second), static_cast<long long>(n));
    }
    std::printf("\n");
    std::fflush(stdout);
    initial = std::move(search.config);
    initial_recall = std::move(search.recall);
  }
  MP_ASSIGN_OR_RETURN(
      RefinementResult result,
      RefineSparseAttentionConfigJointly(*initial, measure, o,
                                         initial_recall.empty() ? nullptr : &initial_recall));
  PrintReport(result, *initial, o);
  MP_RETURN_IF_ERROR(WriteSparseAttentionConfig(result.config, f.out));
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::printf("%lld calibration passes in %.0f s; wrote %s\n",
              static_cast<long long>(meter->passes()), seconds, f.out.c_str());
  std::fflush(stdout);
  return absl::OkStatus();
}

}  // namespace

void RegisterRefineSparsityCommand(CLI::App& app, int* exit_code) {
  auto f = std::make_shared<RefineFlags>();
  auto* cmd = app.add_subcommand(
      "refine-sparsity",
      "Per-head sparse prefill budgets from calibration documents (attention recall)");
  cmd->add_option("--model", f->model_dir, "Hugging Face model directory")->required();
  cmd->add_option("--calibration", f->calibration,
                  "calibration files: text (one document) or .jsonl (one {\"text\": ...} per "
                  "line)")
      ->delimiter(',')
      ->required();
  cmd->add_option("--config", f->config_in,
                  "starting sparse_attention_config.json (default: the model directory's)");
  cmd->add_flag("--initial-search", f->initial_search,
                "start from the cheapest of MInference's base candidates that reaches the "
                "target, per head (for models that ship no config)");
  cmd->add_option("--out", f->out, "the refined config to write")->required();
  cmd->add_option("--target-recall", f->target_recall, "per-head recall to reach, in (0, 1]");
  cmd->add_option("--aggregate", f->aggregate,
                  "per-head recall over the queries: mean or p05 (5th percentile)");
  cmd->add_option("--chunk-size", f->chunk_size, "engine prefill chunk in tokens");
  f->threshold_option = cmd->add_option(
      "--threshold", f->threshold,
      "sparse_attention_threshold: documents must be longer (default: config.json's, else "
      "32768)");
  f->last_q_option =
      cmd->add_option("--last-q", f->last_q, "sparse_attention_last_q, 1-64 (default 64)");
  cmd->add_option("--device", f->device, "cpu, cuda or cuda:N");
  cmd->add_option("--max-tokens", f->max_tokens, "truncate each document to this many tokens");
  cmd->add_flag("--repeat", f->repeat, "repeat shorter documents up to --max-tokens");
  cmd->add_option("--step", f->step, "budget increment per raise (both budgets)");
  cmd->add_option("--max-budget", f->max_budget,
                  "cap of each budget (default: the longest document's length)");
  cmd->add_option("--max-rounds", f->max_rounds, "raises per head at most");
  cmd->add_option("--measure-from", f->measure_from,
                  "measure only the engine chunks that start at or after this token (e.g. the "
                  "last chunk of a long document); earlier chunks run dense only");
  cmd->add_option("--steps-per-pass", f->steps_per_pass,
                  "budget levels measured per calibration pass (more levels: fewer passes)");
  cmd->add_flag("--quiet", f->quiet, "no per-document progress on stderr");
  AddDcaFlags(cmd, &f->dca);
  cmd->callback([f, exit_code] {
    absl::Status status = Run(*f);
    if (!status.ok()) {
      std::fprintf(stderr, "millipede refine-sparsity: %s\n", status.ToString().c_str());
      *exit_code = 1;
    }
  });
}

}  // namespace mp::cli
