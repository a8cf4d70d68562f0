#include "worker/stage_runner.h"

#include <cstring>
#include <limits>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/logging.h"
#include "common/status.h"
#include "kernels/cpu/sampling.h"

namespace mp {
namespace {

using millipede::v1::ChunkKind;
using millipede::v1::RunChunkRequest;
using millipede::v1::RunChunkResponse;

double Since(absl::Time t) { return absl::ToDoubleSeconds(absl::Now() - t); }

bool SamplesToken(const RunChunkRequest& r) {
  return r.kind() == millipede::v1::CHUNK_KIND_PREFILL_LAST ||
         r.kind() == millipede::v1::CHUNK_KIND_DECODE;
}

}  // namespace

StageRunner::StageRunner(StageExecutor* executor, ActivationLinks* links, WorkerMetrics* metrics,
                         int64_t max_rows)
    : executor_(executor), links_(links), metrics_(metrics), max_rows_(max_rows) {}

StageRunner::~StageRunner() { Stop(absl::CancelledError("the stage runner was shut down")); }

void StageRunner::Start() {
  absl::MutexLock lock(&mu_);
  if (started_ || !stopped_.ok()) return;
  started_ = true;
  idle_since_ = absl::Now();
  thread_ = std::thread([this] { Loop(); });
}

absl::Status StageRunner::ValidateStep(const RunChunkRequest& r) const {
  if (r.step() == 0) return absl::InvalidArgumentError("RunChunk: step must be >= 1");
  if (r.num_tokens() == 0 || r.num_tokens() > max_rows_) {
    return absl::InvalidArgumentError(absl::StrCat("RunChunk: num_tokens ", r.num_tokens(),
                                                   " is outside [1, max_chunk_tokens = ", max_rows_,
                                                   "]"));
  }
  if (r.kind() != millipede::v1::CHUNK_KIND_PREFILL && !SamplesToken(r)) {
    return absl::InvalidArgumentError("RunChunk: kind must be PREFILL, PREFILL_LAST or DECODE");
  }
  if (r.start() + r.num_tokens() > static_cast<uint64_t>(std::numeric_limits<int32_t>::max())) {
    return absl::InvalidArgumentError("RunChunk: positions exceed the int32 range");
  }
  if (executor_->is_first() && r.token_ids_size() != static_cast<int>(r.num_tokens())) {
    return absl::InvalidArgumentError(absl::StrCat("RunChunk: the first stage needs num_tokens (",
                                                   r.num_tokens(), ") token_ids, got ",
                                                   r.token_ids_size()));
  }
  return absl::OkStatus();
}

absl::StatusOr<RunChunkResponse> StageRunner::RunStep(const RunChunkRequest& request,
                                                      const CallerGone& caller_gone) {
  MP_RETURN_IF_ERROR(ValidateStep(request));
  auto pending = std::make_shared<Pending>();
  pending->request = request;
  absl::MutexLock lock(&mu_);
  if (!stopped_.ok()) return stopped_;
  if (!started_) return absl::FailedPreconditionError("RunChunk: the stage is not connected yet");
  if (request.step() < next_step_) {
    return absl::FailedPreconditionError(absl::StrCat(
        "RunChunk: step ", request.step(), " already ran (the next step is ", next_step_, ")"));
  }
  if (!queue_.emplace(request.step(), pending).second) {
    return absl::AlreadyExistsError(
        absl::StrCat("RunChunk: step ", request.step(), " is already queued"));
  }
  while (!mu_.AwaitWithTimeout(absl::Condition(&pending->done), absl::Milliseconds(100))) {
    if (!caller_gone || !caller_gone()) continue;
    MP_LOG(Debug) << "RunChunk: the caller of step " << request.step() << " (request "
                  << request.request_id() << ", chunk " << request.chunk_index()
                  << ") went away; the step still runs in its turn";
    return absl::CancelledError(absl::StrCat("RunChunk: the caller of step ", request.step(),
                                             " went away (cancelled, or past its deadline)"));
  }
  return std::move(pending->result);
}

absl::StatusOr<bool> StageRunner::Release(uint64_t request, absl::Duration timeout) {
  auto order = std::make_shared<ReleaseOrder>();
  order->request = request;
  absl::MutexLock lock(&mu_);
  if (!stopped_.ok() || !started_) return false;  // a stopped runner has freed everything
  const absl::Time now = absl::Now();
  if (released_.size() > 100000) {
    for (auto it = released_.begin(); it != released_.end();) {
      if (now - it->second > absl::Hours(1)) {
        released_.erase(it++);
      } else {
        ++it;
      }
    }
  }
  released_[request] = now;
  releases_.push_back(order);
  auto done = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return order->done || !stopped_.ok(); };
  if (!mu_.AwaitWithTimeout(absl::Condition(&done), timeout)) {
    return absl::DeadlineExceededError(absl::StrCat(
        "Release: the stage is still busy with a step after ", absl::FormatDuration(timeout),
        "; request ", request, "'s KV is freed when the step ends"));
  }
  return order->held;
}

