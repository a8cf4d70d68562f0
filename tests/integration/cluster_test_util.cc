#include "tests/integration/cluster_test_util.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/grpc_channel.h"
#include "common/grpc_health_client.h"
#include "common/grpc_status.h"

#ifndef MP_MILLIPEDE_BIN
#error "MP_MILLIPEDE_BIN must name the millipede binary"
#endif
#ifndef MP_TESTDATA_DIR
#error "MP_TESTDATA_DIR must point at tests/testdata"
#endif

namespace mp::testing {

namespace v1 = millipede::v1;

std::string MillipedeBin() { return MP_MILLIPEDE_BIN; }
std::string TestdataDir() { return MP_TESTDATA_DIR; }

std::string MakeTempDir() {
  const char* base = std::getenv("TMPDIR");
  std::string pattern = absl::StrCat(base != nullptr ? base : "/tmp", "/mp_cluster_XXXXXX");
  if (mkdtemp(pattern.data()) == nullptr) return "/tmp";
  return pattern;
}

TempDir::~TempDir() {
  // Only a directory MakeTempDir() created.
  if (std::filesystem::path(path_).filename().string().rfind("mp_cluster_", 0) != 0) return;
  std::error_code ignored;
  std::filesystem::remove_all(path_, ignored);
}

// ---- Process --------------------------------------------------------------------------------

Process::Process(Process&& other) noexcept { *this = std::move(other); }

Process& Process::operator=(Process&& other) noexcept {
  if (this != &other) {
    if (pid_ > 0 && Running()) {
      kill(pid_, SIGKILL);
      Wait(absl::Seconds(5));
    }
    pid_ = other.pid_;
    exit_code_ = other.exit_code_;
    log_path_ = std::move(other.log_path_);
    other.pid_ = -1;
  }
  return *this;
}

Process::~Process() {
  if (pid_ > 0 && Running()) {
    kill(pid_, SIGKILL);
    Wait(absl::Seconds(5));
  }
}

absl::StatusOr<Process> Process::Start(const std::vector<std::string>& argv,
                                       const std::string& log_path) {
  const int fd = open(log_path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  if (fd < 0) return absl::InternalError(absl::StrCat("cannot open ", log_path));
  std::vector<std::string> args = argv;
  std::vector<char*> cargv;
  for (std::string& a : args) cargv.push_back(a.data());
  cargv.push_back(nullptr);
  const pid_t parent = getpid();
  const pid_t pid = fork();
  if (pid < 0) {
    close(fd);
    return absl::InternalError("fork failed");
  }
  if (pid == 0) {
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent) _exit(1);
    dup2(fd, 1);
    dup2(fd, 2);
    sigset_t all;
    sigfillset(&all);
    sigprocmask(SIG_UNBLOCK, &all, nullptr);
    execvp(cargv[0], cargv.data());
    _exit(127);
  }
  close(fd);
  Process p;
  p.pid_ = pid;
  p.log_path_ = log_path;
  return p;
}

std::string Process::Log() const {
  std::ifstream in(log_path_);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

bool Process::Running() {
  if (pid_ <= 0) return false;
  if (exit_code_ >= 0) return false;
  int status = 0;
  const pid_t r = waitpid(pid_, &status, WNOHANG);
  if (r == 0) return true;
  if (r == pid_) {
    exit_code_ = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  } else {
    exit_code_ = 255;
  }
  return false;
}

void Process::Signal(int sig) {
  if (Running()) kill(pid_, sig);
}

std::optional<int> Process::Wait(absl::Duration timeout) {
  const absl::Time end = absl::Now() + timeout;
  while (Running()) {
    if (absl::Now() >= end) return std::nullopt;
    absl::SleepFor(absl::Milliseconds(20));
  }
  return exit_code_;
}

absl::StatusOr<std::string> Process::WaitForToken(const std::string& prefix,
                                                  absl::Duration timeout) {
  const absl::Time end = absl::Now() + timeout;
  while (true) {
    const std::string log = Log();
    const size_t at = log.find(prefix);
    if (at != std::string::npos) {
      const size_t begin = at + prefix.size();
      const size_t stop = log.find_first_of(" \t\r\n,()", begin);
      if (stop != std::string::npos) return log.substr(begin, stop - begin);
    }
    if (!Running()) {
      return absl::UnavailableError(absl::StrCat("process exited (code ", exit_code_,
                                                 ") before printing '", prefix, "':\n", log));
    }
    if (absl::Now() >= end) {
      return absl::DeadlineExceededError(absl::StrCat("no '", prefix, "' in:\n", log));
    }
    absl::SleepFor(absl::Milliseconds(20));
  }
}

// ---- Cluster --------------------------------------------------------------------------------

absl::StatusOr<std::unique_ptr<Cluster>> Cluster::Start(const ClusterOptions& options) {
  auto c = std::unique_ptr<Cluster>(new Cluster());
  c->options_ = options;
  std::vector<std::string> argv = options.coordinator_prefix;
  argv.insert(argv.end(), {MillipedeBin(), "coordinator", "--model", options.model_dir, "--stages",
                           std::to_string(options.stages), "--listen", options.coordinator_listen,
                           "--metrics-listen", "127.0.0.1:0", "--health-interval", "0.5",
                           "--rebuild-wait", "1"});
  if (!options.ucx_net_devices.empty()) {
    argv.insert(argv.end(), {"--ucx-net-devices", options.ucx_net_devices});
  }
  argv.insert(argv.end(), options.coordinator_args.begin(), options.coordinator_args.end());
  absl::StatusOr<Process> coordinator = Process::Start(argv, c->dir_.path() + "/coordinator.log");
  if (!coordinator.ok()) return coordinator.status();
  c->coordinator_ = *std::move(coordinator);
  absl::StatusOr<std::string> address =
      c->coordinator_.WaitForToken("serving on ", absl::Seconds(30));
  if (!address.ok()) return address.status();
  c->address_ = *address;
  c->stub_ = v1::Coordinator::NewStub(MakeChannel(c->address_));
  for (int i = 0; i < options.stages; ++i) {
    absl::Status s = c->StartWorker(i, i);
    if (!s.ok()) return s;
  }
  return c;
}

absl::Status Cluster::StartWorker(int index, int stage_hint) {
  std::vector<std::string> argv;
  if (index < static_cast<int>(options_.worker_prefix.size())) {
    argv = options_.worker_prefix[index];
  }
  const std::string listen = index < static_cast<int>(options_.worker_listen.size())
                                 ? options_.worker_listen[index]
                                 : "127.0.0.1:0";
  argv.insert(argv.end(), {MillipedeBin(), "worker", "--coordinator", address_, "--listen", listen,
                           "--metrics-listen", "127.0.0.1:0", "--stage-hint",
                           std::to_string(stage_hint), "--drain-timeout", "5"});
  argv.insert(argv.end(), options_.worker_args.begin(), options_.worker_args.end());
  absl::StatusOr<Process> p =
      Process::Start(argv, absl::StrCat(dir_.path(), "/worker", index, ".log"));
  if (!p.ok()) return p.status();
  if (index >= static_cast<int>(workers_.size())) workers_.resize(index + 1);
  workers_[index] = *std::move(p);
  return absl::OkStatus();
}

absl::StatusOr<int> Cluster::AddWorker(int stage_hint) {
  const int index = num_workers();
  absl::Status s = StartWorker(index, stage_hint);
  if (!s.ok()) return s;
  return index;
}

absl::StatusOr<v1::ListWorkersResponse> Cluster::ListWorkers() {
  grpc::ClientContext context;
  SetTimeout(context, absl::Seconds(5));
  v1::ListWorkersResponse response;
  grpc::Status s = stub_->ListWorkers(&context, v1::ListWorkersRequest(), &response);
  if (!s.ok()) return FromGrpcStatus(s);
  return response;
}

absl::Status Cluster::WaitReady(int stages, absl::Duration timeout) {
  const absl::Time end = absl::Now() + timeout;
  std::string last;
  while (absl::Now() < end) {
    absl::StatusOr<v1::ListWorkersResponse> list = ListWorkers();
    if (list.ok() && list->ready()) {
      int in_pipeline = 0;
      for (const v1::WorkerInfo& w : list->workers()) {
        if (w.state() == v1::WORKER_STATE_READY) ++in_pipeline;
      }
      if (in_pipeline == stages) return absl::OkStatus();
      last = absl::StrCat("pipeline has ", in_pipeline, " stages");
    } else {
      last = list.ok() ? "no pipeline yet" : list.status().ToString();
    }
    absl::SleepFor(absl::Milliseconds(50));
  }
  return absl::DeadlineExceededError(
      absl::StrCat("cluster not ready with ", stages, " stages: ", last, "\n", Logs()));
}

std::string Cluster::Logs() const {
  std::string out = absl::StrCat("---- coordinator ----\n", coordinator_.Log());
  for (size_t i = 0; i < workers_.size(); ++i) {
    absl::StrAppend(&out, "---- worker ", i, " ----\n", workers_[i].Log());
  }
  return out;
}

Cluster::~Cluster() {
  for (Process& w : workers_) w.Signal(SIGTERM);
  coordinator_.Signal(SIGTERM);
  for (Process& w : workers_) {
    if (!w.Wait(absl::Seconds(10))) w.Signal(SIGKILL);
  }
  if (!coordinator_.Wait(absl::Seconds(15))) coordinator_.Signal(SIGKILL);
}

// ---- Generate -------------------------------------------------------------------------------

GenerateResult RunGenerate(v1::Coordinator::Stub& stub, const v1::GenerateRequest& request,
                           const GenerateCall& call) {
  GenerateResult out;
  grpc::ClientContext context;
  SetTimeout(context, call.timeout);
  const absl::Time start = absl::Now();
  std::unique_ptr<grpc::ClientReader<v1::GenerateEvent>> reader =
      call.prefill_only ? stub.Prefill(&context, request) : stub.Generate(&context, request);
  v1::GenerateEvent ev;
  while (reader->Read(&ev)) {
    switch (ev.event_case()) {
      case v1::GenerateEvent::kAccepted:
        out.accepted = true;
        break;
      case v1::GenerateEvent::kProgress:
        out.chunks.emplace_back(ev.progress().chunk_start(), ev.progress().chunk_end());
        break;
      case v1::GenerateEvent::kFirstToken:
        out.tokens.push_back(ev.first_token().token_id());
        if (ev.first_token().has_logits()) {
          const auto& v = ev.first_token().logits().values();
          out.logits.emplace_back(v.begin(), v.end());
        }
        break;
      case v1::GenerateEvent::kTokens:
        for (int32_t id : ev.tokens().token_ids()) out.tokens.push_back(id);
        for (const v1::Logits& l : ev.tokens().logits()) {
          out.logits.emplace_back(l.values().begin(), l.values().end());
        }
        break;
      case v1::GenerateEvent::kCompleted:
        out.completed = ev.completed();
        break;
      default:
        break;
    }
    if (call.on_event) call.on_event(ev, context);
    out.events.push_back(ev);
  }
  out.status = reader->Finish();
  out.seconds = absl::ToDoubleSeconds(absl::Now() - start);
  return out;
}

bool CancelRequest(v1::Coordinator::Stub& stub, const std::string& request_id) {
  grpc::ClientContext context;
  SetTimeout(context, absl::Seconds(30));
  v1::CancelRequest request;
  request.set_request_id(request_id);
  v1::CancelResponse response;
  return stub.Cancel(&context, request, &response).ok() && response.cancelled();
}

v1::GenerateRequest TokenRequest(const std::vector<int32_t>& ids, int max_new_tokens) {
  v1::GenerateRequest r;
  r.mutable_tokens()->mutable_ids()->Assign(ids.begin(), ids.end());
  r.set_max_new_tokens(static_cast<uint32_t>(max_new_tokens));
  r.set_ignore_eos(true);
  return r;
}

std::vector<int32_t> RandomIds(int n, int vocab, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<int32_t> dist(0, vocab - 1);
  std::vector<int32_t> ids(n);
  for (int32_t& id : ids) id = dist(rng);
  return ids;
}

std::vector<std::string> UcxLinkLanes(const std::string& log) {
  std::vector<std::string> lanes;
  for (absl::string_view line : absl::StrSplit(log, '\n')) {
    if (!absl::StrContains(line, "ucx: link to peer")) continue;
    const size_t over = line.rfind(" over ");
    if (over != absl::string_view::npos) lanes.emplace_back(line.substr(over + 6));
  }
  return lanes;
}

// ---- /metrics -------------------------------------------------------------------------------

absl::StatusOr<std::string> HttpGet(const std::string& address, const std::string& path) {
  const size_t colon = address.rfind(':');
  int port = 0;
  if (colon == std::string::npos || !absl::SimpleAtoi(address.substr(colon + 1), &port)) {
    return absl::InvalidArgumentError(absl::StrCat("bad address ", address));
  }
  const int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  inet_pton(AF_INET, address.substr(0, colon).c_str(), &addr.sin_addr);
  timeval tv{5, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    close(fd);
    return absl::UnavailableError(absl::StrCat("cannot connect to ", address));
  }
  const std::string request =
      absl::StrCat("GET ", path, " HTTP/1.1\r\nHost: ", address, "\r\nConnection: close\r\n\r\n");
  if (send(fd, request.data(), request.size(), MSG_NOSIGNAL) !=
      static_cast<ssize_t>(request.size())) {
    close(fd);
    return absl::UnavailableError("send failed");
  }
  std::string response;
  char buf[4096];
  ssize_t n;
  while ((n = recv(fd, buf, sizeof(buf), 0)) > 0) response.append(buf, static_cast<size_t>(n));
  close(fd);
  const size_t body = response.find("\r\n\r\n");
  if (response.rfind("HTTP/1.1 200", 0) != 0 || body == std::string::npos) {
    return absl::UnavailableError(absl::StrCat("GET ", path, ": ", response.substr(0, 80)));
  }
  return response.substr(body + 4);
}

std::optional<double> MetricValue(const std::string& text, const std::string& series) {
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    if (line.size() <= series.size() || line.substr(0, series.size()) != series ||
        line[series.size()] != ' ') {
      continue;
    }
    double v;
    if (absl::SimpleAtod(line.substr(series.size() + 1), &v)) return v;
  }
  return std::nullopt;
}

}  // namespace mp::testing
