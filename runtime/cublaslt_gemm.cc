#include "runtime/cublaslt_gemm.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/status.h"

namespace mp {
namespace {

const char* StatusName(cublasStatus_t s) {
  switch (s) {
    case CUBLAS_STATUS_SUCCESS: return "CUBLAS_STATUS_SUCCESS";
    case CUBLAS_STATUS_NOT_INITIALIZED: return "CUBLAS_STATUS_NOT_INITIALIZED";
    case CUBLAS_STATUS_ALLOC_FAILED: return "CUBLAS_STATUS_ALLOC_FAILED";
    case CUBLAS_STATUS_INVALID_VALUE: return "CUBLAS_STATUS_INVALID_VALUE";
    case CUBLAS_STATUS_ARCH_MISMATCH: return "CUBLAS_STATUS_ARCH_MISMATCH";
    case CUBLAS_STATUS_MAPPING_ERROR: return "CUBLAS_STATUS_MAPPING_ERROR";
    case CUBLAS_STATUS_EXECUTION_FAILED: return "CUBLAS_STATUS_EXECUTION_FAILED";
    case CUBLAS_STATUS_INTERNAL_ERROR: return "CUBLAS_STATUS_INTERNAL_ERROR";
    case CUBLAS_STATUS_NOT_SUPPORTED: return "CUBLAS_STATUS_NOT_SUPPORTED";
    case CUBLAS_STATUS_LICENSE_ERROR: return "CUBLAS_STATUS_LICENSE_ERROR";
    default: return "unknown cuBLAS status";
  }
}

absl::Status LtStatus(cublasStatus_t s, absl::string_view what) {
  if (s == CUBLAS_STATUS_SUCCESS) return absl::OkStatus();
  const std::string message =
      absl::StrCat("cuBLASLt ", what, ": ", StatusName(s), " (", static_cast<int>(s), ")");
  if (s == CUBLAS_STATUS_ALLOC_FAILED) return absl::ResourceExhaustedError(message);
  if (s == CUBLAS_STATUS_NOT_SUPPORTED) return absl::UnimplementedError(message);
  return absl::InternalError(message);
}

// The largest power of two (at most 256) that divides the address.
uint16_t Alignment(const void* p) {
  const auto a = reinterpret_cast<uintptr_t>(p);
  uint16_t align = 256;
  while (align > 1 && a % align != 0) align /= 2;
  return align;
}

}  // namespace

struct CublasLtGemm::Plan {
  cublasLtMatmulDesc_t op = nullptr;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, c = nullptr;
  cublasLtMatmulAlgo_t algo{};
  ~Plan() {
    if (a != nullptr) cublasLtMatrixLayoutDestroy(a);
    if (b != nullptr) cublasLtMatrixLayoutDestroy(b);
    if (c != nullptr) cublasLtMatrixLayoutDestroy(c);
    if (op != nullptr) cublasLtMatmulDescDestroy(op);
  }
};

absl::StatusOr<std::unique_ptr<CublasLtGemm>> CublasLtGemm::Create(
    std::shared_ptr<CudaMemoryPool> pool, size_t workspace_bytes) {
  if (pool == nullptr) return absl::InvalidArgumentError("CublasLtGemm: no memory pool given");
  auto gemm = std::unique_ptr<CublasLtGemm>(new CublasLtGemm());
  MP_RETURN_IF_ERROR(LtStatus(cublasLtCreate(&gemm->handle_), "create"));
  gemm->workspace_bytes_ = workspace_bytes;
  if (workspace_bytes > 0) {
    MP_ASSIGN_OR_RETURN(gemm->workspace_, pool->Allocate(workspace_bytes));
  }
  return gemm;
}

CublasLtGemm::~CublasLtGemm() {
  plans_.clear();
  if (handle_ != nullptr) cublasLtDestroy(handle_);
}

size_t CublasLtGemm::cached_plans() const {
  std::lock_guard<std::mutex> lock(mu_);
  return plans_.size();
}

// Row-major y[m, n] = x[m, k] w[n, k]^T, read column-major (cuBLAS): D = y^T (n x m, ld n) =
// op(A) B with A = w seen as a k x n matrix (ld k, transposed: op(A) = w as n x k) and B = x seen
// as k x m (ld k).
absl::StatusOr<CublasLtGemm::Plan*> CublasLtGemm::GetPlan(const Key& key) {
  auto it = plans_.find(key);
  if (it != plans_.end()) return it->second.get();
  auto plan = std::make_unique<Plan>();
  MP_RETURN_IF_ERROR(
      LtStatus(cublasLtMatmulDescCreate(&plan->op, CUBLAS_COMPUTE_32F, CUDA_R_32F), "desc"));
  const cublasOperation_t transa = CUBLAS_OP_T, transb = CUBLAS_OP_N;
  MP_RETURN_IF_ERROR(LtStatus(cublasLtMatmulDescSetAttribute(
                                  plan->op, CUBLASLT_MATMUL_DESC_TRANSA, &transa, sizeof(transa)),
                              "transa"));
  MP_RETURN_IF_ERROR(LtStatus(cublasLtMatmulDescSetAttribute(
                                  plan->op, CUBLASLT_MATMUL_DESC_TRANSB, &transb, sizeof(transb)),
                              "transb"));
  if (key.bias) {
    const cublasLtEpilogue_t epilogue = CUBLASLT_EPILOGUE_BIAS;
    const cudaDataType_t bias_type = CUDA_R_16BF;
    MP_RETURN_IF_ERROR(LtStatus(cublasLtMatmulDescSetAttribute(plan->op,
                                                               CUBLASLT_MATMUL_DESC_EPILOGUE,
                                                               &epilogue, sizeof(epilogue)),
                                "epilogue"));
    MP_RETURN_IF_ERROR(LtStatus(
        cublasLtMatmulDescSetAttribute(plan->op, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &bias_type,
                                       sizeof(bias_type)),
        "bias type"));
  }
  const auto m = static_cast<uint64_t>(key.m), n = static_cast<uint64_t>(key.n),
             k = static_cast<uint64_t>(key.k);
  MP_RETURN_IF_ERROR(LtStatus(cublasLtMatrixLayoutCreate(&plan->a, CUDA_R_16BF, k, n, key.k),
                              "layout w"));
  MP_RETURN_IF_ERROR(LtStatus(cublasLtMatrixLayoutCreate(&plan->b, CUDA_R_16BF, k, m, key.k),
                              "layout x"));
  MP_RETURN_IF_ERROR(LtStatus(cublasLtMatrixLayoutCreate(&plan->c, CUDA_R_16BF, n, m, key.n),
                              "layout y"));

  cublasLtMatmulPreference_t pref = nullptr;
  MP_RETURN_IF_ERROR(LtStatus(cublasLtMatmulPreferenceCreate(&pref), "preference"));
  std::unique_ptr<std::remove_pointer_t<cublasLtMatmulPreference_t>,
                  decltype(&cublasLtMatmulPreferenceDestroy)>
      pref_owner(pref, &cublasLtMatmulPreferenceDestroy);
  const uint64_t workspace = workspace_bytes_;
  const uint32_t align_a = key.align_w, align_b = key.align_x, align_c = key.align_y;
  MP_RETURN_IF_ERROR(LtStatus(
      cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                                           &workspace, sizeof(workspace)),
      "workspace preference"));
  for (auto [attr, value] : {std::pair{CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &align_a},
                             std::pair{CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &align_b},
                             std::pair{CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &align_c},
                             std::pair{CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &align_c}}) {
    MP_RETURN_IF_ERROR(LtStatus(
        cublasLtMatmulPreferenceSetAttribute(pref, attr, value, sizeof(*value)),
        "alignment preference"));
  }
  cublasLtMatmulHeuristicResult_t result{};
  int found = 0;
  MP_RETURN_IF_ERROR(LtStatus(cublasLtMatmulAlgoGetHeuristic(handle_, plan->op, plan->a, plan->b,
                                                             plan->c, plan->c, pref, 1, &result,
                                                             &found),
                              absl::StrCat("heuristic for m=", key.m, " n=", key.n, " k=", key.k)));
  if (found < 1) {
    return absl::UnimplementedError(absl::StrCat("cuBLASLt has no bf16 algorithm for m=", key.m,
                                                 " n=", key.n, " k=", key.k));
  }
  plan->algo = result.algo;
  Plan* raw = plan.get();
  plans_.emplace(key, std::move(plan));
  return raw;
}

