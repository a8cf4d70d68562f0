// ForwardingBackend: a test Backend that implements every pure virtual op by forwarding to a
// CPU backend and keeps the base class's defaults for the rest (DcaAttention,
// VerticalSlashAttention, SampleToken). Tests derive from it to count or intercept ops, or use it
// as is to see the defaults.
#pragma once

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "runtime/backend.h"

namespace mp {

class ForwardingBackend : public Backend {
 public:
  explicit ForwardingBackend(std::string name) : name_(std::move(name)) {}

  DeviceKind device() const override { return inner_->device(); }
  std::string name() const override { return name_; }
  DType compute_dtype() const override { return inner_->compute_dtype(); }
  absl::StatusOr<Tensor> Allocate(std::vector<int64_t> shape, DType dtype) override {
    return inner_->Allocate(std::move(shape), dtype);
  }
  absl::StatusOr<Tensor> UploadWeight(const Tensor& host) override {
    return inner_->UploadWeight(host);
  }
  absl::Status CopyFromHost(const Tensor& host, Tensor& dst) override {
    return inner_->CopyFromHost(host, dst);
  }
  absl::Status CopyToHost(const Tensor& src, Tensor& host) override {
    return inner_->CopyToHost(src, host);
  }
  absl::Status Copy(const Tensor& src, Tensor& dst) override { return inner_->Copy(src, dst); }
  absl::StatusOr<Tensor> ToHostF32(const Tensor& src) override { return inner_->ToHostF32(src); }
  absl::Status Synchronize() override { return inner_->Synchronize(); }
  absl::Status Embedding(const Tensor& ids, const Tensor& table, Tensor& out) override {
    return inner_->Embedding(ids, table, out);
  }
  absl::Status RmsNorm(const Tensor& x, const Tensor& w, float eps, Tensor& out) override {
    return inner_->RmsNorm(x, w, eps, out);
  }
  absl::Status Add(Tensor& x, const Tensor& y) override { return inner_->Add(x, y); }
  absl::Status Linear(const Tensor& x, const Tensor& w, const Tensor* b, Tensor& y) override {
    return inner_->Linear(x, w, b, y);
  }
  absl::Status Rope(Tensor& x, const Tensor& positions, double theta) override {
    return inner_->Rope(x, positions, theta);
  }
  absl::Status SiluMul(const Tensor& gate_up, Tensor& out) override {
    return inner_->SiluMul(gate_up, out);
  }
  absl::Status WriteKv(const Tensor& k, const Tensor& v, int64_t start,
                       const KvLayerView& kv) override {
    return inner_->WriteKv(k, v, start, kv);
  }
  absl::Status Attention(const AttentionParams& params) override {
    return inner_->Attention(params);
  }

 protected:
  Backend& inner() { return *inner_; }

 private:
  std::string name_;
  std::unique_ptr<Backend> inner_ = NewCpuBackend();
};

}  // namespace mp
