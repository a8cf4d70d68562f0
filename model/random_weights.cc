// Seeded random weights and random model directories.
//
// Each value is a pure function of (seed, tensor name, element index): a SplitMix64 hash of the
// index gives four 16-bit uniforms whose sum, scaled to unit variance, approximates a standard
// normal. No state is carried between elements, so any block of any tensor can be generated on
// any thread and the result never depends on the thread count or on the stage's layer range.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <system_error>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/status.h"
#include "model/config.h"
#include "model/safetensors.h"
#include "model/weights.h"

namespace mp {
namespace {

constexpr int64_t kBlockElements = int64_t{1} << 18;

inline uint64_t SplitMix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

uint64_t TensorKey(uint64_t seed, const std::string& name) {
  uint64_t h = 0xCBF29CE484222325ull;  // FNV-1a
  for (unsigned char c : name) h = (h ^ c) * 0x100000001B3ull;
  return SplitMix64(seed + 0x9E3779B97F4A7C15ull * SplitMix64(h));
}

// Approximately N(0, 1): the sum of four uniforms on {0, ..., 65535}, centred and scaled.
inline float UnitNormalish(uint64_t key, uint64_t index) {
  const uint64_t r = SplitMix64(key + (index + 1) * 0x9E3779B97F4A7C15ull);
  const int64_t sum =
      static_cast<int64_t>((r & 0xFFFF) + ((r >> 16) & 0xFFFF) + ((r >> 32) & 0xFFFF) + (r >> 48));
  // Each uniform has variance (65536^2 - 1) / 12; the sum has four times that.
  constexpr float kInvStd = 1.0f / 37837.2261f;
  return static_cast<float>(sum - 131070) * kInvStd;
}

inline uint16_t FloatToBF16(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, 4);
  if ((bits & 0x7FFFFFFFu) > 0x7F800000u) return static_cast<uint16_t>((bits >> 16) | 0x40);
  bits += 0x7FFFu + ((bits >> 16) & 1u);  // round to nearest even
  return static_cast<uint16_t>(bits >> 16);
}

inline uint16_t FloatToF16(float f) {
  uint32_t x;
  std::memcpy(&x, &f, 4);
  const uint16_t sign = static_cast<uint16_t>((x >> 16) & 0x8000u);
  const uint32_t abs = x & 0x7FFFFFFFu;
  if (abs > 0x7F800000u) return sign | 0x7E00;   // NaN
  if (abs >= 0x477FF000u) return sign | 0x7C00;  // rounds to >= 65520: infinity
  if (abs < 0x38800000u) {                       // below 2^-14: subnormal (or zero)
    float a;
    std::memcpy(&a, &abs, 4);
    return sign | static_cast<uint16_t>(std::nearbyint(a * 16777216.0f));  // units of 2^-24
  }
  uint32_t h = ((abs >> 23) - 112) << 10 | ((abs >> 13) & 0x3FFu);
  const uint32_t rest = abs & 0x1FFFu;
  if (rest > 0x1000u || (rest == 0x1000u && (h & 1u))) ++h;  // carries into the exponent
  return sign | static_cast<uint16_t>(h);
}

struct FillJob {
  const WeightSlot* slot;
  uint64_t key;
  int64_t begin, end;  // element range
};

// Matrices and embeddings 0.02 z, biases 0.01 z, norm weights 1 + 0.05 z.
void KindScale(WeightKind kind, float* scale, float* offset) {
  *scale = kind == WeightKind::kBias ? 0.01f : kind == WeightKind::kNorm ? 0.05f : 0.02f;
  *offset = kind == WeightKind::kNorm ? 1.0f : 0.0f;
}

void RunJob(const FillJob& job) {
  const WeightSlot& s = *job.slot;
  float scale, offset;
  KindScale(s.kind, &scale, &offset);
  Tensor& t = *s.tensor;
  switch (t.dtype()) {
    case DType::kF32: {
      float* out = t.data_as<float>();
      for (int64_t i = job.begin; i < job.end; ++i) {
        out[i] = offset + scale * UnitNormalish(job.key, static_cast<uint64_t>(i));
      }
      break;
    }
    case DType::kBF16: {
      uint16_t* out = t.data_as<uint16_t>();
      for (int64_t i = job.begin; i < job.end; ++i) {
        out[i] = FloatToBF16(offset + scale * UnitNormalish(job.key, static_cast<uint64_t>(i)));
      }
      break;
    }
    case DType::kF16: {
      uint16_t* out = t.data_as<uint16_t>();
      for (int64_t i = job.begin; i < job.end; ++i) {
        out[i] = FloatToF16(offset + scale * UnitNormalish(job.key, static_cast<uint64_t>(i)));
      }
      break;
    }
    default:
      break;  // rejected before any job is made
  }
}

// Allocates every slot's tensor (uninitialised: the fill touches each page first, in parallel)
// and fills it.
absl::Status FillRandom(const std::vector<WeightSlot>& slots, uint64_t seed, DType dtype) {
  if (dtype != DType::kF32 && dtype != DType::kF16 && dtype != DType::kBF16) {
    return absl::InvalidArgumentError(
        absl::StrCat("random weights must be f32, f16 or bf16, not ", DTypeName(dtype)));
  }
  std::vector<FillJob> jobs;
  for (const WeightSlot& slot : slots) {
    int64_t numel = 1;
    for (int64_t d : slot.shape) numel *= d;
    const size_t bytes = static_cast<size_t>(numel) * DTypeSize(dtype);
    const size_t padded = std::max<size_t>(64, (bytes + 63) / 64 * 64);
    void* p = std::aligned_alloc(64, padded);
    if (p == nullptr) {
      return absl::ResourceExhaustedError(
          absl::StrCat("cannot allocate ", bytes, " bytes for tensor '", slot.name, "'"));
    }
    std::shared_ptr<void> owner(p, [](void* q) { std::free(q); });
    *slot.tensor = Tensor::Wrap(p, slot.shape, dtype, DeviceKind::kCpu, std::move(owner));
    const uint64_t key = TensorKey(seed, slot.name);
    for (int64_t b = 0; b < numel; b += kBlockElements) {
      jobs.push_back(FillJob{&slot, key, b, std::min(numel, b + kBlockElements)});
    }
  }
  const size_t hw = std::max(1u, std::thread::hardware_concurrency());
  const size_t num_threads = std::min<size_t>({hw, jobs.size(), 128});
  std::atomic<size_t> next{0};
  auto worker = [&] {
    for (size_t j = next.fetch_add(1); j < jobs.size(); j = next.fetch_add(1)) RunJob(jobs[j]);
  };
  std::vector<std::thread> threads;
  for (size_t i = 1; i < num_threads; ++i) {
    try {
      threads.emplace_back(worker);
    } catch (const std::system_error&) {
      break;  // fewer threads: the ones running take the remaining blocks
    }
  }
  worker();
  for (std::thread& t : threads) t.join();
  return absl::OkStatus();
}

absl::Status WriteTextFile(const std::string& path, const std::string& text) {
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    out << text;
    out.close();
    if (!out) return absl::InternalError(absl::StrCat("cannot write '", tmp, "'"));
  }
  std::error_code ec;
  std::filesystem::rename(tmp, path, ec);
  if (ec) return absl::InternalError(absl::StrCat("cannot rename '", tmp, "': ", ec.message()));
  return absl::OkStatus();
}

}  // namespace

