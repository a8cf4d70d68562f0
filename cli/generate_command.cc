// millipede generate: a client of a running cluster — submits a prompt (text, token ids, or
// random ids for speed runs), shows prefill progress on stderr, streams the answer to stdout
// and prints the time to first token.
#include <signal.h>

#include <atomic>
#include <cstdio>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "cli/commands.h"
#include "cli/config_args.h"
#include "common/grpc_channel.h"
#include "common/grpc_health_client.h"
#include "common/grpc_status.h"
#include "common/signals.h"
#include "common/status.h"
#include "millipede/v1/coordinator.grpc.pb.h"

namespace mp::cli {
namespace {

namespace v1 = millipede::v1;

struct GenerateFlags {
  ConfigFlags config;
  std::string address = "127.0.0.1:50051";
  std::string prompt;
  std::string prompt_file;
  std::string prompt_ids;
  bool prompt_ids_given = false;
  int64_t random_prompt = 0;
  int64_t random_vocab = 1000;
  std::string system;
  bool raw = false;
  int64_t max_new_tokens = 128;
  float temperature = 0;
  float top_p = 1;
  uint64_t seed = 0;
  bool prefill_only = false;
  bool ignore_eos = false;
  int32_t priority = 0;
  std::string request_id;
  double timeout = 0;
  double wait_ready = 0;
  bool quiet = false;
  bool json = false;
};

absl::StatusOr<std::vector<int32_t>> ParseIds(const std::string& text) {
  std::vector<int32_t> ids;
  for (absl::string_view part : absl::StrSplit(text, ',', absl::SkipWhitespace())) {
    int32_t id;
    if (!absl::SimpleAtoi(absl::StripAsciiWhitespace(part), &id)) {
      return absl::InvalidArgumentError(
          absl::StrCat("--prompt-ids: '", part, "' is not a token id"));
    }
    ids.push_back(id);
  }
  return ids;
}

absl::StatusOr<v1::GenerateRequest> BuildRequest(const GenerateFlags& f) {
  const int sources =
      !f.prompt.empty() + !f.prompt_file.empty() + f.prompt_ids_given + (f.random_prompt > 0);
  if (sources != 1) {
    return absl::InvalidArgumentError(
        "give exactly one of --prompt, --prompt-file, --prompt-ids and --random-prompt");
  }
  v1::GenerateRequest r;
  r.set_request_id(f.request_id);
  if (!f.prompt.empty()) {
    r.set_text(f.prompt);
  } else if (!f.prompt_file.empty()) {
    std::ifstream in(f.prompt_file, std::ios::binary);
    if (!in) return absl::NotFoundError(absl::StrCat("cannot open prompt file ", f.prompt_file));
    std::ostringstream ss;
    ss << in.rdbuf();
    r.set_text(ss.str());
  } else if (f.prompt_ids_given) {
    MP_ASSIGN_OR_RETURN(std::vector<int32_t> ids, ParseIds(f.prompt_ids));
    r.mutable_tokens()->mutable_ids()->Assign(ids.begin(), ids.end());
  } else {
    std::mt19937_64 rng(f.seed);
    std::uniform_int_distribution<int32_t> dist(0, static_cast<int32_t>(f.random_vocab) - 1);
    auto* ids = r.mutable_tokens()->mutable_ids();
    ids->Reserve(static_cast<int>(f.random_prompt));
    for (int64_t i = 0; i < f.random_prompt; ++i) ids->Add(dist(rng));
  }
  if (r.has_text()) {
    r.set_raw(f.raw);
    r.set_system(f.system);
  }
  r.set_max_new_tokens(static_cast<uint32_t>(f.max_new_tokens));
  r.mutable_sampling()->set_temperature(f.temperature);
  r.mutable_sampling()->set_top_p(f.top_p);
  r.mutable_sampling()->set_seed(f.seed);
  r.set_ignore_eos(f.ignore_eos);
  r.set_priority(f.priority);
  return r;
}

absl::Status Run(const GenerateFlags& f) {
  if (f.max_new_tokens < 0 || f.random_vocab <= 0) {
    return absl::InvalidArgumentError("--max-new-tokens must be >= 0 and --random-vocab > 0");
  }
  MP_ASSIGN_OR_RETURN(v1::GenerateRequest request, BuildRequest(f));
  std::shared_ptr<grpc::Channel> channel = MakeChannel(f.address);
  if (f.wait_ready > 0) {
    MP_RETURN_IF_ERROR(
        WaitForServing(channel, "millipede.v1.Coordinator", absl::Seconds(f.wait_ready)));
  }
  auto stub = v1::Coordinator::NewStub(channel);
  grpc::ClientContext context;
  if (f.timeout > 0) SetTimeout(context, absl::Seconds(f.timeout));

  // Ctrl-C cancels the call (the cluster frees the request's KV).
  BlockShutdownSignals();
  std::atomic<bool> done{false};
  std::thread canceller([&] {
    while (!done.load()) {
      if (WaitForSignal(absl::Milliseconds(200)) != 0) {
        context.TryCancel();
        return;
      }
    }
  });

  const bool text = request.has_text();
  std::unique_ptr<grpc::ClientReader<v1::GenerateEvent>> reader =
      f.prefill_only ? stub->Prefill(&context, request) : stub->Generate(&context, request);
  v1::GenerateEvent ev;
  v1::Completed completed;
  bool progress_line = false;
  double ttft = 0;
  auto end_progress = [&] {
    if (progress_line) std::fputc('\n', stderr);
    progress_line = false;
  };
  bool printed = false;
  auto emit = [&](const std::string& piece, int32_t id) {
    if (f.json) return;
    printed = true;
    if (text) {
      std::fwrite(piece.data(), 1, piece.size(), stdout);
    } else {
      std::printf("%d ", id);
    }
    std::fflush(stdout);
  };
  while (reader->Read(&ev)) {
    switch (ev.event_case()) {
      case v1::GenerateEvent::kAccepted:
        if (!f.quiet) {
          std::fprintf(stderr, "request %s accepted: %u prompt tokens, queue position %u\n",
                       ev.accepted().request_id().c_str(), ev.accepted().prompt_tokens(),
                       ev.accepted().queue_position());
        }
        break;
      case v1::GenerateEvent::kProgress: {
        if (f.quiet) break;
        const v1::Progress& p = ev.progress();
        const double s = p.elapsed_seconds();
        std::fprintf(stderr, "\rprefill %llu/%llu tokens (%3.0f%%), chunk %u, %.1f s, %.0f tok/s  ",
                     static_cast<unsigned long long>(p.tokens_done()),
                     static_cast<unsigned long long>(p.tokens_total()),
                     100.0 * p.tokens_done() / std::max<uint64_t>(p.tokens_total(), 1),
                     p.chunk_index(), s, s > 0 ? p.tokens_done() / s : 0.0);
        std::fflush(stderr);
        progress_line = true;
        break;
      }
      case v1::GenerateEvent::kFirstToken:
        end_progress();
        ttft = ev.first_token().ttft_seconds();
        emit(ev.first_token().text(), ev.first_token().token_id());
        break;
      case v1::GenerateEvent::kTokens:
        if (text) {
          emit(ev.tokens().text(), 0);
        } else {
          for (int32_t id : ev.tokens().token_ids()) emit("", id);
        }
        break;
      case v1::GenerateEvent::kCompleted:
        completed = ev.completed();
        break;
      default:
        break;
    }
  }
  grpc::Status status = reader->Finish();
  done.store(true);
  canceller.join();
  end_progress();
  if (printed) std::fputc('\n', stdout);
  std::fflush(stdout);
  if (!status.ok()) return FromGrpcStatus(status);
  if (f.json) {
    const v1::Timings& t = completed.timings();
    nlohmann::json j = {{"request_id", completed.request_id()},
                        {"prompt_tokens", completed.prompt_tokens()},
                        {"generated_tokens", completed.generated_tokens()},
                        {"ttft_seconds", t.ttft_seconds()},
                        {"queue_seconds", t.queue_seconds()},
                        {"prefill_seconds", t.prefill_seconds()},
                        {"decode_seconds", t.decode_seconds()},
                        {"total_seconds", t.total_seconds()},
                        {"chunks", t.chunks()},
                        {"stop_reason", v1::StopReason_Name(completed.stop_reason())}};
    std::printf("%s\n", j.dump().c_str());
    std::fflush(stdout);
  }
  if (!f.quiet) {
    const v1::Timings& t = completed.timings();
    const double prefill = t.prefill_seconds();
    const uint32_t decoded =
        completed.generated_tokens() > 0 ? completed.generated_tokens() - 1 : 0;
    std::fprintf(stderr,
                 "TTFT %.3f s; prompt %u tokens, queue %.3f s, prefill %.3f s (%.0f tok/s, %u "
                 "chunks); %u tokens generated (%.1f tok/s)\n",
                 ttft > 0 ? ttft : t.ttft_seconds(), completed.prompt_tokens(), t.queue_seconds(),
                 prefill, prefill > 0 ? completed.prompt_tokens() / prefill : 0.0, t.chunks(),
                 completed.generated_tokens(),
                 decoded > 0 && t.decode_seconds() > 0 ? decoded / t.decode_seconds() : 0.0);
  }
  return absl::OkStatus();
}

}  // namespace

void RegisterGenerateCommand(CLI::App& app, int* exit_code) {
  auto f = std::make_shared<GenerateFlags>();
  auto* cmd = app.add_subcommand("generate",
                                 "Send a prompt to a running cluster and stream the "
                                 "answer");
  cmd->option_defaults()->always_capture_default();
  cmd->add_option("--address", f->address, "host:port of the coordinator");
  cmd->add_option("--prompt", f->prompt, "the prompt text");
  cmd->add_option("--prompt-file", f->prompt_file, "file holding the prompt text");
  auto* ids = cmd->add_option("--prompt-ids", f->prompt_ids,
                              "comma-separated token ids (no chat template)");
  cmd->add_option("--random-prompt", f->random_prompt,
                  "a prompt of this many random token ids (speed runs)");
  cmd->add_option("--random-vocab", f->random_vocab, "random ids are drawn from [0, this)");
  cmd->add_option("--system", f->system, "system message for the chat template");
  cmd->add_flag("--raw", f->raw, "send the text as is, without the chat template");
  cmd->add_option("--max-new-tokens", f->max_new_tokens, "tokens to generate");
  cmd->add_option("--temperature", f->temperature, "0 = greedy");
  cmd->add_option("--top-p", f->top_p, "nucleus sampling mass");
  cmd->add_option("--seed", f->seed, "sampling seed (and of --random-prompt)");
  cmd->add_flag("--prefill-only", f->prefill_only, "use the Prefill RPC: stop after token 1");
  cmd->add_flag("--ignore-eos", f->ignore_eos, "do not stop at the model's end tokens");
  cmd->add_option("--priority", f->priority, "higher runs first");
  cmd->add_option("--request-id", f->request_id, "client-chosen request id");
  cmd->add_option("--timeout", f->timeout, "deadline in seconds (0: none)");
  cmd->add_option("--wait-ready", f->wait_ready,
                  "wait up to this many seconds for the cluster to be ready");
  cmd->add_flag("--quiet", f->quiet, "no progress or timing lines on stderr");
  cmd->add_flag("--json", f->json,
                "print the completion (counts and timings) as one JSON line instead of the text");
  AddConfigFlags(cmd, &f->config);
  cmd->callback([f, ids, cmd, exit_code] {
    if (HandleConfigFlags(cmd, f->config)) return;
    f->prompt_ids_given = ids->count() > 0;
    if (f->config.check) {
      std::printf("configuration OK\n");
      return;
    }
    absl::Status status = Run(*f);
    if (!status.ok()) {
      std::fprintf(stderr, "millipede generate: %s\n", status.ToString().c_str());
      *exit_code = 1;
    }
  });
}

}  // namespace mp::cli