absl::Status CublasLtGemm::LinearBf16(const void* x, const void* w, const void* bias, void* y,
                                      int64_t m, int64_t n, int64_t k, cudaStream_t stream) {
  if (m < 0 || n < 0 || k <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("CublasLtGemm: bad shape m=", m, " n=", n, " k=", k));
  }
  if (m == 0 || n == 0) return absl::OkStatus();
  Key key{m, n, k, bias != nullptr, Alignment(x), Alignment(w), Alignment(y),
          bias != nullptr ? Alignment(bias) : uint16_t{0}};
  std::lock_guard<std::mutex> lock(mu_);
  MP_ASSIGN_OR_RETURN(Plan * plan, GetPlan(key));
  if (bias != nullptr) {
    MP_RETURN_IF_ERROR(LtStatus(cublasLtMatmulDescSetAttribute(plan->op,
                                                               CUBLASLT_MATMUL_DESC_BIAS_POINTER,
                                                               &bias, sizeof(bias)),
                                "bias pointer"));
  }
  const float alpha = 1.0f, beta = 0.0f;
  return LtStatus(cublasLtMatmul(handle_, plan->op, &alpha, w, plan->a, x, plan->b, &beta, y,
                                 plan->c, y, plan->c, &plan->algo, workspace_.get(),
                                 workspace_bytes_, stream),
                  absl::StrCat("matmul m=", m, " n=", n, " k=", k));
}

}  // namespace mp
