#include "tests/unit/runtime/tiny_model.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>

namespace mp::testing {
namespace {

uint32_t BitsOf(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, sizeof(bits));
  return bits;
}

float FloatFromBits(uint32_t bits) {
  float f;
  std::memcpy(&f, &bits, sizeof(f));
  return f;
}

class Filler {
 public:
  Filler(uint64_t seed, bool bf16_exact) : rng_(seed), bf16_exact_(bf16_exact) {}

  Tensor Make(std::vector<int64_t> shape, double mean, double stddev) {
    Tensor t = Tensor::Host(std::move(shape), DType::kF32);
    std::normal_distribution<double> normal(mean, stddev);
    float* p = t.data_as<float>();
    for (int64_t i = 0; i < t.numel(); ++i) p[i] = static_cast<float>(normal(rng_));
    // A separate pass: GCC 12.2 dropped this mask when it was fused into the sampling loop.
    if (bf16_exact_) {
      for (int64_t i = 0; i < t.numel(); ++i) p[i] = FloatFromBits(BitsOf(p[i]) & 0xffff0000u);
    }
    return t;
  }

 private:
  std::mt19937_64 rng_;
  bool bf16_exact_;
};

Tensor ToBf16Tensor(const Tensor& t) {
  if (!t.defined()) return t;
  Tensor out = Tensor::Host(t.shape(), DType::kBF16);
  const float* src = t.data_as<const float>();
  uint16_t* dst = out.data_as<uint16_t>();
  for (int64_t i = 0; i < t.numel(); ++i) {
    dst[i] = static_cast<uint16_t>(BitsOf(src[i]) >> 16);
  }
  return out;
}

const float* F32(const Tensor& t) { return t.data_as<const float>(); }

// y[t, o] = sum_i x[t, i] w[o, i] (+ b[o]).
std::vector<double> Linear(const std::vector<double>& x, int64_t rows, int64_t in, const Tensor& w,
                           const Tensor* b) {
  const int64_t out = w.dim(0);
  std::vector<double> y(rows * out);
  const float* wp = F32(w);
  for (int64_t t = 0; t < rows; ++t) {
    for (int64_t o = 0; o < out; ++o) {
      double s = b != nullptr && b->defined() ? F32(*b)[o] : 0.0;
      for (int64_t i = 0; i < in; ++i) s += x[t * in + i] * wp[o * in + i];
      y[t * out + o] = s;
    }
  }
  return y;
}

std::vector<double> RmsNorm(const std::vector<double>& x, int64_t rows, int64_t d, const Tensor& w,
                            double eps) {
  std::vector<double> y(rows * d);
  for (int64_t t = 0; t < rows; ++t) {
    double ss = 0;
    for (int64_t i = 0; i < d; ++i) ss += x[t * d + i] * x[t * d + i];
    const double inv = 1.0 / std::sqrt(ss / static_cast<double>(d) + eps);
    for (int64_t i = 0; i < d; ++i) y[t * d + i] = x[t * d + i] * inv * F32(w)[i];
  }
  return y;
}

// Rotate-half RoPE of every head of x [rows, heads, head_dim] at positions 0..rows-1.
void Rope(std::vector<double>& x, int64_t rows, int64_t heads, int64_t head_dim, double theta) {
  const int64_t half = head_dim / 2;
  for (int64_t t = 0; t < rows; ++t) {
    for (int64_t h = 0; h < heads; ++h) {
      double* v = &x[(t * heads + h) * head_dim];
      for (int64_t i = 0; i < half; ++i) {
        const double angle =
            static_cast<double>(t) * std::pow(theta, -2.0 * static_cast<double>(i) / head_dim);
        const double c = std::cos(angle), s = std::sin(angle);
        const double x1 = v[i], x2 = v[i + half];
        v[i] = x1 * c - x2 * s;
        v[i + half] = x2 * c + x1 * s;
      }
    }
  }
}

}  // namespace

ModelConfig TinyConfig(const TinyModelSpec& spec) {
  ModelConfig c;
  c.architecture = spec.architecture;
  c.model_type = spec.architecture == Architecture::kQwen2 ? "qwen2" : "llama";
  c.vocab_size = spec.vocab;
  c.hidden_size = spec.hidden;
  c.intermediate_size = spec.inter;
  c.num_hidden_layers = spec.layers;
  c.num_attention_heads = spec.heads;
  c.num_key_value_heads = spec.kv_heads;
  c.head_dim = spec.head_dim;
  c.max_position_embeddings = spec.max_position_embeddings;
  c.rms_norm_eps = 1e-6;
  c.rope_theta = spec.rope_theta;
  c.attention_bias = spec.architecture == Architecture::kQwen2 || spec.llama_attention_bias;
  c.tie_word_embeddings = spec.tie_word_embeddings;
  c.eos_token_ids = {2};
  c.bos_token_id = 1;
  c.torch_dtype = "float32";
  return c;
}

