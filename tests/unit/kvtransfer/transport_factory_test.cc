#include "kvtransfer/transport_factory.h"

#include <gtest/gtest.h>

#include <algorithm>

#include "common/status.h"
#include "common/status_matchers.h"
#include "tests/unit/kvtransfer/transfer_test_util.h"

namespace mp::kvtransfer {
namespace {

bool Has(const std::vector<std::string>& v, const std::string& s) {
  return std::find(v.begin(), v.end(), s) != v.end();
}

TEST(TransportFactoryTest, CreatesEveryAvailableKind) {
  const std::vector<std::string> kinds = AvailableTransports();
  ASSERT_TRUE(Has(kinds, "local"));
  for (const std::string& kind : kinds) {
    if (kind == "nccl") continue;  // needs a GPU; covered by the gpu tests
    MP_ASSERT_OK_AND_ASSIGN(auto t, NewTransport(kind));
    EXPECT_EQ(t->kind(), kind);
    MP_ASSERT_OK_AND_ASSIGN(std::string d, t->LocalEndpoint());
    EXPECT_FALSE(d.empty());
  }
}

TEST(TransportFactoryTest, UnknownKindIsInvalidArgument) {
  KV_EXPECT_ERROR(NewTransport("rdma"), absl::StatusCode::kInvalidArgument,
                  "unknown transport kind 'rdma'");
  KV_EXPECT_ERROR(NewTransport(""), absl::StatusCode::kInvalidArgument, "local, ucx, nccl");
  KV_EXPECT_ERROR(NewTransport("UCX"), absl::StatusCode::kInvalidArgument, "'UCX'");
}

TEST(TransportFactoryTest, BackendsLeftOutOfTheBuildAreUnimplemented) {
  const std::vector<std::string> kinds = AvailableTransports();
  for (const std::string kind : {"ucx", "nccl"}) {
    if (Has(kinds, kind)) continue;
    KV_EXPECT_ERROR(NewTransport(kind), absl::StatusCode::kUnimplemented,
                    "not compiled into this build");
  }
#if !defined(MP_KVTRANSFER_HAVE_NCCL)
  EXPECT_FALSE(Has(kinds, "nccl"));
#endif
#if defined(MP_KVTRANSFER_HAVE_UCX)
  EXPECT_TRUE(Has(kinds, "ucx"));
#endif
}

#if defined(MP_KVTRANSFER_HAVE_UCX)
TEST(TransportFactoryTest, BadUcxSettingIsInvalidArgument) {
  TransportOptions options;
  options.ucx_config = {{"RNDV_THRESH", "not-a-size"}};
  KV_EXPECT_ERROR(NewTransport("ucx", options), absl::StatusCode::kInvalidArgument,
                  "UCX_RNDV_THRESH=not-a-size");
}

TEST(TransportFactoryTest, UnusableUcxTransportsAreFailedPrecondition) {
  TransportOptions options;
  options.ucx_transports = "no_such_tl";
  KV_EXPECT_ERROR(NewTransport("ucx", options), absl::StatusCode::kFailedPrecondition,
                  "UCX_TLS='no_such_tl'");
}
#endif

}  // namespace
}  // namespace mp::kvtransfer
