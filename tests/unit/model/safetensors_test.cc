#include "model/safetensors.h"

#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>
#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "tests/unit/model/test_util.h"

namespace mp {
namespace {

using Json = nlohmann::json;
using absl::StatusCode;
using testing::ReadBytes;
using testing::TensorBytes;
using testing::WriteBytes;

constexpr DType kAllDTypes[] = {DType::kF32, DType::kF16, DType::kBF16,
                                DType::kI32, DType::kI64, DType::kU8};

std::string U64Le(uint64_t v) {
  std::string s(8, '\0');
  for (int i = 0; i < 8; ++i) s[i] = static_cast<char>(v >> (8 * i));
  return s;
}

// A safetensors file assembled by hand: length prefix, header text as given, data bytes.
std::string RawFile(const std::string& header, const std::string& data) {
  return U64Le(header.size()) + header + data;
}

class SafetensorsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = testing::ScratchDir(::testing::UnitTest::GetInstance()->current_test_info()->name());
  }
  std::string Path(const std::string& name) const { return dir_ + "/" + name; }

  // Writes `bytes` to a file and expects Open to fail with `code` naming the file and `words`.
  void ExpectOpenFails(const std::string& bytes, StatusCode code,
                       std::initializer_list<std::string> words) {
    const std::string path = Path("bad.safetensors");
    WriteBytes(path, bytes);
    absl::StatusOr<std::unique_ptr<SafetensorsFile>> file = SafetensorsFile::Open(path);
    ASSERT_FALSE(file.ok()) << "opened a corrupt file: " << bytes.substr(8, 200);
    testing::ExpectStatus(file.status(), code, words);
    EXPECT_NE(file.status().message().find(path), absl::string_view::npos) << file.status();
  }

  std::string dir_;
};

TEST_F(SafetensorsTest, RoundTripOfRandomTensorsOfEveryDType) {
  std::mt19937_64 rng(7);
  for (int iter = 0; iter < 40; ++iter) {
    std::vector<SafetensorsEntry> entries;
    const int n = 1 + static_cast<int>(rng() % 8);
    for (int i = 0; i < n; ++i) {
      std::vector<int64_t> shape(rng() % 5);                         // rank 0 (scalar) to 4
      for (int64_t& d : shape) d = static_cast<int64_t>(rng() % 7);  // zero-size dims included
      DType dtype = kAllDTypes[rng() % 6];
      entries.push_back(
          {"t" + std::to_string(i) + ".weight", testing::RandomBytesTensor(shape, dtype, rng)});
    }
    std::map<std::string, std::string> metadata;
    if (iter % 2 == 0) metadata = {{"format", "pt"}, {"iter", std::to_string(iter)}};
    const std::string path = Path("roundtrip.safetensors");
    MP_ASSERT_OK(WriteSafetensors(path, entries, metadata));

    MP_ASSERT_OK_AND_ASSIGN(std::unique_ptr<SafetensorsFile> file, SafetensorsFile::Open(path));
    EXPECT_EQ(file->path(), path);
    EXPECT_EQ(file->metadata(), metadata);
    std::vector<std::string> names = file->TensorNames();
    ASSERT_EQ(names.size(), entries.size());
    for (const SafetensorsEntry& e : entries) {
      SCOPED_TRACE(e.name);
      ASSERT_TRUE(file->Has(e.name));
      MP_ASSERT_OK_AND_ASSIGN(Tensor t, file->Get(e.name));
      EXPECT_EQ(t.dtype(), e.tensor.dtype());
      EXPECT_EQ(t.shape(), e.tensor.shape());
      EXPECT_EQ(t.device(), DeviceKind::kCpu);
      EXPECT_EQ(TensorBytes(t), TensorBytes(e.tensor));
    }
    EXPECT_FALSE(file->Has("t99.weight"));
  }
}

