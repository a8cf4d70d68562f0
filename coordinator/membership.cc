#include "coordinator/membership.h"

#include <algorithm>
#include <utility>

#include "common/grpc_channel.h"
#include "common/grpc_health_client.h"
#include "common/logging.h"

namespace mp {

namespace v1 = millipede::v1;

Membership::Membership(absl::Duration interval, int failures, std::function<void()> on_change)
    : interval_(interval), failures_(std::max(failures, 1)), on_change_(std::move(on_change)) {}

Membership::~Membership() { Stop(); }

void Membership::Start() {
  thread_ = std::thread([this] { Loop(); });
}

void Membership::Stop() {
  {
    absl::MutexLock lock(&mu_);
    stop_ = true;
  }
  if (thread_.joinable()) thread_.join();
}

void Membership::Changed() {
  changed_ = true;
  last_change_ = absl::Now();
}

void Membership::Register(const v1::RegisterWorkerRequest& request) {
  bool notify = false;
  {
    absl::MutexLock lock(&mu_);
    // A restarted worker at the same address replaces its old entry.
    for (auto it = workers_.begin(); it != workers_.end();) {
      if (it->first != request.worker_id() &&
          it->second.registration.address() == request.address()) {
        MP_LOG(Info) << "worker " << it->first << " at " << request.address() << " replaced by "
                     << request.worker_id();
        workers_.erase(it++);
        notify = true;
      } else {
        ++it;
      }
    }
    auto [it, inserted] = workers_.try_emplace(request.worker_id());
    WorkerRecord& w = it->second;
    const v1::WorkerState before = w.state;
    if (inserted || w.registration.address() != request.address()) {
      w.channel = MakeChannel(request.address());
      w.order = next_order_++;
      notify = true;
      MP_LOG(Info) << "worker " << request.worker_id() << " registered at " << request.address()
                   << " (" << request.device() << ", stage preference " << request.preferred_stage()
                   << ")";
    }
    w.registration = request;
    if (request.draining()) {
      w.state = v1::WORKER_STATE_DRAINING;
    } else if (w.state == v1::WORKER_STATE_DOWN || inserted) {
      w.state = v1::WORKER_STATE_REGISTERED;
      w.failures = 0;
    }
    if (w.state != before) notify = true;
    if (notify) Changed();
  }
  if (notify && on_change_) on_change_();
}

std::vector<WorkerRecord> Membership::All() const {
  absl::MutexLock lock(&mu_);
  std::vector<WorkerRecord> out;
  for (const auto& [id, w] : workers_) out.push_back(w);
  std::sort(out.begin(), out.end(),
            [](const WorkerRecord& a, const WorkerRecord& b) { return a.order < b.order; });
  return out;
}

std::vector<WorkerRecord> Membership::LiveWorkers() const {
  std::vector<WorkerRecord> out;
  for (WorkerRecord& w : All()) {
    if (w.alive() && w.registration.role() == v1::WORKER_ROLE_PREFILL) out.push_back(std::move(w));
  }
  std::stable_sort(out.begin(), out.end(), [](const WorkerRecord& a, const WorkerRecord& b) {
    const int pa = a.registration.preferred_stage(), pb = b.registration.preferred_stage();
    if ((pa < 0) != (pb < 0)) return pb < 0;
    return pa < pb;
  });
  return out;
}

absl::Time Membership::last_change() const {
  absl::MutexLock lock(&mu_);
  return last_change_;
}

void Membership::MarkDown(const std::string& id, const std::string& why) {
  {
    absl::MutexLock lock(&mu_);
    auto it = workers_.find(id);
    if (it == workers_.end() || it->second.state == v1::WORKER_STATE_DOWN) return;
    it->second.state = v1::WORKER_STATE_DOWN;
    it->second.down_since = absl::Now();
    it->second.last_error = why;
    MP_LOG(Warning) << "worker " << id << " is DOWN: " << why;
    Changed();
  }
  if (on_change_) on_change_();
}

std::vector<std::string> Membership::Probe(const std::vector<std::string>& ids,
                                           absl::Duration timeout) {
  std::vector<std::pair<std::string, std::shared_ptr<grpc::Channel>>> targets;
  {
    absl::MutexLock lock(&mu_);
    for (const std::string& id : ids) {
      auto it = workers_.find(id);
      if (it != workers_.end()) targets.emplace_back(id, it->second.channel);
    }
  }
  std::vector<absl::Status> results(targets.size());
  std::vector<std::thread> threads;
  for (size_t i = 0; i < targets.size(); ++i) {
    threads.emplace_back([&, i] {
      absl::StatusOr<bool> ok = CheckHealth(targets[i].second, "", timeout);
      results[i] = !ok.ok() ? ok.status()
                   : *ok    ? absl::OkStatus()
                            : absl::UnavailableError("health check says NOT_SERVING");
    });
  }
  for (std::thread& t : threads) t.join();
  std::vector<std::string> alive;
  for (size_t i = 0; i < targets.size(); ++i) {
    if (results[i].ok()) {
      alive.push_back(targets[i].first);
    } else {
      MarkDown(targets[i].first, std::string(results[i].message()));
    }
  }
  return alive;
}

void Membership::Loop() {
  while (true) {
    std::vector<std::pair<std::string, std::shared_ptr<grpc::Channel>>> targets;
    {
      absl::MutexLock lock(&mu_);
      auto stopped = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return stop_; };
      mu_.AwaitWithTimeout(absl::Condition(&stopped), interval_);
      if (stop_) return;
      const absl::Time now = absl::Now();
      for (auto it = workers_.begin(); it != workers_.end();) {
        if (it->second.state == v1::WORKER_STATE_DOWN &&
            now - it->second.down_since > absl::Minutes(5)) {
          workers_.erase(it++);
        } else {
          targets.emplace_back(it->first, it->second.channel);
          ++it;
        }
      }
    }
    std::vector<absl::Status> results(targets.size());
    std::vector<std::thread> threads;
    for (size_t i = 0; i < targets.size(); ++i) {
      threads.emplace_back([&, i] {
        absl::StatusOr<bool> ok =
            CheckHealth(targets[i].second, "", std::max(interval_, absl::Seconds(1)));
        results[i] = ok.ok() ? absl::OkStatus() : ok.status();
      });
    }
    for (std::thread& t : threads) t.join();
    bool notify = false;
    {
      absl::MutexLock lock(&mu_);
      for (size_t i = 0; i < targets.size(); ++i) {
        auto it = workers_.find(targets[i].first);
        if (it == workers_.end()) continue;
        WorkerRecord& w = it->second;
        if (results[i].ok()) {
          w.failures = 0;
          if (w.state == v1::WORKER_STATE_DOWN) {
            w.state = v1::WORKER_STATE_REGISTERED;
            MP_LOG(Info) << "worker " << it->first << " answers again";
            Changed();
            notify = true;
          }
        } else if (w.state != v1::WORKER_STATE_DOWN && ++w.failures >= failures_) {
          w.state = v1::WORKER_STATE_DOWN;
          w.down_since = absl::Now();
          w.last_error = std::string(results[i].message());
          MP_LOG(Warning) << "worker " << it->first << " is DOWN after " << w.failures
                          << " failed health checks: " << results[i].message();
          Changed();
          notify = true;
        }
      }
      if (changed_) changed_ = false;
    }
    if (notify && on_change_) on_change_();
  }
}

}  // namespace mp