void StageRunner::Stop(absl::Status why) {
  if (why.ok()) why = absl::CancelledError("the stage runner was stopped");
  {
    absl::MutexLock lock(&mu_);
    if (stopped_.ok()) stopped_ = why;
    for (auto& [step, p] : queue_) {
      p->result = stopped_;
      p->done = true;
    }
    queue_.clear();
    for (auto& order : releases_) order->done = true;
    releases_.clear();
  }
  std::call_once(joined_, [this] {
    if (thread_.joinable()) thread_.join();
    // The step thread is gone: free what it held.
    for (uint64_t id : held_) executor_->Release(id).IgnoreError();
    held_.clear();
    rngs_.clear();
    UpdateKvMetrics();
    absl::MutexLock lock(&mu_);
    requests_held_count_ = 0;
  });
}

bool StageRunner::Aborted() const {
  absl::MutexLock lock(&mu_);
  return !stopped_.ok();
}

int StageRunner::requests_held() const {
  absl::MutexLock lock(&mu_);
  return requests_held_count_;
}

uint64_t StageRunner::steps_done() const {
  absl::MutexLock lock(&mu_);
  return steps_done_;
}

bool StageRunner::idle() const {
  absl::MutexLock lock(&mu_);
  return queue_.empty() && !running_step_;
}

void StageRunner::Loop() {
  while (true) {
    std::vector<std::shared_ptr<ReleaseOrder>> releases;
    std::shared_ptr<Pending> pending;
    bool pass_through = false;
    {
      absl::MutexLock lock(&mu_);
      auto ready = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
        return !stopped_.ok() || !releases_.empty() ||
               (!queue_.empty() && queue_.begin()->first == next_step_);
      };
      mu_.Await(absl::Condition(&ready));
      if (!stopped_.ok()) return;
      releases.swap(releases_);
      if (!queue_.empty() && queue_.begin()->first == next_step_) {
        pending = queue_.begin()->second;
        queue_.erase(queue_.begin());
        running_step_ = true;
        pass_through = released_.contains(pending->request.request_id());
      }
    }
    ApplyReleases(releases);
    if (pending == nullptr) continue;
    if (metrics_ != nullptr) metrics_->idle_seconds.Increment(Since(idle_since_));
    const absl::Time started = absl::Now();
    absl::StatusOr<RunChunkResponse> result = RunOne(pending->request, pass_through);
    idle_since_ = absl::Now();
    if (GetLogLevel() <= LogLevel::kDebug) {
      const RunChunkRequest& r = pending->request;
      MP_LOG(Debug) << "step " << r.step() << " (request " << r.request_id() << ", chunk "
                    << r.chunk_index() << ", " << r.num_tokens() << " tokens from " << r.start()
                    << (pass_through ? ", passed through" : "") << ") took "
                    << absl::FormatDuration(idle_since_ - started) << ": "
                    << (result.ok() ? absl::StrCat("wait ", result->wait_seconds(), " s, forward ",
                                                   result->forward_seconds(), " s, send ",
                                                   result->send_seconds(), " s")
                                    : result.status().ToString());
    }
    if (metrics_ != nullptr) {
      if (result.ok()) {
        metrics_->steps_ok.Increment();
      } else if (pass_through) {
        metrics_->steps_passed_through.Increment();
      } else {
        metrics_->steps_failed.Increment();
      }
    }
    absl::MutexLock lock(&mu_);
    pending->result = std::move(result);
    pending->done = true;
    running_step_ = false;
    ++next_step_;
    ++steps_done_;
    requests_held_count_ = static_cast<int>(held_.size());
  }
}