// Checks the writer's output against the format description directly, without the reader.
TEST_F(SafetensorsTest, WriterFollowsTheFormat) {
  std::mt19937_64 rng(11);
  std::vector<SafetensorsEntry> entries = {
      {"b", testing::RandomBytesTensor({3}, DType::kU8, rng)},
      {"a", testing::RandomBytesTensor({2, 5}, DType::kBF16, rng)},
      {"z", testing::RandomBytesTensor({4, 1}, DType::kI64, rng)},
      {"e", testing::RandomBytesTensor({0, 3}, DType::kF32, rng)},
  };
  const std::string path = Path("layout.safetensors");
  MP_ASSERT_OK(WriteSafetensors(path, entries, {{"k", "v"}}));
  const std::string bytes = ReadBytes(path);
  ASSERT_GE(bytes.size(), 8u);
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | static_cast<uint8_t>(bytes[i]);
  EXPECT_EQ((8 + n) % 8, 0u);
  ASSERT_LE(8 + n, bytes.size());
  const std::string header = bytes.substr(8, n);
  const Json j = Json::parse(header);  // trailing padding must be plain spaces
  EXPECT_EQ(j["__metadata__"], Json({{"k", "v"}}));
  uint64_t offset = 0;
  for (const SafetensorsEntry& e : entries) {
    SCOPED_TRACE(e.name);
    const Json& info = j.at(e.name);
    EXPECT_EQ(info["dtype"].get<std::string>(), SafetensorsDTypeName(e.tensor.dtype()));
    EXPECT_EQ(info["shape"].get<std::vector<int64_t>>(), e.tensor.shape());
    const auto offsets = info["data_offsets"].get<std::vector<uint64_t>>();
    ASSERT_EQ(offsets.size(), 2u);
    EXPECT_EQ(offsets[0], offset);  // the given order, no gaps
    EXPECT_EQ(offsets[1] - offsets[0], e.tensor.nbytes());
    EXPECT_EQ(bytes.substr(8 + n + offsets[0], e.tensor.nbytes()), TensorBytes(e.tensor));
    offset = offsets[1];
  }
  EXPECT_EQ(8 + n + offset, bytes.size());
  EXPECT_EQ(std::string(SafetensorsDTypeName(DType::kBF16)), "BF16");
  EXPECT_EQ(std::string(SafetensorsDTypeName(DType::kI32)), "I32");
}