RandomWeightStream RandomWeightStreamOf(uint64_t seed, const WeightSlot& slot) {
  RandomWeightStream s;
  s.key = TensorKey(seed, slot.name);
  KindScale(slot.kind, &s.scale, &s.offset);
  return s;
}

absl::StatusOr<ModelWeights> RandomModelWeights(const ModelConfig& config,
                                                const WeightLoadOptions& options, uint64_t seed,
                                                DType dtype) {
  ModelWeights weights;
  MP_ASSIGN_OR_RETURN(std::vector<WeightSlot> slots, StageWeightSlots(config, options, &weights));
  MP_RETURN_IF_ERROR(FillRandom(slots, seed, dtype));
  if (weights.has_head && config.tie_word_embeddings) weights.lm_head = weights.embed_tokens;
  return weights;
}

absl::Status WriteRandomModelDir(const std::string& dir, const ModelConfig& config, uint64_t seed,
                                 const RandomModelDirOptions& options) {
  const int64_t layers = config.num_hidden_layers;
  const int64_t shards = options.num_shards;
  if (shards < 1 || shards > layers) {
    return absl::InvalidArgumentError(
        absl::StrCat("num_shards = ", shards, " must be in [1, num_hidden_layers = ", layers, "]"));
  }
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) {
    return absl::InternalError(absl::StrCat("cannot create directory '", dir, "': ", ec.message()));
  }
  MP_RETURN_IF_ERROR(WriteTextFile((std::filesystem::path(dir) / "config.json").string(),
                                   ModelConfigToJson(config)));
  const std::map<std::string, std::string> metadata = {{"format", "pt"}};
  nlohmann::ordered_json weight_map = nlohmann::ordered_json::object();
  uint64_t total_bytes = 0;
  for (int64_t s = 0; s < shards; ++s) {
    WeightLoadOptions part;
    part.layers = {s * layers / shards, (s + 1) * layers / shards};
    part.embedding = s == 0;
    part.head = s == shards - 1;
    ModelWeights weights;
    MP_ASSIGN_OR_RETURN(std::vector<WeightSlot> slots, StageWeightSlots(config, part, &weights));
    // A tied head lists the embedding; only the first shard stores it.
    std::erase_if(slots, [&](const WeightSlot& w) {
      return w.kind == WeightKind::kEmbedding && !part.embedding;
    });
    MP_RETURN_IF_ERROR(FillRandom(slots, seed, options.dtype));
    const std::string file = shards == 1
                                 ? std::string("model.safetensors")
                                 : absl::StrFormat("model-%05d-of-%05d.safetensors", s + 1, shards);
    std::vector<SafetensorsEntry> entries;
    for (const WeightSlot& w : slots) {
      entries.push_back(SafetensorsEntry{w.name, *w.tensor});
      weight_map[w.name] = file;
      total_bytes += w.tensor->nbytes();
    }
    MP_RETURN_IF_ERROR(
        WriteSafetensors((std::filesystem::path(dir) / file).string(), entries, metadata));
  }
  if (shards > 1) {
    nlohmann::ordered_json index;
    index["metadata"] = {{"total_size", total_bytes}};
    index["weight_map"] = std::move(weight_map);
    MP_RETURN_IF_ERROR(
        WriteTextFile((std::filesystem::path(dir) / "model.safetensors.index.json").string(),
                      index.dump(2) + "\n"));
  }
  return absl::OkStatus();
}

}  // namespace mp