void StageRunner::ApplyReleases(const std::vector<std::shared_ptr<ReleaseOrder>>& releases) {
  if (releases.empty()) return;
  std::vector<bool> held(releases.size());
  for (size_t i = 0; i < releases.size(); ++i) {
    const uint64_t id = releases[i]->request;
    held[i] = held_.erase(id) > 0;
    if (executor_->kv_cache().Contains(id)) executor_->Release(id).IgnoreError();
    rngs_.erase(id);
  }
  UpdateKvMetrics();
  absl::MutexLock lock(&mu_);
  for (size_t i = 0; i < releases.size(); ++i) {
    releases[i]->held = held[i];
    releases[i]->done = true;
  }
  requests_held_count_ = static_cast<int>(held_.size());
}

void StageRunner::UpdateKvMetrics() {
  const KvCacheStats stats = executor_->kv_cache().stats();
  kv_blocks_in_use_.store(stats.blocks_in_use);
  if (metrics_ == nullptr) return;
  metrics_->kv_blocks_in_use.Set(static_cast<double>(stats.blocks_in_use));
  metrics_->kv_blocks_total.Set(static_cast<double>(stats.blocks_total));
  metrics_->kv_usage_ratio.Set(stats.blocks_total > 0 ? static_cast<double>(stats.blocks_in_use) /
                                                            static_cast<double>(stats.blocks_total)
                                                      : 0.0);
  metrics_->requests_held.Set(static_cast<double>(held_.size()));
}

absl::Status StageRunner::Compute(const RunChunkRequest& r, const Tensor& input, Tensor* out) {
  const uint64_t id = r.request_id();
  KvCache& kv = executor_->kv_cache();
  if (!kv.Contains(id) && r.reserve_tokens() > 0) {
    MP_RETURN_IF_ERROR(kv.Reserve(id, static_cast<int64_t>(r.reserve_tokens())));
    held_.insert(id);
  }
  const LogitsMode mode =
      executor_->is_last() && SamplesToken(r) ? LogitsMode::kLastRow : LogitsMode::kNone;
  // The request's prompt length sets dual chunk attention's YaRN temperature (and, later, the
  // sparse gate) identically for every chunk.
  absl::StatusOr<Tensor> result = executor_->RunChunk(
      id, static_cast<int64_t>(r.start()), input, mode, static_cast<int64_t>(r.prompt_tokens()));
  // Device backends run asynchronously: the input buffer is reused by the next receive.
  absl::Status synced = executor_->backend().Synchronize();
  if (!result.ok()) {
    if (!kv.Contains(id)) held_.erase(id);
    return result.status();
  }
  held_.insert(id);
  *out = *std::move(result);
  return synced;
}

