// `millipede local` starts a coordinator and N workers, prints the address once the pipeline is
// ready (its stages linked over loopback), restarts a worker that dies (the cluster serves again
// with the full pipeline), and on Ctrl-C stops every process and exits 0. `millipede generate`
// talks to it: tokens on stdout, TTFT on stderr.
#include <gtest/gtest.h>
#include <signal.h>

#include <cerrno>
#include <set>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "common/grpc_channel.h"
#include "common/status_matchers.h"
#include "tests/integration/cluster_test_util.h"

namespace mp::testing {
namespace {

namespace v1 = millipede::v1;

bool ProcessExists(pid_t pid) { return kill(pid, 0) == 0 || errno != ESRCH; }

absl::StatusOr<std::set<pid_t>> WorkerPids(v1::Coordinator::Stub& stub, int stages,
                                           absl::Duration timeout) {
  const absl::Time end = absl::Now() + timeout;
  while (absl::Now() < end) {
    grpc::ClientContext context;
    SetTimeout(context, absl::Seconds(2));
    v1::ListWorkersResponse list;
    if (stub.ListWorkers(&context, v1::ListWorkersRequest(), &list).ok() && list.ready()) {
      std::set<pid_t> pids;
      for (const v1::WorkerInfo& w : list.workers()) {
        if (w.state() == v1::WORKER_STATE_READY) pids.insert(static_cast<pid_t>(w.pid()));
      }
      if (static_cast<int>(pids.size()) == stages) return pids;
    }
    absl::SleepFor(absl::Milliseconds(50));
  }
  return absl::DeadlineExceededError("no ready pipeline");
}

TEST(LocalCommandTest, SupervisesRestartsAndStopsCleanly) {
  TempDir temp;
  const std::string& dir = temp.path();
  MP_ASSERT_OK_AND_ASSIGN(
      Process local,
      Process::Start(
          {MillipedeBin(), "local", "--model", TestdataDir() + "/tiny_llama", "--stages", "2",
           "--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0", "--ucx-transports", "tcp",
           "--drain-timeout", "3", "--coordinator-arg=--rebuild-wait=30",
           "--coordinator-arg=--health-interval=0.5", "--coordinator-arg=--max-chunk=64",
           "--coordinator-arg=--min-chunk=64"},
          dir + "/local.log"));
  MP_ASSERT_OK_AND_ASSIGN(std::string address, local.WaitForToken("ready at ", absl::Seconds(60)));
  MP_ASSERT_OK_AND_ASSIGN(std::string coordinator_pid_text,
                          local.WaitForToken("coordinator pid ", absl::Seconds(1)));
  pid_t coordinator_pid = 0;
  ASSERT_TRUE(absl::SimpleAtoi(coordinator_pid_text, &coordinator_pid)) << coordinator_pid_text;
  auto stub = v1::Coordinator::NewStub(MakeChannel(address));
  const v1::GenerateRequest request = TokenRequest(RandomIds(100, 512, 9), 6);
  GenerateResult first = RunGenerate(*stub, request);
  ASSERT_TRUE(first.status.ok()) << first.status.error_message() << local.Log();
  // The stages talk over loopback only (interfaces that come and go cannot take their links).
  const std::vector<std::string> lanes = UcxLinkLanes(local.Log());
  EXPECT_GE(lanes.size(), 2u) << local.Log();
  for (const std::string& l : lanes) EXPECT_EQ(l, "tcp/lo") << local.Log();

  // The client command.
  MP_ASSERT_OK_AND_ASSIGN(Process client, Process::Start({MillipedeBin(), "generate", "--address",
                                                          address, "--prompt-ids", "1,2,3,4,5",
                                                          "--max-new-tokens", "4", "--ignore-eos"},
                                                         dir + "/generate.log"));
  EXPECT_EQ(client.Wait(absl::Seconds(30)), 0) << client.Log();
  EXPECT_TRUE(absl::StrContains(client.Log(), "TTFT ")) << client.Log();
  EXPECT_TRUE(absl::StrContains(client.Log(), "4 tokens generated")) << client.Log();

  // A worker dies: `local` restarts it and the cluster serves again on two stages (the
  // coordinator waits 30 s before it would settle for fewer, so this is the restarted one).
  MP_ASSERT_OK_AND_ASSIGN(std::set<pid_t> before, WorkerPids(*stub, 2, absl::Seconds(10)));
  const pid_t victim = *before.begin();
  ASSERT_EQ(kill(victim, SIGKILL), 0);
  absl::StatusOr<std::set<pid_t>> after = absl::DeadlineExceededError("not checked");
  const absl::Time end = absl::Now() + absl::Seconds(60);
  while (absl::Now() < end) {
    after = WorkerPids(*stub, 2, absl::Seconds(1));
    if (after.ok() && !after->contains(victim)) break;
  }
  ASSERT_TRUE(after.ok() && !after->contains(victim)) << local.Log();
  EXPECT_TRUE(absl::StrContains(local.Log(), "restarting it")) << local.Log();
  GenerateResult again = RunGenerate(*stub, request);
  ASSERT_TRUE(again.status.ok()) << again.status.error_message() << local.Log();
  EXPECT_EQ(again.tokens, first.tokens);

  // Ctrl-C: everything stops, `local` exits 0.
  local.Signal(SIGINT);
  const std::optional<int> code = local.Wait(absl::Seconds(30));
  ASSERT_TRUE(code.has_value()) << "millipede local did not stop:\n" << local.Log();
  EXPECT_EQ(*code, 0) << local.Log();
  EXPECT_TRUE(absl::StrContains(local.Log(), "millipede local: stopped")) << local.Log();
  EXPECT_FALSE(ProcessExists(coordinator_pid));
  for (pid_t pid : *after) EXPECT_FALSE(ProcessExists(pid)) << "worker " << pid << " survived";
}

}  // namespace
}  // namespace mp::testing
