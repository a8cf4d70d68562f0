// model_safetensors_tool IN OUT: reads the safetensors file IN with SafetensorsFile, prints every
// tensor (dtype, shape, values as numbers; non-finite floats as "inf", "-inf", "nan") and the
// metadata as JSON on stdout, and writes a copy of IN to OUT with WriteSafetensors. Used by
// safetensors_crosscheck.py to compare with the reference implementation in both directions.
#include <cmath>
#include <cstdint>
#include <cstring>
#include <iostream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "model/safetensors.h"

namespace {

using Json = nlohmann::ordered_json;

double HalfToDouble(uint16_t h) {
  const int sign = h >> 15, exp = (h >> 10) & 0x1F, mant = h & 0x3FF;
  double v;
  if (exp == 0x1F) {
    v = mant ? NAN : INFINITY;
  } else if (exp == 0) {
    v = std::ldexp(mant, -24);
  } else {
    v = std::ldexp(1024 + mant, exp - 25);
  }
  return sign ? -v : v;
}

double BF16ToDouble(uint16_t h) {
  const uint32_t bits = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

Json Number(double v) {
  if (std::isnan(v)) return "nan";
  if (std::isinf(v)) return v > 0 ? "inf" : "-inf";
  return v;
}

Json Values(const mp::Tensor& t) {
  Json out = Json::array();
  for (int64_t i = 0; i < t.numel(); ++i) {
    switch (t.dtype()) {
      case mp::DType::kF32:
        out.push_back(Number(t.data_as<float>()[i]));
        break;
      case mp::DType::kF16:
        out.push_back(Number(HalfToDouble(t.data_as<uint16_t>()[i])));
        break;
      case mp::DType::kBF16:
        out.push_back(Number(BF16ToDouble(t.data_as<uint16_t>()[i])));
        break;
      case mp::DType::kI32:
        out.push_back(t.data_as<int32_t>()[i]);
        break;
      case mp::DType::kI64:
        out.push_back(t.data_as<int64_t>()[i]);
        break;
      case mp::DType::kU8:
        out.push_back(t.data_as<uint8_t>()[i]);
        break;
    }
  }
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 3) {
    std::cerr << "usage: " << argv[0] << " IN.safetensors OUT.safetensors\n";
    return 2;
  }
  auto file = mp::SafetensorsFile::Open(argv[1]);
  if (!file.ok()) {
    std::cerr << file.status() << "\n";
    return 1;
  }
  Json report;
  report["metadata"] = (*file)->metadata();
  Json tensors = Json::object();
  std::vector<mp::SafetensorsEntry> entries;
  for (const std::string& name : (*file)->TensorNames()) {
    auto t = (*file)->Get(name);
    if (!t.ok()) {
      std::cerr << t.status() << "\n";
      return 1;
    }
    tensors[name] = {{"dtype", mp::SafetensorsDTypeName(t->dtype())},
                     {"shape", t->shape()},
                     {"values", Values(*t)}};
    entries.push_back({name, *t});
  }
  report["tensors"] = std::move(tensors);
  absl::Status written = mp::WriteSafetensors(argv[2], entries, (*file)->metadata());
  if (!written.ok()) {
    std::cerr << written << "\n";
    return 1;
  }
  std::cout << report.dump() << "\n";
  return 0;
}
