// A two-stage cluster whose stages live in two network namespaces joined by a veth pair: the
// coordinator and stage 0 in this test's namespace, stage 1 in a fresh one, UCX restricted to
// TCP over the veth devices. The activations must cross that link, and the results must equal
// what Hugging Face transformers computed for the fixture.
//
// `millipede local` while an interface comes and goes (a veth pair made before the cluster
// starts and deleted once it is ready, as other tests and containers do on a shared machine):
// the stages keep to loopback and the request is served; and when a link does run over the
// vanished interface (UCX_NET_DEVICES=all), its TCP connection is black-holed without an
// error — the stall watchdog then fails the request with UNAVAILABLE naming the stage within
// its bound, and the rebuilt pipeline serves the next one.
//
// Needs root (or CAP_SYS_ADMIN + CAP_NET_ADMIN) and iproute2. Where namespaces cannot be
// created the tests FAIL and say why; they carry the ctest label "netns".
#include <gtest/gtest.h>
#include <signal.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/grpc_channel.h"
#include "common/status.h"
#include "common/status_matchers.h"
#include "model/safetensors.h"
#include "tests/integration/cluster_test_util.h"

namespace mp::testing {
namespace {

namespace v1 = millipede::v1;

int Shell(const std::string& cmd, std::string* log) {
  FILE* p = popen((cmd + " 2>&1").c_str(), "r");
  if (p == nullptr) return -1;
  char buf[256];
  while (fgets(buf, sizeof(buf), p) != nullptr) log->append(buf);
  const int status = pclose(p);
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

// A namespace "mpc<pid>" joined to this one by a veth pair: 10.232.<k>.1 here, .2 there.
class VethNamespace {
 public:
  VethNamespace() {
    const std::string id = std::to_string(getpid() % 100000);
    ns_ = "mpc" + id;
    here_ = "mpch" + id;  // interface names: at most 15 characters
    there_ = "mpct" + id;
    const int k = getpid() % 200 + 20;
    here_ip_ = absl::StrCat("10.232.", k, ".1");
    there_ip_ = absl::StrCat("10.232.", k, ".2");
  }
  ~VethNamespace() { Destroy(); }

  // Deletes the pair (its address here goes with it) and the namespace.
  void Destroy() {
    std::string ignored;
    Shell("ip link del " + here_, &ignored);
    Shell("ip netns del " + ns_, &ignored);
  }

  bool Create(std::string* error) {
    std::string log;
    if (Shell("ip netns add " + ns_, &log) != 0) {
      *error = "`ip netns add` failed (this test needs root or CAP_SYS_ADMIN and iproute2): " + log;
      return false;
    }
    const std::vector<std::string> cmds = {
        "ip link add " + here_ + " type veth peer name " + there_,
        "ip link set " + there_ + " netns " + ns_,
        "ip addr add " + here_ip_ + "/24 dev " + here_,
        "ip -n " + ns_ + " addr add " + there_ip_ + "/24 dev " + there_,
        "ip link set " + here_ + " up",
        "ip -n " + ns_ + " link set " + there_ + " up",
        "ip -n " + ns_ + " link set lo up",
    };
    for (const std::string& cmd : cmds) {
      if (Shell(cmd, &log) != 0) {
        *error = "`" + cmd + "` failed: " + log;
        return false;
      }
    }
    return true;
  }

  const std::string& ns() const { return ns_; }
  const std::string& here() const { return here_; }
  const std::string& there() const { return there_; }
  const std::string& here_ip() const { return here_ip_; }
  const std::string& there_ip() const { return there_ip_; }

 private:
  std::string ns_, here_, there_, here_ip_, there_ip_;
};

TEST(ClusterNetnsTest, StagesInTwoNetworkNamespacesOverUcxTcp) {
  VethNamespace net;
  std::string error;
  ASSERT_TRUE(net.Create(&error)) << error;

  const std::string dir = TestdataDir() + "/tiny_qwen2";
  ClusterOptions options;
  options.model_dir = dir;
  options.stages = 2;
  options.coordinator_listen = net.here_ip() + ":0";
  options.coordinator_args = {"--ucx-transports", "tcp", "--chunk-mode", "fixed",
                              "--max-chunk",      "32"};
  options.worker_listen = {net.here_ip() + ":0", net.there_ip() + ":0"};
  options.ucx_net_devices = "";  // each worker's own, from its environment below
  options.worker_prefix = {
      {"env", "UCX_NET_DEVICES=" + net.here()},
      {"ip", "netns", "exec", net.ns(), "env", "UCX_NET_DEVICES=" + net.there()}};
  MP_ASSERT_OK_AND_ASSIGN(std::unique_ptr<Cluster> cluster, Cluster::Start(options));
  MP_ASSERT_OK(cluster->WaitReady(2, absl::Seconds(60)));

  MP_ASSERT_OK_AND_ASSIGN(std::unique_ptr<SafetensorsFile> expected,
                          SafetensorsFile::Open(dir + "/expected.safetensors"));
  MP_ASSERT_OK_AND_ASSIGN(Tensor ids, expected->Get("input_ids"));
  MP_ASSERT_OK_AND_ASSIGN(Tensor logits, expected->Get("logits"));
  MP_ASSERT_OK_AND_ASSIGN(Tensor greedy, expected->Get("greedy_ids"));
  const std::vector<int32_t> prompt(ids.data_as<int32_t>(), ids.data_as<int32_t>() + ids.numel());
  const std::vector<int32_t> want(greedy.data_as<int32_t>(),
                                  greedy.data_as<int32_t>() + greedy.numel());
  v1::GenerateRequest request = TokenRequest(prompt, static_cast<int>(want.size()));
  request.set_return_logits(true);
  GenerateResult result = RunGenerate(cluster->stub(), request);
  ASSERT_TRUE(result.status.ok()) << result.status.error_message() << "\n" << cluster->Logs();
  EXPECT_EQ(result.tokens, want);
  ASSERT_FALSE(result.logits.empty());
  const int64_t vocab = logits.dim(1);
  const float* last = logits.data_as<const float>() + (logits.dim(0) - 1) * vocab;
  double max_diff = 0, max_ref = 0;
  for (int64_t j = 0; j < vocab; ++j) {
    max_diff = std::max(max_diff, std::abs(static_cast<double>(result.logits[0][j]) - last[j]));
    max_ref = std::max(max_ref, std::abs(static_cast<double>(last[j])));
  }
  EXPECT_LE(max_diff / max_ref, 1e-4);

  // Stage 1 serves from the other namespace, which holds only its loopback and the veth end:
  // the activations it computed on can only have come over the veth.
  MP_ASSERT_OK_AND_ASSIGN(v1::ListWorkersResponse list, cluster->ListWorkers());
  bool found = false;
  for (const v1::WorkerInfo& w : list.workers()) {
    if (w.stage() != 1) continue;
    EXPECT_EQ(w.address().rfind(net.there_ip(), 0), 0u) << w.address();
    found = true;
  }
  EXPECT_TRUE(found) << list.DebugString();
}

// `millipede local` on tiny_llama (2 stages over UCX tcp) started while a veth pair exists.
class LocalNetnsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string error;
    ASSERT_TRUE(net_.Create(&error)) << error;
    MP_ASSERT_OK_AND_ASSIGN(std::unique_ptr<SafetensorsFile> f,
                            SafetensorsFile::Open(dir_ + "/expected.safetensors"));
    MP_ASSERT_OK_AND_ASSIGN(Tensor ids, f->Get("input_ids"));
    MP_ASSERT_OK_AND_ASSIGN(Tensor greedy, f->Get("greedy_ids"));
    prompt_.assign(ids.data_as<int32_t>(), ids.data_as<int32_t>() + ids.numel());
    want_.assign(greedy.data_as<int32_t>(), greedy.data_as<int32_t>() + greedy.numel());
  }