absl::StatusOr<RunChunkResponse> StageRunner::RunOne(const RunChunkRequest& r, bool pass_through) {
  if (!broken_.ok()) return broken_;
  RunChunkResponse response;
  const int64_t n = r.num_tokens();
  auto aborted = [this] { return Aborted(); };

  Tensor input;
  if (executor_->is_first()) {
    input = Tensor::Host({n}, DType::kI32);
    std::memcpy(input.data(), r.token_ids().data(), static_cast<size_t>(n) * sizeof(int32_t));
  } else {
    TransferTiming t;
    absl::StatusOr<Tensor> in = links_->Receive(r.request_id(), r.chunk_index(), n, aborted, &t);
    if (!in.ok()) {
      broken_ = in.status();
      return broken_;
    }
    input = *std::move(in);
    response.set_wait_seconds(t.seconds);
    if (metrics_ != nullptr) {
      metrics_->idle_seconds.Increment(t.seconds);
      metrics_->received_bytes.Increment(static_cast<double>(t.bytes));
      metrics_->receive_seconds.Observe(t.seconds);
    }
  }

  absl::Status compute;
  Tensor out;
  if (!pass_through) {
    const absl::Time start = absl::Now();
    compute = Compute(r, input, &out);
    const double seconds = Since(start);
    response.set_forward_seconds(seconds);
    if (metrics_ != nullptr) {
      metrics_->busy_seconds.Increment(seconds);
      (r.kind() == millipede::v1::CHUNK_KIND_DECODE ? metrics_->forward_decode
                                                    : metrics_->forward_prefill)
          .Observe(seconds);
      if (compute.ok() && r.kind() != millipede::v1::CHUNK_KIND_DECODE) {
        metrics_->prefill_tokens.Increment(static_cast<double>(n));
      }
    }
    UpdateKvMetrics();
  }

  if (!executor_->is_last()) {
    TransferTiming t;
    const bool forward = !pass_through && compute.ok();
    absl::Status sent =
        links_->Send(r.request_id(), r.chunk_index(), forward ? out : Tensor(), n, aborted, &t);
    if (sent.ok()) sent = links_->CheckSends();
    if (!sent.ok()) {
      broken_ = sent;
      return broken_;
    }
    response.set_send_seconds(t.seconds);
    if (metrics_ != nullptr) {
      metrics_->sent_bytes.Increment(static_cast<double>(t.bytes));
      metrics_->send_seconds.Observe(t.seconds);
    }
  }
  if (pass_through) {
    return absl::CancelledError(absl::StrCat("request ", r.request_id(), " was released"));
  }
  MP_RETURN_IF_ERROR(compute);

  if (executor_->is_last() && SamplesToken(r)) {
    MP_ASSIGN_OR_RETURN(Tensor logits, executor_->backend().ToHostF32(out));
    const int64_t vocab = executor_->config().vocab_size;
    const float* row = logits.data_as<const float>() + (logits.dim(0) - 1) * vocab;
    response.set_token_id(Sample(r, row));
    if (r.return_logits()) {
      response.mutable_logits()->mutable_values()->Assign(row, row + vocab);
    }
  }
  const KvCache& kv = executor_->kv_cache();
  response.set_cached_tokens(static_cast<uint64_t>(kv.Length(r.request_id())));
  response.set_kv_blocks_used(static_cast<uint64_t>(kv.stats().blocks_in_use));
  return response;
}

int32_t StageRunner::Sample(const RunChunkRequest& r, const float* logits) {
  const int64_t vocab = executor_->config().vocab_size;
  const millipede::v1::SamplingParams& s = r.sampling();
  if (s.temperature() == 0.0f) return cpu::SampleGreedy(logits, vocab);
  auto it = rngs_.try_emplace(r.request_id(), s.seed()).first;
  // The same uniform draw as the single-process engine: the top 53 bits of the generator.
  const double uniform = static_cast<double>(it->second() >> 11) * 0x1.0p-53;
  const float top_p = s.top_p() == 0.0f ? 1.0f : s.top_p();
  return cpu::SampleTopP(logits, vocab, s.temperature(), top_p, uniform);
}

}  // namespace mp