TEST_F(SafetensorsTest, ReadsAHandBuiltFile) {
  const float a[6] = {1.5f, -2.0f, 0.25f, 3.0e-8f, -0.0f, 65504.0f};
  const int64_t b[2] = {-7, int64_t{1} << 40};
  std::string data(reinterpret_cast<const char*>(a), sizeof(a));
  data.append(reinterpret_cast<const char*>(b), sizeof(b));
  // Header length 105: not a multiple of 8, no padding; keys in any order.
  const std::string header = R"({"b":{"shape":[2],"dtype":"I64","data_offsets":[24,40]},)"
                             R"("a":{"dtype":"F32","shape":[2,3],"data_offsets":[0,24]}})";
  const std::string path = Path("hand.safetensors");
  WriteBytes(path, RawFile(header, data));
  MP_ASSERT_OK_AND_ASSIGN(std::unique_ptr<SafetensorsFile> file, SafetensorsFile::Open(path));
  EXPECT_TRUE(file->metadata().empty());
  MP_ASSERT_OK_AND_ASSIGN(Tensor ta, file->Get("a"));
  EXPECT_EQ(ta.shape(), (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(ta.dtype(), DType::kF32);
  EXPECT_EQ(std::memcmp(ta.data(), a, sizeof(a)), 0);
  MP_ASSERT_OK_AND_ASSIGN(Tensor tb, file->Get("b"));
  EXPECT_EQ(tb.dtype(), DType::kI64);
  EXPECT_EQ(tb.data_as<int64_t>()[0], -7);
  EXPECT_EQ(tb.data_as<int64_t>()[1], int64_t{1} << 40);
}

TEST_F(SafetensorsTest, MisalignedTensorIsCopiedToAlignedMemory) {
  const uint8_t u[3] = {9, 8, 7};
  const float f[2] = {3.25f, -1.0f};
  std::string data(reinterpret_cast<const char*>(u), 3);
  data.append(reinterpret_cast<const char*>(f), 8);
  std::string header = R"({"u":{"dtype":"U8","shape":[3],"data_offsets":[0,3]},)"
                       R"("f":{"dtype":"F32","shape":[2],"data_offsets":[3,11]}})";
  header.append((8 - header.size() % 8) % 8, ' ');  // data starts 8-aligned, "f" at +3
  const std::string path = Path("misaligned.safetensors");
  WriteBytes(path, RawFile(header, data));
  MP_ASSERT_OK_AND_ASSIGN(std::unique_ptr<SafetensorsFile> file, SafetensorsFile::Open(path));
  MP_ASSERT_OK_AND_ASSIGN(Tensor tf, file->Get("f"));
  EXPECT_EQ(reinterpret_cast<uintptr_t>(tf.data()) % alignof(float), 0u);
  EXPECT_EQ(tf.data_as<float>()[0], 3.25f);
  EXPECT_EQ(tf.data_as<float>()[1], -1.0f);
  MP_ASSERT_OK_AND_ASSIGN(Tensor tu, file->Get("u"));
  EXPECT_EQ(TensorBytes(tu), std::string("\x09\x08\x07", 3));
}

TEST_F(SafetensorsTest, ViewOutlivesTheFileObject) {
  std::mt19937_64 rng(3);
  Tensor src = testing::RandomBytesTensor({64, 32}, DType::kF32, rng);
  const std::string path = Path("alive.safetensors");
  MP_ASSERT_OK(WriteSafetensors(path, std::vector<SafetensorsEntry>{{"w", src}}));
  Tensor view;
  {
    MP_ASSERT_OK_AND_ASSIGN(std::unique_ptr<SafetensorsFile> file, SafetensorsFile::Open(path));
    MP_ASSERT_OK_AND_ASSIGN(view, file->Get("w"));
  }
  std::filesystem::remove(path);  // the mapping stays valid after unlink, too
  EXPECT_EQ(TensorBytes(view), TensorBytes(src));
}

TEST_F(SafetensorsTest, MissingFileAndTensor) {
  const std::string missing = Path("nope.safetensors");
  EXPECT_STATUS(SafetensorsFile::Open(missing), StatusCode::kNotFound, missing);
  EXPECT_STATUS(SafetensorsFile::Open(dir_), StatusCode::kInvalidArgument, dir_,
                "not a regular file");
  const std::string path = Path("one.safetensors");
  std::mt19937_64 rng(5);
  MP_ASSERT_OK(WriteSafetensors(
      path,
      std::vector<SafetensorsEntry>{{"x", testing::RandomBytesTensor({2}, DType::kF16, rng)}}));
  MP_ASSERT_OK_AND_ASSIGN(std::unique_ptr<SafetensorsFile> file, SafetensorsFile::Open(path));
  EXPECT_STATUS(file->Get("y"), StatusCode::kNotFound, "'y'", path);
}

TEST_F(SafetensorsTest, RejectsCorruptHeaders) {
  const StatusCode kInvalid = StatusCode::kInvalidArgument;
  const std::string data16(16, '\x01');
  auto one = [](const std::string& body) { return "{\"t\":" + body + "}"; };

  ExpectOpenFails("", kInvalid, {"too short"});
  ExpectOpenFails(std::string("\x05\x00\x00", 3), kInvalid, {"too short"});
  ExpectOpenFails(U64Le(1000) + "{}", kInvalid, {"header length 1000", "larger than the file"});
  ExpectOpenFails(U64Le(~uint64_t{0}) + "{}", kInvalid, {"larger than the file"});
  ExpectOpenFails(RawFile("{\"t\": {", ""), kInvalid, {"not valid JSON"});
  ExpectOpenFails(RawFile("[1, 2]", ""), kInvalid, {"JSON object"});
  ExpectOpenFails(RawFile("17", ""), kInvalid, {"JSON object"});
  ExpectOpenFails(RawFile(one("[1]"), ""), kInvalid, {"'t'", "object"});
  ExpectOpenFails(RawFile(one(R"({"dtype":"F64","shape":[2],"data_offsets":[0,16]})"), data16),
                  kInvalid, {"'t'", "unsupported dtype 'F64'"});
  ExpectOpenFails(RawFile(one(R"({"shape":[4],"data_offsets":[0,16]})"), data16), kInvalid,
                  {"'t'", "dtype"});
  ExpectOpenFails(RawFile(one(R"({"dtype":"F32","shape":[3],"data_offsets":[0,16]})"), data16),
                  kInvalid, {"'t'", "needs 12 bytes", "[0, 16]"});
  ExpectOpenFails(RawFile(one(R"({"dtype":"F32","shape":[-4],"data_offsets":[0,16]})"), data16),
                  kInvalid, {"'t'", "non-negative"});
  ExpectOpenFails(RawFile(one(R"({"dtype":"F32","shape":"4","data_offsets":[0,16]})"), data16),
                  kInvalid, {"'t'", "shape"});
  ExpectOpenFails(
      RawFile(one(R"({"dtype":"U8","shape":[1099511627776,1099511627776],"data_offsets":[0,16]})"),
              data16),
      kInvalid, {"'t'", "overflows"});
  ExpectOpenFails(RawFile(one(R"({"dtype":"F32","shape":[4],"data_offsets":[0,16,32]})"), data16),
                  kInvalid, {"'t'", "data_offsets"});
  ExpectOpenFails(RawFile(one(R"({"dtype":"F32","shape":[4],"data_offsets":[-16,0]})"), data16),
                  kInvalid, {"'t'", "data_offsets"});
  ExpectOpenFails(RawFile(one(R"({"dtype":"F32","shape":[0],"data_offsets":[16,0]})"), data16),
                  kInvalid, {"'t'", "begin > end"});
  // Offsets out of range: consistent with the shape but past the end of the data.
  ExpectOpenFails(RawFile(one(R"({"dtype":"F32","shape":[4],"data_offsets":[8,24]})"), data16),
                  kInvalid, {"'t'", "[8, 24]", "past the end"});
  ExpectOpenFails(RawFile(one(R"({"dtype":"F32","shape":[250],"data_offsets":[0,1000]})"), data16),
                  kInvalid, {"'t'", "past the end"});
  ExpectOpenFails(RawFile(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                          R"("b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
                          data16),
                  kInvalid, {"'a'", "'b'", "overlap"});
  ExpectOpenFails(RawFile(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                          R"("a":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}})",
                          data16),
                  kInvalid, {"duplicate tensor name 'a'"});
  ExpectOpenFails(
      RawFile(one(R"({"dtype":"F32","dtype":"F16","shape":[4],"data_offsets":[0,16]})"), data16),
      kInvalid, {"duplicate key 'dtype'"});
  ExpectOpenFails(RawFile(R"({"__metadata__":{"format":7}})", ""), kInvalid,
                  {"__metadata__", "format"});
  ExpectOpenFails(RawFile(R"({"__metadata__":[]})", ""), kInvalid, {"__metadata__"});
}

TEST_F(SafetensorsTest, RejectsTruncatedData) {
  std::mt19937_64 rng(13);
  const std::string path = Path("full.safetensors");
  MP_ASSERT_OK(
      WriteSafetensors(path, std::vector<SafetensorsEntry>{
                                 {"first", testing::RandomBytesTensor({8, 8}, DType::kF32, rng)},
                                 {"last", testing::RandomBytesTensor({16}, DType::kBF16, rng)}}));
  const std::string bytes = ReadBytes(path);
  ExpectOpenFails(bytes.substr(0, bytes.size() - 1), StatusCode::kInvalidArgument,
                  {"'last'", "truncated"});
  ExpectOpenFails(bytes.substr(0, bytes.size() - 40), StatusCode::kInvalidArgument, {"truncated"});
  ExpectOpenFails(bytes.substr(0, 20), StatusCode::kInvalidArgument, {"larger than the file"});
}

TEST_F(SafetensorsTest, ZeroSizedTensorsMayShareAnOffset) {
  const std::string header = R"({"e1":{"dtype":"F32","shape":[0],"data_offsets":[4,4]},)"
                             R"("e2":{"dtype":"I64","shape":[3,0],"data_offsets":[4,4]},)"
                             R"("x":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})";
  const std::string path = Path("empty.safetensors");
  WriteBytes(path, RawFile(header, std::string(8, '\0')));
  MP_ASSERT_OK_AND_ASSIGN(std::unique_ptr<SafetensorsFile> file, SafetensorsFile::Open(path));
  MP_ASSERT_OK_AND_ASSIGN(Tensor e2, file->Get("e2"));
  EXPECT_EQ(e2.numel(), 0);
  EXPECT_EQ(e2.shape(), (std::vector<int64_t>{3, 0}));
}

TEST_F(SafetensorsTest, WriterRejectsBadInput) {
  std::mt19937_64 rng(17);
  Tensor t = testing::RandomBytesTensor({4}, DType::kF32, rng);
  const std::string path = Path("w.safetensors");
  EXPECT_STATUS(WriteSafetensors(path, std::vector<SafetensorsEntry>{{"a", t}, {"a", t}}),
                StatusCode::kInvalidArgument, "duplicate", "'a'", path);
  EXPECT_STATUS(WriteSafetensors(path, std::vector<SafetensorsEntry>{{"", t}}),
                StatusCode::kInvalidArgument, "name");
  EXPECT_STATUS(WriteSafetensors(path, std::vector<SafetensorsEntry>{{"__metadata__", t}}),
                StatusCode::kInvalidArgument, "__metadata__");
  Tensor on_gpu = Tensor::Wrap(t.data(), {4}, DType::kF32, DeviceKind::kCuda);
  EXPECT_STATUS(WriteSafetensors(path, std::vector<SafetensorsEntry>{{"g", on_gpu}}),
                StatusCode::kInvalidArgument, "'g'", "cuda");
  EXPECT_STATUS(WriteSafetensors(path, std::vector<SafetensorsEntry>{{"u", Tensor()}}),
                StatusCode::kInvalidArgument, "'u'", "no data");
  const std::string no_dir = Path("missing_dir/w.safetensors");
  EXPECT_STATUS(WriteSafetensors(no_dir, std::vector<SafetensorsEntry>{{"a", t}}),
                StatusCode::kNotFound, no_dir);
  EXPECT_FALSE(std::filesystem::exists(path));  // nothing half-written is left behind
  // An empty file (no tensors, no metadata) is valid.
  MP_ASSERT_OK(WriteSafetensors(path, {}));
  MP_ASSERT_OK_AND_ASSIGN(std::unique_ptr<SafetensorsFile> file, SafetensorsFile::Open(path));
  EXPECT_TRUE(file->TensorNames().empty());
}

// Random corruption of a valid file never crashes the reader; whatever it accepts lies inside
// the file.
TEST_F(SafetensorsTest, SurvivesRandomCorruption) {
  std::mt19937_64 rng(19);
  const std::string path = Path("base.safetensors");
  MP_ASSERT_OK(
      WriteSafetensors(path,
                       std::vector<SafetensorsEntry>{
                           {"alpha", testing::RandomBytesTensor({5, 3}, DType::kF32, rng)},
                           {"beta", testing::RandomBytesTensor({7}, DType::kI64, rng)},
                           {"gamma", testing::RandomBytesTensor({2, 2, 2}, DType::kBF16, rng)}},
                       {{"format", "pt"}}));
  const std::string base = ReadBytes(path);
  const char kAlphabet[] = "{}[]\",:0123456789-eE .FIUBabdfghlmnoprstuxz\\\x01\xff";
  int accepted = 0;
  for (int iter = 0; iter < 400; ++iter) {
    std::string bytes = base;
    const int edits = 1 + static_cast<int>(rng() % 4);
    for (int e = 0; e < edits; ++e) {
      const size_t pos = rng() % bytes.size();
      bytes[pos] = kAlphabet[rng() % (sizeof(kAlphabet) - 1)];
    }
    if (rng() % 5 == 0) bytes.resize(rng() % bytes.size());
    const std::string corrupt = Path("corrupt.safetensors");
    WriteBytes(corrupt, bytes);
    absl::StatusOr<std::unique_ptr<SafetensorsFile>> file = SafetensorsFile::Open(corrupt);
    if (!file.ok()) {
      EXPECT_NE(file.status().message().find(corrupt), absl::string_view::npos) << file.status();
      continue;
    }
    ++accepted;
    for (const std::string& name : (*file)->TensorNames()) {
      MP_ASSERT_OK_AND_ASSIGN(Tensor t, (*file)->Get(name));
      EXPECT_LE(t.nbytes(), bytes.size());
      // Touch every byte: a view past the mapping would fault here.
      uint64_t sum = 0;
      for (size_t i = 0; i < t.nbytes(); ++i) sum += static_cast<const uint8_t*>(t.data())[i];
      volatile uint64_t sink = sum;
      (void)sink;
    }
  }
  EXPECT_GT(accepted, 0);  // edits in tensor data leave the file valid
}

}  // namespace
}  // namespace mp