ModelWeights TinyWeights(const ModelConfig& c, uint64_t seed, bool bf16_exact) {
  Filler f(seed, bf16_exact);
  const int64_t hidden = c.hidden_size, inter = c.intermediate_size;
  ModelWeights w;
  w.layers = {0, c.num_hidden_layers};
  w.has_embedding = true;
  w.has_head = true;
  w.embed_tokens = f.Make({c.vocab_size, hidden}, 0.0, 0.08);
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    LayerWeights lw;
    lw.input_norm = f.Make({hidden}, 1.0, 0.2);
    lw.q_proj = f.Make({c.q_dim(), hidden}, 0.0, 0.08);
    lw.k_proj = f.Make({c.kv_dim(), hidden}, 0.0, 0.08);
    lw.v_proj = f.Make({c.kv_dim(), hidden}, 0.0, 0.08);
    if (c.attention_bias) {
      lw.q_bias = f.Make({c.q_dim()}, 0.0, 0.1);
      lw.k_bias = f.Make({c.kv_dim()}, 0.0, 0.1);
      lw.v_bias = f.Make({c.kv_dim()}, 0.0, 0.1);
    }
    lw.o_proj = f.Make({hidden, c.q_dim()}, 0.0, 0.08);
    if (c.o_proj_bias()) lw.o_bias = f.Make({hidden}, 0.0, 0.1);
    lw.post_attention_norm = f.Make({hidden}, 1.0, 0.2);
    lw.gate_proj = f.Make({inter, hidden}, 0.0, 0.08);
    lw.up_proj = f.Make({inter, hidden}, 0.0, 0.08);
    lw.down_proj = f.Make({hidden, inter}, 0.0, 0.08);
    w.layer.push_back(lw);
  }
  w.final_norm = f.Make({hidden}, 1.0, 0.2);
  w.lm_head = c.tie_word_embeddings ? w.embed_tokens : f.Make({c.vocab_size, hidden}, 0.0, 0.08);
  return w;
}

ModelWeights SliceWeights(const ModelWeights& full, const ModelConfig& config, LayerRange layers) {
  ModelWeights w;
  w.layers = layers;
  w.has_embedding = layers.begin == 0;
  w.has_head = layers.end == config.num_hidden_layers;
  if (w.has_embedding || (w.has_head && config.tie_word_embeddings)) {
    w.embed_tokens = full.embed_tokens;
  }
  w.layer.assign(full.layer.begin() + layers.begin, full.layer.begin() + layers.end);
  if (w.has_head) {
    w.final_norm = full.final_norm;
    w.lm_head = full.lm_head;
  }
  w.storage = full.storage;
  return w;
}

ModelWeights ToBf16(const ModelWeights& full) {
  ModelWeights w = full;
  w.embed_tokens = ToBf16Tensor(full.embed_tokens);
  for (LayerWeights& l : w.layer) {
    for (Tensor* t :
         {&l.input_norm, &l.q_proj, &l.k_proj, &l.v_proj, &l.q_bias, &l.k_bias, &l.v_bias,
          &l.o_proj, &l.o_bias, &l.post_attention_norm, &l.gate_proj, &l.up_proj, &l.down_proj}) {
      *t = ToBf16Tensor(*t);
    }
  }
  w.final_norm = ToBf16Tensor(full.final_norm);
  w.lm_head =
      full.lm_head.data() == full.embed_tokens.data() ? w.embed_tokens : ToBf16Tensor(full.lm_head);
  return w;
}

int64_t ReferenceDcaDistance(const DualChunkConfig& dca, int64_t p, int64_t j) {
  const int64_t C = dca.chunk_size - dca.local_size, S = dca.chunk_size;
  const int64_t i = p % C, jj = j % C;
  if (j / C == p / C) return p - j;
  if (j / C == p / C - 1) return std::min(i + C, S) - jj;
  return std::min(2 * C - 1, S) - jj;
}

