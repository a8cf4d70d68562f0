#include "kvtransfer/descriptor.h"

#include <gtest/gtest.h>

#include <random>

#include "common/status.h"
#include "common/status_matchers.h"
#include "tests/unit/kvtransfer/transfer_test_util.h"

namespace mp::kvtransfer {
namespace {

EndpointDescriptor RandomDescriptor(std::mt19937_64& rng) {
  EndpointDescriptor d;
  d.kind = "ucx";
  d.instance_id = rng() | 1;
  d.pid = static_cast<uint32_t>(rng());
  d.host = "host-" + std::to_string(rng() % 1000);
  d.payload.resize(rng() % 600);
  for (char& c : d.payload) c = static_cast<char>(rng());
  return d;
}

TEST(DescriptorTest, RoundTripsRandomDescriptors) {
  std::mt19937_64 rng(1);
  for (int i = 0; i < 200; ++i) {
    const EndpointDescriptor d = RandomDescriptor(rng);
    MP_ASSERT_OK_AND_ASSIGN(EndpointDescriptor back, DecodeDescriptor(EncodeDescriptor(d), "ucx"));
    EXPECT_EQ(back.kind, d.kind);
    EXPECT_EQ(back.instance_id, d.instance_id);
    EXPECT_EQ(back.pid, d.pid);
    EXPECT_EQ(back.host, d.host);
    EXPECT_EQ(back.payload, d.payload);
  }
}

TEST(DescriptorTest, EveryTruncationAndEveryByteFlipIsInvalidArgument) {
  std::mt19937_64 rng(2);
  const std::string blob = EncodeDescriptor(RandomDescriptor(rng));
  for (size_t n = 0; n < blob.size(); ++n) {
    EXPECT_EQ(DecodeDescriptor(blob.substr(0, n), "ucx").status().code(),
              absl::StatusCode::kInvalidArgument)
        << "prefix of " << n << " bytes";
  }
  for (size_t i = 0; i < blob.size(); ++i) {
    for (int bit = 0; bit < 8; ++bit) {
      std::string bad = blob;
      bad[i] ^= static_cast<char>(1 << bit);
      EXPECT_EQ(DecodeDescriptor(bad, "ucx").status().code(), absl::StatusCode::kInvalidArgument)
          << "byte " << i << " bit " << bit;
    }
  }
  // Trailing garbage.
  EXPECT_EQ(DecodeDescriptor(blob + "x", "ucx").status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(DescriptorTest, RandomBlobsNeverCrash) {
  std::mt19937_64 rng(3);
  for (int i = 0; i < 2000; ++i) {
    std::string blob(rng() % 128, '\0');
    for (char& c : blob) c = static_cast<char>(rng());
    if (i % 2 == 0 && blob.size() >= 4) blob.replace(0, 4, "MPKV");
    EXPECT_FALSE(DecodeDescriptor(blob, "ucx").ok());
  }
}

TEST(DescriptorTest, ErrorsNameTheProblem) {
  EndpointDescriptor d;
  d.kind = "local";
  d.instance_id = 5;
  const std::string blob = EncodeDescriptor(d);
  KV_EXPECT_ERROR(DecodeDescriptor(blob, "ucx"), absl::StatusCode::kInvalidArgument,
                  "for a 'local' transport, this transport is 'ucx'");
  KV_EXPECT_ERROR(DecodeDescriptor("abc", "ucx"), absl::StatusCode::kInvalidArgument,
                  "shorter than the minimum");
  KV_EXPECT_ERROR(DecodeDescriptor(std::string(40, 'q'), "ucx"), absl::StatusCode::kInvalidArgument,
                  "MPKV");
  std::string future = blob;
  future[4] = 9;
  KV_EXPECT_ERROR(DecodeDescriptor(future, "local"), absl::StatusCode::kInvalidArgument,
                  "version 9");
  std::string flipped = blob;
  flipped[10] ^= 1;
  KV_EXPECT_ERROR(DecodeDescriptor(flipped, "local"), absl::StatusCode::kInvalidArgument,
                  "checksum");
  d.instance_id = 0;
  KV_EXPECT_ERROR(DecodeDescriptor(EncodeDescriptor(d), "local"),
                  absl::StatusCode::kInvalidArgument, "instance id 0");
}

TEST(DescriptorTest, InstanceIdsAreDistinctAndNonZero) {
  std::set<uint64_t> seen;
  for (int i = 0; i < 10000; ++i) {
    const uint64_t id = NewInstanceId();
    EXPECT_NE(id, 0u);
    EXPECT_TRUE(seen.insert(id).second);
  }
}

}  // namespace
}  // namespace mp::kvtransfer
