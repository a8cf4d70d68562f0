#include "runtime/cuda_random_weights.h"

#include <cuda_bf16.h>

#include <vector>

#include "absl/strings/str_cat.h"
#include "common/status.h"
#include "kernels/cuda/random_fill.h"

namespace mp {

absl::StatusOr<ModelWeights> RandomModelWeightsOnDevice(CudaBackend& backend,
                                                        const ModelConfig& config,
                                                        const WeightLoadOptions& options,
                                                        uint64_t seed) {
  ModelWeights weights;
  MP_ASSIGN_OR_RETURN(std::vector<WeightSlot> slots, StageWeightSlots(config, options, &weights));
  // gate_proj and up_proj of a layer: the two halves of one allocation.
  for (LayerWeights& layer : weights.layer) {
    const int64_t inter = config.intermediate_size, hidden = config.hidden_size;
    MP_ASSIGN_OR_RETURN(Tensor stacked, backend.Allocate({2 * inter, hidden}, DType::kBF16));
    layer.gate_proj = stacked.Slice(0, inter);
    layer.up_proj = stacked.Slice(inter, 2 * inter);
  }
  for (const WeightSlot& slot : slots) {
    Tensor& t = *slot.tensor;
    if (!t.defined()) {
      absl::StatusOr<Tensor> allocated = backend.Allocate(slot.shape, DType::kBF16);
      if (!allocated.ok()) return Annotate(allocated.status(), absl::StrCat("weight ", slot.name));
      t = *std::move(allocated);
    }
    const RandomWeightStream stream = RandomWeightStreamOf(seed, slot);
    const cudaError_t e =
        cuda::FillRandomNormalishBf16(t.data_as<__nv_bfloat16>(), t.numel(), stream.key,
                                      stream.scale, stream.offset, backend.stream());
    if (e != cudaSuccess) {
      cudaGetLastError();
      return absl::InternalError(
          absl::StrCat("random fill of ", slot.name, ": ", cudaGetErrorString(e)));
    }
  }
  if (weights.has_head && config.tie_word_embeddings) weights.lm_head = weights.embed_tokens;
  return weights;
}

}  // namespace mp