std::vector<double> ReferenceLogits(const ModelConfig& c, const ModelWeights& w,
                                    std::span<const int32_t> ids, int64_t prompt_len) {
  const int64_t T = static_cast<int64_t>(ids.size());
  const int64_t hidden = c.hidden_size, inter = c.intermediate_size, hd = c.head_dim;
  const int64_t heads = c.num_attention_heads, kv_heads = c.num_key_value_heads;
  const int64_t group = heads / kv_heads;
  std::vector<double> x(T * hidden);
  for (int64_t t = 0; t < T; ++t) {
    for (int64_t i = 0; i < hidden; ++i)
      x[t * hidden + i] = F32(w.embed_tokens)[ids[t] * hidden + i];
  }
  for (const LayerWeights& l : w.layer) {
    std::vector<double> h = RmsNorm(x, T, hidden, l.input_norm, c.rms_norm_eps);
    std::vector<double> q = Linear(h, T, hidden, l.q_proj, &l.q_bias);
    std::vector<double> k = Linear(h, T, hidden, l.k_proj, &l.k_bias);
    std::vector<double> v = Linear(h, T, hidden, l.v_proj, &l.v_bias);
    const bool dca = c.dual_chunk.has_value();
    const double base_scale = 1.0 / std::sqrt(static_cast<double>(hd));
    if (!dca) {
      Rope(q, T, heads, hd, c.rope_theta);
      Rope(k, T, kv_heads, hd, c.rope_theta);
    }
    // With DCA q and k stay un-rotated; the logit of (t, j) rotates q_t by r(t, j).
    const int64_t half = hd / 2;
    std::vector<double> inv_freq(half);
    for (int64_t e = 0; e < half; ++e) {
      inv_freq[e] = std::pow(c.rope_theta, -2.0 * static_cast<double>(e) / hd);
    }
    std::vector<double> a(T * heads * hd, 0.0);
    for (int64_t t = 0; t < T; ++t) {
      double scale = base_scale;
      if (dca) {
        const double L = static_cast<double>(std::max<int64_t>(prompt_len > 0 ? prompt_len : T,
                                                               t + 1));
        const double L0 = static_cast<double>(c.dual_chunk->original_max_position_embeddings);
        const double m = std::max(1.0, 0.1 * std::log(L / L0) + 1.0);
        scale *= m * m;
      }
      for (int64_t hh = 0; hh < heads; ++hh) {
        const int64_t kh = hh / group;
        std::vector<double> s(t + 1);
        double m = -INFINITY;
        for (int64_t j = 0; j <= t; ++j) {
          double d = 0;
          const double* qv = &q[(t * heads + hh) * hd];
          const double* kv = &k[(j * kv_heads + kh) * hd];
          if (dca) {
            const double r = static_cast<double>(ReferenceDcaDistance(*c.dual_chunk, t, j));
            for (int64_t e = 0; e < half; ++e) {
              const double angle = r * inv_freq[e];
              const double cs = std::cos(angle), sn = std::sin(angle);
              d += (qv[e] * cs - qv[e + half] * sn) * kv[e] +
                   (qv[e + half] * cs + qv[e] * sn) * kv[e + half];
            }
          } else {
            for (int64_t e = 0; e < hd; ++e) d += qv[e] * kv[e];
          }
          s[j] = d * scale;
          m = std::max(m, s[j]);
        }
        double sum = 0;
        for (double& e : s) sum += (e = std::exp(e - m));
        for (int64_t j = 0; j <= t; ++j) {
          for (int64_t e = 0; e < hd; ++e) {
            a[(t * heads + hh) * hd + e] += s[j] / sum * v[(j * kv_heads + kh) * hd + e];
          }
        }
      }
    }
    std::vector<double> o = Linear(a, T, heads * hd, l.o_proj, &l.o_bias);
    for (int64_t i = 0; i < T * hidden; ++i) x[i] += o[i];
    h = RmsNorm(x, T, hidden, l.post_attention_norm, c.rms_norm_eps);
    std::vector<double> g = Linear(h, T, hidden, l.gate_proj, nullptr);
    std::vector<double> u = Linear(h, T, hidden, l.up_proj, nullptr);
    for (int64_t i = 0; i < T * inter; ++i) g[i] = g[i] / (1.0 + std::exp(-g[i])) * u[i];
    std::vector<double> d = Linear(g, T, inter, l.down_proj, nullptr);
    for (int64_t i = 0; i < T * hidden; ++i) x[i] += d[i];
  }
  std::vector<double> h = RmsNorm(x, T, hidden, w.final_norm, c.rms_norm_eps);
  return Linear(h, T, hidden, w.lm_head, nullptr);
}

std::vector<int32_t> ReferenceGreedy(const ModelConfig& config, const ModelWeights& weights,
                                     std::span<const int32_t> prompt, int64_t new_tokens) {
  std::vector<int32_t> ids(prompt.begin(), prompt.end());
  std::vector<int32_t> out;
  const int64_t vocab = config.vocab_size;
  const int64_t prompt_len = static_cast<int64_t>(prompt.size());
  for (int64_t step = 0; step < new_tokens; ++step) {
    std::vector<double> logits = ReferenceLogits(config, weights, ids, prompt_len);
    const double* last = logits.data() + (static_cast<int64_t>(ids.size()) - 1) * vocab;
    const int32_t next = static_cast<int32_t>(std::max_element(last, last + vocab) - last);
    out.push_back(next);
    ids.push_back(next);
  }
  return out;
}

double RowRelativeError(const float* a, const double* b, int64_t n) {
  double diff = 0, scale = 0;
  for (int64_t i = 0; i < n; ++i) {
    diff = std::max(diff, std::abs(static_cast<double>(a[i]) - b[i]));
    scale = std::max(scale, std::abs(b[i]));
  }
  return scale == 0 ? diff : diff / scale;
}

double RowRelativeError(const float* a, const float* b, int64_t n) {
  std::vector<double> bd(b, b + n);
  return RowRelativeError(a, bd.data(), n);
}

std::vector<int32_t> RandomIds(int64_t n, int64_t vocab, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<int32_t> dist(0, static_cast<int32_t>(vocab - 1));
  std::vector<int32_t> ids(n);
  for (int32_t& id : ids) id = dist(rng);
  return ids;
}

Tensor HostIds(std::span<const int32_t> ids) {
  Tensor t = Tensor::Host({static_cast<int64_t>(ids.size())}, DType::kI32);
  if (!ids.empty()) std::memcpy(t.data(), ids.data(), ids.size_bytes());
  return t;
}

}  // namespace mp::testing
