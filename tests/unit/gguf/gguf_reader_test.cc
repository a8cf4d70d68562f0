#include "model/gguf_reader.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "tests/unit/gguf/gguf_test_util.h"
#include "tests/unit/gguf/gguf_test_writer.h"

namespace mp {
namespace {

using ::mp::testing::GgufBuilder;

constexpr uint32_t kF32 = 0, kQ8_0 = 8, kQ4_1 = 3;

std::vector<uint8_t> RandomBytes(std::mt19937_64& rng, size_t n) {
  std::vector<uint8_t> v(n);
  for (auto& b : v) b = static_cast<uint8_t>(rng());
  return v;
}

absl::StatusOr<std::unique_ptr<GgufFile>> Parse(const std::vector<uint8_t>& bytes) {
  return GgufFile::FromBytes(bytes, "test.gguf");
}

// A file with metadata of every type and three tensors.
std::vector<uint8_t> SampleFile(uint32_t version = 3) {
  std::mt19937_64 rng(7);
  GgufBuilder b(version);
  b.AddScalar("u8", GgufBuilder::kU8, uint8_t{200});
  b.AddScalar("i8", GgufBuilder::kI8, int8_t{-100});
  b.AddScalar("u16", GgufBuilder::kU16, uint16_t{60000});
  b.AddScalar("i16", GgufBuilder::kI16, int16_t{-30000});
  b.AddU32("u32", 4000000000u);
  b.AddI32("i32", -2000000000);
  b.AddF32("f32", 1.5e-5f);
  b.AddBool("bool", true);
  b.AddString("str", "h\xC3\xA9llo");
  b.AddU64("u64", 1ull << 62);
  b.AddScalar("i64", GgufBuilder::kI64, int64_t{-(1ll << 60)});
  b.AddF64("f64", -2.25);
  b.AddStringArray("strs", {"a", "", "bc"});
  b.AddI32Array("ints", {1, -2, 3});
  // [[1, 2], [3]] as an array of arrays of uint16.
  std::vector<uint8_t> nested;
  GgufBuilder::Put(&nested, uint32_t{GgufBuilder::kArray});
  GgufBuilder::Put(&nested, uint64_t{2});
  GgufBuilder::Put(&nested, uint32_t{GgufBuilder::kU16});
  GgufBuilder::Put(&nested, uint64_t{2});
  GgufBuilder::Put(&nested, uint16_t{1});
  GgufBuilder::Put(&nested, uint16_t{2});
  GgufBuilder::Put(&nested, uint32_t{GgufBuilder::kU16});
  GgufBuilder::Put(&nested, uint64_t{1});
  GgufBuilder::Put(&nested, uint16_t{3});
  b.AddEncoded("nested", GgufBuilder::kArray, nested);
  b.AddTensor("a.weight", kF32, {3, 5}, RandomBytes(rng, 3 * 5 * 4));
  b.AddTensor("b.weight", kQ8_0, {64, 2}, RandomBytes(rng, 2 * 2 * 34));
  b.AddTensor("c.weight", kQ4_1, {32, 1, 2}, RandomBytes(rng, 2 * 20));
  return b.Build();
}

TEST(GgufReaderTest, ReadsEveryValueType) {
  const std::vector<uint8_t> bytes = SampleFile();
  MP_ASSERT_OK_AND_ASSIGN(auto f, Parse(bytes));
  EXPECT_EQ(f->version(), 3u);
  EXPECT_EQ(f->keys(),
            (std::vector<std::string>{"u8", "i8", "u16", "i16", "u32", "i32", "f32", "bool", "str",
                                      "u64", "i64", "f64", "strs", "ints", "nested"}));
  EXPECT_EQ(*f->GetInt("u8"), 200);
  EXPECT_EQ(*f->GetInt("i8"), -100);
  EXPECT_EQ(*f->GetInt("u16"), 60000);
  EXPECT_EQ(*f->GetInt("i16"), -30000);
  EXPECT_EQ(*f->GetInt("u32"), 4000000000ll);
  EXPECT_EQ(*f->GetInt("i32"), -2000000000);
  EXPECT_EQ(*f->GetInt("u64"), 1ll << 62);
  EXPECT_EQ(*f->GetInt("i64"), -(1ll << 60));
  EXPECT_EQ(*f->GetFloat("f32"), static_cast<double>(1.5e-5f));
  EXPECT_EQ(*f->GetFloat("f64"), -2.25);
  EXPECT_EQ(*f->GetFloat("u32"), 4e9);  // integers widen to numbers
  EXPECT_EQ(*f->GetBool("bool"), true);
  EXPECT_EQ(*f->GetString("str"), "h\xC3\xA9llo");
  MP_ASSERT_OK_AND_ASSIGN(auto strs, f->GetStringArray("strs"));
  EXPECT_EQ(strs, (std::vector<std::string_view>{"a", "", "bc"}));
  MP_ASSERT_OK_AND_ASSIGN(auto ints, f->GetIntArray("ints"));
  EXPECT_EQ(ints, (std::vector<int64_t>{1, -2, 3}));
  const GgufValue* nested = f->Find("nested");
  ASSERT_NE(nested, nullptr);
  EXPECT_EQ(nested->TypeString(), "array[array; 2]");
  ASSERT_EQ(nested->nested().size(), 2u);
  std::vector<int64_t> inner;
  ASSERT_TRUE(nested->nested()[0].ToIntArray(&inner));
  EXPECT_EQ(inner, (std::vector<int64_t>{1, 2}));
  ASSERT_TRUE(nested->nested()[1].ToIntArray(&inner));
  EXPECT_EQ(inner, (std::vector<int64_t>{3}));
}

TEST(GgufReaderTest, TypedGettersNameTheKeyAndType) {
  MP_ASSERT_OK_AND_ASSIGN(auto f, Parse(SampleFile()));
  GGUF_EXPECT_ERROR(f->GetInt("missing.key"), absl::StatusCode::kNotFound, "'missing.key'");
  GGUF_EXPECT_ERROR(f->GetInt("str"), absl::StatusCode::kInvalidArgument, "'str' has type string");
  GGUF_EXPECT_ERROR(f->GetString("u32"), absl::StatusCode::kInvalidArgument, "uint32");
  GGUF_EXPECT_ERROR(f->GetBool("u8"), absl::StatusCode::kInvalidArgument, "expected bool");
  GGUF_EXPECT_ERROR(f->GetStringArray("ints"), absl::StatusCode::kInvalidArgument,
                    "array[int32; 3]");
  GGUF_EXPECT_ERROR(f->GetFloat("str"), absl::StatusCode::kInvalidArgument, "test.gguf");
  GgufBuilder b;
  b.AddU64("big", std::numeric_limits<uint64_t>::max());
  MP_ASSERT_OK_AND_ASSIGN(auto g, Parse(b.Build()));
  GGUF_EXPECT_ERROR(g->GetInt("big"), absl::StatusCode::kInvalidArgument, "fits in int64");
}

TEST(GgufReaderTest, TensorInfosShapesAndData) {
  const std::vector<uint8_t> bytes = SampleFile();
  MP_ASSERT_OK_AND_ASSIGN(auto f, Parse(bytes));
  ASSERT_EQ(f->tensors().size(), 3u);
  EXPECT_EQ(f->data_offset() % 32, 0u);
  const GgufTensorInfo* a = f->FindTensor("a.weight");
  const GgufTensorInfo* b = f->FindTensor("b.weight");
  const GgufTensorInfo* c = f->FindTensor("c.weight");
  ASSERT_TRUE(a && b && c);
  EXPECT_EQ(f->FindTensor("nope"), nullptr);
  EXPECT_EQ(a->dims, (std::vector<int64_t>{3, 5}));
  EXPECT_EQ(a->shape(), (std::vector<int64_t>{5, 3}));
  EXPECT_EQ(a->nbytes, 60u);
  EXPECT_EQ(b->type, GgmlType::kQ8_0);
  EXPECT_EQ(b->shape(), (std::vector<int64_t>{2, 64}));
  EXPECT_EQ(b->nbytes, 136u);
  EXPECT_EQ(c->shape(), (std::vector<int64_t>{2, 1, 32}));
  EXPECT_EQ(c->numel, 64);
  EXPECT_EQ(c->nbytes, 40u);
  // Offsets as the writer assigned them: in order, each padded to 32 bytes.
  EXPECT_EQ(a->offset, 0u);
  EXPECT_EQ(b->offset, 64u);
  EXPECT_EQ(c->offset, 224u);
  // The data pointers see the bytes the writer put there.
  std::mt19937_64 rng(7);
  EXPECT_EQ(std::vector<uint8_t>(a->data, a->data + a->nbytes), RandomBytes(rng, 60));
  EXPECT_EQ(std::vector<uint8_t>(b->data, b->data + b->nbytes), RandomBytes(rng, 136));
  EXPECT_EQ(std::vector<uint8_t>(c->data, c->data + c->nbytes), RandomBytes(rng, 40));
}

TEST(GgufReaderTest, AcceptsVersion2) {
  MP_ASSERT_OK_AND_ASSIGN(auto f, Parse(SampleFile(2)));
  EXPECT_EQ(f->version(), 2u);
  EXPECT_EQ(f->tensors().size(), 3u);
}

TEST(GgufReaderTest, HonoursGeneralAlignment) {
  GgufBuilder b;
  b.AddU32("general.alignment", 256);
  b.AddTensor("x", kF32, {5}, std::vector<uint8_t>(20, 1));
  b.AddTensor("y", kF32, {7}, std::vector<uint8_t>(28, 2));
  MP_ASSERT_OK_AND_ASSIGN(auto f, Parse(b.Build(256)));
  EXPECT_EQ(f->alignment(), 256u);
  EXPECT_EQ(f->data_offset() % 256, 0u);
  EXPECT_EQ(f->FindTensor("y")->offset, 256u);
  EXPECT_EQ(f->FindTensor("y")->data[0], 2);

  for (uint32_t bad : {0u, 48u, 3u}) {
    GgufBuilder c;
    c.AddU32("general.alignment", bad);
    GGUF_EXPECT_ERROR(Parse(c.Build()), absl::StatusCode::kInvalidArgument, "power of two");
  }
  GgufBuilder d;
  d.AddU64("general.alignment", 64);
  GGUF_EXPECT_ERROR(Parse(d.Build()), absl::StatusCode::kInvalidArgument, "expected uint32");
}

TEST(GgufReaderTest, HeaderErrors) {
  std::vector<uint8_t> good = SampleFile();
  {
    auto bytes = good;
    bytes[0] = 'X';
    GGUF_EXPECT_ERROR(Parse(bytes), absl::StatusCode::kInvalidArgument, "not a GGUF file");
  }
  for (uint32_t version : {1u, 4u, 0x7fffffffu}) {
    auto bytes = good;
    std::memcpy(bytes.data() + 4, &version, 4);
    GGUF_EXPECT_ERROR(Parse(bytes), absl::StatusCode::kInvalidArgument, "unsupported GGUF version");
  }
  {
    auto bytes = good;
    const uint32_t be3 = 0x03000000u;
    std::memcpy(bytes.data() + 4, &be3, 4);
    GGUF_EXPECT_ERROR(Parse(bytes), absl::StatusCode::kInvalidArgument, "big-endian");
  }
  {
    auto bytes = good;
    const uint64_t huge = 1ull << 40;
    std::memcpy(bytes.data() + 8, &huge, 8);
    GGUF_EXPECT_ERROR(Parse(bytes), absl::StatusCode::kInvalidArgument, "tensor count");
    std::memcpy(bytes.data() + 8, good.data() + 8, 8);
    std::memcpy(bytes.data() + 16, &huge, 8);
    GGUF_EXPECT_ERROR(Parse(bytes), absl::StatusCode::kInvalidArgument, "metadata count");
  }
  GGUF_EXPECT_ERROR(Parse({}), absl::StatusCode::kDataLoss, "truncated at byte 0");
}

TEST(GgufReaderTest, MetadataErrors) {
  {
    GgufBuilder b;
    b.AddScalar("k", 13, uint32_t{0});
    GGUF_EXPECT_ERROR(Parse(b.Build()), absl::StatusCode::kInvalidArgument,
                      "'k' at byte 33 has unknown value type 13");
  }
  {
    GgufBuilder b;
    std::vector<uint8_t> p;
    GgufBuilder::Put(&p, uint32_t{99});
    GgufBuilder::Put(&p, uint64_t{0});
    b.AddEncoded("arr", GgufBuilder::kArray, p);
    GGUF_EXPECT_ERROR(Parse(b.Build()), absl::StatusCode::kInvalidArgument,
                      "array of unknown value type 99");
  }
  {
    GgufBuilder b;
    std::vector<uint8_t> p;
    GgufBuilder::Put(&p, uint32_t{GgufBuilder::kU32});
    GgufBuilder::Put(&p, uint64_t{1} << 40);
    b.AddEncoded("arr", GgufBuilder::kArray, p);
    GGUF_EXPECT_ERROR(Parse(b.Build()), absl::StatusCode::kDataLoss, "array of 1099511627776");
  }
  {
    GgufBuilder b;
    std::vector<uint8_t> p;
    GgufBuilder::Put(&p, uint64_t{1000});  // a string claiming 1000 bytes
    p.push_back('x');
    b.AddEncoded("s", GgufBuilder::kString, p);
    GGUF_EXPECT_ERROR(Parse(b.Build()), absl::StatusCode::kDataLoss, "has length 1000");
  }
  {
    GgufBuilder b;
    b.AddU32("dup", 1);
    b.AddU32("dup", 2);
    GGUF_EXPECT_ERROR(Parse(b.Build()), absl::StatusCode::kInvalidArgument,
                      "duplicate metadata key 'dup'");
  }
  {
    GgufBuilder b;
    b.AddU32("", 1);
    GGUF_EXPECT_ERROR(Parse(b.Build()), absl::StatusCode::kInvalidArgument, "empty key");
  }
  {
    // Arrays nested 9 deep.
    std::vector<uint8_t> p;
    for (int d = 0; d < 9; ++d) {
      GgufBuilder::Put(&p, uint32_t{GgufBuilder::kArray});
      GgufBuilder::Put(&p, uint64_t{1});
    }
    GgufBuilder::Put(&p, uint32_t{GgufBuilder::kU8});
    GgufBuilder::Put(&p, uint64_t{0});
    GgufBuilder b;
    b.AddEncoded("deep", GgufBuilder::kArray, p);
    GGUF_EXPECT_ERROR(Parse(b.Build()), absl::StatusCode::kInvalidArgument, "deeper than");
  }
}

TEST(GgufReaderTest, TensorErrors) {
  auto one = [](const std::string& name, uint32_t type, std::vector<uint64_t> dims, size_t nbytes,
                std::optional<uint64_t> offset = std::nullopt) {
    GgufBuilder b;
    b.AddTensor(name, type, std::move(dims), std::vector<uint8_t>(nbytes, 0), offset);
    return b;
  };
  GGUF_EXPECT_ERROR(Parse(one("t", kF32, {1, 1, 1, 1, 1}, 4).Build()),
                    absl::StatusCode::kInvalidArgument, "'t' has 5 dimensions");
  GGUF_EXPECT_ERROR(Parse(one("t", kF32, {}, 4).Build()), absl::StatusCode::kInvalidArgument,
                    "'t' has 0 dimensions");
  GGUF_EXPECT_ERROR(Parse(one("t", 4, {32}, 18).Build()), absl::StatusCode::kInvalidArgument,
                    "'t' has unknown ggml type 4");
  GGUF_EXPECT_ERROR(Parse(one("t", 1000, {32}, 18).Build()), absl::StatusCode::kInvalidArgument,
                    "unknown ggml type 1000");
  GGUF_EXPECT_ERROR(Parse(one("t", kQ8_0, {48}, 34).Build()), absl::StatusCode::kInvalidArgument,
                    "first dimension of 48, not a multiple of the block size 32");
  GGUF_EXPECT_ERROR(Parse(one("t", kF32, {4}, 16, 8).Build()), absl::StatusCode::kInvalidArgument,
                    "data offset 8, not a multiple of the alignment 32");
  GGUF_EXPECT_ERROR(Parse(one("t", kF32, {1ull << 62, 1ull << 62}, 4).Build()),
                    absl::StatusCode::kInvalidArgument, "overflow");
  GGUF_EXPECT_ERROR(Parse(one("", kF32, {4}, 16).Build()), absl::StatusCode::kInvalidArgument,
                    "empty name");
  {
    // The data claims more bytes than the file has.
    auto bytes = one("t", kF32, {8}, 32).Build();
    bytes.resize(bytes.size() - 4);
    GGUF_EXPECT_ERROR(Parse(bytes), absl::StatusCode::kDataLoss,
                      "'t' (F32, 32 bytes at data "
                      "offset 0) ends past the end");
  }
  {
    GgufBuilder b;
    b.AddTensor("x", kF32, {16}, std::vector<uint8_t>(64, 0), 0);
    b.AddTensor("y", kF32, {16}, std::vector<uint8_t>(64, 0), 32);
    GGUF_EXPECT_ERROR(Parse(b.Build()), absl::StatusCode::kInvalidArgument,
                      "tensors 'x' and 'y' overlap");
  }
  {
    GgufBuilder b;
    b.AddTensor("x", kF32, {4}, std::vector<uint8_t>(16, 0));
    b.AddTensor("x", kF32, {4}, std::vector<uint8_t>(16, 0));
    GGUF_EXPECT_ERROR(Parse(b.Build()), absl::StatusCode::kInvalidArgument,
                      "duplicate tensor name 'x'");
  }
}

// Every strict prefix of a valid file that cuts into the header or the tensor data fails with
// DATA_LOSS / INVALID_ARGUMENT naming the file; prefixes that keep all tensor bytes still parse.
TEST(GgufReaderTest, EveryTruncationIsAnError) {
  const std::vector<uint8_t> bytes = SampleFile();
  MP_ASSERT_OK_AND_ASSIGN(auto full, Parse(bytes));
  uint64_t needed = 0;
  for (const GgufTensorInfo& t : full->tensors()) {
    needed = std::max(needed, full->data_offset() + t.offset + t.nbytes);
  }
  ASSERT_LE(needed, bytes.size());
  for (size_t n = 0; n < bytes.size(); ++n) {
    std::vector<uint8_t> prefix(bytes.begin(), bytes.begin() + n);
    auto parsed = Parse(prefix);
    if (n < needed) {
      ASSERT_FALSE(parsed.ok()) << "prefix of " << n << " bytes parsed";
      const absl::StatusCode code = parsed.status().code();
      EXPECT_TRUE(code == absl::StatusCode::kDataLoss || code == absl::StatusCode::kInvalidArgument)
          << parsed.status();
      EXPECT_NE(parsed.status().message().find("test.gguf"), std::string::npos);
    } else {
      MP_EXPECT_OK(parsed);
    }
  }
}

// Random corruption never crashes; a file that still parses has all its tensors inside it.
TEST(GgufReaderTest, FuzzedFilesFailCleanly) {
  const std::vector<uint8_t> good = SampleFile();
  std::mt19937_64 rng(12345);
  int parsed_ok = 0, failed = 0;
  auto check = [&](const std::vector<uint8_t>& bytes) {
    auto f = Parse(bytes);
    if (!f.ok()) {
      ++failed;
      const absl::StatusCode code = f.status().code();
      ASSERT_TRUE(code == absl::StatusCode::kDataLoss || code == absl::StatusCode::kInvalidArgument)
          << f.status();
      ASSERT_NE(f.status().message().find("test.gguf"), std::string::npos) << f.status();
      return;
    }
    ++parsed_ok;
    const GgufFile& file = **f;
    for (const GgufTensorInfo& t : file.tensors()) {
      ASSERT_LE(file.data_offset() + t.offset + t.nbytes, file.file_size());
      const GgmlTypeTraits* traits = GgmlTypeInfo(t.type);
      ASSERT_NE(traits, nullptr);
      ASSERT_EQ(t.nbytes, static_cast<uint64_t>(t.numel / traits->block_size * traits->type_size));
    }
    // Reading every value must be safe too.
    for (const std::string& key : file.keys()) {
      const GgufValue* v = file.Find(key);
      int64_t i;
      double d;
      std::vector<int64_t> ints;
      std::vector<std::string_view> strs;
      v->ToInt(&i);
      v->ToDouble(&d);
      v->ToIntArray(&ints);
      v->ToStringArray(&strs);
    }
  };
  for (int iter = 0; iter < 4000; ++iter) {
    std::vector<uint8_t> bytes = good;
    const int mode = static_cast<int>(rng() % 5);
    const int edits = 1 + static_cast<int>(rng() % 4);
    for (int e = 0; e < edits; ++e) {
      const size_t pos = rng() % bytes.size();
      switch (mode) {
        case 0:  // flip a bit
          bytes[pos] ^= static_cast<uint8_t>(1u << (rng() % 8));
          break;
        case 1:  // random byte
          bytes[pos] = static_cast<uint8_t>(rng());
          break;
        case 2: {  // an extreme 32/64-bit value
          static const uint64_t kExtremes[] = {
              0, 1, 0xFFFFFFFFull, 0x7FFFFFFFFFFFFFFFull, 0xFFFFFFFFFFFFFFFFull, 1ull << 32, 13, 9};
          const uint64_t v = kExtremes[rng() % std::size(kExtremes)];
          const size_t width = (rng() & 1) ? 8 : 4;
          if (pos + width <= bytes.size()) std::memcpy(bytes.data() + pos, &v, width);
          break;
        }
        case 3:  // delete a range
          bytes.erase(bytes.begin() + pos,
                      bytes.begin() + std::min(bytes.size(), pos + 1 + rng() % 16));
          if (bytes.empty()) bytes.push_back(0);
          break;
        default:  // insert random bytes
          for (int k = static_cast<int>(rng() % 16); k >= 0; --k) {
            bytes.insert(bytes.begin() + pos, static_cast<uint8_t>(rng()));
          }
          break;
      }
    }
    check(bytes);
    if (::testing::Test::HasFatalFailure()) return;
  }
  for (int iter = 0; iter < 500; ++iter) {
    std::vector<uint8_t> bytes = RandomBytes(rng, rng() % 256);
    if (bytes.size() >= 8 && (rng() & 1)) {
      std::memcpy(bytes.data(), "GGUF\x03\x00\x00\x00", 8);
    }
    check(bytes);
    if (::testing::Test::HasFatalFailure()) return;
  }
  EXPECT_GT(failed, 1000);
  EXPECT_GT(parsed_ok, 0);  // some mutations hit bytes that do not matter (tensor data)
}

TEST(GgufReaderTest, OpensFilesFromDisk) {
  const std::filesystem::path dir =
      std::filesystem::temp_directory_path() / ("gguf_reader_test_" + std::to_string(getpid()));
  std::filesystem::create_directories(dir);
  const std::vector<uint8_t> bytes = SampleFile();
  const std::string path = (dir / "sample.gguf").string();
  {
    std::ofstream out(path, std::ios::binary);
    out.write(reinterpret_cast<const char*>(bytes.data()), bytes.size());
  }
  MP_ASSERT_OK_AND_ASSIGN(auto f, GgufFile::Open(path));
  EXPECT_EQ(f->path(), path);
  EXPECT_EQ(f->file_size(), bytes.size());
  EXPECT_EQ(f->tensors().size(), 3u);
  EXPECT_EQ(*f->GetString("str"), "h\xC3\xA9llo");

  GGUF_EXPECT_ERROR(GgufFile::Open((dir / "absent.gguf").string()), absl::StatusCode::kNotFound,
                    "absent.gguf");
  GGUF_EXPECT_ERROR(GgufFile::Open(dir.string()), absl::StatusCode::kInvalidArgument,
                    "not a regular file");
  const std::string empty = (dir / "empty.gguf").string();
  { std::ofstream out(empty, std::ios::binary); }
  GGUF_EXPECT_ERROR(GgufFile::Open(empty), absl::StatusCode::kDataLoss, "empty.gguf: truncated");
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace mp
