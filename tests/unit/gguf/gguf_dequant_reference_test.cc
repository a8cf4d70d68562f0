// Dequantization against PyPI gguf: make_dequant_reference.py writes a GGUF and the values
// gguf.quants.dequantize gives for each tensor; every value must match bit for bit (NaN matches
// any NaN: the two decoders may keep different NaN payloads). Exact equality is the right bar:
// each dequantized value is a product that is exact in f32 plus at most one rounded addition,
// evaluated the same way by both.
#include <gtest/gtest.h>

#include <bit>
#include <cmath>
#include <cstdlib>
#include <fstream>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "model/gguf_dequant.h"
#include "model/gguf_reader.h"
#include "nlohmann/json.hpp"
#include "tests/unit/gguf/gguf_test_util.h"

namespace mp {
namespace {

TEST(GgufDequantReferenceTest, MatchesPyPiGgufBitForBit) {
  const char* dir = std::getenv("MP_GGUF_DEQUANT_REF");
  ASSERT_NE(dir, nullptr) << "MP_GGUF_DEQUANT_REF must name the output of "
                             "make_dequant_reference.py";
  std::ifstream index_file(std::string(dir) + "/index.json");
  ASSERT_TRUE(index_file) << dir << "/index.json is missing";
  std::stringstream text;
  text << index_file.rdbuf();
  const nlohmann::json index = nlohmann::json::parse(text.str());

  MP_ASSERT_OK_AND_ASSIGN(auto file, GgufFile::Open(std::string(dir) + "/dequant.gguf"));
  ASSERT_EQ(file->tensors().size(), index["tensors"].size());
  std::set<std::string> types;
  int64_t values = 0;
  for (const nlohmann::json& entry : index["tensors"]) {
    const std::string name = entry["name"];
    SCOPED_TRACE(name);
    const GgufTensorInfo* info = file->FindTensor(name);
    ASSERT_NE(info, nullptr);
    EXPECT_EQ(GgmlTypeName(info->type), entry["type"].get<std::string>());
    types.insert(GgmlTypeName(info->type));
    MP_ASSERT_OK_AND_ASSIGN(Tensor got, DequantizeTensor(*file, *info));
    EXPECT_EQ(got.shape(), entry["shape"].get<std::vector<int64_t>>());

    std::ifstream ref_file(std::string(dir) + "/" + entry["file"].get<std::string>(),
                           std::ios::binary);
    std::vector<float> ref(static_cast<size_t>(got.numel()));
    ref_file.read(reinterpret_cast<char*>(ref.data()),
                  static_cast<std::streamsize>(ref.size() * sizeof(float)));
    ASSERT_EQ(ref_file.gcount(), static_cast<std::streamsize>(ref.size() * sizeof(float)));
    const float* g = got.data_as<float>();
    int64_t mismatches = 0;
    for (size_t i = 0; i < ref.size(); ++i) {
      const bool same = (std::isnan(g[i]) || std::isnan(ref[i]))
                            ? (std::isnan(g[i]) && std::isnan(ref[i]))
                            : std::bit_cast<uint32_t>(g[i]) == std::bit_cast<uint32_t>(ref[i]);
      if (!same && ++mismatches <= 5) {
        ADD_FAILURE() << "element " << i << ": got " << g[i] << ", gguf says " << ref[i];
      }
    }
    EXPECT_EQ(mismatches, 0);
    values += got.numel();
  }
  EXPECT_EQ(types, (std::set<std::string>{"F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1"}));
  EXPECT_GT(values, 100000);
}

}  // namespace
}  // namespace mp