  void TearDown() override {
    local_.Signal(SIGINT);  // stops the coordinator and the workers too
    local_.Wait(absl::Seconds(30));
  }

  // Starts the cluster with `extra` arguments and waits until it is ready.
  absl::Status StartLocal(const std::vector<std::string>& extra) {
    std::vector<std::string> argv = {
        MillipedeBin(), "local",       "--model",          dir_,          "--stages",     "2",
        "--listen",     "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0", "--chunk-mode", "fixed",
        "--max-chunk",  "32",          "--ucx-transports", "tcp"};
    argv.insert(argv.end(), extra.begin(), extra.end());
    MP_ASSIGN_OR_RETURN(local_, Process::Start(argv, temp_.path() + "/local.log"));
    MP_ASSIGN_OR_RETURN(std::string address, local_.WaitForToken("ready at ", absl::Seconds(120)));
    stub_ = v1::Coordinator::NewStub(MakeChannel(address));
    return absl::OkStatus();
  }

  GenerateResult Generate() {
    return RunGenerate(*stub_, TokenRequest(prompt_, static_cast<int>(want_.size())));
  }

  const std::string dir_ = TestdataDir() + "/tiny_llama";
  VethNamespace net_;
  TempDir temp_;
  std::vector<int32_t> prompt_, want_;  // the fixture's prompt and transformers' greedy tokens
  Process local_;
  std::unique_ptr<v1::Coordinator::Stub> stub_;
};

TEST_F(LocalNetnsTest, LocalClustersKeepToLoopbackWhileAnInterfaceVanishes) {
  MP_ASSERT_OK(StartLocal({}));
  net_.Destroy();
  GenerateResult result = Generate();
  ASSERT_TRUE(result.status.ok()) << result.status.error_message() << "\n" << local_.Log();
  EXPECT_EQ(result.tokens, want_);
  const std::vector<std::string> lanes = UcxLinkLanes(local_.Log());
  EXPECT_EQ(lanes.size(), 2u) << local_.Log();
  for (const std::string& l : lanes) EXPECT_EQ(l, "tcp/lo") << local_.Log();
}

TEST_F(LocalNetnsTest, ALinkOverAVanishedInterfaceFailsItsRequestWithinTheStallBound) {
  MP_ASSERT_OK(StartLocal({"--ucx-net-devices", "all", "--coordinator-arg=--stall-timeout=2"}));
  // UCX prefers the veth (10 Gb/s) to loopback and eth0; this test is about that link.
  const std::vector<std::string> lanes = UcxLinkLanes(local_.Log());
  ASSERT_EQ(lanes.size(), 2u) << local_.Log();
  for (const std::string& l : lanes) {
    ASSERT_EQ(l, "tcp/" + net_.here())
        << "UCX did not choose the veth; the premise of this test does not hold:\n"
        << local_.Log();
  }
  net_.Destroy();
  GenerateResult lost = Generate();
  EXPECT_EQ(lost.status.error_code(), grpc::StatusCode::UNAVAILABLE)
      << lost.status.error_message() << "\n"
      << local_.Log();
  EXPECT_TRUE(absl::StrContains(lost.status.error_message(), "pipeline stage 1"))
      << lost.status.error_message();
  EXPECT_TRUE(absl::StrContains(lost.status.error_message(), "no progress on step 1"))
      << lost.status.error_message();
  EXPECT_LT(lost.seconds, 60) << "the stalled request took " << lost.seconds << " s to fail";
  // The pipeline is rebuilt on fresh links (over the interfaces that remain).
  GenerateResult next = Generate();
  ASSERT_TRUE(next.status.ok()) << next.status.error_message() << "\n" << local_.Log();
  EXPECT_EQ(next.tokens, want_);
}

}  // namespace
}  // namespace mp::testing
