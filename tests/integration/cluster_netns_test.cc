// A two-stage cluster whose stages live in two network namespaces joined by a veth pair: the
// coordinator and stage 0 in this test's namespace, stage 1 in a fresh one, UCX restricted to
// TCP over the veth devices. The activations must cross that link, and the results must equal
// what Hugging Face transformers computed for the fixture.
//
// Needs root (or CAP_SYS_ADMIN + CAP_NET_ADMIN) and iproute2. Where namespaces cannot be
// created the test FAILS and says why; it carries the ctest label "netns".
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>

#include "absl/strings/str_cat.h"
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
  ~VethNamespace() {
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

}  // namespace
}  // namespace mp::testing
